//! Deployments (a replica type plus its options) and applications (deployments behind a route
//! prefix).

use crate::types::{Request, Response};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// What a replica knows about itself, and its way to the other deployments of its application.
#[derive(Clone)]
pub struct ReplicaContext {
    pub deployment: String,
    pub replica_id: String,
    /// The GPUs the scheduler gave this replica (fractional replicas share one).
    pub gpu_ids: Vec<u32>,
    pub(crate) directories: Vec<(String, flare_core::ActorHandle<crate::handle::ReplicaDirectory>)>,
}

impl ReplicaContext {
    /// A typed handle on deployment `name` of this replica's application (composition).
    pub fn handle<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<crate::handle::DeploymentHandle<Req, Resp>, String> {
        let (_, dir) = self.directories.iter().find(|(n, _)| n == name).ok_or_else(|| {
            let names: Vec<&str> = self.directories.iter().map(|(n, _)| n.as_str()).collect();
            format!("this application has no deployment '{name}' (it has {})", names.join(", "))
        })?;
        Ok(crate::handle::DeploymentHandle::new(name, dir.clone()))
    }
}

/// A replica type. Each replica is built once in its own worker process from the deployment's
/// config, then handles batches of requests; calls may run concurrently (up to the
/// deployment's `max_ongoing_requests`), so state that changes needs its own lock.
pub trait Deployment: Send + Sync + Sized + 'static {
    /// Passed to [`Deployment::new`] in every replica (as JSON, so a config file can give it).
    type Config: Serialize + DeserializeOwned + Send + 'static;

    fn new(config: Self::Config, ctx: &ReplicaContext) -> Result<Self, String>;

    /// One batch, run as one call: one response per request, in order. `Err` fails every
    /// request of the batch with its message (HTTP 500).
    fn handle_batch(&self, batch: Vec<Request>) -> Result<Vec<Response>, String>;

    /// Called every health-check period; `Err` (or no answer within the timeout) replaces the
    /// replica.
    fn check_health(&self) -> Result<(), String> {
        Ok(())
    }

    /// Model multiplexing: loads `model_id` so that requests naming it can be handled. The
    /// replica keeps at most `max_models_per_replica` loaded and unloads the least recently
    /// used one first.
    fn load_model(&self, model_id: &str) -> Result<(), String> {
        Err(format!("this deployment does not serve multiplexed models (the request asked for model '{model_id}')"))
    }

    fn unload_model(&self, _model_id: &str) {}
}

/// Ray Serve's autoscaling: the replica count follows the ongoing requests (queued and
/// running) averaged over `look_back`, divided by `target_ongoing_requests`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AutoscalingConfig {
    pub min_replicas: usize,
    pub max_replicas: usize,
    pub target_ongoing_requests: f64,
    /// How long the wanted count must stay above the current one before scaling up.
    #[serde(with = "secs", alias = "upscale_delay_s")]
    pub upscale_delay: Duration,
    #[serde(with = "secs", alias = "downscale_delay_s")]
    pub downscale_delay: Duration,
    #[serde(with = "secs", alias = "look_back_period_s")]
    pub look_back: Duration,
}

impl Default for AutoscalingConfig {
    fn default() -> Self {
        AutoscalingConfig {
            min_replicas: 1,
            max_replicas: 4,
            target_ongoing_requests: 2.0,
            upscale_delay: Duration::from_secs(30),
            downscale_delay: Duration::from_secs(600),
            look_back: Duration::from_secs(30),
        }
    }
}

