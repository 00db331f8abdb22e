//! The driver's side of a multi-node cluster.
//!
//! A driver that joins a cluster (`FLARE_ADDRESS` or [`Config::address`](crate::Config)) keeps
//! its embedded node as the owner of its tasks, actors and objects (Ray's ownership model), and
//! schedules over every node of the head's node table: its own plus one [`RemoteNode`] per node
//! agent. For each agent it holds an [`AgentLink`]: a TCP connection over which the agent gets
//! the driver's executable (by content hash, cached on the agent) and starts and kills workers
//! for it. Those workers connect back to the driver's TCP port ([`Hello::Worker`]) and speak the
//! same protocol as local ones. Object files move by pull ([`crate::transfer`]): a worker pulls
//! the driver's objects from the driver's node; a remote worker's large result stays on its
//! node (the driver records it as `@AGENT/path`, counts it against that node's share of its
//! store capacity, and has the agent delete it when it is freed; over the share it is pulled
//! here instead), so a task on another node pulls it straight from that node's agent, the
//! driver pulls a copy only to read it, and a node's death loses it (rebuilt from lineage).
//!
//! A node whose agent connection breaks, or that the head declares dead, is dropped: its
//! workers are handled as dead workers (tasks retried elsewhere, actors restarted elsewhere).

use super::state::{NodeState, LOCAL};
use super::workers::ReaderFlag;
use super::{Effect, Node};
use crate::codec::Payload;
use crate::error::{ErrorKind, TaskError};
use crate::head::client::HeadClient;
use crate::head::STATE_PREFIX;
use crate::ids::{NodeId, WorkerId};
use crate::protocol::{read_frame, write_frame, Conn, FromAgent, Hello, Receiver, Reply, Request, ToAgent, ToNode, ToWorker};
use crate::resources::{Allocation, ResourcePool, ResourceSet};
use std::collections::HashMap;
use std::io::Read;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// How often the driver reads the head's node table.
const NODE_POLL: Duration = Duration::from_secs(1);
/// The most recent tasks a driver publishes.
const STATE_TASKS: usize = 1000;
/// Bytes per frame of a shipped executable.
const EXE_CHUNK: usize = 8 << 20;

/// How long a grant that no work uses is kept for the next work of its shape.
const GRANT_LINGER: Duration = Duration::from_millis(500);

/// A node of the cluster as the driver's scheduler sees it. `pool` holds what this driver's
/// work takes there and, as `external`, what the other drivers hold (as its agent last said).
pub(crate) struct RemoteNode {
    pub link: Arc<AgentLink>,
    pub pool: ResourcePool,
    pub labels: Vec<(String, String)>,
    /// The agent's grants this driver holds on the node.
    pub grants: Vec<Grant>,
    /// The grant asked for and not answered yet (in a placement group's bundle, or the node).
    pub asking: Option<(u64, Allocation, Option<BundleRef>)>,
    /// What other drivers hold on the node, as its agent last said.
    pub others: Allocation,
    /// Bytes of this driver's objects that stay in the node's store.
    pub object_bytes: u64,
}

/// A bundle of a placement group, by the group's id here and the bundle's index.
pub(crate) type BundleRef = (crate::ids::PlacementGroupId, usize);

/// Part of a node that its agent granted this driver: work on that node runs under one.
pub(crate) struct Grant {
    pub id: u64,
    pub alloc: Allocation,
    /// Taken from a placement group's bundle on the node (`None`: from the node).
    pub bundle: Option<BundleRef>,
    /// Work runs under it now.
    pub busy: bool,
    /// Its CPUs were lent back once (the agent may not have them back): given back after its
    /// work, not reused.
    pub lent: bool,
    pub idle_since: Instant,
}

/// A worker started through an agent: its connection reader's progress and its log label.
type RemoteWorker = (Arc<ReaderFlag>, Arc<Mutex<String>>);

/// A driver's connection to one node agent.
pub(crate) struct AgentLink {
    pub node: NodeId,
    /// The node's name in the head's table.
    pub name: String,
    /// `host:port` of the agent (object pulls go there too).
    pub address: String,
    token: String,
    conn: Conn,
    stream: TcpStream,
    /// Workers started through it: their connection readers' progress and log labels.
    workers: Mutex<HashMap<WorkerId, RemoteWorker>>,
}

