//! Vector environments: several copies stepped together, with gymnasium's next-step autoreset
//! (an episode's last step returns its final observation; the next `step` resets that copy and
//! returns the first observation of the new episode with reward 0), and episode statistics.

use crate::env::{make, Action, Env};
use crate::error::Result;

/// One step of every copy.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VecStep {
    pub obs: Vec<Vec<f32>>,
    pub rewards: Vec<f64>,
    pub terminated: Vec<bool>,
    pub truncated: Vec<bool>,
    /// `(return, length)` of the episodes that ended at this step.
    pub episodes: Vec<Option<(f64, u32)>>,
}

pub struct VectorEnv {
    envs: Vec<Box<dyn Env>>,
    needs_reset: Vec<bool>,
    returns: Vec<f64>,
    lengths: Vec<u32>,
    seed_base: Option<u64>,
    resets: Vec<u64>,
}

impl VectorEnv {
    /// `n` copies of a built-in environment.
    pub fn new(id: &str, n: usize) -> Result<Self> {
        Ok(Self::from_envs((0..n).map(|_| make(id)).collect::<Result<Vec<_>>>()?))
    }

    pub fn from_envs(envs: Vec<Box<dyn Env>>) -> Self {
        let n = envs.len();
        VectorEnv {
            envs,
            needs_reset: vec![false; n],
            returns: vec![0.0; n],
            lengths: vec![0; n],
            seed_base: None,
            resets: vec![0; n],
        }
    }

    pub fn len(&self) -> usize {
        self.envs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.envs.is_empty()
    }

    pub fn envs(&self) -> &[Box<dyn Env>] {
        &self.envs
    }

    /// Resets every copy; copy `i` is seeded with `seed + i`.
    pub fn reset(&mut self, seed: Option<u64>) -> Vec<Vec<f32>> {
        self.seed_base = seed;
        let mut out = Vec::with_capacity(self.envs.len());
        for (i, env) in self.envs.iter_mut().enumerate() {
            out.push(env.reset(seed.map(|s| s + i as u64)).0);
            self.needs_reset[i] = false;
            self.returns[i] = 0.0;
            self.lengths[i] = 0;
            self.resets[i] = 0;
        }
        out
    }

    /// Steps every copy with its action (ignored for a copy that is being reset).
    pub fn step(&mut self, actions: &[Action]) -> Result<VecStep> {
        assert_eq!(actions.len(), self.envs.len(), "one action per environment copy");
        let mut s = VecStep::default();
        for (i, (env, a)) in self.envs.iter_mut().zip(actions).enumerate() {
            if self.needs_reset[i] {
                // Later resets draw from the copy's own generator, not a fixed seed.
                self.resets[i] += 1;
                let (obs, _) = env.reset(None);
                self.needs_reset[i] = false;
                self.returns[i] = 0.0;
                self.lengths[i] = 0;
                s.obs.push(obs);
                s.rewards.push(0.0);
                s.terminated.push(false);
                s.truncated.push(false);
                s.episodes.push(None);
                continue;
            }
            let st = env.step(a)?;
            self.returns[i] += st.reward;
            self.lengths[i] += 1;
            let done = st.terminated || st.truncated;
            s.episodes.push(done.then_some((self.returns[i], self.lengths[i])));
            self.needs_reset[i] = done;
            s.obs.push(st.obs);
            s.rewards.push(st.reward);
            s.terminated.push(st.terminated);
            s.truncated.push(st.truncated);
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_step_autoreset() {
        let mut v = VectorEnv::new("CartPole-v1", 2).unwrap();
        v.reset(Some(3));
        // Always push right: the pole falls within a few dozen steps.
        let mut ended_at = None;
        for t in 0..200 {
            let s = v.step(&[Action::Discrete(1), Action::Discrete(1)]).unwrap();
            if let Some(t0) = ended_at {
                if t == t0 + 1 {
                    assert_eq!(s.rewards[0], 0.0, "the step after an episode ends is a reset");
                    assert!(!s.terminated[0]);
                    break;
                }
            }
            if s.terminated[0] {
                let (ret, len) = s.episodes[0].unwrap();
                assert_eq!(ret, len as f64);
                ended_at = Some(t);
            }
        }
        assert!(ended_at.is_some());
    }
}
