//! Worker processes: spawning them from the driver's own executable, their socket connections,
//! their log streams, the pool of idle ones, and what happens when one dies.

use super::state::{NodeState, Role, WorkerEntry, WorkerStatus, LOCAL};
use super::{Effect, Node};
use crate::codec::RefKey;
use crate::ids::{NodeId, WorkerId};
use crate::protocol::{Conn, Receiver, Reply, Request, ToNode, ToWorker};
use crate::runtime::StateQuery;
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::workers_env::{SHM_DIR as ENV_SHM_DIR, SOCKET as ENV_SOCKET, WORKER_ID as ENV_WORKER_ID};

/// Reader progress of a worker's connection, so its reaper handles the death only after every
/// message the worker sent before dying was processed.
#[derive(Default)]
pub(crate) struct ReaderFlag {
    state: Mutex<u8>, // 0: not connected, 1: reading, 2: done
    cv: Condvar,
}

impl ReaderFlag {
    fn set(&self, v: u8) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = v;
        self.cv.notify_all();
    }

    pub(crate) fn wait_done(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        while *st == 1 {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            st = self.cv.wait_timeout(st, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
}

pub(crate) struct SpawnRequest {
    pub wid: WorkerId,
    /// The agent to start it, for a worker on another node.
    pub link: Option<Arc<super::cluster::AgentLink>>,
    pub gpu_key: Vec<u32>,
    pub label: Arc<Mutex<String>>,
    pub flag: Arc<ReaderFlag>,
}

pub(crate) fn alive(pid: u32) -> bool {
    // Safety: signal 0 only checks for existence. Zombies count as gone once reaped by us.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

impl NodeState {
    pub(crate) fn prestart(&mut self, fx: &mut Vec<Effect>) {
        for _ in 0..self.cfg.prestart {
            self.spawn_worker(LOCAL, Vec::new(), Role::Pool, fx);
        }
    }

    /// Starts a worker on `node` (the driver's own, or a node agent's).
    pub(crate) fn spawn_worker(&mut self, node: NodeId, gpu_key: Vec<u32>, role: Role, fx: &mut Vec<Effect>) -> WorkerId {
        let wid = WorkerId(self.next_worker);
        self.next_worker += 1;
        let label = Arc::new(Mutex::new("worker".to_string()));
        let flag = Arc::new(ReaderFlag::default());
        let link = self.remote.get(&node).map(|r| r.link.clone());
        self.workers.insert(
            wid,
            WorkerEntry {
                pid: None,
                node,
                link: link.clone(),
                conn: None,
                gpu_key: gpu_key.clone(),
                role,
                status: if matches!(role, Role::Actor(_)) { WorkerStatus::Actor } else { WorkerStatus::Starting },
                assigned: None,
                label: label.clone(),
                held: HashSet::new(),
                blocked_gets: 0,
                flag: flag.clone(),
            },
        );
        if node != LOCAL && link.is_none() {
            // Its node died between the decision and now: the worker is dead on arrival.
            self.worker_died(wid, &format!("{node} is gone"), fx);
            return wid;
        }
        fx.push(Effect::Spawn(SpawnRequest { wid, link, gpu_key, label, flag }));
        wid
    }

    pub(crate) fn take_idle_worker(&mut self, node: NodeId, key: &[u32]) -> Option<WorkerId> {
        let ids = self.idle.get_mut(&(node, key.to_vec()))?;
        while let Some(w) = ids.pop() {
            if matches!(self.workers.get(&w).map(|w| w.status), Some(WorkerStatus::Idle(_))) {
                return Some(w);
            }
        }
        None
    }

    pub(crate) fn worker_idle(&mut self, wid: WorkerId) {
        let Some(w) = self.workers.get_mut(&wid) else {
            return;
        };
        if w.role != Role::Pool {
            return;
        }
        w.status = WorkerStatus::Idle(Instant::now());
        *w.label.lock().unwrap_or_else(|p| p.into_inner()) = "worker".to_string();
        self.idle.entry((w.node, w.gpu_key.clone())).or_default().push(wid);
        self.dirty = true;
    }

    fn worker_connected(&mut self, wid: WorkerId, pid: u32, conn: Arc<Conn>, fx: &mut Vec<Effect>) {
        let Some(w) = self.workers.get_mut(&wid) else {
            fx.push(Effect::Send(conn, ToWorker::Exit));
            return;
        };
        w.conn = Some(conn);
        // 0: no process of ours (another driver's actor, reached over a connection).
        w.pid = (pid > 0).then_some(pid);
        match w.role {
            Role::Actor(aid) => self.send_create_actor(aid, wid, fx),
            Role::Pool => match w.assigned.take() {
                Some(tid) => self.dispatch_task(tid, wid, fx),
                None => self.worker_idle(wid),
            },
        }
    }

    fn task_done(&mut self, wid: WorkerId, tid: crate::ids::TaskId, result: crate::protocol::TaskResult, fx: &mut Vec<Effect>) {
        if self.actor_calls.contains_key(&tid) {
            self.actor_call_done(tid, result, fx);
            return;
        }
        self.finish_task(tid, result, fx);
        if matches!(self.workers.get(&wid).map(|w| w.status), Some(WorkerStatus::Busy(t)) if t == tid) {
            self.worker_idle(wid);
        }
    }

    /// A worker process is gone: drop what it held, then retry or fail what it ran.
    pub(crate) fn worker_died(&mut self, wid: WorkerId, reason: &str, fx: &mut Vec<Effect>) {
        let Some(w) = self.workers.remove(&wid) else {
            return;
        };
        if let Some(ids) = self.idle.get_mut(&(w.node, w.gpu_key.clone())) {
            ids.retain(|i| *i != wid);
        }
        for key in w.held {
            let refs = match key {
                RefKey::Object(id) => self.objects.get_mut(&id).map(|o| &mut o.refs),
                RefKey::Actor(id) => self.actors.get_mut(&id).map(|a| &mut a.refs),
            };
            if let Some(r) = refs {
                r.holders.retain(|h| *h != wid);
            }
            self.maybe_free(key, fx);
        }
        if self.shutting_down {
            return;
        }
        match (w.role, w.status) {
            (Role::Pool, WorkerStatus::Busy(tid)) => self.task_worker_died(tid, reason, fx),
            (Role::Pool, _) => {
                if let Some(tid) = w.assigned {
                    self.task_worker_died(tid, reason, fx);
                }
            }
            (Role::Actor(aid), _) => self.actor_worker_died(aid, reason, fx),
        }
        self.dirty = true;
    }

    /// Keeps the prestarted pool at its size.
    pub(crate) fn replenish_pool(&mut self, fx: &mut Vec<Effect>) {
        if self.shutting_down {
            return;
        }
        let plain = self.workers.values().filter(|w| w.role == Role::Pool && w.node == LOCAL && w.gpu_key.is_empty()).count();
        for _ in plain..self.cfg.prestart {
            self.spawn_worker(LOCAL, Vec::new(), Role::Pool, fx);
        }
    }
}

impl WorkerEntry {
    /// What kills this worker's process, wherever it runs.
    pub(crate) fn kill_effect(&self, wid: WorkerId) -> Option<Effect> {
        match &self.link {
            Some(link) => Some(Effect::KillRemote(link.clone(), wid)),
            // pid 0: no process of ours (another driver's actor, reached over a connection).
            None => self.pid.filter(|p| *p > 0).map(Effect::Kill),
        }
    }
}

/// Starts the node's threads: the socket listener, the process spawner and the ticker.
pub(crate) fn start_threads(node: &Arc<Node>) -> Result<(), crate::Error> {
    let listener = UnixListener::bind(&node.session.socket)
        .map_err(|e| crate::Error::io(format!("binding the node socket {}", node.session.socket.display()), e))?;
    let weak = Arc::downgrade(node);
    std::thread::Builder::new()
        .name("flare-listener".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Some(node) = weak.upgrade() else { return };
                match stream {
                    Ok(s) => {
                        let n = node.clone();
                        let _ = std::thread::Builder::new().name("flare-conn".into()).spawn(move || serve_worker(n, s));
                    }
                    Err(e) => tracing::warn!("accepting a worker connection failed: {e}"),
                }
            }
        })
        .map_err(|e| crate::Error::io("starting the listener thread", e))?;

    let (tx, rx) = mpsc::channel::<SpawnRequest>();
    *node.spawner.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
    let weak = Arc::downgrade(node);
    // One long-lived thread spawns every worker: a child's parent-death signal fires when the
    // thread that forked it exits, so spawning from short-lived threads would kill workers.
    std::thread::Builder::new()
        .name("flare-spawner".into())
        .spawn(move || {
            while let Ok(req) = rx.recv() {
                let Some(node) = weak.upgrade() else { return };
                spawn_process(&node, req);
            }
        })
        .map_err(|e| crate::Error::io("starting the spawner thread", e))?;

    let weak = Arc::downgrade(node);
    std::thread::Builder::new()
        .name("flare-ticker".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_millis(50));
            let Some(node) = weak.upgrade() else { return };
            if node.lock().shutting_down {
                return;
            }
            node.with_state(|st, fx| {
                st.tick(Instant::now(), fx);
                st.replenish_pool(fx);
            });
        })
        .map_err(|e| crate::Error::io("starting the ticker thread", e))?;
    Ok(())
}

