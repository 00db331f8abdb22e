//! SAC for continuous actions (CleanRL's `sac_continuous_action.py`), learner on candle: the
//! GPU when one is there (`--features cuda`), else the CPU.
//!
//! Twin Q-networks with Polyak-averaged targets, a tanh-squashed Gaussian policy (log-std
//! squashed into [-5, 2]), delayed policy updates (`policy_frequency` updates every
//! `policy_frequency` steps, as CleanRL compensates), and the entropy temperature tuned toward
//! `-dim(action)`. Checkpoints are safetensors files (`actor`, `qf1`, `qf2` and their targets,
//! `log_alpha`) with the step count beside them; a run resumes from one.

use super::{Progress, Summary};
use crate::env::{make, Action};
use crate::error::{Error, Result};
use crate::learner::{learner_error, CResult, LearnerDevice};
use crate::nn::{GaussianPolicy, Layer};
use crate::rng::Rng;
use crate::runner::Rollout;
use crate::spaces::Space;
use candle_core::{DType, Device, Module, Tensor, Var, D};
use candle_nn::{linear, AdamW, Linear, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use flare_core::ObjectRef;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

/// Hyperparameters; the defaults are CleanRL's.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SacConfig {
    pub env_id: String,
    pub seed: u64,
    pub total_env_steps: u64,
    pub buffer_size: usize,
    pub gamma: f32,
    pub tau: f32,
    pub batch_size: usize,
    pub learning_starts: u64,
    pub policy_lr: f64,
    pub q_lr: f64,
    pub policy_frequency: u64,
    pub hidden: usize,
    /// Fixed entropy temperature when `autotune` is off; the initial one otherwise is 1.
    pub alpha: f32,
    pub autotune: bool,
    /// Stop once the mean return over the last 100 episodes reaches this (default: the env's
    /// threshold; for Pendulum-v1, which has none in gymnasium, -200).
    pub stop_at: Option<f64>,
    /// Write a checkpoint here at the end (and every `checkpoint_every` steps).
    pub checkpoint_dir: Option<PathBuf>,
    pub checkpoint_every: u64,
    /// Start from this checkpoint's weights, temperature and step count.
    pub resume_from: Option<PathBuf>,
    /// Where the learner runs (the default: this process's GPU if it has one, else the CPU).
    pub device: LearnerDevice,
    /// With env runners ([`train_distributed`]): environments per runner, and steps each takes
    /// per round with the policy of that round.
    pub num_envs_per_runner: usize,
    pub steps_per_round: usize,
    /// With env runners: GPUs for a learner actor of its own (0 keeps it in the driver).
    pub learner_num_gpus: f64,
}

impl Default for SacConfig {
    fn default() -> Self {
        SacConfig {
            env_id: "Pendulum-v1".into(),
            seed: 1,
            total_env_steps: 50_000,
            buffer_size: 1_000_000,
            gamma: 0.99,
            tau: 0.005,
            batch_size: 256,
            learning_starts: 5_000,
            policy_lr: 3e-4,
            q_lr: 1e-3,
            policy_frequency: 2,
            hidden: 256,
            alpha: 0.2,
            autotune: true,
            stop_at: None,
            checkpoint_dir: None,
            checkpoint_every: 0,
            resume_from: None,
            device: LearnerDevice::Auto,
            num_envs_per_runner: 1,
            steps_per_round: 50,
            learner_num_gpus: 0.0,
        }
    }
}

const LOG_STD_MIN: f64 = -5.0;
const LOG_STD_MAX: f64 = 2.0;

struct QNet {
    l1: Linear,
    l2: Linear,
    l3: Linear,
}

impl QNet {
    fn new(vb: VarBuilder, obs: usize, act: usize, hidden: usize) -> CResult<Self> {
        Ok(QNet {
            l1: linear(obs + act, hidden, vb.pp("fc1"))?,
            l2: linear(hidden, hidden, vb.pp("fc2"))?,
            l3: linear(hidden, 1, vb.pp("fc3"))?,
        })
    }

    fn forward(&self, obs: &Tensor, act: &Tensor) -> CResult<Tensor> {
        let x = Tensor::cat(&[obs, act], 1)?;
        let x = self.l1.forward(&x)?.relu()?;
        let x = self.l2.forward(&x)?.relu()?;
        self.l3.forward(&x)?.squeeze(1)
    }
}

struct Actor {
    l1: Linear,
    l2: Linear,
    mean: Linear,
    log_std: Linear,
    scale: Tensor,
    bias: Tensor,
}

