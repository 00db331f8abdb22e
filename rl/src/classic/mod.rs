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

/// numpy's `x ** 2` on a float64 scalar: libm `pow(x, 2)`. The exponent goes through
/// `black_box` so the optimizer cannot rewrite the call as `x * x`, which differs from glibc's
/// `powf` in the last bit for some float32 inputs (and may for float64).
pub(crate) fn np_square(x: f64) -> f64 {
    x.powf(std::hint::black_box(2.0))
}

/// numpy's `x ** 2` on a float32 scalar: libm `powf(x, 2)`.
pub(crate) fn np_square_f32(x: f32) -> f32 {
    x.powf(std::hint::black_box(2.0))
}

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
