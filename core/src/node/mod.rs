//! The node: owner of one machine's resources, worker pool and object store, and its local
//! scheduler (Ray's raylet, plus the owner bookkeeping Ray keeps in each core worker). In the
//! embedded cluster it lives inside the driver process; workers reach it over a Unix socket.
//!
//! Concurrency: all mutable state is in one [`NodeState`] behind `Node::st`. Handlers mutate it
//! and return [`Effect`]s (socket sends, promise completions, process spawns and kills), which
//! run after the lock is released, so no I/O and no user callback ever runs under the lock.

mod actors;
pub(crate) mod cluster;
mod objects;
mod peers;
mod pgs;
mod sched;
mod session;
mod state;
mod workers;

pub(crate) use session::Session;
pub(crate) use workers::{cuda_visible_devices, exit_reason};

/// Environment variables that make a process a worker of a node.
pub(crate) mod workers_env {
    pub const SOCKET: &str = "FLARE_WORKER_SOCKET";
    pub const WORKER_ID: &str = "FLARE_WORKER_ID";
    pub const SHM_DIR: &str = "FLARE_SHM_DIR";
    /// A worker on another node than its driver: the driver node's `host:port` and the token.
    pub const TCP: &str = "FLARE_WORKER_TCP";
    pub const TOKEN: &str = "FLARE_WORKER_TOKEN";
}

use crate::codec::{Payload, RefKey};
use crate::config::Config;
use crate::error::{ErrorKind, TaskError};
use crate::ids::{ActorId, ObjectId, PlacementGroupId, WorkerId};
use crate::promise::Promise;
use crate::protocol::{Conn, ToWorker};
use crate::resources::{ResourcePool, ResourceSet, CPU, GPU, MEMORY};
use crate::runtime::{Core, ObjectResult, StateQuery};
use crate::spec::{ActorCallSpec, ActorSpec, PlacementGroupSpec, TaskSpec};
use crate::state::StateSnapshot;
use state::NodeState;
use std::sync::{mpsc, Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

/// Work to do once the state lock is released.
pub(crate) enum Effect {
    Send(Arc<Conn>, ToWorker),
    Complete(Promise<ObjectResult>, ObjectResult),
    CompleteUnit(Promise<Result<(), TaskError>>, Result<(), TaskError>),
    Spawn(workers::SpawnRequest),
    Kill(u32),
    /// Kill a worker on another node (through its agent).
    KillRemote(Arc<cluster::AgentLink>, WorkerId),
    /// A message to a node agent (grants).
    Agent(Arc<cluster::AgentLink>, crate::protocol::ToAgent),
    /// An object file on another node is no longer needed: its agent deletes it.
    FreeRemote(String, String),
    /// A named actor died: its name in the head's directory is free (namespace, name).
    Unclaim(String, String),
    /// A named placement group changed: its entry in the head's table is written again.
    PublishPg(PlacementGroupId),
    /// A named placement group is gone: its entry in the head's table goes.
    UnpublishPg(PlacementGroupId),
}

/// Settings resolved from [`Config`] and the machine.
#[derive(Clone, Debug)]
pub(crate) struct NodeConfig {
    pub total: ResourceSet,
    pub store_capacity: u64,
    pub prestart: usize,
    pub idle_timeout: Duration,
    pub infeasible_grace: Duration,
    pub log_to_driver: bool,
    pub labels: Vec<(String, String)>,
    pub spill_dir: std::path::PathBuf,
    pub session_dir: std::path::PathBuf,
    pub shm_dir: std::path::PathBuf,
}

impl NodeConfig {
    pub(crate) fn resolve(cfg: &Config, session: &Session) -> Result<Self, String> {
        let num_cpus = match cfg.num_cpus {
            Some(n) => n,
            None => crate::config::env_f64("FLARE_NUM_CPUS")?
                .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64),
        };
        // GPUs: what the config or FLARE_NUM_GPUS declares, else what discovery finds (NVML or
        // the CUDA driver, loaded at run time; none on machines without them).
        let found = flare_gpu::discover();
        let num_gpus = match cfg.num_gpus {
            Some(n) => n,
            None => crate::config::env_f64("FLARE_NUM_GPUS")?.unwrap_or(found.gpus.len() as f64),
        };
        if num_gpus.fract() != 0.0 {
            return Err(format!("a node declares whole GPUs only, got num_gpus = {num_gpus}"));
        }
        let ram = session::total_memory().unwrap_or(8 << 30);
        let mut total = ResourceSet::new();
        total.set(CPU, num_cpus)?;
        total.set(GPU, num_gpus)?;
        total.set(MEMORY, cfg.memory.unwrap_or(ram) as f64)?;
        let mut labels = cfg.labels.clone();
        // Ray's convention: a node with GPUs carries `accelerator_type:<type>` = 1 and the label.
        if let (true, Some(kind)) = (num_gpus > 0.0, found.accelerator_type()) {
            if !labels.iter().any(|(k, _)| k == "accelerator_type") {
                labels.push(("accelerator_type".into(), kind.clone()));
            }
            total.set(&format!("accelerator_type:{kind}"), 1.0)?;
        }
        for (k, v) in &cfg.resources {
            total.set(k, *v)?;
        }
        let shm_free = session::free_bytes(&session.shm_dir).unwrap_or(u64::MAX);
        let store_capacity = cfg.object_store_memory.unwrap_or_else(|| (ram / 10 * 3).min(shm_free / 10 * 8));
        Ok(NodeConfig {
            total,
            store_capacity,
            prestart: cfg.prestart_workers.unwrap_or(num_cpus.ceil() as usize),
            idle_timeout: cfg.idle_worker_timeout,
            infeasible_grace: cfg.infeasible_grace,
            log_to_driver: cfg.log_to_driver,
            labels,
            spill_dir: session.spill.clone(),
            session_dir: session.dir.clone(),
            shm_dir: session.shm_dir.clone(),
        })
    }
}

