//! flare-core: Flare's runtime. Tasks, actors, a shared-memory object store and a scheduler that
//! treats GPUs (whole and fractional) as first-class resources.
//!
//! Users reach it through the `flare` facade crate; see its documentation for examples.

pub mod actor;
mod buffer;
pub mod cluster_utils;
pub mod codec;
pub mod config;
pub mod error;
pub mod head;
pub mod ids;
mod local;
pub(crate) mod node;
mod object_ref;
pub mod placement;
mod promise;
pub mod protocol;
pub mod registry;
pub mod resources;
pub(crate) mod runtime;
pub mod scheduler;
pub mod spec;
pub mod state;
mod store;
mod task;
mod transfer;
pub mod util;
mod worker;

pub use actor::{get_actor, get_actor_in, kill, Actor, ActorBuilder, ActorHandle, ActorRef};
pub use buffer::Buffer;
pub use config::Config;
pub use error::{Error, ErrorKind, Result, TaskError};
pub use object_ref::{cancel, get, get_all, get_timeout, put, wait, GetFuture, IntoArg, ObjectRef};
pub use placement::{
    get_placement_group, placement_group, placement_group_named, placement_group_with, remove_placement_group, Bundle,
    PlacementGroup, PlacementGroupOptions,
};
pub use promise::Promise;
pub use runtime::StateQuery;
pub use scheduler::{PlacementStrategy, SchedulingStrategy};
pub use spec::{ActorOptions, TaskOptions};

use std::sync::{Arc, Once};

/// Starts Flare in this process with the default [`Config`]: the first call in `main`.
///
/// In the driver it starts an embedded single-node cluster. In a worker process (started by the
/// node from this same executable) it runs the worker loop and never returns. A second call in
/// a running driver does nothing.
pub fn init() -> Result<()> {
    init_with(Config::default())
}

/// Like [`init`], with settings.
pub fn init_with(config: Config) -> Result<()> {
    // Already running (a driver's second call, or a task or actor calling init, as a Tune trial
    // that starts a Trainer does): nothing to do. Checked first, because a worker process still
    // has the worker's environment and would otherwise start a second worker loop.
    if runtime::try_runtime().is_some() {
        return Ok(());
    }
    worker::maybe_run();
    static STARTING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = STARTING.lock().unwrap_or_else(|p| p.into_inner());
    if runtime::try_runtime().is_some() {
        return Ok(());
    }
    let address = config.address.clone().or_else(|| std::env::var("FLARE_ADDRESS").ok()).filter(|a| !a.trim().is_empty());
    let (core, shm): (Arc<dyn runtime::Core>, _) = if config.local_mode {
        let dir = std::env::temp_dir().join(format!("flare_local_{}_{}", std::process::id(), util::now_ms()));
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        (Arc::new(local::LocalCore::new(dir.clone())), dir)
    } else if let Some(address) = address {
        let token = cluster_token(&config)?;
        let node_ip =
            config.node_ip.clone().or_else(|| std::env::var("FLARE_NODE_IP").ok()).unwrap_or_else(|| "127.0.0.1".into());
        // The machine's resources belong to its node agent; the driver's node offers only what
        // the config declares.
        let mut local = config.clone();
        local.num_cpus = Some(config.num_cpus.unwrap_or(0.0));
        local.num_gpus = Some(config.num_gpus.unwrap_or(0.0));
        local.prestart_workers = Some(config.prestart_workers.unwrap_or(0));
        let node = node::Node::start(&local)?;
        if let Err(e) = node.join(&address, token, &node_ip) {
            node.shutdown();
            return Err(e);
        }
        let shm = node.session.shm_dir.clone();
        (Arc::new(node::DriverCore { node }), shm)
    } else {
        let node = node::Node::start(&config)?;
        let shm = node.session.shm_dir.clone();
        (Arc::new(node::DriverCore { node }), shm)
    };
    let rt = Arc::new(runtime::Runtime::new(core, ids::WorkerId::DRIVER, shm));
    if let Err(e) = runtime::install(rt.clone()) {
        rt.core.shutdown();
        return Err(e.into());
    }
    static AT_EXIT: Once = Once::new();
    AT_EXIT.call_once(|| {
        extern "C" fn at_exit() {
            shutdown();
        }
        // Safety: registering a plain extern "C" function.
        unsafe { libc::atexit(at_exit) };
    });
    Ok(())
}

