//! DQN for discrete actions (CleanRL's `dqn.py`): a replay buffer, a target network synced every
//! `target_network_frequency` steps, double-DQN targets, and a linear epsilon schedule.

use super::Summary;
use crate::env::{make, Action};
use crate::error::Result;
use crate::nn::{clip_grad_norm, Adam, Mlp};
use crate::rng::Rng;
use std::collections::VecDeque;
use std::time::Instant;

/// Hyperparameters; the defaults are CleanRL's for CartPole (with double DQN on).
#[derive(Clone, Debug)]
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
        }
    }
}

struct Transition {
    obs: Vec<f32>,
    action: usize,
    reward: f32,
    next_obs: Vec<f32>,
    /// Terminated (not truncated): no bootstrap from the next state.
    terminal: bool,
}

fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).unwrap_or(0)
}

/// The Q-network, its target copy and the optimizer.
fn networks(cfg: &DqnConfig, obs_dim: usize, n_actions: usize, rng: &mut Rng) -> (Mlp, Mlp, Adam) {
    let sizes = [obs_dim, cfg.hidden, cfg.hidden / 2 + 4, n_actions];
    let q = Mlp::new(&sizes, 2f32.sqrt(), 1.0, rng);
    let opt = Adam::new(q.params.len(), cfg.learning_rate, 1e-8);
    (q.clone(), q, opt)
}

/// One gradient step on a minibatch from the buffer: mean squared TD error against the target
/// network (double-DQN targets when asked), gradients clipped by global norm.
fn learn(cfg: &DqnConfig, q: &mut Mlp, target: &Mlp, opt: &mut Adam, buffer: &VecDeque<Transition>, rng: &mut Rng) {
    let n_actions = q.sizes.last().copied().unwrap_or(1);
    let mut grad = vec![0.0f32; q.params.len()];
    let n = cfg.batch_size as f32;
    for _ in 0..cfg.batch_size {
        let t = &buffer[rng.below(buffer.len() as u64) as usize];
        let next_t = target.forward(&t.next_obs).0;
        let next_v = if cfg.double_dqn { next_t[argmax(&q.forward(&t.next_obs).0)] } else { next_t[argmax(&next_t)] };
        let y = t.reward + if t.terminal { 0.0 } else { cfg.gamma * next_v };
        let (qs, tape) = q.forward(&t.obs);
        let mut dout = vec![0.0f32; n_actions];
        // d/dq of mean squared TD error.
        dout[t.action] = 2.0 * (qs[t.action] - y) / n;
        q.backward(&tape, &dout, &mut grad);
    }
    clip_grad_norm(&mut [&mut grad], cfg.max_grad_norm);
    opt.step(&mut q.params, &grad);
}

/// Trains with `num_runners` env-runner actors (one environment each, up to three restarts)
/// stepping epsilon-greedy with the current Q-network, which reaches them through the object
/// store every round of `train_frequency * 10` steps per runner; the learner here does one
/// gradient step per `train_frequency` collected steps, as the single-process loop does.
/// Needs a running Flare runtime.
pub fn train_distributed(cfg: &DqnConfig, num_runners: usize, mut progress: impl FnMut(u64, f64)) -> Result<(Summary, Mlp)> {
    let runtime = |e: flare_core::Error| crate::Error::Runtime(e.to_string());
    let t0 = Instant::now();
    let probe = make(&cfg.env_id)?;
    let n_actions = super::discrete_actions(&*probe, "DQN")?;
    let obs_dim = probe.observation_space().dim();
    let threshold = probe.reward_threshold().unwrap_or(f64::INFINITY);
    let runners = crate::runner::spawn_runners(&cfg.env_id, 1, cfg.seed, num_runners.max(1))?;
    let mut rng = Rng::new(cfg.seed);
    let (mut q, mut target, mut opt) = networks(cfg, obs_dim, n_actions, &mut rng);
    let mut step = resume(cfg, &mut q, &mut target)?;
    let mut buffer: VecDeque<Transition> = VecDeque::with_capacity(cfg.buffer_size);
    let mut recent = super::Recent::default();
    let explore_steps = (cfg.exploration_fraction * cfg.total_env_steps as f64).max(1.0);
    let chunk = (cfg.train_frequency * 10).max(1);
    let mut learned_at = cfg.learning_starts.max(step);
    let mut synced_at = step;
    let mut reported_at = step;
    while step < cfg.total_env_steps {
        let eps = cfg.start_e + (cfg.end_e - cfg.start_e) * (step as f64 / explore_steps).min(1.0);
        let weights = flare_core::put(&q).map_err(runtime)?;
        let refs: Vec<_> = runners.iter().map(|r| r.sample_epsilon(&weights, eps, chunk as u32)).collect();
        for r in flare_core::get_all(&refs).map_err(runtime)? {
            r.episode_returns.iter().for_each(|ret| recent.push(*ret));
            for k in 0..r.actions.len() {
                if buffer.len() == cfg.buffer_size {
                    buffer.pop_front();
                }
                buffer.push_back(Transition {
                    obs: r.obs[k].clone(),
                    action: r.actions[k] as usize,
                    reward: r.rewards[k],
                    next_obs: r.next_obs[k].clone(),
                    terminal: r.terminated[k],
                });
            }
            step += r.actions.len() as u64;
        }
        while step > cfg.learning_starts && learned_at + cfg.train_frequency <= step {
            learned_at += cfg.train_frequency;
            if buffer.len() >= cfg.batch_size {
                learn(cfg, &mut q, &target, &mut opt, &buffer, &mut rng);
            }
        }
        if step >= synced_at + cfg.target_network_frequency {
            synced_at = step - step % cfg.target_network_frequency;
            target = q.clone();
        }
        if step >= reported_at + 1000 {
            reported_at = step - step % 1000;
            progress(step, recent.mean());
            if cfg.stop_when_solved && recent.solved(threshold) {
                break;
            }
        }
    }
    save(cfg, &q, &target, step)?;
    Ok((recent.summary(threshold, step, t0), q))
}

