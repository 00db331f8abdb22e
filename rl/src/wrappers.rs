//! Wrappers with gymnasium's semantics: observation and reward normalization by running
//! statistics, and episode statistics in `info`.

use crate::env::{Action, Env, Info, Step};
use crate::error::Result;
use crate::spaces::Space;

/// Running mean and variance (gymnasium's `RunningMeanStd`, Chan et al.'s parallel update).
#[derive(Clone, Debug, PartialEq)]
pub struct RunningMeanStd {
    pub mean: Vec<f64>,
    pub var: Vec<f64>,
    pub count: f64,
}

impl RunningMeanStd {
    /// Mean 0, variance 1, and a tiny prior count (1e-4) so the first update dominates.
    pub fn new(dim: usize) -> Self {
        RunningMeanStd { mean: vec![0.0; dim], var: vec![1.0; dim], count: 1e-4 }
    }

    /// Adds one sample.
    pub fn update(&mut self, x: &[f64]) {
        let (batch_count, tot) = (1.0, self.count + 1.0);
        for ((mean, var), xi) in self.mean.iter_mut().zip(self.var.iter_mut()).zip(x) {
            let delta = xi - *mean;
            let m_a = *var * self.count;
            let m2 = m_a + delta * delta * self.count * batch_count / tot;
            *mean += delta * batch_count / tot;
            *var = m2 / tot;
        }
        self.count = tot;
    }
}

/// Normalizes observations to zero mean and unit variance with running statistics.
pub struct NormalizeObservation<E> {
    env: E,
    pub rms: RunningMeanStd,
    pub epsilon: f64,
    /// Whether statistics still update (turn off for evaluation).
    pub update: bool,
}

impl<E: Env> NormalizeObservation<E> {
    pub fn new(env: E) -> Self {
        let dim = env.observation_space().dim();
        NormalizeObservation { env, rms: RunningMeanStd::new(dim), epsilon: 1e-8, update: true }
    }

    fn normalize(&mut self, obs: Vec<f32>) -> Vec<f32> {
        let x: Vec<f64> = obs.iter().map(|v| *v as f64).collect();
        if self.update {
            self.rms.update(&x);
        }
        x.iter().enumerate().map(|(i, v)| ((v - self.rms.mean[i]) / (self.rms.var[i] + self.epsilon).sqrt()) as f32).collect()
    }
}

/// Scales rewards so their discounted return has unit variance (gymnasium's `NormalizeReward`).
pub struct NormalizeReward<E> {
    env: E,
    pub rms: RunningMeanStd,
    pub gamma: f64,
    pub epsilon: f64,
    pub update: bool,
    discounted: f64,
}

impl<E: Env> NormalizeReward<E> {
    pub fn new(env: E, gamma: f64) -> Self {
        NormalizeReward { env, rms: RunningMeanStd::new(1), gamma, epsilon: 1e-8, update: true, discounted: 0.0 }
    }
}

/// Adds `episode_return` and `episode_length` to `info` on the step that ends an episode.
pub struct RecordEpisodeStatistics<E> {
    env: E,
    ret: f64,
    len: u32,
}

impl<E: Env> RecordEpisodeStatistics<E> {
    pub fn new(env: E) -> Self {
        RecordEpisodeStatistics { env, ret: 0.0, len: 0 }
    }
}

macro_rules! delegate {
    () => {
        fn id(&self) -> &str {
            self.env.id()
        }
        fn observation_space(&self) -> Space {
            self.env.observation_space()
        }
        fn action_space(&self) -> Space {
            self.env.action_space()
        }
        fn state(&self) -> Vec<f64> {
            self.env.state()
        }
        fn set_state(&mut self, state: &[f64]) {
            self.env.set_state(state)
        }
        fn reward_threshold(&self) -> Option<f64> {
            self.env.reward_threshold()
        }
    };
}

impl<E: Env> Env for NormalizeObservation<E> {
    delegate!();
    fn reset(&mut self, seed: Option<u64>) -> (Vec<f32>, Info) {
        let (obs, info) = self.env.reset(seed);
        (self.normalize(obs), info)
    }
    fn step(&mut self, action: &Action) -> Result<Step> {
        let mut s = self.env.step(action)?;
        s.obs = self.normalize(std::mem::take(&mut s.obs));
        Ok(s)
    }
}

impl<E: Env> Env for NormalizeReward<E> {
    delegate!();
    fn reset(&mut self, seed: Option<u64>) -> (Vec<f32>, Info) {
        self.env.reset(seed)
    }
    fn step(&mut self, action: &Action) -> Result<Step> {
        let mut s = self.env.step(action)?;
        self.discounted = self.discounted * self.gamma * (1.0 - s.terminated as u8 as f64) + s.reward;
        if self.update {
            self.rms.update(&[self.discounted]);
        }
        s.reward /= (self.rms.var[0] + self.epsilon).sqrt();
        Ok(s)
    }
}

impl<E: Env> Env for RecordEpisodeStatistics<E> {
    delegate!();
    fn reset(&mut self, seed: Option<u64>) -> (Vec<f32>, Info) {
        self.ret = 0.0;
        self.len = 0;
        self.env.reset(seed)
    }
    fn step(&mut self, action: &Action) -> Result<Step> {
        let mut s = self.env.step(action)?;
        self.ret += s.reward;
        self.len += 1;
        if s.terminated || s.truncated {
            s.info.insert("episode_return".into(), self.ret);
            s.info.insert("episode_length".into(), self.len as f64);
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classic::{CartPole, Pendulum};
    use crate::env::TimeLimit;
    use crate::rng::Rng;

    #[test]
    fn running_stats_match_a_direct_computation() {
        let xs = [1.0, 4.0, -2.0, 7.5, 0.25];
        let mut r = RunningMeanStd::new(1);
        xs.iter().for_each(|x| r.update(&[*x]));
        let n = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        // The 1e-4 prior count shifts the estimates by about that much.
        assert!((r.mean[0] - mean).abs() < 1e-3 && (r.var[0] - var).abs() < 1e-2, "{r:?} vs {mean} {var}");
    }

    #[test]
    fn normalized_observations_have_unit_scale() {
        let mut env = NormalizeObservation::new(TimeLimit::new(Pendulum::new(), 200));
        let mut rng = Rng::new(1);
        env.reset(Some(1));
        let mut seen = Vec::new();
        for _ in 0..2000 {
            let a = env.action_space().sample(&mut rng);
            let s = env.step(&a).unwrap();
            seen.push(s.obs[2] as f64);
            if s.truncated {
                env.reset(None);
            }
        }
        let tail = &seen[1000..];
        let mean = tail.iter().sum::<f64>() / tail.len() as f64;
        let var = tail.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / tail.len() as f64;
        assert!(mean.abs() < 0.5 && (0.3..3.0).contains(&var), "mean {mean} var {var}");
    }

    #[test]
    fn reward_scaling_and_episode_statistics() {
        let mut env = RecordEpisodeStatistics::new(NormalizeReward::new(TimeLimit::new(CartPole::new(), 500), 0.99));
        env.reset(Some(0));
        let mut total = 0.0;
        loop {
            let s = env.step(&Action::Discrete(1)).unwrap();
            total += s.reward;
            assert!(s.reward > 0.0 && s.reward != 1.0, "rewards are rescaled: {}", s.reward);
            if s.terminated || s.truncated {
                assert_eq!(s.info["episode_return"], total);
                assert!(s.info["episode_length"] >= 1.0);
                break;
            }
        }
    }
}
