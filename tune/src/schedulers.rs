//! Trial schedulers: decide after each result whether a trial goes on. FIFO (every trial
//! runs to the end), ASHA (asynchronous successive halving, Ray's `ASHAScheduler`), and the
//! median stopping rule. A stopped trial's actor is killed at once, freeing its resources.

use crate::search::Mode;
use std::collections::HashMap;

/// What happens to a trial after a result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Continue,
    Stop,
}

/// Ray Tune's `TrialScheduler` (the part that decides on results); implement it for your own.
pub trait TrialScheduler: Send {
    /// `iteration` counts from 1; `value` is the metric (None when the result lacks it).
    fn on_result(&mut self, trial_id: &str, iteration: u64, value: Option<f64>, mode: Mode) -> Decision;
    fn on_complete(&mut self, _trial_id: &str) {}
    fn name(&self) -> &'static str;
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
