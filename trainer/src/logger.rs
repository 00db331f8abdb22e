//! The run's records: every report as a line of `result.json` (JSON lines, as Ray Train
//! writes), a row of `progress.csv`, and scalars in a TensorBoard event file; a progress
//! line while training and a summary table at the end.

use serde_json::Value;
use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// CRC-32C (Castagnoli), as TFRecord frames use it.
fn crc32c(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let t = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0x82F6_3B78 ^ (c >> 1) } else { c >> 1 };
            }
            *e = c;
        }
        t
    });
    let mut c = !0u32;
    for &b in data {
        c = t[((c ^ b as u32) & 0xFF) as usize] ^ (c >> 8);
    }
    !c
}

fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c(data);
    (c.rotate_right(15)).wrapping_add(0xa282_ead8)
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn field_bytes(field: u32, bytes: &[u8], out: &mut Vec<u8>) {
    varint(((field << 3) | 2) as u64, out);
    varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// An `Event` protobuf: wall_time (1, double), step (2, int64), then `file_version` (3) or a
/// `Summary` (5) of `Value { tag (1), simple_value (2, float) }`.
fn event(wall_time: f64, step: i64, body: EventBody<'_>) -> Vec<u8> {
    let mut e = Vec::new();
    e.push(0x09);
    e.extend_from_slice(&wall_time.to_le_bytes());
    e.push(0x10);
    varint(step as u64, &mut e);
    match body {
        EventBody::Version(v) => field_bytes(3, v.as_bytes(), &mut e),
        EventBody::Scalars(values) => {
            let mut summary = Vec::new();
            for (tag, v) in values {
                let mut val = Vec::new();
                field_bytes(1, tag.as_bytes(), &mut val);
                val.push(0x15);
                val.extend_from_slice(&(*v as f32).to_le_bytes());
                field_bytes(1, &val, &mut summary);
            }
            field_bytes(5, &summary, &mut e);
        }
    }
    e
}

enum EventBody<'a> {
    Version(&'a str),
    Scalars(&'a [(String, f64)]),
}

/// A TensorBoard event file (`events.out.tfevents.<time>.<host>`).
pub struct TensorBoardWriter {
    file: BufWriter<File>,
    path: PathBuf,
}

fn now_secs() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

impl TensorBoardWriter {
    pub fn create(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("events.out.tfevents.{}.{}", now_secs() as u64, crate::worker::node_key()));
        let mut w = TensorBoardWriter { file: BufWriter::new(File::create(&path)?), path };
        w.record(&event(now_secs(), 0, EventBody::Version("brain.Event:2")))?;
        Ok(w)
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    fn record(&mut self, data: &[u8]) -> std::io::Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        self.file.write_all(&len)?;
        self.file.write_all(&masked_crc(&len).to_le_bytes())?;
        self.file.write_all(data)?;
        self.file.write_all(&masked_crc(data).to_le_bytes())?;
        self.file.flush()
    }
    /// Scalars at `step`.
    pub fn scalars(&mut self, step: i64, values: &[(String, f64)]) -> std::io::Result<()> {
        if values.is_empty() {
            return Ok(());
        }
        self.record(&event(now_secs(), step, EventBody::Scalars(values)))
    }
}

/// Numeric leaves of a metrics object, with nested keys joined by `/`.
pub fn scalars(metrics: &Value) -> Vec<(String, f64)> {
    fn walk(prefix: &str, v: &Value, out: &mut Vec<(String, f64)>) {
        match v {
            Value::Number(n) => out.extend(n.as_f64().map(|f| (prefix.to_string(), f))),
            Value::Bool(b) => out.push((prefix.to_string(), *b as u8 as f64)),
            Value::Object(m) => {
                for (k, v) in m {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}/{k}") };
                    walk(&key, v, out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk("", metrics, &mut out);
    out
}

fn csv_field(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => {
            if s.contains([',', '"', '\n']) {
                format!("\"{}\"", s.replace('"', "\"\""))
            } else {
                s.clone()
            }
        }
        Some(other) => {
            let s = other.to_string();
            if s.contains([',', '"', '\n']) {
                format!("\"{}\"", s.replace('"', "\"\""))
            } else {
                s
            }
        }
    }
}

/// Writes `result.json` and `progress.csv` from the history (rewritten whole, so a restore
/// that drops reports after its checkpoint leaves the files true).
pub fn write_tables(dir: &Path, history: &[Value]) -> std::io::Result<()> {
    let mut jsonl = String::new();
    for h in history {
        jsonl.push_str(&h.to_string());
        jsonl.push('\n');
    }
    write_atomic(&dir.join("result.json"), jsonl.as_bytes())?;
    let mut columns: Vec<String> = Vec::new();
    for h in history {
        if let Value::Object(m) = h {
            for k in m.keys() {
                if !columns.contains(k) {
                    columns.push(k.clone());
                }
            }
        }
    }
    let mut csv = columns.iter().map(|c| csv_field(Some(&Value::String(c.clone())))).collect::<Vec<_>>().join(",");
    csv.push('\n');
    for h in history {
        csv.push_str(&columns.iter().map(|c| csv_field(h.get(c))).collect::<Vec<_>>().join(","));
        csv.push('\n');
    }
    write_atomic(&dir.join("progress.csv"), csv.as_bytes())
}

/// Appends the newest report to `result.json` and `progress.csv` (the CSV's columns are the
/// first report's; [`write_tables`] at the end rewrites it with every column).
pub fn append_row(dir: &Path, history: &[Value]) -> std::io::Result<()> {
    let (Some(first), Some(last)) = (history.first(), history.last()) else { return Ok(()) };
    if history.len() == 1 {
        return write_tables(dir, history);
    }
    let mut f = std::fs::OpenOptions::new().append(true).open(dir.join("result.json"))?;
    writeln!(f, "{last}")?;
    let columns: Vec<&String> = first.as_object().map(|m| m.keys().collect()).unwrap_or_default();
    let mut f = std::fs::OpenOptions::new().append(true).open(dir.join("progress.csv"))?;
    writeln!(f, "{}", columns.iter().map(|c| csv_field(last.get(c.as_str()))).collect::<Vec<_>>().join(","))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(tmp, path)
}

fn short(v: &Value) -> String {
    match v {
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.5}"),
            _ => n.to_string(),
        },
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Bookkeeping columns left out of the progress line and the summary.
const HIDDEN: [&str; 4] = ["timestamp", "attempt", "time_total_s", "training_iteration"];

/// The driver's progress line: on a terminal it is redrawn in place, otherwise printed every
/// few seconds.
pub struct Progress {
    enabled: bool,
    tty: bool,
    start: Instant,
    last: Option<Instant>,
    updates: u64,
}

impl Progress {
    pub fn new(enabled: bool) -> Self {
        Progress { enabled, tty: std::io::stderr().is_terminal(), start: Instant::now(), last: None, updates: 0 }
    }
    pub fn update(&mut self, iteration: u64, metrics: &Value) {
        self.updates += 1;
        if !self.enabled {
            return;
        }
        let due = self.tty || self.last.is_none_or(|t| t.elapsed().as_secs_f64() >= 5.0);
        if !due {
            return;
        }
        self.last = Some(Instant::now());
        let secs = self.start.elapsed().as_secs_f64();
        let mut line = format!("[train] iter {iteration} | {:.1}s | {:.2} it/s", secs, self.updates as f64 / secs.max(1e-9));
        if let Value::Object(m) = metrics {
            let shown = m.iter().filter(|(k, v)| v.is_number() && !HIDDEN.contains(&k.as_str()));
            for (k, v) in shown.take(4) {
                line.push_str(&format!(" | {k}={}", short(v)));
            }
        }
        if self.tty {
            eprint!("\r\x1b[2K{line}");
        } else {
            eprintln!("{line}");
        }
    }
    pub fn message(&mut self, msg: &str) {
        if self.enabled {
            if self.tty {
                eprint!("\r\x1b[2K");
            }
            eprintln!("[train] {msg}");
        }
    }
    pub fn finish(&mut self) {
        if self.enabled && self.tty {
            eprintln!();
        }
    }
}

/// A two-column table of the final metrics and where the results are.
pub fn summary_table(title: &str, rows: &[(String, String)]) -> String {
    let kw = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0).max(6);
    let vw = rows.iter().map(|r| r.1.chars().count()).max().unwrap_or(0).clamp(5, 100);
    let line = format!("+{}+{}+", "-".repeat(kw + 2), "-".repeat(vw + 2));
    let mut s = format!("{title}\n{line}\n");
    for (k, v) in rows {
        let v: String = v.chars().take(vw).collect();
        s.push_str(&format!("| {k:<kw$} | {v:<vw$} |\n"));
    }
    s.push_str(&line);
    s
}

pub fn metric_rows(metrics: &Value) -> Vec<(String, String)> {
    match metrics {
        Value::Object(m) => {
            m.iter().filter(|(k, _)| !HIDDEN[..2].contains(&k.as_str())).map(|(k, v)| (k.clone(), short(v))).collect()
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn scalars_flatten_nested_metrics() {
        let s = scalars(&serde_json::json!({"loss": 0.5, "eval": {"acc": 0.9}, "name": "x", "ok": true}));
        assert!(s.contains(&("loss".into(), 0.5)));
        assert!(s.contains(&("eval/acc".into(), 0.9)));
        assert!(s.contains(&("ok".into(), 1.0)));
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn csv_quotes_what_needs_it() {
        let dir = std::env::temp_dir().join(format!("flare_csv_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write_tables(&dir, &[serde_json::json!({"a": 1, "b": "x,y"}), serde_json::json!({"a": 2, "c": 3})]).unwrap();
        let csv = std::fs::read_to_string(dir.join("progress.csv")).unwrap();
        assert_eq!(csv, "a,b,c\n1,\"x,y\",\n2,,3\n");
        let _ = std::fs::remove_dir_all(dir);
    }
}