/// Dynamic batching in the replica's queue.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BatchConfig {
    /// The most requests in one call of `handle_batch` (1: no batching).
    pub max_batch_size: usize,
    /// How long a batch waits for more requests after its first one arrived.
    #[serde(with = "secs", alias = "batch_wait_timeout_s")]
    pub batch_wait_timeout: Duration,
    /// Batch sizes to cut at without waiting (Triton's preferred sizes); the largest one the
    /// queue can fill is sent at once.
    pub preferred_batch_sizes: Vec<usize>,
    /// A request that waits longer than this in the queue is answered 503 (or kept, with
    /// `keep_timed_out`).
    #[serde(with = "opt_secs", alias = "queue_timeout_s")]
    pub queue_timeout: Option<Duration>,
    pub keep_timed_out: bool,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_batch_size: 1,
            batch_wait_timeout: Duration::from_millis(10),
            preferred_batch_sizes: Vec::new(),
            queue_timeout: None,
            keep_timed_out: false,
        }
    }
}

/// A deployment's options (Ray Serve's names and meanings where they exist; configs may use
/// Ray's `_s`-suffixed names and `autoscaling_config`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DeploymentOptions {
    pub num_replicas: usize,
    #[serde(alias = "autoscaling_config")]
    pub autoscaling: Option<AutoscalingConfig>,
    pub num_cpus: f64,
    pub num_gpus: f64,
    pub memory: u64,
    pub resources: BTreeMap<String, f64>,
    /// Requests running on one replica at once (the batch size is not capped by it: a replica
    /// runs at least one full batch).
    pub max_ongoing_requests: usize,
    /// Requests waiting across the deployment's queues; more are answered 503 with Retry-After.
    pub max_queued_requests: usize,
    pub batching: BatchConfig,
    pub max_models_per_replica: usize,
    #[serde(with = "secs", alias = "health_check_period_s")]
    pub health_check_period: Duration,
    #[serde(with = "secs", alias = "health_check_timeout_s")]
    pub health_check_timeout: Duration,
    /// How long a stopping replica may take to finish the requests it accepted.
    #[serde(with = "secs", alias = "graceful_shutdown_timeout_s")]
    pub graceful_shutdown_timeout: Duration,
    /// How long a replica may take to start (build its model).
    #[serde(with = "secs", alias = "startup_timeout_s")]
    pub startup_timeout: Duration,
    /// Runs the replicas in the proxy's own process instead of worker processes: no process
    /// hop per batch (for cheap handlers), but no isolation, no scheduler resources (no GPUs),
    /// and no handles from other deployments.
    pub in_process: bool,
}

impl Default for DeploymentOptions {
    fn default() -> Self {
        DeploymentOptions {
            num_replicas: 1,
            autoscaling: None,
            num_cpus: 1.0,
            num_gpus: 0.0,
            memory: 0,
            resources: BTreeMap::new(),
            max_ongoing_requests: 100,
            max_queued_requests: 1000,
            batching: BatchConfig::default(),
            max_models_per_replica: 3,
            health_check_period: Duration::from_secs(10),
            health_check_timeout: Duration::from_secs(30),
            graceful_shutdown_timeout: Duration::from_secs(20),
            startup_timeout: Duration::from_secs(300),
            in_process: false,
        }
    }
}

impl DeploymentOptions {
    /// Checks the options, saying what is wrong.
    pub fn validate(&self, name: &str) -> Result<(), String> {
        let bad = |what: &str| Err(format!("deployment '{name}': {what}"));
        if let Some(a) = &self.autoscaling {
            if a.max_replicas == 0 || a.min_replicas > a.max_replicas {
                return bad(&format!(
                    "autoscaling needs 1 <= max_replicas and min_replicas <= max_replicas (got min {} max {})",
                    a.min_replicas, a.max_replicas
                ));
            }
            if a.min_replicas == 0 {
                return bad("autoscaling min_replicas must be at least 1 (scaling to zero is not supported yet)");
            }
            if a.target_ongoing_requests.is_nan() || a.target_ongoing_requests <= 0.0 {
                return bad("autoscaling target_ongoing_requests must be > 0");
            }
        } else if self.num_replicas == 0 {
            return bad("num_replicas must be at least 1");
        }
        if self.max_ongoing_requests == 0 {
            return bad("max_ongoing_requests must be at least 1");
        }
        if self.batching.max_batch_size == 0 {
            return bad("max_batch_size must be at least 1");
        }
        if let Some(p) = self.batching.preferred_batch_sizes.iter().find(|&&p| p == 0 || p > self.batching.max_batch_size) {
            return bad(&format!(
                "preferred batch size {p} must be between 1 and max_batch_size ({})",
                self.batching.max_batch_size
            ));
        }
        if self.max_models_per_replica == 0 {
            return bad("max_models_per_replica must be at least 1");
        }
        if self.in_process && (self.num_gpus > 0.0 || !self.resources.is_empty()) {
            return bad("in_process replicas take no scheduler resources: num_gpus and resources must be unset (run them as worker processes instead)");
        }
        if self.num_cpus < 0.0 || self.num_gpus < 0.0 {
            return bad("num_cpus and num_gpus must not be negative");
        }
        Ok(())
    }

