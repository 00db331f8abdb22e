//! OpenAI-compatible embeddings (`POST /v1/embeddings`, `GET /v1/models`) serving
//! sentence-transformers' all-MiniLM-L6-v2 with candle, with dynamic batching.
//!
//! `scripts/fetch-minilm.sh` first, then
//! `cargo run --release --example serve_embeddings -- --model-dir models/all-MiniLM-L6-v2 --port 8000
//!  [--replicas 1] [--max-batch-size 32] [--batch-wait-ms 5] [--no-batching] [--num-gpus 0.5]`

use flare::serve::embeddings::{Embeddings, EmbeddingsConfig};
use flare::serve::{self, Application, ServeOptions};
use std::time::Duration;

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> Result<T, String> {
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{name} needs a value (see the usage at the top of examples/serve_embeddings.rs)")),
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let model_dir: String = arg(&args, "--model-dir", "models/all-MiniLM-L6-v2".to_string()).map_err(anyhow::Error::msg)?;
    let port: u16 = arg(&args, "--port", 8000).map_err(anyhow::Error::msg)?;
    let replicas: usize = arg(&args, "--replicas", 1).map_err(anyhow::Error::msg)?;
    let mut max_batch: usize = arg(&args, "--max-batch-size", 32).map_err(anyhow::Error::msg)?;
    let wait_ms: u64 = arg(&args, "--batch-wait-ms", 5).map_err(anyhow::Error::msg)?;
    let num_gpus: f64 = arg(&args, "--num-gpus", 0.0).map_err(anyhow::Error::msg)?;
    if args.iter().any(|a| a == "--no-batching") {
        max_batch = 1;
    }
    let model_dir = std::path::absolute(&model_dir)?;
    if !model_dir.join("model.safetensors").is_file() {
        anyhow::bail!(
            "{} has no model.safetensors: run scripts/fetch-minilm.sh {} first",
            model_dir.display(),
            model_dir.display()
        );
    }
    // The node offers the GPUs it finds (NVML or the CUDA driver); `--num-gpus 0.5` packs two
    // replicas on each.
    flare::init_with(flare::Config::new().log_to_driver(false))?;
    let d = serve::deployment::<Embeddings>("embeddings", EmbeddingsConfig { model_dir, ..Default::default() })
        .num_replicas(replicas)
        .num_cpus(1.0)
        .num_gpus(num_gpus)
        // One running batch per replica: the forward uses every core.
        .max_ongoing_requests(max_batch)
        .max_queued_requests(10_000)
        .max_batch_size(max_batch, Duration::from_millis(wait_ms));
    let s = serve::run([Application::new("/", d)], ServeOptions { port, ..Default::default() })?;
    s.wait_ready(Duration::from_secs(300))?;
    println!("serving all-MiniLM-L6-v2 on {}/v1/embeddings (max batch size {max_batch})", s.url());
    s.wait_for_signal();
    Ok(())
}
