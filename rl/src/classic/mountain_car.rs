//! MountainCar-v0 and MountainCarContinuous-v0: drive an underpowered car up a hill
//! (gymnasium `classic_control/mountain_car.py` and `continuous_mountain_car.py`).

use crate::env::{continuous1, discrete, Action, Env, Info, Step};
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::spaces::Space;

const MIN_POSITION: f64 = -1.2;
const MAX_POSITION: f64 = 0.6;
const MAX_SPEED: f64 = 0.07;

fn obs_space() -> Space {
    Space::Box { low: vec![MIN_POSITION as f32, -MAX_SPEED as f32], high: vec![MAX_POSITION as f32, MAX_SPEED as f32] }
}

/// The discrete-action car: push left, no push, push right.
pub struct MountainCar {
    state: Option<[f64; 2]>,
    rng: Option<Rng>,
}

impl Default for MountainCar {
    fn default() -> Self {
        Self::new()
    }
}

impl MountainCar {
    const GOAL_POSITION: f64 = 0.5;
    const GOAL_VELOCITY: f64 = 0.0;
    const FORCE: f64 = 0.001;
    const GRAVITY: f64 = 0.0025;

    pub fn new() -> Self {
        MountainCar { state: None, rng: None }
    }
}

impl Env for MountainCar {
    fn id(&self) -> &str {
        "MountainCar-v0"
    }
    fn observation_space(&self) -> Space {
        obs_space()
    }
    fn action_space(&self) -> Space {
        Space::Discrete { n: 3, start: 0 }
    }

    fn reset(&mut self, seed: Option<u64>) -> (Vec<f32>, Info) {
        let rng = super::reseed(&mut self.rng, seed);
        let s = [rng.uniform(-0.6, -0.4), 0.0];
        self.state = Some(s);
        (vec![s[0] as f32, s[1] as f32], Info::new())
    }

    fn step(&mut self, action: &Action) -> Result<Step> {
        let a = discrete(self.id(), action, 3)?;
        let [mut position, mut velocity] = self.state.ok_or_else(|| Error::NeedsReset(self.id().into()))?;
        velocity += (a - 1) as f64 * Self::FORCE + (3.0 * position).cos() * (-Self::GRAVITY);
        velocity = velocity.clamp(-MAX_SPEED, MAX_SPEED);
        position += velocity;
        position = position.clamp(MIN_POSITION, MAX_POSITION);
        if position == MIN_POSITION && velocity < 0.0 {
            velocity = 0.0;
        }
        let terminated = position >= Self::GOAL_POSITION && velocity >= Self::GOAL_VELOCITY;
        self.state = Some([position, velocity]);
        Ok(Step { obs: vec![position as f32, velocity as f32], reward: -1.0, terminated, truncated: false, info: Info::new() })
    }

    fn state(&self) -> Vec<f64> {
        self.state.map(|s| s.to_vec()).unwrap_or_default()
    }
    fn set_state(&mut self, state: &[f64]) {
        self.state = Some(super::to_array(state));
    }
    fn reward_threshold(&self) -> Option<f64> {
        Some(-110.0)
    }
}

/// A numpy scalar or Python float, to follow NumPy 2's promotion rules (NEP 50) exactly:
/// a Python float is "weak" and takes the numpy operand's type; float32 with float64 is float64.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Num {
    F32(f32),
    F64(f64),
    Py(f64),
}

impl Num {
    fn f64(self) -> f64 {
        match self {
            Num::F32(v) => v as f64,
            Num::F64(v) | Num::Py(v) => v,
        }
    }

    fn binop(self, other: Num, f32op: fn(f32, f32) -> f32, f64op: fn(f64, f64) -> f64) -> Num {
        use Num::*;
        match (self, other) {
            (F32(a), F32(b)) => F32(f32op(a, b)),
            (F32(a), Py(b)) => F32(f32op(a, b as f32)),
            (Py(a), F32(b)) => F32(f32op(a as f32, b)),
            (Py(a), Py(b)) => Py(f64op(a, b)),
            (a, b) => F64(f64op(a.f64(), b.f64())),
        }
    }

    fn add(self, o: Num) -> Num {
        self.binop(o, |a, b| a + b, |a, b| a + b)
    }
    fn sub(self, o: Num) -> Num {
        self.binop(o, |a, b| a - b, |a, b| a - b)
    }
    fn mul(self, o: Num) -> Num {
        self.binop(o, |a, b| a * b, |a, b| a * b)
    }