impl AgentLink {
    pub(crate) fn spawn(
        &self,
        wid: WorkerId,
        gpu_key: Vec<u32>,
        flag: Arc<ReaderFlag>,
        label: Arc<Mutex<String>>,
    ) -> std::io::Result<()> {
        self.workers.lock().unwrap_or_else(|p| p.into_inner()).insert(wid, (flag, label));
        self.conn.send(&ToAgent::Spawn { wid, gpu_key })
    }

    pub(crate) fn kill(&self, wid: WorkerId) {
        let _ = self.conn.send(&ToAgent::Kill { wid });
    }

    pub(crate) fn send(&self, msg: &ToAgent) {
        // A failed send means the agent is gone; its reader drops the node.
        let _ = self.conn.send(msg);
    }

    /// Closes the connection; the agent then stops every worker it runs for this driver.
    pub(crate) fn close(&self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// What a driver that joined a cluster keeps.
pub(crate) struct ClusterCtx {
    pub head: HeadClient,
    pub token: String,
    /// `host:port` where this driver's node accepts remote workers and pulls.
    pub worker_addr: String,
    /// The head's directory keys of the actor names this driver holds.
    pub claims: Mutex<std::collections::HashSet<String>>,
    /// Held while a placement group's entry is written to the head.
    pub publishing: Mutex<()>,
}

impl NodeState {
    pub(crate) fn pool_mut(&mut self, n: NodeId) -> Option<&mut ResourcePool> {
        if n == LOCAL {
            Some(&mut self.pool)
        } else {
            self.remote.get_mut(&n).map(|r| &mut r.pool)
        }
    }

    pub(crate) fn node_alive(&self, n: NodeId) -> bool {
        n == LOCAL || self.remote.contains_key(&n)
    }

    /// Every node, the driver's own first.
    pub(crate) fn node_views(&self) -> Vec<crate::scheduler::NodeView<'_>> {
        let mut v = vec![crate::scheduler::NodeView { id: LOCAL, pool: &self.pool }];
        v.extend(self.remote.iter().map(|(id, r)| crate::scheduler::NodeView { id: *id, pool: &r.pool }));
        v
    }

    /// The node an allocation was taken on.
    pub(crate) fn node_of(&self, from: super::state::AllocFrom) -> NodeId {
        match from {
            super::state::AllocFrom::Node(n) => n,
            super::state::AllocFrom::Bundle(pg, i) => match self.pgs.get(&pg).map(|p| &p.state) {
                Some(super::state::PgState::Created(b)) => b.get(i).map(|b| b.node).unwrap_or(LOCAL),
                _ => LOCAL,
            },
        }
    }

    /// Takes `req` from node `n`: from its view, and on another node under a grant of its agent
    /// ([`lease`](Self::lease)). `None`: not free, or the work waits for the agent's answer.
    pub(crate) fn take_on(&mut self, n: NodeId, req: &ResourceSet, fx: &mut Vec<Effect>) -> Option<Allocation> {
        let mut a = self.pool_mut(n)?.try_allocate(req)?;
        if self.lease(n, &mut a, None, fx) {
            return Some(a);
        }
        if let Some(p) = self.pool_mut(n) {
            p.release(&a);
        }
        None
    }

    /// The remote node whose agent serves at `address`.
    pub(crate) fn remote_at(&mut self, address: &str) -> Option<&mut RemoteNode> {
        self.remote.values_mut().find(|r| r.link.address == address)
    }

    /// Covers `alloc`, just taken from node `n`'s view (or from `bundle`'s on it), by a grant
    /// of its agent: an idle grant of the same shape if this driver holds one; else one is
    /// asked for (one question per node at a time) and the work waits for the answer. True
    /// when the work may use `alloc` now.
    pub(crate) fn lease(&mut self, n: NodeId, alloc: &mut Allocation, bundle: Option<BundleRef>, fx: &mut Vec<Effect>) -> bool {
        if n == LOCAL {
            return true;
        }
        let Some(r) = self.remote.get_mut(&n) else { return false };
        if let Some(g) = r.grants.iter_mut().find(|g| !g.busy && g.bundle == bundle && g.alloc.same_as(alloc)) {
            g.busy = true;
            alloc.lease = g.id;
            return true;
        }
        if r.asking.is_none() {
            self.next_lease += 1;
            let lease = self.next_lease;
            let mut want = alloc.clone();
            want.lease = lease;
            let key = bundle.and_then(|(pg, _)| self.pgs.get(&pg).map(|p| p.key.clone()));
            let msg = match (bundle, key) {
                (Some((_, i)), Some(pg)) => ToAgent::AcquireIn { lease, alloc: want.clone(), pg, index: i as u32 },
                (Some(_), None) => return false,
                (None, _) => ToAgent::Acquire { lease, alloc: want.clone() },
            };
            fx.push(Effect::Agent(r.link.clone(), msg));
            r.asking = Some((lease, want, bundle));
        }
        false
    }

    /// Bundle `index` of group `pg`, just reserved on node `n` under a grant, becomes a bundle
    /// in the node's ledger (where other drivers' work can take from it): the grant is no
    /// longer this driver's to reuse or give back.
    pub(crate) fn make_bundle(
        &mut self,
        pg: crate::ids::PlacementGroupId,
        index: usize,
        n: NodeId,
        alloc: &mut Allocation,
        fx: &mut Vec<Effect>,
    ) {
        let Some(entry) = self.pgs.get(&pg) else { return };
        let (key, detached) = (entry.key.clone(), entry.spec.detached);
        let Some(r) = self.remote.get_mut(&n) else { return };
        r.grants.retain(|g| g.id != alloc.lease);
        fx.push(Effect::Agent(
            r.link.clone(),
            ToAgent::MakeBundle { lease: alloc.lease, pg: key, index: index as u32, detached },
        ));
        alloc.lease = 0;
    }

    /// Gives back this driver's grants in group `pg`'s bundles (its work there ended, or was killed).
    pub(crate) fn release_bundle_grants(&mut self, pg: crate::ids::PlacementGroupId, fx: &mut Vec<Effect>) {
        for r in self.remote.values_mut() {
            let link = r.link.clone();
            r.grants.retain(|g| {
                let mine = g.bundle.is_some_and(|(p, _)| p == pg);
                if mine {
                    fx.push(Effect::Agent(link.clone(), ToAgent::Release { lease: g.id }));
                }
                !mine
            });
        }
    }

    /// The work under `alloc` on node `n` ended: its grant waits for the next work of its shape
    /// (or goes back at once if its CPUs were lent), and the view takes the others' use again.
    pub(crate) fn unlease(&mut self, n: NodeId, alloc: &Allocation, fx: &mut Vec<Effect>) {
        let Some(r) = self.remote.get_mut(&n) else { return };
        if let Some(i) = r.grants.iter().position(|g| g.id == alloc.lease && alloc.lease != 0) {
            if r.grants[i].lent {
                let g = r.grants.swap_remove(i);
                fx.push(Effect::Agent(r.link.clone(), ToAgent::Release { lease: g.id }));
            } else {
                r.grants[i].busy = false;
                r.grants[i].idle_since = Instant::now();
            }
        }
        // The others' share is taken again as far as it is free now (only when it fell short).
        r.pool.retake_external(&r.others);
    }

    /// The work under grant `lease` on node `n` blocks (`lend`) or runs again.
    pub(crate) fn lend_grant(&mut self, n: NodeId, lease: u64, lend: bool, fx: &mut Vec<Effect>) {
        let Some(r) = self.remote.get_mut(&n) else { return };
        let Some(g) = r.grants.iter_mut().find(|g| g.id == lease) else { return };
        g.lent = true;
        let msg = if lend { ToAgent::Lend { lease } } else { ToAgent::Reclaim { lease } };
        fx.push(Effect::Agent(r.link.clone(), msg));
    }

    /// Gives back grants no work used for a while.
    pub(crate) fn release_idle_grants(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        for r in self.remote.values_mut() {
            let link = r.link.clone();
            r.grants.retain(|g| {
                let keep = g.busy || now.duration_since(g.idle_since) < GRANT_LINGER;
                if !keep {
                    fx.push(Effect::Agent(link.clone(), ToAgent::Release { lease: g.id }));
                }
                keep
            });
        }
    }

    /// Node `n`'s agent answered the grant asked for (`Granted`: `others` is `None`).
    pub(crate) fn agent_answered(&mut self, n: NodeId, lease: u64, denied: Option<Allocation>, fx: &mut Vec<Effect>) {
        let Some(r) = self.remote.get_mut(&n) else { return };
        let (asked, bundle) = match r.asking.take() {
            Some((id, a, b)) if id == lease => (a, b),
            other => {
                // Not the question outstanding (cannot happen): a grant nobody waits for goes back.
                r.asking = other;
                if denied.is_none() {
                    fx.push(Effect::Agent(r.link.clone(), ToAgent::Release { lease }));
                }
                return;
            }
        };
        match (denied, bundle) {
            (None, _) => {
                r.grants.push(Grant { id: lease, alloc: asked, bundle, busy: false, lent: false, idle_since: Instant::now() })
            }
            (Some(others), None) => self.agent_usage(n, others),
            (Some(others), Some((pg, i))) => self.bundle_usage(pg, i, others),
        }
        self.dirty = true;
    }

    /// What other drivers' work holds of bundle `index` of group `pg` now.
    pub(crate) fn bundle_usage(&mut self, pg: crate::ids::PlacementGroupId, index: usize, others: Allocation) {
        if let Some(super::state::PgEntry { state: super::state::PgState::Created(b), .. }) = self.pgs.get_mut(&pg) {
            if let Some(b) = b.get_mut(index) {
                b.pool.set_external(&others);
                b.others = others;
            }
        }
        self.dirty = true;
    }

    /// Node `n`'s agent says what the other drivers hold there now.
    pub(crate) fn agent_usage(&mut self, n: NodeId, others: Allocation) {
        let Some(r) = self.remote.get_mut(&n) else { return };
        r.pool.set_external(&others);
        r.others = others;
        self.dirty = true;
    }

    /// A node is gone: its workers are dead workers (their tasks retry elsewhere, their actors
    /// restart elsewhere) and its resources leave the cluster.
    pub(crate) fn node_died(&mut self, n: NodeId, reason: &str, fx: &mut Vec<Effect>) {
        let Some(r) = self.remote.remove(&n) else { return };
        r.link.close();
        let why = format!("node {} ({}) died: {reason}", r.link.name, r.link.address);
        tracing::warn!(node = %r.link.name, "{why}");
        let on_it: Vec<WorkerId> = self.workers.iter().filter(|(_, w)| w.node == n).map(|(id, _)| *id).collect();
        for w in on_it {
            self.worker_died(w, &why, fx);
        }
        // Bundles of placement groups on it move to nodes that can hold them (their work
        // died with the node and is retried or restarted into the moved bundle).
        let lost: Vec<(crate::ids::PlacementGroupId, usize)> = self
            .pgs
            .iter()
            .filter_map(|(id, pg)| match &pg.state {
                super::state::PgState::Created(b) => Some((id, b)),
                _ => None,
            })
            .flat_map(|(id, b)| b.iter().enumerate().filter(|(_, b)| b.node == n).map(move |(i, _)| (*id, i)))
            .collect();
        self.lost_bundles.extend(lost);
        self.replace_lost_bundles(fx);
        self.dirty = true;
    }

    /// Places bundles whose node died again, where they fit now (STRICT_SPREAD: on a node no
    /// other bundle of the group uses); the rest wait for the next pass.
    pub(crate) fn replace_lost_bundles(&mut self, fx: &mut Vec<Effect>) {
        let lost = std::mem::take(&mut self.lost_bundles);
        for (pg, i) in lost {
            let Some(entry) = self.pgs.get(&pg) else { continue };
            let super::state::PgState::Created(b) = &entry.state else { continue };
            if b.get(i).is_none() {
                continue;
            }
            // Another driver's group: its creator places the bundle again (read from the head).
            if entry.foreign.is_some() {
                self.lost_bundles.push((pg, i));
                continue;
            }
            let strict = entry.spec.strategy == crate::scheduler::PlacementStrategy::StrictSpread;
            let taken: Vec<NodeId> = b.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, b)| b.node).collect();
            let req = entry.spec.bundles[i].clone();
            let target = self
                .node_views()
                .iter()
                .filter(|v| !(strict && taken.contains(&v.id)))
                .find(|v| v.pool.clone().try_allocate(&req).is_some())
                .map(|v| v.id);
            let Some(target) = target else {
                self.lost_bundles.push((pg, i));
                continue;
            };
            let Some(mut a) = self.take_on(target, &req, fx) else {
                self.lost_bundles.push((pg, i));
                continue;
            };
            self.make_bundle(pg, i, target, &mut a, fx);
            if let Some(super::state::PgEntry { state: super::state::PgState::Created(b), .. }) = self.pgs.get_mut(&pg) {
                b[i] = super::state::PgBundle::new(a, target);
                tracing::info!(pg = %pg, bundle = i, node = %target, "bundle moved off a dead node");
                fx.push(Effect::PublishPg(pg));
            }
        }
    }
}

