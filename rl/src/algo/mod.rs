//! Learning algorithms, one readable file each.

pub mod a2c;
pub mod dqn;
pub mod ppo;
pub mod sac;

use serde::Serialize;

/// What a training run reports at the end (`flare rl train --json` prints it as the last line).
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Mean return over the last 100 episodes reached the environment's reward threshold.
    pub solved: bool,
    pub env_steps: u64,
    /// Mean return over the last 100 episodes.
    pub mean_return: f64,
    pub wall_s: f64,
    pub episodes: u64,
    /// Mean return of deterministic evaluation episodes after training, where the run made them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_return: Option<f64>,
}

/// The returns of the last 100 episodes, which decide "solved" (gymnasium's convention).
#[derive(Default)]
pub(crate) struct Recent {
    returns: std::collections::VecDeque<f64>,
    pub episodes: u64,
}

impl Recent {
    pub fn push(&mut self, ret: f64) {
        if self.returns.len() == 100 {
            self.returns.pop_front();
        }
        self.returns.push_back(ret);
        self.episodes += 1;
    }

    /// Mean over the window (negative infinity before the first episode).
    pub fn mean(&self) -> f64 {
        if self.returns.is_empty() {
            f64::NEG_INFINITY
        } else {
            self.returns.iter().sum::<f64>() / self.returns.len() as f64
        }
    }

    /// A full window whose mean reached `threshold`.
    pub fn solved(&self, threshold: f64) -> bool {
        self.returns.len() == 100 && self.mean() >= threshold
    }

    pub fn summary(&self, threshold: f64, env_steps: u64, started: std::time::Instant) -> Summary {
        Summary {
            solved: self.solved(threshold),
            env_steps,
            mean_return: self.mean(),
            wall_s: started.elapsed().as_secs_f64(),
            episodes: self.episodes,
            eval_return: None,
        }
    }
}

/// The number of actions of a discrete action space, or an error naming the algorithm.
pub(crate) fn discrete_actions(env: &dyn crate::env::Env, algo: &str) -> crate::Result<usize> {
    match env.action_space() {
        crate::spaces::Space::Discrete { n, .. } => Ok(n as usize),
        other => Err(crate::Error::InvalidAction {
            env: env.id().to_string(),
            action: format!("{algo} (discrete)"),
            expected: format!("a Discrete action space, not {other:?}"),
        }),
    }
}
