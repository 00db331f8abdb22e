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
    /// Seconds spent in the learner (computing updates), of `wall_s`.
    pub learner_s: f64,
    /// Where the learner ran: `cpu` or `cuda:N` (in its process).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub learner_device: Option<String>,
}

/// What a training run reports as it goes, after each update (PPO, A2C) or every 1,000 env
/// steps (DQN, SAC).
#[derive(Clone, Debug)]
pub struct Progress {
    pub env_steps: u64,
    /// Mean return over the last 100 episodes (negative infinity before the first ends).
    pub mean_return: f64,
    /// Seconds since training started.
    pub wall_s: f64,
    /// Of those, seconds spent in the learner.
    pub learner_s: f64,
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
            learner_s: 0.0,
            learner_device: None,
        }
    }
}

/// A learner actor (`learner_num_gpus > 0`) needs env runners to feed it; a run in this process
/// picks its device with `device` instead.
pub(crate) fn learner_here(learner_num_gpus: f64) -> crate::Result<()> {
    if learner_num_gpus > 0.0 {
        return Err(crate::Error::Learner(
            "learner_num_gpus puts the learner in an actor of its own, which needs env-runner actors \
             (train_distributed, --num-env-runners); in this process use `device` instead"
                .into(),
        ));
    }
    Ok(())
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

/// Writes a checkpoint of hand-written networks: `model.safetensors` with `nets` by name and
/// `metadata.json` (`{"algo", "step"}`).
pub(crate) fn save_networks(dir: &std::path::Path, algo: &str, nets: &[(&str, &crate::nn::Mlp)], step: u64) -> crate::Result<()> {
    let io = |e: std::io::Error| crate::Error::Learner(format!("writing the checkpoint in {}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(io)?;
    crate::nn::save_safetensors(&dir.join("model.safetensors"), nets)?;
    std::fs::write(dir.join("metadata.json"), serde_json::json!({"algo": algo, "step": step}).to_string()).map_err(io)
}

/// Reads the networks `names` of an `algo` checkpoint written by [`save_networks`], and its step.
pub(crate) fn load_networks(dir: &std::path::Path, algo: &str, names: &[&str]) -> crate::Result<(Vec<crate::nn::Mlp>, u64)> {
    let upper = algo.to_uppercase();
    let text = std::fs::read_to_string(dir.join("metadata.json"))
        .map_err(|e| crate::Error::Learner(format!("{} is not a {upper} checkpoint: {e}", dir.display())))?;
    let meta: serde_json::Value = serde_json::from_str(&text).map_err(|e| crate::Error::Learner(e.to_string()))?;
    if meta["algo"] != algo {
        return Err(crate::Error::Learner(format!("{} holds a {} checkpoint, not a {upper} one", dir.display(), meta["algo"])));
    }
    let model = dir.join("model.safetensors");
    let nets = names.iter().map(|n| crate::nn::load_safetensors(&model, n)).collect::<crate::Result<Vec<_>>>()?;
    Ok((nets, meta["step"].as_u64().unwrap_or(0)))
}
