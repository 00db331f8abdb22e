//! Trial schedulers: decide after each result whether a trial goes on. FIFO (every trial
//! runs to the end), ASHA (asynchronous successive halving, Ray's `ASHAScheduler`), and the
//! median stopping rule. A stopped trial's actor is killed at once, freeing its resources.

use crate::search::Mode;
use std::collections::HashMap;

/// What happens to a trial after a result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Continue,
    Stop,
    /// Restart this trial from trial `from`'s latest checkpoint, with a config made by
    /// [`TrialScheduler::explore`] from `from`'s (population-based training).
    Exploit {
        from: String,
    },
    /// Stop the trial's process (its resources are freed); it resumes from its latest
    /// checkpoint when the scheduler lists it in [`TrialScheduler::take_resumed`].
    Pause,
}

/// Ray Tune's `TrialScheduler` (the part that decides on results); implement it for your own.
pub trait TrialScheduler: Send {
    /// `iteration` counts from 1; `value` is the metric (None when the result lacks it).
    fn on_result(&mut self, trial_id: &str, iteration: u64, value: Option<f64>, mode: Mode) -> Decision;
    /// A trial was created (before its first result).
    fn on_trial_add(&mut self, _trial_id: &str) {}
    fn on_complete(&mut self, _trial_id: &str) {}
    fn name(&self) -> &'static str;
    /// A new config from a donor's, for [`Decision::Exploit`].
    fn explore(&mut self, config: &serde_json::Value) -> serde_json::Value {
        config.clone()
    }
    /// Paused trials to resume now.
    fn take_resumed(&mut self) -> Vec<String> {
        Vec::new()
    }
    /// Paused trials that will not resume (stopped while paused).
    fn take_stopped(&mut self) -> Vec<String> {
        Vec::new()
    }
    /// No more trials will be created (brackets waiting for members can close).
    fn all_trials_started(&mut self) {}
}

/// Every trial runs until it returns.
#[derive(Default)]
pub struct Fifo;

impl TrialScheduler for Fifo {
    fn on_result(&mut self, _: &str, _: u64, _: Option<f64>, _: Mode) -> Decision {
        Decision::Continue
    }
    fn name(&self) -> &'static str {
        "FIFO"
    }
}

/// numpy's `nanpercentile` (linear) of the values.
fn percentile(values: &[f64], q: f64) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    v.sort_by(f64::total_cmp);
    crate::bench::percentile(&v, q)
}

/// Asynchronous successive halving: rungs at `grace_period * reduction_factor^k` below
/// `max_t`; a trial reaching a rung continues only if its metric is in the top
/// `1 / reduction_factor` of what earlier trials recorded there. Trials are spread over
/// `brackets` brackets (each starting its rungs later), as Ray's `ASHAScheduler`.
pub struct Asha {
    pub max_t: u64,
    pub grace_period: u64,
    pub reduction_factor: f64,
    pub brackets: usize,
    rungs: Vec<Vec<(u64, HashMap<String, f64>)>>,
    assignment: HashMap<String, usize>,
    next_bracket: usize,
}

impl Asha {
    pub fn new(max_t: u64, grace_period: u64, reduction_factor: f64, brackets: usize) -> Self {
        let rf = reduction_factor.max(1.0001);
        let grace = grace_period.max(1);
        let mut rungs = Vec::new();
        for b in 0..brackets.max(1) {
            // Milestones of bracket b: grace * rf^(k + b), below max_t, highest first.
            let mut ms = Vec::new();
            let mut k = b as i32;
            loop {
                let m = (grace as f64 * rf.powi(k)).round() as u64;
                if m >= max_t.max(1) {
                    break;
                }
                ms.push(m);
                k += 1;
            }
            ms.reverse();
            rungs.push(ms.into_iter().map(|m| (m, HashMap::new())).collect());
        }
        Asha {
            max_t,
            grace_period: grace,
            reduction_factor: rf,
            brackets: brackets.max(1),
            rungs,
            assignment: HashMap::new(),
            next_bracket: 0,
        }
    }
}

impl Default for Asha {
    fn default() -> Self {
        Asha::new(100, 1, 4.0, 1)
    }
}

