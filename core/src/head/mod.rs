//! The head: the cluster's control store and its HTTP API.
//!
//! The head serves Ray's Jobs REST API (so `ray job submit` and `JobSubmissionClient` work
//! against it unchanged), a key-value store, cluster status and Prometheus metrics over HTTP,
//! and the node table over gRPC (node agents register and heartbeat, [`rpc`]), all behind
//! the cluster token, and keeps its state in an embedded database (redb) in the session
//! directory, so a head restarted on the same directory lists the same jobs and keys. The KV
//! also holds the cluster's named-actor directory, its named placement groups
//! ([`PG_PREFIX`]) and what each driver publishes of its state ([`STATE_PREFIX`]).
//!
//! Session directory layout: `token` (0600), `head.json` (pid and addresses, written once the
//! head serves), `head.redb`, `packages/<protocol>/<name>` (uploaded working dirs),
//! `jobs/<id>/` (unpacked working dirs), `logs/job-driver-<id>.log`, `logs/head.out`.

pub mod client;
mod db;
mod http;
mod jobs;
mod kv_store;
pub mod node_agent;
pub mod package;
pub mod rpc;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use http::constant_time_eq;
pub use http::{MAX_PACKAGE, RAY_VERSION};

/// Where drivers that joined the cluster publish their actors, recent tasks and placement
/// groups in the KV (one key per driver, rewritten every second, removed at shutdown).
pub const STATE_PREFIX: &str = "__flare_state/";
/// Where the cluster's named placement groups are entered in the KV (one key per group: its
/// key in the nodes' ledgers, creator, bundles and where they are placed).
pub const PG_PREFIX: &str = "__flare_pgs/";
pub use jobs::{JobInfo, JobStatus};
pub use kv_store::HeadStore;

/// How to run a head.
#[derive(Debug, Clone)]
pub struct HeadOptions {
    pub session_dir: PathBuf,
    /// Address the HTTP API binds (default 127.0.0.1).
    pub host: String,
    /// Port of the HTTP API (Ray's dashboard port, default 8265; 0 picks a free one).
    pub dashboard_port: u16,
    /// Port of the gRPC service node agents connect to (Ray's GCS port 6379; 0 picks one).
    pub grpc_port: u16,
    /// Resources of the head's machine that jobs' entrypoints reserve.
    pub num_cpus: f64,
    pub num_gpus: f64,
    pub memory: u64,
    pub resources: Vec<(String, f64)>,
    pub labels: Vec<(String, String)>,
}

/// What `head.json` holds: how clients find a running head.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct HeadInfo {
    pub pid: u32,
    /// `http://host:port` of the HTTP API.
    pub dashboard_url: String,
    /// `host:port` of the gRPC service for node agents.
    #[serde(default)]
    pub grpc_address: String,
    pub session_dir: PathBuf,
    pub started_at_ms: u64,
}

impl HeadInfo {
    /// Reads `head.json` of a session directory.
    pub fn read(session_dir: &Path) -> Result<HeadInfo, String> {
        let p = session_dir.join("head.json");
        let text = std::fs::read_to_string(&p)
            .map_err(|e| format!("no head in {} ({e}); start one with `flare start --head`", session_dir.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{} is not a head file: {e}", p.display()))
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// `N` bytes from the kernel's random source (tokens and submission ids).
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], String> {
    use std::io::Read;
    let mut b = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| format!("reading /dev/urandom: {e}"))?;
    Ok(b)
}

/// The cluster token of a session directory: read if it exists, else made from 32 random
/// bytes and written readable by its owner only.
pub fn ensure_token(session_dir: &Path) -> Result<String, String> {
    let p = session_dir.join("token");
    if let Ok(t) = std::fs::read_to_string(&p) {
        let t = t.trim().to_string();
        if t.len() >= 32 {
            return Ok(t);
        }
    }
    let b: [u8; 32] = random_bytes()?;
    let token: String = b.iter().map(|x| format!("{x:02x}")).collect();
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&p)
        .map_err(|e| format!("writing {}: {e}", p.display()))?;
    use std::io::Write;
    f.write_all(token.as_bytes()).map_err(|e| format!("writing {}: {e}", p.display()))?;
    Ok(token)
}

/// Reads the token of a session directory.
pub fn read_token(session_dir: &Path) -> Result<String, String> {
    std::fs::read_to_string(session_dir.join("token"))
        .map(|t| t.trim().to_string())
        .map_err(|e| format!("no token in {} ({e}); is a head running there?", session_dir.display()))
}

pub(crate) struct Shared {
    pub opts: HeadOptions,
    pub token: String,
    pub db: Arc<db::Db>,
    pub jobs: jobs::Jobs,
    pub started_at_ms: u64,
    /// Serializes read-modify-write KV calls.
    pub kv_lock: tokio::sync::Mutex<()>,
    /// The node table (persisted; liveness from heartbeats).
    pub nodes: jobs::NodeTable,
}

impl Shared {
    pub(crate) fn put_node(&self, n: rpc::NodeEntry) -> Result<(), String> {
        self.db.put_node(&n.node_id, &serde_json::to_vec(&n).unwrap())?;
        self.nodes.lock().unwrap().insert(n.node_id.clone(), n);
        Ok(())
    }

    /// Records a heartbeat; false when the node is unknown.
    pub(crate) fn touch_node(&self, id: &str) -> bool {
        let mut g = self.nodes.lock().unwrap();
        let Some(n) = g.get_mut(id) else { return false };
        n.last_heartbeat_ms = now_ms();
        if !n.alive {
            n.alive = true;
            tracing::info!(node = id, "node is back");
            let _ = self.db.put_node(id, &serde_json::to_vec(&*n).unwrap());
        }
        true
    }

