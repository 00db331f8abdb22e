//! A worker node's agent: registers with the head over gRPC and heartbeats, reconnecting when
//! the head restarts; and serves the drivers that schedule on the node ([`AgentService`]):
//! receives a driver's executable (cached by SHA-256), starts its workers from it (they connect
//! back to the driver), kills them on request and when the driver goes, and serves the object
//! files they write to pulls.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::ids::WorkerId;
use crate::protocol::{read_frame, write_frame, Conn, FromAgent, Hello, Receiver, ToAgent};
use crate::resources::{Allocation, ResourcePool, ResourceSet, CPU};
use crate::transfer::token_ok;

use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request};

use super::rpc::{HeartbeatRequest, RegisterNodeRequest, RpcClient};

#[derive(Debug, Clone)]
pub struct NodeAgentOptions {
    /// `host:port` of the head's gRPC service.
    pub head: String,
    pub token: String,
    pub node_id: String,
    /// This node's address as other nodes will reach it.
    pub address: String,
    pub resources: HashMap<String, f64>,
    pub labels: HashMap<String, String>,
    pub session_dir: PathBuf,
}

/// What `node.json` holds.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NodeInfo {
    pub pid: u32,
    pub node_id: String,
    pub head: String,
}

fn authed<T>(msg: T, token: &str) -> Request<T> {
    let mut r = Request::new(msg);
    if let Ok(v) = format!("Bearer {token}").parse() {
        r.metadata_mut().insert("authorization", v);
    }
    r
}

async fn connect(head: &str) -> Result<RpcClient<Channel>, String> {
    let ep = Endpoint::from_shared(format!("http://{head}"))
        .map_err(|e| format!("`{head}` is not a head address: {e}"))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5));
    let ch = ep.connect().await.map_err(|e| format!("cannot reach the head at {head}: {e}"))?;
    Ok(RpcClient::new(ch))
}

/// Runs the agent until SIGTERM or SIGINT. Fails at once if the head refuses the token.
pub fn run(mut opts: NodeAgentOptions) -> Result<(), String> {
    std::fs::create_dir_all(&opts.session_dir).map_err(|e| e.to_string())?;
    // The service drivers connect to; its address is what the head's node table lists.
    let host = opts.address.rsplit_once(':').map(|(h, _)| h.to_string()).unwrap_or_else(|| opts.address.clone());
    let port: u16 = opts.address.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or(0);
    let listener = TcpListener::bind((host.as_str(), port)).map_err(|e| format!("cannot listen on {host}:{port}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    opts.address = format!("{host}:{}", bound.port());
    let svc = AgentService::new(opts.token.clone(), opts.node_id.clone(), opts.session_dir.clone(), &opts.resources)?;
    let shm_root = svc.shm_root.clone();
    svc.spawn(listener)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(|e| e.to_string())?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).map_err(|e| e.to_string())?;
        let mut registered_once = false;
        loop {
            let session = async {
                let mut c = connect(&opts.head).await?;
                let req = RegisterNodeRequest {
                    node_id: opts.node_id.clone(),
                    address: opts.address.clone(),
                    resources: opts.resources.clone(),
                    labels: opts.labels.clone(),
                    pid: std::process::id(),
                };
                let reply = c.register_node(authed(req, &opts.token)).await.map_err(|s| match s.code() {
                    Code::Unauthenticated | Code::PermissionDenied => {
                        format!("FATAL the head refused this node: {}", s.message())
                    }
                    _ => format!("registering with the head: {}", s.message()),
                })?;
                let every = Duration::from_millis(reply.into_inner().heartbeat_interval_ms.clamp(50, 10_000));
                if !registered_once {
                    let info = NodeInfo { pid: std::process::id(), node_id: opts.node_id.clone(), head: opts.head.clone() };
                    let p = opts.session_dir.join("node.json");
                    std::fs::write(&p, serde_json::to_vec_pretty(&info).unwrap()).map_err(|e| e.to_string())?;
                    registered_once = true;
                }
                tracing::info!(node = %opts.node_id, head = %opts.head, "registered with the head");
                loop {
                    tokio::time::sleep(every).await;
                    let r = c
                        .heartbeat(authed(HeartbeatRequest { node_id: opts.node_id.clone() }, &opts.token))
                        .await
                        .map_err(|s| s.message().to_string())?;
                    if !r.into_inner().known {
                        return Err::<(), String>("the head no longer knows this node; registering again".into());
                    }
                }
            };
            tokio::select! {
                r = session => {
                    if let Err(e) = r {
                        if let Some(fatal) = e.strip_prefix("FATAL ") {
                            return Err(fatal.to_string());
                        }
                        tracing::warn!("{e}; retrying");
                    }
                }
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        let _ = std::fs::remove_file(opts.session_dir.join("node.json"));
        let _ = std::fs::remove_dir_all(&shm_root);
        Ok(())
    })
}

/// The node's resources as its agent grants them to drivers: every driver that schedules on
/// the node takes what it uses from here first (`Acquire`), so two drivers never hold the same
/// CPU or GPU share of it; each hears what the others hold (`Usage`) for its view.
///
/// Placement groups' bundles on the node live here too (`MakeBundle`): a bundle is a share
/// of the node that no driver's plain grants can take, and that any driver that knows the
/// group's key takes from (`AcquireIn`), so the work of several drivers shares one group
/// without oversubscribing its bundles (Ray's bundle resources on a raylet).
struct Ledger {
    pool: ResourcePool,
    /// Grants by driver session and lease.
    grants: HashMap<(u64, u64), LedgerGrant>,
    sessions: HashMap<u64, LedgerSession>,
    /// Placement-group bundles on this node, by group key and index.
    bundles: HashMap<BundleKey, LedgerBundle>,
}

/// A placement group's cluster-wide key and a bundle index.
type BundleKey = (String, u32);

struct LedgerGrant {
    alloc: Allocation,
    /// CPUs lent back while its work blocks (fixed point).
    lent: u64,
    /// The bundle it was taken from (`None`: the node).
    bundle: Option<BundleKey>,
}

struct LedgerSession {
    conn: Arc<Conn>,
    /// The others' use it was last told (`None`: the head's sessions for job entrypoints,
    /// which are not told).
    told: Option<Allocation>,
    /// The bundles it took from or made, and the others' use of each it was last told.
    bundles: HashMap<BundleKey, Allocation>,
}

struct LedgerBundle {
    /// The bundle's resources, and what no grant holds of them.
    pool: ResourcePool,
    /// What it took from the node.
    reserved: Allocation,
    /// The session that made it (its own view counts it as its own use); `None` once that
    /// session ended.
    creator: Option<u64>,
    /// Outlives its creator's session.
    detached: bool,
}

/// The most grants one driver session holds at once.
const MAX_GRANTS: usize = 1 << 16;
/// The longest placement-group key taken.
const MAX_PG_KEY: usize = 512;

/// The pool a grant was taken from: its bundle's, while the bundle is here, else the node's.
fn source<'a>(
    node: &'a mut ResourcePool,
    bundles: &'a mut HashMap<BundleKey, LedgerBundle>,
    bundle: Option<&BundleKey>,
) -> &'a mut ResourcePool {
    match bundle.and_then(|k| bundles.get_mut(k)) {
        Some(b) => &mut b.pool,
        None => node,
    }
}