/// The node. Cheap to share as `Arc<Node>`.
pub(crate) struct Node {
    pub(crate) cfg: NodeConfig,
    pub(crate) session: Session,
    st: Mutex<NodeState>,
    spawner: Mutex<Option<mpsc::Sender<workers::SpawnRequest>>>,
    /// Set once this driver joined a cluster.
    cluster: std::sync::OnceLock<cluster::ClusterCtx>,
    me: Weak<Node>,
}

impl Node {
    /// Starts the node: its socket, spawner and ticker threads, and the prestarted workers.
    pub(crate) fn start(cfg: &Config) -> Result<Arc<Node>, crate::Error> {
        let session = Session::create(cfg.temp_dir.as_deref())?;
        let node_cfg = NodeConfig::resolve(cfg, &session).map_err(crate::Error::Config)?;
        let pool = ResourcePool::new(node_cfg.total.clone()).map_err(crate::Error::Config)?;
        let node = Arc::new_cyclic(|me| Node {
            st: Mutex::new(NodeState::new(pool, node_cfg.clone())),
            cfg: node_cfg,
            session,
            spawner: Mutex::new(None),
            cluster: std::sync::OnceLock::new(),
            me: me.clone(),
        });
        workers::start_threads(&node)?;
        node.with_state(|st, fx| st.prestart(fx));
        Ok(node)
    }

    fn lock(&self) -> MutexGuard<'_, NodeState> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the state, schedules whatever became runnable, then applies the effects.
    pub(crate) fn with_state<R>(&self, f: impl FnOnce(&mut NodeState, &mut Vec<Effect>) -> R) -> R {
        let mut fx = Vec::new();
        let out = {
            let mut st = self.lock();
            let out = f(&mut st, &mut fx);
            st.schedule(&mut fx);
            out
        };
        self.apply(fx);
        out
    }

    pub(crate) fn apply(&self, fx: Vec<Effect>) {
        for e in fx {
            match e {
                Effect::Send(conn, msg) => {
                    // A failed send means the worker is gone; its death is handled by its reaper.
                    let _ = conn.send(&msg);
                }
                Effect::Complete(p, v) => p.complete(v),
                Effect::CompleteUnit(p, v) => p.complete(v),
                Effect::Spawn(req) => {
                    let tx = self.spawner.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    if let Some(tx) = tx {
                        let _ = tx.send(req);
                    }
                }
                Effect::Kill(pid) => {
                    // Safety: plain syscall; the pid is one of our own children.
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                }
                Effect::KillRemote(link, wid) => link.kill(wid),
                Effect::Agent(link, msg) => link.send(&msg),
                Effect::Unclaim(ns, name) => self.unclaim_actor_name(&ns, &name),
                Effect::PublishPg(id) => self.publish_pg(id),
                Effect::UnpublishPg(id) => self.unpublish_pg(id),
                Effect::FreeRemote(addr, path) => {
                    let link = self.lock().remote_at(&addr).map(|r| r.link.clone());
                    if let Some(link) = link {
                        link.send(&crate::protocol::ToAgent::Free { path });
                    }
                }
            }
        }
    }

