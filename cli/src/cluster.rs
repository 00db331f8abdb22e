//! `flare start|stop|token|status|list|job`: the head and the Ray-compatible Jobs API.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use flare::head::client::HeadClient;
use flare::head::{HeadInfo, HeadOptions};

/// `<temp-dir or ~/.flare>/session_latest`.
pub fn session_dir(temp_dir: Option<&Path>) -> PathBuf {
    let base = match temp_dir {
        Some(d) => d.to_path_buf(),
        None => std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp")).join(".flare"),
    };
    base.join("session_latest")
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

pub struct StartArgs {
    pub head: bool,
    pub address: Option<String>,
    pub host: String,
    pub port: u16,
    pub dashboard_port: u16,
    pub node_id: Option<String>,
    pub num_cpus: Option<f64>,
    pub num_gpus: Option<f64>,
    pub resources: Option<String>,
    pub labels: Option<String>,
    pub temp_dir: Option<PathBuf>,
}

fn parse_labels(s: &Option<String>) -> anyhow::Result<Vec<(String, String)>> {
    let Some(s) = s else { return Ok(Vec::new()) };
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .with_context(|| format!("label `{p}` is not key=value"))
        })
        .collect()
}

fn parse_resources(s: &Option<String>) -> anyhow::Result<Vec<(String, f64)>> {
    let Some(s) = s else { return Ok(Vec::new()) };
    let m: std::collections::BTreeMap<String, f64> = serde_json::from_str(s)
        .with_context(|| format!("--resources `{s}` is not a JSON object of numbers, e.g. '{{\"TPU\": 4}}'"))?;
    Ok(m.into_iter().collect())
}

/// This machine's resources as `flare start` offers them: flags, else what the machine has,
/// with Ray's `accelerator_type` label and `accelerator_type:<type>` resource when it has GPUs.
struct Machine {
    num_cpus: f64,
    num_gpus: f64,
    /// Custom resources (and the accelerator one), without CPU and GPU.
    resources: Vec<(String, f64)>,
    labels: Vec<(String, String)>,
}

impl Machine {
    fn of(a: &StartArgs) -> anyhow::Result<Machine> {
        let num_cpus = a.num_cpus.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64);
        let num_gpus = a.num_gpus.unwrap_or_else(|| flare::gpu::discover().gpus.len() as f64);
        let mut resources = parse_resources(&a.resources)?;
        let mut labels = parse_labels(&a.labels)?;
        if let (true, Some(kind)) = (num_gpus > 0.0, flare::gpu::discover().accelerator_type()) {
            if !labels.iter().any(|(k, _)| k == "accelerator_type") {
                labels.push(("accelerator_type".into(), kind.clone()));
            }
            resources.push((format!("accelerator_type:{kind}"), 1.0));
        }
        Ok(Machine { num_cpus, num_gpus, resources, labels })
    }
}

