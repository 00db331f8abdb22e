//! Pendulum-v1: swing a pendulum up and hold it (gymnasium `classic_control/pendulum.py`).
//! The torque is float32 and the terms that involve it are float32 arithmetic, as in numpy.

use crate::env::{continuous1, Action, Env, Info, Step};
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::spaces::Space;
use std::f64::consts::PI;

const MAX_SPEED: f64 = 8.0;
const MAX_TORQUE: f32 = 2.0;
const DT: f64 = 0.05;
const G: f64 = 10.0;
const L: f64 = 1.0;

pub struct Pendulum {
    state: Option<[f64; 2]>,
    rng: Option<Rng>,
}

impl Default for Pendulum {
    fn default() -> Self {
        Self::new()
    }
}

/// `((x + pi) % (2 pi)) - pi` with Python's floored modulo.
fn angle_normalize(x: f64) -> f64 {
    let m = 2.0 * PI;
    let r = (x + PI) % m;
    let r = if r != 0.0 && (r < 0.0) != (m < 0.0) { r + m } else { r };
    r - PI
}

impl Pendulum {
    pub fn new() -> Self {
        Pendulum { state: None, rng: None }
    }

    fn obs(s: &[f64; 2]) -> Vec<f32> {
        vec![s[0].cos() as f32, s[0].sin() as f32, s[1] as f32]
    }
}

impl Env for Pendulum {
    fn id(&self) -> &str {
        "Pendulum-v1"
    }

    fn observation_space(&self) -> Space {
        Space::Box { low: vec![-1.0, -1.0, -MAX_SPEED as f32], high: vec![1.0, 1.0, MAX_SPEED as f32] }
    }

    fn action_space(&self) -> Space {
        Space::Box { low: vec![-MAX_TORQUE], high: vec![MAX_TORQUE] }
    }

    fn reset(&mut self, seed: Option<u64>) -> (Vec<f32>, Info) {
        let rng = super::reseed(&mut self.rng, seed);
        let s = [rng.uniform(-PI, PI), rng.uniform(-1.0, 1.0)];
        self.state = Some(s);
        (Self::obs(&s), Info::new())
    }

    fn step(&mut self, action: &Action) -> Result<Step> {
        let u = continuous1(self.id(), action)?;
        let [th, thdot] = self.state.ok_or_else(|| Error::NeedsReset(self.id().into()))?;
        // np.clip of a float32 array by Python floats stays float32.
        let u = u.clamp(-MAX_TORQUE, MAX_TORQUE);
        // `u ** 2` on an np.float32 is libm powf; `0.001 * that` is float32 arithmetic.
        let u_cost = 0.001f32 * super::np_square_f32(u);
        let costs = super::np_square(angle_normalize(th)) + 0.1 * super::np_square(thdot) + u_cost as f64;
        let torque_term = 3.0f32 * u; // 3.0 / (m * l**2) * u, float32
        let newthdot = thdot + (3.0 * G / (2.0 * L) * th.sin() + torque_term as f64) * DT;
        let newthdot = newthdot.clamp(-MAX_SPEED, MAX_SPEED);
        let newth = th + newthdot * DT;
        let s = [newth, newthdot];
        self.state = Some(s);
        Ok(Step { obs: Self::obs(&s), reward: -costs, terminated: false, truncated: false, info: Info::new() })
    }

    fn state(&self) -> Vec<f64> {
        self.state.map(|s| s.to_vec()).unwrap_or_default()
    }

    fn set_state(&mut self, state: &[f64]) {
        self.state = Some(super::to_array(state));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn angle_normalize_is_floored() {
        let x = super::angle_normalize(-4.0);
        assert!((x - (-4.0 + 2.0 * std::f64::consts::PI)).abs() < 1e-12);
        assert_eq!(super::angle_normalize(0.0), 0.0);
    }
}