impl TrialScheduler for Asha {
    fn on_result(&mut self, trial_id: &str, iteration: u64, value: Option<f64>, mode: Mode) -> Decision {
        if iteration >= self.max_t {
            return Decision::Stop;
        }
        let Some(v) = value else { return Decision::Continue };
        let score = if mode == Mode::Max { v } else { -v };
        let b = *self.assignment.entry(trial_id.to_string()).or_insert_with(|| {
            let b = self.next_bracket % self.brackets;
            self.next_bracket += 1;
            b
        });
        for (milestone, recorded) in self.rungs[b].iter_mut() {
            if iteration >= *milestone && !recorded.contains_key(trial_id) {
                let mut d = Decision::Continue;
                if !recorded.is_empty() {
                    let values: Vec<f64> = recorded.values().copied().collect();
                    let cutoff = percentile(&values, (1.0 - 1.0 / self.reduction_factor) * 100.0);
                    if score < cutoff {
                        d = Decision::Stop;
                    }
                }
                recorded.insert(trial_id.to_string(), score);
                return d;
            }
        }
        Decision::Continue
    }
    fn name(&self) -> &'static str {
        "ASHA"
    }
}

/// The median stopping rule (Google Vizier; Ray's `MedianStoppingRule`): after
/// `grace_period` iterations, a trial whose best result is worse than the median of the other
/// trials' running means at the same iteration is stopped, once `min_samples_required` others
/// have got that far.
pub struct MedianStopping {
    pub grace_period: u64,
    pub min_samples_required: usize,
    history: HashMap<String, Vec<f64>>,
}

impl MedianStopping {
    pub fn new(grace_period: u64, min_samples_required: usize) -> Self {
        MedianStopping { grace_period, min_samples_required: min_samples_required.max(1), history: HashMap::new() }
    }
}

impl Default for MedianStopping {
    fn default() -> Self {
        MedianStopping::new(1, 3)
    }
}

impl TrialScheduler for MedianStopping {
    fn on_result(&mut self, trial_id: &str, iteration: u64, value: Option<f64>, mode: Mode) -> Decision {
        let Some(v) = value else { return Decision::Continue };
        let score = if mode == Mode::Max { v } else { -v };
        let mine = self.history.entry(trial_id.to_string()).or_default();
        mine.push(score);
        let best = mine.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if iteration < self.grace_period {
            return Decision::Continue;
        }
        let t = iteration as usize;
        let others: Vec<f64> = self
            .history
            .iter()
            .filter(|(id, h)| id.as_str() != trial_id && h.len() >= t)
            .map(|(_, h)| h[..t].iter().sum::<f64>() / t as f64)
            .collect();
        if others.len() < self.min_samples_required {
            return Decision::Continue;
        }
        if best < percentile(&others, 50.0) {
            Decision::Stop
        } else {
            Decision::Continue
        }
    }
    fn name(&self) -> &'static str {
        "MedianStopping"
    }
}

/// Synchronous HyperBand (Li et al.; Ray's `HyperBandScheduler`): brackets of
/// `ceil((s_max + 1) / (s + 1) * eta^s)` trials that start at `max_t * eta^-s` iterations; every
/// trial of a bracket pauses at the bracket's milestone until all have reached it, then the
/// best `1 / eta` resume to the next milestone (`eta` times further) and the rest stop.
/// Trainables should checkpoint every report, as pausing restarts them from their latest one.
pub struct HyperBand {
    pub max_t: u64,
    pub eta: f64,
    brackets: Vec<Bracket>,
    assignment: HashMap<String, usize>,
    resumed: Vec<String>,
    stopped: Vec<String>,
    closing: bool,
}

struct Bracket {
    capacity: usize,
    milestone: u64,
    members: Vec<String>,
    /// Scores at the current milestone of the members that reached it (and paused).
    scores: HashMap<String, f64>,
    /// Members that ended on their own.
    ended: std::collections::HashSet<String>,
}

impl HyperBand {
    pub fn new(max_t: u64, eta: f64) -> Self {
        let eta = eta.max(2.0);
        let max_t = max_t.max(1);
        let s_max = ((max_t as f64).ln() / eta.ln() + 1e-9).floor() as i32;
        let brackets = (0..=s_max)
            .rev()
            .map(|s| Bracket {
                capacity: (((s_max + 1) as f64 / (s + 1) as f64) * eta.powi(s)).ceil() as usize,
                milestone: ((max_t as f64) * eta.powi(-s)).round().max(1.0) as u64,
                members: Vec::new(),
                scores: HashMap::new(),
                ended: Default::default(),
            })
            .collect();
        HyperBand { max_t, eta, brackets, assignment: HashMap::new(), resumed: Vec::new(), stopped: Vec::new(), closing: false }
    }

