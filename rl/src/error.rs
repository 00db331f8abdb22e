//! Errors of flare-rl.

/// A crate-wide result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No environment of that id is registered.
    #[error("no environment `{0}`; known ids: {1}")]
    UnknownEnv(String, String),
    /// `register` was given an id it cannot take.
    #[error("registering environment `{0}`: {1}")]
    Registration(String, String),
    /// The action does not fit the action space.
    #[error("invalid action {action} for {env}: expected {expected}")]
    InvalidAction { env: String, action: String, expected: String },
    /// `step` before `reset`, or after the episode ended without a reset.
    #[error("{0}: call reset() before step()")]
    NeedsReset(String),
    /// The Flare runtime failed (spawning env runners, sampling on them).
    #[error("runtime: {0}")]
    Runtime(String),
    /// The learner (candle) failed, or a checkpoint could not be written or read.
    #[error("learner: {0}")]
    Learner(String),
    /// A trace file could not be read or does not have the expected layout.
    #[error("trace {path}: {message}")]
    Trace { path: String, message: String },
}