fn resource_set(m: &serde_json::Map<String, serde_json::Value>) -> Result<ResourceSet, String> {
    let mut set = ResourceSet::new();
    for (k, v) in m {
        let x = v.as_f64().ok_or_else(|| format!("resource {k} is not a number"))?;
        set.set(k, x)?;
    }
    Ok(set)
}

impl Node {
    /// Joins the cluster whose head serves at `address` (`http://host:port`): listens for
    /// remote workers, connects to every live node agent, then follows the node table.
    pub(crate) fn join(self: &Arc<Self>, address: &str, token: String, node_ip: &str) -> Result<(), crate::Error> {
        let mut head = HeadClient::new(address, Some(token.clone())).map_err(crate::Error::Config)?;
        head.timeout = Duration::from_secs(10);
        let status = head
            .get("/api/cluster_status")
            .and_then(|r| match r.status {
                401 | 403 => Err(format!(
                    "the head at {address} refused this driver's token ({}); set FLARE_TOKEN to the cluster's (`flare token`)",
                    r.text().trim()
                )),
                _ => r.ok_json(),
            })
            .map_err(|e| crate::Error::Config(format!("joining the cluster at {address}: {e}")))?;
        let listener = TcpListener::bind((node_ip, 0))
            .map_err(|e| crate::Error::io(format!("listening on {node_ip} for remote workers"), e))?;
        let port = listener.local_addr().map_err(|e| crate::Error::io("reading the listener's address", e))?.port();
        // Objects stay on the nodes that make them; this driver pulls copies to read them.
        crate::transfer::set_store(self.session.shm_dir.clone(), token.clone());
        let ctx = ClusterCtx {
            head,
            token,
            worker_addr: format!("{node_ip}:{port}"),
            claims: Mutex::default(),
            publishing: Mutex::default(),
        };
        if self.cluster.set(ctx).is_err() {
            return Err(crate::Error::Config("this driver already joined a cluster".into()));
        }
        let weak = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("flare-cluster-listener".into())
            .spawn(move || accept_loop(weak, listener))
            .map_err(|e| crate::Error::io("starting the cluster listener", e))?;
        self.sync_nodes(&status);
        let weak = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("flare-cluster-watch".into())
            .spawn(move || loop {
                std::thread::sleep(NODE_POLL);
                let Some(node) = weak.upgrade() else { return };
                if node.lock().shutting_down {
                    return;
                }
                let Some(ctx) = node.cluster.get() else { return };
                match ctx.head.get("/api/cluster_status").and_then(|r| r.ok_json()) {
                    Ok(status) => node.sync_nodes(&status),
                    Err(e) => tracing::debug!("reading the head's node table: {e}"),
                }
                node.publish_state();
                node.refresh_foreign_pgs();
            })
            .map_err(|e| crate::Error::io("starting the cluster watcher", e))?;
        Ok(())
    }

