//! Searchers: what config the next trial gets. Random search, TPE (a tree-structured Parzen
//! estimator, Optuna's default algorithm, implemented here: seeded and deterministic), and the
//! ConcurrencyLimiter and Repeater wrappers. Grid dimensions are expanded by the Tuner; a
//! searcher sees only the sampled ones.

use crate::rng::Rng;
use crate::space::{finish_float, sample_dim, Dim, Domain};
use serde_json::Value;
use std::collections::HashMap;

/// Whether the metric is minimized or maximized.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Mode {
    Min,
    Max,
}

/// A searcher's answer.
#[derive(Clone, Debug, PartialEq)]
pub enum Suggestion {
    /// Values for the searched dimensions, in their order.
    Config(Vec<Value>),
    /// Nothing now (a limit is reached); ask again after a trial completes.
    Wait,
    /// No more trials from this searcher.
    Done,
}

/// Ray Tune's `Searcher`: users can implement their own.
pub trait Searcher: Send {
    /// Called once before the first suggestion.
    fn set_search_properties(&mut self, _dims: &[Dim], _metric: &str, _mode: Mode) {}
    fn suggest(&mut self, trial_id: &str) -> Suggestion;
    /// An intermediate result.
    fn on_trial_result(&mut self, _trial_id: &str, _result: &Value) {}
    /// The trial ended: its last result, or `error`.
    fn on_trial_complete(&mut self, trial_id: &str, result: Option<&Value>, error: bool);
}

fn metric_of(result: Option<&Value>, metric: &str) -> Option<f64> {
    let mut v = result?;
    for part in metric.split('/') {
        v = v.get(part)?;
    }
    v.as_f64().filter(|x| x.is_finite())
}

/// Independent uniform draws.
pub struct RandomSearch {
    rng: Rng,
    dims: Vec<Dim>,
}

impl RandomSearch {
    pub fn new(seed: u64) -> Self {
        RandomSearch { rng: Rng::new(seed), dims: Vec::new() }
    }
}

impl Searcher for RandomSearch {
    fn set_search_properties(&mut self, dims: &[Dim], _metric: &str, _mode: Mode) {
        self.dims = dims.to_vec();
    }
    fn suggest(&mut self, _trial_id: &str) -> Suggestion {
        Suggestion::Config(self.dims.iter().map(|d| sample_dim(&d.domain, &mut self.rng)).collect())
    }
    fn on_trial_complete(&mut self, _trial_id: &str, _result: Option<&Value>, _error: bool) {}
}

/// TPE settings. The model is Optuna 5's: multivariate (one joint mixture of product kernels),
/// `gamma(n) = min(ceil(0.1 n), 25)`, prior weight 1, magic clip, bandwidths from neighbor
/// distances, older trials down-weighted past 25; `multivariate: false` samples every
/// dimension from its own mixture (Optuna 4's default). The defaults differ from Optuna's in
/// two counts, chosen by measurement (docs/benchmarks.md): 5 random start-up trials instead of
/// 10 and 64 EI candidates instead of 24 (`optuna()` gives Optuna's counts).
#[derive(Clone, Debug)]
pub struct TpeConfig {
    pub seed: u64,
    pub n_startup_trials: usize,
    pub n_ei_candidates: usize,
    pub prior_weight: f64,
    pub multivariate: bool,
}

impl Default for TpeConfig {
    fn default() -> Self {
        TpeConfig { seed: 0, n_startup_trials: 5, n_ei_candidates: 64, prior_weight: 1.0, multivariate: true }
    }
}

impl TpeConfig {
    /// Optuna 5's `TPESampler()` defaults (10 start-up trials, 24 candidates).
    pub fn optuna(seed: u64) -> Self {
        TpeConfig { seed, n_startup_trials: 10, n_ei_candidates: 24, ..Default::default() }
    }
}

/// The tree-structured Parzen estimator.
pub struct Tpe {
    cfg: TpeConfig,
    rng: Rng,
    dims: Vec<Dim>,
    metric: String,
    mode: Mode,
    pending: HashMap<String, Vec<f64>>,
    /// Completed trials in completion order: internal values and the loss (lower is better).
    observed: Vec<(Vec<f64>, f64)>,
}

/// A dimension in TPE's internal space: a float interval (log for log domains), or categories.
#[derive(Clone, Copy, Debug)]
enum Axis {
    Num { low: f64, high: f64 },
    Cat { n: usize },
}

