//! The environment API (gymnasium's): `reset(seed) -> (obs, info)` and
//! `step(action) -> (obs, reward, terminated, truncated, info)`, the `TimeLimit` wrapper, and
//! `make` for the built-in environments. Implement [`Env`] for your own environments.

use crate::classic;
use crate::error::{Error, Result};
use crate::spaces::Space;
use std::collections::BTreeMap;

/// An action: an integer for `Discrete` spaces, float32 values for `Box` spaces.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Discrete(i64),
    Continuous(Vec<f32>),
    MultiDiscrete(Vec<i64>),
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Discrete(a) => write!(f, "{a}"),
            Action::Continuous(v) => write!(f, "{v:?}"),
            Action::MultiDiscrete(v) => write!(f, "{v:?}"),
        }
    }
}

/// Extra facts about a step (episode statistics, say).
pub type Info = BTreeMap<String, f64>;

/// What `step` returns.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub obs: Vec<f32>,
    pub reward: f64,
    /// The episode reached a terminal state of the task.
    pub terminated: bool,
    /// The episode was cut short (a time limit).
    pub truncated: bool,
    pub info: Info,
}

/// An environment with float32 observations.
pub trait Env: Send {
    /// The registry id, e.g. `CartPole-v1`.
    fn id(&self) -> &str;
    fn observation_space(&self) -> Space;
    fn action_space(&self) -> Space;
    /// Starts an episode; `Some(seed)` reseeds the environment's generator.
    fn reset(&mut self, seed: Option<u64>) -> (Vec<f32>, Info);
    fn step(&mut self, action: &Action) -> Result<Step>;
    /// The physical state (`env.unwrapped.state` in gymnasium), for replays and debugging.
    fn state(&self) -> Vec<f64>;
    /// Sets the physical state, as if an episode had just been reset into it.
    fn set_state(&mut self, state: &[f64]);
    /// The reward at which the task counts as solved (gymnasium's registry value).
    fn reward_threshold(&self) -> Option<f64> {
        None
    }
}

/// A boxed environment is one (so wrappers take what `make` returns).
impl Env for Box<dyn Env> {
    fn id(&self) -> &str {
        (**self).id()
    }
    fn observation_space(&self) -> Space {
        (**self).observation_space()
    }
    fn action_space(&self) -> Space {
        (**self).action_space()
    }
    fn reset(&mut self, seed: Option<u64>) -> (Vec<f32>, Info) {
        (**self).reset(seed)
    }
    fn step(&mut self, action: &Action) -> Result<Step> {
        (**self).step(action)
    }
    fn state(&self) -> Vec<f64> {
        (**self).state()
    }
    fn set_state(&mut self, state: &[f64]) {
        (**self).set_state(state)
    }
    fn reward_threshold(&self) -> Option<f64> {
        (**self).reward_threshold()
    }
}

/// Ends episodes after `max_episode_steps` steps with `truncated = true` (gymnasium's `TimeLimit`).
pub struct TimeLimit<E> {
    env: E,
    max_episode_steps: u32,
    elapsed: u32,
}

impl<E: Env> TimeLimit<E> {
    pub fn new(env: E, max_episode_steps: u32) -> Self {
        TimeLimit { env, max_episode_steps, elapsed: 0 }
    }

    pub fn inner(&self) -> &E {
        &self.env
    }

    pub fn max_episode_steps(&self) -> u32 {
        self.max_episode_steps
    }
}

impl<E: Env> Env for TimeLimit<E> {
    fn id(&self) -> &str {
        self.env.id()
    }
    fn observation_space(&self) -> Space {
        self.env.observation_space()
    }
    fn action_space(&self) -> Space {
        self.env.action_space()
    }
    fn reset(&mut self, seed: Option<u64>) -> (Vec<f32>, Info) {
        self.elapsed = 0;
        self.env.reset(seed)
    }
    fn step(&mut self, action: &Action) -> Result<Step> {
        let mut s = self.env.step(action)?;
        self.elapsed += 1;
        if self.elapsed >= self.max_episode_steps {
            s.truncated = true;
        }
        Ok(s)
    }
    fn state(&self) -> Vec<f64> {
        self.env.state()
    }
    fn set_state(&mut self, state: &[f64]) {
        self.elapsed = 0;
        self.env.set_state(state)
    }
    fn reward_threshold(&self) -> Option<f64> {
        self.env.reward_threshold()
    }
}

