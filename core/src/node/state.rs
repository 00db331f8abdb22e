//! The node's state: every table the node keeps, guarded by the one lock in `Node::st`.

use super::{Effect, NodeConfig};
use crate::codec::RefKey;
use crate::error::TaskError;
use crate::ids::{ActorId, NodeId, ObjectId, PlacementGroupId, TaskId, WorkerId};
use crate::promise::Promise;
use crate::protocol::{Conn, ToWorker};
use crate::resources::{Allocation, ResourcePool, ResourceSet};
use crate::runtime::{ObjectResult, StateQuery, StoredData};
use crate::scheduler::SchedulingStrategy;
use crate::spec::{ActorCallSpec, ActorSpec, PlacementGroupSpec, TaskSpec};
use crate::state::*;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Who holds references to an object or actor.
#[derive(Default, Debug)]
pub(crate) struct Refs {
    /// Processes with at least one live reference.
    pub holders: Vec<WorkerId>,
    /// Pending tasks, actor calls and actor creations that take it as an argument.
    pub task_refs: u32,
    /// Objects and submitted arguments whose value contains a reference to it.
    pub contained_in: u32,
}

impl Refs {
    pub fn is_zero(&self) -> bool {
        self.holders.is_empty() && self.task_refs == 0 && self.contained_in == 0
    }
}

pub(crate) enum ObjState {
    Pending,
    Ready(StoredData),
    Failed(TaskError),
}

/// What waits for an object to be ready.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Dependent {
    Task(TaskId),
    ActorCreation(ActorId),
    ActorCalls(ActorId),
}

pub(crate) struct ObjectEntry {
    pub state: ObjState,
    pub refs: Refs,
    /// References inside this object's value, released when it is freed.
    pub contains: Vec<RefKey>,
    pub waiters: Vec<Promise<ObjectResult>>,
    pub dependents: Vec<Dependent>,
    /// Its key in `NodeState::resident` while its bytes are in shared memory.
    pub resident_seq: Option<u64>,
    /// The task that made it, kept (with its arguments pinned) to rebuild it if its file is lost.
    pub lineage: Option<Arc<TaskSpec>>,
}

impl ObjectEntry {
    pub fn pending() -> Self {
        ObjectEntry {
            state: ObjState::Pending,
            refs: Refs::default(),
            contains: Vec::new(),
            waiters: Vec::new(),
            dependents: Vec::new(),
            resident_seq: None,
            lineage: None,
        }
    }
}

/// Where an allocation came from, to give it back there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AllocFrom {
    Node(NodeId),
    Bundle(PlacementGroupId, usize),
}