    /// Declares dead the nodes whose heartbeats stopped.
    fn check_nodes(&self) {
        let limit = rpc::dead_after().as_millis() as u64;
        let now = now_ms();
        let mut g = self.nodes.lock().unwrap();
        for n in g.values_mut() {
            if n.alive && !n.is_head && now.saturating_sub(n.last_heartbeat_ms) > limit {
                n.alive = false;
                tracing::warn!(node = %n.node_id, "node missed its heartbeats for {limit} ms: declared dead");
                let _ = self.db.put_node(&n.node_id, &serde_json::to_vec(&*n).unwrap());
            }
        }
    }

    pub(crate) fn node_list(&self) -> Vec<rpc::NodeEntry> {
        let mut v: Vec<_> = self.nodes.lock().unwrap().values().cloned().collect();
        v.sort_by(|a, b| (!a.is_head, &a.node_id).cmp(&(!b.is_head, &b.node_id)));
        v
    }
}

/// Runs a head until SIGTERM or SIGINT. Returns an error if it cannot start.
pub fn run(opts: HeadOptions) -> Result<(), String> {
    std::fs::create_dir_all(opts.session_dir.join("logs")).map_err(|e| format!("{}: {e}", opts.session_dir.display()))?;
    std::fs::create_dir_all(opts.session_dir.join("packages")).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(opts.session_dir.join("jobs")).map_err(|e| e.to_string())?;
    let token = ensure_token(&opts.session_dir)?;
    let db = Arc::new(db::Db::open(&opts.session_dir.join("head.redb"))?);
    // Nodes of an earlier head: alive again only once they heartbeat to this one.
    let mut nodes = std::collections::HashMap::new();
    for (id, bytes) in db.nodes()? {
        if let Ok(mut n) = serde_json::from_slice::<rpc::NodeEntry>(&bytes) {
            if !n.is_head {
                n.last_heartbeat_ms = now_ms();
                nodes.insert(id, n);
            }
        }
    }
    let nodes: jobs::NodeTable = Arc::new(std::sync::Mutex::new(nodes));
    let jobs = jobs::Jobs::recover(db.clone(), &opts, nodes.clone(), token.clone())?;
    let shared =
        Arc::new(Shared { opts: opts.clone(), token, db, jobs, started_at_ms: now_ms(), kv_lock: Default::default(), nodes });
    // The head's machine is a node too: drivers run workers on it through this service.
    let agent = std::net::TcpListener::bind((opts.host.as_str(), 0))
        .map_err(|e| format!("cannot listen on {} for drivers: {e}", opts.host))?;
    let agent_addr = agent.local_addr().map_err(|e| e.to_string())?;
    let svc = node_agent::AgentService::new(shared.token.clone(), "head".into(), opts.session_dir.clone(), shared.jobs.total())?;
    let agent_shm = svc.shm_root.clone();
    svc.spawn(agent)?;
    let head_node = rpc::NodeEntry {
        node_id: jobs::HEAD_NODE.into(),
        address: agent_addr.to_string(),
        is_head: true,
        alive: true,
        resources_total: shared.jobs.total().clone(),
        labels: opts.labels.iter().cloned().collect(),
        pid: std::process::id(),
        last_heartbeat_ms: now_ms(),
        registered_ms: now_ms(),
    };
    shared.put_node(head_node)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("flare-head")
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind((opts.host.as_str(), opts.dashboard_port))
            .await
            .map_err(|e| format!("cannot listen on {}:{}: {e}", opts.host, opts.dashboard_port))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let grpc = tokio::net::TcpListener::bind((opts.host.as_str(), opts.grpc_port))
            .await
            .map_err(|e| format!("cannot listen on {}:{} for node agents: {e}", opts.host, opts.grpc_port))?;
        let grpc_addr = grpc.local_addr().map_err(|e| e.to_string())?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let rpc = rpc::HeadServer::new(rpc::Rpc(shared.clone())).max_decoding_message_size(4 << 20);
        let mut rx = stop_rx.clone();
        let grpc_task = tokio::spawn(
            tonic::transport::Server::builder()
                .timeout(std::time::Duration::from_secs(30))
                .add_service(rpc)
                .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(grpc), async move {
                    let _ = rx.changed().await;
                }),
        );
        let monitor = shared.clone();
        let mut rx = stop_rx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => monitor.check_nodes(),
                    _ = rx.changed() => return,
                }
            }
        });
        let info = HeadInfo {
            pid: std::process::id(),
            dashboard_url: format!("http://{addr}"),
            grpc_address: grpc_addr.to_string(),
            session_dir: opts.session_dir.clone(),
            started_at_ms: shared.started_at_ms,
        };
        let tmp = opts.session_dir.join("head.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&info).unwrap()).map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, opts.session_dir.join("head.json")).map_err(|e| e.to_string())?;
        tracing::info!(url = %info.dashboard_url, "head serving");
        let app = http::router(shared.clone());
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
            let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).expect("SIGINT handler");
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        };
        axum::serve(listener, app).with_graceful_shutdown(shutdown).await.map_err(|e| e.to_string())?;
        let _ = stop_tx.send(true);
        let _ = grpc_task.await;
        shared.jobs.stop_all();
        let _ = std::fs::remove_dir_all(&agent_shm);
        let _ = std::fs::remove_file(opts.session_dir.join("head.json"));
        Ok::<(), String>(())
    })
}