/// The built-in ids, with their registry time limits.
pub fn registered() -> &'static [(&'static str, u32)] {
    &[("CartPole-v1", 500), ("Acrobot-v1", 500), ("MountainCar-v0", 200), ("MountainCarContinuous-v0", 999), ("Pendulum-v1", 200)]
}

/// What makes a registered environment.
pub type EnvFactory = fn() -> Box<dyn Env>;

static CUSTOM: std::sync::Mutex<Vec<(String, u32, EnvFactory)>> = std::sync::Mutex::new(Vec::new());

/// Registers a user environment under `id` with its time limit, as `gymnasium.register` does;
/// `make(id)` then builds it, and so do the training loops. A driver and its env runners are
/// separate processes: register with [`register_env!`](crate::register_env), which runs
/// before `main` in every process of the program, so that the runners know the id too.
pub fn register(id: &str, max_episode_steps: u32, factory: EnvFactory) -> Result<()> {
    if id.is_empty() || max_episode_steps == 0 {
        return Err(Error::Registration(id.to_string(), "an id needs a name and a time limit of at least one step".into()));
    }
    let mut custom = CUSTOM.lock().unwrap_or_else(|p| p.into_inner());
    if registered().iter().any(|(n, _)| *n == id) || custom.iter().any(|(n, _, _)| n == id) {
        return Err(Error::Registration(id.to_string(), "this id is registered already; pick another".into()));
    }
    custom.push((id.to_string(), max_episode_steps, factory));
    Ok(())
}

/// Registers an environment in every process of the program (driver and workers) before
/// `main` runs: `flare_rl::register_env!("Corridor-v0", 100, || Box::new(Corridor::default()));`
#[macro_export]
macro_rules! register_env {
    ($id:expr, $max_episode_steps:expr, $factory:expr) => {
        const _: () = {
            #[$crate::__private::ctor::ctor]
            fn __flare_rl_register_env() {
                if let Err(e) = $crate::env::register($id, $max_episode_steps, $factory) {
                    eprintln!("flare-rl: {e}");
                }
            }
        };
    };
}

/// Makes an environment wrapped in its registry time limit, as `gymnasium.make` does: a
/// built-in one, or one registered with [`register`].
pub fn make(id: &str) -> Result<Box<dyn Env>> {
    let limit = registered().iter().find(|(name, _)| *name == id).map(|(_, l)| *l);
    let Some(limit) = limit else {
        let custom = CUSTOM.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, limit, factory)) = custom.iter().find(|(n, _, _)| n == id) {
            return Ok(Box::new(TimeLimit::new(factory(), *limit)));
        }
        let known: Vec<&str> = registered().iter().map(|(n, _)| *n).chain(custom.iter().map(|(n, _, _)| n.as_str())).collect();
        return Err(Error::UnknownEnv(id.to_string(), known.join(", ")));
    };
    Ok(match id {
        "CartPole-v1" => Box::new(TimeLimit::new(classic::CartPole::new(), limit)),
        "Acrobot-v1" => Box::new(TimeLimit::new(classic::Acrobot::new(), limit)),
        "MountainCar-v0" => Box::new(TimeLimit::new(classic::MountainCar::new(), limit)),
        "MountainCarContinuous-v0" => Box::new(TimeLimit::new(classic::MountainCarContinuous::new(), limit)),
        _ => Box::new(TimeLimit::new(classic::Pendulum::new(), limit)),
    })
}

/// Checks a discrete action against `0..n`.
pub(crate) fn discrete(env: &str, action: &Action, n: i64) -> Result<i64> {
    match action {
        Action::Discrete(a) if (0..n).contains(a) => Ok(*a),
        other => {
            Err(Error::InvalidAction { env: env.to_string(), action: other.to_string(), expected: format!("Discrete({n})") })
        }
    }
}

/// Checks a one-dimensional continuous action (any finite value: the env clips it).
pub(crate) fn continuous1(env: &str, action: &Action) -> Result<f32> {
    match action {
        Action::Continuous(v) if v.len() == 1 && v[0].is_finite() => Ok(v[0]),
        other => Err(Error::InvalidAction {
            env: env.to_string(),
            action: other.to_string(),
            expected: "a Box of one finite float32".into(),
        }),
    }
}
