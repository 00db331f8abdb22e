//! PPO for discrete actions (CleanRL's `ppo.py`, on Flare's environments and a hand-written MLP):
//! GAE, clipped surrogate, clipped value loss, entropy bonus, minibatch epochs, advantage
//! normalization, global-norm gradient clipping, linear learning-rate annealing.

use super::Summary;
use crate::env::{make, Action, Env};
use crate::error::{Error, Result};
use crate::nn::{clip_grad_norm, Adam, Mlp};
use crate::rng::Rng;
use crate::spaces::Space;
use std::collections::VecDeque;
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
    pub hidden: usize,
    /// Stop early once solved.
    pub stop_when_solved: bool,
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
            hidden: 64,
            stop_when_solved: true,
        }
    }
}

fn softmax(logits: &[f32]) -> Vec<f32> {
    let m = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = logits.iter().map(|l| (l - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

fn sample(p: &[f32], rng: &mut Rng) -> usize {
    let u = rng.next_f64() as f32;
    let mut acc = 0.0;
    for (i, pi) in p.iter().enumerate() {
        acc += pi;
        if u < acc {
            return i;
        }
    }
    p.len() - 1
}

/// Trains a policy; `progress` gets `(env_steps, mean_return_last_100)` after each update.
pub fn train(cfg: &PpoConfig, mut progress: impl FnMut(u64, f64)) -> Result<(Summary, Mlp)> {
    let t0 = Instant::now();
    let mut envs: Vec<Box<dyn Env>> = (0..cfg.num_envs).map(|_| make(&cfg.env_id)).collect::<Result<_>>()?;
    let n_actions = match envs[0].action_space() {
        Space::Discrete { n, .. } => n as usize,
        other => {
            return Err(Error::InvalidAction {
                env: cfg.env_id.clone(),
                action: "PPO (discrete)".into(),
                expected: format!("a Discrete action space, not {other:?}"),
            })
        }
    };
    let obs_dim = envs[0].observation_space().dim();
    let threshold = envs[0].reward_threshold().unwrap_or(f64::INFINITY);
    let mut rng = Rng::new(cfg.seed);
    let g = 2f32.sqrt();
    let mut actor = Mlp::new(&[obs_dim, cfg.hidden, cfg.hidden, n_actions], g, 0.01, &mut rng);
    let mut critic = Mlp::new(&[obs_dim, cfg.hidden, cfg.hidden, 1], g, 1.0, &mut rng);
    let mut opt_a = Adam::new(actor.params.len(), cfg.learning_rate, 1e-5);
    let mut opt_c = Adam::new(critic.params.len(), cfg.learning_rate, 1e-5);

    let mut obs: Vec<Vec<f32>> = envs.iter_mut().enumerate().map(|(i, e)| e.reset(Some(cfg.seed + i as u64)).0).collect();
    let mut ep_ret = vec![0.0f64; cfg.num_envs];
    let mut recent: VecDeque<f64> = VecDeque::with_capacity(100);
    let mut episodes = 0u64;
    let batch = cfg.num_envs * cfg.num_steps;
    let updates = (cfg.total_env_steps as usize).div_ceil(batch);
    let mut env_steps = 0u64;
    let mean_recent = |r: &VecDeque<f64>| if r.is_empty() { f64::NEG_INFINITY } else { r.iter().sum::<f64>() / r.len() as f64 };

    for update in 0..updates {
        if cfg.anneal_lr {
            let frac = 1.0 - update as f32 / updates as f32;
            opt_a.lr = frac * cfg.learning_rate;
            opt_c.lr = frac * cfg.learning_rate;
        }
        // Rollout: [step][env].
        let mut b_obs = Vec::with_capacity(batch);
        let mut b_act = Vec::with_capacity(batch);
        let mut b_logp = Vec::with_capacity(batch);
        let mut b_val = Vec::with_capacity(batch);
        let mut b_rew = Vec::with_capacity(batch);
        let mut b_done = Vec::with_capacity(batch);
        for _ in 0..cfg.num_steps {
            for i in 0..cfg.num_envs {
                let (logits, _) = actor.forward(&obs[i]);
                let p = softmax(&logits);
                let a = sample(&p, &mut rng);
                let (v, _) = critic.forward(&obs[i]);
                let st = envs[i].step(&Action::Discrete(a as i64))?;
                env_steps += 1;
                ep_ret[i] += st.reward;
                let done = st.terminated || st.truncated;
                b_obs.push(std::mem::replace(&mut obs[i], st.obs));
                b_act.push(a);
                b_logp.push(p[a].max(1e-12).ln());
                b_val.push(v[0]);
                b_rew.push(st.reward as f32);
                b_done.push(done);
                if done {
                    if recent.len() == 100 {
                        recent.pop_front();
                    }
                    recent.push_back(ep_ret[i]);
                    episodes += 1;
                    ep_ret[i] = 0.0;
                    obs[i] = envs[i].reset(None).0;
                }
            }
        }
        // GAE over each env's sequence; index = step * num_envs + env.
        let mut adv = vec![0.0f32; batch];
        for (i, last_obs) in obs.iter().enumerate() {
            let mut last = 0.0f64;
            let next_value = critic.forward(last_obs).0[0] as f64;
            for t in (0..cfg.num_steps).rev() {
                let k = t * cfg.num_envs + i;
                let nonterminal = if b_done[k] { 0.0 } else { 1.0 };
                let next_v = if t + 1 == cfg.num_steps { next_value } else { b_val[k + cfg.num_envs] as f64 };
                let delta = b_rew[k] as f64 + cfg.gamma * next_v * nonterminal - b_val[k] as f64;
                last = delta + cfg.gamma * cfg.gae_lambda * nonterminal * last;
                adv[k] = last as f32;
            }
        }
        let returns: Vec<f32> = adv.iter().zip(&b_val).map(|(a, v)| a + v).collect();

        // Optimize.
        let mb = batch / cfg.num_minibatches;
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
                    let a_norm = (adv[k] - mean) / (std + 1e-8);
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
        let m = mean_recent(&recent);
        progress(env_steps, m);
        if cfg.stop_when_solved && recent.len() == 100 && m >= threshold {
            break;
        }
    }
    let mean_return = mean_recent(&recent);
    let summary = Summary {
        solved: recent.len() == 100 && mean_return >= threshold,
        env_steps,
        mean_return,
        wall_s: t0.elapsed().as_secs_f64(),
        episodes,
    };
    Ok((summary, actor))
}