fn spawn_process(node: &Arc<Node>, req: SpawnRequest) {
    if let Some(link) = &req.link {
        if let Err(e) = link.spawn(req.wid, req.gpu_key.clone(), req.flag.clone(), req.label.clone()) {
            node.with_state(|st, fx| st.worker_died(req.wid, &format!("could not start a worker on {}: {e}", link.name), fx));
        }
        return;
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            node.with_state(|st, fx| {
                st.worker_died(req.wid, &format!("cannot find the current executable to start a worker: {e}"), fx)
            });
            return;
        }
    };
    let mut cmd = Command::new(exe);
    cmd.env(ENV_SOCKET, &node.session.socket)
        .env(ENV_WORKER_ID, req.wid.0.to_string())
        .env(ENV_SHM_DIR, &node.session.shm_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if !req.gpu_key.is_empty() {
        cmd.env("CUDA_VISIBLE_DEVICES", cuda_visible_devices(&req.gpu_key));
    }
    if let Some(ctx) = node.cluster.get() {
        // To pull the objects that stay on other nodes.
        cmd.env(crate::node::workers_env::TOKEN, &ctx.token);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            node.with_state(|st, fx| st.worker_died(req.wid, &format!("could not start a worker process: {e}"), fx));
            return;
        }
    };
    let pid = child.id();
    node.with_state(|st, _| {
        if let Some(w) = st.workers.get_mut(&req.wid) {
            w.pid = Some(pid);
        }
    });
    let logs = node.session.logs.clone();
    let to_driver = node.cfg.log_to_driver;
    if let Some(out) = child.stdout.take() {
        pipe_log(out, logs.join(format!("worker-{}-{pid}.out", req.wid.0)), req.label.clone(), pid, to_driver);
    }
    if let Some(err) = child.stderr.take() {
        pipe_log(err, logs.join(format!("worker-{}-{pid}.err", req.wid.0)), req.label.clone(), pid, to_driver);
    }
    let weak = Arc::downgrade(node);
    let flag = req.flag;
    let wid = req.wid;
    let _ = std::thread::Builder::new().name("flare-reaper".into()).spawn(move || {
        let status = child.wait();
        flag.wait_done(Duration::from_secs(2));
        let reason = exit_reason(pid, status);
        if let Some(node) = weak.upgrade() {
            node.with_state(|st, fx| st.worker_died(wid, &reason, fx));
        }
    });
}