/// `alloc` less `lent` CPUs.
fn without_lent(alloc: &Allocation, lent: u64) -> Allocation {
    let mut a = alloc.clone();
    a.resources.set_fixed(CPU, a.resources.get_fixed(CPU).saturating_sub(lent));
    a
}

impl Ledger {
    fn new(pool: ResourcePool) -> Self {
        Ledger { pool, grants: HashMap::new(), sessions: HashMap::new(), bundles: HashMap::new() }
    }

    /// What sessions other than `me` hold of the node now (lent CPUs left out): their plain
    /// grants and the bundles they did not make (`me`'s own bundles are in its view already).
    fn others(&self, me: u64) -> Allocation {
        let mut sum = Allocation::default();
        for ((s, _), g) in &self.grants {
            if *s != me && g.bundle.is_none() {
                sum.add(&without_lent(&g.alloc, g.lent));
            }
        }
        for b in self.bundles.values() {
            if b.creator != Some(me) {
                sum.add(&b.reserved);
            }
        }
        sum.lease = 0;
        sum
    }

    /// What sessions other than `me` hold of bundle `key` now.
    fn others_in(&self, me: u64, key: &BundleKey) -> Allocation {
        let mut sum = Allocation::default();
        for ((s, _), g) in &self.grants {
            if *s != me && g.bundle.as_ref() == Some(key) {
                sum.add(&without_lent(&g.alloc, g.lent));
            }
        }
        sum.lease = 0;
        sum
    }

    /// The `Usage` and `BundleUsage` messages due to sessions whose others' use changed.
    fn usage_updates(&mut self) -> Vec<(Arc<Conn>, FromAgent)> {
        let ids: Vec<u64> = self.sessions.keys().copied().collect();
        let mut out = Vec::new();
        for id in ids {
            let now = self.others(id);
            let keys: Vec<BundleKey> = self.sessions[&id].bundles.keys().cloned().collect();
            let in_bundles: Vec<(BundleKey, Allocation)> = keys
                .into_iter()
                .filter(|k| self.bundles.contains_key(k))
                .map(|k| {
                    let a = self.others_in(id, &k);
                    (k, a)
                })
                .collect();
            let Some(s) = self.sessions.get_mut(&id) else { continue };
            if let Some(told) = &mut s.told {
                if !now.same_as(told) {
                    *told = now.clone();
                    out.push((s.conn.clone(), FromAgent::Usage { others: now }));
                }
            }
            for (k, a) in in_bundles {
                let told = s.bundles.entry(k.clone()).or_default();
                if !a.same_as(told) {
                    *told = a.clone();
                    out.push((s.conn.clone(), FromAgent::BundleUsage { pg: k.0, index: k.1, others: a }));
                }
            }
        }
        out
    }

    /// Gives a grant's resources back to where they were taken from.
    fn give_back(&mut self, g: LedgerGrant) {
        source(&mut self.pool, &mut self.bundles, g.bundle.as_ref()).release(&without_lent(&g.alloc, g.lent));
    }

    /// Removes every bundle of group `pg` here: what no grant holds goes back to the node, the
    /// grants in them become plain grants of the node, and the sessions that knew of them hear
    /// `BundleGone`.
    fn remove_bundles(&mut self, pg: &str, why: &str) -> Vec<(Arc<Conn>, FromAgent)> {
        let keys: Vec<BundleKey> = self.bundles.keys().filter(|(p, _)| p == pg).cloned().collect();
        if keys.is_empty() {
            return Vec::new();
        }
        let mut told = std::collections::HashSet::new();
        for k in &keys {
            let Some(b) = self.bundles.remove(k) else { continue };
            self.pool.release(&b.reserved);
            told.extend(b.creator);
            for g in self.grants.values_mut().filter(|g| g.bundle.as_ref() == Some(k)) {
                // Just released as part of the bundle: free on the node.
                let took = self.pool.try_take(&without_lent(&g.alloc, g.lent));
                debug_assert!(took, "a grant in a bundle fits in what the bundle gave back");
                g.bundle = None;
            }
        }
        let mut out = Vec::new();
        for (id, s) in &mut self.sessions {
            let knew = keys.iter().any(|k| s.bundles.remove(k).is_some());
            if knew || told.contains(id) {
                out.push((s.conn.clone(), FromAgent::BundleGone { pg: pg.to_string(), why: why.to_string() }));
            }
        }
        out
    }

