//! Search quality on standard test functions, in the layout of Optuna's anchor
//! (`../shared/oracles/hpo/optuna_anchor.json`): the best value after 25, 50 and 100 trials
//! over many seeds, as median and quartiles (numpy's linear percentiles).

use crate::search::{Mode, RandomSearch, Searcher, Suggestion, Tpe, TpeConfig};
use crate::space::{uniform, ParamSpace};
use crate::{Error, Result};
use serde_json::{json, Value};
use std::time::Instant;

/// A test function: its bounds and value.
pub struct TestFunction {
    pub name: &'static str,
    pub bounds: Vec<(f64, f64)>,
    pub f: fn(&[f64]) -> f64,
}

fn branin(x: &[f64]) -> f64 {
    use std::f64::consts::PI;
    let (x1, x2) = (x[0], x[1]);
    let b = 5.1 / (4.0 * PI * PI);
    (x2 - b * x1 * x1 + 5.0 / PI * x1 - 6.0).powi(2) + 10.0 * (1.0 - 1.0 / (8.0 * PI)) * x1.cos() + 10.0
}

fn hartmann6(x: &[f64]) -> f64 {
    const ALPHA: [f64; 4] = [1.0, 1.2, 3.0, 3.2];
    const A: [[f64; 6]; 4] = [
        [10.0, 3.0, 17.0, 3.5, 1.7, 8.0],
        [0.05, 10.0, 17.0, 0.1, 8.0, 14.0],
        [3.0, 3.5, 1.7, 10.0, 17.0, 8.0],
        [17.0, 8.0, 0.05, 10.0, 0.1, 14.0],
    ];
    const P: [[f64; 6]; 4] = [
        [1312.0, 1696.0, 5569.0, 124.0, 8283.0, 5886.0],
        [2329.0, 4135.0, 8307.0, 3736.0, 1004.0, 9991.0],
        [2348.0, 1451.0, 3522.0, 2883.0, 3047.0, 6650.0],
        [4047.0, 8828.0, 8732.0, 5743.0, 1091.0, 381.0],
    ];
    -(0..4).map(|i| ALPHA[i] * (-(0..6).map(|j| A[i][j] * (x[j] - P[i][j] * 1e-4).powi(2)).sum::<f64>()).exp()).sum::<f64>()
}

fn rosenbrock5(x: &[f64]) -> f64 {
    (0..4).map(|i| 100.0 * (x[i + 1] - x[i] * x[i]).powi(2) + (1.0 - x[i]).powi(2)).sum()
}

pub fn function(name: &str) -> Result<TestFunction> {
    Ok(match name {
        "branin" => TestFunction { name: "branin", bounds: vec![(-5.0, 10.0), (0.0, 15.0)], f: branin },
        "hartmann6" => TestFunction { name: "hartmann6", bounds: vec![(0.0, 1.0); 6], f: hartmann6 },
        "rosenbrock5" => TestFunction { name: "rosenbrock5", bounds: vec![(-5.0, 10.0); 5], f: rosenbrock5 },
        other => return Err(Error::Config(format!("unknown function `{other}`: branin, hartmann6 or rosenbrock5"))),
    })
}

/// numpy.percentile with linear interpolation.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = p / 100.0 * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

fn stats(mut v: Vec<f64>) -> Value {
    v.sort_by(f64::total_cmp);
    json!({"median": percentile(&v, 50.0), "q1": percentile(&v, 25.0), "q3": percentile(&v, 75.0),
           "min": v.first().copied().unwrap_or(f64::NAN), "max": v.last().copied().unwrap_or(f64::NAN)})
}

/// One study: `trials` sequential suggestions and evaluations; the best value after each.
pub fn study(fun: &TestFunction, searcher: &str, seed: u64, trials: usize) -> Result<Vec<f64>> {
    let mut space = ParamSpace::new();
    for (i, (lo, hi)) in fun.bounds.iter().enumerate() {
        space = space.set(&format!("x{i}"), uniform(*lo, *hi));
    }
    let flat = space.flatten()?;
    let mut s: Box<dyn Searcher> = match searcher {
        "tpe" => Box::new(Tpe::new(TpeConfig { seed, ..Default::default() })),
        x if x.starts_with("tpe:") => {
            // tpe:<candidates>:<multivariate 0|1>:<startup> (for exploring settings)
            let p: Vec<usize> = x[4..].split(':').filter_map(|v| v.parse().ok()).collect();
            let g = |i: usize, d: usize| p.get(i).copied().unwrap_or(d);
            Box::new(Tpe::new(TpeConfig {
                seed,
                n_ei_candidates: g(0, 64),
                multivariate: g(1, 1) == 1,
                n_startup_trials: g(2, 5),
                ..Default::default()
            }))
        }
        "tpe-univariate" => Box::new(Tpe::new(TpeConfig { seed, multivariate: false, ..Default::default() })),
        "tpe-optuna" => Box::new(Tpe::new(TpeConfig::optuna(seed))),
        "random" => Box::new(RandomSearch::new(seed)),
        other => return Err(Error::Config(format!("unknown searcher `{other}`: tpe, tpe-optuna, tpe-univariate or random"))),
    };
    s.set_search_properties(&flat.searched, "value", Mode::Min);
    let mut best = f64::INFINITY;
    let mut out = Vec::with_capacity(trials);
    for t in 0..trials {
        let id = format!("t{t}");
        let Suggestion::Config(vals) = s.suggest(&id) else { return Err(Error::Config("the searcher stopped early".into())) };
        let x: Vec<f64> = vals.iter().map(|v| v.as_f64().unwrap_or(f64::NAN)).collect();
        let y = (fun.f)(&x);
        best = best.min(y);
        out.push(best);
        s.on_trial_complete(&id, Some(&json!({"value": y})), false);
    }
    Ok(out)
}

/// Many seeds; `best_after` at 25, 50 and 100 trials (those within `trials`) and wall times.
pub fn run(function_name: &str, searcher: &str, trials: usize, seeds: u64) -> Result<Value> {
    let fun = function(function_name)?;
    let mut curves = Vec::new();
    let mut walls = Vec::new();
    for seed in 0..seeds {
        let t0 = Instant::now();
        curves.push(study(&fun, searcher, seed, trials)?);
        walls.push(t0.elapsed().as_secs_f64());
    }
    let mut best_after = serde_json::Map::new();
    for n in [25usize, 50, 100].into_iter().filter(|n| *n <= trials) {
        best_after.insert(n.to_string(), stats(curves.iter().map(|c| c[n - 1]).collect()));
    }
    let total: f64 = walls.iter().sum();
    let mut sorted = walls.clone();
    sorted.sort_by(f64::total_cmp);
    let median = percentile(&sorted, 50.0);
    Ok(json!({"function": fun.name, "searcher": searcher, "n_trials": trials, "seeds": seeds,
              "best_after": best_after, "wall_time_s": {"median": median, "total": total}}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn functions_have_their_known_minima() {
        use std::f64::consts::PI;
        assert!((branin(&[PI, 2.275]) - 0.397887).abs() < 1e-5);
        let h = hartmann6(&[0.20169, 0.150011, 0.476874, 0.275332, 0.311652, 0.6573]);
        assert!((h + 3.32237).abs() < 1e-4, "{h}");
        assert_eq!(rosenbrock5(&[1.0; 5]), 0.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 25.0), 1.75);
    }
}
