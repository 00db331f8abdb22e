//! A2C (synchronous advantage actor-critic, as in Stable-Baselines3's defaults for CartPole):
//! short rollouts from several environments, one gradient step per rollout on the policy
//! gradient with n-step advantages, a value loss and an entropy bonus. It is the actor-critic
//! learner of [`ppo`](super::ppo) with one epoch over one minibatch and no clipping (the ratio
//! is then exactly 1 and the surrogate's gradient is the policy gradient), so it shares that
//! learner rather than repeating it.

use super::ppo::{run, PpoConfig, Source};
use super::{Progress, Summary};
use crate::error::Result;
use crate::learner::LearnerDevice;
use crate::nn::Mlp;

#[derive(Clone, Debug)]
pub struct A2cConfig {
    pub env_id: String,
    pub seed: u64,
    pub total_env_steps: u64,
    pub num_envs: usize,
    /// Steps per environment per update (SB3's `n_steps`).
    pub num_steps: usize,
    pub learning_rate: f32,
    pub gamma: f64,
    /// 1.0 gives plain n-step returns.
    pub gae_lambda: f64,
    pub ent_coef: f32,
    pub vf_coef: f32,
    pub max_grad_norm: f32,
    pub stop_when_solved: bool,
    /// Where the run writes its checkpoint (PPO's format: actor, critic, step;
    /// `ppo::load_checkpoint` reads it).
    pub checkpoint_dir: Option<std::path::PathBuf>,
    /// A checkpoint to continue from, at its step.
    pub resume_from: Option<std::path::PathBuf>,
    /// Where the learner runs in its process (see [`PpoConfig::device`]).
    pub device: LearnerDevice,
    /// With env runners: GPUs for a learner actor of its own (see [`PpoConfig::learner_num_gpus`]).
    pub learner_num_gpus: f64,
}

impl Default for A2cConfig {
    fn default() -> Self {
        A2cConfig {
            env_id: "CartPole-v1".into(),
            seed: 1,
            total_env_steps: 500_000,
            num_envs: 8,
            num_steps: 5,
            learning_rate: 7e-4,
            gamma: 0.99,
            gae_lambda: 1.0,
            ent_coef: 0.0,
            vf_coef: 0.5,
            max_grad_norm: 0.5,
            stop_when_solved: true,
            checkpoint_dir: None,
            resume_from: None,
            device: LearnerDevice::Auto,
            learner_num_gpus: 0.0,
        }
    }
}

pub fn train(cfg: &A2cConfig, progress: impl FnMut(&Progress)) -> Result<(Summary, Mlp)> {
    let p = as_ppo(cfg);
    run(&p, Source::local(&p)?, progress)
}

/// Trains with `num_runners` env-runner actors sampling in their own processes (each with
/// `cfg.num_envs` environments; one update per round of rollouts from all of them); needs a
/// running Flare runtime.
pub fn train_distributed(cfg: &A2cConfig, num_runners: usize, progress: impl FnMut(&Progress)) -> Result<(Summary, Mlp)> {
    super::ppo::train_distributed(&as_ppo(cfg), num_runners, progress)
}

fn as_ppo(cfg: &A2cConfig) -> PpoConfig {
    PpoConfig {
        env_id: cfg.env_id.clone(),
        seed: cfg.seed,
        total_env_steps: cfg.total_env_steps,
        num_envs: cfg.num_envs,
        num_steps: cfg.num_steps,
        learning_rate: cfg.learning_rate,
        anneal_lr: true,
        gamma: cfg.gamma,
        gae_lambda: cfg.gae_lambda,
        num_minibatches: 1,
        update_epochs: 1,
        clip_coef: f32::INFINITY,
        clip_vloss: false,
        ent_coef: cfg.ent_coef,
        vf_coef: cfg.vf_coef,
        max_grad_norm: cfg.max_grad_norm,
        norm_adv: false,
        hidden: 64,
        stop_when_solved: cfg.stop_when_solved,
        checkpoint_dir: cfg.checkpoint_dir.clone(),
        resume_from: cfg.resume_from.clone(),
        device: cfg.device,
        learner_num_gpus: cfg.learner_num_gpus,
    }
}
