//! CartPole-v1: keep a pole balanced on a cart (gymnasium `classic_control/cartpole.py`).

use crate::env::{discrete, Action, Env, Info, Step};
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::spaces::Space;

pub struct CartPole {
    gravity: f64,
    masspole: f64,
    total_mass: f64,
    length: f64,
    polemass_length: f64,
    force_mag: f64,
    tau: f64,
    theta_threshold_radians: f64,
    x_threshold: f64,
    state: Option<[f64; 4]>,
    steps_beyond_terminated: Option<u32>,
    rng: Option<Rng>,
}

impl Default for CartPole {
    fn default() -> Self {
        Self::new()
    }
}

impl CartPole {
    pub fn new() -> Self {
        let (masscart, masspole, length) = (1.0, 0.1, 0.5);
        CartPole {
            gravity: 9.8,
            masspole,
            total_mass: masspole + masscart,
            length,
            polemass_length: masspole * length,
            force_mag: 10.0,
            tau: 0.02,
            theta_threshold_radians: 12.0 * 2.0 * std::f64::consts::PI / 360.0,
            x_threshold: 2.4,
            state: None,
            steps_beyond_terminated: None,
            rng: None,
        }
    }

    fn obs(s: &[f64; 4]) -> Vec<f32> {
        s.iter().map(|v| *v as f32).collect()
    }
}

impl Env for CartPole {
    fn id(&self) -> &str {
        "CartPole-v1"
    }

    fn observation_space(&self) -> Space {
        let x = (self.x_threshold * 2.0) as f32;
        let t = (self.theta_threshold_radians * 2.0) as f32;
        Space::Box { low: vec![-x, f32::NEG_INFINITY, -t, f32::NEG_INFINITY], high: vec![x, f32::INFINITY, t, f32::INFINITY] }
    }

    fn action_space(&self) -> Space {
        Space::Discrete { n: 2, start: 0 }
    }

    fn reset(&mut self, seed: Option<u64>) -> (Vec<f32>, Info) {
        let rng = super::reseed(&mut self.rng, seed);
        let s = [0; 4].map(|_| rng.uniform(-0.05, 0.05));
        self.state = Some(s);
        self.steps_beyond_terminated = None;
        (Self::obs(&s), Info::new())
    }

    fn step(&mut self, action: &Action) -> Result<Step> {
        let a = discrete(self.id(), action, 2)?;
        let [x, x_dot, theta, theta_dot] = self.state.ok_or_else(|| Error::NeedsReset(self.id().into()))?;
        let force = if a == 1 { self.force_mag } else { -self.force_mag };
        let costheta = theta.cos();
        let sintheta = theta.sin();
        let temp = (force + self.polemass_length * (theta_dot * theta_dot) * sintheta) / self.total_mass;
        let thetaacc = (self.gravity * sintheta - costheta * temp)
            / (self.length * (4.0 / 3.0 - self.masspole * (costheta * costheta) / self.total_mass));
        let xacc = temp - self.polemass_length * thetaacc * costheta / self.total_mass;
        // Euler integration, as gymnasium's default `kinematics_integrator`.
        let x = x + self.tau * x_dot;
        let x_dot = x_dot + self.tau * xacc;
        let theta = theta + self.tau * theta_dot;
        let theta_dot = theta_dot + self.tau * thetaacc;
        let s = [x, x_dot, theta, theta_dot];
        self.state = Some(s);
        let terminated = x < -self.x_threshold
            || x > self.x_threshold
            || theta < -self.theta_threshold_radians
            || theta > self.theta_threshold_radians;
        let reward = if !terminated {
            1.0
        } else if self.steps_beyond_terminated.is_none() {
            self.steps_beyond_terminated = Some(0);
            1.0
        } else {
            // Stepping past termination: gymnasium warns and gives 0.
            *self.steps_beyond_terminated.as_mut().expect("set") += 1;
            0.0
        };
        Ok(Step { obs: Self::obs(&s), reward, terminated, truncated: false, info: Info::new() })
    }

    fn state(&self) -> Vec<f64> {
        self.state.map(|s| s.to_vec()).unwrap_or_default()
    }

    fn set_state(&mut self, state: &[f64]) {
        self.state = Some(super::to_array(state));
        self.steps_beyond_terminated = None;
    }

    fn reward_threshold(&self) -> Option<f64> {
        Some(475.0)
    }
}
