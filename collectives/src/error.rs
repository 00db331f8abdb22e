use std::time::Duration;

/// What went wrong in a collective. Every variant says which group and what to do next.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CollectiveError {
    /// Some ranks did not arrive before the deadline.
    #[error("{op} #{seq} in group `{group}` timed out after {waited:?}: {}", missing_text(missing, detail))]
    Timeout { group: String, op: &'static str, seq: u64, waited: Duration, missing: Vec<usize>, detail: String },
    /// A peer's connection broke (its process died or it aborted the group).
    #[error("{op} #{seq} in group `{group}` failed: rank {peer} went away ({detail}); {}", missing_text(missing, ""))]
    PeerFailed { group: String, op: &'static str, seq: u64, peer: usize, missing: Vec<usize>, detail: String },
    /// The ranks called different collectives, or the same one with different shapes.
    #[error("ranks of group `{group}` disagree: {detail}")]
    Mismatch { group: String, detail: String },
    /// The caller passed something the collective cannot take.
    #[error("{0}")]
    InvalidArgument(String),
    /// This rank aborted the group.
    #[error("group `{group}` was aborted; create it again (with a new generation) to go on")]
    Aborted { group: String },
    /// An earlier collective failed, so the group's connections are in an unknown state.
    #[error("group `{group}` is broken by an earlier failure ({cause}); abort it and create it again")]
    Broken { group: String, cause: String },
    /// The ranks could not find each other.
    #[error("rendezvous of group `{group}` failed: {detail}")]
    Rendezvous { group: String, detail: String },
    /// The key-value store used for rendezvous failed.
    #[error("store: {0}")]
    Store(String),
    #[error("{0}")]
    Io(String),
    /// The backend cannot do this here (no GPU, no NCCL, ranks on different hosts for `shm`).
    #[error("{0}")]
    Unsupported(String),
}

fn missing_text(missing: &[usize], detail: &str) -> String {
    let who = match missing.len() {
        0 => "every rank arrived".to_string(),
        1 => format!("rank {} never arrived", missing[0]),
        _ => format!("ranks {missing:?} never arrived"),
    };
    if detail.is_empty() {
        who
    } else {
        format!("{who} ({detail})")
    }
}

impl CollectiveError {
    /// The ranks this error names as missing (empty for other errors).
    pub fn missing_ranks(&self) -> &[usize] {
        match self {
            CollectiveError::Timeout { missing, .. } | CollectiveError::PeerFailed { missing, .. } => missing,
            _ => &[],
        }
    }
}

pub type Result<T, E = CollectiveError> = std::result::Result<T, E>;
