//! Flare Tune: hyperparameter sweeps, Ray Tune's model.

pub mod bench;
mod error;
pub mod rng;
pub mod search;
pub mod space;

pub use error::{Error, Result};
pub use search::{ConcurrencyLimiter, Mode, RandomSearch, Repeater, Searcher, Suggestion, Tpe, TpeConfig};
pub use space::{
    choice, grid_search, lograndint, loguniform, qloguniform, qrandint, quniform, randint, sample_from, uniform, Domain,
    ParamSpace,
};