fn axis(d: &Domain) -> Axis {
    match *d {
        Domain::Float { lo, hi, log, q } => {
            let (lo, hi) = match q {
                Some(q) => (lo - q / 2.0, hi + q / 2.0),
                None => (lo, hi),
            };
            if log {
                Axis::Num { low: lo.max(f64::MIN_POSITIVE).ln(), high: hi.ln() }
            } else {
                Axis::Num { low: lo, high: hi }
            }
        }
        Domain::Int { lo, hi, log, q } => {
            let (lo, hi) = match q {
                Some(q) => (lo as f64 - q as f64 / 2.0, hi as f64 + q as f64 / 2.0),
                None => (lo as f64 - 0.5, (hi - 1) as f64 + 0.5),
            };
            if log {
                Axis::Num { low: lo.max(0.5).ln(), high: hi.ln() }
            } else {
                Axis::Num { low: lo, high: hi }
            }
        }
        Domain::Choice(ref v) => Axis::Cat { n: v.len() },
        _ => Axis::Cat { n: 1 },
    }
}

/// Internal value to the domain's value.
fn to_value(d: &Domain, x: f64) -> Value {
    match *d {
        Domain::Float { lo, hi, log, q } => Value::from(finish_float(if log { x.exp() } else { x }, lo, hi, q)),
        Domain::Int { lo, hi, log, q } => {
            let v = if log { x.exp() } else { x };
            let v = match q {
                Some(q) => lo + (((v - lo as f64) / q as f64).round() as i64) * q,
                None => v.round() as i64,
            };
            let top = if q.is_some() { hi } else { hi - 1 };
            Value::from(v.clamp(lo, top))
        }
        Domain::Choice(ref c) => c[(x as usize).min(c.len() - 1)].clone(),
        _ => Value::Null,
    }
}

/// The domain's value to the internal value (for values given by other searchers).
fn from_value(d: &Domain, v: &Value) -> f64 {
    match *d {
        Domain::Float { log, .. } | Domain::Int { log, .. } => {
            let x = v.as_f64().unwrap_or(0.0);
            if log {
                x.max(f64::MIN_POSITIVE).ln()
            } else {
                x
            }
        }
        Domain::Choice(ref c) => c.iter().position(|e| e == v).unwrap_or(0) as f64,
        _ => 0.0,
    }
}

fn default_weights(n: usize) -> Vec<f64> {
    if n < 25 {
        return vec![1.0; n];
    }
    let ramp = n - 25;
    let mut w: Vec<f64> = (0..ramp)
        .map(|i| if ramp == 1 { 1.0 / n as f64 } else { 1.0 / n as f64 + (1.0 - 1.0 / n as f64) * i as f64 / (ramp - 1) as f64 })
        .collect();
    w.extend(std::iter::repeat_n(1.0, 25));
    w
}

fn norm_cdf(z: f64) -> f64 {
    0.5 * (1.0 + libm::erf(z / std::f64::consts::SQRT_2))
}

/// A truncated normal mixture over one numeric axis, or a categorical mixture.
struct Kernel {
    mu: Vec<f64>,
    sigma: Vec<f64>,
}

/// A mixture over all axes: component `k` has, per numeric axis, a (mu, sigma), and per
/// categorical axis a distribution over categories.
struct Parzen {
    weights: Vec<f64>,
    num: Vec<Option<Kernel>>,
    cat: Vec<Option<Vec<Vec<f64>>>>,
    axes: Vec<Axis>,
}