    fn bracket_of(&mut self, id: &str) -> usize {
        if let Some(b) = self.assignment.get(id) {
            return *b;
        }
        let b = self.brackets.iter().position(|b| b.members.len() < b.capacity).unwrap_or_else(|| {
            // Every bracket is full: start a new round of brackets.
            let fresh = HyperBand::new(self.max_t, self.eta).brackets;
            let first = self.brackets.len();
            self.brackets.extend(fresh);
            first
        });
        self.brackets[b].members.push(id.to_string());
        self.assignment.insert(id.to_string(), b);
        b
    }

    /// Once every live member of a bracket reached its milestone: keep the best 1/eta.
    fn maybe_advance(&mut self, b: usize) {
        let closing = self.closing;
        let br = &mut self.brackets[b];
        let live: Vec<&String> = br.members.iter().filter(|m| !br.ended.contains(*m)).collect();
        let full = br.members.len() >= br.capacity || closing;
        if !full || live.is_empty() || !live.iter().all(|m| br.scores.contains_key(*m)) {
            return;
        }
        let mut ranked: Vec<(String, f64)> = live.iter().map(|m| ((*m).clone(), br.scores[*m])).collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let keep = ((ranked.len() as f64 / self.eta).floor() as usize).max(1);
        let next = ((br.milestone as f64) * self.eta).round() as u64;
        for (i, (id, _)) in ranked.into_iter().enumerate() {
            if i < keep && br.milestone < self.max_t {
                self.resumed.push(id);
            } else {
                br.ended.insert(id.clone());
                self.stopped.push(id);
            }
        }
        br.scores.clear();
        br.milestone = next.min(self.max_t);
    }
}

impl TrialScheduler for HyperBand {
    fn on_trial_add(&mut self, trial_id: &str) {
        // Bracket membership is decided at creation, so a bracket waits for members that have
        // not reported yet.
        self.bracket_of(trial_id);
    }
    fn on_result(&mut self, trial_id: &str, iteration: u64, value: Option<f64>, mode: Mode) -> Decision {
        let b = self.bracket_of(trial_id);
        if iteration >= self.max_t {
            return Decision::Stop;
        }
        let Some(v) = value else { return Decision::Continue };
        if iteration < self.brackets[b].milestone || self.brackets[b].scores.contains_key(trial_id) {
            return Decision::Continue;
        }
        self.brackets[b].scores.insert(trial_id.to_string(), if mode == Mode::Max { v } else { -v });
        self.maybe_advance(b);
        if self.stopped.iter().any(|s| s == trial_id) {
            self.stopped.retain(|s| s != trial_id);
            return Decision::Stop;
        }
        if let Some(pos) = self.resumed.iter().position(|s| s == trial_id) {
            // It is the last to arrive and goes on at once.
            self.resumed.remove(pos);
            return Decision::Continue;
        }
        Decision::Pause
    }
    fn on_complete(&mut self, trial_id: &str) {
        if let Some(&b) = self.assignment.get(trial_id) {
            self.brackets[b].ended.insert(trial_id.to_string());
            self.brackets[b].scores.remove(trial_id);
            self.maybe_advance(b);
        }
    }
    fn name(&self) -> &'static str {
        "HyperBand"
    }
    fn take_resumed(&mut self) -> Vec<String> {
        std::mem::take(&mut self.resumed)
    }
    fn take_stopped(&mut self) -> Vec<String> {
        std::mem::take(&mut self.stopped)
    }
    fn all_trials_started(&mut self) {
        if !self.closing {
            self.closing = true;
            for b in 0..self.brackets.len() {
                self.maybe_advance(b);
            }
        }
    }
}

/// Population-based training (Ray's `PopulationBasedTraining`): every `perturbation_interval`
/// iterations, a trial in the bottom `quantile_fraction` (by its latest result) restarts from
/// the checkpoint of a random trial in the top fraction (exploit), with that trial's config
/// perturbed (explore): each mutated parameter is resampled from its domain with
/// `resample_probability`, else multiplied by 0.8 or 1.2 (numbers) or moved to a neighboring
/// choice.
pub struct Pbt {
    pub perturbation_interval: u64,
    pub quantile_fraction: f64,
    pub resample_probability: f64,
    mutations: Vec<crate::space::Dim>,
    rng: crate::rng::Rng,
    latest: HashMap<String, f64>,
    last_perturbation: HashMap<String, u64>,
}

