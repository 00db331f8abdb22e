//! Learning algorithms, one readable file each.

pub mod a2c;
pub mod dqn;
pub mod ppo;

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
}
