//! PPO for discrete actions (CleanRL's `ppo.py`, on Flare's environments): GAE, clipped
//! surrogate, clipped value loss, entropy bonus, minibatch epochs, advantage normalization,
//! global-norm gradient clipping, linear learning-rate annealing.
//!
//! The learner is candle on the GPU its process has (see [`crate::learner`]): in this process,
//! or with `learner_num_gpus > 0` in a learner actor of its own that the scheduler gives that
//! share of a GPU, as RLlib's remote learners are. Env runners sample on CPUs with the policy's
//! [`Mlp`] copy, which goes out through the object store after every update.

use super::{Progress, Summary};
use crate::env::make;
use crate::error::{Error, Result};
use crate::learner::{device_name, learner_error, rows, CResult, ClippedAdam, LearnerDevice, Net};
use crate::nn::Mlp;
use crate::rng::Rng;
use crate::runner::{EnvRunner, Rollout, Sampler};
use candle_core::{Device, Tensor, D};
use flare_core::{ActorHandle, ObjectRef};
use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use std::time::Instant;

/// Hyperparameters; the defaults are CleanRL's for CartPole.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PpoConfig {
    pub env_id: String,
    pub seed: u64,
    pub total_env_steps: u64,
    pub num_envs: usize,
    pub num_steps: usize,
    pub learning_rate: f32,
    pub anneal_lr: bool,
    pub gamma: f64,
    pub gae_lambda: f64,
    pub num_minibatches: usize,
    pub update_epochs: usize,
    pub clip_coef: f32,
    pub clip_vloss: bool,
    pub ent_coef: f32,
    pub vf_coef: f32,
    pub max_grad_norm: f32,
    /// Normalize advantages per minibatch.
    pub norm_adv: bool,
    pub hidden: usize,
    /// Stop early once solved.
    pub stop_when_solved: bool,
    /// Write `model.safetensors` (actor and critic) and `metadata.json` here at the end.
    pub checkpoint_dir: Option<std::path::PathBuf>,
    /// Start from such a checkpoint's networks and step count (the optimizer starts afresh).
    pub resume_from: Option<std::path::PathBuf>,
    /// Where the learner runs in its process (the default: its GPU if it has one, else the CPU).
    pub device: LearnerDevice,
    /// With env runners: GPUs (a fraction packs learners) for a learner actor of its own; 0
    /// keeps the learner in the driver.
    pub learner_num_gpus: f64,
}

impl Default for PpoConfig {
    fn default() -> Self {
        PpoConfig {
            env_id: "CartPole-v1".into(),
            seed: 1,
            total_env_steps: 500_000,
            num_envs: 4,
            num_steps: 128,
            learning_rate: 2.5e-4,
            anneal_lr: true,
            gamma: 0.99,
            gae_lambda: 0.95,
            num_minibatches: 4,
            update_epochs: 4,
            clip_coef: 0.2,
            clip_vloss: true,
            ent_coef: 0.01,
            vf_coef: 0.5,
            max_grad_norm: 0.5,
            norm_adv: true,
            hidden: 64,
            stop_when_solved: true,
            checkpoint_dir: None,
            resume_from: None,
            device: LearnerDevice::Auto,
            learner_num_gpus: 0.0,
        }
    }
}

/// One minibatch on the learner's device.
pub(crate) struct Minibatch {
    pub obs: Tensor,
    /// `u32`, one per row.
    pub actions: Tensor,
    pub old_logp: Tensor,
    pub old_values: Tensor,
    pub advantages: Tensor,
    pub returns: Tensor,
}

