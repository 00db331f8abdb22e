/// What can go wrong in training.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid training configuration: {0}")]
    Config(String),
    #[error("the trainer cannot be scheduled: {0}")]
    Infeasible(String),
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error("training failed after {attempts} attempt(s) (max_failures {max_failures}): {last}")]
    Failed { attempts: usize, max_failures: i32, last: String },
    #[error("collective: {0}")]
    Collective(#[from] flare_collectives::CollectiveError),
    #[error("tensor: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error("runtime: {0}")]
    Runtime(#[from] flare_core::Error),
    #[error("{0}")]
    Io(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