    /// `self > other` as numpy compares (a Python float is cast to the numpy type first).
    fn gt(self, o: Num) -> bool {
        self.cmp_with(o, |a, b| a > b, |a, b| a > b)
    }
    fn lt(self, o: Num) -> bool {
        self.cmp_with(o, |a, b| a < b, |a, b| a < b)
    }
    fn ge(self, o: Num) -> bool {
        self.cmp_with(o, |a, b| a >= b, |a, b| a >= b)
    }
    fn eq(self, o: Num) -> bool {
        self.cmp_with(o, |a, b| a == b, |a, b| a == b)
    }

    fn cmp_with(self, o: Num, f32cmp: fn(f32, f32) -> bool, f64cmp: fn(f64, f64) -> bool) -> bool {
        use Num::*;
        match (self, o) {
            (F32(a), F32(b)) => f32cmp(a, b),
            (F32(a), Py(b)) => f32cmp(a, b as f32),
            (Py(a), F32(b)) => f32cmp(a as f32, b),
            (a, b) => f64cmp(a.f64(), b.f64()),
        }
    }
}

/// The continuous-action car. Its state is float64 after reset and float32 after each step, and
/// its arithmetic mixes the two the way numpy does, which is what makes it bit-exact.
pub struct MountainCarContinuous {
    state: Option<[Num; 2]>,
    rng: Option<Rng>,
}

impl Default for MountainCarContinuous {
    fn default() -> Self {
        Self::new()
    }
}

impl MountainCarContinuous {
    const GOAL_POSITION: f64 = 0.45;
    const POWER: f64 = 0.0015;

    pub fn new() -> Self {
        MountainCarContinuous { state: None, rng: None }
    }
}

impl Env for MountainCarContinuous {
    fn id(&self) -> &str {
        "MountainCarContinuous-v0"
    }
    fn observation_space(&self) -> Space {
        obs_space()
    }
    fn action_space(&self) -> Space {
        Space::Box { low: vec![-1.0], high: vec![1.0] }
    }

    fn reset(&mut self, seed: Option<u64>) -> (Vec<f32>, Info) {
        let rng = super::reseed(&mut self.rng, seed);
        let p = rng.uniform(-0.6, -0.4);
        self.state = Some([Num::F64(p), Num::F64(0.0)]);
        (vec![p as f32, 0.0], Info::new())
    }

    fn step(&mut self, action: &Action) -> Result<Step> {
        let u = continuous1(self.id(), action)?;
        let [mut position, mut velocity] = self.state.ok_or_else(|| Error::NeedsReset(self.id().into()))?;
        // Python's max/min return one of their arguments: the float32 action when inside the
        // bounds, the Python float bound when clipped.
        let force = if -1.0 > u as f64 { Num::Py(-1.0) } else { Num::F32(u) };
        let force = if 1.0 < force.f64() { Num::Py(1.0) } else { force };
        let three_pos = Num::Py(3.0).mul(position);
        let slope = Num::Py(0.0025 * three_pos.f64().cos());
        velocity = velocity.add(force.mul(Num::Py(Self::POWER)).sub(slope));
        if velocity.gt(Num::Py(MAX_SPEED)) {
            velocity = Num::Py(MAX_SPEED);
        }
        if velocity.lt(Num::Py(-MAX_SPEED)) {
            velocity = Num::Py(-MAX_SPEED);
        }
        position = position.add(velocity);
        if position.gt(Num::Py(MAX_POSITION)) {
            position = Num::Py(MAX_POSITION);
        }
        if position.lt(Num::Py(MIN_POSITION)) {
            position = Num::Py(MIN_POSITION);
        }
        if position.eq(Num::Py(MIN_POSITION)) && velocity.lt(Num::Py(0.0)) {
            velocity = Num::Py(0.0);
        }
        let terminated = position.ge(Num::Py(Self::GOAL_POSITION)) && velocity.ge(Num::Py(0.0));
        let mut reward = if terminated { 100.0 } else { 0.0 };
        // The reward uses the unclipped action, squared in float64 by math.pow.
        reward -= super::np_square(u as f64) * 0.1;
        let s = [Num::F32(position.f64() as f32), Num::F32(velocity.f64() as f32)];
        self.state = Some(s);
        Ok(Step { obs: vec![s[0].f64() as f32, s[1].f64() as f32], reward, terminated, truncated: false, info: Info::new() })
    }

    fn state(&self) -> Vec<f64> {
        self.state.map(|s| vec![s[0].f64(), s[1].f64()]).unwrap_or_default()
    }

    /// Sets a float64 state, as right after a reset.
    fn set_state(&mut self, state: &[f64]) {
        self.state = Some(super::to_array::<2>(state).map(Num::F64));
    }

    fn reward_threshold(&self) -> Option<f64> {
        Some(90.0)
    }
}