    /// Handles one grant message of session `me`; returns the replies and updates to send.
    fn handle(&mut self, me: u64, msg: ToAgent) -> Vec<(Arc<Conn>, FromAgent)> {
        let Some(conn) = self.sessions.get(&me).map(|s| s.conn.clone()) else { return Vec::new() };
        let mut out = Vec::new();
        match msg {
            ToAgent::Acquire { lease, .. } | ToAgent::AcquireAny { lease, .. } | ToAgent::AcquireIn { lease, .. } => {
                let held = self.grants.keys().filter(|(s, _)| *s == me).count();
                let mut bundle = None;
                let taken = if self.grants.contains_key(&(me, lease)) {
                    Err(format!("lease {lease} is held already"))
                } else if held >= MAX_GRANTS {
                    Err(format!("this driver holds {held} grants on the node, the most it may"))
                } else {
                    match msg {
                        ToAgent::Acquire { alloc, .. } => {
                            let ok = self.pool.try_take(&alloc);
                            let why =
                                format!("{} is not free: {} of {} is", alloc.resources, self.pool.available(), self.pool.total());
                            ok.then_some(alloc).ok_or(why)
                        }
                        ToAgent::AcquireAny { resources, .. } => self.pool.try_allocate(&resources).ok_or_else(|| {
                            format!("{resources} is not free: {} of {} is", self.pool.available(), self.pool.total())
                        }),
                        ToAgent::AcquireIn { alloc, pg, index, .. } => {
                            let key = (pg, index);
                            match self.bundles.get_mut(&key) {
                                None => {
                                    let why = format!("placement group {} has no bundle {index} on this node", key.0);
                                    out.push((conn.clone(), FromAgent::BundleGone { pg: key.0.clone(), why: why.clone() }));
                                    Err(why)
                                }
                                Some(b) => {
                                    let ok = b.pool.try_take(&alloc);
                                    let why = format!(
                                        "{} is not free in bundle {index}: {} of {} is",
                                        alloc.resources,
                                        b.pool.available(),
                                        b.pool.total()
                                    );
                                    if let Some(s) = self.sessions.get_mut(&me) {
                                        s.bundles.entry(key.clone()).or_default();
                                    }
                                    bundle = Some(key);
                                    ok.then_some(alloc).ok_or(why)
                                }
                            }
                        }
                        _ => unreachable!("matched above"),
                    }
                };
                match taken {
                    Ok(mut alloc) => {
                        alloc.lease = lease;
                        self.grants.insert((me, lease), LedgerGrant { alloc: alloc.clone(), lent: 0, bundle });
                        out.push((conn, FromAgent::Granted { lease, alloc }));
                    }
                    Err(why) => {
                        let others = match &bundle {
                            Some(k) => self.others_in(me, k),
                            None => self.others(me),
                        };
                        out.push((conn, FromAgent::Denied { lease, others, why }));
                    }
                }
            }
            ToAgent::MakeBundle { lease, pg, index, detached } => {
                let key = (pg, index);
                let ok = key.0.len() <= MAX_PG_KEY
                    && !self.bundles.contains_key(&key)
                    && self.grants.get(&(me, lease)).is_some_and(|g| g.bundle.is_none() && g.lent == 0);
                if !ok {
                    // A grant that cannot become the bundle stays a grant (its driver releases it).
                    tracing::warn!(pg = %key.0, index, "refused to make a bundle of grant {lease}");
                    out.push((conn, FromAgent::BundleGone { pg: key.0, why: format!("bundle {index} could not be made") }));
                } else if let Some(g) = self.grants.remove(&(me, lease)) {
                    let mut reserved = g.alloc;
                    reserved.lease = 0;
                    let pool = ResourcePool::from_allocation(&reserved);
                    self.bundles.insert(key.clone(), LedgerBundle { pool, reserved, creator: Some(me), detached });
                    if let Some(s) = self.sessions.get_mut(&me) {
                        s.bundles.insert(key, Allocation::default());
                    }
                }
            }
            ToAgent::RemoveBundles { pg } => out.extend(self.remove_bundles(&pg, "the placement group was removed")),
            ToAgent::Release { lease } => {
                if let Some(g) = self.grants.remove(&(me, lease)) {
                    self.give_back(g);
                }
            }
            ToAgent::Lend { lease } => {
                if let Some(g) = self.grants.get_mut(&(me, lease)) {
                    if g.lent == 0 {
                        let mut part = Allocation::default();
                        part.resources.set_fixed(CPU, g.alloc.resources.get_fixed(CPU));
                        g.lent = part.resources.get_fixed(CPU);
                        source(&mut self.pool, &mut self.bundles, g.bundle.as_ref()).release(&part);
                    }
                }
            }
            ToAgent::Reclaim { lease } => {
                if let Some(g) = self.grants.get_mut(&(me, lease)) {
                    let mut part = Allocation::default();
                    part.resources.set_fixed(CPU, g.lent);
                    if g.lent > 0 && source(&mut self.pool, &mut self.bundles, g.bundle.as_ref()).try_take(&part) {
                        g.lent = 0;
                    }
                }
            }
            _ => {}
        }
        out.extend(self.usage_updates());
        out
    }

    /// A driver session ended: everything it held goes back, and the bundles it made unless
    /// they are detached.
    fn end_session(&mut self, me: u64) -> Vec<(Arc<Conn>, FromAgent)> {
        self.sessions.remove(&me);
        let mine: Vec<(u64, u64)> = self.grants.keys().filter(|(s, _)| *s == me).copied().collect();
        for k in mine {
            if let Some(g) = self.grants.remove(&k) {
                self.give_back(g);
            }
        }
        let mut out = Vec::new();
        let made: Vec<(String, bool)> =
            self.bundles.iter().filter(|(_, b)| b.creator == Some(me)).map(|((pg, _), b)| (pg.clone(), b.detached)).collect();
        for (pg, detached) in made {
            if detached {
                for ((p, _), b) in self.bundles.iter_mut() {
                    if *p == pg {
                        b.creator = None;
                    }
                }
            } else {
                out.extend(self.remove_bundles(&pg, "the driver that made the placement group is gone"));
            }
        }
        out.extend(self.usage_updates());
        out
    }
}

