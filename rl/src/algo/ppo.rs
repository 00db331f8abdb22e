//! PPO for discrete actions (CleanRL's `ppo.py`, on Flare's environments and a hand-written MLP):
//! GAE, clipped surrogate, clipped value loss, entropy bonus, minibatch epochs, advantage
//! normalization, global-norm gradient clipping, linear learning-rate annealing.

use super::Summary;
use crate::env::make;
use crate::error::{Error, Result};
use crate::nn::{clip_grad_norm, Adam, Mlp};
use crate::rng::Rng;
use crate::runner::{softmax, EnvRunner, Rollout, Sampler};
use flare_core::ActorHandle;
use std::time::Instant;

/// Hyperparameters; the defaults are CleanRL's for CartPole.
#[derive(Clone, Debug)]
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
        }
    }
}

/// Where rollouts come from: environments in this process, or env-runner actors.
pub(crate) enum Source {
    Local(Sampler),
    Runners(Vec<ActorHandle<EnvRunner>>),
}

impl Source {
    pub(crate) fn local(cfg: &PpoConfig) -> Result<Source> {
        Ok(Source::Local(Sampler::new(&cfg.env_id, cfg.num_envs, cfg.seed)?))
    }

    fn collect(&mut self, actor: &Mlp, num_steps: usize) -> Result<Vec<Rollout>> {
        match self {
            Source::Local(s) => Ok(vec![s.rollout(actor, num_steps)?]),
            Source::Runners(rs) => {
                // One put per iteration; every runner's call takes the ref and reads it there.
                let weights = flare_core::put(actor).map_err(runtime)?;
                let refs: Vec<_> = rs.iter().map(|r| r.sample(&weights, num_steps as u32)).collect();
                flare_core::get_all(&refs).map_err(runtime)
            }
        }
    }
}

fn runtime(e: flare_core::Error) -> Error {
    Error::Runtime(e.to_string())
}

/// Trains a policy in this process; `progress` gets `(env_steps, mean_return_last_100)` after
/// each update.
pub fn train(cfg: &PpoConfig, progress: impl FnMut(u64, f64)) -> Result<(Summary, Mlp)> {
    run(cfg, Source::local(cfg)?, progress)
}

/// Trains with `num_runners` env-runner actors (each with `cfg.num_envs` environments and up to
/// three restarts) sampling in their own processes; needs a running Flare runtime.
pub fn train_distributed(cfg: &PpoConfig, num_runners: usize, progress: impl FnMut(u64, f64)) -> Result<(Summary, Mlp)> {
    let runners = crate::runner::spawn_runners(&cfg.env_id, cfg.num_envs, cfg.seed, num_runners)?;
    run(cfg, Source::Runners(runners), progress)
}

