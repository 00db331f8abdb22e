//! # Flare
//!
//! A GPU-first distributed runtime for ML, modeled on Ray: tasks, actors, a shared-memory object
//! store, and a scheduler that treats GPUs (whole and fractional) as first-class resources.
//!
//! ```no_run
//! use flare::prelude::*;
//!
//! #[flare::remote]
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! fn main() -> flare::Result<()> {
//!     flare::init()?;
//!     let refs: Vec<_> = (0..4).map(|i| square::remote(i)).collect();
//!     assert_eq!(flare::get_all(&refs)?, vec![0, 1, 4, 9]);
//!     Ok(())
//! }
//! ```
//!
//! Worker processes run the same executable as the driver, so every `#[flare::remote]`
//! function and `#[flare::actor]` class is found by name in the workers.

extern crate self as flare;

pub use flare_core::*;
pub use flare_macros::{actor, main, remote};

/// Reinforcement learning: gymnasium-exact environments, vector environments, trace replay.
pub use flare_rl as rl;

/// Collective communication: ring (TCP), shared memory and NCCL groups.
pub use flare_collectives as collectives;

/// GPU devices and discovery.
pub use flare_gpu as gpu;

/// Hyperparameter sweeps: search spaces, searchers (random, TPE), the Tuner.
pub use flare_tune as tune;

/// Data-parallel training: Trainer, DDP gradient all-reduce, torch-exact optimizers, checkpoints.
pub use flare_train as train;

/// Model serving: deployments, replicas, the HTTP proxy, dynamic batching, autoscaling.
pub use flare_serve as serve;

/// What most programs need: `use flare::prelude::*`.
pub mod prelude {
    pub use flare_core::{
        get, get_all, put, wait, ActorHandle, ActorOptions, Buffer, Bundle, Config, Error, ErrorKind, ObjectRef, PlacementGroup,
        PlacementStrategy, Result, SchedulingStrategy, TaskError, TaskOptions,
    };
}