impl Parzen {
    /// Optuna's `_ParzenEstimator` over `obs` (rows of internal values), with weights `w`.
    fn new(obs: &[&[f64]], w: &[f64], axes: &[Axis], prior_weight: f64) -> Self {
        let n = obs.len();
        let mut weights: Vec<f64> = w.to_vec();
        weights.push(prior_weight);
        let total: f64 = weights.iter().sum();
        weights.iter_mut().for_each(|x| *x /= total);
        let n_kernels = n + 1;
        let mut num = Vec::new();
        let mut cat = Vec::new();
        for (j, a) in axes.iter().enumerate() {
            match *a {
                Axis::Num { low, high } => {
                    let mut mu: Vec<f64> = obs.iter().map(|o| o[j]).collect();
                    let prior_mu = 0.5 * (low + high);
                    let range = high - low;
                    // Distance to the farther neighbor among the sorted observations, with the
                    // bounds as endpoints; the outermost points use their inner neighbor only
                    // (Optuna 5's rule, for univariate and multivariate TPE alike).
                    let mut order: Vec<usize> = (0..n).collect();
                    order.sort_by(|&a, &b| mu[a].total_cmp(&mu[b]));
                    let mut ends = vec![low];
                    ends.extend(order.iter().map(|&i| mu[i]));
                    ends.push(high);
                    let mut sigma = vec![0.0; n];
                    if n > 0 {
                        let mut sorted_sigma: Vec<f64> =
                            (1..=n).map(|i| (ends[i] - ends[i - 1]).max(ends[i + 1] - ends[i])).collect();
                        if ends.len() >= 4 {
                            sorted_sigma[0] = ends[2] - ends[1];
                            sorted_sigma[n - 1] = ends[n] - ends[n - 1];
                        }
                        for (k, &i) in order.iter().enumerate() {
                            sigma[i] = sorted_sigma[k];
                        }
                    }
                    let minsigma = range / (1.0 + n_kernels as f64).min(100.0);
                    sigma.iter_mut().for_each(|s| *s = s.clamp(minsigma, range));
                    mu.push(prior_mu);
                    sigma.push(range);
                    num.push(Some(Kernel { mu, sigma }));
                    cat.push(None);
                }
                Axis::Cat { n: choices } => {
                    let fill = prior_weight / n_kernels as f64;
                    let mut rows: Vec<Vec<f64>> = (0..n_kernels).map(|_| vec![fill; choices]).collect();
                    for (k, o) in obs.iter().enumerate() {
                        rows[k][(o[j] as usize).min(choices - 1)] += 1.0;
                    }
                    for r in &mut rows {
                        let s: f64 = r.iter().sum();
                        r.iter_mut().for_each(|x| *x /= s);
                    }
                    num.push(None);
                    cat.push(Some(rows));
                }
            }
        }
        Parzen { weights, num, cat, axes: axes.to_vec() }
    }

    fn pick(&self, rng: &mut Rng) -> usize {
        let u = rng.uniform();
        let mut acc = 0.0;
        for (k, w) in self.weights.iter().enumerate() {
            acc += w;
            if u < acc {
                return k;
            }
        }
        self.weights.len() - 1
    }

    fn sample_axis(&self, j: usize, k: usize, rng: &mut Rng) -> f64 {
        match self.axes[j] {
            Axis::Num { low, high } => {
                let kern = self.num[j].as_ref().expect("a numeric kernel");
                let (mu, s) = (kern.mu[k], kern.sigma[k]);
                for _ in 0..100 {
                    let x = mu + s * rng.normal();
                    if (low..=high).contains(&x) {
                        return x;
                    }
                }
                mu.clamp(low, high)
            }
            Axis::Cat { n } => {
                let row = &self.cat[j].as_ref().expect("a categorical kernel")[k];
                let u = rng.uniform();
                let mut acc = 0.0;
                for (c, p) in row.iter().enumerate() {
                    acc += p;
                    if u < acc {
                        return c as f64;
                    }
                }
                (n - 1) as f64
            }
        }
    }

    /// log density of component `k` on axis `j` at `x`.
    fn log_axis(&self, j: usize, k: usize, x: f64) -> f64 {
        match self.axes[j] {
            Axis::Num { low, high } => {
                let kern = self.num[j].as_ref().expect("a numeric kernel");
                let (mu, s) = (kern.mu[k], kern.sigma[k]);
                let z = (x - mu) / s;
                let mass = (norm_cdf((high - mu) / s) - norm_cdf((low - mu) / s)).max(1e-300);
                -0.5 * z * z - (s * (2.0 * std::f64::consts::PI).sqrt()).ln() - mass.ln()
            }
            Axis::Cat { .. } => self.cat[j].as_ref().expect("a categorical kernel")[k][x as usize].max(1e-300).ln(),
        }
    }

    /// log density of the mixture at `x`, over the axes in `only` (all when `None`).
    fn log_pdf(&self, x: &[f64], only: Option<usize>) -> f64 {
        let terms: Vec<f64> = (0..self.weights.len())
            .map(|k| {
                let lp: f64 = match only {
                    Some(j) => self.log_axis(j, k, x[j]),
                    None => (0..self.axes.len()).map(|j| self.log_axis(j, k, x[j])).sum(),
                };
                self.weights[k].ln() + lp
            })
            .collect();
        let m = terms.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        m + terms.iter().map(|t| (t - m).exp()).sum::<f64>().ln()
    }
}

