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

mod restarts {
    use super::*;
    use candle_core::{Device, Module, Tensor};
    use flare_train::models::Mlp;
    use flare_train::{optim::Optimizer, parity::weights_digest, BoxError, CheckpointData, Params, TrainContext};
    use flare_train::{CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, ScoreMode, Trainer};
    use serde_json::json;

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Cfg {
        steps: u64,
        kill_at: Option<u64>,
    }

    /// A batch that depends only on the step, so a resumed run sees the same data.
    fn batch(step: u64, rank: usize, world: usize) -> (Tensor, Tensor) {
        let n = 32 / world;
        let x: Vec<f32> = (0..n * 8).map(|i| ((i + rank * n * 8) as f32 * 0.37 + step as f32 * 1.3).sin()).collect();
        let x = Tensor::from_vec(x, (n, 8), &Device::Cpu).unwrap();
        let y = x.sum_keepdim(1).unwrap().tanh().unwrap();
        (x, y)
    }

    pub fn checkpointed_loop(ctx: &mut TrainContext) -> Result<(), BoxError> {
        let cfg: Cfg = ctx.config()?;
        let vm = candle_nn::VarMap::new();
        let model = Mlp::new(&[8, 16, 1], &vm, &Device::Cpu)?;
        let params = Params::from_varmap(&vm)?;
        // The same initial weights on every rank and in every run.
        for (j, v) in params.vars().iter().enumerate() {
            let w: Vec<f32> = (0..v.elem_count()).map(|i| ((i * 7 + j * 13) as f32 * 0.61).sin() * 0.3).collect();
            v.set(&Tensor::from_vec(w, v.dims(), &Device::Cpu)?)?;
        }
        let mut opt = flare_train::Adam::adamw(0.01);
        let mut start = 0;
        if let Some(c) = ctx.checkpoint() {
            c.load_model(&params)?;
            c.load_optimizer(&params, &mut opt)?;
            start = c.metadata()?["step"].as_u64().ok_or("no step in the checkpoint")?;
        }
        for step in start..cfg.steps {
            if ctx.attempt() == 0 && ctx.rank() == 1 && Some(step) == cfg.kill_at {
                // A real SIGKILL of this rank's process, mid-training.
                unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
            }
            let (x, y) = batch(step, ctx.rank(), ctx.world_size());
            let loss = flare_train::loss::mse(&model.forward(&x)?, &y)?;
            let grads = ctx.all_reduce_gradients(params.grads(&loss)?)?;
            opt.step(&params, &grads)?;
            let loss = ctx.mean_across_ranks(loss.to_scalar::<f32>()? as f64)?;
            let mut m = json!({"loss": loss, "step": step + 1});
            if step + 1 == cfg.steps {
                m["digest"] = json!(weights_digest(&params)?.to_string());
            }
            let ckpt = if (step + 1) % 2 == 0 {
                Some(CheckpointData::new().model(&params)?.optimizer(&params, &opt)?.meta("step", step + 1))
            } else {
                None
            };
            ctx.report(m, ckpt)?;
        }
        Ok(())
    }

    fn run(
        name: &str,
        kill_at: Option<u64>,
        max_failures: i32,
        dir: &std::path::Path,
    ) -> flare_train::Result<flare_train::TrainResult> {
        Trainer::new(checkpointed_loop)
            .config(Cfg { steps: 12, kill_at })
            .scaling(ScalingConfig::new(2))
            .run_config(RunConfig {
                name: Some(name.into()),
                storage_path: Some(dir.to_path_buf()),
                checkpoint: CheckpointConfig {
                    num_to_keep: Some(2),
                    score_attribute: Some("loss".into()),
                    score_mode: ScoreMode::Min,
                },
                failure: FailureConfig { max_failures },
                verbose: Some(false),
            })
            .collective_timeout(std::time::Duration::from_secs(20))
            .fit()
    }

