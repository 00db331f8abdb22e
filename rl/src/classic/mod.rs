//! The classic-control environments of gymnasium 1.4.0, ported so that each step produces the
//! same bits as gymnasium: expression order follows the Python source, and where numpy
//! computes in float32 (NEP 50 promotion), so do these.

mod acrobot;
mod cartpole;
mod mountain_car;
mod pendulum;

pub use acrobot::Acrobot;
pub use cartpole::CartPole;
pub use mountain_car::{MountainCar, MountainCarContinuous};
pub use pendulum::Pendulum;

use crate::rng::Rng;

/// A state vector from a slice, zero-filled or truncated to `N` values.
pub(crate) fn to_array<const N: usize>(state: &[f64]) -> [f64; N] {
    std::array::from_fn(|i| state.get(i).copied().unwrap_or(0.0))
}

/// The generator of an environment, created on first use like gymnasium's `np_random`.
pub(crate) fn reseed(rng: &mut Option<Rng>, seed: Option<u64>) -> &mut Rng {
    if let Some(s) = seed {
        *rng = Some(Rng::new(s));
    }
    rng.get_or_insert_with(Rng::from_entropy)
}
