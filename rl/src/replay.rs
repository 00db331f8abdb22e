//! Replays a recorded gymnasium trace (the layout of `shared/oracles/gym/*.json`) through the
//! built-in environment it names and reports how far Flare's steps are from the recording.

use crate::env::{make, Action};
use crate::error::{Error, Result};
use serde_json::Value;

/// How a replay compared with its recording.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ReplayReport {
    pub env_id: String,
    pub episodes: usize,
    pub steps: usize,
    /// Steps whose observation and reward have exactly the recorded bits.
    pub exact_steps: usize,
    pub max_obs_error: f64,
    pub max_reward_error: f64,
    /// Episode and step of every flag that differs, e.g. `episode 3 step 17: terminated`.
    pub flag_mismatches: Vec<String>,
}

impl ReplayReport {
    pub fn bit_exact(&self) -> bool {
        self.exact_steps == self.steps && self.flag_mismatches.is_empty()
    }

    /// Within `tol` in every value and no flag differs.
    pub fn within(&self, tol: f64) -> bool {
        self.flag_mismatches.is_empty() && self.max_obs_error <= tol && self.max_reward_error <= tol
    }
}

fn num(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) if s == "inf" => Some(f64::INFINITY),
        Value::String(s) if s == "-inf" => Some(f64::NEG_INFINITY),
        Value::String(s) if s == "nan" => Some(f64::NAN),
        _ => None,
    }
}

fn nums(v: &Value) -> Option<Vec<f64>> {
    v.as_array()?.iter().map(num).collect()
}

/// Replays every episode of a trace file, free running from each recorded initial state.
pub fn replay_file(path: &str) -> Result<ReplayReport> {
    let bad = |m: String| Error::Trace { path: path.to_string(), message: m };
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    let doc: Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    replay_value(&doc).map_err(bad)
}

/// Replays a parsed trace; `Err` says what in it is malformed.
pub fn replay_value(doc: &Value) -> std::result::Result<ReplayReport, String> {
    let env_id = doc["env_id"].as_str().ok_or("no `env_id`")?.to_string();
    let mut env = make(&env_id).map_err(|e| e.to_string())?;
    let episodes = doc["episodes"].as_array().ok_or("no `episodes` list")?;
    let mut r = ReplayReport { env_id, episodes: episodes.len(), ..Default::default() };
    for (ei, ep) in episodes.iter().enumerate() {
        let init = nums(&ep["initial_state"]).ok_or(format!("episode {ei}: bad `initial_state`"))?;
        env.set_state(&init);
        let steps = ep["steps"].as_array().ok_or(format!("episode {ei}: no `steps`"))?;
        for (si, st) in steps.iter().enumerate() {
            let action = match &st["action"] {
                Value::Number(n) => Action::Discrete(n.as_i64().ok_or(format!("episode {ei} step {si}: bad action"))?),
                v => Action::Continuous(
                    nums(v).ok_or(format!("episode {ei} step {si}: bad action"))?.into_iter().map(|x| x as f32).collect(),
                ),
            };
            let want_obs = nums(&st["obs"]).ok_or(format!("episode {ei} step {si}: bad `obs`"))?;
            let want_reward = num(&st["reward"]).ok_or(format!("episode {ei} step {si}: bad `reward`"))?;
            let got = env.step(&action).map_err(|e| format!("episode {ei} step {si}: {e}"))?;
            r.steps += 1;
            let mut exact = got.obs.len() == want_obs.len() && got.reward.to_bits() == want_reward.to_bits();
            for (g, w) in got.obs.iter().zip(&want_obs) {
                let err = (*g as f64 - w).abs();
                r.max_obs_error = r.max_obs_error.max(err);
                exact &= g.to_bits() == (*w as f32).to_bits();
            }
            r.max_reward_error = r.max_reward_error.max((got.reward - want_reward).abs());
            if exact {
                r.exact_steps += 1;
            }
            for (flag, g) in [("terminated", got.terminated), ("truncated", got.truncated)] {
                if st[flag].as_bool() != Some(g) {
                    r.flag_mismatches.push(format!("episode {ei} step {si}: {flag} is {g}, recorded {}", st[flag]));
                }
            }
            if got.terminated || got.truncated {
                if si + 1 != steps.len() {
                    r.flag_mismatches.push(format!("episode {ei}: ended at step {si}, recorded {} steps", steps.len()));
                }
                break;
            }
        }
    }
    Ok(r)
}