/// CleanRL's PPO loss: `pg_loss - ent_coef * entropy + vf_coef * v_loss`, with the clipped
/// surrogate, per-minibatch advantage normalization and the clipped value loss.
pub(crate) fn loss(actor: &Net, critic: &Net, mb: &Minibatch, cfg: &PpoConfig) -> CResult<Tensor> {
    let log_probs = candle_nn::ops::log_softmax(&actor.forward(&mb.obs)?, D::Minus1)?;
    let logp = log_probs.gather(&mb.actions.unsqueeze(1)?, 1)?.squeeze(1)?;
    let ratio = (logp - &mb.old_logp)?.exp()?;
    let adv = if cfg.norm_adv {
        let n = mb.advantages.dim(0)?;
        let centered = mb.advantages.broadcast_sub(&mb.advantages.mean_all()?)?;
        // The unbiased standard deviation, as torch's `std()`.
        let std = (centered.sqr()?.sum_all()? / (n.saturating_sub(1).max(1)) as f64)?.sqrt()?;
        centered.broadcast_div(&(std + 1e-8)?)?
    } else {
        mb.advantages.clone()
    };
    let (lo, hi) = (1.0 - cfg.clip_coef, 1.0 + cfg.clip_coef);
    let pg1 = (adv.neg()? * &ratio)?;
    let pg2 = (adv.neg()? * ratio.clamp(lo, hi)?)?;
    let pg_loss = pg1.maximum(&pg2)?.mean_all()?;
    let entropy = (log_probs.exp()? * &log_probs)?.sum(1)?.neg()?.mean_all()?;
    let v = critic.forward(&mb.obs)?.squeeze(1)?;
    let unclipped = (&v - &mb.returns)?.sqr()?;
    let v_loss = if cfg.clip_vloss {
        let c = cfg.clip_coef;
        let v_clipped = (&mb.old_values + (&v - &mb.old_values)?.clamp(-c, c)?)?;
        let clipped = (v_clipped - &mb.returns)?.sqr()?;
        (unclipped.maximum(&clipped)?.mean_all()? * 0.5)?
    } else {
        (unclipped.mean_all()? * 0.5)?
    };
    (pg_loss - (entropy * cfg.ent_coef as f64)?)? + (v_loss * cfg.vf_coef as f64)?
}

/// What one update hands back to the loop driving it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UpdateOutput {
    /// The updated policy, for the next rollouts.
    pub policy: Mlp,
    /// Returns of the episodes that ended in the rollouts learned from.
    pub episode_returns: Vec<f64>,
    pub env_steps: u64,
    /// Seconds this update took in the learner.
    pub learner_s: f64,
}

/// The actor-critic learner: both networks as candle variables, one Adam over both (CleanRL's
/// single optimizer with one clip over all parameters), the minibatch shuffler.
pub struct PpoLearner {
    cfg: PpoConfig,
    dev: Device,
    actor: Net,
    critic: Net,
    opt: ClippedAdam,
    rng: Rng,
}

impl PpoLearner {
    pub fn new(cfg: &PpoConfig, actor: &Mlp, critic: &Mlp) -> Result<Self> {
        let dev = cfg.device.open()?;
        let build = || -> CResult<(Net, Net, ClippedAdam)> {
            let (a, c) = (Net::from_mlp(actor, &dev)?, Net::from_mlp(critic, &dev)?);
            let vars = a.vars().into_iter().chain(c.vars()).collect();
            Ok((a, c, ClippedAdam::new(vars, cfg.learning_rate as f64, 1e-5, cfg.max_grad_norm)?))
        };
        let (actor, critic, opt) = build().map_err(learner_error)?;
        Ok(PpoLearner { cfg: cfg.clone(), dev, actor, critic, opt, rng: Rng::new(cfg.seed ^ 0x1EA4_7E55) })
    }

    /// `cpu` or `cuda:N`.
    pub fn device(&self) -> String {
        device_name(&self.dev)
    }

    /// Actor and critic as they are now.
    pub fn networks(&self) -> Result<(Mlp, Mlp)> {
        Ok((self.actor.to_mlp().map_err(learner_error)?, self.critic.to_mlp().map_err(learner_error)?))
    }

    /// GAE over `rollouts`, then `update_epochs` epochs of minibatch steps at learning rate `lr`.
    pub fn update(&mut self, rollouts: &[Rollout], lr: f32) -> Result<UpdateOutput> {
        let t0 = Instant::now();
        self.update_networks(rollouts, lr).map_err(learner_error)?;
        Ok(UpdateOutput {
            policy: self.actor.to_mlp().map_err(learner_error)?,
            episode_returns: rollouts.iter().flat_map(|r| r.episode_returns.iter().copied()).collect(),
            env_steps: rollouts.iter().map(|r| (r.num_envs * r.num_steps) as u64).sum(),
            learner_s: t0.elapsed().as_secs_f64(),
        })
    }

    fn values(&self, obs: &[Vec<f32>]) -> CResult<Vec<f32>> {
        self.critic.forward(&rows(obs, &self.dev)?)?.squeeze(1)?.to_vec1::<f32>()
    }