impl Tpe {
    pub fn new(cfg: TpeConfig) -> Self {
        let rng = Rng::new(cfg.seed);
        Tpe { cfg, rng, dims: Vec::new(), metric: String::new(), mode: Mode::Min, pending: HashMap::new(), observed: Vec::new() }
    }

    fn axes(&self) -> Vec<Axis> {
        self.dims.iter().map(|d| axis(&d.domain)).collect()
    }

    /// The next point in internal coordinates.
    fn next_point(&mut self) -> Vec<f64> {
        let axes = self.axes();
        let n = self.observed.len();
        if n < self.cfg.n_startup_trials.max(1) {
            return axes
                .iter()
                .map(|a| match *a {
                    Axis::Num { low, high } => low + self.rng.uniform() * (high - low),
                    Axis::Cat { n } => self.rng.below(n as u64) as f64,
                })
                .collect();
        }
        // Split by loss (Optuna's `_split_trials`); each group in trial order, which the
        // weights ramp over (older trials weigh less).
        let n_below = ((0.1 * n as f64).ceil() as usize).clamp(1, 25);
        let mut by_loss: Vec<usize> = (0..n).collect();
        by_loss.sort_by(|&a, &b| self.observed[a].1.total_cmp(&self.observed[b].1));
        let mut is_below = vec![false; n];
        by_loss[..n_below].iter().for_each(|&i| is_below[i] = true);
        let below: Vec<&[f64]> = (0..n).filter(|&i| is_below[i]).map(|i| self.observed[i].0.as_slice()).collect();
        let above: Vec<&[f64]> = (0..n).filter(|&i| !is_below[i]).map(|i| self.observed[i].0.as_slice()).collect();
        let mv = self.cfg.multivariate;
        let l = Parzen::new(&below, &default_weights(below.len()), &axes, self.cfg.prior_weight);
        let g = Parzen::new(&above, &default_weights(above.len()), &axes, self.cfg.prior_weight);
        let cands = self.cfg.n_ei_candidates.max(1);
        if mv {
            let mut best = (f64::NEG_INFINITY, Vec::new());
            for _ in 0..cands {
                let k = l.pick(&mut self.rng);
                let x: Vec<f64> = (0..axes.len()).map(|j| l.sample_axis(j, k, &mut self.rng)).collect();
                let score = l.log_pdf(&x, None) - g.log_pdf(&x, None);
                if score > best.0 {
                    best = (score, x);
                }
            }
            best.1
        } else {
            let mut point = vec![0.0; axes.len()];
            for (j, p) in point.iter_mut().enumerate() {
                let mut best = (f64::NEG_INFINITY, 0.0);
                let mut x = vec![0.0; axes.len()];
                for _ in 0..cands {
                    let k = l.pick(&mut self.rng);
                    x[j] = l.sample_axis(j, k, &mut self.rng);
                    let score = l.log_pdf(&x, Some(j)) - g.log_pdf(&x, Some(j));
                    if score > best.0 {
                        best = (score, x[j]);
                    }
                }
                *p = best.1;
            }
            point
        }
    }

    /// Records a finished evaluation directly (for benchmarks and warm starts).
    pub fn observe(&mut self, values: &[Value], loss: f64) {
        let x = self.dims.iter().zip(values).map(|(d, v)| from_value(&d.domain, v)).collect();
        self.observed.push((x, loss));
    }
}

impl Searcher for Tpe {
    fn set_search_properties(&mut self, dims: &[Dim], metric: &str, mode: Mode) {
        self.dims = dims.to_vec();
        self.metric = metric.to_string();
        self.mode = mode;
    }
    fn suggest(&mut self, trial_id: &str) -> Suggestion {
        let x = self.next_point();
        let values: Vec<Value> = self.dims.iter().zip(&x).map(|(d, &v)| to_value(&d.domain, v)).collect();
        // Keep what the trial will actually run (rounded), so the model sees real points.
        let x = self.dims.iter().zip(&values).map(|(d, v)| from_value(&d.domain, v)).collect();
        self.pending.insert(trial_id.to_string(), x);
        Suggestion::Config(values)
    }
    fn on_trial_complete(&mut self, trial_id: &str, result: Option<&Value>, error: bool) {
        let Some(x) = self.pending.remove(trial_id) else { return };
        if error {
            return;
        }
        if let Some(v) = metric_of(result, &self.metric) {
            let loss = if self.mode == Mode::Min { v } else { -v };
            self.observed.push((x, loss));
        }
    }
}