    /// The replica count to start with.
    pub fn initial_replicas(&self) -> usize {
        match &self.autoscaling {
            Some(a) => a.min_replicas,
            None => self.num_replicas,
        }
    }
}

pub(crate) type Factory = fn(&[u8], &ReplicaContext) -> Result<Box<dyn DynReplica>, String>;

/// A replica behind a trait object (what the replica actor holds).
pub(crate) trait DynReplica: Send + Sync {
    fn handle_batch(&self, batch: Vec<Request>) -> Result<Vec<Response>, String>;
    fn check_health(&self) -> Result<(), String>;
    fn load_model(&self, model_id: &str) -> Result<(), String>;
    fn unload_model(&self, model_id: &str);
}

impl<D: Deployment> DynReplica for D {
    fn handle_batch(&self, batch: Vec<Request>) -> Result<Vec<Response>, String> {
        Deployment::handle_batch(self, batch)
    }
    fn check_health(&self) -> Result<(), String> {
        Deployment::check_health(self)
    }
    fn load_model(&self, model_id: &str) -> Result<(), String> {
        Deployment::load_model(self, model_id)
    }
    fn unload_model(&self, model_id: &str) {
        Deployment::unload_model(self, model_id)
    }
}

fn build<D: Deployment>(config: &[u8], ctx: &ReplicaContext) -> Result<Box<dyn DynReplica>, String> {
    let config: D::Config = serde_json::from_slice(config)
        .map_err(|e| format!("the config of deployment '{}' does not fit its type: {e}", ctx.deployment))?;
    Ok(Box::new(D::new(config, ctx)?))
}

/// A deployment: its name, replica type (as a function of this executable, which every worker
/// runs), config and options.
#[derive(Clone, Debug)]
pub struct DeploymentSpec {
    pub name: String,
    pub(crate) factory: flare_core::util::CodeRef,
    pub(crate) config: Vec<u8>,
    pub options: DeploymentOptions,
}

/// A deployment of replica type `D` built from `config`.
pub fn deployment<D: Deployment>(name: &str, config: D::Config) -> DeploymentSpec {
    DeploymentSpec {
        name: name.to_string(),
        factory: flare_core::util::CodeRef::of_addr(build::<D> as Factory as usize),
        config: serde_json::to_vec(&config).unwrap_or_default(),
        options: DeploymentOptions::default(),
    }
}