impl Actor {
    fn new(vb: VarBuilder, obs: usize, act: usize, hidden: usize, low: &[f32], high: &[f32], dev: &Device) -> CResult<Self> {
        let scale: Vec<f32> = low.iter().zip(high).map(|(l, h)| (h - l) / 2.0).collect();
        let bias: Vec<f32> = low.iter().zip(high).map(|(l, h)| (h + l) / 2.0).collect();
        Ok(Actor {
            l1: linear(obs, hidden, vb.pp("fc1"))?,
            l2: linear(hidden, hidden, vb.pp("fc2"))?,
            mean: linear(hidden, act, vb.pp("fc_mean"))?,
            log_std: linear(hidden, act, vb.pp("fc_logstd"))?,
            scale: Tensor::from_vec(scale, (1, act), dev)?,
            bias: Tensor::from_vec(bias, (1, act), dev)?,
        })
    }

    /// Mean and log-std of the pre-squash Gaussian.
    fn dist(&self, obs: &Tensor) -> CResult<(Tensor, Tensor)> {
        let x = self.l1.forward(obs)?.relu()?;
        let x = self.l2.forward(&x)?.relu()?;
        let mean = self.mean.forward(&x)?;
        let log_std = self.log_std.forward(&x)?.tanh()?;
        let log_std = ((log_std + 1.0)? * (0.5 * (LOG_STD_MAX - LOG_STD_MIN)))? + LOG_STD_MIN;
        Ok((mean, log_std?))
    }

    /// A reparameterized sample with standard-normal `noise`, and its log-probability.
    fn sample(&self, obs: &Tensor, noise: &Tensor) -> CResult<(Tensor, Tensor)> {
        let (mean, log_std) = self.dist(obs)?;
        let std = log_std.exp()?;
        let x = (&mean + (&std * noise)?)?;
        let y = x.tanh()?;
        let action = y.broadcast_mul(&self.scale)?.broadcast_add(&self.bias)?;
        // log N(x; mean, std) = -0.5 z^2 - log std - 0.5 log(2 pi), z = noise.
        let log_normal = ((noise.sqr()? * -0.5)? - &log_std)? - 0.5 * (2.0 * std::f64::consts::PI).ln();
        let squash = ((y.sqr()?.neg()? + 1.0)?.broadcast_mul(&self.scale)? + 1e-6)?.log()?;
        let log_prob = (log_normal? - squash)?.sum(D::Minus1)?;
        Ok((action, log_prob))
    }

    /// The deterministic action (evaluation): the squashed mean.
    fn act(&self, obs: &Tensor) -> CResult<Tensor> {
        let (mean, _) = self.dist(obs)?;
        mean.tanh()?.broadcast_mul(&self.scale)?.broadcast_add(&self.bias)
    }
}

/// The learner: networks, targets, optimizers and the temperature.
pub struct Sac {
    dev: Device,
    obs_dim: usize,
    act_dim: usize,
    actor_vars: VarMap,
    q_vars: VarMap,
    target_vars: VarMap,
    actor: Actor,
    qf1: QNet,
    qf2: QNet,
    qf1_t: QNet,
    qf2_t: QNet,
    actor_opt: AdamW,
    q_opt: AdamW,
    log_alpha: Var,
    alpha_opt: Option<AdamW>,
    fixed_alpha: f32,
    target_entropy: f64,
}

fn adam(vars: Vec<Var>, lr: f64) -> CResult<AdamW> {
    AdamW::new(vars, ParamsAdamW { lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 })
}

impl Sac {
    fn new(cfg: &SacConfig, obs_dim: usize, low: &[f32], high: &[f32], dev: Device) -> CResult<Self> {
        let act_dim = low.len();
        let h = cfg.hidden;
        let actor_vars = VarMap::new();
        let actor = Actor::new(VarBuilder::from_varmap(&actor_vars, DType::F32, &dev), obs_dim, act_dim, h, low, high, &dev)?;
        let q_vars = VarMap::new();
        let qb = VarBuilder::from_varmap(&q_vars, DType::F32, &dev);
        let qf1 = QNet::new(qb.pp("qf1"), obs_dim, act_dim, h)?;
        let qf2 = QNet::new(qb.pp("qf2"), obs_dim, act_dim, h)?;
        let target_vars = VarMap::new();
        let tb = VarBuilder::from_varmap(&target_vars, DType::F32, &dev);
        let qf1_t = QNet::new(tb.pp("qf1"), obs_dim, act_dim, h)?;
        let qf2_t = QNet::new(tb.pp("qf2"), obs_dim, act_dim, h)?;
        copy_vars(&q_vars, &target_vars, 1.0)?;
        let actor_opt = adam(actor_vars.all_vars(), cfg.policy_lr)?;
        let q_opt = adam(q_vars.all_vars(), cfg.q_lr)?;
        let log_alpha = Var::from_tensor(&Tensor::zeros((), DType::F32, &dev)?)?;
        let alpha_opt = if cfg.autotune { Some(adam(vec![log_alpha.clone()], cfg.q_lr)?) } else { None };
        Ok(Sac {
            dev,
            obs_dim,
            act_dim,
            actor_vars,
            q_vars,
            target_vars,
            actor,
            qf1,
            qf2,
            qf1_t,
            qf2_t,
            actor_opt,
            q_opt,
            log_alpha,
            alpha_opt,
            fixed_alpha: cfg.alpha,
            target_entropy: -(act_dim as f64),
        })
    }

