//! Errors. [`Error`] is what the runtime's own calls return; [`TaskError`] is what a task or
//! actor call produced instead of a value, and crosses processes with a stable [`ErrorKind`].

use serde::{Deserialize, Serialize};
use std::fmt;

/// A crate-wide result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a task, actor call or `get` produced no value. Stable across processes: callers match on
/// it, never on the message text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The user's code panicked.
    UserPanic,
    /// The user's code returned `Err`.
    UserError,
    /// The worker process running the task died and no retries were left.
    WorkerDied,
    /// The actor is dead (killed, or out of restarts).
    ActorDied,
    /// The actor's process died and it is restarting; the call was not retried.
    ActorRestarting,
    /// The object's data is gone and it could not be rebuilt.
    ObjectLost,
    /// No node can ever satisfy the request.
    Infeasible,
    /// The task was cancelled.
    Cancelled,
    /// A `get` or `wait` deadline passed.
    TimedOut,
    /// A value could not be encoded or decoded (type mismatch between caller and callee).
    Serialization,
    /// No function or actor class of that name is registered in the worker binary.
    NotRegistered,
    /// A named actor or placement group was not found.
    NotFound,
    /// The runtime is not running (not initialized, or shut down).
    NotInitialized,
    /// An operating system or runtime failure (spawning a worker, shared memory, sockets).
    System,
}

impl ErrorKind {
    /// Whether trying the same thing again may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorKind::WorkerDied | ErrorKind::ActorRestarting | ErrorKind::TimedOut | ErrorKind::System)
    }
}

/// What a task produced instead of a value: the kind, the remote message, and where it happened.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskError {
    pub kind: ErrorKind,
    /// The message: a panic payload, the user error's `Display`, or the runtime's explanation.
    pub message: String,
    /// `file:line:col` of a panic, when known.
    pub location: Option<String>,
    /// The function or `Actor.method` that failed, when known.
    pub task_name: Option<String>,
}

impl TaskError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        TaskError { kind, message: message.into(), location: None, task_name: None }
    }

    pub(crate) fn with_task(mut self, name: &str) -> Self {
        if self.task_name.is_none() {
            self.task_name = Some(name.to_string());
        }
        self
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.task_name {
            Some(name) => write!(f, "{:?} in `{}`: {}", self.kind, name, self.message)?,
            None => write!(f, "{:?}: {}", self.kind, self.message)?,
        }
        if let Some(loc) = &self.location {
            write!(f, " (at {loc})")?;
        }
        Ok(())
    }
}

impl std::error::Error for TaskError {}

/// Errors of the runtime's own calls (`init`, `put`, `get`, spawning actors, placement groups).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A task or actor call failed; see [`TaskError::kind`].
    #[error("{0}")]
    Task(#[from] TaskError),
    /// The runtime was misconfigured or misused; the message says how to fix it.
    #[error("{0}")]
    Config(String),
    #[error("I/O error: {context}: {source}")]
    Io { context: String, source: std::io::Error },
}

impl Error {
    /// The stable kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Task(e) => e.kind,
            Error::Config(_) => ErrorKind::System,
            Error::Io { .. } => ErrorKind::System,
        }
    }

    /// The task error inside, if this is one.
    pub fn as_task_error(&self) -> Option<&TaskError> {
        match self {
            Error::Task(e) => Some(e),
            _ => None,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { context: context.into(), source }
    }
}

impl From<Error> for TaskError {
    fn from(e: Error) -> Self {
        match e {
            Error::Task(t) => t,
            other => TaskError::new(ErrorKind::System, other.to_string()),
        }
    }
}
