//! flare-rl: reinforcement learning on Flare. Today: gymnasium-compatible environments whose
//! dynamics match gymnasium 1.4.0 bit for bit, a time limit, vector environments with
//! gymnasium's next-step autoreset, and a replayer for recorded gymnasium traces.
//!
//! ```
//! use flare_rl::{make, Action};
//! let mut env = make("CartPole-v1").unwrap();
//! let (obs, _) = env.reset(Some(0));
//! assert_eq!(obs.len(), 4);
//! let step = env.step(&Action::Discrete(1)).unwrap();
//! assert_eq!(step.reward, 1.0);
//! ```

pub mod algo;
pub mod classic;
pub mod env;
pub mod error;
pub mod learner;
pub mod nn;
pub mod replay;
pub mod rng;
pub mod runner;
pub mod spaces;
pub mod vector;
pub mod wrappers;

pub use env::{make, register, registered, Action, Env, Info, Step, TimeLimit};
pub use error::{Error, Result};
pub use spaces::Space;
pub use vector::VectorEnv;

/// What `register_env!` expands to. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use ctor;
}