    fn alpha(&self) -> CResult<f32> {
        if self.alpha_opt.is_some() {
            self.log_alpha.as_tensor().exp()?.to_scalar::<f32>()
        } else {
            Ok(self.fixed_alpha)
        }
    }

    fn noise(&self, rng: &mut Rng, rows: usize) -> CResult<Tensor> {
        let v: Vec<f32> = (0..rows * self.act_dim).map(|_| rng.normal() as f32).collect();
        Tensor::from_vec(v, (rows, self.act_dim), &self.dev)
    }

    /// A stochastic action for one observation (training).
    fn explore(&self, obs: &[f32], rng: &mut Rng) -> CResult<Vec<f32>> {
        let o = Tensor::from_slice(obs, (1, self.obs_dim), &self.dev)?;
        let (a, _) = self.actor.sample(&o, &self.noise(rng, 1)?)?;
        a.flatten_all()?.to_vec1::<f32>()
    }

    /// The policy as plain data, for env runners to sample with on their CPUs.
    pub fn policy(&self) -> Result<GaussianPolicy> {
        let layer = |l: &Linear| -> CResult<Layer> {
            let (n_out, n_in) = l.weight().dims2()?;
            let bias = match l.bias() {
                Some(b) => b.to_vec1::<f32>()?,
                None => vec![0.0; n_out],
            };
            Ok(Layer { n_in, n_out, weight: l.weight().flatten_all()?.to_vec1::<f32>()?, bias })
        };
        let a = &self.actor;
        let build = || -> CResult<GaussianPolicy> {
            Ok(GaussianPolicy {
                trunk: vec![layer(&a.l1)?, layer(&a.l2)?],
                mean: layer(&a.mean)?,
                log_std: layer(&a.log_std)?,
                log_std_min: LOG_STD_MIN as f32,
                log_std_max: LOG_STD_MAX as f32,
                scale: a.scale.flatten_all()?.to_vec1::<f32>()?,
                bias: a.bias.flatten_all()?.to_vec1::<f32>()?,
            })
        };
        build().map_err(learner_error)
    }

    /// The deterministic action for one observation (evaluation).
    pub fn act(&self, obs: &[f32]) -> Result<Vec<f32>> {
        let o = Tensor::from_slice(obs, (1, self.obs_dim), &self.dev).map_err(learner_error)?;
        self.actor.act(&o).and_then(|a| a.flatten_all()?.to_vec1::<f32>()).map_err(learner_error)
    }

    fn update(&mut self, b: &Batch, rng: &mut Rng, policy_steps: u64, tau: f32, gamma: f32) -> CResult<(f32, f32)> {
        let n = b.rewards.len();
        let t = |v: &[f32], cols: usize| Tensor::from_slice(v, (n, cols), &self.dev);
        let (obs, act, next) = (t(&b.obs, self.obs_dim)?, t(&b.actions, self.act_dim)?, t(&b.next_obs, self.obs_dim)?);
        let rew = Tensor::from_slice(&b.rewards, n, &self.dev)?;
        let not_done = Tensor::from_slice(&b.not_done, n, &self.dev)?;
        let alpha = self.alpha()? as f64;
        // Critic targets, without gradients.
        let (next_a, next_logp) = self.actor.sample(&next, &self.noise(rng, n)?)?;
        let q_next = self.qf1_t.forward(&next, &next_a)?.minimum(&self.qf2_t.forward(&next, &next_a)?)?;
        let q_next = (q_next - (next_logp * alpha)?)?;
        let y = (rew + (not_done * q_next)?.affine(gamma as f64, 0.0)?)?.detach();
        let q1 = self.qf1.forward(&obs, &act)?;
        let q2 = self.qf2.forward(&obs, &act)?;
        let q_loss = ((q1 - &y)?.sqr()?.mean_all()? + (q2 - &y)?.sqr()?.mean_all()?)?;
        self.q_opt.backward_step(&q_loss)?;
        let mut actor_loss = 0.0;
        for _ in 0..policy_steps {
            let alpha = self.alpha()? as f64;
            let (pi, logp) = self.actor.sample(&obs, &self.noise(rng, n)?)?;
            let q_pi = self.qf1.forward(&obs, &pi)?.minimum(&self.qf2.forward(&obs, &pi)?)?;
            let loss = ((&logp * alpha)? - q_pi)?.mean_all()?;
            // Only the actor's variables are stepped; the critics' gradients are dropped.
            self.actor_opt.backward_step(&loss)?;
            actor_loss = loss.to_scalar::<f32>()?;
            if let Some(opt) = self.alpha_opt.as_mut() {
                let logp = logp.detach();
                let a_loss =
                    (self.log_alpha.as_tensor().exp()?.neg()?.broadcast_mul(&(logp + self.target_entropy)?)?).mean_all()?;
                opt.backward_step(&a_loss)?;
            }
        }
        copy_vars(&self.q_vars, &self.target_vars, tau)?;
        Ok((q_loss.to_scalar::<f32>()?, actor_loss))
    }

