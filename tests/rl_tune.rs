//! An RL run as a Tune trainable: each trial trains PPO on CartPole-v1 in its trial actor and
//! reports its mean return after every rollout, so schedulers see the learning curve.

use flare::rl::algo::ppo::{self, PpoConfig};
use flare::tune::{
    grid_search, with_resources, Mode, ParamSpace, Resources, RunConfig, TrialContext, TrialStatus, TuneConfig, Tuner,
};
use serde_json::json;

fn ppo_trial(ctx: &mut TrialContext) -> Result<(), flare::tune::BoxError> {
    let cfg = PpoConfig {
        learning_rate: ctx.config()["lr"].as_f64().unwrap_or(2.5e-4) as f32,
        seed: 1,
        total_env_steps: 40_000,
        stop_when_solved: false,
        ..Default::default()
    };
    let mut failed = None;
    let (summary, _) = ppo::train(&cfg, |p| {
        let (steps, mean) = (p.env_steps, p.mean_return);
        if failed.is_none() && mean.is_finite() {
            if let Err(e) = ctx.report(json!({"env_steps": steps, "mean_return": mean}), None) {
                failed = Some(e);
            }
        }
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    ctx.report(json!({"env_steps": summary.env_steps, "mean_return": summary.mean_return, "done": true}), None)?;
    Ok(())
}

#[test]
fn ppo_runs_as_a_tune_trainable() {
    flare::init_with(flare::Config::new().num_cpus(2.0).log_to_driver(false)).unwrap();
    let dir = std::env::temp_dir().join(format!("flare_rl_tune_{}", std::process::id()));
    let grid = Tuner::new(
        with_resources(ppo_trial, Resources { cpu: 1.0, gpu: 0.0, memory: 0 }),
        // A learning rate of 0 never moves the random policy: the sweep must rank it last.
        ParamSpace::new().set("lr", grid_search([0.0, 2.5e-4])),
    )
    .tune_config(TuneConfig { metric: Some("mean_return".into()), mode: Mode::Max, ..Default::default() })
    .run_config(RunConfig {
        name: Some("ppo".into()),
        storage_path: Some(dir.clone()),
        verbose: Some(false),
        ..Default::default()
    })
    .fit()
    .unwrap();
    assert_eq!(grid.results.len(), 2);
    for r in &grid.results {
        assert_eq!(r.status, TrialStatus::Terminated, "{r:?}");
        // Whole rollouts: the run stops at the first one past 40,000 steps.
        assert!(r.metrics["env_steps"].as_u64().unwrap() >= 40_000, "{r:?}");
        assert!(r.iterations > 10, "one report per rollout: {r:?}");
        assert_eq!(r.metrics["done"], true);
    }
    let best = grid.get_best_result(None, None).unwrap();
    let worst = grid.results.iter().find(|r| r.config["lr"] == 0.0).unwrap();
    assert_eq!(best.config["lr"], 2.5e-4, "{:?}", grid.results);
    assert!(
        best.metrics["mean_return"].as_f64().unwrap() > 2.0 * worst.metrics["mean_return"].as_f64().unwrap(),
        "learning beats a frozen random policy: {:?}",
        grid.results
    );
    let _ = std::fs::remove_dir_all(dir);
}
