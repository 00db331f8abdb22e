//! Rollouts: stepping environments with a policy, in this process or in env-runner actors
//! (RLlib's EnvRunner) that each own a set of environments and receive the current policy
//! weights through the object store every iteration.

use crate::env::{make, Action, Env};
use crate::nn::{GaussianPolicy, Mlp};
use crate::rng::Rng;
use serde::{Deserialize, Serialize};
use std::sync::Mutex;

/// A batch of experience, indexed `step * num_envs + env`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Rollout {
    pub num_envs: usize,
    pub num_steps: usize,
    pub obs: Vec<Vec<f32>>,
    pub actions: Vec<u32>,
    pub logp: Vec<f32>,
    pub rewards: Vec<f32>,
    pub dones: Vec<bool>,
    /// The observation after the last step, per env (for bootstrapping).
    pub last_obs: Vec<Vec<f32>>,
    /// Returns of the episodes that ended during this rollout.
    pub episode_returns: Vec<f64>,
    /// The process that stepped the environments.
    pub pid: u32,
    /// For value-based learners ([`Sampler::rollout_epsilon`]): each step's next observation
    /// (before an autoreset) and whether it terminated (truncation still bootstraps).
    #[serde(default)]
    pub next_obs: Vec<Vec<f32>>,
    #[serde(default)]
    pub terminated: Vec<bool>,
    /// For continuous actions ([`Sampler::rollout_gaussian`]): each step's action.
    #[serde(default)]
    pub continuous_actions: Vec<Vec<f32>>,
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

/// Environments with their current observations; steps them with a categorical policy.
pub struct Sampler {
    envs: Vec<Box<dyn Env>>,
    obs: Vec<Vec<f32>>,
    ep_ret: Vec<f64>,
    rng: Rng,
}

impl Sampler {
    pub fn new(env_id: &str, num_envs: usize, seed: u64) -> crate::Result<Self> {
        let mut envs: Vec<Box<dyn Env>> = (0..num_envs).map(|_| make(env_id)).collect::<crate::Result<_>>()?;
        let obs = envs.iter_mut().enumerate().map(|(i, e)| e.reset(Some(seed + i as u64)).0).collect();
        Ok(Sampler { envs, obs, ep_ret: vec![0.0; num_envs], rng: Rng::new(seed ^ 0x5EED) })
    }

    pub fn envs(&self) -> &[Box<dyn Env>] {
        &self.envs
    }

    /// `num_steps` steps of every env; an episode that ends is reset at once.
    pub fn rollout(&mut self, policy: &Mlp, num_steps: usize) -> crate::Result<Rollout> {
        let n = self.envs.len();
        let mut r = Rollout { num_envs: n, num_steps, pid: std::process::id(), ..Default::default() };
        for _ in 0..num_steps {
            for i in 0..n {
                let p = softmax(&policy.forward(&self.obs[i]));
                let a = sample(&p, &mut self.rng);
                let st = self.envs[i].step(&Action::Discrete(a as i64))?;
                self.ep_ret[i] += st.reward;
                let done = st.terminated || st.truncated;
                r.obs.push(std::mem::replace(&mut self.obs[i], st.obs));
                r.actions.push(a as u32);
                r.logp.push(p[a].max(1e-12).ln());
                r.rewards.push(st.reward as f32);
                r.dones.push(done);
                if done {
                    r.episode_returns.push(std::mem::take(&mut self.ep_ret[i]));
                    self.obs[i] = self.envs[i].reset(None).0;
                }
            }
        }
        r.last_obs = self.obs.clone();
        Ok(r)
    }
}

impl Sampler {
    /// Records env `i`'s step for an off-policy learner (observation, next observation before
    /// an autoreset, reward, termination) and resets the env if the episode ended.
    fn record_transition(&mut self, r: &mut Rollout, i: usize, st: crate::env::Step) {
        self.ep_ret[i] += st.reward;
        let done = st.terminated || st.truncated;
        r.next_obs.push(st.obs.clone());
        r.obs.push(std::mem::replace(&mut self.obs[i], st.obs));
        r.rewards.push(st.reward as f32);
        r.dones.push(done);
        r.terminated.push(st.terminated);
        if done {
            r.episode_returns.push(std::mem::take(&mut self.ep_ret[i]));
            self.obs[i] = self.envs[i].reset(None).0;
        }
    }

