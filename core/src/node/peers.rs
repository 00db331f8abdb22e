//! Named actors across the drivers of a cluster.
//!
//! The head keeps the cluster's actor directory in its KV (persisted in its database, so a
//! restarted head still has it): a driver that creates a named actor first claims
//! `(namespace, name)` there ([`Node::claim_actor_name`]), naming its own cluster port and the
//! actor's id; a name another live driver holds is refused. Another driver's
//! `get_actor(name)` that finds no such actor of its own reads the claim and connects to the
//! owner's cluster port for that actor ([`Hello::ActorPeer`]). On the caller's side the link is
//! an actor whose "worker" is that connection: calls queue, order and fail as for any actor
//! (it dies, without restarts, when the owner goes). On the owner's side ([`serve_actor_peer`])
//! each call arrives as the worker protocol's `CallActor`, is submitted to the owner's own
//! actor, and its result goes back as `TaskDone`; large arguments are pulled from the caller's
//! store first. A result that is a file goes back as its path: the caller pulls it into its
//! own store ([`fetch_peer_result`]) and says `Fetched`, and the owner drops its reference
//! then (or when the caller goes). `flare::kill` on the caller's side sends `KillActor`: the
//! owner kills its actor.

use super::state::{ActorEntry, Refs, Role, WorkerEntry, WorkerStatus, LOCAL};
use super::Node;
use crate::codec::{Arg, Payload, RefKey};
use crate::error::{ErrorKind, TaskError};
use crate::ids::{ActorId, ObjectId, WorkerId};
use crate::protocol::{read_frame, write_frame, Conn, FromAgent, Hello, Receiver, ToNode, ToWorker};
use crate::spec::{ActorCallSpec, ActorSpec};
use crate::state::ActorState;
use serde::{Deserialize, Serialize};
use std::collections::{HashSet, VecDeque};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where the head's KV keeps named actors' claims.
pub(crate) const ACTOR_PREFIX: &str = "__flare_actors/";

/// A named actor's entry in the head's directory.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Claim {
    driver_pid: u32,
    /// The owner's cluster port.
    address: String,
    actor_id: u64,
    class: String,
}

pub(crate) fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn claim_key(namespace: &str, name: &str) -> String {
    format!("/api/kv/{ACTOR_PREFIX}{}/{}", hex(namespace), hex(name))
}

/// Whether the driver whose cluster port is `address` is still there (a killed driver's port
/// refuses connections).
pub(crate) fn driver_is_live(address: &str) -> bool {
    use std::net::ToSocketAddrs;
    let Some(addr) = address.to_socket_addrs().ok().and_then(|mut a| a.next()) else { return false };
    TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
}

fn system(msg: String) -> TaskError {
    TaskError::new(ErrorKind::System, msg)
}

/// Claims `key` (an `/api/kv/...` path) in the head's KV with `body`, for `what` (named in
/// errors). When another claim holds it, `refused` reads that claim and says why it stands;
/// `None`: its holder is gone, and the key is taken over.
pub(crate) fn claim_in_head(
    ctx: &super::cluster::ClusterCtx,
    key: &str,
    body: &[u8],
    what: &str,
    refused: impl Fn(&[u8]) -> Option<TaskError>,
) -> Result<(), TaskError> {
    let claim_path = key.replacen("/api/kv/", "/api/kv_claim/", 1);
    for _ in 0..2 {
        let r = ctx
            .head
            .request("POST", &claim_path, Some(("application/json", body)))
            .map_err(|e| system(format!("claiming {what} at the head: {e}")))?;
        match r.status {
            200 => return Ok(()),
            409 => {
                if let Some(e) = refused(&r.body) {
                    return Err(e);
                }
                let _ = ctx.head.request("DELETE", key, None);
            }
            _ => return Err(system(format!("the head refused the claim on {what}: {}", r.text().trim()))),
        }
    }
    Err(system(format!("{what} was claimed by another driver at the same time; try again")))
}

