//! The Trainer with real rank processes: PyTorch parity at 1, 2 and 4 ranks, checkpoints,
//! restarts after a SIGKILL, and configuration errors.

use flare_train::parity::run_parity;
use std::path::PathBuf;

fn init() {
    flare_core::init_with(flare_core::Config::new().num_cpus(4.0).log_to_driver(false)).unwrap();
}

fn oracle() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/oracles/train");
    assert!(dir.join("trajectories.json").exists(), "the PyTorch oracle is missing: expected {}", dir.display());
    dir
}

fn storage(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("flare_train_test_{tag}_{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn world_sizes_1_2_4_reproduce_every_torch_run() {
    init();
    let runs = flare_train::parity::run_spec(&oracle(), "a_sgd_momentum").unwrap().0["runs"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect::<Vec<_>>();
    let dir = storage("parity");
    for run in &runs {
        for ws in [1, 2, 4] {
            let r = run_parity(&oracle(), run, ws, &dir).unwrap();
            eprintln!("{run} ranks={ws}: loss diff {:.3e}, weight diff {:.3e}", r.loss_max_abs_diff, r.weight_max_abs_diff);
            assert_eq!(r.steps, 50);
            assert!(r.loss_max_abs_diff < 1e-5, "{run} at {ws} ranks: losses differ by {}", r.loss_max_abs_diff);
            assert!(r.weight_max_abs_diff < 1e-5, "{run} at {ws} ranks: final weights differ by {}", r.weight_max_abs_diff);
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}