    /// Writes this driver's actors, recent tasks and placement groups to the head's KV under
    /// `STATE_PREFIX`, where `flare list actors|tasks|placement-groups` reads every driver's.
    fn publish_state(&self) {
        let Some(ctx) = self.cluster.get() else { return };
        let names: HashMap<String, String> = {
            let st = self.lock();
            std::iter::once((LOCAL.0.to_string(), "local".to_string()))
                .chain(st.remote.iter().map(|(id, r)| (id.0.to_string(), r.link.name.clone())))
                .collect()
        };
        let actors = self.state(crate::runtime::StateQuery::Actors).actors;
        let mut tasks = self.state(crate::runtime::StateQuery::Tasks).tasks;
        if tasks.len() > STATE_TASKS {
            tasks.drain(..tasks.len() - STATE_TASKS);
        }
        // Another driver's groups that this one uses are listed by their creator.
        let mut pgs = self.state(crate::runtime::StateQuery::PlacementGroups).placement_groups;
        pgs.retain(|p| p.creator.is_none());
        let as_map = |r: &ResourceSet| -> serde_json::Map<String, serde_json::Value> {
            r.iter().map(|(k, _)| (k.to_string(), r.get(k).into())).collect()
        };
        // What this driver holds on each node, and the shapes of work it cannot place now.
        let (nodes, demands) = {
            let st = self.lock();
            let nodes: Vec<serde_json::Value> = st
                .remote
                .values()
                .map(|r| serde_json::json!({"name": r.link.name, "used": as_map(&r.pool.own_used())}))
                .collect();
            let mut demands: Vec<(ResourceSet, usize)> = Vec::new();
            let mut count = |req: &ResourceSet| match demands.iter_mut().find(|(r, _)| r == req) {
                Some((_, n)) => *n += 1,
                None => demands.push((req.clone(), 1)),
            };
            for ((req, _), q) in &st.ready {
                for _ in q {
                    count(req);
                }
            }
            for aid in &st.actor_queue {
                if let Some(a) = st.actors.get(aid) {
                    count(&a.spec.resources);
                }
            }
            let demands: Vec<serde_json::Value> =
                demands.iter().map(|(r, n)| serde_json::json!({"resources": as_map(r), "count": n})).collect();
            (nodes, demands)
        };
        let doc = serde_json::json!({
            "nodes": nodes,
            "demands": demands,
            "driver_pid": std::process::id(),
            "updated_ms": crate::util::now_ms(),
            "node_names": names,
            "actors": actors,
            "tasks": tasks,
            "placement_groups": pgs,
        });
        let key = format!("/api/kv/{STATE_PREFIX}driver-{}", std::process::id());
        if let Err(e) = ctx.head.request("PUT", &key, Some(("application/json", doc.to_string().as_bytes()))) {
            tracing::debug!("publishing this driver's state to the head: {e}");
        }
    }

