//! Trains a PyTorch reference run through the Trainer with N ranks and compares with torch.
//!
//! ```text
//! cargo run --release --example torch_parity -- --oracle ../shared/oracles/train --run a_sgd_momentum --world-size 2
//! ```
//!
//! The oracle directory holds `datasets.safetensors`, `init_weights.safetensors` and
//! `trajectories.json`; the run's task, loss, optimizer and its arguments are read from the
//! file, so any run in that format works. Each rank trains on a contiguous 1/N of every batch.
//! Prints the largest differences from torch's losses and final weights and exits non-zero past
//! the tolerance (1e-5 unless `--tolerance` says otherwise).

use std::path::PathBuf;
use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!("usage: torch_parity --oracle DIR --run NAME [--world-size N] [--tolerance T]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    if let Err(e) = flare::init() {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let mut oracle = None;
    let mut run = None;
    let mut world_size = 1usize;
    let mut tolerance = 1e-5f64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next();
        match a.as_str() {
            "--oracle" => oracle = value().map(PathBuf::from),
            "--run" => run = value(),
            "--world-size" => match value().and_then(|v| v.parse().ok()) {
                Some(n) if n >= 1 => world_size = n,
                _ => return usage(),
            },
            "--tolerance" => match value().and_then(|v| v.parse().ok()) {
                Some(t) => tolerance = t,
                None => return usage(),
            },
            "-h" | "--help" => return usage(),
            other => {
                eprintln!("unknown argument `{other}`");
                return usage();
            }
        }
    }
    let (Some(oracle), Some(run)) = (oracle, run) else { return usage() };
    let storage = std::env::temp_dir().join("flare_torch_parity");
    match flare::train::parity::run_parity(&oracle, &run, world_size, &storage) {
        Ok(r) => {
            println!("run {run}: {} steps with {world_size} rank(s), final loss {:.6}", r.steps, r.final_loss);
            println!("  max |loss - torch|     = {:.3e}", r.loss_max_abs_diff);
            println!("  max |weight - torch|   = {:.3e}", r.weight_max_abs_diff);
            let _ = std::fs::remove_dir_all(&r.result.path);
            if r.loss_max_abs_diff <= tolerance && r.weight_max_abs_diff <= tolerance {
                println!("  within {tolerance:e}: OK");
                ExitCode::SUCCESS
            } else {
                println!("  beyond {tolerance:e}: FAIL");
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
