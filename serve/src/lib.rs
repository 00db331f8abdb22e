//! Flare Serve: HTTP model endpoints, Ray Serve's model with a Rust data path.
//!
//! A [`Deployment`] is a replica type; each replica runs in its own worker process (an actor,
//! with the deployment's CPUs and GPUs: fractional GPUs pack replicas on one device). An
//! [`Application`] puts a deployment behind a route prefix. [`run`] starts the HTTP proxy and a
//! controller per deployment in this (the driver's) process:
//!
//! ```no_run
//! use flare_serve::{deployment, Application, Deployment, ReplicaContext, Request, Response, ServeOptions};
//! struct Echo;
//! impl Deployment for Echo {
//!     type Config = ();
//!     fn new(_: (), _: &ReplicaContext) -> Result<Self, String> { Ok(Echo) }
//!     fn handle_batch(&self, batch: Vec<Request>) -> Result<Vec<Response>, String> {
//!         Ok(batch.into_iter().map(|r| Response::text(200, String::from_utf8_lossy(&r.body))).collect())
//!     }
//! }
//! flare_core::init().unwrap();
//! let serve = flare_serve::run([Application::new("/", deployment::<Echo>("echo", ()).num_replicas(2))], ServeOptions::default()).unwrap();
//! serve.wait_for_signal();
//! ```
//!
//! The data path: the proxy routes by prefix to the ingress deployment's router, which puts the
//! request in the queue of the less loaded of two random replicas; each replica's batcher forms
//! batches (`max_batch_size`, `batch_wait_timeout`, preferred sizes, priorities, queue timeout)
//! and runs each batch as one call in the replica's process.

pub mod builtin;
pub mod client;
pub mod config;
pub mod controller;
pub mod deployment;
pub mod embeddings;
pub mod handle;
pub mod metrics;
pub mod proxy;
pub mod replica;
mod router;
pub mod stream;
pub mod types;

pub use controller::{DeploymentStatus, ReplicaState, ReplicaStatus};
pub use deployment::{
    deployment, Application, AutoscalingConfig, BatchConfig, Deployment, DeploymentOptions, DeploymentSpec, ReplicaContext,
};
pub use handle::DeploymentHandle;
pub use proxy::ServeOptions;
pub use types::{Request, Response, MODEL_ID_HEADER, PRIORITY_HEADER};

use controller::Controller;
use proxy::{ProxyState, Route};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Serve's errors: what went wrong, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An application in a status report.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApplicationStatus {
    pub name: String,
    pub route_prefix: String,
    /// RUNNING when its deployments are healthy, DEPLOYING while replicas start, UNHEALTHY.
    pub status: String,
    pub deployments: Vec<DeploymentStatus>,
}

/// What `serve status` shows.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServeStatus {
    pub proxy: String,
    pub applications: Vec<ApplicationStatus>,
}

struct Running {
    route: Arc<Route>,
    /// Every deployment's controller (the ingress first), with its stop signal and task.
    controllers: Vec<(Arc<Controller>, watch::Sender<bool>, tokio::task::JoinHandle<()>)>,
    directories: Vec<(String, flare_core::ActorHandle<handle::ReplicaDirectory>)>,
}

/// A running Serve instance: the proxy and the applications' controllers.
pub struct Serve {
    rt: Option<tokio::runtime::Runtime>,
    state: Arc<ProxyState>,
    apps: Mutex<Vec<Running>>,
    addr: SocketAddr,
    server_stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
    admin_rx: Mutex<std::sync::mpsc::Receiver<proxy::AdminCommand>>,
    /// The applications of the last applied config, as written.
    applied: Mutex<Vec<config::AppConfig>>,
}