impl Pbt {
    /// `mutations`: the parameters to explore and their domains.
    pub fn new(perturbation_interval: u64, mutations: crate::space::ParamSpace, seed: u64) -> crate::Result<Self> {
        let flat = mutations.flatten()?;
        Ok(Pbt {
            perturbation_interval: perturbation_interval.max(1),
            quantile_fraction: 0.25,
            resample_probability: 0.25,
            mutations: flat.searched,
            rng: crate::rng::Rng::new(seed),
            latest: HashMap::new(),
            last_perturbation: HashMap::new(),
        })
    }
}

fn get_path<'a>(v: &'a serde_json::Value, path: &[String]) -> Option<&'a serde_json::Value> {
    path.iter().try_fold(v, |cur, k| cur.get(k))
}

impl TrialScheduler for Pbt {
    fn on_result(&mut self, trial_id: &str, iteration: u64, value: Option<f64>, mode: Mode) -> Decision {
        let Some(v) = value else { return Decision::Continue };
        self.latest.insert(trial_id.to_string(), if mode == Mode::Max { v } else { -v });
        let last = *self.last_perturbation.get(trial_id).unwrap_or(&0);
        if iteration < last + self.perturbation_interval {
            return Decision::Continue;
        }
        self.last_perturbation.insert(trial_id.to_string(), iteration);
        let mut ranked: Vec<(&String, f64)> = self.latest.iter().map(|(k, v)| (k, *v)).collect();
        if ranked.len() < 2 {
            return Decision::Continue;
        }
        ranked.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(b.0)));
        let n = ((ranked.len() as f64 * self.quantile_fraction).ceil() as usize).clamp(1, ranked.len() / 2);
        let lower: Vec<&String> = ranked[..n].iter().map(|r| r.0).collect();
        let upper: Vec<&String> = ranked[ranked.len() - n..].iter().map(|r| r.0).collect();
        if !lower.iter().any(|id| id.as_str() == trial_id) {
            return Decision::Continue;
        }
        let from = upper[self.rng.below(upper.len() as u64) as usize].clone();
        Decision::Exploit { from }
    }
    fn on_complete(&mut self, trial_id: &str) {
        self.latest.remove(trial_id);
    }
    fn name(&self) -> &'static str {
        "PBT"
    }
    fn explore(&mut self, config: &serde_json::Value) -> serde_json::Value {
        use crate::space::Domain;
        let mut out = config.clone();
        for d in &self.mutations {
            let cur = get_path(config, &d.path).cloned().unwrap_or(serde_json::Value::Null);
            let resample = self.rng.uniform() < self.resample_probability;
            let new = match &d.domain {
                Domain::Choice(c) => {
                    let pos = c.iter().position(|x| *x == cur);
                    match pos {
                        Some(i) if !resample => {
                            let j = if self.rng.uniform() < 0.5 { i.saturating_sub(1) } else { (i + 1).min(c.len() - 1) };
                            c[j].clone()
                        }
                        _ => crate::space::sample_dim(&d.domain, &mut self.rng),
                    }
                }
                Domain::Float { lo, hi, q, .. } => match cur.as_f64() {
                    Some(x) if !resample => {
                        let f = if self.rng.uniform() < 0.5 { 0.8 } else { 1.2 };
                        serde_json::Value::from(crate::space::finish_float(x * f, *lo, *hi, *q))
                    }
                    _ => crate::space::sample_dim(&d.domain, &mut self.rng),
                },
                Domain::Int { lo, hi, q, .. } => match cur.as_i64() {
                    Some(x) if !resample => {
                        let f = if self.rng.uniform() < 0.5 { 0.8 } else { 1.2 };
                        let top = if q.is_some() { *hi } else { hi - 1 };
                        serde_json::Value::from(((x as f64 * f).round() as i64).clamp(*lo, top))
                    }
                    _ => crate::space::sample_dim(&d.domain, &mut self.rng),
                },
                other => crate::space::sample_dim(other, &mut self.rng),
            };
            crate::space::set_path(&mut out, &d.path, new);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asha_rungs_and_cutoffs_follow_ray() {
        let a = Asha::new(27, 1, 3.0, 1);
        let ms: Vec<u64> = a.rungs[0].iter().map(|r| r.0).collect();
        assert_eq!(ms, vec![9, 3, 1]);
        // Sequential trials, each worse than every earlier one: all but the first stop at the
        // first rung they reach.
        let mut a = Asha::new(27, 1, 3.0, 1);
        for i in 0..5 {
            let id = format!("t{i}");
            let d = a.on_result(&id, 1, Some(10.0 - i as f64), Mode::Max);
            assert_eq!(d, if i == 0 { Decision::Continue } else { Decision::Stop }, "trial {i}");
        }
        // A better trial passes rung 1 and rung 3.
        assert_eq!(a.on_result("good", 1, Some(100.0), Mode::Max), Decision::Continue);
        assert_eq!(a.on_result("good", 27, Some(100.0), Mode::Max), Decision::Stop, "max_t reached");
    }

    #[test]
    fn pbt_sends_the_bottom_trial_to_a_top_one_and_perturbs_within_the_domain() {
        use crate::space::{choice, uniform, ParamSpace};
        let mut p = Pbt::new(2, ParamSpace::new().set("lr", uniform(0.001, 1.0)).set("bs", choice([16, 32, 64])), 1).unwrap();
        for (id, v) in [("a", 1.0), ("b", 2.0), ("c", 3.0), ("d", 4.0)] {
            assert_eq!(p.on_result(id, 1, Some(v), Mode::Max), Decision::Continue, "before the interval");
        }
        assert_eq!(p.on_result("d", 2, Some(4.0), Mode::Max), Decision::Continue, "the top trial goes on");
        assert_eq!(p.on_result("a", 2, Some(1.0), Mode::Max), Decision::Exploit { from: "d".into() });
        for _ in 0..50 {
            let c = p.explore(&serde_json::json!({"lr": 0.5, "bs": 32, "other": 7}));
            let lr = c["lr"].as_f64().unwrap();
            assert!((0.001..=1.0).contains(&lr));
            assert!([16, 32, 64].contains(&c["bs"].as_i64().unwrap()));
            assert_eq!(c["other"], 7, "parameters without a mutation stay");
        }
    }

    #[test]
    fn hyperband_brackets_and_synchronous_halving() {
        let h = HyperBand::new(9, 3.0);
        let shape: Vec<(usize, u64)> = h.brackets.iter().map(|b| (b.capacity, b.milestone)).collect();
        assert_eq!(shape, vec![(9, 1), (5, 3), (3, 9)], "Li et al.'s brackets for max_t 9, eta 3");
        let mut h = HyperBand::new(9, 3.0);
        // Nine trials fill the first bracket; each pauses at iteration 1 until all arrived.
        for i in 0..8 {
            assert_eq!(h.on_result(&format!("t{i}"), 1, Some(i as f64), Mode::Max), Decision::Pause);
        }
        assert!(h.take_resumed().is_empty());
        // The ninth (the best) arrives last: the best 3 go on, the other 6 stop.
        assert_eq!(h.on_result("t8", 1, Some(8.0), Mode::Max), Decision::Continue);
        let mut resumed = h.take_resumed();
        resumed.sort();
        assert_eq!(resumed, vec!["t6", "t7"]);
        assert_eq!(h.take_stopped().len(), 6);
        // Next milestone: 3.
        assert_eq!(h.on_result("t8", 2, Some(8.0), Mode::Max), Decision::Continue);
        assert_eq!(h.on_result("t8", 3, Some(8.0), Mode::Max), Decision::Pause);
    }

    #[test]
    fn median_rule_stops_a_trial_below_the_others_median() {
        let mut m = MedianStopping::new(2, 2);
        for id in ["a", "b", "c"] {
            for t in 1..=3 {
                assert_eq!(m.on_result(id, t, Some(1.0), Mode::Min), Decision::Continue);
            }
        }
        // Loss 5 (worse than the others' running mean 1) at iteration 2: stopped.
        assert_eq!(m.on_result("d", 1, Some(5.0), Mode::Min), Decision::Continue);
        assert_eq!(m.on_result("d", 2, Some(5.0), Mode::Min), Decision::Stop);
    }
}
