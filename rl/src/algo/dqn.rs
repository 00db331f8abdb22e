//! DQN for discrete actions (CleanRL's `dqn.py`): a replay buffer, a target network synced every
//! `target_network_frequency` steps, double-DQN targets, and a linear epsilon schedule.
//!
//! The learner is candle on its process's GPU, else the CPU ([`crate::learner`]); with env
//! runners and `learner_num_gpus > 0` it is an actor of its own holding the replay buffer, on
//! the GPU share the scheduler assigns. Acting uses the Q-network's [`Mlp`] copy, refreshed after
//! every gradient step.

use super::{Progress, Summary};
use crate::env::{make, Action};
use crate::error::{Error, Result};
use crate::learner::{device_name, learner_error, CResult, ClippedAdam, LearnerDevice, Net};
use crate::nn::Mlp;
use crate::rng::Rng;
use crate::runner::Rollout;
use candle_core::{Device, Tensor, D};
use flare_core::ObjectRef;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Instant;

/// Hyperparameters; the defaults are CleanRL's for CartPole (with double DQN on).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DqnConfig {
    pub env_id: String,
    pub seed: u64,
    pub total_env_steps: u64,
    pub learning_rate: f32,
    pub buffer_size: usize,
    pub gamma: f32,
    pub target_network_frequency: u64,
    pub batch_size: usize,
    pub start_e: f64,
    pub end_e: f64,
    pub exploration_fraction: f64,
    pub learning_starts: u64,
    pub train_frequency: u64,
    pub double_dqn: bool,
    pub hidden: usize,
    pub max_grad_norm: f32,
    pub stop_when_solved: bool,
    /// Where the run writes its checkpoint at the end (Q-network, target network, step).
    pub checkpoint_dir: Option<std::path::PathBuf>,
    /// A checkpoint to continue from: its networks, and the step (so the epsilon schedule goes
    /// on where it stopped). The replay buffer starts empty; learning waits for a batch.
    pub resume_from: Option<std::path::PathBuf>,
    /// Where the learner runs in its process (the default: its GPU if it has one, else the CPU).
    pub device: LearnerDevice,
    /// With env runners: GPUs for a learner actor of its own (0 keeps it in the driver).
    pub learner_num_gpus: f64,
    /// With env runners: environments each runner steps.
    pub num_envs_per_runner: usize,
}

impl Default for DqnConfig {
    fn default() -> Self {
        DqnConfig {
            env_id: "CartPole-v1".into(),
            seed: 1,
            total_env_steps: 500_000,
            learning_rate: 2.5e-4,
            buffer_size: 10_000,
            gamma: 0.99,
            target_network_frequency: 500,
            batch_size: 128,
            start_e: 1.0,
            end_e: 0.05,
            exploration_fraction: 0.5,
            learning_starts: 10_000,
            train_frequency: 10,
            double_dqn: true,
            hidden: 120,
            max_grad_norm: 10.0,
            stop_when_solved: true,
            checkpoint_dir: None,
            resume_from: None,
            device: LearnerDevice::Auto,
            learner_num_gpus: 0.0,
            num_envs_per_runner: 1,
        }
    }
}

struct Transition {
    obs: Vec<f32>,
    action: u32,
    reward: f32,
    next_obs: Vec<f32>,
    /// Terminated (not truncated): no bootstrap from the next state.
    terminal: bool,
}

fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).unwrap_or(0)
}

/// A fresh Q-network (its target starts as a copy).
fn q_network(cfg: &DqnConfig, obs_dim: usize, n_actions: usize, rng: &mut Rng) -> Mlp {
    Mlp::new(&[obs_dim, cfg.hidden, cfg.hidden / 2 + 4, n_actions], 2f32.sqrt(), 1.0, rng)
}