    /// Writes the networks and the temperature as safetensors files into `dir`.
    pub fn save(&self, dir: &Path, step: u64) -> Result<()> {
        let io = |e: std::io::Error| Error::Learner(format!("writing the checkpoint in {}: {e}", dir.display()));
        std::fs::create_dir_all(dir).map_err(io)?;
        self.actor_vars.save(dir.join("actor.safetensors")).map_err(learner_error)?;
        self.q_vars.save(dir.join("critics.safetensors")).map_err(learner_error)?;
        self.target_vars.save(dir.join("critic_targets.safetensors")).map_err(learner_error)?;
        self.log_alpha.as_tensor().save_safetensors("log_alpha", dir.join("log_alpha.safetensors")).map_err(learner_error)?;
        let meta = serde_json::json!({"algo": "sac", "step": step, "obs_dim": self.obs_dim, "act_dim": self.act_dim});
        std::fs::write(dir.join("metadata.json"), meta.to_string()).map_err(io)?;
        Ok(())
    }

    /// Loads a checkpoint written by [`save`](Self::save); returns its step count.
    pub fn load(&mut self, dir: &Path) -> Result<u64> {
        let text = std::fs::read_to_string(dir.join("metadata.json"))
            .map_err(|e| Error::Learner(format!("{} is not a SAC checkpoint: {e}", dir.display())))?;
        let meta: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Learner(e.to_string()))?;
        if meta["obs_dim"] != self.obs_dim || meta["act_dim"] != self.act_dim {
            return Err(Error::Learner(format!(
                "the checkpoint in {} is for {} observations and {} actions, this environment has {} and {}",
                dir.display(),
                meta["obs_dim"],
                meta["act_dim"],
                self.obs_dim,
                self.act_dim
            )));
        }
        self.actor_vars.load(dir.join("actor.safetensors")).map_err(learner_error)?;
        self.q_vars.load(dir.join("critics.safetensors")).map_err(learner_error)?;
        self.target_vars.load(dir.join("critic_targets.safetensors")).map_err(learner_error)?;
        let t = candle_core::safetensors::load(dir.join("log_alpha.safetensors"), &self.dev).map_err(learner_error)?;
        if let Some(v) = t.get("log_alpha") {
            self.log_alpha.set(v).map_err(learner_error)?;
        }
        Ok(meta["step"].as_u64().unwrap_or(0))
    }
}

/// `dst = tau * src + (1 - tau) * dst`, variable by variable (same names).
fn copy_vars(src: &VarMap, dst: &VarMap, tau: f32) -> CResult<()> {
    let s = src.data().lock().unwrap_or_else(|p| p.into_inner());
    let d = dst.data().lock().unwrap_or_else(|p| p.into_inner());
    for (name, dv) in d.iter() {
        if let Some(sv) = s.get(name) {
            let v = if tau >= 1.0 {
                sv.as_tensor().clone()
            } else {
                ((sv.as_tensor() * tau as f64)? + (dv.as_tensor() * (1.0 - tau as f64))?)?
            };
            dv.set(&v)?;
        }
    }
    Ok(())
}

struct Batch {
    obs: Vec<f32>,
    actions: Vec<f32>,
    rewards: Vec<f32>,
    next_obs: Vec<f32>,
    not_done: Vec<f32>,
}

/// A ring buffer of transitions in flat arrays.
struct Replay {
    cap: usize,
    len: usize,
    at: usize,
    obs_dim: usize,
    act_dim: usize,
    obs: Vec<f32>,
    actions: Vec<f32>,
    rewards: Vec<f32>,
    next_obs: Vec<f32>,
    not_done: Vec<f32>,
}

