//! The Flare side of Serve's no-op benchmark: one deployment answering `POST /` with a small
//! JSON, or (`--bare`) the same handler on bare axum, the baseline for the proxy's overhead.
//!
//! `cargo run --release --example serve_noop -- --port 8000 [--replicas 1] [--max-ongoing 100]
//!  [--max-batch-size 1] [--batch-wait-ms 0] [--in-process] [--bare]`
//!
//! `--in-process` runs the replicas in the proxy's process (no process hop per request).

use flare::serve::{self, Application, Deployment, ReplicaContext, Request, Response, ServeOptions};
use std::time::Duration;

struct Noop;

impl Deployment for Noop {
    type Config = ();

    fn new(_: (), _: &ReplicaContext) -> Result<Self, String> {
        Ok(Noop)
    }

    fn handle_batch(&self, batch: Vec<Request>) -> Result<Vec<Response>, String> {
        let n = batch.len();
        Ok(batch.iter().map(|_| Response::json(&serde_json::json!({"ok": true, "batch_size": n}))).collect())
    }
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> Result<T, String> {
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{name} needs a value (see the usage at the top of examples/serve_noop.rs)")),
    }
}

fn bare(port: u16) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let app = axum::Router::new().fallback(|| async {
            (
                [("content-type", "application/json")],
                serde_json::to_vec(&serde_json::json!({"ok": true, "batch_size": 1})).unwrap_or_default(),
            )
        });
        let l = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        println!("bare axum on http://{}", l.local_addr()?);
        axum::serve(l, app).await?;
        anyhow::Ok(())
    })
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let port: u16 = arg(&args, "--port", 8000).map_err(anyhow::Error::msg)?;
    if args.iter().any(|a| a == "--bare") {
        return bare(port);
    }
    let replicas: usize = arg(&args, "--replicas", 1).map_err(anyhow::Error::msg)?;
    let max_ongoing: usize = arg(&args, "--max-ongoing", 100).map_err(anyhow::Error::msg)?;
    let max_batch: usize = arg(&args, "--max-batch-size", 1).map_err(anyhow::Error::msg)?;
    let wait_ms: u64 = arg(&args, "--batch-wait-ms", 0).map_err(anyhow::Error::msg)?;
    flare::init_with(flare::Config::new().log_to_driver(false))?;
    let mut d = serve::deployment::<Noop>("noop", ())
        .num_replicas(replicas)
        .num_cpus(0.0)
        .max_ongoing_requests(max_ongoing)
        .max_queued_requests(100_000)
        .max_batch_size(max_batch, Duration::from_millis(wait_ms));
    if args.iter().any(|a| a == "--in-process") {
        d = d.in_process();
    }
    let s = serve::run([Application::new("/", d)], ServeOptions { port, ..Default::default() })?;
    s.wait_ready(Duration::from_secs(60))?;
    println!("serving on {}", s.url());
    s.wait_for_signal();
    Ok(())
}