/// The mean squared TD error of a minibatch against the target network (double-DQN targets:
/// the online network picks the next action, the target network values it).
fn td_loss(q: &Net, target: &Net, b: &[&Transition], cfg: &DqnConfig, dev: &Device) -> CResult<Tensor> {
    let n = b.len();
    let d = q.inputs();
    let obs = Tensor::from_vec(b.iter().flat_map(|t| t.obs.iter().copied()).collect(), (n, d), dev)?;
    let next = Tensor::from_vec(b.iter().flat_map(|t| t.next_obs.iter().copied()).collect(), (n, d), dev)?;
    let actions = Tensor::from_vec(b.iter().map(|t| t.action).collect(), (n, 1), dev)?;
    let rewards = Tensor::from_vec(b.iter().map(|t| t.reward).collect(), n, dev)?;
    let bootstrap: Vec<f32> = b.iter().map(|t| if t.terminal { 0.0 } else { cfg.gamma }).collect();
    let bootstrap = Tensor::from_vec(bootstrap, n, dev)?;
    let next_t = target.forward(&next)?;
    let next_v = if cfg.double_dqn {
        let pick = q.forward(&next)?.argmax_keepdim(D::Minus1)?;
        next_t.gather(&pick, 1)?.squeeze(1)?
    } else {
        next_t.max(D::Minus1)?
    };
    let y = (rewards + (bootstrap * next_v)?)?.detach();
    let q_sa = q.forward(&obs)?.gather(&actions, 1)?.squeeze(1)?;
    (q_sa - y)?.sqr()?.mean_all()
}

/// What a round of ingesting rollouts hands back.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IngestOutput {
    /// The Q-network after the round's gradient steps (the runners' next behaviour policy).
    pub q: Mlp,
    pub episode_returns: Vec<f64>,
    pub env_steps: u64,
    pub learner_s: f64,
}

/// The Q-network and its target as candle variables, the optimizer and the replay buffer.
pub struct DqnLearner {
    cfg: DqnConfig,
    dev: Device,
    q: Net,
    target: Net,
    opt: ClippedAdam,
    buffer: VecDeque<Transition>,
    rng: Rng,
    /// Env steps seen, and the step of the last gradient step and target sync (rounds of
    /// rollouts: [`ingest`](Self::ingest)).
    step: u64,
    learned_at: u64,
    synced_at: u64,
}

impl DqnLearner {
    /// A learner with these networks, at env step `step` (a resumed run's).
    pub fn new(cfg: &DqnConfig, q: &Mlp, target: &Mlp, step: u64) -> Result<Self> {
        let dev = cfg.device.open()?;
        let build = || -> CResult<(Net, Net, ClippedAdam)> {
            let (qn, tn) = (Net::from_mlp(q, &dev)?, Net::from_mlp(target, &dev)?);
            let opt = ClippedAdam::new(qn.vars(), cfg.learning_rate as f64, 1e-8, cfg.max_grad_norm)?;
            Ok((qn, tn, opt))
        };
        let (q, target, opt) = build().map_err(learner_error)?;
        Ok(DqnLearner {
            cfg: cfg.clone(),
            dev,
            q,
            target,
            opt,
            buffer: VecDeque::with_capacity(cfg.buffer_size),
            rng: Rng::new(cfg.seed ^ 0xD0_0D),
            step,
            learned_at: cfg.learning_starts.max(step),
            synced_at: step,
        })
    }

    pub fn device(&self) -> String {
        device_name(&self.dev)
    }

    fn push(&mut self, t: Transition) {
        if self.buffer.len() == self.cfg.buffer_size {
            self.buffer.pop_front();
        }
        self.buffer.push_back(t);
    }

    /// One gradient step on a minibatch from the buffer, once it holds one.
    fn learn(&mut self) -> Result<()> {
        if self.buffer.len() < self.cfg.batch_size {
            return Ok(());
        }
        let batch: Vec<&Transition> =
            (0..self.cfg.batch_size).map(|_| &self.buffer[self.rng.below(self.buffer.len() as u64) as usize]).collect();
        let loss = td_loss(&self.q, &self.target, &batch, &self.cfg, &self.dev).map_err(learner_error)?;
        self.opt.step(&loss).map_err(learner_error)?;
        Ok(())
    }