impl Node {
    /// In a driver that joined a cluster, claims a named actor's name in the head's directory
    /// before the actor is created here. A name that another live driver holds is refused.
    pub(crate) fn claim_actor_name(&self, spec: &ActorSpec) -> Result<(), TaskError> {
        let (Some(ctx), Some(name)) = (self.cluster.get(), spec.name.as_deref()) else { return Ok(()) };
        let key = claim_key(&spec.namespace, name);
        let claim = Claim {
            driver_pid: std::process::id(),
            address: ctx.worker_addr.clone(),
            actor_id: spec.actor_id.0,
            class: spec.class.clone(),
        };
        let body = serde_json::to_vec(&claim).expect("a claim encodes");
        claim_in_head(ctx, &key, &body, &format!("the actor name `{name}`"), |held| {
            let holder: Option<Claim> = serde_json::from_slice(held).ok();
            // A claim that cannot be read is left alone; one whose driver is gone is free again.
            let live = holder.as_ref().is_none_or(|h| h.driver_pid == std::process::id() || driver_is_live(&h.address));
            let pid = holder.map(|h| h.driver_pid).unwrap_or_default();
            live.then(|| system(format!(
                "an actor named `{name}` already exists in namespace `{}` (it belongs to the driver with pid {pid}); pick another name or look it up with flare::get_actor",
                spec.namespace
            )))
        })?;
        ctx.claims.lock().unwrap_or_else(|p| p.into_inner()).insert(key);
        Ok(())
    }

    /// Gives up the claim on a named actor's name (the actor died), from a thread of its own.
    pub(crate) fn unclaim_actor_name(&self, namespace: &str, name: &str) {
        let Some(ctx) = self.cluster.get() else { return };
        let key = claim_key(namespace, name);
        if !ctx.claims.lock().unwrap_or_else(|p| p.into_inner()).remove(&key) {
            return;
        }
        let head = ctx.head.clone();
        let _ = std::thread::Builder::new().name("flare-unclaim".into()).spawn(move || {
            let _ = head.request("DELETE", &key, None);
        });
    }

    /// Gives up every claim this driver holds (at shutdown).
    pub(crate) fn unclaim_all(&self) {
        let Some(ctx) = self.cluster.get() else { return };
        let keys: Vec<String> = ctx.claims.lock().unwrap_or_else(|p| p.into_inner()).drain().collect();
        for k in keys {
            let _ = ctx.head.request("DELETE", &k, None);
        }
    }

    /// Another driver's named actor, found in the head's directory: connects to its owner and
    /// adds a local actor entry whose calls go there.
    pub(crate) fn foreign_actor(self: &Arc<Self>, name: &str, namespace: &str) -> Result<(ActorId, String), TaskError> {
        let not_found = || {
            TaskError::new(ErrorKind::NotFound, format!("no live actor named `{name}` in namespace `{namespace}` in the cluster"))
        };
        let ctx = self.cluster.get().ok_or_else(not_found)?;
        let r = ctx
            .head
            .get(&claim_key(namespace, name))
            .map_err(|e| system(format!("looking up actor `{name}` at the head: {e}")))?;
        if r.status == 404 {
            return Err(not_found());
        }
        let claim: Claim = serde_json::from_slice(&r.body)
            .map_err(|e| system(format!("the head's entry for actor `{name}` is not a claim ({e}): {}", r.text())))?;
        if claim.driver_pid == std::process::id() {
            return Err(not_found());
        }
        let mut s = crate::transfer::connect(&claim.address).map_err(|e| {
            TaskError::new(
                ErrorKind::ActorDied,
                format!("the driver that owns actor `{name}` ({}) is unreachable: {e}", claim.address),
            )
        })?;
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let hello = Hello::ActorPeer {
            token: ctx.token.clone(),
            actor_id: ActorId(claim.actor_id),
            pid: std::process::id(),
            pull_addr: ctx.worker_addr.clone(),
        };
        write_frame(&mut s, &hello).map_err(|e| system(format!("connecting to the owner of actor `{name}`: {e}")))?;
        match read_frame::<FromAgent>(&mut s, 1 << 20) {
            Ok(FromAgent::Ready) => {}
            Ok(FromAgent::Refused(why)) => return Err(TaskError::new(ErrorKind::NotFound, why)),
            Ok(other) => return Err(system(format!("unexpected answer from the owner of actor `{name}`: {other:?}"))),
            Err(e) => {
                return Err(TaskError::new(ErrorKind::ActorDied, format!("the owner of actor `{name}` did not answer: {e}")))
            }
        }
        let _ = s.set_read_timeout(None);
        let (w, r) = match (s.try_clone(), s.try_clone()) {
            (Ok(w), Ok(r)) => (w, r),
            (Err(e), _) | (_, Err(e)) => return Err(system(e.to_string())),
        };
        let rt = crate::runtime::runtime().map_err(|e| system(e.to_string()))?;
        let aid = ActorId(rt.ids.next_task().0);
        let owner = format!("the driver with pid {} at {}", claim.driver_pid, claim.address);
        let wid = self.with_state(|st, _| {
            let wid = WorkerId(st.next_worker);
            st.next_worker += 1;
            st.workers.insert(
                wid,
                WorkerEntry {
                    pid: None,
                    node: LOCAL,
                    link: None,
                    conn: None,
                    gpu_key: Vec::new(),
                    role: Role::Actor(aid),
                    status: WorkerStatus::Actor,
                    assigned: None,
                    label: Arc::new(Mutex::new(name.to_string())),
                    held: HashSet::new(),
                    blocked_gets: 0,
                    flag: Arc::default(),
                },
            );
            let spec = ActorSpec {
                actor_id: aid,
                class: claim.class.clone(),
                args: Vec::new(),
                contained: Vec::new(),
                resources: Default::default(),
                strategy: Default::default(),
                max_restarts: 0,
                max_task_retries: 0,
                max_concurrency: 1,
                is_async: false,
                name: Some(name.to_string()),
                namespace: namespace.to_string(),
                detached: true,
            };
            st.actors.insert(
                aid,
                ActorEntry {
                    spec: Arc::new(spec),
                    state: ActorState::PendingCreation,
                    missing: 0,
                    alloc: None,
                    worker: Some(wid),
                    pid: None,
                    pending: VecDeque::new(),
                    inflight: VecDeque::new(),
                    restarts: 0,
                    refs: Refs::default(),
                    death: None,
                    infeasible_since: None,
                    terminate_when_idle: false,
                    owner: Some(owner),
                },
            );
            wid
        });
        let node = self.clone();
        let address = claim.address.clone();
        std::thread::Builder::new()
            .name("flare-actor-peer".into())
            .spawn(move || {
                // The connection is the actor's worker: `CreateActor` is its handshake, then calls.
                let via = super::workers::Via::Peer(address);
                super::workers::serve_connection(node.clone(), wid, 0, Arc::new(Conn::new(w)), Receiver::new(r), via);
                node.with_state(|st, fx| st.worker_died(wid, "the driver that owns it is gone", fx));
            })
            .map_err(|e| system(e.to_string()))?;
        tracing::info!(actor = %aid, name, owner = %claim.address, "using another driver's actor");
        Ok((aid, claim.class))
    }
}

