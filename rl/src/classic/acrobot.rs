//! Acrobot-v1: swing a two-link pendulum up (gymnasium `classic_control/acrobot.py`, the
//! "book" dynamics, one RK4 step of 0.2 s per action).

use crate::env::{discrete, Action, Env, Info, Step};
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::spaces::Space;
use std::f64::consts::PI;

const DT: f64 = 0.2;
const LINK_LENGTH_1: f64 = 1.0;
const LINK_MASS_1: f64 = 1.0;
const LINK_MASS_2: f64 = 1.0;
const LINK_COM_POS_1: f64 = 0.5;
const LINK_COM_POS_2: f64 = 0.5;
const LINK_MOI: f64 = 1.0;
const MAX_VEL_1: f64 = 4.0 * PI;
const MAX_VEL_2: f64 = 9.0 * PI;
const AVAIL_TORQUE: [f64; 3] = [-1.0, 0.0, 1.0];

pub struct Acrobot {
    state: Option<[f64; 4]>,
    rng: Option<Rng>,
}

impl Default for Acrobot {
    fn default() -> Self {
        Self::new()
    }
}

impl Acrobot {
    pub fn new() -> Self {
        Acrobot { state: None, rng: None }
    }

    fn obs(s: &[f64; 4]) -> Vec<f32> {
        vec![s[0].cos() as f32, s[0].sin() as f32, s[1].cos() as f32, s[1].sin() as f32, s[2] as f32, s[3] as f32]
    }

    fn terminal(s: &[f64; 4]) -> bool {
        -s[0].cos() - (s[1] + s[0]).cos() > 1.0
    }
}

/// The time derivative of the augmented state `[theta1, theta2, dtheta1, dtheta2, torque]`.
fn dsdt(s: &[f64; 5]) -> [f64; 5] {
    let (m1, m2, l1, lc1, lc2, i1, i2, g) =
        (LINK_MASS_1, LINK_MASS_2, LINK_LENGTH_1, LINK_COM_POS_1, LINK_COM_POS_2, LINK_MOI, LINK_MOI, 9.8);
    let a = s[4];
    let (theta1, theta2, dtheta1, dtheta2) = (s[0], s[1], s[2], s[3]);
    let d1 = m1 * (lc1 * lc1) + m2 * (l1 * l1 + lc2 * lc2 + 2.0 * l1 * lc2 * theta2.cos()) + i1 + i2;
    let d2 = m2 * (lc2 * lc2 + l1 * lc2 * theta2.cos()) + i2;
    let phi2 = m2 * lc2 * g * (theta1 + theta2 - PI / 2.0).cos();
    let phi1 = -m2 * l1 * lc2 * super::np_square(dtheta2) * theta2.sin() - 2.0 * m2 * l1 * lc2 * dtheta2 * dtheta1 * theta2.sin()
        + (m1 * lc1 + m2 * l1) * g * (theta1 - PI / 2.0).cos()
        + phi2;
    let ddtheta2 = (a + d2 / d1 * phi1 - m2 * l1 * lc2 * super::np_square(dtheta1) * theta2.sin() - phi2)
        / (m2 * (lc2 * lc2) + i2 - super::np_square(d2) / d1);
    let ddtheta1 = -(d2 * ddtheta2 + phi1) / d1;
    [dtheta1, dtheta2, ddtheta1, ddtheta2, 0.0]
}

fn axpy(y: &[f64; 5], h: f64, k: &[f64; 5]) -> [f64; 5] {
    std::array::from_fn(|i| y[i] + h * k[i])
}

/// One classical Runge-Kutta step over `[0, DT]`, as gymnasium's `rk4`.
fn rk4(y0: &[f64; 5]) -> [f64; 5] {
    let dt = DT - 0.0;
    let dt2 = dt / 2.0;
    let k1 = dsdt(y0);
    let k2 = dsdt(&axpy(y0, dt2, &k1));
    let k3 = dsdt(&axpy(y0, dt2, &k2));
    let k4 = dsdt(&axpy(y0, dt, &k3));
    std::array::from_fn(|i| y0[i] + dt / 6.0 * (k1[i] + 2.0 * k2[i] + 2.0 * k3[i] + k4[i]))
}

fn wrap(mut x: f64, m: f64, big_m: f64) -> f64 {
    let diff = big_m - m;
    while x > big_m {
        x -= diff;
    }
    while x < m {
        x += diff;
    }
    x
}

impl Env for Acrobot {
    fn id(&self) -> &str {
        "Acrobot-v1"
    }

    fn observation_space(&self) -> Space {
        let high = vec![1.0, 1.0, 1.0, 1.0, MAX_VEL_1 as f32, MAX_VEL_2 as f32];
        Space::Box { low: high.iter().map(|h| -h).collect(), high }
    }

    fn action_space(&self) -> Space {
        Space::Discrete { n: 3, start: 0 }
    }

    fn reset(&mut self, seed: Option<u64>) -> (Vec<f32>, Info) {
        let rng = super::reseed(&mut self.rng, seed);
        // gymnasium draws float64 and stores float32.
        let s = [0; 4].map(|_| rng.uniform(-0.1, 0.1) as f32 as f64);
        self.state = Some(s);
        (Self::obs(&s), Info::new())
    }

    fn step(&mut self, action: &Action) -> Result<Step> {
        let a = discrete(self.id(), action, 3)?;
        let s = self.state.ok_or_else(|| Error::NeedsReset(self.id().into()))?;
        let augmented = [s[0], s[1], s[2], s[3], AVAIL_TORQUE[a as usize]];
        let ns = rk4(&augmented);
        let ns =
            [wrap(ns[0], -PI, PI), wrap(ns[1], -PI, PI), ns[2].clamp(-MAX_VEL_1, MAX_VEL_1), ns[3].clamp(-MAX_VEL_2, MAX_VEL_2)];
        self.state = Some(ns);
        let terminated = Self::terminal(&ns);
        let reward = if terminated { 0.0 } else { -1.0 };
        Ok(Step { obs: Self::obs(&ns), reward, terminated, truncated: false, info: Info::new() })
    }

    fn state(&self) -> Vec<f64> {
        self.state.map(|s| s.to_vec()).unwrap_or_default()
    }

    fn set_state(&mut self, state: &[f64]) {
        self.state = Some(super::to_array(state));
    }

    fn reward_threshold(&self) -> Option<f64> {
        Some(-100.0)
    }
}