    fn sync_target(&self) -> Result<()> {
        self.target.copy_from(&self.q).map_err(learner_error)
    }

    /// The Q-network and its target as they are now.
    pub fn networks(&self) -> Result<(Mlp, Mlp)> {
        Ok((self.q.to_mlp().map_err(learner_error)?, self.target.to_mlp().map_err(learner_error)?))
    }

    fn q_mlp(&self) -> Result<Mlp> {
        self.q.to_mlp().map_err(learner_error)
    }

    /// Adds rollouts from runners to the buffer, then takes the gradient steps that are due
    /// (one per `train_frequency` env steps past `learning_starts`, as the single-process loop
    /// does) and syncs the target network every `target_network_frequency` steps.
    pub fn ingest(&mut self, rollouts: &[Rollout]) -> Result<IngestOutput> {
        let t0 = Instant::now();
        let mut episode_returns = Vec::new();
        let mut env_steps = 0u64;
        for r in rollouts {
            episode_returns.extend(&r.episode_returns);
            for k in 0..r.actions.len() {
                self.push(Transition {
                    obs: r.obs[k].clone(),
                    action: r.actions[k],
                    reward: r.rewards[k],
                    next_obs: r.next_obs[k].clone(),
                    terminal: r.terminated[k],
                });
            }
            env_steps += r.actions.len() as u64;
        }
        self.step += env_steps;
        let (freq, sync) = (self.cfg.train_frequency.max(1), self.cfg.target_network_frequency.max(1));
        while self.step > self.cfg.learning_starts && self.learned_at + freq <= self.step {
            self.learned_at += freq;
            self.learn()?;
        }
        if self.step >= self.synced_at + sync {
            self.synced_at = self.step - self.step % sync;
            self.sync_target()?;
        }
        Ok(IngestOutput { q: self.q_mlp()?, episode_returns, env_steps, learner_s: t0.elapsed().as_secs_f64() })
    }
}

/// A [`DqnLearner`] (with its replay buffer) in a worker process of its own, spawned with the
/// config's `learner_num_gpus`; it reads the runners' rollouts from the object store.
pub struct DqnLearnerActor {
    learner: Mutex<DqnLearner>,
}

#[flare_macros::actor(crate = ::flare_core)]
impl DqnLearnerActor {
    fn new(cfg: DqnConfig, q: Mlp, target: Mlp, step: u64) -> Result<Self, String> {
        Ok(DqnLearnerActor { learner: Mutex::new(DqnLearner::new(&cfg, &q, &target, step).map_err(|e| e.to_string())?) })
    }

    fn ingest(&self, rollouts: Vec<ObjectRef<Rollout>>) -> Result<IngestOutput, String> {
        let rollouts = flare_core::get_all(&rollouts).map_err(|e| e.to_string())?;
        self.learner.lock().unwrap_or_else(|p| p.into_inner()).ingest(&rollouts).map_err(|e| e.to_string())
    }

    fn networks(&self) -> Result<(Mlp, Mlp), String> {
        self.learner.lock().unwrap_or_else(|p| p.into_inner()).networks().map_err(|e| e.to_string())
    }

    fn device(&self) -> String {
        self.learner.lock().unwrap_or_else(|p| p.into_inner()).device()
    }
}

