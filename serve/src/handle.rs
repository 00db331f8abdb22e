//! Composition: a replica calls another deployment of its application through a typed
//! [`DeploymentHandle`], straight to that deployment's replica actors (the less loaded of two
//! random ones, as the proxy picks). Each deployment's running replicas are published by its
//! controller in a small directory actor that the handles read.

use crate::replica::ReplicaActor;
use crate::types::{Request, Response};
use flare_core::util::SplitMix64;
use flare_core::{ActorHandle, ErrorKind};
use serde::{de::DeserializeOwned, Serialize};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A deployment's running replicas, as its controller last published them.
pub struct ReplicaDirectory {
    replicas: Mutex<(u64, Vec<ActorHandle<ReplicaActor>>)>,
}

#[flare_macros::actor(crate = ::flare_core)]
impl ReplicaDirectory {
    fn new() -> Self {
        ReplicaDirectory { replicas: Mutex::new((0, Vec::new())) }
    }

    fn set(&self, version: u64, replicas: Vec<ActorHandle<ReplicaActor>>) {
        let mut r = self.replicas.lock().unwrap_or_else(|p| p.into_inner());
        if version > r.0 {
            *r = (version, replicas);
        }
    }

    fn get(&self) -> (u64, Vec<ActorHandle<ReplicaActor>>) {
        self.replicas.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// How long a handle trusts its copy of the replica list.
const REFRESH: Duration = Duration::from_secs(1);

struct Cached {
    at: Option<Instant>,
    version: u64,
    replicas: Vec<(ActorHandle<ReplicaActor>, Arc<AtomicUsize>)>,
}

/// A typed handle on a deployment: `call(&req)` sends `req` as a JSON body and decodes the
/// JSON answer. Cheap to clone; made by [`crate::ReplicaContext::handle`].
pub struct DeploymentHandle<Req, Resp> {
    name: String,
    directory: ActorHandle<ReplicaDirectory>,
    cache: Arc<Mutex<Cached>>,
    rng: Arc<Mutex<SplitMix64>>,
    _types: PhantomData<fn(Req) -> Resp>,
}

impl<Req, Resp> Clone for DeploymentHandle<Req, Resp> {
    fn clone(&self) -> Self {
        DeploymentHandle {
            name: self.name.clone(),
            directory: self.directory.clone(),
            cache: self.cache.clone(),
            rng: self.rng.clone(),
            _types: PhantomData,
        }
    }
}

impl<Req: Serialize, Resp: DeserializeOwned> DeploymentHandle<Req, Resp> {
    pub(crate) fn new(name: &str, directory: ActorHandle<ReplicaDirectory>) -> Self {
        DeploymentHandle {
            name: name.to_string(),
            directory,
            cache: Arc::new(Mutex::new(Cached { at: None, version: 0, replicas: Vec::new() })),
            rng: Arc::new(Mutex::new(SplitMix64::new(flare_core::util::now_ms() ^ std::process::id() as u64))),
            _types: PhantomData,
        }
    }

    /// Calls the deployment with `req` (a JSON body, method `CALL`, path `/`) and decodes its
    /// JSON response; an error status comes back as `Err` with the deployment's message.
    pub fn call(&self, req: &Req) -> Result<Resp, String> {
        let body = serde_json::to_vec(req).map_err(|e| format!("encoding the request to '{}': {e}", self.name))?;
        let resp = self.request(Request { method: "CALL".into(), path: "/".into(), body, ..Default::default() })?;
        if resp.status >= 400 {
            return Err(format!("deployment '{}' answered {}: {}", self.name, resp.status, resp.message()));
        }
        serde_json::from_slice(&resp.body)
            .map_err(|e| format!("deployment '{}' answered something else than expected: {e}", self.name))
    }

    /// Sends one raw request to a replica of the deployment (retried once on another replica if
    /// the first one dies).
    pub fn request(&self, req: Request) -> Result<Response, String> {
        let mut last = String::new();
        for attempt in 0..2 {
            let (replica, load) = self.pick(attempt > 0)?;
            load.fetch_add(1, Ordering::Relaxed);
            let reply = flare_core::get(&replica.handle(vec![req.clone()]));
            load.fetch_sub(1, Ordering::Relaxed);
            match reply {
                Ok(r) => {
                    let mut v = r.result.map_err(|e| format!("deployment '{}': {e}", self.name))?;
                    return v.pop().ok_or_else(|| format!("deployment '{}' gave no response", self.name));
                }
                Err(e) if matches!(e.kind(), ErrorKind::ActorDied | ErrorKind::WorkerDied | ErrorKind::ActorRestarting) => {
                    last = e.to_string();
                }
                Err(e) => return Err(format!("calling deployment '{}': {e}", self.name)),
            }
        }
        Err(format!("the replicas of deployment '{}' died while answering: {last}", self.name))
    }

    fn pick(&self, refresh: bool) -> Result<(ActorHandle<ReplicaActor>, Arc<AtomicUsize>), String> {
        let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if refresh || c.replicas.is_empty() || c.at.is_none_or(|t| t.elapsed() > REFRESH) {
                let (version, reps) = flare_core::get(&self.directory.get())
                    .map_err(|e| format!("reading the replicas of deployment '{}': {e}", self.name))?;
                if version != c.version {
                    c.replicas = reps.into_iter().map(|r| (r, Arc::new(AtomicUsize::new(0)))).collect();
                    c.version = version;
                }
                c.at = Some(Instant::now());
            }
            let n = c.replicas.len();
            if n > 0 {
                let (a, b) = {
                    let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
                    (rng.below(n as u64) as usize, rng.below(n as u64) as usize)
                };
                let i = if c.replicas[a].1.load(Ordering::Relaxed) <= c.replicas[b].1.load(Ordering::Relaxed) { a } else { b };
                return Ok((c.replicas[i].0.clone(), c.replicas[i].1.clone()));
            }
            if Instant::now() > deadline {
                return Err(format!("deployment '{}' has no running replica", self.name));
            }
            drop(c);
            std::thread::sleep(Duration::from_millis(50));
            c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        }
    }
}
