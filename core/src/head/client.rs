//! A small blocking HTTP/1.1 client for the head's API (what `flare job ...` and the tests use).
//! One request per connection (`Connection: close`), bounded reply size, a deadline on every call.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// The largest reply the client reads.
const MAX_REPLY: u64 = 256 << 20;

/// A head's address and token.
#[derive(Debug, Clone)]
pub struct HeadClient {
    /// `host:port`.
    pub authority: String,
    pub token: Option<String>,
    pub timeout: Duration,
}

/// A reply: status code and body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> Result<serde_json::Value, String> {
        serde_json::from_slice(&self.body)
            .map_err(|e| format!("the head answered something that is not JSON ({e}): {}", self.text()))
    }
    /// The body as JSON when the status is 200, else an error with the head's message.
    pub fn ok_json(&self) -> Result<serde_json::Value, String> {
        if self.status == 200 {
            self.json()
        } else {
            Err(format!("the head answered {}: {}", self.status, self.text()))
        }
    }
}

impl HeadClient {
    /// From `http://host:port` (or `host:port`).
    pub fn new(address: &str, token: Option<String>) -> Result<Self, String> {
        let a = address.trim().trim_end_matches('/');
        let a = a.strip_prefix("http://").unwrap_or(a);
        if a.starts_with("https://") || a.contains('/') || a.is_empty() {
            return Err(format!("`{address}` is not a head address: write http://HOST:PORT"));
        }
        Ok(HeadClient { authority: a.to_string(), token, timeout: Duration::from_secs(60) })
    }

    pub fn request(&self, method: &str, path: &str, body: Option<(&str, &[u8])>) -> Result<Reply, String> {
        let addr = self
            .authority
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {}: {e}", self.authority))?
            .next()
            .ok_or_else(|| format!("{} resolves to nothing", self.authority))?;
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("cannot reach the head at {addr}: {e}"))?;
        s.set_read_timeout(Some(self.timeout)).ok();
        s.set_write_timeout(Some(self.timeout)).ok();
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n", self.authority);
        if let Some(t) = &self.token {
            head += &format!("Authorization: Bearer {t}\r\n");
        }
        let (ctype, data) = body.unwrap_or(("application/octet-stream", &[]));
        if body.is_some() || method == "POST" || method == "PUT" {
            head += &format!("Content-Type: {ctype}\r\nContent-Length: {}\r\n", data.len());
        }
        head += "\r\n";
        let io = |e: std::io::Error| format!("talking to the head at {addr}: {e}");
        s.write_all(head.as_bytes()).map_err(io)?;
        s.write_all(data).map_err(io)?;
        let mut raw = Vec::new();
        s.take(MAX_REPLY).read_to_end(&mut raw).map_err(io)?;
        parse(&raw)
    }

    pub fn get(&self, path: &str) -> Result<Reply, String> {
        self.request("GET", path, None)
    }
    pub fn post_json(&self, path: &str, v: &serde_json::Value) -> Result<Reply, String> {
        self.request("POST", path, Some(("application/json", &serde_json::to_vec(v).unwrap())))
    }
}

fn parse(raw: &[u8]) -> Result<Reply, String> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or("the head's reply has no header end")?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or("the head's reply has no status line")?;
    let chunked = lines
        .clone()
        .any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.to_ascii_lowercase().contains("chunked"));
    let mut body = raw[end + 4..].to_vec();
    if chunked {
        body = dechunk(&body)?;
    }
    Ok(Reply { status, body })
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let nl = b.windows(2).position(|w| w == b"\r\n").ok_or("bad chunked reply")?;
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..nl]).split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| "bad chunk size in the reply")?;
        b = &b[nl + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size + 2 {
            return Err("truncated chunked reply".into());
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}