impl Replay {
    fn new(cap: usize, obs_dim: usize, act_dim: usize) -> Self {
        Replay {
            cap,
            len: 0,
            at: 0,
            obs_dim,
            act_dim,
            obs: vec![0.0; cap * obs_dim],
            actions: vec![0.0; cap * act_dim],
            rewards: vec![0.0; cap],
            next_obs: vec![0.0; cap * obs_dim],
            not_done: vec![0.0; cap],
        }
    }

    fn push(&mut self, obs: &[f32], action: &[f32], reward: f32, next_obs: &[f32], terminal: bool) {
        let (i, o, a) = (self.at, self.obs_dim, self.act_dim);
        self.obs[i * o..(i + 1) * o].copy_from_slice(obs);
        self.actions[i * a..(i + 1) * a].copy_from_slice(action);
        self.rewards[i] = reward;
        self.next_obs[i * o..(i + 1) * o].copy_from_slice(next_obs);
        self.not_done[i] = if terminal { 0.0 } else { 1.0 };
        self.at = (self.at + 1) % self.cap;
        self.len = (self.len + 1).min(self.cap);
    }

    fn sample(&self, n: usize, rng: &mut Rng) -> Batch {
        let (o, a) = (self.obs_dim, self.act_dim);
        let mut b = Batch {
            obs: Vec::with_capacity(n * o),
            actions: Vec::with_capacity(n * a),
            rewards: Vec::with_capacity(n),
            next_obs: Vec::with_capacity(n * o),
            not_done: Vec::with_capacity(n),
        };
        for _ in 0..n {
            let i = rng.below(self.len as u64) as usize;
            b.obs.extend_from_slice(&self.obs[i * o..(i + 1) * o]);
            b.actions.extend_from_slice(&self.actions[i * a..(i + 1) * a]);
            b.rewards.push(self.rewards[i]);
            b.next_obs.extend_from_slice(&self.next_obs[i * o..(i + 1) * o]);
            b.not_done.push(self.not_done[i]);
        }
        b
    }
}

fn box_bounds(space: &Space, env: &str) -> Result<(Vec<f32>, Vec<f32>)> {
    match space {
        Space::Box { low, high } if low.iter().chain(high).all(|v| v.is_finite()) => Ok((low.clone(), high.clone())),
        other => Err(Error::InvalidAction {
            env: env.to_string(),
            action: "SAC (continuous)".into(),
            expected: format!("a bounded Box action space, not {other:?}"),
        }),
    }
}

/// Trains a policy; `progress` gets `(env_steps, mean_return_last_100)` every 1,000 steps.
pub fn train(cfg: &SacConfig, mut progress: impl FnMut(&Progress)) -> Result<(Summary, Sac)> {
    super::learner_here(cfg.learner_num_gpus)?;
    let t0 = Instant::now();
    let mut env = make(&cfg.env_id)?;
    let (low, high) = box_bounds(&env.action_space(), &cfg.env_id)?;
    let obs_dim = env.observation_space().dim();
    let dev = cfg.device.open()?;
    let mut sac = Sac::new(cfg, obs_dim, &low, &high, dev).map_err(learner_error)?;
    let mut step = 0u64;
    if let Some(dir) = &cfg.resume_from {
        step = sac.load(dir)?;
    }
    let pendulum = (cfg.env_id == "Pendulum-v1").then_some(-200.0);
    let threshold = cfg.stop_at.or(env.reward_threshold()).or(pendulum).unwrap_or(f64::INFINITY);
    let mut rng = Rng::new(cfg.seed);
    let mut replay = Replay::new(cfg.buffer_size.min(cfg.total_env_steps.max(1) as usize), obs_dim, low.len());
    let mut recent = super::Recent::default();
    let (mut obs, _) = env.reset(Some(cfg.seed));
    let mut ep_ret = 0.0f64;
    let mut learner_s = 0.0;
    // A resumed learner acts with its policy from the start; a fresh one explores first.
    let random_until = if cfg.resume_from.is_some() { step } else { cfg.learning_starts };
    let learn_from = step + if cfg.resume_from.is_some() { cfg.batch_size as u64 } else { cfg.learning_starts };
    while step < cfg.total_env_steps {
        let action = if step < random_until {
            low.iter().zip(&high).map(|(l, h)| l + (h - l) * rng.next_f64() as f32).collect()
        } else {
            sac.explore(&obs, &mut rng).map_err(learner_error)?
        };
        let st = env.step(&Action::Continuous(action.clone()))?;
        step += 1;
        ep_ret += st.reward;
        replay.push(&obs, &action, st.reward as f32, &st.obs, st.terminated);
        obs = st.obs;
        if st.terminated || st.truncated {
            recent.push(ep_ret);
            ep_ret = 0.0;
            obs = env.reset(None).0;
        }
        if step > learn_from && replay.len >= cfg.batch_size {
            let batch = replay.sample(cfg.batch_size, &mut rng);
            let policy_steps = if step % cfg.policy_frequency == 0 { cfg.policy_frequency } else { 0 };
            let t = Instant::now();
            sac.update(&batch, &mut rng, policy_steps, cfg.tau, cfg.gamma).map_err(learner_error)?;
            learner_s += t.elapsed().as_secs_f64();
        }
        if let (Some(dir), true) = (&cfg.checkpoint_dir, cfg.checkpoint_every > 0 && step % cfg.checkpoint_every.max(1) == 0) {
            sac.save(dir, step)?;
        }
        if step % 1000 == 0 {
            progress(&Progress { env_steps: step, mean_return: recent.mean(), wall_s: t0.elapsed().as_secs_f64(), learner_s });
            if recent.solved(threshold) {
                break;
            }
        }
    }
    finish(cfg, sac, &recent, threshold, step, t0, learner_s)
}

