//! A Trainer as a Tune trial: each trial's actor starts a data-parallel Trainer (two more rank
//! actors), and the sweep compares trials by the Trainer's final loss.

use flare::train::{BoxError as TrainError, Params, RunConfig as TrainRun, ScalingConfig, TrainContext, Trainer};
use flare::tune::{
    grid_search, with_resources, Mode, ParamSpace, Resources, RunConfig, TrialContext, TrialStatus, TuneConfig, Tuner,
};
use serde_json::json;

fn train_loop(ctx: &mut TrainContext) -> Result<(), TrainError> {
    use candle_core::{Device, Module, Tensor};
    let lr = ctx.config_value()["lr"].as_f64().unwrap_or(0.1);
    let vm = candle_nn::VarMap::new();
    let model = flare::train::models::Mlp::new(&[4, 8, 1], &vm, &Device::Cpu)?;
    let params = Params::from_varmap(&vm)?;
    for (j, v) in params.vars().iter().enumerate() {
        let w: Vec<f32> = (0..v.elem_count()).map(|i| ((i * 3 + j) as f32 * 0.7).sin() * 0.3).collect();
        v.set(&Tensor::from_vec(w, v.dims(), &Device::Cpu)?)?;
    }
    let mut opt = flare::train::Sgd::new(lr);
    for step in 0..20u32 {
        let x: Vec<f32> = (0..8 * 4).map(|i| ((i as u32 + step * 5 + ctx.rank() as u32 * 97) as f32 * 0.31).sin()).collect();
        let x = Tensor::from_vec(x, (8, 4), &Device::Cpu)?;
        let y = x.sum_keepdim(1)?;
        let loss = flare::train::loss::mse(&model.forward(&x)?, &y)?;
        let grads = ctx.all_reduce_gradients(params.grads(&loss)?)?;
        flare::train::Optimizer::step(&mut opt, &params, &grads)?;
        let l = ctx.mean_across_ranks(loss.to_scalar::<f32>()? as f64)?;
        ctx.report(json!({"loss": l}), None)?;
    }
    Ok(())
}

fn trial(ctx: &mut TrialContext) -> Result<(), flare::tune::BoxError> {
    let lr = ctx.config()["lr"].as_f64().unwrap_or(0.1);
    let result = Trainer::new(train_loop)
        .config(json!({"lr": lr}))
        .scaling(ScalingConfig::new(2))
        .run_config(TrainRun {
            name: Some("train".into()),
            storage_path: Some(ctx.trial_dir().to_path_buf()),
            verbose: Some(false),
            ..Default::default()
        })
        .fit()?;
    ctx.report(json!({"loss": result.metrics["loss"], "ranks": 2, "reports": result.history.len()}), None)?;
    Ok(())
}

#[test]
fn a_trainer_runs_as_each_trial_of_a_sweep() {
    flare::init_with(flare::Config::new().num_cpus(3.0).log_to_driver(false)).unwrap();
    let dir = std::env::temp_dir().join(format!("flare_train_tune_{}", std::process::id()));
    let grid = Tuner::new(
        with_resources(trial, Resources { cpu: 0.5, gpu: 0.0, memory: 0 }),
        ParamSpace::new().set("lr", grid_search([0.001, 0.05])),
    )
    .tune_config(TuneConfig {
        metric: Some("loss".into()),
        mode: Mode::Min,
        max_concurrent_trials: Some(1),
        ..Default::default()
    })
    .run_config(RunConfig {
        name: Some("sweep".into()),
        storage_path: Some(dir.clone()),
        verbose: Some(false),
        ..Default::default()
    })
    .fit()
    .unwrap();
    assert_eq!(grid.results.len(), 2);
    for r in &grid.results {
        assert_eq!(r.status, TrialStatus::Terminated, "{r:?}");
        assert_eq!(r.metrics["reports"], 20, "{r:?}");
        assert!(r.path.join("train").join("result.json").exists(), "the Trainer wrote its run inside the trial's directory");
    }
    let best = grid.get_best_result(None, None).unwrap();
    assert_eq!(best.config["lr"], 0.05, "the larger learning rate learns more in 20 steps: {:?}", grid.results);
    let _ = std::fs::remove_dir_all(dir);
}