    /// `num_steps` steps of every env with an epsilon-greedy policy on the Q-network `q`
    /// (DQN's behaviour policy), recording next observations and terminations.
    pub fn rollout_epsilon(&mut self, q: &Mlp, epsilon: f64, num_steps: usize) -> crate::Result<Rollout> {
        let n = self.envs.len();
        let mut r = Rollout { num_envs: n, num_steps, pid: std::process::id(), ..Default::default() };
        for _ in 0..num_steps {
            for i in 0..n {
                let a = if self.rng.next_f64() < epsilon {
                    let n_actions = q.sizes.last().copied().unwrap_or(1);
                    self.rng.below(n_actions as u64) as usize
                } else {
                    let qs = q.forward(&self.obs[i]);
                    qs.iter().enumerate().max_by(|x, y| x.1.total_cmp(y.1)).map(|(k, _)| k).unwrap_or(0)
                };
                let st = self.envs[i].step(&Action::Discrete(a as i64))?;
                r.actions.push(a as u32);
                self.record_transition(&mut r, i, st);
            }
        }
        r.last_obs = self.obs.clone();
        Ok(r)
    }
}

impl Sampler {
    /// `num_steps` steps of every env with SAC's stochastic `policy`, or uniformly random
    /// actions in the bounds without one (the warm-up), recording next observations and
    /// terminations.
    pub fn rollout_gaussian(&mut self, policy: Option<&GaussianPolicy>, num_steps: usize) -> crate::Result<Rollout> {
        let n = self.envs.len();
        let mut r = Rollout { num_envs: n, num_steps, pid: std::process::id(), ..Default::default() };
        let space = self.envs.first().map(|e| e.action_space());
        for _ in 0..num_steps {
            for i in 0..n {
                let action = match (policy, &space) {
                    (Some(p), _) => p.sample(&self.obs[i], &mut self.rng),
                    (None, Some(space)) => match space.sample(&mut self.rng) {
                        Action::Continuous(a) => a,
                        other => {
                            return Err(crate::Error::Runtime(format!("SAC needs continuous actions, the env samples {other}")))
                        }
                    },
                    (None, None) => Vec::new(),
                };
                let st = self.envs[i].step(&Action::Continuous(action.clone()))?;
                r.continuous_actions.push(action);
                self.record_transition(&mut r, i, st);
            }
        }
        r.last_obs = self.obs.clone();
        Ok(r)
    }
}

/// `n` env-runner actors with `num_envs` environments each (seeds `seed + 1000 * (i + 1)`), one
/// CPU each, restarted up to three times with their calls retried.
pub(crate) fn spawn_runners(
    env_id: &str,
    num_envs: usize,
    seed: u64,
    n: usize,
) -> crate::Result<Vec<flare_core::ActorHandle<EnvRunner>>> {
    (0..n)
        .map(|i| {
            EnvRunner::remote(env_id.to_string(), num_envs as u32, seed + 1000 * (i as u64 + 1))
                .num_cpus(1.0)
                .max_restarts(3)
                .max_task_retries(3)
                .spawn()
                .map_err(|e| crate::Error::Runtime(e.to_string()))
        })
        .collect()
}

/// An env-runner actor: a [`Sampler`] in its own worker process.
pub struct EnvRunner {
    sampler: Mutex<Sampler>,
}

#[flare_macros::actor(crate = ::flare_core)]
impl EnvRunner {
    fn new(env_id: String, num_envs: u32, seed: u64) -> Result<Self, String> {
        Ok(EnvRunner { sampler: Mutex::new(Sampler::new(&env_id, num_envs as usize, seed).map_err(|e| e.to_string())?) })
    }

    /// A rollout with the given policy weights (passed as an object ref: resolved on arrival).
    fn sample(&self, policy: Mlp, num_steps: u32) -> Result<Rollout, String> {
        let mut s = self.sampler.lock().unwrap_or_else(|p| p.into_inner());
        s.rollout(&policy, num_steps as usize).map_err(|e| e.to_string())
    }

    /// An epsilon-greedy rollout with the given Q-network (DQN's runners).
    fn sample_epsilon(&self, q: Mlp, epsilon: f64, num_steps: u32) -> Result<Rollout, String> {
        let mut s = self.sampler.lock().unwrap_or_else(|p| p.into_inner());
        s.rollout_epsilon(&q, epsilon, num_steps as usize).map_err(|e| e.to_string())
    }

    /// A rollout with SAC's policy (`None`: random actions, the warm-up).
    fn sample_gaussian(&self, policy: Option<GaussianPolicy>, num_steps: u32) -> Result<Rollout, String> {
        let mut s = self.sampler.lock().unwrap_or_else(|p| p.into_inner());
        s.rollout_gaussian(policy.as_ref(), num_steps as usize).map_err(|e| e.to_string())
    }

    fn pid(&self) -> u32 {
        std::process::id()
    }
}