/// The end of a run: the last checkpoint and the summary.
fn finish(
    cfg: &SacConfig,
    sac: Sac,
    recent: &super::Recent,
    threshold: f64,
    step: u64,
    t0: Instant,
    learner_s: f64,
) -> Result<(Summary, Sac)> {
    if let Some(dir) = &cfg.checkpoint_dir {
        sac.save(dir, step)?;
    }
    let mut summary = recent.summary(threshold, step, t0);
    summary.learner_s = learner_s;
    summary.learner_device = Some(crate::learner::device_name(&sac.dev));
    Ok((summary, sac))
}

/// Every variable of a learner (networks, targets, temperature) as plain data, to move a
/// learner's state out of a learner actor.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SacWeights {
    /// `(map/name, shape, values)`.
    pub tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
}

impl Sac {
    fn maps(&self) -> [(&'static str, &VarMap); 3] {
        [("actor", &self.actor_vars), ("q", &self.q_vars), ("target", &self.target_vars)]
    }

    /// The learner's variables as plain data.
    pub fn weights(&self) -> Result<SacWeights> {
        let mut tensors = Vec::new();
        let mut add = |name: String, t: &Tensor| -> CResult<()> {
            tensors.push((name, t.dims().to_vec(), t.flatten_all()?.to_vec1::<f32>()?));
            Ok(())
        };
        let mut all = || -> CResult<()> {
            for (prefix, map) in self.maps() {
                let data = map.data().lock().unwrap_or_else(|p| p.into_inner());
                for (name, var) in data.iter() {
                    add(format!("{prefix}/{name}"), var.as_tensor())?;
                }
            }
            add("log_alpha".into(), self.log_alpha.as_tensor())
        };
        all().map_err(learner_error)?;
        Ok(SacWeights { tensors })
    }

    /// Sets the variables to `w`'s (from [`weights`](Self::weights) of a learner of the same sizes).
    pub fn set_weights(&mut self, w: &SacWeights) -> Result<()> {
        let set = |var: &Var, shape: &[usize], values: &[f32]| -> CResult<()> {
            var.set(&Tensor::from_slice(values, shape, &self.dev)?)
        };
        for (name, shape, values) in &w.tensors {
            let done = if name == "log_alpha" {
                set(&self.log_alpha, shape, values).map(|_| true)
            } else {
                let (prefix, key) = name.split_once('/').unwrap_or(("", name));
                let map = self.maps().into_iter().find(|(p, _)| *p == prefix).map(|(_, m)| m);
                let data = map.map(|m| m.data().lock().unwrap_or_else(|p| p.into_inner()).get(key).cloned());
                match data.flatten() {
                    Some(var) => set(&var, shape, values).map(|_| true),
                    None => Ok(false),
                }
            };
            if !done.map_err(learner_error)? {
                return Err(Error::Learner(format!("these weights hold `{name}`, which this learner does not have")));
            }
        }
        Ok(())
    }
}

/// What a round of rollouts hands back to the loop driving the runners.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SacRound {
    /// The policy for the next round (`None` while the warm-up's random actions go on).
    pub policy: Option<GaussianPolicy>,
    pub episode_returns: Vec<f64>,
    pub env_steps: u64,
    pub learner_s: f64,
}

/// SAC's side of a run with env runners: the learner, the replay buffer and the schedule of
/// gradient steps (one per collected env step once learning starts).
pub struct SacLearner {
    cfg: SacConfig,
    sac: Sac,
    replay: Replay,
    rng: Rng,
    /// Env steps collected (from the checkpoint's step on a resume).
    step: u64,
    learned_at: u64,
    random_until: u64,
}

