//! Spaces: what observations and actions look like (gymnasium's `Box`, `Discrete`, `MultiDiscrete`).

use crate::rng::Rng;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Space {
    /// Integers `start..start + n`.
    Discrete { n: i64, start: i64 },
    /// Float32 vectors with per-dimension bounds (infinite allowed).
    Box { low: Vec<f32>, high: Vec<f32> },
    /// One discrete choice per dimension, `0..nvec[i]`.
    MultiDiscrete { nvec: Vec<i64> },
}

impl Space {
    /// The number of float32 values of a `Box`, or of discrete dimensions.
    pub fn dim(&self) -> usize {
        match self {
            Space::Discrete { .. } => 1,
            Space::Box { low, .. } => low.len(),
            Space::MultiDiscrete { nvec } => nvec.len(),
        }
    }

    pub fn contains_discrete(&self, a: i64) -> bool {
        matches!(self, Space::Discrete { n, start } if a >= *start && a < start + n)
    }

    pub fn contains_box(&self, x: &[f32]) -> bool {
        match self {
            Space::Box { low, high } => x.len() == low.len() && x.iter().zip(low).zip(high).all(|((v, l), h)| v >= l && v <= h),
            _ => false,
        }
    }

    /// A random element (for a `Box`, uniform where bounded, normal-ish where not).
    pub fn sample(&self, rng: &mut Rng) -> crate::Action {
        match self {
            Space::Discrete { n, start } => crate::Action::Discrete(start + rng.below(*n as u64) as i64),
            Space::Box { low, high } => crate::Action::Continuous(
                low.iter()
                    .zip(high)
                    .map(|(l, h)| {
                        let (l, h) = (*l as f64, *h as f64);
                        if l.is_finite() && h.is_finite() {
                            rng.uniform(l, h) as f32
                        } else {
                            rng.uniform(-1.0, 1.0) as f32
                        }
                    })
                    .collect(),
            ),
            Space::MultiDiscrete { nvec } => {
                crate::Action::MultiDiscrete(nvec.iter().map(|n| rng.below(*n as u64) as i64).collect())
            }
        }
    }
}