    fn update_networks(&mut self, rollouts: &[Rollout], lr: f32) -> CResult<()> {
        let cfg = &self.cfg;
        self.opt.set_lr(lr as f64);
        let (mut b_obs, mut b_act, mut b_logp, mut b_val, mut adv) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for r in rollouts {
            // Advantages per env sequence (GAE), from one critic pass over the rollout.
            let values = self.values(&r.obs)?;
            let next_values = self.values(&r.last_obs)?;
            let mut a = vec![0.0f32; values.len()];
            for (i, next_value) in next_values.iter().enumerate() {
                let mut last = 0.0f64;
                for t in (0..r.num_steps).rev() {
                    let k = t * r.num_envs + i;
                    let nonterminal = if r.dones[k] { 0.0 } else { 1.0 };
                    let next_v = if t + 1 == r.num_steps { *next_value as f64 } else { values[k + r.num_envs] as f64 };
                    let delta = r.rewards[k] as f64 + cfg.gamma * next_v * nonterminal - values[k] as f64;
                    last = delta + cfg.gamma * cfg.gae_lambda * nonterminal * last;
                    a[k] = last as f32;
                }
            }
            b_obs.extend(r.obs.iter().flatten().copied());
            b_act.extend(r.actions.iter().copied());
            b_logp.extend(r.logp.iter().copied());
            b_val.extend(values);
            adv.extend(a);
        }
        let batch = b_act.len();
        if batch == 0 {
            return Ok(());
        }
        let returns: Vec<f32> = adv.iter().zip(&b_val).map(|(a, v)| a + v).collect();
        let dev = &self.dev;
        let obs = Tensor::from_vec(b_obs, (batch, self.actor.inputs()), dev)?;
        let actions = Tensor::from_vec(b_act, batch, dev)?;
        let old_logp = Tensor::from_vec(b_logp, batch, dev)?;
        let old_values = Tensor::from_vec(b_val, batch, dev)?;
        let advantages = Tensor::from_vec(adv, batch, dev)?;
        let returns = Tensor::from_vec(returns, batch, dev)?;

        let mb = (batch / cfg.num_minibatches).max(1);
        let mut idx: Vec<u32> = (0..batch as u32).collect();
        for _ in 0..cfg.update_epochs {
            for i in (1..idx.len()).rev() {
                let j = self.rng.below(i as u64 + 1) as usize;
                idx.swap(i, j);
            }
            for chunk in idx.chunks(mb) {
                let at = Tensor::from_slice(chunk, chunk.len(), dev)?;
                let m = Minibatch {
                    obs: obs.index_select(&at, 0)?,
                    actions: actions.index_select(&at, 0)?,
                    old_logp: old_logp.index_select(&at, 0)?,
                    old_values: old_values.index_select(&at, 0)?,
                    advantages: advantages.index_select(&at, 0)?,
                    returns: returns.index_select(&at, 0)?,
                };
                let l = loss(&self.actor, &self.critic, &m, cfg)?;
                self.opt.step(&l)?;
            }
        }
        Ok(())
    }
}

/// A [`PpoLearner`] in a worker process of its own (spawned with the config's
/// `learner_num_gpus`, so on the GPU the scheduler assigns): it reads the runners' rollouts from
/// the object store and answers with the updated policy.
pub struct PpoLearnerActor {
    learner: Mutex<PpoLearner>,
}

#[flare_macros::actor(crate = ::flare_core)]
impl PpoLearnerActor {
    fn new(cfg: PpoConfig, actor: Mlp, critic: Mlp) -> Result<Self, String> {
        Ok(PpoLearnerActor { learner: Mutex::new(PpoLearner::new(&cfg, &actor, &critic).map_err(|e| e.to_string())?) })
    }

    fn update(&self, rollouts: Vec<ObjectRef<Rollout>>, lr: f32) -> Result<UpdateOutput, String> {
        let rollouts = flare_core::get_all(&rollouts).map_err(|e| e.to_string())?;
        self.learner.lock().unwrap_or_else(|p| p.into_inner()).update(&rollouts, lr).map_err(|e| e.to_string())
    }

    fn networks(&self) -> Result<(Mlp, Mlp), String> {
        self.learner.lock().unwrap_or_else(|p| p.into_inner()).networks().map_err(|e| e.to_string())
    }

    fn device(&self) -> String {
        self.learner.lock().unwrap_or_else(|p| p.into_inner()).device()
    }
}

/// Where rollouts come from: environments in this process, or env-runner actors.
pub(crate) enum Source {
    Local(Sampler),
    Runners(Vec<ActorHandle<EnvRunner>>),
}

