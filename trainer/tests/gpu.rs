//! Training on CUDA through the Trainer (one rank on one GPU, NCCL), against torch's reference
//! and the CPU run. Needs the `cuda` feature and a GPU: `scripts/gpu-check.sh` builds it with
//! both and runs it on a lent GPU machine; elsewhere it says why it did nothing, and fails
//! under `FLARE_REQUIRE_GPU=1`.

use std::path::PathBuf;

fn oracle() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/oracles/train");
    let dir = std::env::var_os("FLARE_TRAIN_ORACLE").map(PathBuf::from).unwrap_or(here);
    assert!(
        dir.join("trajectories.json").exists(),
        "the PyTorch oracle is missing: expected {} (or set FLARE_TRAIN_ORACLE)",
        dir.display()
    );
    dir
}

fn gpu_or_skip() -> bool {
    let required = std::env::var("FLARE_REQUIRE_GPU").is_ok_and(|v| v == "1");
    let why = if !cfg!(feature = "cuda") {
        Some("this test binary was built without the `cuda` feature".to_string())
    } else {
        let d = flare_gpu::discover();
        d.gpus.is_empty().then(|| format!("no GPU: {}", d.reason.clone().unwrap_or_default()))
    };
    match why {
        None => true,
        Some(why) if required => panic!("FLARE_REQUIRE_GPU=1 but {why}"),
        Some(why) => {
            eprintln!("skipped: {why}");
            false
        }
    }
}

#[test]
fn cuda_training_reproduces_torch_and_the_cpu_run() {
    if !gpu_or_skip() {
        return;
    }
    flare_core::init_with(flare_core::Config::new().log_to_driver(false)).unwrap();
    let storage = std::env::temp_dir().join(format!("flare_gpu_train_{}", std::process::id()));
    for run in ["a_sgd_momentum", "b_adam"] {
        let cpu = flare_train::parity::run_parity_on(&oracle(), run, 1, false, &storage).unwrap();
        let gpu = flare_train::parity::run_parity_on(&oracle(), run, 1, true, &storage).unwrap();
        println!(
            "{run}: CUDA loss diff {:.3e}, weight diff {:.3e}; CPU loss diff {:.3e}, weight diff {:.3e}; final loss CUDA {:.6} CPU {:.6}",
            gpu.loss_max_abs_diff, gpu.weight_max_abs_diff, cpu.loss_max_abs_diff, cpu.weight_max_abs_diff, gpu.final_loss, cpu.final_loss
        );
        assert!(gpu.loss_max_abs_diff < 1e-4 && gpu.weight_max_abs_diff < 1e-4, "{run} on CUDA is off torch: {gpu:?}");
        assert!((gpu.final_loss - cpu.final_loss).abs() < 1e-4, "{run}: CUDA and CPU runs disagree");
    }
    let _ = std::fs::remove_dir_all(storage);
}