pub(crate) fn run(cfg: &PpoConfig, mut source: Source, mut progress: impl FnMut(u64, f64)) -> Result<(Summary, Mlp)> {
    let t0 = Instant::now();
    let probe = make(&cfg.env_id)?;
    let n_actions = super::discrete_actions(&*probe, "PPO")?;
    let obs_dim = probe.observation_space().dim();
    let threshold = probe.reward_threshold().unwrap_or(f64::INFINITY);
    let mut rng = Rng::new(cfg.seed);
    let g = 2f32.sqrt();
    let mut actor = Mlp::new(&[obs_dim, cfg.hidden, cfg.hidden, n_actions], g, 0.01, &mut rng);
    let mut critic = Mlp::new(&[obs_dim, cfg.hidden, cfg.hidden, 1], g, 1.0, &mut rng);
    let mut opt_a = Adam::new(actor.params.len(), cfg.learning_rate, 1e-5);
    let mut opt_c = Adam::new(critic.params.len(), cfg.learning_rate, 1e-5);
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
    let first = (env_steps as usize / batch_size).min(updates);

    for update in first..updates {
        if cfg.anneal_lr {
            let frac = 1.0 - update as f32 / updates as f32;
            opt_a.lr = frac * cfg.learning_rate;
            opt_c.lr = frac * cfg.learning_rate;
        }
        let rollouts = source.collect(&actor, cfg.num_steps)?;
        // Flatten into one batch; advantages per env sequence (GAE).
        let mut b_obs = Vec::with_capacity(batch_size);
        let mut b_act = Vec::with_capacity(batch_size);
        let mut b_logp = Vec::with_capacity(batch_size);
        let mut b_val = Vec::with_capacity(batch_size);
        let mut adv = Vec::with_capacity(batch_size);
        for r in rollouts {
            r.episode_returns.iter().for_each(|ret| recent.push(*ret));
            env_steps += (r.num_envs * r.num_steps) as u64;
            let values: Vec<f32> = r.obs.iter().map(|o| critic.forward(o).0[0]).collect();
            let mut a = vec![0.0f32; values.len()];
            for (i, last_obs) in r.last_obs.iter().enumerate() {
                let mut last = 0.0f64;
                let next_value = critic.forward(last_obs).0[0] as f64;
                for t in (0..r.num_steps).rev() {
                    let k = t * r.num_envs + i;
                    let nonterminal = if r.dones[k] { 0.0 } else { 1.0 };
                    let next_v = if t + 1 == r.num_steps { next_value } else { values[k + r.num_envs] as f64 };
                    let delta = r.rewards[k] as f64 + cfg.gamma * next_v * nonterminal - values[k] as f64;
                    last = delta + cfg.gamma * cfg.gae_lambda * nonterminal * last;
                    a[k] = last as f32;
                }
            }
            b_obs.extend(r.obs);
            b_act.extend(r.actions.iter().map(|x| *x as usize));
            b_logp.extend(r.logp);
            b_val.extend(values);
            adv.extend(a);
        }
        let batch = b_obs.len();
        let returns: Vec<f32> = adv.iter().zip(&b_val).map(|(a, v)| a + v).collect();

        // Optimize.
        let mb = (batch / cfg.num_minibatches).max(1);
        let mut idx: Vec<usize> = (0..batch).collect();
        for _ in 0..cfg.update_epochs {
            for i in (1..idx.len()).rev() {
                let j = rng.below(i as u64 + 1) as usize;
                idx.swap(i, j);
            }
            for chunk in idx.chunks(mb) {
                let n = chunk.len() as f32;
                let mean = chunk.iter().map(|&k| adv[k]).sum::<f32>() / n;
                let std = (chunk.iter().map(|&k| (adv[k] - mean).powi(2)).sum::<f32>() / (n - 1.0).max(1.0)).sqrt();
                let mut ga = vec![0.0f32; actor.params.len()];
                let mut gc = vec![0.0f32; critic.params.len()];
                for &k in chunk {
                    let a_norm = if cfg.norm_adv { (adv[k] - mean) / (std + 1e-8) } else { adv[k] };
                    let (logits, tape) = actor.forward(&b_obs[k]);
                    let p = softmax(&logits);
                    let logp: Vec<f32> = p.iter().map(|x| x.max(1e-12).ln()).collect();
                    let ratio = (logp[b_act[k]] - b_logp[k]).exp();
                    let l1 = -a_norm * ratio;
                    let clipped = ratio.clamp(1.0 - cfg.clip_coef, 1.0 + cfg.clip_coef);
                    let l2 = -a_norm * clipped;
                    // d(pg loss)/d(logp of the action).
                    let dlogp = if l1 >= l2 || clipped == ratio { -a_norm * ratio } else { 0.0 };
                    let entropy: f32 = -p.iter().zip(&logp).map(|(a, b)| a * b).sum::<f32>();
                    let mut dlogits = vec![0.0f32; p.len()];
                    for j in 0..p.len() {
                        let onehot = if j == b_act[k] { 1.0 } else { 0.0 };
                        let d_pg = dlogp * (onehot - p[j]);
                        let d_ent = -p[j] * (logp[j] + entropy);
                        dlogits[j] = (d_pg - cfg.ent_coef * d_ent) / n;
                    }
                    actor.backward(&tape, &dlogits, &mut ga);

                    let (v, vtape) = critic.forward(&b_obs[k]);
                    let v = v[0];
                    let r = returns[k];
                    let unclipped = (v - r).powi(2);
                    let dv = if cfg.clip_vloss {
                        let vc = b_val[k] + (v - b_val[k]).clamp(-cfg.clip_coef, cfg.clip_coef);
                        let clipped_loss = (vc - r).powi(2);
                        if unclipped >= clipped_loss {
                            v - r
                        } else if (v - b_val[k]).abs() < cfg.clip_coef {
                            vc - r
                        } else {
                            0.0
                        }
                    } else {
                        v - r
                    };
                    critic.backward(&vtape, &[cfg.vf_coef * dv / n], &mut gc);
                }
                clip_grad_norm(&mut [&mut ga, &mut gc], cfg.max_grad_norm);
                opt_a.step(&mut actor.params, &ga);
                opt_c.step(&mut critic.params, &gc);
            }
        }
        progress(env_steps, recent.mean());
        if cfg.stop_when_solved && recent.solved(threshold) {
            break;
        }
    }
    if let Some(dir) = &cfg.checkpoint_dir {
        save_checkpoint(dir, &actor, &critic, env_steps)?;
    }
    Ok((recent.summary(threshold, env_steps, t0), actor))
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
            let logits = actor.forward(&obs).0;
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