/// Trains with `num_runners` env-runner actors (`num_envs_per_runner` environments each, up to
/// three restarts) stepping epsilon-greedy with the current Q-network, which reaches them through the object
/// store every round of `train_frequency * 10` steps per runner; the learner does one gradient
/// step per `train_frequency` collected steps, as the single-process loop does, here or in a
/// learner actor (`learner_num_gpus > 0`). Needs a running Flare runtime.
pub fn train_distributed(cfg: &DqnConfig, num_runners: usize, mut progress: impl FnMut(&Progress)) -> Result<(Summary, Mlp)> {
    let runtime = |e: flare_core::Error| Error::Runtime(e.to_string());
    let t0 = Instant::now();
    let probe = make(&cfg.env_id)?;
    let n_actions = super::discrete_actions(&*probe, "DQN")?;
    let obs_dim = probe.observation_space().dim();
    let threshold = probe.reward_threshold().unwrap_or(f64::INFINITY);
    let runners = crate::runner::spawn_runners(&cfg.env_id, cfg.num_envs_per_runner.max(1), cfg.seed, num_runners.max(1))?;
    let mut rng = Rng::new(cfg.seed);
    let fresh = q_network(cfg, obs_dim, n_actions, &mut rng);
    let (mut q, target, mut step) = resume(cfg, fresh)?;
    enum Learner {
        Here(Box<DqnLearner>),
        Actor(flare_core::ActorHandle<DqnLearnerActor>),
    }
    let learner = if cfg.learner_num_gpus > 0.0 {
        let a = DqnLearnerActor::remote(cfg.clone(), q.clone(), target, step)
            .num_gpus(cfg.learner_num_gpus)
            .num_cpus(0.0)
            .spawn()
            .map_err(runtime)?;
        Learner::Actor(a)
    } else {
        Learner::Here(Box::new(DqnLearner::new(cfg, &q, &target, step)?))
    };
    let mut learner = learner;
    let device = match &learner {
        Learner::Here(l) => l.device(),
        Learner::Actor(a) => a.device().get().map_err(runtime)?,
    };
    let mut recent = super::Recent::default();
    let explore_steps = (cfg.exploration_fraction * cfg.total_env_steps as f64).max(1.0);
    let chunk = (cfg.train_frequency * 10).max(1);
    let mut reported_at = step;
    let mut learner_s = 0.0;
    while step < cfg.total_env_steps {
        let eps = cfg.start_e + (cfg.end_e - cfg.start_e) * (step as f64 / explore_steps).min(1.0);
        let weights = flare_core::put(&q).map_err(runtime)?;
        let refs: Vec<_> = runners.iter().map(|r| r.sample_epsilon(&weights, eps, chunk as u32)).collect();
        let out = match &mut learner {
            Learner::Here(l) => l.ingest(&flare_core::get_all(&refs).map_err(runtime)?)?,
            Learner::Actor(a) => a.ingest(refs).get().map_err(runtime)?,
        };
        out.episode_returns.iter().for_each(|ret| recent.push(*ret));
        step += out.env_steps;
        learner_s += out.learner_s;
        q = out.q;
        if step >= reported_at + 1000 {
            reported_at = step - step % 1000;
            progress(&Progress { env_steps: step, mean_return: recent.mean(), wall_s: t0.elapsed().as_secs_f64(), learner_s });
            if cfg.stop_when_solved && recent.solved(threshold) {
                break;
            }
        }
    }
    let (q_end, target_end) = match &learner {
        Learner::Here(l) => l.networks()?,
        Learner::Actor(a) => a.networks().get().map_err(runtime)?,
    };
    save(cfg, &q_end, &target_end, step)?;
    let mut summary = recent.summary(threshold, step, t0);
    summary.learner_s = learner_s;
    summary.learner_device = Some(device);
    Ok((summary, q_end))
}