fn send_all(msgs: Vec<(Arc<Conn>, FromAgent)>) {
    for (conn, m) in msgs {
        let _ = conn.send(&m);
    }
}

/// What a node's agent service needs: the cluster token, the node's name and where it keeps
/// shipped executables, worker logs and the object files of the drivers it serves; and the
/// node's resources, which it grants to those drivers.
#[derive(Clone)]
pub struct AgentService {
    pub token: String,
    pub node_name: String,
    pub session_dir: PathBuf,
    /// Parent of each driver's store directory on this node (tmpfs when there is one).
    pub shm_root: PathBuf,
    ledger: Arc<Mutex<Ledger>>,
}

impl AgentService {
    pub fn new(token: String, node_name: String, session_dir: PathBuf, resources: &HashMap<String, f64>) -> Result<Self, String> {
        let mut total = ResourceSet::new();
        for (k, v) in resources {
            total.set(k, *v).map_err(|e| format!("resource {k}: {e}"))?;
        }
        let pool = ResourcePool::new(total)?;
        let ledger = Arc::new(Mutex::new(Ledger::new(pool)));
        let base = if Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
        remove_stale_stores(&base);
        let shm_root = base.join(format!("flare_node_{}_{}", std::process::id(), super::now_ms()));
        for d in [session_dir.join("exe"), session_dir.join("logs"), shm_root.clone()] {
            std::fs::create_dir_all(&d).map_err(|e| format!("creating {}: {e}", d.display()))?;
        }
        Ok(AgentService { token, node_name, session_dir, shm_root, ledger })
    }