pub(crate) struct TaskEntry {
    pub spec: Arc<TaskSpec>,
    pub state: TaskState,
    pub missing: u32,
    pub attempt: u32,
    pub retries_left: u32,
    pub alloc: Option<(Allocation, AllocFrom)>,
    /// The task's CPUs were lent back while it blocks in `get`.
    pub cpu_lent: bool,
    pub worker: Option<WorkerId>,
    pub cancelled: bool,
    pub submitted: Instant,
    pub infeasible_since: Option<Instant>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Pool,
    Actor(ActorId),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WorkerStatus {
    Starting,
    Idle(Instant),
    Busy(TaskId),
    Actor,
}

pub(crate) struct WorkerEntry {
    /// Its process id on its node.
    pub pid: Option<u32>,
    pub node: NodeId,
    /// The agent that runs it, for a worker on another node.
    pub link: Option<Arc<super::cluster::AgentLink>>,
    pub conn: Option<Arc<Conn>>,
    pub gpu_key: Vec<u32>,
    pub role: Role,
    pub status: WorkerStatus,
    /// The task it was started for, dispatched once it connects.
    pub assigned: Option<TaskId>,
    /// The log prefix: what it runs now.
    pub label: Arc<Mutex<String>>,
    /// References this process holds (to drop them if it dies).
    pub held: HashSet<RefKey>,
    /// Outstanding blocking `get`s (for CPU lending).
    pub blocked_gets: u32,
    /// Whether its connection's reader has drained (see `workers::ReaderFlag`).
    pub flag: Arc<super::workers::ReaderFlag>,
}

pub(crate) struct ActorEntry {
    pub spec: Arc<ActorSpec>,
    pub state: ActorState,
    pub missing: u32,
    pub alloc: Option<(Allocation, AllocFrom)>,
    pub worker: Option<WorkerId>,
    pub pid: Option<u32>,
    /// Calls not yet sent to the worker, in submission order, with their retries left.
    pub pending: VecDeque<(Arc<ActorCallSpec>, i32)>,
    /// Calls sent and not finished, in dispatch order, with their retries left.
    pub inflight: VecDeque<(Arc<ActorCallSpec>, i32)>,
    pub restarts: u32,
    pub refs: Refs,
    pub death: Option<TaskError>,
    pub infeasible_since: Option<Instant>,
    /// All handles are gone: exit once the queued calls are done.
    pub terminate_when_idle: bool,
    /// Another driver's actor (which one owns it), reached through its owner's cluster port.
    pub owner: Option<String>,
}

pub(crate) enum PgState {
    Pending,
    Created(Vec<PgBundle>),
    Infeasible(String),
    Removed,
}

/// A bundle of a created group, as this driver sees it.
pub(crate) struct PgBundle {
    /// What this driver's work takes of the bundle and, as `external`, what other drivers'
    /// work does (on another node than the driver's, the bundle lives in its agent's ledger).
    pub pool: ResourcePool,
    /// What the bundle holds of its node (its creator took it there).
    pub alloc: Allocation,
    pub node: NodeId,
    /// What other drivers' work holds of it, as its node's agent last said.
    pub others: Allocation,
}

impl PgBundle {
    pub(crate) fn new(alloc: Allocation, node: NodeId) -> Self {
        PgBundle { pool: ResourcePool::from_allocation(&alloc), alloc, node, others: Allocation::default() }
    }
}

pub(crate) struct PgEntry {
    pub spec: PlacementGroupSpec,
    pub state: PgState,
    pub waiters: Vec<Promise<Result<(), TaskError>>>,
    /// The group's key across the cluster (its bundles' name in the nodes' ledgers).
    pub key: String,
    /// Another driver's group, found by name: who made it (it places and moves the bundles).
    pub foreign: Option<String>,
}

/// The key tasks are queued by: same resources and strategy schedule alike, so one blocked
/// head blocks its whole class and the rest are not scanned (Ray's scheduling classes).
pub(crate) type ShapeKey = (ResourceSet, SchedulingStrategy);

/// The driver's own node.
pub(crate) const LOCAL: NodeId = NodeId(0);

pub(crate) struct NodeState {
    pub cfg: NodeConfig,
    /// The driver's own node's resources.
    pub pool: ResourcePool,
    /// Nodes of the cluster this driver joined, by the ids it gave them.
    pub remote: BTreeMap<NodeId, super::cluster::RemoteNode>,
    pub next_node: u32,
    /// The last grant id asked of a node agent.
    pub next_lease: u64,
    /// The SPREAD policy, whose round-robin position persists across decisions.
    pub spread: crate::scheduler::SpreadPolicy,
    pub objects: HashMap<ObjectId, ObjectEntry>,
    /// Shared-memory-resident objects, oldest first (spill order).
    pub resident: BTreeMap<u64, ObjectId>,
    pub seq: u64,
    pub store_used: u64,
    pub spilled_total: u64,
    pub tasks: HashMap<TaskId, TaskEntry>,
    pub ready: Vec<(ShapeKey, VecDeque<TaskId>)>,
    pub delayed: Vec<(Instant, TaskId)>,
    pub workers: HashMap<WorkerId, WorkerEntry>,
    /// Idle pool workers by node and GPU assignment.
    pub idle: HashMap<(NodeId, Vec<u32>), Vec<WorkerId>>,
    pub next_worker: u64,
    pub actors: HashMap<ActorId, ActorEntry>,
    pub actor_queue: VecDeque<ActorId>,
    pub actor_calls: HashMap<TaskId, ActorId>,
    pub named: HashMap<(String, String), ActorId>,
    pub pgs: HashMap<PlacementGroupId, PgEntry>,
    pub pending_pgs: VecDeque<PlacementGroupId>,
    /// Groups by their cluster-wide key.
    pub pg_keys: HashMap<String, PlacementGroupId>,
    /// Bundles of created groups whose node died, waiting to be placed again.
    pub lost_bundles: Vec<(PlacementGroupId, usize)>,
    /// Finished tasks, newest last, bounded.
    pub history: VecDeque<TaskInfo>,
    /// Freed store files kept for reuse (path, size), and their total size.
    pub recycled: Vec<(std::path::PathBuf, u64, WorkerId)>,
    pub recycled_bytes: u64,
    /// Something changed that may let queued work run.
    pub dirty: bool,
    pub shutting_down: bool,
}

pub(crate) const HISTORY_LIMIT: usize = 10_000;

impl NodeState {
    pub(crate) fn new(pool: ResourcePool, cfg: NodeConfig) -> Self {
        NodeState {
            cfg,
            pool,
            remote: BTreeMap::new(),
            next_node: 1,
            next_lease: 0,
            spread: Default::default(),
            objects: HashMap::new(),
            resident: BTreeMap::new(),
            seq: 0,
            store_used: 0,
            spilled_total: 0,
            tasks: HashMap::new(),
            ready: Vec::new(),
            delayed: Vec::new(),
            workers: HashMap::new(),
            idle: HashMap::new(),
            next_worker: 1,
            actors: HashMap::new(),
            actor_queue: VecDeque::new(),
            actor_calls: HashMap::new(),
            named: HashMap::new(),
            pgs: HashMap::new(),
            pending_pgs: VecDeque::new(),
            pg_keys: HashMap::new(),
            lost_bundles: Vec::new(),
            history: VecDeque::new(),
            recycled: Vec::new(),
            recycled_bytes: 0,
            dirty: false,
            shutting_down: false,
        }
    }

