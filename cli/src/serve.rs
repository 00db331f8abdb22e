//! `flare serve run|deploy|status|shutdown`: a Serve instance driven by Ray-style config files
//! through its REST config API (`/api/serve/applications/`, bearer token = the session token).

use anyhow::{bail, Context};
use flare::serve::client::HttpClient;
use flare::serve::config::ServeConfig;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where a running Serve instance is recorded: `<session>/serve.json` ({url, pid}).
fn state_path(session: &Path) -> PathBuf {
    session.join("serve.json")
}

fn read_config(path: &Path) -> anyhow::Result<ServeConfig> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.len() > flare::serve::config::MAX_CONFIG_BYTES as u64 {
        bail!(
            "{} is {} bytes; a Serve config may have at most {}",
            path.display(),
            meta.len(),
            flare::serve::config::MAX_CONFIG_BYTES
        );
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    ServeConfig::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

struct Instance {
    url: String,
    pid: u32,
    token: String,
}

fn instance(session: &Path) -> anyhow::Result<Option<Instance>> {
    let Ok(text) = std::fs::read_to_string(state_path(session)) else { return Ok(None) };
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", state_path(session).display()))?;
    let pid = v["pid"].as_u64().unwrap_or(0) as u32;
    // SAFETY: signal 0 only checks that the process exists.
    if pid == 0 || unsafe { libc::kill(pid as i32, 0) } != 0 {
        let _ = std::fs::remove_file(state_path(session));
        return Ok(None);
    }
    let token = flare::head::ensure_token(session).map_err(anyhow::Error::msg)?;
    Ok(Some(Instance { url: v["url"].as_str().unwrap_or_default().to_string(), pid, token }))
}

fn call(i: &Instance, method: &str, body: &[u8]) -> anyhow::Result<flare::serve::client::HttpResponse> {
    let auth = format!("Bearer {}", i.token);
    let r = HttpClient::new(i.url.clone())
        .timeout(Duration::from_secs(330))
        .request(method, "/api/serve/applications/", &[("authorization", &auth), ("content-type", "application/json")], body)
        .with_context(|| format!("Serve at {} does not answer", i.url))?;
    if r.status >= 400 {
        let msg = r.json().ok().and_then(|v| v["error"]["message"].as_str().map(str::to_string)).unwrap_or_else(|| r.text());
        bail!("Serve answered {}: {msg}", r.status);
    }
    Ok(r)
}

/// `flare serve run CONFIG`: serves in the foreground until Ctrl-C or `flare serve shutdown`.
pub fn run(config: &Path, session: &Path) -> anyhow::Result<()> {
    let cfg = read_config(config)?;
    if let Some(i) = instance(session)? {
        bail!(
            "Serve already runs here (pid {}, {}): `flare serve deploy` changes its config, `flare serve shutdown` stops it",
            i.pid,
            i.url
        );
    }
    std::fs::create_dir_all(session).with_context(|| format!("creating {}", session.display()))?;
    let token = flare::head::ensure_token(session).map_err(anyhow::Error::msg)?;
    flare::init_with(flare::Config::new().log_to_driver(false))?;
    let registry = flare::serve::builtin::registry();
    let opts = flare::serve::ServeOptions {
        host: cfg.http_options.host.clone().unwrap_or_else(|| "127.0.0.1".into()),
        port: cfg.http_options.port.unwrap_or(8000),
        request_timeout: Duration::from_secs_f64(cfg.http_options.request_timeout_s.unwrap_or(60.0).max(0.001)),
        admin_token: Some(token),
        ..Default::default()
    };
    let serve = flare::serve::run([], opts)?;
    serve.apply_config(&cfg, &registry)?;
    let state = serde_json::json!({"url": serve.url(), "pid": std::process::id()});
    std::fs::write(state_path(session), state.to_string()).context("writing serve.json")?;
    println!("Serve is running on {} (config API: {}/api/serve/applications/, token: `flare token`)", serve.url(), serve.url());
    serve.serve_until_deleted(&registry);
    let _ = std::fs::remove_file(state_path(session));
    flare::shutdown();
    Ok(())
}

/// `flare serve deploy CONFIG`: applies the config to the running instance, or starts one.
pub fn deploy(config: &Path, session: &Path) -> anyhow::Result<()> {
    let cfg = read_config(config)?;
    if let Some(i) = instance(session)? {
        call(&i, "PUT", serde_json::to_string(&cfg)?.as_bytes())?;
        println!("applied {} to Serve at {}", config.display(), i.url);
        return Ok(());
    }
    std::fs::create_dir_all(session.join("logs"))?;
    let log = std::fs::File::create(session.join("logs/serve.log"))?;
    let exe = std::env::current_exe()?;
    let config = std::path::absolute(config)?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("serve").arg("run").arg(&config).arg("--session-dir").arg(session);
    cmd.stdout(log.try_clone()?).stderr(log).stdin(std::process::Stdio::null());
    // Its own session, so that the terminal's Ctrl-C does not reach it.
    // SAFETY: setsid in the child before exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting `flare serve run`")?;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(300) {
        if let Some(st) = child.try_wait()? {
            let log = std::fs::read_to_string(session.join("logs/serve.log")).unwrap_or_default();
            bail!("`flare serve run` exited ({st}):\n{log}");
        }
        if let Some(i) = instance(session)? {
            let r = call(&i, "GET", b"")?;
            let v = r.json()?;
            let apps = v["applications"].as_object().cloned().unwrap_or_default();
            if let Some((name, a)) = apps.iter().find(|(_, a)| a["status"] == "DEPLOY_FAILED") {
                bail!("application '{name}' failed to deploy: {} (Serve keeps running: `flare serve status`)", a["message"]);
            }
            if apps.values().all(|a| a["status"] == "RUNNING") {
                println!("Serve is running on {} with {} application(s) (pid {})", i.url, apps.len(), i.pid);
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("Serve did not come up within 300 s; see {}", session.join("logs/serve.log").display())
}

pub fn status(session: &Path, json: bool) -> anyhow::Result<()> {
    let Some(i) = instance(session)? else {
        bail!("no Serve instance runs in {} (`flare serve deploy CONFIG` starts one)", session.display())
    };
    let v = call(&i, "GET", b"")?.json()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("proxy: {}", i.url);
    println!(
        "{:<20} {:<14} {:<14} {:<20} {:>9} {:>7}  message",
        "application", "route", "status", "deployment", "running", "queued"
    );
    for (name, a) in v["applications"].as_object().cloned().unwrap_or_default() {
        for (dname, d) in a["deployments"].as_object().cloned().unwrap_or_default() {
            let running = d["replica_states"]["RUNNING"].as_u64().unwrap_or(0);
            println!(
                "{:<20} {:<14} {:<14} {:<20} {:>5}/{:<3} {:>7}  {}",
                name,
                a["route_prefix"].as_str().unwrap_or(""),
                a["status"].as_str().unwrap_or(""),
                dname,
                running,
                d["target_num_replicas"],
                d["queued_requests"],
                d["message"].as_str().unwrap_or("")
            );
        }
    }
    Ok(())
}

pub fn shutdown(session: &Path) -> anyhow::Result<()> {
    let Some(i) = instance(session)? else {
        println!("no Serve instance runs in {}", session.display());
        return Ok(());
    };
    call(&i, "DELETE", b"")?;
    let t0 = Instant::now();
    // SAFETY: signal 0 only checks that the process exists.
    while unsafe { libc::kill(i.pid as i32, 0) } == 0 {
        if t0.elapsed() > Duration::from_secs(120) {
            bail!("Serve (pid {}) is still draining after 120 s", i.pid);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("Serve at {} shut down", i.url);
    Ok(())
}