impl Source {
    pub(crate) fn local(cfg: &PpoConfig) -> Result<Source> {
        super::learner_here(cfg.learner_num_gpus)?;
        Ok(Source::Local(Sampler::new(&cfg.env_id, cfg.num_envs, cfg.seed)?))
    }
}

/// Where the learner is.
enum Learner {
    Here(Box<PpoLearner>),
    Actor(ActorHandle<PpoLearnerActor>),
}

impl Learner {
    fn networks(&self) -> Result<(Mlp, Mlp)> {
        match self {
            Learner::Here(l) => l.networks(),
            Learner::Actor(a) => a.networks().get().map_err(runtime),
        }
    }

    fn device(&self) -> Result<String> {
        match self {
            Learner::Here(l) => Ok(l.device()),
            Learner::Actor(a) => a.device().get().map_err(runtime),
        }
    }
}

/// One round: rollouts with `policy` from `source`, one update of `learner`.
fn round(source: &mut Source, learner: &mut Learner, policy: &Mlp, num_steps: usize, lr: f32) -> Result<UpdateOutput> {
    match (source, learner) {
        (Source::Local(s), Learner::Here(l)) => l.update(&[s.rollout(policy, num_steps)?], lr),
        (Source::Runners(rs), learner) => {
            // One put per iteration; every runner's call takes the ref and reads it there.
            let weights = flare_core::put(policy).map_err(runtime)?;
            let refs: Vec<_> = rs.iter().map(|r| r.sample(&weights, num_steps as u32)).collect();
            match learner {
                Learner::Here(l) => l.update(&flare_core::get_all(&refs).map_err(runtime)?, lr),
                // The rollouts go from the runners to the learner's process, not through here.
                Learner::Actor(a) => a.update(refs, lr).get().map_err(runtime),
            }
        }
        (Source::Local(_), Learner::Actor(_)) => Err(Error::Learner("a learner actor needs env-runner actors".into())),
    }
}

fn runtime(e: flare_core::Error) -> Error {
    Error::Runtime(e.to_string())
}

/// Trains a policy in this process; `progress` gets a [`Progress`] after each update.
pub fn train(cfg: &PpoConfig, progress: impl FnMut(&Progress)) -> Result<(Summary, Mlp)> {
    run(cfg, Source::local(cfg)?, progress)
}

/// Trains with `num_runners` env-runner actors (each with `cfg.num_envs` environments and up to
/// three restarts) sampling in their own processes, and the learner in a GPU actor of its own
/// when `cfg.learner_num_gpus > 0`; needs a running Flare runtime.
pub fn train_distributed(cfg: &PpoConfig, num_runners: usize, progress: impl FnMut(&Progress)) -> Result<(Summary, Mlp)> {
    let runners = crate::runner::spawn_runners(&cfg.env_id, cfg.num_envs, cfg.seed, num_runners)?;
    run(cfg, Source::Runners(runners), progress)
}