/// Why a worker process ended, from what waiting on it returned.
pub(crate) fn exit_reason(pid: u32, status: std::io::Result<std::process::ExitStatus>) -> String {
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (_, Some(sig)) => {
                format!("worker process {pid} was killed by signal {sig}{}", if sig == 9 { " (SIGKILL)" } else { "" })
            }
            (Some(code), None) => format!("worker process {pid} exited with code {code}"),
            _ => format!("worker process {pid} exited"),
        },
        Err(e) => format!("worker process {pid} could not be waited on: {e}"),
    }
}

/// A worker's `CUDA_VISIBLE_DEVICES` for the node's GPU ids `gpu_key`. The ids are the node's
/// own ordinals: where the node itself was limited to some GPUs, id i is the i-th of its
/// `CUDA_VISIBLE_DEVICES` entries (as in Ray).
pub(crate) fn cuda_visible_devices(gpu_key: &[u32]) -> String {
    let outer: Vec<String> = std::env::var("CUDA_VISIBLE_DEVICES")
        .map(|v| v.split(',').map(|e| e.trim().to_string()).filter(|e| !e.is_empty()).collect())
        .unwrap_or_default();
    let ids: Vec<String> = gpu_key.iter().map(|i| outer.get(*i as usize).cloned().unwrap_or_else(|| i.to_string())).collect();
    ids.join(",")
}

/// Copies a worker's output into its log file and, with a `(label pid=N)` prefix, to the driver.
fn pipe_log(
    src: impl std::io::Read + Send + 'static,
    path: std::path::PathBuf,
    label: Arc<Mutex<String>>,
    pid: u32,
    to_driver: bool,
) {
    let _ = std::thread::Builder::new().name("flare-log".into()).spawn(move || {
        let mut file = std::fs::File::create(&path).ok();
        let reader = BufReader::new(src);
        for line in reader.split(b'\n') {
            let Ok(line) = line else { break };
            let text = String::from_utf8_lossy(&line);
            if let Some(f) = file.as_mut() {
                let _ = writeln!(f, "{text}");
            }
            if to_driver {
                let name = label.lock().unwrap_or_else(|p| p.into_inner()).clone();
                eprintln!("({name} pid={pid}) {text}");
            }
        }
    });
}