    #[test]
    fn a_sigkilled_rank_restarts_the_group_from_the_latest_checkpoint_with_the_same_result() {
        init();
        let dir = storage("restart");
        let clean = run("clean", None, 0, &dir).unwrap();
        let killed = run("killed", Some(7), 2, &dir).unwrap();
        assert_eq!(clean.failures, 0);
        assert_eq!(killed.failures, 1, "one restart");
        assert_eq!(clean.metrics["digest"], killed.metrics["digest"], "the restored run ends with the same weights, bit for bit");
        assert_eq!(clean.metrics["loss"], killed.metrics["loss"]);
        let iters: Vec<u64> = killed.history.iter().map(|h| h["training_iteration"].as_u64().unwrap()).collect();
        assert_eq!(iters, (1..=12).collect::<Vec<_>>(), "reports after the restored checkpoint are not counted twice");
        assert_eq!(killed.history.last().unwrap()["attempt"], 1);
        // Files: one JSON line and one CSV row per report, a TensorBoard file, and the
        // checkpoints kept: the two best by loss and the newest.
        let lines = std::fs::read_to_string(killed.path.join("result.json")).unwrap();
        assert_eq!(lines.lines().count(), 12);
        let csv = std::fs::read_to_string(killed.path.join("progress.csv")).unwrap();
        assert_eq!(csv.lines().count(), 13);
        assert!(csv.lines().next().unwrap().contains("loss"));
        let tb = std::fs::read_dir(&killed.path)
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with("events.out.tfevents"));
        assert!(tb.is_some_and(|e| e.metadata().unwrap().len() > 100));
        let ckpts: Vec<_> = std::fs::read_dir(&killed.path)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("checkpoint_"))
            .collect();
        assert!(ckpts.len() <= 3 && ckpts.len() >= 2, "{} checkpoints kept", ckpts.len());
        let latest = killed.checkpoint.clone().unwrap();
        assert!(latest.path().ends_with("checkpoint_000012"));
        assert_eq!(latest.metadata().unwrap()["step"], 12);
        assert!(latest.path().join("model.safetensors").exists() && latest.path().join("optimizer.safetensors").exists());
        let best = &killed.best_checkpoints;
        assert!(best.len() >= 2);
        let l0 = best[0].1["loss"].as_f64().unwrap();
        assert!(best.iter().all(|(_, m)| m["loss"].as_f64().unwrap() >= l0), "best first");
        // A new run can start from any checkpoint directory.
        let resumed = Trainer::new(checkpointed_loop)
            .config(Cfg { steps: 12, kill_at: None })
            .scaling(ScalingConfig::new(2))
            .run_config(RunConfig {
                name: Some("resumed".into()),
                storage_path: Some(dir.clone()),
                verbose: Some(false),
                ..Default::default()
            })
            .resume_from(latest.clone())
            .fit()
            .unwrap();
        assert!(resumed.history.is_empty(), "nothing left to train after step 12");
        let from_ten =
            clean.best_checkpoints.iter().find(|(c, _)| c.path().ends_with("checkpoint_000010")).map(|(c, _)| c.clone());
        if let Some(c) = from_ten {
            let r = Trainer::new(checkpointed_loop)
                .config(Cfg { steps: 12, kill_at: None })
                .scaling(ScalingConfig::new(2))
                .run_config(RunConfig {
                    name: Some("from10".into()),
                    storage_path: Some(dir.clone()),
                    verbose: Some(false),
                    ..Default::default()
                })
                .resume_from(c)
                .fit()
                .unwrap();
            assert_eq!(r.history.len(), 2);
            assert_eq!(r.metrics["digest"], clean.metrics["digest"]);
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn failures_beyond_max_failures_fail_the_run_with_the_reason() {
        init();
        let dir = storage("maxfail");
        let e = run("nofail", Some(3), 0, &dir).unwrap_err().to_string();
        assert!(e.contains("max_failures 0") && e.contains("rank 1"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn infeasible_and_invalid_configs_fail_fast_with_a_message() {
    use flare_train::{BoxError, ScalingConfig, TrainContext, Trainer};
    fn noop(_: &mut TrainContext) -> Result<(), BoxError> {
        Ok(())
    }
    init();
    let t0 = std::time::Instant::now();
    let e = Trainer::new(noop).scaling(ScalingConfig::new(2).use_gpu(true)).fit().unwrap_err();
    assert!(matches!(e, flare_train::Error::Infeasible(_)), "{e}");
    assert!(e.to_string().contains("GPU"), "{e}");
    let e = Trainer::new(noop).scaling(ScalingConfig::new(64)).fit().unwrap_err();
    assert!(matches!(e, flare_train::Error::Infeasible(_)), "{e}");
    assert!(t0.elapsed().as_secs() < 20, "fails fast");
    let e = Trainer::new(noop).scaling(ScalingConfig::new(0)).fit().unwrap_err();
    assert!(e.to_string().contains("num_workers"), "{e}");
    let e = Trainer::new(noop).backend("gloo").fit().unwrap_err();
    assert!(e.to_string().contains("gloo"), "{e}");
    fn fails(ctx: &mut TrainContext) -> Result<(), BoxError> {
        Err(format!("bad data on rank {}", ctx.rank()).into())
    }
    let e = Trainer::new(fails)
        .scaling(ScalingConfig::new(2))
        .run_config(flare_train::RunConfig { verbose: Some(false), ..Default::default() });
    let e = e
        .run_config(flare_train::RunConfig { storage_path: Some(storage("fails")), verbose: Some(false), ..Default::default() })
        .fit()
        .unwrap_err();
    assert!(e.to_string().contains("bad data on rank"), "{e}");
}
