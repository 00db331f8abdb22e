//! The replica actor: a deployment's replica in its own worker process.

use crate::deployment::{DynReplica, Factory, ReplicaContext};
use crate::types::{Request, Response};
use serde::{Deserialize, Serialize};
use std::sync::{Mutex, OnceLock};

/// What a replica is built from.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct ReplicaSetup {
    pub factory: flare_core::util::CodeRef,
    #[serde(with = "serde_bytes")]
    pub config: Vec<u8>,
    pub deployment: String,
    pub replica_id: String,
    pub max_models: u32,
    /// The directories of the application's deployments (for handles).
    pub directories: Vec<(String, flare_core::ActorHandle<crate::handle::ReplicaDirectory>)>,
}

/// What a started replica reports.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ReplicaInfo {
    pub pid: u32,
    pub gpu_ids: Vec<u32>,
}

/// The answer to a batch: its responses (or the error that failed all of them) and the
/// models the replica has loaded after it (for model-aware routing).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct BatchReply {
    pub result: Result<Vec<Response>, String>,
    pub models: Vec<String>,
}

/// The replica's loaded models, least recently used first, with how many batches use each.
#[derive(Default)]
struct Models {
    lru: Vec<(String, u32)>,
}

pub struct ReplicaActor {
    inner: OnceLock<Box<dyn DynReplica>>,
    max_models: OnceLock<usize>,
    models: Mutex<Models>,
}

impl ReplicaActor {
    fn replica(&self) -> Result<&dyn DynReplica, String> {
        self.inner.get().map(|b| b.as_ref()).ok_or_else(|| "the replica was not started".to_string())
    }

    fn loaded(&self) -> Vec<String> {
        self.models.lock().unwrap_or_else(|p| p.into_inner()).lru.iter().map(|(m, _)| m.clone()).collect()
    }

    /// Makes `model` loaded and in use (evicting the least recently used unused ones).
    fn acquire(&self, r: &dyn DynReplica, model: &str) -> Result<(), String> {
        let max = *self.max_models.get().unwrap_or(&1);
        let mut m = self.models.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = m.lru.iter().position(|(id, _)| id == model) {
            let mut e = m.lru.remove(i);
            e.1 += 1;
            m.lru.push(e);
            return Ok(());
        }
        while m.lru.len() >= max {
            let Some(i) = m.lru.iter().position(|(_, users)| *users == 0) else { break };
            let (old, _) = m.lru.remove(i);
            r.unload_model(&old);
        }
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| r.load_model(model))) {
            Ok(Ok(())) => {
                m.lru.push((model.to_string(), 1));
                Ok(())
            }
            Ok(Err(e)) => Err(format!("loading model '{model}' failed: {e}")),
            Err(p) => Err(format!("loading model '{model}' panicked: {}", flare_core::util::panic_message(&*p))),
        }
    }

    fn release(&self, model: &str) {
        let mut m = self.models.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = m.lru.iter_mut().find(|(id, _)| id == model) {
            e.1 = e.1.saturating_sub(1);
        }
    }
}

#[flare_macros::actor(crate = ::flare_core)]
impl ReplicaActor {
    fn new() -> Self {
        ReplicaActor { inner: OnceLock::new(), max_models: OnceLock::new(), models: Mutex::new(Models::default()) }
    }

    /// Builds the deployment's replica in this process.
    fn start(&self, setup: ReplicaSetup) -> Result<ReplicaInfo, String> {
        let addr = setup.factory.resolve()?;
        // Safety: the address is `build::<D>` of the driver's deployment type, in this same
        // executable image (its code bytes matched), so it is a function of exactly this type.
        let factory = unsafe { std::mem::transmute::<usize, Factory>(addr) };
        let gpu_ids = flare_core::get_gpu_ids();
        let ctx = ReplicaContext {
            deployment: setup.deployment.clone(),
            replica_id: setup.replica_id,
            gpu_ids: gpu_ids.clone(),
            directories: setup.directories,
        };
        let replica = match std::panic::catch_unwind(|| factory(&setup.config, &ctx)) {
            Ok(r) => r.map_err(|e| format!("deployment '{}' failed to start: {e}", setup.deployment))?,
            Err(p) => {
                return Err(format!(
                    "deployment '{}' panicked while starting: {}",
                    setup.deployment,
                    flare_core::util::panic_message(&*p)
                ))
            }
        };
        let _ = self.max_models.set(setup.max_models.max(1) as usize);
        self.inner.set(replica).map_err(|_| "the replica was started already".to_string())?;
        Ok(ReplicaInfo { pid: std::process::id(), gpu_ids })
    }