/// Trains a Q-network; `progress` gets a [`Progress`] every 1,000 steps.
pub fn train(cfg: &DqnConfig, mut progress: impl FnMut(&Progress)) -> Result<(Summary, Mlp)> {
    super::learner_here(cfg.learner_num_gpus)?;
    let t0 = Instant::now();
    let mut env = make(&cfg.env_id)?;
    let n_actions = super::discrete_actions(&*env, "DQN")?;
    let obs_dim = env.observation_space().dim();
    let threshold = env.reward_threshold().unwrap_or(f64::INFINITY);
    let mut rng = Rng::new(cfg.seed);
    let fresh = q_network(cfg, obs_dim, n_actions, &mut rng);
    let (mut q, target, mut step) = resume(cfg, fresh)?;
    let mut learner = DqnLearner::new(cfg, &q, &target, step)?;
    let mut recent = super::Recent::default();
    let (mut obs, _) = env.reset(Some(cfg.seed));
    let mut ep_ret = 0.0f64;
    let explore_steps = (cfg.exploration_fraction * cfg.total_env_steps as f64).max(1.0);
    let mut learner_s = 0.0;
    while step < cfg.total_env_steps {
        let eps = cfg.start_e + (cfg.end_e - cfg.start_e) * (step as f64 / explore_steps).min(1.0);
        let a = if rng.next_f64() < eps { rng.below(n_actions as u64) as usize } else { argmax(&q.forward(&obs)) };
        let st = env.step(&Action::Discrete(a as i64))?;
        step += 1;
        ep_ret += st.reward;
        learner.push(Transition {
            obs: std::mem::replace(&mut obs, st.obs.clone()),
            action: a as u32,
            reward: st.reward as f32,
            next_obs: st.obs,
            terminal: st.terminated,
        });
        if st.terminated || st.truncated {
            recent.push(ep_ret);
            ep_ret = 0.0;
            obs = env.reset(None).0;
        }
        if step > cfg.learning_starts && step % cfg.train_frequency.max(1) == 0 {
            let t = Instant::now();
            learner.learn()?;
            q = learner.q_mlp()?;
            learner_s += t.elapsed().as_secs_f64();
        }
        if step % cfg.target_network_frequency.max(1) == 0 {
            learner.sync_target()?;
        }
        if step % 1000 == 0 {
            progress(&Progress { env_steps: step, mean_return: recent.mean(), wall_s: t0.elapsed().as_secs_f64(), learner_s });
            if cfg.stop_when_solved && recent.solved(threshold) {
                break;
            }
        }
    }
    let (q_end, target_end) = learner.networks()?;
    save(cfg, &q_end, &target_end, step)?;
    let mut summary = recent.summary(threshold, step, t0);
    summary.learner_s = learner_s;
    summary.learner_device = Some(learner.device());
    Ok((summary, q_end))
}

/// The Q-network, its target and the step to start from: `cfg.resume_from`'s, or `fresh` twice
/// at step 0.
fn resume(cfg: &DqnConfig, fresh: Mlp) -> Result<(Mlp, Mlp, u64)> {
    let Some(dir) = &cfg.resume_from else { return Ok((fresh.clone(), fresh, 0)) };
    let (q, target, step) = load_checkpoint(dir)?;
    if q.sizes != fresh.sizes || target.sizes != fresh.sizes {
        return Err(Error::Learner(format!(
            "the checkpoint in {} has a Q-network {:?}, this run builds {:?}",
            dir.display(),
            q.sizes,
            fresh.sizes
        )));
    }
    Ok((q, target, step))
}

fn save(cfg: &DqnConfig, q: &Mlp, target: &Mlp, step: u64) -> Result<()> {
    match &cfg.checkpoint_dir {
        Some(dir) => save_checkpoint(dir, q, target, step),
        None => Ok(()),
    }
}

/// Writes a DQN checkpoint: `model.safetensors` (`q`, `target`) and `metadata.json`.
pub fn save_checkpoint(dir: &std::path::Path, q: &Mlp, target: &Mlp, env_steps: u64) -> Result<()> {
    super::save_networks(dir, "dqn", &[("q", q), ("target", target)], env_steps)
}

/// Reads a checkpoint written by [`save_checkpoint`]: Q-network, target network, step.
pub fn load_checkpoint(dir: &std::path::Path) -> Result<(Mlp, Mlp, u64)> {
    let (nets, step) = super::load_networks(dir, "dqn", &["q", "target"])?;
    let [q, target]: [Mlp; 2] = nets.try_into().map_err(|_| crate::Error::Learner("a checkpoint with other networks".into()))?;
    Ok((q, target, step))
}

/// Mean return of `episodes` greedy episodes (the action with the highest Q-value).
pub fn evaluate(q: &Mlp, env_id: &str, episodes: u32, seed: u64) -> Result<f64> {
    super::ppo::evaluate(q, env_id, episodes, seed)
}