    pub(crate) fn record_history(&mut self, info: TaskInfo) {
        if self.history.len() >= HISTORY_LIMIT {
            self.history.pop_front();
        }
        self.history.push_back(info);
    }

    pub(crate) fn task_info(&self, id: TaskId, t: &TaskEntry) -> TaskInfo {
        TaskInfo {
            task_id: id,
            name: t.spec.name.clone(),
            state: t.state,
            attempt: t.attempt,
            worker: t.worker,
            actor: None,
            error: None,
        }
    }

    pub(crate) fn snapshot(&self, query: StateQuery) -> StateSnapshot {
        let mut s = StateSnapshot::default();
        match query {
            StateQuery::Tasks => {
                s.tasks.extend(self.history.iter().cloned());
                s.tasks.extend(self.tasks.iter().map(|(id, t)| self.task_info(*id, t)));
                for (aid, a) in &self.actors {
                    let class = crate::actor::short_class(&a.spec.class);
                    for (call, _) in &a.inflight {
                        s.tasks.push(TaskInfo {
                            task_id: call.task_id,
                            name: format!("{class}.{}", call.method),
                            state: TaskState::Running,
                            attempt: 0,
                            worker: a.worker,
                            actor: Some(*aid),
                            error: None,
                        });
                    }
                    for (call, _) in &a.pending {
                        s.tasks.push(TaskInfo {
                            task_id: call.task_id,
                            name: format!("{class}.{}", call.method),
                            state: TaskState::PendingScheduling,
                            attempt: 0,
                            worker: None,
                            actor: Some(*aid),
                            error: None,
                        });
                    }
                }
            }
            StateQuery::Actors => {
                s.actors = self
                    .actors
                    .iter()
                    // Another driver's actors are listed by their owner.
                    .filter(|(_, a)| a.owner.is_none())
                    .map(|(id, a)| ActorInfo {
                        actor_id: *id,
                        class: a.spec.class.clone(),
                        state: a.state,
                        name: a.spec.name.clone(),
                        namespace: a.spec.namespace.clone(),
                        pid: a.pid,
                        restarts: a.restarts,
                        death_cause: a.death.as_ref().map(|e| e.message.clone()),
                        node: a.worker.and_then(|w| self.workers.get(&w)).map(|w| w.node),
                    })
                    .collect();
            }
            StateQuery::Objects => {
                s.objects = self
                    .objects
                    .iter()
                    .map(|(id, o)| {
                        let (size, location) = match &o.state {
                            ObjState::Pending => (0, ObjectLocation::Pending),
                            ObjState::Failed(_) => (0, ObjectLocation::Error),
                            ObjState::Ready(StoredData::Inline(v)) => (v.len() as u64, ObjectLocation::Inline),
                            ObjState::Ready(StoredData::File { size, .. }) => (
                                *size,
                                if o.resident_seq.is_some() { ObjectLocation::SharedMemory } else { ObjectLocation::Spilled },
                            ),
                        };
                        ObjectInfo {
                            object_id: *id,
                            size,
                            location,
                            holders: o.refs.holders.len() as u32,
                            task_refs: o.refs.task_refs,
                            contained_in: o.refs.contained_in,
                        }
                    })
                    .collect();
            }
            StateQuery::PlacementGroups => {
                s.placement_groups = self
                    .pgs
                    .iter()
                    .map(|(id, pg)| PlacementGroupInfo {
                        id: *id,
                        name: pg.spec.name.clone(),
                        state: match pg.state {
                            PgState::Pending => PlacementGroupState::Pending,
                            PgState::Created(_) => PlacementGroupState::Created,
                            PgState::Infeasible(_) => PlacementGroupState::Infeasible,
                            PgState::Removed => PlacementGroupState::Removed,
                        },
                        strategy: pg.spec.strategy,
                        bundles: pg.spec.bundles.clone(),
                        bundle_gpu_ids: match &pg.state {
                            PgState::Created(b) => b.iter().map(|b| b.alloc.gpu_ids()).collect(),
                            _ => Vec::new(),
                        },
                        creator: pg.foreign.clone(),
                        detached: pg.spec.detached,
                    })
                    .collect();
            }
            StateQuery::Workers => {
                s.workers = self
                    .workers
                    .iter()
                    .map(|(id, w)| WorkerInfo {
                        worker_id: *id,
                        pid: w.pid,
                        state: match w.status {
                            WorkerStatus::Starting => WorkerState::Starting,
                            WorkerStatus::Idle(_) => WorkerState::Idle,
                            WorkerStatus::Busy(_) => WorkerState::Busy,
                            WorkerStatus::Actor => WorkerState::Actor,
                        },
                        gpu_ids: w.gpu_key.clone(),
                        node: w.node,
                    })
                    .collect();
            }
            StateQuery::Resources => {
                // The whole cluster's, as Ray's `cluster_resources()`: every node's summed.
                let (mut total, mut available) = (self.pool.total().clone(), self.pool.available().clone());
                for r in self.remote.values() {
                    total.add(r.pool.total());
                    available.add(r.pool.available());
                }
                s.resources = Some(ClusterResources {
                    total,
                    available,
                    store_capacity: self.cfg.store_capacity,
                    store_used: self.store_used,
                    spilled_bytes_total: self.spilled_total,
                    labels: self.cfg.labels.clone(),
                    session_dir: self.cfg.session_dir.to_string_lossy().into_owned(),
                    shm_dir: self.cfg.shm_dir.to_string_lossy().into_owned(),
                });
            }
            StateQuery::Nodes => {
                s.nodes.push(NodeInfo {
                    node_id: LOCAL,
                    name: "local".into(),
                    address: String::new(),
                    is_local: true,
                    total: self.pool.total().clone(),
                    available: self.pool.available().clone(),
                    labels: self.cfg.labels.clone(),
                });
                s.nodes.extend(self.remote.iter().map(|(id, r)| NodeInfo {
                    node_id: *id,
                    name: r.link.name.clone(),
                    address: r.link.address.clone(),
                    is_local: false,
                    total: r.pool.total().clone(),
                    available: r.pool.available().clone(),
                    labels: r.labels.clone(),
                }));
            }
        }
        s
    }