/// Lets at most `max_concurrent` suggestions be outstanding.
pub struct ConcurrencyLimiter<S: Searcher> {
    inner: S,
    max: usize,
    live: std::collections::HashSet<String>,
}

impl<S: Searcher> ConcurrencyLimiter<S> {
    /// The wrapped searcher.
    pub fn inner(&self) -> &S {
        &self.inner
    }
    pub fn new(inner: S, max_concurrent: usize) -> Self {
        ConcurrencyLimiter { inner, max: max_concurrent.max(1), live: Default::default() }
    }
}

impl<S: Searcher> Searcher for ConcurrencyLimiter<S> {
    fn set_search_properties(&mut self, dims: &[Dim], metric: &str, mode: Mode) {
        self.inner.set_search_properties(dims, metric, mode)
    }
    fn suggest(&mut self, trial_id: &str) -> Suggestion {
        if self.live.len() >= self.max {
            return Suggestion::Wait;
        }
        let s = self.inner.suggest(trial_id);
        if matches!(s, Suggestion::Config(_)) {
            self.live.insert(trial_id.to_string());
        }
        s
    }
    fn on_trial_result(&mut self, trial_id: &str, result: &Value) {
        self.inner.on_trial_result(trial_id, result)
    }
    fn on_trial_complete(&mut self, trial_id: &str, result: Option<&Value>, error: bool) {
        self.live.remove(trial_id);
        self.inner.on_trial_complete(trial_id, result, error)
    }
}

/// Runs every suggestion `repeat` times (for noisy objectives); the inner searcher hears the
/// mean of the repeats' metric once all of them are done.
pub struct Repeater<S: Searcher> {
    inner: S,
    repeat: usize,
    metric: String,
    current: Option<(String, Vec<Value>, usize)>,
    groups: HashMap<String, String>,
    results: HashMap<String, (usize, Vec<f64>, bool)>,
}

impl<S: Searcher> Repeater<S> {
    /// The wrapped searcher.
    pub fn inner(&self) -> &S {
        &self.inner
    }
    pub fn new(inner: S, repeat: usize) -> Self {
        Repeater {
            inner,
            repeat: repeat.max(1),
            metric: String::new(),
            current: None,
            groups: HashMap::new(),
            results: HashMap::new(),
        }
    }
}

impl<S: Searcher> Searcher for Repeater<S> {
    fn set_search_properties(&mut self, dims: &[Dim], metric: &str, mode: Mode) {
        self.metric = metric.to_string();
        self.inner.set_search_properties(dims, metric, mode)
    }
    fn suggest(&mut self, trial_id: &str) -> Suggestion {
        if let Some((group, values, left)) = self.current.take() {
            self.groups.insert(trial_id.to_string(), group.clone());
            if left > 1 {
                self.current = Some((group, values.clone(), left - 1));
            }
            return Suggestion::Config(values);
        }
        match self.inner.suggest(trial_id) {
            Suggestion::Config(values) => {
                self.groups.insert(trial_id.to_string(), trial_id.to_string());
                self.results.insert(trial_id.to_string(), (self.repeat, Vec::new(), false));
                if self.repeat > 1 {
                    self.current = Some((trial_id.to_string(), values.clone(), self.repeat - 1));
                }
                Suggestion::Config(values)
            }
            other => other,
        }
    }
    fn on_trial_complete(&mut self, trial_id: &str, result: Option<&Value>, error: bool) {
        let Some(group) = self.groups.remove(trial_id) else { return };
        let metric = metric_of(result, &self.metric);
        let Some(entry) = self.results.get_mut(&group) else { return };
        entry.0 -= 1;
        match metric {
            Some(m) if !error => entry.1.push(m),
            _ => entry.2 = true,
        }
        if entry.0 == 0 {
            let (_, values, failed) = self.results.remove(&group).unwrap_or_default();
            if values.is_empty() {
                self.inner.on_trial_complete(&group, None, true);
            } else {
                let mean = values.iter().sum::<f64>() / values.len() as f64;
                let mut obj = Value::Object(serde_json::Map::new());
                let path: Vec<String> = self.metric.split('/').map(str::to_string).collect();
                crate::space::set_path(&mut obj, &path, Value::from(mean));
                self.inner.on_trial_complete(&group, Some(&obj), failed && values.is_empty());
            }
        }
    }
}