    // ---- the node's API, on behalf of `caller` ----

    pub(crate) fn submit_task(&self, caller: WorkerId, spec: TaskSpec) {
        self.with_state(|st, fx| st.submit_task(caller, spec, fx));
    }

    pub(crate) fn create_actor(&self, caller: WorkerId, spec: ActorSpec) -> Result<(), TaskError> {
        // In a cluster, a name is claimed in the head's directory first (it is cluster-wide).
        self.claim_actor_name(&spec)?;
        let (ns, name) = (spec.namespace.clone(), spec.name.clone());
        let out = self.with_state(|st, fx| st.create_actor(caller, spec, fx));
        if let (Err(_), Some(name)) = (&out, name) {
            self.unclaim_actor_name(&ns, &name);
        }
        out
    }

    pub(crate) fn submit_actor_task(&self, caller: WorkerId, spec: ActorCallSpec) {
        self.with_state(|st, fx| st.submit_actor_task(caller, spec, fx));
    }

    pub(crate) fn get(&self, caller: WorkerId, id: ObjectId) -> Promise<ObjectResult> {
        let promise = self.with_state(|st, fx| st.get(id, fx));
        if caller != WorkerId::DRIVER && promise.try_get().is_none() {
            // A worker blocked in `get` lends its CPU back so nested tasks can run (Ray does the same).
            self.with_state(|st, fx| st.lend_cpu(caller, fx));
            if let Some(node) = self.me.upgrade() {
                promise.on_complete(move |_| node.with_state(|st, fx| st.reclaim_cpu(caller, fx)));
            }
        }
        promise
    }

    pub(crate) fn put(&self, caller: WorkerId, id: ObjectId, payload: Payload, contained: Vec<RefKey>) {
        self.with_state(|st, fx| st.put(caller, id, payload, contained, fx));
    }

    pub(crate) fn add_ref(&self, caller: WorkerId, key: RefKey) {
        self.with_state(|st, _| st.add_ref(caller, key));
    }

    pub(crate) fn remove_ref(&self, caller: WorkerId, key: RefKey) {
        self.with_state(|st, fx| st.remove_ref(caller, key, fx));
    }

    pub(crate) fn cancel(&self, id: ObjectId, force: bool) -> Result<(), TaskError> {
        self.with_state(|st, fx| st.cancel(id, force, fx))
    }

    pub(crate) fn kill_actor(&self, id: ActorId, no_restart: bool) -> Result<(), TaskError> {
        self.with_state(|st, fx| st.kill_actor(id, no_restart, fx))
    }

    /// This driver's actor of that name; else, in a cluster, another driver's (through the
    /// head's directory), which is then known here by that name.
    pub(crate) fn get_named_actor(self: &Arc<Self>, name: &str, namespace: &str) -> Result<(ActorId, String), TaskError> {
        match self.with_state(|st, _| st.named_actor(name, namespace)) {
            Err(e) if e.kind == ErrorKind::NotFound && self.cluster.get().is_some() => {
                let (aid, class) = self.foreign_actor(name, namespace)?;
                self.with_state(|st, _| st.named.insert((namespace.to_string(), name.to_string()), aid));
                Ok((aid, class))
            }
            other => other,
        }
    }

    pub(crate) fn create_placement_group(&self, spec: PlacementGroupSpec) -> Result<(), TaskError> {
        let key = self.pg_key(spec.id);
        NodeState::check_pg_spec(&spec)?;
        // In a cluster, a name is entered in the head's table first (it is cluster-wide).
        self.claim_pg_name(&spec, &key)?;
        self.with_state(|st, _| st.create_placement_group(spec, key))
    }

    pub(crate) fn remove_placement_group(&self, id: PlacementGroupId) -> Result<(), TaskError> {
        self.with_state(|st, fx| st.remove_placement_group(id, fx))
    }

