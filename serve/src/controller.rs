//! A deployment's controller: keeps its replicas at the target count (fixed, or autoscaled on
//! ongoing requests averaged over the look-back window), moves each through starting, running,
//! draining and stopping, and replaces replicas that die or fail their health checks.

use crate::deployment::DeploymentSpec;
use crate::handle::ReplicaDirectory;
use crate::replica::{Backend, ReplicaActor, ReplicaInfo, ReplicaSetup};
use crate::router::{DeploymentRouter, Replica};
use flare_core::ActorHandle;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReplicaState {
    Starting,
    Running,
    Draining,
    Stopping,
}

impl ReplicaState {
    pub const ALL: [ReplicaState; 4] =
        [ReplicaState::Starting, ReplicaState::Running, ReplicaState::Draining, ReplicaState::Stopping];

    /// The name in status reports and metrics (as serialized).
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaState::Starting => "STARTING",
            ReplicaState::Running => "RUNNING",
            ReplicaState::Draining => "DRAINING",
            ReplicaState::Stopping => "STOPPING",
        }
    }
}

/// An application's status from its deployments': UNHEALTHY when one is, RUNNING when all are
/// healthy, DEPLOYING otherwise.
pub(crate) fn application_status(deployments: &[DeploymentStatus]) -> &'static str {
    if deployments.iter().any(|d| d.status == "UNHEALTHY") {
        "UNHEALTHY"
    } else if deployments.iter().all(|d| d.status == "HEALTHY") {
        "RUNNING"
    } else {
        "DEPLOYING"
    }
}

/// A replica in a status report.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReplicaStatus {
    pub replica_id: String,
    pub state: ReplicaState,
    pub pid: Option<u32>,
    pub ongoing: usize,
    pub models: Vec<String>,
}

/// A deployment in a status report.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeploymentStatus {
    pub name: String,
    /// HEALTHY when every wanted replica runs, UPDATING while some start, UNHEALTHY when
    /// replicas fail to start.
    pub status: String,
    pub message: String,
    pub target_replicas: usize,
    pub replicas: Vec<ReplicaStatus>,
    pub queued: usize,
    /// Replicas started over the deployment's life (replacements and scale-ups included).
    pub replicas_started: u64,
}

struct Managed {
    replica: Arc<Replica>,
    state: ReplicaState,
    since: Instant,
    start: Option<JoinHandle<Result<ReplicaInfo, String>>>,
    health: Option<JoinHandle<Result<(), String>>>,
    next_health: Instant,
}

/// Shared between the controller task and status readers.
pub(crate) struct Controller {
    pub router: Arc<DeploymentRouter>,
    spec: DeploymentSpec,
    status: Mutex<DeploymentStatus>,
    /// Where this deployment's running replicas are published for handles.
    directory: ActorHandle<ReplicaDirectory>,
    /// Every deployment's directory in the application (given to replicas).
    directories: Vec<(String, ActorHandle<ReplicaDirectory>)>,
}

impl Controller {
    pub fn new(
        router: Arc<DeploymentRouter>,
        spec: DeploymentSpec,
        directory: ActorHandle<ReplicaDirectory>,
        directories: Vec<(String, ActorHandle<ReplicaDirectory>)>,
    ) -> Arc<Self> {
        let status = DeploymentStatus {
            name: spec.name.clone(),
            status: "UPDATING".into(),
            message: String::new(),
            target_replicas: spec.options.initial_replicas(),
            replicas: Vec::new(),
            queued: 0,
            replicas_started: 0,
        };
        Arc::new(Controller { router, spec, status: Mutex::new(status), directory, directories })
    }

