//! What a task, an actor and an actor call are, as submitted to the node, and the options
//! users set on them.

use crate::codec::{Arg, RefKey};
use crate::ids::{ActorId, ObjectId, PlacementGroupId, TaskId};
use crate::resources::{ResourceSet, CPU, GPU, MEMORY};
use crate::scheduler::{PlacementStrategy, SchedulingStrategy};
use serde::{Deserialize, Serialize};

/// Options of a remote function call (`f::options()...remote(..)`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskOptions {
    /// CPUs reserved while the task runs. Default 1.
    pub num_cpus: f64,
    /// GPUs reserved; fractions below 1 share a device. Default 0.
    pub num_gpus: f64,
    /// Memory reserved, in bytes (scheduling only, not enforced). Default 0.
    pub memory: u64,
    /// Custom resources by name.
    pub resources: Vec<(String, f64)>,
    /// Times the task is re-run after its worker dies (and after user errors with `retry_exceptions`). Default 3.
    pub max_retries: u32,
    /// Whether user errors and panics are retried too. Default false.
    pub retry_exceptions: bool,
    /// Where to run. Default: the hybrid policy.
    pub scheduling_strategy: SchedulingStrategy,
}

impl Default for TaskOptions {
    fn default() -> Self {
        TaskOptions {
            num_cpus: 1.0,
            num_gpus: 0.0,
            memory: 0,
            resources: Vec::new(),
            max_retries: 3,
            retry_exceptions: false,
            scheduling_strategy: SchedulingStrategy::Default,
        }
    }
}

/// Builds the resource request of a task or actor, rejecting bad values with a message.
pub(crate) fn resource_request(
    num_cpus: f64,
    num_gpus: f64,
    memory: u64,
    custom: &[(String, f64)],
) -> Result<ResourceSet, String> {
    let mut r = ResourceSet::new();
    r.set(CPU, num_cpus)?;
    r.set(GPU, num_gpus)?;
    r.set(MEMORY, memory as f64)?;
    for (name, amount) in custom {
        if name == CPU || name == GPU || name == MEMORY {
            return Err(format!("set `{name}` with its own option, not as a custom resource"));
        }
        r.set(name, *amount)?;
    }
    crate::resources::ResourcePool::validate_request(&r)?;
    Ok(r)
}

/// Options of an actor (`A::remote(..).options(..)` or the builder methods).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ActorOptions {
    /// CPUs reserved for the actor's lifetime. Default 0 (Ray's default for a running actor).
    pub num_cpus: f64,
    /// GPUs reserved for the actor's lifetime. Default 0.
    pub num_gpus: f64,
    /// Memory reserved, in bytes. Default 0.
    pub memory: u64,
    /// Custom resources.
    pub resources: Vec<(String, f64)>,
    /// Restarts after the process dies; -1 is unlimited. Default 0.
    pub max_restarts: i32,
    /// Retries of a call that was running when the process died; -1 is unlimited. Default 0.
    pub max_task_retries: i32,
    /// Calls that may run at once (threads, or tasks of an async actor). Default 1 (1000 for async actors).
    pub max_concurrency: Option<u32>,
    /// A name other processes can look the actor up by.
    pub name: Option<String>,
    /// The namespace of the name. Default "default".
    pub namespace: Option<String>,
    /// A detached actor outlives its handles and lives until killed or the cluster stops.
    pub detached: bool,
    /// Where to run.
    pub scheduling_strategy: SchedulingStrategy,
}

impl Default for ActorOptions {
    fn default() -> Self {
        ActorOptions {
            num_cpus: 0.0,
            num_gpus: 0.0,
            memory: 0,
            resources: Vec::new(),
            max_restarts: 0,
            max_task_retries: 0,
            max_concurrency: None,
            name: None,
            namespace: None,
            detached: false,
            scheduling_strategy: SchedulingStrategy::Default,
        }
    }
}

/// A normal task as the node receives it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskSpec {
    pub task_id: TaskId,
    /// The registered function name.
    pub name: String,
    pub args: Vec<Arg>,
    /// References inside `Value` args; kept alive until the task ends.
    pub contained: Vec<RefKey>,
    pub resources: ResourceSet,
    pub strategy: SchedulingStrategy,
    pub max_retries: u32,
    pub retry_exceptions: bool,
}

impl TaskSpec {
    pub fn return_id(&self) -> ObjectId {
        ObjectId::for_return(self.task_id, 0)
    }
}

/// An actor creation as the node receives it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ActorSpec {
    pub actor_id: ActorId,
    /// The registered actor class name.
    pub class: String,
    pub args: Vec<Arg>,
    pub contained: Vec<RefKey>,
    pub resources: ResourceSet,
    pub strategy: SchedulingStrategy,
    pub max_restarts: i32,
    pub max_task_retries: i32,
    pub max_concurrency: u32,
    pub is_async: bool,
    pub name: Option<String>,
    pub namespace: String,
    pub detached: bool,
}

/// A call on an actor as the node receives it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ActorCallSpec {
    pub task_id: TaskId,
    pub actor_id: ActorId,
    pub method: String,
    pub args: Vec<Arg>,
    pub contained: Vec<RefKey>,
}

impl ActorCallSpec {
    pub fn return_id(&self) -> ObjectId {
        ObjectId::for_return(self.task_id, 0)
    }
}

/// A placement group creation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PlacementGroupSpec {
    pub id: PlacementGroupId,
    pub bundles: Vec<ResourceSet>,
    pub strategy: PlacementStrategy,
    pub name: Option<String>,
    /// Outlives the driver that made it (Ray's `lifetime="detached"`), until removed.
    #[serde(default)]
    pub detached: bool,
}