pub(crate) fn run(cfg: &PpoConfig, mut source: Source, mut progress: impl FnMut(&Progress)) -> Result<(Summary, Mlp)> {
    let t0 = Instant::now();
    let probe = make(&cfg.env_id)?;
    let n_actions = super::discrete_actions(&*probe, "PPO")?;
    let obs_dim = probe.observation_space().dim();
    let threshold = probe.reward_threshold().unwrap_or(f64::INFINITY);
    let mut rng = Rng::new(cfg.seed);
    let g = 2f32.sqrt();
    let mut actor = Mlp::new(&[obs_dim, cfg.hidden, cfg.hidden, n_actions], g, 0.01, &mut rng);
    let mut critic = Mlp::new(&[obs_dim, cfg.hidden, cfg.hidden, 1], g, 1.0, &mut rng);
    let mut recent = super::Recent::default();
    let per_source = match &source {
        Source::Local(_) => 1,
        Source::Runners(r) => r.len(),
    };
    let batch_size = cfg.num_envs * cfg.num_steps * per_source;
    let updates = (cfg.total_env_steps as usize).div_ceil(batch_size);
    let mut env_steps = 0u64;
    if let Some(dir) = &cfg.resume_from {
        let (a, c, step) = load_checkpoint(dir)?;
        if a.sizes != actor.sizes || c.sizes != critic.sizes {
            return Err(crate::Error::Learner(format!(
                "the checkpoint in {} has networks {:?}/{:?}, this run builds {:?}/{:?}",
                dir.display(),
                a.sizes,
                c.sizes,
                actor.sizes,
                critic.sizes
            )));
        }
        (actor, critic, env_steps) = (a, c, step);
    }
    let mut learner = if cfg.learner_num_gpus > 0.0 {
        let handle = PpoLearnerActor::remote(cfg.clone(), actor.clone(), critic.clone())
            .num_gpus(cfg.learner_num_gpus)
            .num_cpus(0.0)
            .spawn()
            .map_err(runtime)?;
        Learner::Actor(handle)
    } else {
        Learner::Here(Box::new(PpoLearner::new(cfg, &actor, &critic)?))
    };
    let device = learner.device()?;
    let first = (env_steps as usize / batch_size).min(updates);
    let mut policy = actor;
    let mut learner_s = 0.0;
    for update in first..updates {
        let lr = if cfg.anneal_lr { (1.0 - update as f32 / updates as f32) * cfg.learning_rate } else { cfg.learning_rate };
        let out = round(&mut source, &mut learner, &policy, cfg.num_steps, lr)?;
        out.episode_returns.iter().for_each(|ret| recent.push(*ret));
        env_steps += out.env_steps;
        learner_s += out.learner_s;
        policy = out.policy;
        progress(&Progress { env_steps, mean_return: recent.mean(), wall_s: t0.elapsed().as_secs_f64(), learner_s });
        if cfg.stop_when_solved && recent.solved(threshold) {
            break;
        }
    }
    if let Some(dir) = &cfg.checkpoint_dir {
        let (a, c) = learner.networks()?;
        save_checkpoint(dir, &a, &c, env_steps)?;
    }
    let mut summary = recent.summary(threshold, env_steps, t0);
    summary.learner_s = learner_s;
    summary.learner_device = Some(device);
    Ok((summary, policy))
}

/// Writes a PPO checkpoint: `model.safetensors` (`actor`, `critic`) and `metadata.json`.
pub fn save_checkpoint(dir: &std::path::Path, actor: &Mlp, critic: &Mlp, env_steps: u64) -> Result<()> {
    super::save_networks(dir, "ppo", &[("actor", actor), ("critic", critic)], env_steps)
}

/// Reads a checkpoint written by [`save_checkpoint`]: actor, critic and step count.
pub fn load_checkpoint(dir: &std::path::Path) -> Result<(Mlp, Mlp, u64)> {
    let (nets, step) = super::load_networks(dir, "ppo", &["actor", "critic"])?;
    let [actor, critic]: [Mlp; 2] =
        nets.try_into().map_err(|_| crate::Error::Learner("a checkpoint with other networks".into()))?;
    Ok((actor, critic, step))
}

