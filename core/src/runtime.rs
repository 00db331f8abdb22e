//! The process-wide runtime: which core this process talks to (the embedded node in a driver,
//! the node's socket in a worker), and the process's own reference table.

use crate::codec::{Payload, RefKey};
use crate::error::{ErrorKind, TaskError};
use crate::ids::{ActorId, IdGenerator, ObjectId, PlacementGroupId, WorkerId};
use crate::promise::Promise;
use crate::spec::{ActorCallSpec, ActorSpec, PlacementGroupSpec, TaskSpec};
use crate::state::StateSnapshot;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

/// Object bytes where the node keeps them.
#[derive(Clone, Debug)]
pub enum StoredData {
    Inline(Arc<Vec<u8>>),
    File { id: ObjectId, path: Arc<str>, size: u64 },
}

impl StoredData {
    pub fn size(&self) -> u64 {
        match self {
            StoredData::Inline(v) => v.len() as u64,
            StoredData::File { size, .. } => *size,
        }
    }

    pub(crate) fn to_payload(&self) -> Payload {
        match self {
            StoredData::Inline(v) => Payload::Inline(v.to_vec()),
            StoredData::File { id, path, size } => Payload::File { id: *id, path: path.to_string(), size: *size },
        }
    }

    pub(crate) fn from_payload(p: Payload) -> ObjectResult {
        match p {
            Payload::Inline(v) => Ok(StoredData::Inline(Arc::new(v))),
            Payload::File { id, path, size } => Ok(StoredData::File { id, path: path.into(), size }),
            Payload::Error(e) => Err(e),
        }
    }
}

/// What a `get` resolves to.
pub type ObjectResult = Result<StoredData, TaskError>;

/// Which state query to answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum StateQuery {
    Tasks,
    Actors,
    Objects,
    PlacementGroups,
    Workers,
    Resources,
    Nodes,
}

/// The operations a process needs from its node. The driver calls the embedded node directly;
/// a worker sends the same operations over its socket.
pub(crate) trait Core: Send + Sync {
    fn submit_task(&self, spec: TaskSpec);
    fn create_actor(&self, spec: ActorSpec) -> Result<(), TaskError>;
    fn submit_actor_task(&self, spec: ActorCallSpec);
    fn get(&self, id: ObjectId) -> Promise<ObjectResult>;
    fn put(&self, id: ObjectId, payload: Payload, contained: Vec<RefKey>);
    fn add_ref(&self, key: RefKey);
    fn remove_ref(&self, key: RefKey);
    fn cancel(&self, id: ObjectId, force: bool) -> Result<(), TaskError>;
    fn kill_actor(&self, id: ActorId, no_restart: bool) -> Result<(), TaskError>;
    fn get_named_actor(&self, name: &str, namespace: &str) -> Result<(ActorId, String), TaskError>;
    fn create_placement_group(&self, spec: PlacementGroupSpec) -> Result<(), TaskError>;
    fn remove_placement_group(&self, id: PlacementGroupId) -> Result<(), TaskError>;
    fn placement_group_ready(&self, id: PlacementGroupId) -> Promise<Result<(), TaskError>>;
    /// A named placement group (in a cluster, any driver's): its id here and its bundle count.
    fn get_placement_group(&self, name: &str) -> Result<(PlacementGroupId, usize), TaskError>;
    fn state(&self, query: StateQuery) -> Result<StateSnapshot, TaskError>;
    fn shutdown(&self);
    /// Which of `ids` are resolved now, if this core can tell without a round trip.
    fn resolved_now(&self, _ids: &[ObjectId]) -> Option<Vec<bool>> {
        None
    }
    /// A freed store file of at least about `size` bytes that the caller may take over.
    fn recycled_file(&self, size: u64) -> Option<String>;
}

/// This process's counts of the references it holds. The node hears only of the first and
/// the last reference a process holds to each key, so clones and drops stay local.
#[derive(Default)]
pub(crate) struct RefTable {
    counts: Mutex<HashMap<RefKey, u32>>,
}

impl RefTable {
    /// Counts one more reference; true if it is this process's first.
    fn inc(&self, key: RefKey) -> bool {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = c.entry(key).or_insert(0);
        *n += 1;
        *n == 1
    }

    /// Counts one reference less; true if it was this process's last.
    fn dec(&self, key: RefKey) -> bool {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        match c.get_mut(&key) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                c.remove(&key);
                true
            }
            None => false,
        }
    }
}

/// The runtime of this process.
pub(crate) struct Runtime {
    pub(crate) core: Arc<dyn Core>,
    pub(crate) worker_id: WorkerId,
    pub(crate) ids: IdGenerator,
    pub(crate) shm_dir: PathBuf,
    refs: RefTable,
}

impl Runtime {
    pub(crate) fn new(core: Arc<dyn Core>, worker_id: WorkerId, shm_dir: PathBuf) -> Self {
        Runtime { core, worker_id, ids: IdGenerator::new(worker_id), shm_dir, refs: RefTable::default() }
    }

    /// Records a reference this process just created and the node already knows it holds
    /// (the return of its own submission, or its own `put`).
    pub(crate) fn register_owned(&self, key: RefKey) {
        // Fresh ids are never held yet, and the node already counts this process as a holder.
        self.refs.inc(key);
    }

    /// Records one more reference (a clone, or one decoded from a value).
    pub(crate) fn add_local_ref(&self, key: RefKey) {
        if self.refs.inc(key) {
            self.core.add_ref(key);
        }
    }

    /// Forgets a reference the node never counted.
    pub(crate) fn remove_local_ref_silently(&self, key: RefKey) {
        self.refs.dec(key);
    }

    /// Records a dropped reference.
    pub(crate) fn remove_local_ref(&self, key: RefKey) {
        if self.refs.dec(key) {
            self.core.remove_ref(key);
        }
    }
}

static RUNTIME: RwLock<Option<Arc<Runtime>>> = RwLock::new(None);

/// The running runtime, or a `NotInitialized` error that says what to do.
pub(crate) fn runtime() -> Result<Arc<Runtime>, TaskError> {
    try_runtime().ok_or_else(|| {
        TaskError::new(
            ErrorKind::NotInitialized,
            "Flare is not running: call flare::init() first in main (or after flare::shutdown())",
        )
    })
}

pub(crate) fn try_runtime() -> Option<Arc<Runtime>> {
    RUNTIME.read().unwrap_or_else(|p| p.into_inner()).clone()
}

pub(crate) fn install(rt: Arc<Runtime>) -> Result<(), TaskError> {
    let mut slot = RUNTIME.write().unwrap_or_else(|p| p.into_inner());
    if slot.is_some() {
        return Err(TaskError::new(ErrorKind::System, "Flare is already initialized in this process"));
    }
    *slot = Some(rt);
    Ok(())
}

pub(crate) fn uninstall() -> Option<Arc<Runtime>> {
    RUNTIME.write().unwrap_or_else(|p| p.into_inner()).take()
}