    /// Removes this driver's published state (at shutdown).
    pub(crate) fn unpublish_state(&self) {
        if let Some(ctx) = self.cluster.get() {
            let _ = ctx.head.request("DELETE", &format!("/api/kv/{STATE_PREFIX}driver-{}", std::process::id()), None);
        }
    }

    /// Connects to live nodes not connected yet; drops the ones the head declared dead.
    fn sync_nodes(self: &Arc<Self>, status: &serde_json::Value) {
        let empty = Vec::new();
        let nodes = status["nodes"].as_array().unwrap_or(&empty);
        for n in nodes {
            let name = n["node_id"].as_str().unwrap_or_default().to_string();
            let address = n["address"].as_str().unwrap_or_default().to_string();
            let alive = n["alive"].as_bool().unwrap_or(false);
            let known = self.lock().remote.iter().find(|(_, r)| r.link.name == name).map(|(id, _)| *id);
            match (alive, known) {
                (true, None) if address.contains(':') => {
                    let empty = serde_json::Map::new();
                    let resources = n["resources_total"].as_object().unwrap_or(&empty);
                    let labels: Vec<(String, String)> = n["labels"]
                        .as_object()
                        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
                        .unwrap_or_default();
                    if let Err(e) = self.connect_agent(&name, &address, resources, labels) {
                        tracing::warn!(node = %name, "cannot use node {name} at {address}: {e}");
                    }
                }
                (false, Some(id)) => self.with_state(|st, fx| st.node_died(id, "the head declared it dead", fx)),
                _ => {}
            }
        }
    }

