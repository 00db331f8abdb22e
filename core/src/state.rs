//! The state API: what tasks, actors, objects, placement groups and workers exist and what
//! state each is in (what `ray list ...` shows). See `docs/design/` for the state machines.

use crate::ids::{ActorId, NodeId, ObjectId, PlacementGroupId, TaskId, WorkerId};
use crate::resources::ResourceSet;
use crate::scheduler::PlacementStrategy;
use serde::{Deserialize, Serialize};

/// A task's state (Ray's names in comments).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TaskState {
    /// Waiting for its argument objects (PENDING_ARGS_AVAIL).
    PendingArgs,
    /// Waiting for resources (PENDING_NODE_ASSIGNMENT).
    PendingScheduling,
    /// Resources taken, waiting for a worker process to start (SUBMITTED_TO_WORKER).
    PendingWorker,
    /// Waiting out a retry backoff after a failure.
    PendingRetry,
    Running,
    Finished,
    Failed,
    Cancelled,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskInfo {
    pub task_id: TaskId,
    /// The function, or `Class.method` for actor calls, or `Class.__init__` for creations.
    pub name: String,
    pub state: TaskState,
    pub attempt: u32,
    pub worker: Option<WorkerId>,
    pub actor: Option<ActorId>,
    pub error: Option<String>,
}

/// An actor's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ActorState {
    DependenciesUnready,
    PendingCreation,
    Alive,
    Restarting,
    Dead,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ActorInfo {
    pub actor_id: ActorId,
    pub class: String,
    pub state: ActorState,
    pub name: Option<String>,
    pub namespace: String,
    pub pid: Option<u32>,
    pub restarts: u32,
    pub death_cause: Option<String>,
    /// The node its worker runs on.
    pub node: Option<NodeId>,
}

/// Where an object's bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ObjectLocation {
    /// Not created yet (its task has not finished).
    Pending,
    /// Small, held in the node's memory and sent inline.
    Inline,
    /// In the node's shared-memory store.
    SharedMemory,
    /// Spilled to local disk.
    Spilled,
    /// The task failed; `get` returns its error.
    Error,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ObjectInfo {
    pub object_id: ObjectId,
    pub size: u64,
    pub location: ObjectLocation,
    /// Processes holding an `ObjectRef` to it.
    pub holders: u32,
    /// Pending tasks that use it as an argument.
    pub task_refs: u32,
    /// Other objects (or task arguments) that contain a reference to it.
    pub contained_in: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PlacementGroupState {
    Pending,
    Created,
    Infeasible,
    Removed,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PlacementGroupInfo {
    pub id: PlacementGroupId,
    pub name: Option<String>,
    pub state: PlacementGroupState,
    pub strategy: PlacementStrategy,
    pub bundles: Vec<ResourceSet>,
    /// The GPU ids reserved for each bundle, once created.
    pub bundle_gpu_ids: Vec<Vec<u32>>,
    /// Another driver's group that this one uses (found by name): which driver made it.
    #[serde(default)]
    pub creator: Option<String>,
    /// Outlives the driver that made it.
    #[serde(default)]
    pub detached: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WorkerState {
    Starting,
    Idle,
    Busy,
    /// Dedicated to an actor.
    Actor,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub worker_id: WorkerId,
    pub pid: Option<u32>,
    pub state: WorkerState,
    /// The GPU ids the worker was started with (its `CUDA_VISIBLE_DEVICES`).
    pub gpu_ids: Vec<u32>,
    pub node: NodeId,
}

/// A node the driver schedules on: its own (`is_local`), or a node agent of the cluster it joined.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeInfo {
    pub node_id: NodeId,
    /// The node's name in the head's node table (`local` for the driver's own node).
    pub name: String,
    /// Where its agent listens (empty for the driver's own node).
    pub address: String,
    pub is_local: bool,
    pub total: ResourceSet,
    pub available: ResourceSet,
    pub labels: Vec<(String, String)>,
}

/// Totals and what is free, and the store's use.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterResources {
    pub total: ResourceSet,
    pub available: ResourceSet,
    pub store_capacity: u64,
    pub store_used: u64,
    pub spilled_bytes_total: u64,
    /// Node labels, e.g. `accelerator_type=H200`.
    pub labels: Vec<(String, String)>,
    /// The session directory (logs are in its `logs/`).
    pub session_dir: String,
    /// Where the object store keeps large objects (one file per object).
    pub shm_dir: String,
}

/// One answer of the state API.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StateSnapshot {
    pub tasks: Vec<TaskInfo>,
    pub actors: Vec<ActorInfo>,
    pub objects: Vec<ObjectInfo>,
    pub placement_groups: Vec<PlacementGroupInfo>,
    pub workers: Vec<WorkerInfo>,
    pub resources: Option<ClusterResources>,
    pub nodes: Vec<NodeInfo>,
}