    pub fn status(&self) -> DeploymentStatus {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Runs until `stop` turns true, then drains every replica (each finishes the requests it
    /// accepted, up to the graceful-shutdown timeout) and returns.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let o = self.spec.options.clone();
        let router = self.router.clone();
        let mut managed: Vec<Managed> = Vec::new();
        let mut window: VecDeque<(Instant, usize)> = VecDeque::new();
        let mut target = o.initial_replicas();
        let (mut up_since, mut down_since): (Option<Instant>, Option<Instant>) = (None, None);
        let mut next_id = 0u64;
        let mut started = 0u64;
        let mut message = String::new();
        let mut failures = 0u32;
        let mut retry_at = Instant::now();
        let (mut published, mut version): (Vec<String>, u64) = (Vec::new(), 0);
        let tick = Duration::from_millis(50);
        loop {
            let stopping = *stop.borrow();
            let now = Instant::now();

            // Autoscaling on ongoing requests averaged over the look-back window.
            if let (Some(a), false) = (&o.autoscaling, stopping) {
                window.push_back((now, router.ongoing()));
                while window.front().is_some_and(|(t, _)| now.duration_since(*t) > a.look_back) {
                    window.pop_front();
                }
                let avg = window.iter().map(|(_, n)| *n as f64).sum::<f64>() / window.len().max(1) as f64;
                let wanted = ((avg / a.target_ongoing_requests).ceil() as usize).clamp(a.min_replicas, a.max_replicas);
                if wanted > target {
                    down_since = None;
                    if now.duration_since(*up_since.get_or_insert(now)) >= a.upscale_delay {
                        tracing::info!(deployment = %self.spec.name, "scaling up from {target} to {wanted} replicas (ongoing {avg:.1})");
                        target = wanted;
                        up_since = None;
                    }
                } else if wanted < target {
                    up_since = None;
                    if now.duration_since(*down_since.get_or_insert(now)) >= a.downscale_delay {
                        tracing::info!(deployment = %self.spec.name, "scaling down from {target} to {wanted} replicas (ongoing {avg:.1})");
                        target = wanted;
                        down_since = None;
                    }
                } else {
                    up_since = None;
                    down_since = None;
                }
            }
            let want = if stopping { 0 } else { target };

            // Each replica's state machine.
            for m in managed.iter_mut() {
                let r = m.replica.clone();
                match m.state {
                    ReplicaState::Starting => {
                        if m.start.as_ref().is_some_and(|h| h.is_finished()) {
                            let res = match m.start.take() {
                                Some(h) => h.await.unwrap_or_else(|e| Err(format!("the start task failed: {e}"))),
                                None => Err("no start task".into()),
                            };
                            match res {
                                Ok(info) => {
                                    r.pid.store(info.pid, Ordering::Relaxed);
                                    r.accepting.store(true, Ordering::Relaxed);
                                    tokio::spawn(router.clone().batcher(r.clone()));
                                    router.flush_pending();
                                    m.state = ReplicaState::Running;
                                    m.since = now;
                                    m.next_health = now + o.health_check_period;
                                    failures = 0;
                                    tracing::info!(deployment = %self.spec.name, replica = %r.id, pid = info.pid, "replica running");
                                }
                                Err(e) => {
                                    tracing::error!(deployment = %self.spec.name, replica = %r.id, "replica failed to start: {e}");
                                    message = format!("replica {} failed to start: {e}", r.id);
                                    failures += 1;
                                    retry_at = now + Duration::from_millis((250u64 << failures.min(7)).min(30_000));
                                    m.state = ReplicaState::Stopping;
                                }
                            }
                        }
                    }
                    ReplicaState::Running => {
                        if r.dead.load(Ordering::Relaxed) {
                            message = format!("replica {} died; replacing it", r.id);
                            r.accepting.store(false, Ordering::Relaxed);
                            router.requeue_from(&r);
                            m.state = ReplicaState::Stopping;
                            continue;
                        }
                        if let Some(h) = &m.health {
                            if h.is_finished() {
                                let res = match m.health.take() {
                                    Some(h) => h.await.unwrap_or_else(|e| Err(e.to_string())),
                                    None => Ok(()),
                                };
                                if let Err(e) = res {
                                    tracing::warn!(deployment = %self.spec.name, replica = %r.id, "health check failed: {e}");
                                    message = format!("replica {} failed its health check: {e}; replacing it", r.id);
                                    r.accepting.store(false, Ordering::Relaxed);
                                    r.dead.store(true, Ordering::Relaxed);
                                    router.requeue_from(&r);
                                    m.state = ReplicaState::Stopping;
                                    continue;
                                }
                                m.next_health = now + o.health_check_period;
                            }
                        } else if now >= m.next_health {
                            let backend = r.backend.clone();
                            let timeout = o.health_check_timeout;
                            m.health = Some(tokio::spawn(async move {
                                match tokio::time::timeout(timeout, backend.check_health()).await {
                                    Ok(r) => r,
                                    Err(_) => Err(format!("no answer within {:.1} s", timeout.as_secs_f64())),
                                }
                            }));
                        }
                    }
                    ReplicaState::Draining => {
                        let idle = r.queued() == 0 && r.inflight.load(Ordering::Relaxed) == 0;
                        if idle || now.duration_since(m.since) > o.graceful_shutdown_timeout || r.dead.load(Ordering::Relaxed) {
                            m.state = ReplicaState::Stopping;
                        }
                    }
                    ReplicaState::Stopping => {}
                }
            }
            // Stopped replicas go.
            managed.retain(|m| {
                if m.state != ReplicaState::Stopping {
                    return true;
                }
                m.replica.accepting.store(false, Ordering::Relaxed);
                m.replica.dead.store(true, Ordering::Relaxed);
                m.replica.poke();
                if let Some(h) = &m.start {
                    h.abort();
                }
                m.replica.backend.kill();
                false
            });

            // Toward the target count.
            let active: Vec<usize> = managed
                .iter()
                .enumerate()
                .filter(|(_, m)| matches!(m.state, ReplicaState::Starting | ReplicaState::Running))
                .map(|(i, _)| i)
                .collect();
            if active.len() < want && now >= retry_at {
                for _ in active.len()..want {
                    next_id += 1;
                    match self.start_replica(next_id) {
                        Ok(m) => {
                            started += 1;
                            managed.push(m);
                        }
                        Err(e) => {
                            message = format!("could not start a replica: {e}");
                            failures += 1;
                            retry_at = now + Duration::from_millis((250u64 << failures.min(7)).min(30_000));
                            break;
                        }
                    }
                }
            } else if active.len() > want {
                // Starting replicas go first, then the least loaded running ones.
                let mut order = active.clone();
                order.sort_by_key(|&i| (managed[i].state == ReplicaState::Running, managed[i].replica.load()));
                for &i in order.iter().take(active.len() - want) {
                    let m = &mut managed[i];
                    m.replica.accepting.store(false, Ordering::Relaxed);
                    m.replica.poke();
                    m.state = if m.state == ReplicaState::Starting { ReplicaState::Stopping } else { ReplicaState::Draining };
                    m.since = now;
                }
            }
            {
                let reps: Vec<Arc<Replica>> = managed.iter().map(|m| m.replica.clone()).collect();
                *router.replicas.write().unwrap_or_else(|p| p.into_inner()) = reps;
            }
            let running = managed.iter().filter(|m| m.state == ReplicaState::Running).count();
            let live: Vec<&Managed> =
                managed.iter().filter(|m| m.state == ReplicaState::Running && !m.replica.dead.load(Ordering::Relaxed)).collect();
            let ids: Vec<String> = live.iter().map(|m| m.replica.id.clone()).collect();
            if ids != published {
                version += 1;
                // The call runs whether or not its result is awaited.
                let handles: Vec<ActorHandle<crate::replica::ReplicaActor>> =
                    live.iter().filter_map(|m| m.replica.backend.actor().cloned()).collect();
                drop(self.directory.set(version, handles));
                published = ids;
            }
            if running == 0 && failures > 0 {
                router.fail_pending(&format!("deployment '{}' has no running replica: {message}", self.spec.name));
            }
            {
                let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
                s.target_replicas = want;
                s.status = if failures > 0 {
                    "UNHEALTHY"
                } else if running >= want {
                    "HEALTHY"
                } else {
                    "UPDATING"
                }
                .into();
                s.message = message.clone();
                s.queued = router.queued();
                s.replicas_started = started;
                s.replicas = managed
                    .iter()
                    .map(|m| ReplicaStatus {
                        replica_id: m.replica.id.clone(),
                        state: m.state,
                        pid: Some(m.replica.pid.load(Ordering::Relaxed)).filter(|&p| p != 0),
                        ongoing: m.replica.load(),
                        models: m.replica.models.lock().unwrap_or_else(|p| p.into_inner()).clone(),
                    })
                    .collect();
            }
            if stopping && managed.is_empty() {
                router.fail_pending(&format!("deployment '{}' was shut down", self.spec.name));
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = router.changed.notified() => {}
                _ = stop.changed() => {}
            }
        }
    }

    fn start_replica(&self, n: u64) -> Result<Managed, String> {
        let o = &self.spec.options;
        let id = format!("{}#{n}", self.spec.name);
        let batches_at_once = o.max_ongoing_requests.max(o.batching.max_batch_size).div_ceil(o.batching.max_batch_size);
        let backend = if o.in_process {
            Backend::local()
        } else {
            let mut b = ReplicaActor::remote()
                .num_cpus(o.num_cpus)
                .num_gpus(o.num_gpus)
                .max_restarts(0)
                .max_concurrency(batches_at_once.clamp(1, 256) as u32 + 1);
            if o.memory > 0 {
                b = b.memory(o.memory);
            }
            for (k, v) in &o.resources {
                b = b.resources(k.clone(), *v);
            }
            Backend::Actor(b.spawn().map_err(|e| e.to_string())?)
        };
        let setup = ReplicaSetup {
            factory: self.spec.factory,
            config: self.spec.config.clone(),
            deployment: self.spec.name.clone(),
            replica_id: id.clone(),
            max_models: o.max_models_per_replica as u32,
            directories: self.directories.clone(),
        };
        let timeout = o.startup_timeout;
        let starting = backend.clone();
        let start = tokio::spawn(async move {
            match tokio::time::timeout(timeout, starting.start(setup)).await {
                Ok(r) => r,
                Err(_) => Err(format!("it did not start within {:.0} s (startup_timeout)", timeout.as_secs_f64())),
            }
        });
        let now = Instant::now();
        Ok(Managed {
            replica: Arc::new(Replica::new(id, backend)),
            state: ReplicaState::Starting,
            since: now,
            start: Some(start),
            health: None,
            next_health: now,
        })
    }
}