    fn connect_agent(
        self: &Arc<Self>,
        name: &str,
        address: &str,
        resources: &serde_json::Map<String, serde_json::Value>,
        labels: Vec<(String, String)>,
    ) -> Result<(), String> {
        let ctx = self.cluster.get().ok_or("not in a cluster")?;
        let total = resource_set(resources)?;
        let pool = ResourcePool::new(total)?;
        let (exe_hash, exe_size) = crate::transfer::exe_digest()?;
        let mut s = crate::transfer::connect(address).map_err(|e| format!("connecting: {e}"))?;
        // Shipping a large executable over a slow link takes a while; a silent agent does not.
        let _ = s.set_read_timeout(Some(Duration::from_secs(120)));
        let hello = Hello::Driver {
            token: ctx.token.clone(),
            exe_hash,
            exe_size,
            pid: std::process::id(),
            worker_addr: ctx.worker_addr.clone(),
        };
        write_frame(&mut s, &hello).map_err(|e| e.to_string())?;
        let need_exe = match read_frame::<FromAgent>(&mut s, 1 << 20).map_err(|e| format!("no welcome from the agent: {e}"))? {
            FromAgent::Welcome { need_exe, .. } => need_exe,
            FromAgent::Refused(why) => return Err(format!("the agent refused this driver: {why}")),
            other => return Err(format!("unexpected first message from the agent: {other:?}")),
        };
        if need_exe {
            let mut f = std::fs::File::open("/proc/self/exe").map_err(|e| format!("reading this executable: {e}"))?;
            let mut buf = vec![0u8; EXE_CHUNK];
            loop {
                let n = f.read(&mut buf).map_err(|e| format!("reading this executable: {e}"))?;
                if n == 0 {
                    break;
                }
                write_frame(&mut s, &ToAgent::ExeChunk(buf[..n].to_vec())).map_err(|e| format!("sending the executable: {e}"))?;
            }
            write_frame(&mut s, &ToAgent::ExeEnd).map_err(|e| e.to_string())?;
        }
        match read_frame::<FromAgent>(&mut s, 1 << 20).map_err(|e| format!("the agent did not get ready: {e}"))? {
            FromAgent::Ready => {}
            FromAgent::Refused(why) => return Err(why),
            other => return Err(format!("unexpected message from the agent: {other:?}")),
        }
        let _ = s.set_read_timeout(None);
        let writer = s.try_clone().map_err(|e| e.to_string())?;
        let reader = s.try_clone().map_err(|e| e.to_string())?;
        let id = {
            let mut st = self.lock();
            let id = NodeId(st.next_node);
            st.next_node += 1;
            id
        };
        let link = Arc::new(AgentLink {
            node: id,
            name: name.to_string(),
            address: address.to_string(),
            token: ctx.token.clone(),
            conn: Conn::new(writer),
            stream: s,
            workers: Mutex::new(HashMap::new()),
        });
        self.with_state(|st, _| {
            st.remote.insert(
                id,
                RemoteNode {
                    link: link.clone(),
                    pool,
                    labels,
                    grants: Vec::new(),
                    asking: None,
                    others: Allocation::default(),
                    object_bytes: 0,
                },
            );
            st.dirty = true;
        });
        tracing::info!(node = %name, %address, "using node {name} as {id}");
        let weak = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("flare-agent-link".into())
            .spawn(move || read_agent(weak, link, Receiver::new(reader)))
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// A large result a remote worker wrote on its node: it stays there (a
    /// [`remote_path`](crate::transfer::remote_path) that consumers pull from the node's agent)
    /// while this driver's objects on that node fit in its store's capacity; beyond that it is
    /// pulled into this node's store, where it can spill.
    fn fetch_result(&self, link: &AgentLink, p: Payload) -> Result<Payload, TaskError> {
        let Payload::File { id, path, size } = p else { return Ok(p) };
        let stays = {
            let st = self.lock();
            st.remote.get(&link.node).is_some_and(|r| r.object_bytes + size <= st.cfg.store_capacity)
        };
        if stays {
            return Ok(Payload::File { id, path: crate::transfer::remote_path(&link.address, &path), size });
        }
        let dest = crate::store::object_file(&self.session.shm_dir, id);
        crate::transfer::pull(&link.address, &link.token, &path, true, &dest)
            .map_err(|e| TaskError::new(ErrorKind::ObjectLost, format!("fetching object {id} from node {}: {e}", link.name)))?;
        Ok(Payload::File { id, path: dest.to_string_lossy().into_owned(), size })
    }
}

/// Reads an agent's messages until its connection ends, then drops its node.
fn read_agent(node: Weak<Node>, link: Arc<AgentLink>, mut rx: Receiver) {
    loop {
        let msg = match rx.recv::<FromAgent>() {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(node = %link.name, "bad frame from the agent: {e}");
                break;
            }
        };
        let Some(n) = node.upgrade() else { return };
        match msg {
            FromAgent::Exited { wid, reason } => {
                let entry = link.workers.lock().unwrap_or_else(|p| p.into_inner()).remove(&wid);
                // Handle the death only after every message the worker sent was processed.
                let weak = Arc::downgrade(&n);
                let reason = format!("{reason} on node {}", link.name);
                let _ = std::thread::Builder::new().name("flare-remote-reaper".into()).spawn(move || {
                    if let Some((flag, _)) = entry {
                        flag.wait_done(Duration::from_secs(2));
                    }
                    if let Some(n) = weak.upgrade() {
                        n.with_state(|st, fx| st.worker_died(wid, &reason, fx));
                    }
                });
            }
            FromAgent::Log { wid, line } => {
                if n.cfg.log_to_driver {
                    let label = link.workers.lock().unwrap_or_else(|p| p.into_inner()).get(&wid).map(|(_, l)| l.clone());
                    let label = label.map(|l| l.lock().unwrap_or_else(|p| p.into_inner()).clone()).unwrap_or_default();
                    eprintln!("({label} {wid}, node={}) {line}", link.name);
                }
            }
            FromAgent::Granted { lease, .. } => n.with_state(|st, fx| st.agent_answered(link.node, lease, None, fx)),
            FromAgent::Denied { lease, others, why } => {
                tracing::debug!(node = %link.name, "grant {lease} denied: {why}");
                n.with_state(|st, fx| st.agent_answered(link.node, lease, Some(others), fx));
            }
            FromAgent::Usage { others } => n.with_state(|st, _| st.agent_usage(link.node, others)),
            FromAgent::BundleUsage { pg, index, others } => n.with_state(|st, _| {
                if let Some(&id) = st.pg_keys.get(&pg) {
                    st.bundle_usage(id, index as usize, others);
                }
            }),
            FromAgent::BundleGone { pg, why } => n.with_state(|st, fx| {
                if let Some(&id) = st.pg_keys.get(&pg) {
                    tracing::info!(pg = %id, node = %link.name, "placement group gone: {why}");
                    st.drop_placement_group(id, &why, fx);
                }
            }),
            other => tracing::debug!(node = %link.name, "unexpected message from the agent: {other:?}"),
        }
    }
    if let Some(n) = node.upgrade() {
        n.with_state(|st, fx| st.node_died(link.node, "the connection to its agent closed", fx));
    }
}