impl DeploymentSpec {
    pub fn options(mut self, options: DeploymentOptions) -> Self {
        self.options = options;
        self
    }
    pub fn num_replicas(mut self, n: usize) -> Self {
        self.options.num_replicas = n;
        self
    }
    pub fn autoscaling(mut self, a: AutoscalingConfig) -> Self {
        self.options.autoscaling = Some(a);
        self
    }
    pub fn num_cpus(mut self, n: f64) -> Self {
        self.options.num_cpus = n;
        self
    }
    pub fn num_gpus(mut self, n: f64) -> Self {
        self.options.num_gpus = n;
        self
    }
    pub fn resource(mut self, name: &str, amount: f64) -> Self {
        self.options.resources.insert(name.to_string(), amount);
        self
    }
    pub fn max_ongoing_requests(mut self, n: usize) -> Self {
        self.options.max_ongoing_requests = n;
        self
    }
    pub fn max_queued_requests(mut self, n: usize) -> Self {
        self.options.max_queued_requests = n;
        self
    }
    pub fn batching(mut self, b: BatchConfig) -> Self {
        self.options.batching = b;
        self
    }
    /// Batches of up to `max_batch_size`, waiting at most `wait` for a batch to fill.
    pub fn max_batch_size(mut self, max_batch_size: usize, wait: Duration) -> Self {
        self.options.batching.max_batch_size = max_batch_size;
        self.options.batching.batch_wait_timeout = wait;
        self
    }
    pub fn max_models_per_replica(mut self, n: usize) -> Self {
        self.options.max_models_per_replica = n;
        self
    }
    pub fn health_check(mut self, period: Duration, timeout: Duration) -> Self {
        self.options.health_check_period = period;
        self.options.health_check_timeout = timeout;
        self
    }
    /// Replicas in the proxy's process (see [`DeploymentOptions::in_process`]).
    pub fn in_process(mut self) -> Self {
        self.options.in_process = true;
        self
    }
    pub fn graceful_shutdown_timeout(mut self, t: Duration) -> Self {
        self.options.graceful_shutdown_timeout = t;
        self
    }
}

/// Deployments served under a route prefix; HTTP requests go to the ingress deployment, which
/// may call the others through [`ReplicaContext::handle`].
#[derive(Clone, Debug)]
pub struct Application {
    pub name: String,
    pub route_prefix: String,
    pub ingress: DeploymentSpec,
    /// The other deployments of the graph.
    pub deployments: Vec<DeploymentSpec>,
}

impl Application {
    /// An application named after its ingress deployment.
    pub fn new(route_prefix: &str, ingress: DeploymentSpec) -> Self {
        Application { name: ingress.name.clone(), route_prefix: normalize_prefix(route_prefix), ingress, deployments: Vec::new() }
    }

    /// Adds a deployment that the ingress (or another deployment) calls through a handle.
    pub fn with(mut self, d: DeploymentSpec) -> Self {
        self.deployments.push(d);
        self
    }

    /// Every deployment, the ingress first.
    pub fn all(&self) -> impl Iterator<Item = &DeploymentSpec> {
        std::iter::once(&self.ingress).chain(self.deployments.iter())
    }

    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    pub fn validate(&self) -> Result<(), String> {
        if !self.route_prefix.starts_with('/') {
            return Err(format!(
                "application '{}': the route prefix must start with '/' (got '{}')",
                self.name, self.route_prefix
            ));
        }
        if self.route_prefix.starts_with("/-/") || self.route_prefix == "/metrics" || self.route_prefix.starts_with("/api/serve")
        {
            return Err(format!(
                "application '{}': the route prefix '{}' is reserved by the proxy",
                self.name, self.route_prefix
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for d in self.all() {
            if !names.insert(d.name.as_str()) {
                return Err(format!("application '{}' has two deployments named '{}'", self.name, d.name));
            }
            d.options.validate(&d.name)?;
        }
        Ok(())
    }
}

pub(crate) fn normalize_prefix(p: &str) -> String {
    let t = p.trim_end_matches('/');
    if t.is_empty() {
        "/".into()
    } else {
        t.to_string()
    }
}

/// Durations as seconds (floats) in configs, as Ray's are.
pub(crate) mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = f64::deserialize(d)?;
        Duration::try_from_secs_f64(v).map_err(|_| serde::de::Error::custom(format!("{v} is not a duration in seconds")))
    }
}

pub(crate) mod opt_secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<f64>::deserialize(d)? {
            None => Ok(None),
            Some(v) => Duration::try_from_secs_f64(v)
                .map(Some)
                .map_err(|_| serde::de::Error::custom(format!("{v} is not a duration in seconds"))),
        }
    }
}