    /// Periodic work: retry backoffs that ran out, infeasible work past its grace, idle workers.
    pub(crate) fn tick(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        let due: Vec<TaskId> = {
            let (due, later): (Vec<_>, Vec<_>) = self.delayed.drain(..).partition(|(t, _)| *t <= now);
            self.delayed = later;
            due.into_iter().map(|(_, id)| id).collect()
        };
        for id in due {
            self.enqueue_task(id);
        }
        if self.ready.iter().any(|(_, q)| !q.is_empty()) || !self.actor_queue.is_empty() {
            self.dirty = true;
        }
        self.reap_idle_workers(now, fx);
        self.release_idle_grants(now, fx);
        self.update_metrics();
    }

    fn reap_idle_workers(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        let timeout = self.cfg.idle_timeout;
        let keep = self.cfg.prestart;
        let plain = (LOCAL, Vec::new());
        let mut pooled_plain = self.idle.get(&plain).map(|v| v.len()).unwrap_or(0);
        let mut to_exit = Vec::new();
        for (key, ids) in self.idle.iter_mut() {
            ids.retain(|id| {
                let Some(w) = self.workers.get(id) else {
                    return false;
                };
                let WorkerStatus::Idle(since) = w.status else {
                    return false;
                };
                let surplus = *key != plain || pooled_plain > keep;
                if surplus && now.duration_since(since) > timeout {
                    if *key == plain {
                        pooled_plain -= 1;
                    }
                    to_exit.push(*id);
                    false
                } else {
                    true
                }
            });
        }
        for id in to_exit {
            if let Some(w) = self.workers.get(&id) {
                if let Some(c) = &w.conn {
                    fx.push(Effect::Send(c.clone(), ToWorker::Exit));
                }
            }
        }
    }