    pub(crate) fn placement_group_ready(&self, id: PlacementGroupId) -> Promise<Result<(), TaskError>> {
        self.with_state(|st, _| st.placement_group_ready(id))
    }

    pub(crate) fn recycled_file(&self, caller: WorkerId, size: u64) -> Option<String> {
        self.lock().take_recycled(size, caller)
    }

    pub(crate) fn state(&self, query: StateQuery) -> StateSnapshot {
        self.with_state(|st, _| st.snapshot(query))
    }

    /// Stops every worker and removes the session's shared memory.
    pub(crate) fn shutdown(&self) {
        self.unpublish_state();
        self.unclaim_all();
        self.unpublish_own_pgs();
        let pids = self.with_state(|st, fx| st.shutdown(fx));
        // Give workers a moment to exit on their own, then make sure.
        let deadline = std::time::Instant::now() + Duration::from_millis(500);
        while std::time::Instant::now() < deadline && pids.iter().any(|p| workers::alive(*p)) {
            std::thread::sleep(Duration::from_millis(10));
        }
        for pid in pids {
            if workers::alive(pid) {
                // Safety: plain syscall on our own child.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        }
        self.spawner.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.session.remove_shared_memory();
    }
}

/// The driver's view of its embedded node.
pub(crate) struct DriverCore {
    pub(crate) node: Arc<Node>,
}

impl Core for DriverCore {
    fn submit_task(&self, spec: TaskSpec) {
        self.node.submit_task(WorkerId::DRIVER, spec)
    }
    fn create_actor(&self, spec: ActorSpec) -> Result<(), TaskError> {
        self.node.create_actor(WorkerId::DRIVER, spec)
    }
    fn submit_actor_task(&self, spec: ActorCallSpec) {
        self.node.submit_actor_task(WorkerId::DRIVER, spec)
    }
    fn get(&self, id: ObjectId) -> Promise<ObjectResult> {
        self.node.get(WorkerId::DRIVER, id)
    }
    fn put(&self, id: ObjectId, payload: Payload, contained: Vec<RefKey>) {
        self.node.put(WorkerId::DRIVER, id, payload, contained)
    }
    fn add_ref(&self, key: RefKey) {
        self.node.add_ref(WorkerId::DRIVER, key)
    }
    fn remove_ref(&self, key: RefKey) {
        self.node.remove_ref(WorkerId::DRIVER, key)
    }
    fn cancel(&self, id: ObjectId, force: bool) -> Result<(), TaskError> {
        self.node.cancel(id, force)
    }
    fn kill_actor(&self, id: ActorId, no_restart: bool) -> Result<(), TaskError> {
        self.node.kill_actor(id, no_restart)
    }
    fn get_named_actor(&self, name: &str, namespace: &str) -> Result<(ActorId, String), TaskError> {
        self.node.get_named_actor(name, namespace)
    }
    fn create_placement_group(&self, spec: PlacementGroupSpec) -> Result<(), TaskError> {
        self.node.create_placement_group(spec)
    }
    fn remove_placement_group(&self, id: PlacementGroupId) -> Result<(), TaskError> {
        self.node.remove_placement_group(id)
    }
    fn placement_group_ready(&self, id: PlacementGroupId) -> Promise<Result<(), TaskError>> {
        self.node.placement_group_ready(id)
    }
    fn get_placement_group(&self, name: &str) -> Result<(PlacementGroupId, usize), TaskError> {
        self.node.get_placement_group(name)
    }
    fn state(&self, query: StateQuery) -> Result<StateSnapshot, TaskError> {
        Ok(self.node.state(query))
    }
    fn shutdown(&self) {
        self.node.shutdown()
    }
    fn recycled_file(&self, size: u64) -> Option<String> {
        self.node.recycled_file(WorkerId::DRIVER, size)
    }
    fn resolved_now(&self, ids: &[ObjectId]) -> Option<Vec<bool>> {
        let st = self.node.lock();
        // A missing object resolves too: its get reports ObjectLost at once.
        Some(ids.iter().map(|id| st.is_resolved(*id) || !st.objects.contains_key(id)).collect())
    }
}

/// An error for work that can no longer run because the node is stopping.
pub(crate) fn shutting_down() -> TaskError {
    TaskError::new(ErrorKind::System, "the node is shutting down")
}