/// Serves one worker's connection until it closes.
fn serve_worker(node: Arc<Node>, stream: UnixStream) {
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let conn = Arc::new(Conn::new(write_half));
    // A connection must register promptly; one that does not is dropped, not waited on forever.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let Ok(reader_half) = stream.try_clone() else { return };
    let mut rx = Receiver::new(reader_half);
    let (wid, pid) = match rx.recv::<ToNode>() {
        Ok(Some(ToNode::Register { worker_id, pid })) => (worker_id, pid),
        _ => return,
    };
    let _ = stream.set_read_timeout(None);
    serve_connection(node, wid, pid, conn, rx, Via::Local);
}

/// How a worker connection reaches this node.
pub(crate) enum Via {
    /// A local worker (Unix socket).
    Local,
    /// A worker a node agent started (TCP).
    Agent(Arc<super::cluster::AgentLink>),
    /// Another driver that owns a named actor (TCP to its cluster port, here).
    Peer(String),
}

/// Serves a registered worker's connection until it closes; `via` says how it reaches this
/// node (large results of a worker on another node, or of another driver's actor, are
/// fetched on the way in).
pub(crate) fn serve_connection(node: Arc<Node>, wid: WorkerId, pid: u32, conn: Arc<Conn>, mut rx: Receiver, via: Via) {
    let flag = node.lock().workers.get(&wid).map(|w| w.flag.clone());
    if let Some(f) = &flag {
        f.set(1);
    }
    node.with_state(|st, fx| st.worker_connected(wid, pid, conn.clone(), fx));
    loop {
        match rx.recv::<ToNode>() {
            Ok(Some(msg)) => {
                let msg = match &via {
                    Via::Agent(link) => super::cluster::localize_message(&node, link, &conn, msg),
                    Via::Peer(owner) => Some(super::peers::fetch_peer_result(&node, owner, &conn, msg)),
                    Via::Local => Some(msg),
                };
                if let Some(msg) = msg {
                    handle_message(&node, wid, &conn, msg);
                }
            }
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(worker = %wid, "dropping the connection of a worker that sent a bad frame: {e}");
                break;
            }
        }
    }
    if let Some(f) = &flag {
        f.set(2);
    }
}

fn handle_message(node: &Arc<Node>, wid: WorkerId, conn: &Arc<Conn>, msg: ToNode) {
    match msg {
        ToNode::Register { .. } => {}
        ToNode::SubmitTask(spec) => node.submit_task(wid, spec),
        ToNode::SubmitActorTask(spec) => node.submit_actor_task(wid, spec),
        ToNode::Put { id, payload, contained } => node.put(wid, id, payload, contained),
        ToNode::AddRef(k) => node.add_ref(wid, k),
        ToNode::RemoveRef(k) => node.remove_ref(wid, k),
        ToNode::TaskDone { task_id, result } => node.with_state(|st, fx| st.task_done(wid, task_id, result, fx)),
        ToNode::ActorReady { actor_id, result } => node.with_state(|st, fx| st.actor_ready(actor_id, result, fx)),
        ToNode::Request { req, body } => {
            let reply = |body: Reply| {
                let _ = conn.send(&ToWorker::Reply { req, body });
            };
            match body {
                Request::Get(id) => {
                    let c = conn.clone();
                    node.get(wid, id).on_complete(move |r| {
                        let body = Reply::Object(r.as_ref().map(|d| d.to_payload()).map_err(|e| e.clone()));
                        let _ = c.send(&ToWorker::Reply { req, body });
                    });
                }
                Request::CreateActor(spec) => reply(Reply::Unit(node.create_actor(wid, spec))),
                Request::Cancel { id, force } => reply(Reply::Unit(node.cancel(id, force))),
                Request::KillActor { id, no_restart } => reply(Reply::Unit(node.kill_actor(id, no_restart))),
                Request::GetNamedActor { name, namespace } => reply(Reply::NamedActor(node.get_named_actor(&name, &namespace))),
                Request::CreatePlacementGroup(spec) => reply(Reply::Unit(node.create_placement_group(spec))),
                Request::RemovePlacementGroup(id) => reply(Reply::Unit(node.remove_placement_group(id))),
                Request::PlacementGroupReady(id) => {
                    let c = conn.clone();
                    node.placement_group_ready(id).on_complete(move |r| {
                        let _ = c.send(&ToWorker::Reply { req, body: Reply::Unit(r.clone()) });
                    });
                }
                Request::GetPlacementGroup { name } => reply(Reply::PlacementGroup(node.get_placement_group(&name))),
                Request::RecycledFile(size) => reply(Reply::Path(node.recycled_file(wid, size))),
                Request::State(q) => {
                    let snap = node.state(q);
                    let _: StateQuery = q;
                    reply(Reply::State(Box::new(Ok(snap))));
                }
            }
        }
    }
}