/// `--resources` and `--labels` as the hidden subcommands take them.
fn resources_arg(r: &[(String, f64)]) -> anyhow::Result<String> {
    Ok(serde_json::to_string(&r.iter().cloned().collect::<std::collections::BTreeMap<_, _>>())?)
}
fn labels_arg(l: &[(String, String)]) -> String {
    l.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// Starts `cmd` (this executable's hidden subcommand) detached in its own process group, with
/// output in `dir/logs/<log>`, and waits until `ready` says it is up (at most 30 s).
fn spawn_daemon(
    mut cmd: std::process::Command,
    dir: &Path,
    log: &str,
    what: &str,
    mut ready: impl FnMut(&std::process::Child) -> anyhow::Result<bool>,
) -> anyhow::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    let log = dir.join("logs").join(log);
    let out = std::fs::File::create(&log)?;
    cmd.stdin(std::process::Stdio::null()).stdout(out.try_clone()?).stderr(out).process_group(0);
    let mut child = cmd.spawn().with_context(|| format!("starting the {what}"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("the {what} exited at start ({status}):\n{}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        if ready(&child)? {
            return Ok(child);
        }
        if Instant::now() > deadline {
            // SAFETY: our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            bail!("the {what} did not come up within 30 s; see {}", log.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts a head in the background and returns once it serves.
pub fn start(a: StartArgs) -> anyhow::Result<()> {
    if !a.head {
        let Some(addr) = a.address.clone() else {
            bail!("say `flare start --head` to start a head, or `--address HOST:PORT` to join one");
        };
        return start_node(a, &addr);
    }
    let dir = session_dir(a.temp_dir.as_deref());
    std::fs::create_dir_all(dir.join("logs")).with_context(|| format!("creating {}", dir.display()))?;
    if let Ok(info) = HeadInfo::read(&dir) {
        if alive(info.pid) {
            bail!(
                "a head is already running in {} (pid {}, {}); `flare stop` it first",
                dir.display(),
                info.pid,
                info.dashboard_url
            );
        }
        let _ = std::fs::remove_file(dir.join("head.json"));
    }
    let m = Machine::of(&a)?;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.arg("__head")
        .arg("--session-dir")
        .arg(&dir)
        .args(["--host", &a.host, "--dashboard-port", &a.dashboard_port.to_string(), "--grpc-port", &a.port.to_string()])
        .args(["--num-cpus", &m.num_cpus.to_string(), "--num-gpus", &m.num_gpus.to_string()])
        .args(["--resources", &resources_arg(&m.resources)?, "--labels", &labels_arg(&m.labels)]);
    let mut up = None;
    spawn_daemon(cmd, &dir, "head.out", "head", |child| {
        let Ok(info) = HeadInfo::read(&dir) else { return Ok(false) };
        if info.pid != child.id() {
            return Ok(false);
        }
        let token = flare::head::read_token(&dir).map_err(anyhow::Error::msg)?;
        let c = HeadClient::new(&info.dashboard_url, Some(token)).map_err(anyhow::Error::msg)?;
        let serving = c.get("/api/version").map(|r| r.status == 200).unwrap_or(false);
        up = serving.then_some(info);
        Ok(serving)
    })?;
    let info = up.expect("ready only once the head serves");
    let t = temp_dir_flag(&a.temp_dir);
    println!("Flare head started (pid {}).", info.pid);
    println!("  Jobs API and dashboard: {}", info.dashboard_url);
    println!("  Session: {}", dir.display());
    println!("  Token:   flare token{t}");
    println!("Submit a job:");
    println!("  flare job submit{t} -- echo hello");
    println!(
        "  RAY_AUTH_MODE=token RAY_AUTH_TOKEN=$(flare token{t}) ray job submit --address {} -- echo hello",
        info.dashboard_url
    );
    println!("Join a worker node (from its machine):");
    println!("  FLARE_TOKEN=$(flare token{t}) flare start --address {}", info.grpc_address);
    println!("Stop it: flare stop{t}");
    Ok(())
}

/// Starts a node agent that joins the head at `head` (its gRPC address).
fn start_node(a: StartArgs, head: &str) -> anyhow::Result<()> {
    let dir = session_dir(a.temp_dir.as_deref());
    std::fs::create_dir_all(dir.join("logs")).with_context(|| format!("creating {}", dir.display()))?;
    if let Ok(text) = std::fs::read_to_string(dir.join("node.json")) {
        if let Ok(info) = serde_json::from_str::<flare::head::node_agent::NodeInfo>(&text) {
            if alive(info.pid) {
                bail!("a node agent is already running in {} (pid {}); `flare stop` it first", dir.display(), info.pid);
            }
        }
        let _ = std::fs::remove_file(dir.join("node.json"));
    }
    let token = std::env::var("FLARE_TOKEN")
        .ok()
        .or_else(|| flare::head::read_token(&dir).ok())
        .context("joining a head needs its token: set FLARE_TOKEN=$(flare token) (run `flare token` where the head runs)")?;
    let head = head.trim_start_matches("http://").to_string();
    let m = Machine::of(&a)?;
    let mut resources = m.resources.clone();
    resources.push(("CPU".into(), m.num_cpus));
    resources.push(("GPU".into(), m.num_gpus));
    let node_id = a.node_id.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.arg("__node")
        .args(["--head", &head, "--node-id", &node_id, "--address", &a.host])
        .arg("--session-dir")
        .arg(&dir)
        .args(["--resources", &resources_arg(&resources)?, "--labels", &labels_arg(&m.labels)])
        .env("FLARE_TOKEN", &token);
    let child = spawn_daemon(cmd, &dir, "node.out", "node agent", |_| Ok(dir.join("node.json").exists()))?;
    println!("Node '{node_id}' (pid {}) joined the head at {head}.", child.id());
    println!("Stop it: flare stop{}", temp_dir_flag(&a.temp_dir));
    Ok(())
}

pub struct NodeArgs {
    pub head: String,
    pub node_id: String,
    pub address: String,
    pub session_dir: PathBuf,
    pub resources: String,
    pub labels: String,
}

/// The node agent process itself (`flare __node`, started by `flare start --address`).
pub fn node(a: NodeArgs) -> anyhow::Result<()> {
    let token = std::env::var("FLARE_TOKEN").context("the node agent needs FLARE_TOKEN")?;
    let opts = flare::head::node_agent::NodeAgentOptions {
        head: a.head,
        token,
        node_id: a.node_id,
        address: a.address,
        resources: parse_resources(&Some(a.resources))?.into_iter().collect(),
        labels: parse_labels(&Some(a.labels))?.into_iter().collect(),
        session_dir: a.session_dir,
    };
    flare::head::node_agent::run(opts).map_err(anyhow::Error::msg)
}

fn temp_dir_flag(t: &Option<PathBuf>) -> String {
    t.as_ref().map(|d| format!(" --temp-dir {}", d.display())).unwrap_or_default()
}

pub struct HeadArgs {
    pub session_dir: PathBuf,
    pub host: String,
    pub dashboard_port: u16,
    pub grpc_port: u16,
    pub num_cpus: f64,
    pub num_gpus: f64,
    pub resources: String,
    pub labels: String,
}

/// The head process itself (`flare __head`, started by `flare start --head`).
pub fn head(a: HeadArgs) -> anyhow::Result<()> {
    let resources = parse_resources(&Some(a.resources))?;
    let labels = parse_labels(&Some(a.labels))?;
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().find(|l| l.starts_with("MemTotal:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(8 << 30);
    let opts = HeadOptions {
        session_dir: a.session_dir,
        host: a.host,
        dashboard_port: a.dashboard_port,
        grpc_port: a.grpc_port,
        num_cpus: a.num_cpus,
        num_gpus: a.num_gpus,
        memory,
        resources,
        labels,
    };
    flare::head::run(opts).map_err(anyhow::Error::msg)
}

/// Stops the head started in a session directory: SIGTERM, then SIGKILL after 10 s.
pub fn stop(temp_dir: Option<&Path>) -> anyhow::Result<()> {
    let dir = session_dir(temp_dir);
    if let Some(info) = std::fs::read_to_string(dir.join("node.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<flare::head::node_agent::NodeInfo>(&t).ok())
    {
        terminate(info.pid);
        let _ = std::fs::remove_file(dir.join("node.json"));
        println!("Stopped node agent '{}' (pid {}).", info.node_id, info.pid);
    }
    let Ok(info) = HeadInfo::read(&dir) else {
        println!("No head is running in {}.", dir.display());
        return Ok(());
    };
    if !alive(info.pid) {
        let _ = std::fs::remove_file(dir.join("head.json"));
        println!("The head (pid {}) had already exited.", info.pid);
        return Ok(());
    }
    terminate(info.pid);
    let _ = std::fs::remove_file(dir.join("head.json"));
    println!("Stopped the head (pid {}).", info.pid);
    Ok(())
}

/// SIGTERM, then SIGKILL after 10 s.
fn terminate(pid: u32) {
    // SAFETY: the pid comes from the process's own head.json or node.json.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        reap(pid);
    }
    if alive(pid) {
        // SAFETY: as above.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
}

fn reap(pid: u32) {
    // SAFETY: reaps the head if it is our child (tests start it from this process); harmless otherwise.
    unsafe { libc::waitpid(pid as i32, std::ptr::null_mut(), libc::WNOHANG) };
}

pub fn token(temp_dir: Option<&Path>) -> anyhow::Result<()> {
    println!("{}", flare::head::read_token(&session_dir(temp_dir)).map_err(anyhow::Error::msg)?);
    Ok(())
}

/// The client for `--address` (else `FLARE_ADDRESS`, else the session's head) with the token
/// from `FLARE_TOKEN` (else `RAY_AUTH_TOKEN`, else the session's token file).
pub fn client(address: Option<&str>, temp_dir: Option<&Path>) -> anyhow::Result<HeadClient> {
    let dir = session_dir(temp_dir);
    let address = match address.map(str::to_string).or_else(|| std::env::var("FLARE_ADDRESS").ok()) {
        Some(a) => a,
        None => HeadInfo::read(&dir).map_err(anyhow::Error::msg)?.dashboard_url,
    };
    let token = std::env::var("FLARE_TOKEN")
        .ok()
        .or_else(|| std::env::var("RAY_AUTH_TOKEN").ok())
        .or_else(|| flare::head::read_token(&dir).ok());
    HeadClient::new(&address, token).map_err(anyhow::Error::msg)
}

pub struct SubmitArgs {
    pub working_dir: Option<PathBuf>,
    pub no_wait: bool,
    pub submission_id: Option<String>,
    pub num_cpus: Option<f64>,
    pub num_gpus: Option<f64>,
    /// `--entrypoint-resources`: a JSON object.
    pub resources: Option<String>,
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
}

pub fn submit(c: &HeadClient, a: SubmitArgs) -> anyhow::Result<()> {
    if a.entrypoint.is_empty() {
        bail!("give the entrypoint after `--`, e.g. `flare job submit -- python train.py`");
    }
    let mut runtime_env = serde_json::Map::new();
    if let Some(dir) = &a.working_dir {
        let (name, bytes) = flare::head::package::zip_dir(dir, flare::head::MAX_PACKAGE).map_err(anyhow::Error::msg)?;
        let path = format!("/api/packages/gcs/{name}");
        if c.get(&path).map_err(anyhow::Error::msg)?.status != 200 {
            let r = c.request("PUT", &path, Some(("application/zip", &bytes))).map_err(anyhow::Error::msg)?;
            if r.status != 200 {
                bail!("uploading the working dir failed ({}): {}", r.status, r.text());
            }
        }
        runtime_env.insert("working_dir".into(), format!("gcs://{name}").into());
    }
    if !a.env.is_empty() {
        let mut vars = serde_json::Map::new();
        for kv in &a.env {
            let (k, v) = kv.split_once('=').with_context(|| format!("--env `{kv}` is not KEY=VALUE"))?;
            vars.insert(k.into(), v.into());
        }
        runtime_env.insert("env_vars".into(), vars.into());
    }
    let mut req = serde_json::json!({ "entrypoint": a.entrypoint.join(" "), "runtime_env": runtime_env });
    if let Some(id) = &a.submission_id {
        req["submission_id"] = id.clone().into();
    }
    if let Some(n) = a.num_cpus {
        req["entrypoint_num_cpus"] = n.into();
    }
    if let Some(n) = a.num_gpus {
        req["entrypoint_num_gpus"] = n.into();
    }
    if let Some(r) = &a.resources {
        let v: serde_json::Map<String, serde_json::Value> = serde_json::from_str(r)
            .with_context(|| format!("--entrypoint-resources `{r}` is not a JSON object of resource amounts"))?;
        req["entrypoint_resources"] = v.into();
    }
    let r = c.post_json("/api/jobs/", &req).map_err(anyhow::Error::msg)?.ok_json().map_err(anyhow::Error::msg)?;
    let id = r["submission_id"].as_str().unwrap_or_default().to_string();
    println!("Job '{id}' submitted successfully");
    if a.no_wait {
        println!("Query its status with `flare job status {id}`, its logs with `flare job logs {id}`.");
        return Ok(());
    }
    let status = follow_logs(c, &id)?;
    finish_status(&id, &status)
}

fn finish_status(id: &str, status: &str) -> anyhow::Result<()> {
    match status {
        "SUCCEEDED" => {
            println!("Job '{id}' succeeded");
            Ok(())
        }
        other => bail!("Job '{id}' ended {other}"),
    }
}

/// Prints the job's log as it grows until the job ends; returns its final status.
pub fn follow_logs(c: &HeadClient, id: &str) -> anyhow::Result<String> {
    use std::io::Write;
    let mut printed = 0usize;
    loop {
        let info = c.get(&format!("/api/jobs/{id}")).map_err(anyhow::Error::msg)?.ok_json().map_err(anyhow::Error::msg)?;
        let status = info["status"].as_str().unwrap_or("").to_string();
        let logs = c.get(&format!("/api/jobs/{id}/logs")).map_err(anyhow::Error::msg)?.ok_json().map_err(anyhow::Error::msg)?;
        let text = logs["logs"].as_str().unwrap_or("");
        if text.len() > printed {
            print!("{}", &text[printed..]);
            std::io::stdout().flush().ok();
            printed = text.len();
        }
        if matches!(status.as_str(), "SUCCEEDED" | "FAILED" | "STOPPED") {
            return Ok(status);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

pub fn status_of(c: &HeadClient, id: &str) -> anyhow::Result<()> {
    let j = c.get(&format!("/api/jobs/{id}")).map_err(anyhow::Error::msg)?.ok_json().map_err(anyhow::Error::msg)?;
    println!("Status for job '{id}': {}", j["status"].as_str().unwrap_or("?"));
    if let Some(m) = j["message"].as_str() {
        println!("Status message: {m}");
    }
    Ok(())
}

pub fn logs(c: &HeadClient, id: &str, follow: bool) -> anyhow::Result<()> {
    if follow {
        follow_logs(c, id)?;
        return Ok(());
    }
    let l = c.get(&format!("/api/jobs/{id}/logs")).map_err(anyhow::Error::msg)?.ok_json().map_err(anyhow::Error::msg)?;
    print!("{}", l["logs"].as_str().unwrap_or(""));
    Ok(())
}

pub fn stop_job(c: &HeadClient, id: &str, wait: bool) -> anyhow::Result<()> {
    let r = c
        .request("POST", &format!("/api/jobs/{id}/stop"), None)
        .map_err(anyhow::Error::msg)?
        .ok_json()
        .map_err(anyhow::Error::msg)?;
    if r["stopped"].as_bool() != Some(true) {
        println!("Job '{id}' had already ended.");
        return Ok(());
    }
    println!("Stopping job '{id}'");
    if wait {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let j = c.get(&format!("/api/jobs/{id}")).map_err(anyhow::Error::msg)?.ok_json().map_err(anyhow::Error::msg)?;
            let s = j["status"].as_str().unwrap_or("");
            if matches!(s, "SUCCEEDED" | "FAILED" | "STOPPED") {
                println!("Job '{id}' {s}");
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("job '{id}' did not stop within 30 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

pub fn delete_job(c: &HeadClient, id: &str) -> anyhow::Result<()> {
    c.request("DELETE", &format!("/api/jobs/{id}"), None).map_err(anyhow::Error::msg)?.ok_json().map_err(anyhow::Error::msg)?;
    println!("Job '{id}' deleted");
    Ok(())
}

fn fmt_ms(ms: &serde_json::Value) -> String {
    ms.as_u64().map(|m| format!("{:.1}", m as f64 / 1000.0)).unwrap_or_else(|| "-".into())
}

pub fn list_jobs(c: &HeadClient, json: bool) -> anyhow::Result<()> {
    let v = c.get("/api/jobs/").map_err(anyhow::Error::msg)?.ok_json().map_err(anyhow::Error::msg)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("{:<34} {:<10} {:>14} {:>14}  ENTRYPOINT", "SUBMISSION_ID", "STATUS", "START_S", "END_S");
    for j in v.as_array().into_iter().flatten() {
        println!(
            "{:<34} {:<10} {:>14} {:>14}  {}",
            j["submission_id"].as_str().unwrap_or(""),
            j["status"].as_str().unwrap_or(""),
            fmt_ms(&j["start_time"]),
            fmt_ms(&j["end_time"]),
            j["entrypoint"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

pub fn status(c: &HeadClient, json: bool) -> anyhow::Result<()> {
    let v = c.get("/api/cluster_status").map_err(anyhow::Error::msg)?.ok_json().map_err(anyhow::Error::msg)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("======== Cluster status ========");
    println!("Node status\n-----------");
    let nodes: Vec<&serde_json::Value> = v["nodes"].as_array().into_iter().flatten().collect();
    let alive_n = nodes.iter().filter(|n| n["alive"].as_bool() == Some(true)).count();
    println!("Active: {alive_n}");
    for n in &nodes {
        let state = if n["alive"].as_bool() == Some(true) { "alive" } else { "DEAD " };
        let role = if n["is_head"].as_bool() == Some(true) { " (head)" } else { "" };
        println!(" {state} {}{role}", n["node_id"].as_str().unwrap_or(""));
    }
    println!("\nResources (used by drivers' work + job entrypoints / total)\n-----------------------------------------------------------");
    for n in v["nodes"].as_array().into_iter().flatten() {
        let Some(total) = n["resources_total"].as_object() else { continue };
        println!(" {}{}:", n["node_id"].as_str().unwrap_or(""), if n["alive"].as_bool() == Some(true) { "" } else { " (dead)" });
        let mut keys: Vec<_> = total.keys().collect();
        keys.sort();
        for k in keys {
            let t = total[k].as_f64().unwrap_or(0.0);
            let u = n["resources_used_by_jobs"][k].as_f64().unwrap_or(0.0)
                + n["resources_used_by_drivers"][k].as_f64().unwrap_or(0.0);
            if k == "memory" {
                println!("   {:.1}/{:.1} GiB {k}", u / (1u64 << 30) as f64, t / (1u64 << 30) as f64);
            } else {
                println!("   {u}/{t} {k}");
            }
        }
    }
    println!("\nDemands\n-------");
    let demands: Vec<&serde_json::Value> = v["pending_demands"].as_array().into_iter().flatten().collect();
    if demands.is_empty() {
        println!(" (no resource demands)");
    }
    for d in demands {
        println!(" {}: {} pending tasks/actors", d["resources"], d["count"]);
    }
    println!("\nJobs\n----");
    if let Some(m) = v["jobs"].as_object() {
        for (k, n) in m {
            println!(" {n} {k}");
        }
    }
    Ok(())
}

pub fn list(c: &HeadClient, kind: &str, json: bool) -> anyhow::Result<()> {
    match kind {
        "jobs" => list_jobs(c, json),
        "nodes" => {
            let v = c.get("/api/cluster_status").map_err(anyhow::Error::msg)?.ok_json().map_err(anyhow::Error::msg)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v["nodes"])?);
            } else {
                println!("{:<10} {:<6} {:<16} RESOURCES", "NODE_ID", "ALIVE", "ADDRESS");
                for n in v["nodes"].as_array().into_iter().flatten() {
                    println!(
                        "{:<10} {:<6} {:<16} {}",
                        n["node_id"].as_str().unwrap_or(""),
                        n["alive"],
                        n["address"].as_str().unwrap_or(""),
                        n["resources_total"]
                    );
                }
            }
            Ok(())
        }
        "actors" | "tasks" | "placement-groups" => list_driver_state(c, kind, json),
        other => bail!("`{other}` is not a list: use nodes, actors, tasks, jobs or placement-groups"),
    }
}

/// A driver's published state older than this is from a driver that died without cleaning up.
const STALE_MS: u64 = 15_000;

/// The named groups in the head's table that no live driver lists: detached groups whose
/// creator is gone.
fn unlisted_groups(c: &HeadClient, listed: &[serde_json::Value]) -> Vec<serde_json::Value> {
    let prefix = flare::head::PG_PREFIX;
    let Ok(keys) = c.get(&format!("/api/kv?prefix={prefix}")).and_then(|r| r.ok_json()) else { return Vec::new() };
    let mut rows = Vec::new();
    for k in keys["keys"].as_array().into_iter().flatten().filter_map(|k| k.as_str()) {
        let Ok(rec) = c.get(&format!("/api/kv/{k}")).and_then(|r| r.ok_json()) else { continue };
        if listed.iter().any(|r| r["name"] == rec["name"]) {
            continue;
        }
        rows.push(serde_json::json!({
            "id": null,
            "name": rec["name"],
            "state": rec["state"],
            "strategy": rec["strategy"],
            "bundles": rec["bundles"],
            "detached": rec["detached"],
            "driver_pid": rec["driver_pid"],
            "creator": "gone",
        }));
    }
    rows
}

/// `flare list actors|tasks|placement-groups`: what every live driver of the cluster
/// published, and the detached placement groups that outlived their drivers.
fn list_driver_state(c: &HeadClient, kind: &str, json: bool) -> anyhow::Result<()> {
    let prefix = flare::head::STATE_PREFIX;
    let keys = c.get(&format!("/api/kv?prefix={prefix}")).map_err(anyhow::Error::msg)?.ok_json().map_err(anyhow::Error::msg)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let field = match kind {
        "actors" => "actors",
        "tasks" => "tasks",
        _ => "placement_groups",
    };
    let mut rows: Vec<serde_json::Value> = Vec::new();
    for k in keys["keys"].as_array().into_iter().flatten().filter_map(|k| k.as_str()) {
        let Ok(r) = c.get(&format!("/api/kv/{k}")) else { continue };
        let Ok(doc) = r.ok_json() else { continue };
        if now.saturating_sub(doc["updated_ms"].as_u64().unwrap_or(0)) > STALE_MS {
            continue;
        }
        for item in doc[field].as_array().into_iter().flatten() {
            let mut item = item.clone();
            item["driver_pid"] = doc["driver_pid"].clone();
            if let Some(n) = item.get("node").and_then(|n| n.as_u64()) {
                item["node_name"] = doc["node_names"][n.to_string()].clone();
            }
            rows.push(item);
        }
    }
    if field == "placement_groups" {
        rows.extend(unlisted_groups(c, &rows));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let s = |v: &serde_json::Value| match v {
        serde_json::Value::String(x) => x.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    };
    match kind {
        "actors" => {
            println!(
                "{:<12} {:<28} {:<18} {:<16} {:<10} {:<8} {:<8} DRIVER",
                "ACTOR_ID", "CLASS", "STATE", "NAME", "NODE", "PID", "RESTARTS"
            );
            for r in &rows {
                println!(
                    "{:<12} {:<28} {:<18} {:<16} {:<10} {:<8} {:<8} {}",
                    s(&r["actor_id"]),
                    s(&r["class"]),
                    s(&r["state"]),
                    s(&r["name"]),
                    s(&r["node_name"]),
                    s(&r["pid"]),
                    s(&r["restarts"]),
                    s(&r["driver_pid"])
                );
            }
        }
        "tasks" => {
            println!("{:<14} {:<32} {:<18} {:<8} DRIVER", "TASK_ID", "NAME", "STATE", "ATTEMPT");
            for r in &rows {
                println!(
                    "{:<14} {:<32} {:<18} {:<8} {}",
                    s(&r["task_id"]),
                    s(&r["name"]),
                    s(&r["state"]),
                    s(&r["attempt"]),
                    s(&r["driver_pid"])
                );
            }
        }
        _ => {
            println!("{:<12} {:<16} {:<12} {:<14} BUNDLES", "PG_ID", "NAME", "STATE", "STRATEGY");
            for r in &rows {
                println!(
                    "{:<12} {:<16} {:<12} {:<14} {}",
                    s(&r["id"]),
                    s(&r["name"]),
                    s(&r["state"]),
                    s(&r["strategy"]),
                    r["bundles"]
                );
            }
        }
    }
    Ok(())
}