/// Starts the proxy and deploys `apps`. Needs a running Flare runtime (`flare::init()`): the
/// replicas are actors.
pub fn run(apps: impl IntoIterator<Item = Application>, opts: ServeOptions) -> Result<Serve> {
    if flare_core::is_worker() {
        return Err(Error("serve::run is called from the driver, not from a worker".into()));
    }
    flare_core::cluster_resources()
        .map_err(|e| Error(format!("Serve needs a running Flare runtime (call flare::init() first): {e}")))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).clamp(2, 8))
        .thread_name("flare-serve")
        .enable_all()
        .build()
        .map_err(|e| Error(format!("starting Serve's runtime: {e}")))?;
    let addr_text = format!("{}:{}", opts.host, opts.port);
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(&addr_text))
        .map_err(|e| Error(format!("the proxy cannot listen on {addr_text}: {e} (is the port in use? --port picks another)")))?;
    let addr = listener.local_addr().map_err(|e| Error(e.to_string()))?;
    let (admin_tx, admin_rx) = std::sync::mpsc::channel();
    let state = Arc::new(ProxyState {
        routes: Default::default(),
        metrics: Default::default(),
        opts: opts.clone(),
        draining: Default::default(),
        admin: opts.admin_token.as_ref().map(|_| Mutex::new(admin_tx)),
        url: format!("http://{addr}"),
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let app = proxy::router(state.clone());
    let server = rt.spawn(proxy::serve_connections(listener, app, opts.header_read_timeout, stop_rx));
    let serve = Serve {
        rt: Some(rt),
        state,
        apps: Mutex::new(Vec::new()),
        addr,
        server_stop: Some(stop_tx),
        server: Some(server),
        admin_rx: Mutex::new(admin_rx),
        applied: Mutex::new(Vec::new()),
    };
    for app in apps {
        serve.deploy(app)?;
    }
    Ok(serve)
}

impl Serve {
    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt.as_ref().expect("the runtime lives until drop")
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://host:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Deploys an application, replacing one of the same name (its replicas drain first).
    pub fn deploy(&self, app: Application) -> Result<()> {
        app.validate().map_err(Error)?;
        {
            let apps = self.apps.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(other) = apps.iter().find(|r| r.route.prefix == app.route_prefix && r.route.app != app.name) {
                return Err(Error(format!(
                    "application '{}' cannot use route prefix '{}': application '{}' serves it",
                    app.name, app.route_prefix, other.route.app
                )));
            }
        }
        self.delete(&app.name)?;
        let mut directories = Vec::new();
        for d in app.all() {
            let dir = handle::ReplicaDirectory::remote()
                .num_cpus(0.0)
                .spawn()
                .map_err(|e| Error(format!("starting the replica directory of deployment '{}': {e}", d.name)))?;
            directories.push((d.name.clone(), dir));
        }
        let mut controllers = Vec::new();
        for (d, (_, dir)) in app.all().zip(&directories) {
            let router = Arc::new(router::DeploymentRouter::new(&d.name, d.options.clone(), self.state.metrics.clone()));
            let controller = Controller::new(router, d.clone(), dir.clone(), directories.clone());
            let (stop, stop_rx) = watch::channel(false);
            let task = self.rt().spawn(controller.clone().run(stop_rx));
            controllers.push((controller, stop, task));
        }
        let route = Arc::new(Route {
            prefix: app.route_prefix.clone(),
            app: app.name.clone(),
            controllers: controllers.iter().map(|c| c.0.clone()).collect(),
        });
        self.state.routes.write().unwrap_or_else(|p| p.into_inner()).push(route.clone());
        self.apps.lock().unwrap_or_else(|p| p.into_inner()).push(Running { route, controllers, directories });
        Ok(())
    }

    /// Removes an application: its route goes at once, its replicas finish what they accepted.
    pub fn delete(&self, name: &str) -> Result<bool> {
        let old = {
            let mut apps = self.apps.lock().unwrap_or_else(|p| p.into_inner());
            let Some(i) = apps.iter().position(|r| r.route.app == name) else { return Ok(false) };
            apps.remove(i)
        };
        self.state.routes.write().unwrap_or_else(|p| p.into_inner()).retain(|r| !Arc::ptr_eq(r, &old.route));
        // The ingress drains first (its replicas may still call the others).
        for (_, stop, task) in old.controllers {
            let _ = stop.send(true);
            let _ = self.rt().block_on(async { tokio::time::timeout(Duration::from_secs(120), task).await });
        }
        for (_, dir) in &old.directories {
            let _ = flare_core::kill(dir);
        }
        Ok(true)
    }

    pub fn status(&self) -> ServeStatus {
        let apps = self.apps.lock().unwrap_or_else(|p| p.into_inner());
        ServeStatus {
            proxy: self.url(),
            applications: apps
                .iter()
                .map(|r| {
                    let deployments = r.route.statuses();
                    ApplicationStatus {
                        name: r.route.app.clone(),
                        route_prefix: r.route.prefix.clone(),
                        status: controller::application_status(&deployments).into(),
                        deployments,
                    }
                })
                .collect(),
        }
    }

    /// Waits until every application runs all its wanted replicas; says which does not.
    pub fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let t0 = Instant::now();
        loop {
            let st = self.status();
            if let Some(bad) = st.applications.iter().find(|a| a.status == "UNHEALTHY") {
                let msg = bad.deployments.iter().map(|d| d.message.clone()).collect::<Vec<_>>().join("; ");
                return Err(Error(format!("application '{}' is unhealthy: {msg}", bad.name)));
            }
            if st.applications.iter().all(|a| a.status == "RUNNING") {
                return Ok(());
            }
            if t0.elapsed() > timeout {
                let waiting: Vec<String> =
                    st.applications.iter().filter(|a| a.status != "RUNNING").map(|a| a.name.clone()).collect();
                return Err(Error(format!("applications {waiting:?} were not running after {:.0} s", timeout.as_secs_f64())));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Applies a declarative config: applications it names are deployed (unchanged ones are left
    /// running), the others deleted. Nothing changes when any entry is invalid.
    pub fn apply_config(&self, cfg: &config::ServeConfig, registry: &config::Registry) -> Result<()> {
        if let Some(p) = cfg.http_options.port.filter(|&p| p != 0 && p != self.addr.port()) {
            return Err(Error(format!(
                "http_options.port {p} differs from the running proxy's port {}: shut down Serve to change it",
                self.addr.port()
            )));
        }
        let apps: Vec<Application> =
            cfg.applications.iter().map(|a| registry.application(a)).collect::<Result<_, _>>().map_err(Error)?;
        let old: Vec<config::AppConfig> = self.applied.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for (a, app) in cfg.applications.iter().zip(apps) {
            if old.iter().any(|o| o == a) && self.status().applications.iter().any(|s| s.name == a.name) {
                continue;
            }
            self.deploy(app)?;
        }
        let keep: Vec<&str> = cfg.applications.iter().map(|a| a.name.as_str()).collect();
        let names: Vec<String> = self.status().applications.into_iter().map(|a| a.name).collect();
        for n in names.iter().filter(|n| !keep.contains(&n.as_str())) {
            self.delete(n)?;
        }
        *self.applied.lock().unwrap_or_else(|p| p.into_inner()) = cfg.applications.clone();
        Ok(())
    }

    /// Serves the REST config API's requests (PUT applies a config, DELETE shuts down) until
    /// DELETE, SIGINT or SIGTERM; then shuts down gracefully.
    pub fn serve_until_deleted(self, registry: &config::Registry) {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        {
            let stop = stop.clone();
            self.rt().spawn(async move {
                let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
                }
                stop.store(true, Ordering::Relaxed);
            });
        }
        while !stop.load(Ordering::Relaxed) {
            let cmd = self.admin_rx.lock().unwrap_or_else(|p| p.into_inner()).recv_timeout(Duration::from_millis(100));
            match cmd {
                Ok(proxy::AdminCommand::Put(cfg, reply)) => {
                    let _ = reply.send(self.apply_config(&cfg, registry).map_err(|e| e.0));
                }
                Ok(proxy::AdminCommand::Delete(reply)) => {
                    let _ = reply.send(());
                    break;
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        self.shutdown();
    }

    /// Blocks until SIGINT or SIGTERM, then shuts down gracefully.
    pub fn wait_for_signal(self) {
        self.rt().block_on(async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
            }
        });
        self.shutdown();
    }

    /// Graceful shutdown: the proxy stops taking connections and answers what it accepted;
    /// replicas finish their queues (up to their graceful-shutdown timeouts).
    pub fn shutdown(mut self) {
        self.shutdown_inner();
    }

    fn shutdown_inner(&mut self) {
        let Some(rt) = self.rt.take() else { return };
        self.state.draining.store(true, Ordering::Relaxed);
        let apps: Vec<Running> = self.apps.lock().unwrap_or_else(|p| p.into_inner()).drain(..).collect();
        let grace = self.state.opts.graceful_shutdown_timeout;
        rt.block_on(async {
            // In-flight requests finish before the controllers drain the replicas.
            if let Some(tx) = self.server_stop.take() {
                let _ = tx.send(());
            }
            if let Some(server) = self.server.take() {
                let _ = tokio::time::timeout(grace, server).await;
            }
            for a in &apps {
                if let Some((_, stop, _)) = a.controllers.first() {
                    let _ = stop.send(true);
                }
            }
            for a in apps {
                let mut cs = a.controllers.into_iter();
                if let Some((_, _, task)) = cs.next() {
                    let _ = tokio::time::timeout(grace, task).await;
                }
                for (_, stop, task) in cs {
                    let _ = stop.send(true);
                    let _ = tokio::time::timeout(grace, task).await;
                }
                for (_, dir) in &a.directories {
                    let _ = flare_core::kill(dir);
                }
            }
        });
        rt.shutdown_timeout(Duration::from_secs(1));
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.shutdown_inner();
    }
}
