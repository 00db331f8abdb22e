//! Identifiers. Each kind is its own newtype so an `ActorId` can never be passed where a
//! `TaskId` is expected, and an `ObjectId` is derived from the task that creates it (Ray's
//! `id.h`), which is what lineage reconstruction needs.
//!
//! ```compile_fail
//! use flare_core::ids::{ActorId, TaskId};
//! fn takes_task(_: TaskId) {}
//! takes_task(ActorId(1));
//! ```

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bits of a [`TaskId`] that hold the per-process counter; the bits above hold the issuing process.
const COUNTER_BITS: u32 = 40;

/// A task (or `put`) issued by one process. The high bits name the issuing process (0 is the
/// driver, workers use their [`WorkerId`]), so any process mints ids without asking the node.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TaskId(pub u64);

/// The `index`-th output of the task that created it; `put` objects have a task id of their own.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectId {
    pub task: TaskId,
    pub index: u32,
}

/// An actor, unique within a cluster session.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ActorId(pub u64);

/// A worker process, unique within a node session. 0 is reserved for the driver.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WorkerId(pub u64);

/// A placement group.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PlacementGroupId(pub u64);

/// A node of the cluster. The embedded single-node cluster has node 0.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId(pub u32);

impl WorkerId {
    /// The driver process: the user's `main`.
    pub const DRIVER: WorkerId = WorkerId(0);
}

impl TaskId {
    /// The process that issued this task.
    pub fn issuer(self) -> WorkerId {
        WorkerId(self.0 >> COUNTER_BITS)
    }
}

impl ObjectId {
    /// The object a task returns (single-return tasks use index 0).
    pub fn for_return(task: TaskId, index: u32) -> ObjectId {
        ObjectId { task, index }
    }
}

/// Mints task ids for one process.
pub(crate) struct IdGenerator {
    issuer: u64,
    counter: AtomicU64,
}

impl IdGenerator {
    pub(crate) fn new(issuer: WorkerId) -> Self {
        IdGenerator { issuer: issuer.0 << COUNTER_BITS, counter: AtomicU64::new(1) }
    }

    pub(crate) fn next_task(&self) -> TaskId {
        TaskId(self.issuer | self.counter.fetch_add(1, Ordering::Relaxed))
    }
}

macro_rules! display_id {
    ($ty:ident, $prefix:literal) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{:x}"), self.0)
            }
        }
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }
    };
}
display_id!(TaskId, "task-");
display_id!(ActorId, "actor-");
display_id!(WorkerId, "worker-");
display_id!(PlacementGroupId, "pg-");
display_id!(NodeId, "node-");

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "obj-{:x}.{}", self.task.0, self.index)
    }
}
impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
