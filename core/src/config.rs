//! [`Config`]: how `flare::init_with` starts the embedded node. Every field documents its default.

use std::path::PathBuf;
use std::time::Duration;

/// Settings of the embedded single-node cluster a driver starts.
#[derive(Clone, Debug)]
pub struct Config {
    /// CPUs the node offers. Default: the machine's logical CPUs (`FLARE_NUM_CPUS` overrides).
    pub num_cpus: Option<f64>,
    /// GPUs the node offers, ids `0..n`. Default: the GPUs discovery finds (NVML or the CUDA
    /// driver, loaded at run time; 0 on machines without them); `FLARE_NUM_GPUS` overrides.
    /// Declared GPUs are how CPU-only machines exercise GPU scheduling. A node with GPUs also
    /// gets the `accelerator_type` label and an `accelerator_type:<type>` resource, as in Ray.
    pub num_gpus: Option<f64>,
    /// Memory the node offers for scheduling, in bytes. Default: the machine's RAM.
    pub memory: Option<u64>,
    /// Custom resources, e.g. `("TPU", 4.0)`.
    pub resources: Vec<(String, f64)>,
    /// Node labels, e.g. `accelerator_type=H200`.
    pub labels: Vec<(String, String)>,
    /// Bytes of shared memory the object store may use before it spills to disk.
    /// Default: 30% of RAM, at most 80% of what `/dev/shm` has free.
    pub object_store_memory: Option<u64>,
    /// Where session directories (logs, spill files, the node socket) go. Default `/tmp/flare`.
    pub temp_dir: Option<PathBuf>,
    /// Worker processes started ahead of demand. Default: one per CPU.
    pub prestart_workers: Option<usize>,
    /// How long an idle worker beyond the prestarted ones lives. Default 30 s.
    pub idle_worker_timeout: Duration,
    /// How long infeasible work waits (for a node that could run it) before it fails. Default 1 s.
    pub infeasible_grace: Duration,
    /// Whether worker output is streamed to the driver's stderr with a `(name pid=N)` prefix. Default true.
    pub log_to_driver: bool,
    /// Runs every task and actor call in the driver process, synchronously, for debugging.
    /// No workers, no scheduling. Default false.
    pub local_mode: bool,
    /// A cluster to join: its head's `http://host:port` (what `flare start --head` prints).
    /// Default: `FLARE_ADDRESS`, else none (an embedded single-node cluster). A driver that joins
    /// schedules on the cluster's nodes; its own node offers only what `num_cpus`/`num_gpus`
    /// declare (default none), since the machine's resources belong to its node agent.
    pub address: Option<String>,
    /// The cluster token. Default: `FLARE_TOKEN`, else `RAY_AUTH_TOKEN`, else the token file of
    /// the session directory `~/.flare/session_latest`.
    pub token: Option<String>,
    /// The address other nodes reach this driver at. Default: `FLARE_NODE_IP`, else 127.0.0.1.
    pub node_ip: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            num_cpus: None,
            num_gpus: None,
            memory: None,
            resources: Vec::new(),
            labels: Vec::new(),
            object_store_memory: None,
            temp_dir: None,
            prestart_workers: None,
            idle_worker_timeout: Duration::from_secs(30),
            infeasible_grace: Duration::from_secs(1),
            log_to_driver: true,
            local_mode: false,
            address: None,
            token: None,
            node_ip: None,
        }
    }
}

impl Config {
    pub fn new() -> Self {
        Self::default()
    }
    /// Joins the cluster whose head serves at `address` (`http://host:port`).
    pub fn address(mut self, address: impl Into<String>) -> Self {
        self.address = Some(address.into());
        self
    }
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }
    pub fn num_cpus(mut self, n: f64) -> Self {
        self.num_cpus = Some(n);
        self
    }
    pub fn num_gpus(mut self, n: f64) -> Self {
        self.num_gpus = Some(n);
        self
    }
    pub fn memory(mut self, bytes: u64) -> Self {
        self.memory = Some(bytes);
        self
    }
    pub fn resource(mut self, name: impl Into<String>, amount: f64) -> Self {
        self.resources.push((name.into(), amount));
        self
    }
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.push((key.into(), value.into()));
        self
    }
    pub fn object_store_memory(mut self, bytes: u64) -> Self {
        self.object_store_memory = Some(bytes);
        self
    }
    pub fn temp_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.temp_dir = Some(dir.into());
        self
    }
    pub fn prestart_workers(mut self, n: usize) -> Self {
        self.prestart_workers = Some(n);
        self
    }
    pub fn idle_worker_timeout(mut self, d: Duration) -> Self {
        self.idle_worker_timeout = d;
        self
    }
    pub fn infeasible_grace(mut self, d: Duration) -> Self {
        self.infeasible_grace = d;
        self
    }
    pub fn local_mode(mut self, on: bool) -> Self {
        self.local_mode = on;
        self
    }
    pub fn log_to_driver(mut self, on: bool) -> Self {
        self.log_to_driver = on;
        self
    }
}

/// Reads a numeric environment variable, reporting a malformed one.
pub(crate) fn env_f64(name: &str) -> Result<Option<f64>, String> {
    match std::env::var(name) {
        Ok(v) => v.trim().parse::<f64>().map(Some).map_err(|_| format!("{name}={v:?} is not a number")),
        Err(_) => Ok(None),
    }
}