impl SacLearner {
    pub fn new(cfg: &SacConfig) -> Result<Self> {
        let env = make(&cfg.env_id)?;
        let (low, high) = box_bounds(&env.action_space(), &cfg.env_id)?;
        let obs_dim = env.observation_space().dim();
        let mut sac = Sac::new(cfg, obs_dim, &low, &high, cfg.device.open()?).map_err(learner_error)?;
        let mut step = 0u64;
        if let Some(dir) = &cfg.resume_from {
            step = sac.load(dir)?;
        }
        // A resumed learner acts with its policy from the start; a fresh one explores first.
        let random_until = if cfg.resume_from.is_some() { step } else { cfg.learning_starts };
        let learned_at = step + if cfg.resume_from.is_some() { cfg.batch_size as u64 } else { cfg.learning_starts };
        let replay = Replay::new(cfg.buffer_size.min(cfg.total_env_steps.max(1) as usize), obs_dim, low.len());
        Ok(SacLearner { cfg: cfg.clone(), sac, replay, rng: Rng::new(cfg.seed), step, learned_at, random_until })
    }

    /// The policy runners step with now (`None`: random actions, the warm-up).
    pub fn behaviour(&self) -> Result<Option<GaussianPolicy>> {
        if self.step < self.random_until {
            Ok(None)
        } else {
            self.sac.policy().map(Some)
        }
    }

    /// Adds the rollouts to the replay buffer and takes the gradient steps now due.
    pub fn ingest(&mut self, rollouts: &[Rollout]) -> Result<SacRound> {
        let mut round = SacRound { policy: None, episode_returns: Vec::new(), env_steps: 0, learner_s: 0.0 };
        for r in rollouts {
            round.episode_returns.extend(&r.episode_returns);
            for k in 0..r.continuous_actions.len() {
                self.replay.push(&r.obs[k], &r.continuous_actions[k], r.rewards[k], &r.next_obs[k], r.terminated[k]);
            }
            round.env_steps += r.continuous_actions.len() as u64;
        }
        self.step += round.env_steps;
        let t = Instant::now();
        let cfg = &self.cfg;
        while self.learned_at < self.step && self.replay.len >= cfg.batch_size {
            self.learned_at += 1;
            let batch = self.replay.sample(cfg.batch_size, &mut self.rng);
            let policy_steps = if self.learned_at % cfg.policy_frequency == 0 { cfg.policy_frequency } else { 0 };
            self.sac.update(&batch, &mut self.rng, policy_steps, cfg.tau, cfg.gamma).map_err(learner_error)?;
        }
        round.learner_s = t.elapsed().as_secs_f64();
        round.policy = self.behaviour()?;
        Ok(round)
    }
}

/// A [`SacLearner`] (with its replay buffer) in a worker process of its own, spawned with
/// `learner_num_gpus`, so on the GPU share the scheduler assigns; it reads the runners'
/// rollouts from the object store.
pub struct SacLearnerActor {
    learner: Mutex<SacLearner>,
}

#[flare_macros::actor(crate = ::flare_core)]
impl SacLearnerActor {
    fn new(cfg: SacConfig) -> Result<Self, String> {
        Ok(SacLearnerActor { learner: Mutex::new(SacLearner::new(&cfg).map_err(|e| e.to_string())?) })
    }

    /// The step it starts from and the first round's policy.
    fn start(&self) -> Result<(u64, Option<GaussianPolicy>), String> {
        let l = self.learner.lock().unwrap_or_else(|p| p.into_inner());
        Ok((l.step, l.behaviour().map_err(|e| e.to_string())?))
    }

    fn ingest(&self, rollouts: Vec<ObjectRef<Rollout>>) -> Result<SacRound, String> {
        let rollouts = flare_core::get_all(&rollouts).map_err(|e| e.to_string())?;
        self.learner.lock().unwrap_or_else(|p| p.into_inner()).ingest(&rollouts).map_err(|e| e.to_string())
    }

    fn weights(&self) -> Result<SacWeights, String> {
        self.learner.lock().unwrap_or_else(|p| p.into_inner()).sac.weights().map_err(|e| e.to_string())
    }

    fn device(&self) -> String {
        crate::learner::device_name(&self.learner.lock().unwrap_or_else(|p| p.into_inner()).sac.dev)
    }
}