    fn update_metrics(&self) {
        let mut by_state: HashMap<&'static str, usize> = HashMap::new();
        for t in self.tasks.values() {
            let k = match t.state {
                TaskState::PendingArgs => "pending_args",
                TaskState::PendingScheduling => "pending_scheduling",
                TaskState::PendingWorker => "pending_worker",
                TaskState::PendingRetry => "pending_retry",
                TaskState::Running => "running",
                _ => "other",
            };
            *by_state.entry(k).or_default() += 1;
        }
        for k in ["pending_args", "pending_scheduling", "pending_worker", "pending_retry", "running"] {
            metrics::gauge!("flare_tasks", "state" => k).set(*by_state.get(k).unwrap_or(&0) as f64);
        }
        metrics::gauge!("flare_object_store_bytes").set(self.store_used as f64);
        metrics::gauge!("flare_object_store_objects").set(self.objects.len() as f64);
        metrics::gauge!("flare_object_store_spilled_bytes_total").set(self.spilled_total as f64);
        metrics::gauge!("flare_workers_alive").set(self.workers.len() as f64);
        metrics::gauge!("flare_actors_alive").set(self.actors.values().filter(|a| a.state == ActorState::Alive).count() as f64);
    }

    /// Tells every worker to exit and fails whatever waits; returns the pids to reap.
    pub(crate) fn shutdown(&mut self, fx: &mut Vec<Effect>) -> Vec<u32> {
        self.shutting_down = true;
        let mut pids = Vec::new();
        for w in self.workers.values() {
            if let Some(c) = &w.conn {
                fx.push(Effect::Send(c.clone(), ToWorker::Exit));
            }
            if w.node == LOCAL {
                pids.extend(w.pid);
            }
        }
        // Agents stop the workers they run for this driver when its connection closes.
        for r in std::mem::take(&mut self.remote).into_values() {
            r.link.close();
        }
        for o in self.objects.values_mut() {
            for p in o.waiters.drain(..) {
                fx.push(Effect::Complete(p, Err(super::shutting_down())));
            }
        }
        pids
    }
}
