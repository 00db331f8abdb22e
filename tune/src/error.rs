/// What can go wrong in a sweep.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid tune configuration: {0}")]
    Config(String),
    #[error("the trials cannot be scheduled: {0}")]
    Infeasible(String),
    #[error("experiment state: {0}")]
    State(String),
    #[error("runtime: {0}")]
    Runtime(#[from] flare_core::Error),
    #[error("{0}")]
    Io(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
