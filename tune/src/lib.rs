//! Flare Tune: hyperparameter sweeps, Ray Tune's model.

pub mod bench;
mod error;
pub mod rng;
pub mod schedulers;
pub mod search;
pub mod space;
mod trial;
mod tuner;

pub use error::{Error, Result};
pub use schedulers::{Asha, Decision, Fifo, HyperBand, MedianStopping, Pbt, TrialScheduler};
pub use search::{ConcurrencyLimiter, Mode, RandomSearch, Repeater, Searcher, Suggestion, Tpe, TpeConfig};
pub use space::{
    choice, grid_search, lograndint, loguniform, qloguniform, qrandint, quniform, randint, sample_from, uniform, Domain,
    ParamSpace,
};
pub use trial::{BoxError, Trainable, TrialContext, TrialWorker};
pub use tuner::{
    progress_table, tuner_journal_name, with_resources, FailureConfig, Resources, ResultGrid, RunConfig, TrialResult,
    TrialStatus, TuneConfig, Tuner, WithResources, JOURNAL,
};