/// Trains a Q-network; `progress` gets `(env_steps, mean_return_last_100)` every 1,000 steps.
pub fn train(cfg: &DqnConfig, mut progress: impl FnMut(u64, f64)) -> Result<(Summary, Mlp)> {
    let t0 = Instant::now();
    let mut env = make(&cfg.env_id)?;
    let n_actions = super::discrete_actions(&*env, "DQN")?;
    let obs_dim = env.observation_space().dim();
    let threshold = env.reward_threshold().unwrap_or(f64::INFINITY);
    let mut rng = Rng::new(cfg.seed);
    let (mut q, mut target, mut opt) = networks(cfg, obs_dim, n_actions, &mut rng);
    let mut step = resume(cfg, &mut q, &mut target)?;
    let mut buffer: VecDeque<Transition> = VecDeque::with_capacity(cfg.buffer_size);
    let mut recent = super::Recent::default();
    let (mut obs, _) = env.reset(Some(cfg.seed));
    let mut ep_ret = 0.0f64;
    let explore_steps = (cfg.exploration_fraction * cfg.total_env_steps as f64).max(1.0);
    while step < cfg.total_env_steps {
        let eps = cfg.start_e + (cfg.end_e - cfg.start_e) * (step as f64 / explore_steps).min(1.0);
        let a = if rng.next_f64() < eps { rng.below(n_actions as u64) as usize } else { argmax(&q.forward(&obs).0) };
        let st = env.step(&Action::Discrete(a as i64))?;
        step += 1;
        ep_ret += st.reward;
        if buffer.len() == cfg.buffer_size {
            buffer.pop_front();
        }
        buffer.push_back(Transition {
            obs: obs.clone(),
            action: a,
            reward: st.reward as f32,
            next_obs: st.obs.clone(),
            terminal: st.terminated,
        });
        obs = st.obs;
        if st.terminated || st.truncated {
            recent.push(ep_ret);
            ep_ret = 0.0;
            obs = env.reset(None).0;
        }
        if step > cfg.learning_starts && step % cfg.train_frequency == 0 && buffer.len() >= cfg.batch_size {
            learn(cfg, &mut q, &target, &mut opt, &buffer, &mut rng);
        }
        if step % cfg.target_network_frequency == 0 {
            target = q.clone();
        }
        if step % 1000 == 0 {
            progress(step, recent.mean());
            if cfg.stop_when_solved && recent.solved(threshold) {
                break;
            }
        }
    }
    save(cfg, &q, &target, step)?;
    Ok((recent.summary(threshold, step, t0), q))
}

/// Loads `cfg.resume_from` into the networks; the step to go on from (0 without one).
fn resume(cfg: &DqnConfig, q: &mut Mlp, target: &mut Mlp) -> Result<u64> {
    let Some(dir) = &cfg.resume_from else { return Ok(0) };
    let (lq, lt, step) = load_checkpoint(dir)?;
    if lq.sizes != q.sizes || lt.sizes != target.sizes {
        return Err(crate::Error::Learner(format!(
            "the checkpoint in {} has a Q-network {:?}, this run builds {:?}",
            dir.display(),
            lq.sizes,
            q.sizes
        )));
    }
    *q = lq;
    *target = lt;
    Ok(step)
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