/// The token a joining driver presents: the config's, `FLARE_TOKEN`, `RAY_AUTH_TOKEN`, or the
/// default session directory's token file.
fn cluster_token(config: &Config) -> Result<String> {
    if let Some(t) =
        config.token.clone().or_else(|| std::env::var("FLARE_TOKEN").ok()).or_else(|| std::env::var("RAY_AUTH_TOKEN").ok())
    {
        return Ok(t.trim().to_string());
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let dir = std::path::Path::new(&home).join(".flare").join("session_latest");
    head::read_token(&dir)
        .map_err(|e| Error::Config(format!("joining a cluster needs its token: set FLARE_TOKEN=$(flare token) ({e})")))
}

/// Stops the embedded cluster: workers exit and the session's shared memory is removed.
/// [`init`] may be called again afterwards. Called automatically when the process exits.
pub fn shutdown() {
    if let Some(rt) = runtime::uninstall() {
        rt.core.shutdown();
    }
}

/// Whether this process is a worker (rather than the driver).
pub fn is_worker() -> bool {
    runtime::try_runtime().is_some_and(|rt| rt.worker_id != ids::WorkerId::DRIVER)
}

/// The GPU ids the current task or actor was assigned (what its `CUDA_VISIBLE_DEVICES` lists).
/// Empty in the driver and for work that asked for no GPU.
pub fn get_gpu_ids() -> Vec<u32> {
    worker::gpu_ids()
}

/// Whether the running task was cancelled with [`cancel`]; long tasks poll it to stop early.
pub fn is_cancelled() -> bool {
    worker::is_cancelled()
}

/// The state API: tasks, actors, objects, placement groups, workers and resources.
pub fn list(query: StateQuery) -> Result<state::StateSnapshot> {
    Ok(runtime::runtime()?.core.state(query)?)
}

/// The nodes this driver schedules on: its own (`is_local`) and, once it joined a cluster, each
/// node agent's, with the ids `SchedulingStrategy::NodeAffinity` takes.
pub fn nodes() -> Result<Vec<state::NodeInfo>> {
    Ok(list(StateQuery::Nodes)?.nodes)
}

/// Total and available resources of the cluster, and the object store's use.
pub fn cluster_resources() -> Result<state::ClusterResources> {
    list(StateQuery::Resources)?.resources.ok_or_else(|| Error::Config("the node did not report its resources".into()))
}

/// Runs this process as a worker if it was started as one, before anything else (including a
/// test harness) gets going. `#[flare::worker_entry]`-less binaries call [`init`] instead.
#[doc(hidden)]
pub fn __worker_entry() {
    worker::maybe_run();
}

/// What `#[flare::remote]` and `#[flare::actor]` expand to. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::actor::{ActorInstance, BoxedCall, MethodCall};
    pub use crate::codec::{ObjectData, ReturnValue};
    pub use crate::object_ref::ArgSlot;
    pub use crate::registry::{ActorClass, RemoteFunction, ACTOR_CLASSES, REMOTE_FUNCTIONS};
    pub use crate::task::submit_task;
    pub use ctor;
    pub use linkme;
    pub use tokio;

    use crate::error::{ErrorKind, TaskError};

    /// Decodes argument `i` of `args` as a `T`.
    pub fn arg<T: serde::de::DeserializeOwned>(args: &[ObjectData], i: usize, name: &str) -> Result<T, TaskError> {
        match args.get(i) {
            Some(a) => a
                .decode()
                .map_err(|e| TaskError::new(ErrorKind::Serialization, format!("argument {i} of `{name}`: {}", e.message))),
            None => {
                Err(TaskError::new(ErrorKind::Serialization, format!("`{name}` got {} argument(s), expected more", args.len())))
            }
        }
    }

    /// Checks the argument count.
    pub fn arity(args: &[ObjectData], n: usize, name: &str) -> Result<(), TaskError> {
        if args.len() == n {
            Ok(())
        } else {
            Err(TaskError::new(ErrorKind::Serialization, format!("`{name}` takes {n} argument(s) but got {}", args.len())))
        }
    }

    /// A user function's `Err` as a task error.
    pub fn user_error(e: impl std::fmt::Display) -> TaskError {
        TaskError::new(ErrorKind::UserError, format!("{e:#}"))
    }

    /// Boxes a returned value.
    pub fn ret<T: serde::Serialize + Send + 'static>(v: T) -> Result<Box<dyn ReturnValue>, TaskError> {
        Ok(Box::new(v))
    }
}