/// Trains with `num_runners` env-runner actors of `cfg.num_envs_per_runner` environments each
/// (up to three restarts), stepping with the policy they get through the object store every
/// round of `cfg.steps_per_round` steps per environment (random actions until
/// `learning_starts`); the learner takes one gradient step per collected env step once
/// learning starts, as the single-process loop does, here or (`learner_num_gpus > 0`) in a
/// learner actor on the GPU the scheduler assigns. Needs a running Flare runtime.
pub fn train_distributed(cfg: &SacConfig, num_runners: usize, mut progress: impl FnMut(&Progress)) -> Result<(Summary, Sac)> {
    let runtime = |e: flare_core::Error| Error::Runtime(e.to_string());
    let t0 = Instant::now();
    let env = make(&cfg.env_id)?;
    let pendulum = (cfg.env_id == "Pendulum-v1").then_some(-200.0);
    let threshold = cfg.stop_at.or(env.reward_threshold()).or(pendulum).unwrap_or(f64::INFINITY);
    enum Learner {
        Here(Box<SacLearner>),
        Actor(flare_core::ActorHandle<SacLearnerActor>),
    }
    let mut learner = if cfg.learner_num_gpus > 0.0 {
        let spawn = SacLearnerActor::remote(cfg.clone()).num_gpus(cfg.learner_num_gpus).num_cpus(0.0).spawn();
        Learner::Actor(spawn.map_err(runtime)?)
    } else {
        Learner::Here(Box::new(SacLearner::new(cfg)?))
    };
    let (mut step, mut policy) = match &learner {
        Learner::Here(l) => (l.step, l.behaviour()?),
        Learner::Actor(a) => a.start().get().map_err(runtime)?,
    };
    let runners = crate::runner::spawn_runners(&cfg.env_id, cfg.num_envs_per_runner.max(1), cfg.seed, num_runners.max(1))?;
    let mut recent = super::Recent::default();
    let mut reported_at = step;
    let mut learner_s = 0.0;
    while step < cfg.total_env_steps {
        let weights = flare_core::put(&policy).map_err(runtime)?;
        let refs: Vec<_> = runners.iter().map(|r| r.sample_gaussian(&weights, cfg.steps_per_round.max(1) as u32)).collect();
        let round = match &mut learner {
            Learner::Here(l) => l.ingest(&flare_core::get_all(&refs).map_err(runtime)?)?,
            Learner::Actor(a) => a.ingest(refs).get().map_err(runtime)?,
        };
        round.episode_returns.iter().for_each(|ret| recent.push(*ret));
        step += round.env_steps;
        learner_s += round.learner_s;
        policy = round.policy;
        if step >= reported_at + 1000 {
            reported_at = step - step % 1000;
            progress(&Progress { env_steps: step, mean_return: recent.mean(), wall_s: t0.elapsed().as_secs_f64(), learner_s });
            if recent.solved(threshold) {
                break;
            }
        }
    }
    let (sac, device) = match learner {
        Learner::Here(l) => {
            let device = crate::learner::device_name(&l.sac.dev);
            (l.sac, device)
        }
        Learner::Actor(a) => {
            // The learner's state comes here, so the caller can act, evaluate and save as
            // after a run in this process.
            let w = a.weights().get().map_err(runtime)?;
            let (low, high) = box_bounds(&env.action_space(), &cfg.env_id)?;
            let dev = cfg.device.open()?;
            let mut sac = Sac::new(cfg, env.observation_space().dim(), &low, &high, dev).map_err(learner_error)?;
            sac.set_weights(&w)?;
            (sac, a.device().get().map_err(runtime)?)
        }
    };
    let (mut summary, sac) = finish(cfg, sac, &recent, threshold, step, t0, learner_s)?;
    summary.learner_device = Some(device);
    Ok((summary, sac))
}

/// A learner for `env_id` with the weights of the checkpoint in `dir` (to act or evaluate).
pub fn load(env_id: &str, dir: &Path, hidden: usize) -> Result<Sac> {
    let env = make(env_id)?;
    let (low, high) = box_bounds(&env.action_space(), env_id)?;
    let cfg = SacConfig { hidden, ..Default::default() };
    let dev = LearnerDevice::Auto.open()?;
    let mut sac = Sac::new(&cfg, env.observation_space().dim(), &low, &high, dev).map_err(learner_error)?;
    sac.load(dir)?;
    Ok(sac)
}

/// Mean return of `episodes` deterministic episodes (seeds `seed`, `seed + 1`, ...).
pub fn evaluate(sac: &Sac, env_id: &str, episodes: u32, seed: u64) -> Result<f64> {
    let mut env = make(env_id)?;
    let mut total = 0.0;
    for e in 0..episodes {
        let (mut obs, _) = env.reset(Some(seed + e as u64));
        loop {
            let st = env.step(&Action::Continuous(sac.act(&obs)?))?;
            total += st.reward;
            obs = st.obs;
            if st.terminated || st.truncated {
                break;
            }
        }
    }
    Ok(total / episodes.max(1) as f64)
}