/// Accepts remote workers and object pulls on the driver's cluster port.
fn accept_loop(node: Weak<Node>, listener: TcpListener) {
    for stream in listener.incoming() {
        let Some(n) = node.upgrade() else { return };
        let Ok(s) = stream else { continue };
        let _ = std::thread::Builder::new().name("flare-tcp-conn".into()).spawn(move || serve_tcp(n, s));
    }
}

fn serve_tcp(node: Arc<Node>, mut s: TcpStream) {
    let Some(ctx) = node.cluster.get() else { return };
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let Ok(hello) = read_frame::<Hello>(&mut s, 64 << 10) else { return };
    match hello {
        Hello::Worker { token, worker_id, pid } if crate::transfer::token_ok(&token, &ctx.token) => {
            let _ = s.set_read_timeout(None);
            let Some(link) = node.lock().workers.get(&worker_id).and_then(|w| w.link.clone()) else {
                tracing::warn!(worker = %worker_id, "a remote worker this driver did not start connected; dropped");
                return;
            };
            let (Ok(w), Ok(r)) = (s.try_clone(), s.try_clone()) else { return };
            super::workers::serve_connection(
                node.clone(),
                worker_id,
                pid,
                Arc::new(Conn::new(w)),
                Receiver::new(r),
                super::workers::Via::Agent(link),
            );
        }
        Hello::Pull { token, path, offset, len, .. } if crate::transfer::token_ok(&token, &ctx.token) => {
            // Objects this driver owns stay where they are (`consume` is for results moving here).
            let roots = [node.session.shm_dir.clone(), node.session.spill.clone()];
            if let Err(e) = crate::transfer::serve_pull(s, &path, offset, len, false, &roots) {
                tracing::debug!("serving a pull of {path}: {e}");
            }
        }
        Hello::ActorPeer { token, actor_id, pid, pull_addr } if crate::transfer::token_ok(&token, &ctx.token) => {
            tracing::info!(actor = %actor_id, driver = pid, "another driver calls a named actor");
            super::peers::serve_actor_peer(node.clone(), s, actor_id, pull_addr);
        }
        _ => tracing::warn!("a connection to the cluster port without this cluster's token was dropped"),
    }
}

/// For a remote worker's messages: large results come here first; recycled store files (of
/// this node) are not offered to it.
pub(crate) fn localize_message(node: &Node, link: &AgentLink, conn: &Conn, msg: ToNode) -> Option<ToNode> {
    match msg {
        ToNode::TaskDone { task_id, result: Ok((payload, refs)) } => {
            let result = node.fetch_result(link, payload).map(|p| (p, refs));
            Some(ToNode::TaskDone { task_id, result })
        }
        ToNode::Put { id, payload, contained } => {
            let payload = node.fetch_result(link, payload).unwrap_or_else(Payload::Error);
            Some(ToNode::Put { id, payload, contained })
        }
        ToNode::Request { req, body: Request::RecycledFile(_) } => {
            let _ = conn.send(&ToWorker::Reply { req, body: Reply::Path(None) });
            None
        }
        m => Some(m),
    }
}