/// On the caller's side of a link to another driver's actor: a call's result that is a file
/// (in the owner's store, or on a node of the owner's) is pulled into this driver's store
/// before the call completes here, and the owner is told it may let it go.
pub(crate) fn fetch_peer_result(node: &Node, owner: &str, conn: &Conn, msg: ToNode) -> ToNode {
    let Some(ctx) = node.cluster.get() else { return msg };
    let ToNode::TaskDone { task_id, result: Ok((Payload::File { path, size, .. }, refs)) } = msg else { return msg };
    let id = ObjectId::for_return(task_id, 0);
    let dest = crate::store::object_file(&node.session.shm_dir, id);
    let (from, there) = crate::transfer::split_remote(&path).unwrap_or((owner, &path));
    let pulled = crate::transfer::pull(from, &ctx.token, there, false, &dest);
    let _ = conn.send(&ToWorker::Fetched { task_id });
    let result = match pulled {
        Ok(_) => Ok((Payload::File { id, path: dest.to_string_lossy().into_owned(), size }, refs)),
        Err(e) => {
            Err(TaskError::new(ErrorKind::ObjectLost, format!("fetching the result ({size} bytes) from the actor's driver: {e}")))
        }
    };
    ToNode::TaskDone { task_id, result }
}

/// Serves another driver's calls on this driver's named actor `actor_id` over `s`, speaking
/// the worker protocol from the worker's side, until the connection closes.
pub(crate) fn serve_actor_peer(node: Arc<Node>, mut s: TcpStream, actor_id: ActorId, pull_addr: String) {
    let named = {
        let st = node.lock();
        st.actors.get(&actor_id).filter(|a| a.state != ActorState::Dead && a.spec.name.is_some() && a.owner.is_none()).is_some()
    };
    if !named {
        let _ = write_frame(&mut s, &FromAgent::Refused(format!("{actor_id} is not a live named actor of this driver")));
        return;
    }
    if write_frame(&mut s, &FromAgent::Ready).is_err() {
        return;
    }
    // Calls may be minutes apart.
    let _ = s.set_read_timeout(None);
    let (Ok(w), Ok(r)) = (s.try_clone(), s.try_clone()) else { return };
    let conn = Arc::new(Conn::new(w));
    let mut rx = Receiver::new(r);
    let Some(ctx) = node.cluster.get() else { return };
    let Ok(rt) = crate::runtime::runtime() else { return };
    // File results sent and not yet pulled by the caller, by its call id (`None` once the
    // caller is gone).
    let held: Arc<Mutex<Option<std::collections::HashMap<crate::ids::TaskId, ObjectId>>>> =
        Arc::new(Mutex::new(Some(Default::default())));
    while let Ok(Some(msg)) = rx.recv::<ToWorker>() {
        match msg {
            ToWorker::CreateActor { actor_id: theirs, .. } => {
                let _ = conn.send(&ToNode::ActorReady { actor_id: theirs, result: Ok(()) });
            }
            ToWorker::CallActor { task_id: theirs, method, args } => {
                // Arguments: values as they are; files pulled from the caller's store into ours.
                let mut put = Vec::new();
                let mut call_args = Vec::with_capacity(args.len());
                let mut failed = None;
                for p in args {
                    match p {
                        Payload::Inline(v) => call_args.push(Arg::Value(v)),
                        Payload::Error(e) => failed = Some(e),
                        Payload::File { path, size, .. } => {
                            let id = ObjectId::for_return(rt.ids.next_task(), 0);
                            let dest = crate::store::object_file(&node.session.shm_dir, id);
                            // On the caller's node, or on a node of its that made it.
                            let (from, there) = crate::transfer::split_remote(&path).unwrap_or((&pull_addr, &path));
                            match crate::transfer::pull(from, &ctx.token, there, false, &dest) {
                                Ok(_) => {
                                    node.put(
                                        WorkerId::DRIVER,
                                        id,
                                        Payload::File { id, path: dest.to_string_lossy().into_owned(), size },
                                        Vec::new(),
                                    );
                                    put.push(id);
                                    call_args.push(Arg::Ref(id));
                                }
                                Err(e) => {
                                    failed = Some(TaskError::new(
                                        ErrorKind::ObjectLost,
                                        format!("fetching an argument from the calling driver: {e}"),
                                    ))
                                }
                            }
                        }
                    }
                }
                if let Some(e) = failed {
                    for id in put {
                        node.remove_ref(WorkerId::DRIVER, RefKey::Object(id));
                    }
                    let _ = conn.send(&ToNode::TaskDone { task_id: theirs, result: Err(e) });
                    continue;
                }
                let spec =
                    ActorCallSpec { task_id: rt.ids.next_task(), actor_id, method, args: call_args, contained: Vec::new() };
                let ret = spec.return_id();
                node.submit_actor_task(WorkerId::DRIVER, spec);
                let (c, n) = (conn.clone(), node.clone());
                let held = held.clone();
                node.get(WorkerId::DRIVER, ret).on_complete(move |r| {
                    let result = match r {
                        Ok(d) => Ok((d.to_payload(), Vec::new())),
                        Err(e) => Err(e.clone()),
                    };
                    // A file result stays until the caller pulled it (`Fetched`).
                    let file = matches!(result, Ok((Payload::File { .. }, _)))
                        && held.lock().unwrap_or_else(|p| p.into_inner()).as_mut().map(|h| h.insert(theirs, ret)).is_some();
                    let _ = c.send(&ToNode::TaskDone { task_id: theirs, result });
                    if !file {
                        n.remove_ref(WorkerId::DRIVER, RefKey::Object(ret));
                    }
                    for id in put {
                        n.remove_ref(WorkerId::DRIVER, RefKey::Object(id));
                    }
                });
            }
            ToWorker::KillActor { no_restart } => {
                tracing::info!(actor = %actor_id, "another driver kills this driver's named actor");
                if let Err(e) = node.kill_actor(actor_id, no_restart) {
                    tracing::warn!(actor = %actor_id, "killing it for another driver: {e}");
                }
            }
            ToWorker::Fetched { task_id } => {
                let ret = held.lock().unwrap_or_else(|p| p.into_inner()).as_mut().and_then(|h| h.remove(&task_id));
                if let Some(ret) = ret {
                    node.remove_ref(WorkerId::DRIVER, RefKey::Object(ret));
                }
            }
            ToWorker::Exit => break,
            _ => {}
        }
    }
    // The caller is gone: what it did not pull goes.
    let left = held.lock().unwrap_or_else(|p| p.into_inner()).take().unwrap_or_default();
    for (_, ret) in left {
        node.remove_ref(WorkerId::DRIVER, RefKey::Object(ret));
    }
}
