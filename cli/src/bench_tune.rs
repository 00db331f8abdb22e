//! `flare bench tune-overhead`: the Tuner's own cost with trivial trainables, the cases
//! `benches/vs_ray_tune.sh` runs against Ray Tune: 200 one-report trials at 0.5 CPU each, and
//! 20 trials of 100 reports under ASHA.

use flare::tune::{uniform, with_resources, Asha, Mode, ParamSpace, Resources, RunConfig, TrialContext, TuneConfig, Tuner};
use serde_json::json;
use std::time::Instant;

fn trivial(ctx: &mut TrialContext) -> Result<(), flare::tune::BoxError> {
    let x = ctx.config()["x"].as_f64().unwrap_or(0.0);
    ctx.report(json!({"score": x}), None)?;
    Ok(())
}

fn curve(ctx: &mut TrialContext) -> Result<(), flare::tune::BoxError> {
    let x = ctx.config()["x"].as_f64().unwrap_or(0.0);
    for t in 1..=100u32 {
        ctx.report(json!({"acc": x * (1.0 - 1.0 / t as f64)}), None)?;
    }
    Ok(())
}

/// Runs one case; returns (wall seconds of `fit`, trials, reports).
pub fn run(case: &str, num_cpus: f64) -> anyhow::Result<(f64, usize, u64)> {
    flare::init_with(flare::Config::new().num_cpus(num_cpus).log_to_driver(false))?;
    let storage = std::env::temp_dir().join(format!("flare_bench_tune_{}", std::process::id()));
    let run =
        RunConfig { name: Some(case.into()), storage_path: Some(storage.clone()), verbose: Some(false), ..Default::default() };
    let space = ParamSpace::new().set("x", uniform(0.0, 1.0));
    let res = Resources { cpu: 0.5, gpu: 0.0, memory: 0 };
    let t0 = Instant::now();
    let grid = match case {
        "trivial" => Tuner::new(with_resources(trivial, res), space)
            .tune_config(TuneConfig { metric: Some("score".into()), mode: Mode::Max, num_samples: 200, ..Default::default() })
            .run_config(run)
            .fit()?,
        "asha" => Tuner::new(with_resources(curve, res), space)
            .tune_config(TuneConfig {
                metric: Some("acc".into()),
                mode: Mode::Max,
                num_samples: 20,
                scheduler: Some(Box::new(Asha::new(100, 1, 4.0, 1))),
                ..Default::default()
            })
            .run_config(run)
            .fit()?,
        other => anyhow::bail!("unknown case `{other}`: trivial or asha"),
    };
    let wall = t0.elapsed().as_secs_f64();
    let reports = grid.results.iter().map(|r| r.iterations).sum();
    if grid.num_errors() > 0 {
        anyhow::bail!("{} trials failed", grid.num_errors());
    }
    let _ = std::fs::remove_dir_all(storage);
    Ok((wall, grid.results.len(), reports))
}