/// Mean return of `episodes` episodes acting greedily (the most likely action), seeds
/// `seed`, `seed + 1`, ...
pub fn evaluate(actor: &Mlp, env_id: &str, episodes: u32, seed: u64) -> Result<f64> {
    let mut env = make(env_id)?;
    let mut total = 0.0;
    for e in 0..episodes {
        let (mut obs, _) = env.reset(Some(seed + e as u64));
        loop {
            let logits = actor.forward(&obs);
            let a = logits.iter().enumerate().max_by(|x, y| x.1.total_cmp(y.1)).map(|(i, _)| i).unwrap_or(0);
            let st = env.step(&crate::env::Action::Discrete(a as i64))?;
            total += st.reward;
            obs = st.obs;
            if st.terminated || st.truncated {
                break;
            }
        }
    }
    Ok(total / episodes.max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loss written out per sample in f64 from the networks' plain forward passes, as
    /// CleanRL's `ppo.py` states it.
    fn loss_by_hand(actor: &Mlp, critic: &Mlp, s: &Samples, cfg: &PpoConfig) -> f64 {
        let n = s.obs.len() as f64;
        let mean = s.adv.iter().sum::<f64>() / n;
        let std = (s.adv.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
        let c = cfg.clip_coef as f64;
        let (mut pg, mut ent, mut vl) = (0.0, 0.0, 0.0);
        for k in 0..s.obs.len() {
            let logits: Vec<f64> = actor.forward(&s.obs[k]).iter().map(|v| *v as f64).collect();
            let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + logits.iter().map(|l| (l - m).exp()).sum::<f64>().ln();
            let logp: Vec<f64> = logits.iter().map(|l| l - lse).collect();
            let ratio = (logp[s.act[k] as usize] - s.old_logp[k]).exp();
            let a = (s.adv[k] - mean) / (std + 1e-8);
            pg += (-a * ratio).max(-a * ratio.clamp(1.0 - c, 1.0 + c));
            ent -= logp.iter().map(|lp| lp.exp() * lp).sum::<f64>();
            let v = critic.forward(&s.obs[k])[0] as f64;
            let vc = s.old_v[k] + (v - s.old_v[k]).clamp(-c, c);
            vl += (v - s.ret[k]).powi(2).max((vc - s.ret[k]).powi(2));
        }
        pg / n - cfg.ent_coef as f64 * ent / n + cfg.vf_coef as f64 * 0.5 * vl / n
    }

    struct Samples {
        obs: Vec<Vec<f32>>,
        act: Vec<u32>,
        old_logp: Vec<f64>,
        old_v: Vec<f64>,
        adv: Vec<f64>,
        ret: Vec<f64>,
    }

    #[test]
    fn the_loss_is_cleanrls() {
        let mut rng = Rng::new(11);
        let actor = Mlp::new(&[4, 16, 16, 3], 2f32.sqrt(), 1.0, &mut rng);
        let critic = Mlp::new(&[4, 16, 16, 1], 2f32.sqrt(), 1.0, &mut rng);
        let cfg = PpoConfig::default();
        let n = 64;
        let mut u = |lo: f64, hi: f64| rng.uniform(lo, hi);
        let obs: Vec<Vec<f32>> = (0..n).map(|_| (0..4).map(|_| u(-2.0, 2.0) as f32).collect()).collect();
        let act: Vec<u32> = (0..n).map(|_| u(0.0, 2.999) as u32).collect();
        // Old log-probabilities and values away from the current ones, so that both clips bite
        // on some samples and not on others.
        let old_logp: Vec<f64> = (0..n).map(|_| (1.0f64 / 3.0).ln() + u(-0.5, 0.5)).collect();
        let old_v: Vec<f64> = (0..n).map(|_| u(-0.6, 0.6)).collect();
        let adv: Vec<f64> = (0..n).map(|_| u(-3.0, 3.0)).collect();
        let ret: Vec<f64> = (0..n).map(|_| u(-2.0, 2.0)).collect();
        let s = Samples { obs, act, old_logp, old_v, adv, ret };
        let want = loss_by_hand(&actor, &critic, &s, &cfg);

        let dev = Device::Cpu;
        let f = |v: &[f64]| Tensor::from_vec(v.iter().map(|x| *x as f32).collect::<Vec<_>>(), v.len(), &dev).unwrap();
        let mb = Minibatch {
            obs: rows(&s.obs, &dev).unwrap(),
            actions: Tensor::from_slice(&s.act, n, &dev).unwrap(),
            old_logp: f(&s.old_logp),
            old_values: f(&s.old_v),
            advantages: f(&s.adv),
            returns: f(&s.ret),
        };
        let (a, c) = (Net::from_mlp(&actor, &dev).unwrap(), Net::from_mlp(&critic, &dev).unwrap());
        let got = loss(&a, &c, &mb, &cfg).unwrap().to_scalar::<f32>().unwrap() as f64;
        assert!((got - want).abs() < 1e-5 * want.abs().max(1.0), "candle {got} vs by hand {want}");
    }

    #[test]
    fn an_update_moves_both_networks_and_hands_out_the_policy() {
        let mut rng = Rng::new(5);
        let cfg = PpoConfig { learning_rate: 1e-2, ..Default::default() };
        let actor = Mlp::new(&[4, 8, 8, 2], 2f32.sqrt(), 0.01, &mut rng);
        let critic = Mlp::new(&[4, 8, 8, 1], 2f32.sqrt(), 1.0, &mut rng);
        let mut sampler = Sampler::new("CartPole-v1", 2, 3).unwrap();
        let rollout = sampler.rollout(&actor, 64).unwrap();
        let mut learner = PpoLearner::new(&PpoConfig { update_epochs: 1, num_minibatches: 1, ..cfg }, &actor, &critic).unwrap();
        let before = learner.networks().unwrap();
        let out = learner.update(&[rollout], 1e-2).unwrap();
        let after = learner.networks().unwrap();
        assert_eq!(out.env_steps, 128);
        assert_eq!(out.policy.params, after.0.params);
        assert_ne!(before.0.params, after.0.params, "the actor moved");
        assert_ne!(before.1.params, after.1.params, "the critic moved");
        assert_eq!(learner.device(), "cpu");
    }
}