    /// Serves drivers and object pulls on `listener` from a thread of its own.
    pub fn spawn(self, listener: TcpListener) -> Result<(), String> {
        let svc = Arc::new(self);
        std::thread::Builder::new()
            .name("flare-agent".into())
            .spawn(move || {
                for s in listener.incoming().flatten() {
                    let svc = svc.clone();
                    let _ = std::thread::Builder::new().name("flare-agent-conn".into()).spawn(move || svc.serve(s));
                }
            })
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn serve(&self, mut s: TcpStream) {
        let _ = s.set_nodelay(true);
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        // A job's hello carries its entrypoint (up to 64 KiB) and environment.
        let Ok(hello) = read_frame::<Hello>(&mut s, 1 << 20) else { return };
        match hello {
            Hello::Driver { token, exe_hash, exe_size, pid, worker_addr } if token_ok(&token, &self.token) => {
                if let Err(e) = self.driver_session(s, &exe_hash, exe_size, pid, &worker_addr) {
                    tracing::warn!("a driver session ended: {e}");
                }
            }
            Hello::Pull { token, path, offset, len, consume } if token_ok(&token, &self.token) => {
                if let Err(e) = crate::transfer::serve_pull(s, &path, offset, len, consume, std::slice::from_ref(&self.shm_root))
                {
                    tracing::debug!("serving a pull of {path}: {e}");
                }
            }
            Hello::Grants { token } if token_ok(&token, &self.token) => self.grants_session(s),
            Hello::Job { token, id, entrypoint, env, package_size } if token_ok(&token, &self.token) => {
                if let Err(e) = self.job_session(s, &id, &entrypoint, &env, package_size) {
                    tracing::warn!("job {id}: {e}");
                }
            }
            _ => {
                let _ = write_frame(&mut s, &FromAgent::Refused("this node requires its cluster's token".into()));
            }
        }
    }

    /// Runs a job's entrypoint for the head: unpacks its working dir, starts `sh -c` in its own
    /// process group, streams its output, reports its exit; stops it when the head says so or
    /// goes away.
    fn job_session(
        &self,
        mut s: TcpStream,
        id: &str,
        entrypoint: &str,
        env: &[(String, String)],
        package_size: u64,
    ) -> Result<(), String> {
        let refuse = |s: &mut TcpStream, msg: String| {
            let _ = write_frame(s, &FromAgent::Refused(msg.clone()));
            Err(msg)
        };
        if !super::jobs::valid_id(id) {
            return refuse(&mut s, format!("job id `{id}` must be 1-128 letters, digits, `_`, `-` or `.`"));
        }
        if package_size > super::MAX_PACKAGE as u64 {
            return refuse(
                &mut s,
                format!("the working_dir package is {package_size} bytes; at most {} are taken", super::MAX_PACKAGE),
            );
        }
        let dir = self.session_dir.join("jobs").join(id);
        let cwd = if package_size == 0 {
            self.session_dir.clone()
        } else {
            let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
            let zip = dir.join("package.zip");
            let wd = dir.join("working_dir");
            let unpacked = std::fs::create_dir_all(&wd)
                .map_err(|e| format!("creating {}: {e}", wd.display()))
                .and_then(|_| receive_package(&mut s, &zip, package_size))
                .and_then(|_| super::jobs::unpack(&zip, &wd));
            let _ = std::fs::remove_file(&zip);
            if let Err(e) = unpacked {
                return refuse(&mut s, format!("Failed to set up the working_dir on node {}: {e}", self.node_name));
            }
            wd
        };
        let _ = s.set_read_timeout(None);
        // A guard in the job's process group reads fd 3, a pipe this agent holds open: `done`
        // when the entrypoint ended here; end of file without it (this agent was killed) ends
        // the whole group, so a job never outlives its node's agent.
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe2 fills the two descriptors it returns.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return refuse(&mut s, format!("creating the job's guard pipe: {}", std::io::Error::last_os_error()));
        }
        let (guard_r, guard_w) = (fds[0], fds[1]);
        // SAFETY: the write end is ours alone from here on.
        let mut guard = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(guard_w) };
        let script =
            format!("(read -r x <&3; [ \"$x\" = done ] || kill -KILL 0) </dev/null >/dev/null 2>&1 &\nexec 3<&-\n{entrypoint}");
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(script)
            .current_dir(&cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("FLARE_NODE_NAME", &self.node_name)
            .process_group(0);
        for (k, v) in env {
            cmd.env(k, v);
        }
        // SAFETY: only dup2/fcntl between fork and exec: the guard pipe's read end as fd 3.
        unsafe {
            cmd.pre_exec(move || {
                if guard_r == 3 {
                    libc::fcntl(3, libc::F_SETFD, 0);
                } else if libc::dup2(guard_r, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let spawned = cmd.spawn();
        // SAFETY: the read end now lives in the child only.
        unsafe { libc::close(guard_r) };
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => return refuse(&mut s, format!("Failed to start the entrypoint on node {}: {e}", self.node_name)),
        };
        let pgid = child.id() as i32;
        let conn = Arc::new(Conn::new(s.try_clone().map_err(|e| e.to_string())?));
        let _ = conn.send(&FromAgent::JobStarted { pid: child.id() });
        tracing::info!(job = id, pid = pgid, "running a job's entrypoint");
        let (drained_tx, drained) = std::sync::mpsc::channel::<()>();
        for out in [
            child.stdout.take().map(|o| Box::new(o) as Box<dyn Read + Send>),
            child.stderr.take().map(|e| Box::new(e) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let (conn, drained_tx) = (conn.clone(), drained_tx.clone());
            let _ = std::thread::Builder::new().name("flare-job-output".into()).spawn(move || {
                let mut out = out;
                let mut buf = vec![0u8; 64 << 10];
                while let Ok(n @ 1..) = out.read(&mut buf) {
                    if conn.send(&FromAgent::JobOutput(buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
                let _ = drained_tx.send(());
            });
        }
        drop(drained_tx);
        let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let waiter = {
            let (conn, finished) = (conn.clone(), finished.clone());
            std::thread::Builder::new()
                .name("flare-job-wait".into())
                .spawn(move || {
                    let status = child.wait();
                    finished.store(true, Ordering::SeqCst);
                    // The entrypoint ended here: its guard leaves the rest of the group be.
                    let _ = guard.write_all(b"done\n");
                    drop(guard);
                    // The output that is still in the pipes goes first (a process the entrypoint
                    // left running may hold them open: wait for it at most 2 s).
                    let deadline = std::time::Instant::now() + Duration::from_secs(2);
                    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
                        if drained.recv_timeout(left).is_err() {
                            break;
                        }
                    }
                    use std::os::unix::process::ExitStatusExt;
                    let (code, signal) = match status {
                        Ok(st) => (st.code(), st.signal()),
                        Err(_) => (None, None),
                    };
                    let _ = conn.send(&FromAgent::JobExited { code, signal });
                })
                .map_err(|e| e.to_string())?
        };
        // The head's side: a stop, or the head gone, ends the job.
        let mut rx = Receiver::new(s);
        loop {
            match rx.recv::<ToAgent>() {
                Ok(Some(ToAgent::StopJob)) | Ok(None) | Err(_) => break,
                Ok(Some(_)) => {}
            }
        }
        if !finished.load(Ordering::SeqCst) {
            // SAFETY: signals to the job's own process group, whose leader is not yet reaped.
            unsafe { libc::kill(-pgid, libc::SIGTERM) };
            let deadline = std::time::Instant::now() + Duration::from_secs(3);
            while !finished.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if !finished.load(Ordering::SeqCst) {
                // SAFETY: as above.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
            }
        }
        let _ = waiter.join();
        // The head keeps the job's record and log; the unpacked copy here goes.
        let _ = std::fs::remove_dir_all(&dir);
        tracing::info!(job = id, "job ended");
        Ok(())
    }

    /// Holds resources for the head (a job entrypoint's) until the connection closes.
    fn grants_session(&self, s: TcpStream) {
        let _ = s.set_read_timeout(None);
        static GRANT_SESSIONS: AtomicU64 = AtomicU64::new(1 << 62);
        let session = GRANT_SESSIONS.fetch_add(1, Ordering::Relaxed);
        let Ok(w) = s.try_clone() else { return };
        let conn = Arc::new(Conn::new(w));
        self.ledger
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sessions
            .insert(session, LedgerSession { conn, told: None, bundles: HashMap::new() });
        let mut rx = Receiver::new(s);
        while let Ok(Some(m)) = rx.recv::<ToAgent>() {
            if matches!(m, ToAgent::AcquireAny { .. } | ToAgent::Release { .. }) {
                let out = self.ledger.lock().unwrap_or_else(|p| p.into_inner()).handle(session, m);
                send_all(out);
            }
        }
        let out = self.ledger.lock().unwrap_or_else(|p| p.into_inner()).end_session(session);
        send_all(out);
    }

    /// Receives the driver's executable unless it is cached, then starts and kills workers for
    /// the driver until its connection closes, and then stops them all.
    fn driver_session(&self, mut s: TcpStream, hash: &str, size: u64, driver_pid: u32, worker_addr: &str) -> Result<(), String> {
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            let _ = write_frame(&mut s, &FromAgent::Refused("the executable hash must be 64 hex digits".into()));
            return Err("bad executable hash".into());
        }
        if size > MAX_EXE {
            let msg = format!("the executable is {size} bytes; this node takes at most {MAX_EXE}");
            let _ = write_frame(&mut s, &FromAgent::Refused(msg.clone()));
            return Err(msg);
        }
        let exe = self.session_dir.join("exe").join(hash);
        let need_exe = !exe.exists();
        write_frame(&mut s, &FromAgent::Welcome { node_id: self.node_name.clone(), need_exe }).map_err(|e| e.to_string())?;
        if need_exe {
            let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
            if let Err(e) = receive_exe(&mut s, &exe, hash, size) {
                let _ = write_frame(&mut s, &FromAgent::Refused(e.clone()));
                return Err(e);
            }
        }
        write_frame(&mut s, &FromAgent::Ready).map_err(|e| e.to_string())?;
        let _ = s.set_read_timeout(None);
        static SESSIONS: AtomicU64 = AtomicU64::new(0);
        let session = SESSIONS.fetch_add(1, Ordering::Relaxed);
        let shm = self.shm_root.join(format!("driver-{driver_pid}-{session}"));
        std::fs::create_dir_all(&shm).map_err(|e| format!("creating {}: {e}", shm.display()))?;
        let conn = Arc::new(Conn::new(s.try_clone().map_err(|e| e.to_string())?));
        let first = {
            let mut l = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
            let others = l.others(session);
            l.sessions.insert(session, LedgerSession { conn: conn.clone(), told: Some(others.clone()), bundles: HashMap::new() });
            others
        };
        // What other drivers hold here already, for this driver's first view of the node.
        let _ = conn.send(&FromAgent::Usage { others: first });
        let mut rx = Receiver::new(s);
        let children: Arc<Mutex<HashMap<WorkerId, u32>>> = Arc::default();
        tracing::info!(driver = driver_pid, "serving a driver");
        loop {
            match rx.recv::<ToAgent>() {
                Ok(Some(ToAgent::Spawn { wid, gpu_key })) => {
                    // Spawned from this thread: a worker's parent-death signal follows the thread
                    // that forked it, so the workers die with the driver's session.
                    if let Err(e) = self.spawn_worker(wid, &gpu_key, &exe, &shm, worker_addr, &conn, &children) {
                        let _ = conn.send(&FromAgent::Exited { wid, reason: format!("could not start a worker: {e}") });
                    }
                }
                Ok(Some(ToAgent::Free { path })) => {
                    // Only this driver's own object files here.
                    let inside =
                        std::fs::canonicalize(&path).is_ok_and(|p| std::fs::canonicalize(&shm).is_ok_and(|d| p.starts_with(d)));
                    if inside {
                        let _ = std::fs::remove_file(&path);
                    }
                }
                Ok(Some(ToAgent::Kill { wid })) => {
                    if let Some(pid) = children.lock().unwrap_or_else(|p| p.into_inner()).get(&wid) {
                        // Safety: plain syscall on our own child.
                        unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
                    }
                }
                Ok(Some(
                    m @ (ToAgent::Acquire { .. }
                    | ToAgent::AcquireIn { .. }
                    | ToAgent::MakeBundle { .. }
                    | ToAgent::RemoveBundles { .. }
                    | ToAgent::Release { .. }
                    | ToAgent::Lend { .. }
                    | ToAgent::Reclaim { .. }),
                )) => {
                    let out = self.ledger.lock().unwrap_or_else(|p| p.into_inner()).handle(session, m);
                    send_all(out);
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        for pid in children.lock().unwrap_or_else(|p| p.into_inner()).values() {
            // Safety: plain syscall on our own child.
            unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
        }
        // Its workers are being killed: what it held is free for the other drivers.
        let out = self.ledger.lock().unwrap_or_else(|p| p.into_inner()).end_session(session);
        send_all(out);
        let _ = std::fs::remove_dir_all(&shm);
        tracing::info!(driver = driver_pid, "driver gone; its workers were stopped");
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn spawn_worker(
        &self,
        wid: WorkerId,
        gpu_key: &[u32],
        exe: &Path,
        shm: &Path,
        worker_addr: &str,
        conn: &Arc<Conn>,
        children: &Arc<Mutex<HashMap<WorkerId, u32>>>,
    ) -> Result<(), String> {
        use crate::node::workers_env as env;
        let mut cmd = Command::new(exe);
        cmd.env(env::WORKER_ID, wid.0.to_string())
            .env(env::TCP, worker_addr)
            .env(env::TOKEN, &self.token)
            .env(env::SHM_DIR, shm)
            .env("FLARE_NODE_NAME", &self.node_name)
            .env_remove(env::SOCKET)
            .env_remove("FLARE_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if !gpu_key.is_empty() {
            cmd.env("CUDA_VISIBLE_DEVICES", crate::node::cuda_visible_devices(gpu_key));
        }
        let mut child = cmd.spawn().map_err(|e| e.to_string())?;
        let pid = child.id();
        children.lock().unwrap_or_else(|p| p.into_inner()).insert(wid, pid);
        let logs = self.session_dir.join("logs");
        for (out, ext) in [
            (child.stdout.take().map(|o| Box::new(o) as Box<dyn Read + Send>), "out"),
            (child.stderr.take().map(|e| Box::new(e) as Box<dyn Read + Send>), "err"),
        ] {
            let Some(out) = out else { continue };
            let path = logs.join(format!("worker-{}-{pid}.{ext}", wid.0));
            let conn = conn.clone();
            let _ = std::thread::Builder::new().name("flare-agent-log".into()).spawn(move || {
                let mut file = std::fs::File::create(&path).ok();
                for line in BufReader::new(out).split(b'\n') {
                    let Ok(line) = line else { break };
                    let text = String::from_utf8_lossy(&line).into_owned();
                    if let Some(f) = file.as_mut() {
                        let _ = writeln!(f, "{text}");
                    }
                    let _ = conn.send(&FromAgent::Log { wid, line: text });
                }
            });
        }
        let conn = conn.clone();
        let children = children.clone();
        let _ = std::thread::Builder::new().name("flare-agent-reaper".into()).spawn(move || {
            let reason = crate::node::exit_reason(pid, child.wait());
            children.lock().unwrap_or_else(|p| p.into_inner()).remove(&wid);
            let _ = conn.send(&FromAgent::Exited { wid, reason });
        });
        Ok(())
    }
}

/// Removes the store directories of agents that died without cleaning up (SIGKILL): named
/// `flare_node_<pid>_<ms>`, whose pid no longer exists.
fn remove_stale_stores(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("flare_node_").and_then(|r| r.split('_').next()).and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        // Safety: signal 0 only checks whether the process exists.
        let alive = unsafe { libc::kill(pid, 0) == 0 } || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if !alive {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The largest executable a node accepts from a driver.
const MAX_EXE: u64 = 4 << 30;

/// Receives an executable in chunks into `dest`, checking its size and SHA-256.
/// Receives a job's working-dir package of `size` bytes into `dest`.
fn receive_package(s: &mut TcpStream, dest: &Path, size: u64) -> Result<(), String> {
    let mut f = std::fs::File::create(dest).map_err(|e| format!("creating {}: {e}", dest.display()))?;
    let mut got = 0u64;
    while got < size {
        match read_frame::<ToAgent>(s, 16 << 20).map_err(|e| format!("receiving the package: {e}"))? {
            ToAgent::PackageChunk(bytes) => {
                got += bytes.len() as u64;
                if got > size {
                    return Err(format!("the package is longer than the {size} bytes announced"));
                }
                f.write_all(&bytes).map_err(|e| format!("writing {}: {e}", dest.display()))?;
            }
            other => return Err(format!("expected the package, got {other:?}")),
        }
    }
    Ok(())
}

fn receive_exe(s: &mut TcpStream, dest: &Path, hash: &str, size: u64) -> Result<(), String> {
    use sha2::Digest;
    let tmp = dest.with_extension(format!("part{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(|e| format!("creating {}: {e}", tmp.display()))?;
    let mut h = sha2::Sha256::new();
    let mut got = 0u64;
    let result = (|| loop {
        match read_frame::<ToAgent>(s, 16 << 20).map_err(|e| format!("receiving the executable: {e}"))? {
            ToAgent::ExeChunk(bytes) => {
                got += bytes.len() as u64;
                if got > size {
                    return Err(format!("the executable is longer than the {size} bytes announced"));
                }
                h.update(&bytes);
                f.write_all(&bytes).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
            }
            ToAgent::ExeEnd => break Ok(()),
            other => return Err(format!("expected the executable, got {other:?}")),
        }
    })();
    let done = result.and_then(|()| {
        let digest: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        if got != size || digest != hash {
            return Err(format!("the executable arrived damaged ({got} of {size} bytes, hash {digest}, expected {hash})"));
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
        drop(f);
        std::fs::rename(&tmp, dest).map_err(|e| format!("installing {}: {e}", dest.display()))
    });
    if done.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc(cpu: f64, gpus: &[u32]) -> Allocation {
        let mut a = Allocation::default();
        a.resources.set(CPU, cpu).unwrap();
        if !gpus.is_empty() {
            a.resources.set(crate::resources::GPU, gpus.len() as f64).unwrap();
        }
        a.gpus = gpus.iter().map(|&g| (g, crate::resources::to_fixed("GPU", 1.0).unwrap())).collect();
        a
    }

    fn usage_for(out: &[(Arc<Conn>, FromAgent)], conn: &Arc<Conn>) -> Option<Allocation> {
        out.iter().find_map(|(c, m)| match m {
            FromAgent::Usage { others } if Arc::ptr_eq(c, conn) => Some(others.clone()),
            _ => None,
        })
    }

    fn session(l: &mut Ledger, id: u64) -> Arc<Conn> {
        let c = Arc::new(Conn::new(std::io::sink()));
        l.sessions.insert(id, LedgerSession { conn: c.clone(), told: Some(Allocation::default()), bundles: HashMap::new() });
        c
    }

    fn gone_for(out: &[(Arc<Conn>, FromAgent)], conn: &Arc<Conn>) -> bool {
        out.iter().any(|(c, m)| matches!(m, FromAgent::BundleGone { .. }) && Arc::ptr_eq(c, conn))
    }

    fn bundle_usage_for(out: &[(Arc<Conn>, FromAgent)], conn: &Arc<Conn>) -> Option<Allocation> {
        out.iter().find_map(|(c, m)| match m {
            FromAgent::BundleUsage { others, .. } if Arc::ptr_eq(c, conn) => Some(others.clone()),
            _ => None,
        })
    }

    fn acquire_in(l: &mut Ledger, me: u64, lease: u64, a: Allocation) -> Vec<(Arc<Conn>, FromAgent)> {
        l.handle(me, ToAgent::AcquireIn { lease, alloc: a, pg: "pg1".into(), index: 0 })
    }

    #[test]
    fn bundles_are_shared_by_drivers_and_kept_from_plain_grants() {
        let mut total = ResourceSet::new();
        total.set(CPU, 4.0).unwrap();
        total.set(crate::resources::GPU, 1.0).unwrap();
        let mut l = Ledger::new(ResourcePool::new(total).unwrap());
        let (c1, c2, c3) = (session(&mut l, 1), session(&mut l, 2), session(&mut l, 3));
        // Driver 1 makes bundle 0 of "pg1" (2 CPUs and the GPU) out of a grant.
        let out = l.handle(1, ToAgent::Acquire { lease: 1, alloc: alloc(2.0, &[0]) });
        assert!(usage_for(&out, &c2).unwrap().same_as(&alloc(2.0, &[0])));
        // Driver 1's own view has it already, and the others saw it taken: nobody's use changed.
        let out = l.handle(1, ToAgent::MakeBundle { lease: 1, pg: "pg1".into(), index: 0, detached: false });
        assert!(out.is_empty(), "{:?}", out.iter().map(|(_, m)| m).collect::<Vec<_>>());
        // Plain grants cannot take it: 2 CPUs are left, and no GPU.
        assert!(matches!(l.handle(2, ToAgent::Acquire { lease: 1, alloc: alloc(1.0, &[0]) })[0].1, FromAgent::Denied { .. }));
        assert!(matches!(l.handle(2, ToAgent::Acquire { lease: 2, alloc: alloc(2.0, &[]) })[0].1, FromAgent::Granted { .. }));
        // Driver 2 takes the GPU and a CPU in the bundle; driver 1 (its creator) hears of it.
        let out = acquire_in(&mut l, 2, 3, alloc(1.0, &[0]));
        assert!(matches!(out[0].1, FromAgent::Granted { lease: 3, .. }), "{:?}", out[0].1);
        assert!(bundle_usage_for(&out, &c1).unwrap().same_as(&alloc(1.0, &[0])));
        // ...and the node-level use does not count it twice (driver 2's 2 plain CPUs, told before).
        assert!(usage_for(&out, &c1).is_none());
        assert!(l.others(1).same_as(&alloc(2.0, &[])));
        // Driver 3 cannot have the GPU too, and is told who holds what in the bundle.
        match &acquire_in(&mut l, 3, 1, alloc(1.0, &[0]))[0].1 {
            FromAgent::Denied { others, why, .. } => {
                assert!(others.same_as(&alloc(1.0, &[0])), "{others:?}");
                assert!(why.contains("bundle 0"), "{why}");
            }
            other => panic!("a bundle's GPU was granted twice: {other:?}"),
        }
        assert!(matches!(acquire_in(&mut l, 3, 2, alloc(1.0, &[]))[0].1, FromAgent::Granted { .. }));
        // A bundle that is not here is gone.
        let out = l.handle(3, ToAgent::AcquireIn { lease: 3, alloc: alloc(1.0, &[]), pg: "pg1".into(), index: 1 });
        assert!(gone_for(&out, &c3) && out.iter().any(|(_, m)| matches!(m, FromAgent::Denied { .. })));
        // Its creator goes: the bundle goes back, every driver that used it hears so, and the
        // grants in it stay their holders' (as plain grants of the node) until released.
        let out = l.end_session(1);
        assert!(gone_for(&out, &c2) && gone_for(&out, &c3));
        assert!(l.bundles.is_empty());
        assert_eq!(l.pool.available().get(CPU), 0.0, "2 CPUs driver 2 holds, 2 in the bundle's grants");
        assert!(matches!(l.handle(3, ToAgent::Acquire { lease: 4, alloc: alloc(0.0, &[0]) })[0].1, FromAgent::Denied { .. }));
        for (s, lease) in [(2, 2), (2, 3), (3, 2)] {
            l.handle(s, ToAgent::Release { lease });
        }
        assert_eq!(l.pool.available(), l.pool.total(), "every grant and bundle given back once");

        // A detached bundle outlives its creator; removing it (from any driver) frees it.
        l.handle(2, ToAgent::Acquire { lease: 5, alloc: alloc(1.0, &[]) });
        l.handle(2, ToAgent::MakeBundle { lease: 5, pg: "pg1".into(), index: 0, detached: true });
        let out = l.end_session(2);
        assert!(!gone_for(&out, &c3) && l.bundles.len() == 1);
        assert!(l.others(3).same_as(&alloc(1.0, &[])), "the bundle stays taken");
        assert!(matches!(acquire_in(&mut l, 3, 6, alloc(1.0, &[]))[0].1, FromAgent::Granted { .. }));
        let out = l.handle(3, ToAgent::RemoveBundles { pg: "pg1".into() });
        assert!(gone_for(&out, &c3));
        l.handle(3, ToAgent::Release { lease: 6 });
        assert_eq!(l.pool.available(), l.pool.total());
    }

    #[test]
    fn the_ledger_grants_each_share_of_a_node_to_one_driver() {
        let mut total = ResourceSet::new();
        total.set(CPU, 4.0).unwrap();
        total.set(crate::resources::GPU, 1.0).unwrap();
        let mut l = Ledger::new(ResourcePool::new(total).unwrap());
        let (c1, c2) = (session(&mut l, 1), session(&mut l, 2));

        // Driver 1 takes a CPU and GPU 0; driver 2 hears of it.
        let out = l.handle(1, ToAgent::Acquire { lease: 1, alloc: alloc(1.0, &[0]) });
        assert!(matches!(out[0].1, FromAgent::Granted { lease: 1, .. }), "{:?}", out[0].1);
        assert!(usage_for(&out, &c2).unwrap().same_as(&alloc(1.0, &[0])));
        assert!(usage_for(&out, &c1).is_none(), "driver 1's others did not change");
        // Driver 2 asking for the same GPU is denied, told what the others hold.
        let out = l.handle(2, ToAgent::Acquire { lease: 1, alloc: alloc(1.0, &[0]) });
        match &out[0].1 {
            FromAgent::Denied { lease: 1, others, why } => {
                assert!(others.same_as(&alloc(1.0, &[0])), "{others:?}");
                assert!(why.contains("GPU"), "{why}");
            }
            other => panic!("a held GPU was granted again: {other:?}"),
        }
        // The remaining 3 CPUs go to driver 2; a grant id is not reused.
        assert!(matches!(l.handle(2, ToAgent::Acquire { lease: 2, alloc: alloc(3.0, &[]) })[0].1, FromAgent::Granted { .. }));
        assert!(matches!(l.handle(2, ToAgent::Acquire { lease: 2, alloc: alloc(0.0, &[]) })[0].1, FromAgent::Denied { .. }));
        assert_eq!(l.pool.available().get(CPU), 0.0);
        // Driver 1's work blocks: its CPU is free for the others, then taken back.
        let out = l.handle(1, ToAgent::Lend { lease: 1 });
        assert_eq!(l.pool.available().get(CPU), 1.0);
        assert_eq!(usage_for(&out, &c2).unwrap().resources.get(CPU), 0.0);
        l.handle(1, ToAgent::Reclaim { lease: 1 });
        assert_eq!(l.pool.available().get(CPU), 0.0);
        // Driver 1 goes: all it held is free, and driver 2 sees nobody else.
        let out = l.end_session(1);
        assert!(usage_for(&out, &c2).unwrap().same_as(&Allocation::default()));
        assert!(matches!(l.handle(2, ToAgent::Acquire { lease: 3, alloc: alloc(1.0, &[0]) })[0].1, FromAgent::Granted { .. }));
        l.handle(2, ToAgent::Release { lease: 2 });
        l.handle(2, ToAgent::Release { lease: 3 });
        assert_eq!(l.pool.available(), l.pool.total(), "every grant given back once");
    }
}