    /// Runs one batch (all of one model, when multiplexed) as one call of the handler.
    fn handle(&self, batch: Vec<Request>) -> BatchReply {
        let r = match self.replica() {
            Ok(r) => r,
            Err(e) => return BatchReply { result: Err(e), models: Vec::new() },
        };
        let n = batch.len();
        let model = batch.first().and_then(|q| q.model_id.clone());
        if let Some(m) = &model {
            if let Err(e) = self.acquire(r, m) {
                return BatchReply { result: Err(e), models: self.loaded() };
            }
        }
        let result = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| r.handle_batch(batch))) {
            Ok(Ok(v)) if v.len() == n => Ok(v),
            Ok(Ok(v)) => Err(format!("the handler returned {} responses for a batch of {n} requests", v.len())),
            Ok(Err(e)) => Err(e),
            Err(p) => Err(format!("the handler panicked: {}", flare_core::util::panic_message(&*p))),
        };
        if let Some(m) = &model {
            self.release(m);
        }
        BatchReply { result, models: self.loaded() }
    }

    /// The next chunks of a streamed response (waits up to `wait_ms` for the first).
    fn stream_next(&self, id: u64, wait_ms: u32) -> Result<crate::stream::StreamChunk, String> {
        crate::stream::next(id, std::time::Duration::from_millis(wait_ms as u64))
    }

    fn stream_cancel(&self, id: u64) {
        crate::stream::cancel(id)
    }

    fn check_health(&self) -> Result<(), String> {
        let r = self.replica()?;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| r.check_health())) {
            Ok(v) => v,
            Err(p) => Err(format!("the health check panicked: {}", flare_core::util::panic_message(&*p))),
        }
    }
}

/// Where a replica runs: an actor in its own worker process (the default), or in the proxy's
/// own process (`in_process`: no process hop, no isolation, no scheduler resources).
#[derive(Clone)]
pub(crate) enum Backend {
    Actor(flare_core::ActorHandle<ReplicaActor>),
    Local(std::sync::Arc<ReplicaActor>),
}

/// A failed call: whether the replica is gone, and the message.
pub(crate) struct CallError {
    pub died: bool,
    pub message: String,
}

fn actor_error(e: flare_core::Error) -> CallError {
    use flare_core::ErrorKind::*;
    CallError { died: matches!(e.kind(), ActorDied | WorkerDied | ActorRestarting), message: e.to_string() }
}

async fn local<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, CallError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CallError { died: false, message: format!("the replica's call failed: {e}") })
}

impl Backend {
    /// A replica in this process.
    pub fn local() -> Self {
        Backend::Local(std::sync::Arc::new(ReplicaActor::new()))
    }

    pub async fn start(&self, setup: ReplicaSetup) -> Result<ReplicaInfo, String> {
        match self {
            Backend::Actor(h) => h.start(setup).await.map_err(|e| e.to_string()),
            Backend::Local(r) => {
                let r = r.clone();
                local(move || r.start(setup)).await.map_err(|e| e.message)?
            }
        }
    }

    pub async fn handle(&self, batch: Vec<Request>) -> Result<BatchReply, CallError> {
        match self {
            Backend::Actor(h) => h.handle(batch).await.map_err(actor_error),
            // On this worker thread (its other tasks move to another): no thread hop.
            Backend::Local(r) => Ok(tokio::task::block_in_place(|| r.handle(batch))),
        }
    }

    pub async fn check_health(&self) -> Result<(), String> {
        match self {
            Backend::Actor(h) => h.check_health().await.map_err(|e| e.to_string()),
            Backend::Local(r) => {
                let r = r.clone();
                local(move || r.check_health()).await.map_err(|e| e.message)?
            }
        }
    }

    pub async fn stream_next(&self, id: u64, wait_ms: u32) -> Result<crate::stream::StreamChunk, String> {
        match self {
            Backend::Actor(h) => h.stream_next(id, wait_ms).await.map_err(|e| e.to_string()),
            Backend::Local(r) => {
                let r = r.clone();
                local(move || r.stream_next(id, wait_ms)).await.map_err(|e| e.message)?
            }
        }
    }

    pub fn stream_cancel(&self, id: u64) {
        match self {
            Backend::Actor(h) => drop(h.stream_cancel(id)),
            Backend::Local(r) => r.stream_cancel(id),
        }
    }

    pub fn kill(&self) {
        if let Backend::Actor(h) = self {
            let _ = flare_core::kill(h);
        }
    }

    /// The actor, for handles (in-process replicas are not reachable from other processes).
    pub fn actor(&self) -> Option<&flare_core::ActorHandle<ReplicaActor>> {
        match self {
            Backend::Actor(h) => Some(h),
            Backend::Local(_) => None,
        }
    }
}
