//! Placement groups across the drivers of a cluster (Ray's GCS placement-group table).
//!
//! A group's bundles on worker nodes live in those nodes' agents' ledgers (`MakeBundle`):
//! any driver that knows the group's cluster-wide key takes from them (`AcquireIn`), and no
//! driver's plain grants can. A named group is also published in the head's KV (persisted in
//! its database) under `(namespace, name)`: its key, its creator's cluster port, its bundles
//! and, once created, where each was placed. Another driver's
//! [`get_placement_group`](crate::get_placement_group) reads that entry and keeps a *foreign*
//! entry for the group: tasks and actors it places there take from the bundles through the
//! agents; it follows the entry (every second) for bundles its creator moved off a dead node;
//! removing the group from there removes it everywhere (as Ray lets any driver). A group
//! goes when its creator's session ends unless it is detached (`lifetime="detached"`), which
//! lasts until some driver removes it.

use super::state::{PgState, LOCAL};
use super::Node;
use crate::error::{ErrorKind, TaskError};
use crate::ids::PlacementGroupId;
use crate::resources::{Allocation, ResourceSet};
use crate::scheduler::PlacementStrategy;
use crate::spec::PlacementGroupSpec;
use serde::{Deserialize, Serialize};

use crate::head::PG_PREFIX;

/// Each bundle's allocation and node (by name; `None`: its creator's own node).
pub(crate) type Placed = Vec<(Allocation, Option<String>)>;

/// A named group's entry in the head's table.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct PgRecord {
    /// The group's key in the nodes' ledgers.
    key: String,
    #[serde(default)]
    name: String,
    driver_pid: u32,
    /// The creator's cluster port.
    address: String,
    strategy: PlacementStrategy,
    detached: bool,
    bundles: Vec<ResourceSet>,
    /// `PENDING`, `CREATED` or `INFEASIBLE`.
    state: String,
    /// Once created: each bundle's allocation and node (`None`: the creator's own node).
    #[serde(default)]
    placed: Placed,
    #[serde(default)]
    why: Option<String>,
}

impl PgRecord {
    /// This driver's entry for a group of its own, `state` with its `placed` bundles or `why`.
    fn mine(
        ctx: &super::cluster::ClusterCtx,
        spec: &PlacementGroupSpec,
        key: &str,
        name: &str,
        state: &str,
        placed: Placed,
        why: Option<String>,
    ) -> Self {
        PgRecord {
            key: key.to_string(),
            name: name.to_string(),
            driver_pid: std::process::id(),
            address: ctx.worker_addr.clone(),
            strategy: spec.strategy,
            detached: spec.detached,
            bundles: spec.bundles.clone(),
            state: state.into(),
            placed,
            why,
        }
    }
}

fn record_path(namespace: &str, name: &str) -> String {
    format!("/api/kv/{PG_PREFIX}{}/{}", super::peers::hex(namespace), super::peers::hex(name))
}

fn system(msg: String) -> TaskError {
    TaskError::new(ErrorKind::System, msg)
}

impl Node {
    /// The cluster-wide key of a group this driver makes.
    pub(crate) fn pg_key(&self, id: PlacementGroupId) -> String {
        match self.cluster.get() {
            Some(ctx) => format!("{}/{}", ctx.worker_addr, id.0),
            None => format!("local/{}", id.0),
        }
    }

    /// In a driver that joined a cluster, enters a named group in the head's table before it
    /// is created here. A name that another live driver's group (or a detached one) holds is
    /// refused.
    pub(crate) fn claim_pg_name(&self, spec: &PlacementGroupSpec, key: &str) -> Result<(), TaskError> {
        let (Some(ctx), Some(name)) = (self.cluster.get(), spec.name.as_deref()) else { return Ok(()) };
        let ns = crate::actor::DEFAULT_NAMESPACE;
        let record = PgRecord::mine(ctx, spec, key, name, "PENDING", Vec::new(), None);
        let body = serde_json::to_vec(&record).expect("a record encodes");
        super::peers::claim_in_head(ctx, &record_path(ns, name), &body, &format!("the placement group name `{name}`"), |held| {
            let holder: Option<PgRecord> = serde_json::from_slice(held).ok();
            // This driver's own entry is live while its group is (a group removed a moment ago
            // may not have had its entry deleted yet); another's while its driver is, or for
            // good if detached. The rest are free again.
            let live = holder.as_ref().is_none_or(|h| {
                if h.address == ctx.worker_addr {
                    let st = self.lock();
                    st.pg_keys.get(&h.key).and_then(|id| st.pgs.get(id)).is_some_and(|p| !matches!(p.state, PgState::Removed))
                } else {
                    h.detached || super::peers::driver_is_live(&h.address)
                }
            });
            let who = match &holder {
                Some(h) if h.detached => "a detached group; remove it first".to_string(),
                Some(h) => format!("it belongs to the driver with pid {}", h.driver_pid),
                None => "its entry cannot be read".to_string(),
            };
            live.then(|| TaskError::new(
                ErrorKind::Infeasible,
                format!("a placement group named `{name}` exists already in namespace `{ns}` ({who}); pick another name or look it up with flare::get_placement_group"),
            ))
        })
    }

    /// Writes a named group's entry in the head's table as it is now, from a thread of its own
    /// (entries are written one at a time, each with the state of when it is written).
    pub(crate) fn publish_pg(&self, id: PlacementGroupId) {
        let named = self.lock().pgs.get(&id).is_some_and(|p| p.spec.name.is_some() && p.foreign.is_none());
        if self.cluster.get().is_none() || !named {
            return;
        }
        let Some(me) = self.me.upgrade() else { return };
        let _ = std::thread::Builder::new().name("flare-publish-pg".into()).spawn(move || {
            let Some(ctx) = me.cluster.get() else { return };
            let _one_at_a_time = ctx.publishing.lock().unwrap_or_else(|p| p.into_inner());
            let record = {
                let st = me.lock();
                let Some(pg) = st.pgs.get(&id) else { return };
                let Some(name) = pg.spec.name.clone().filter(|_| pg.foreign.is_none()) else { return };
                let (state, placed, why) = match &pg.state {
                    PgState::Pending => ("PENDING", Vec::new(), None),
                    PgState::Created(b) => (
                        "CREATED",
                        b.iter()
                            .map(|b| {
                                let node = st.remote.get(&b.node).filter(|_| b.node != LOCAL).map(|r| r.link.name.clone());
                                (b.alloc.clone(), node)
                            })
                            .collect(),
                        None,
                    ),
                    PgState::Infeasible(why) => ("INFEASIBLE", Vec::new(), Some(why.clone())),
                    PgState::Removed => return,
                };
                let rec = PgRecord::mine(ctx, &pg.spec, &pg.key, &name, state, placed, why);
                (record_path(crate::actor::DEFAULT_NAMESPACE, &name), rec)
            };
            let (path, rec) = record;
            let body = serde_json::to_vec(&rec).expect("a record encodes");
            if let Err(e) = ctx.head.request("PUT", &path, Some(("application/json", &body))) {
                tracing::warn!(pg = %id, "publishing placement group at the head: {e}");
            }
        });
    }

    /// Deletes a removed named group's entry from the head's table (if it is still that
    /// group's: a new group may have taken the name since), from a thread of its own.
    pub(crate) fn unpublish_pg(&self, id: PlacementGroupId) {
        let Some(me) = self.me.upgrade() else { return };
        let (key, name) = {
            let st = self.lock();
            let Some(pg) = st.pgs.get(&id) else { return };
            let Some(name) = pg.spec.name.clone() else { return };
            (pg.key.clone(), name)
        };
        let _ = std::thread::Builder::new().name("flare-unpublish-pg".into()).spawn(move || {
            let Some(ctx) = me.cluster.get() else { return };
            let path = record_path(crate::actor::DEFAULT_NAMESPACE, &name);
            let Ok(r) = ctx.head.get(&path) else { return };
            let theirs: Option<PgRecord> = serde_json::from_slice(&r.body).ok();
            if r.status == 200 && theirs.is_some_and(|t| t.key == key) {
                let _ = ctx.head.request("DELETE", &path, None);
            }
        });
    }

    /// Deletes the entries of this driver's named groups that end with it (not detached), at
    /// shutdown; its agents' sessions end and give their bundles back.
    pub(crate) fn unpublish_own_pgs(&self) {
        let Some(ctx) = self.cluster.get() else { return };
        let names: Vec<String> = {
            let st = self.lock();
            st.pgs
                .values()
                .filter(|p| p.foreign.is_none() && !p.spec.detached && !matches!(p.state, PgState::Removed))
                .filter_map(|p| p.spec.name.clone())
                .collect()
        };
        for name in names {
            let _ = ctx.head.request("DELETE", &record_path(crate::actor::DEFAULT_NAMESPACE, &name), None);
        }
    }

    /// Reads a named group's entry from the head: `None` when there is none.
    fn read_pg_record(&self, name: &str) -> Result<Option<PgRecord>, TaskError> {
        let Some(ctx) = self.cluster.get() else { return Ok(None) };
        let r = ctx
            .head
            .get(&record_path(crate::actor::DEFAULT_NAMESPACE, name))
            .map_err(|e| system(format!("looking up placement group `{name}` at the head: {e}")))?;
        if r.status == 404 {
            return Ok(None);
        }
        if r.status != 200 {
            return Err(system(format!("the head answered {} for placement group `{name}`: {}", r.status, r.text().trim())));
        }
        serde_json::from_slice(&r.body)
            .map(Some)
            .map_err(|e| system(format!("the head's entry for placement group `{name}` is not one ({e})")))
    }

    /// A named group: this driver's, or another driver's found in the head's table (then kept
    /// here as a foreign entry). Returns its id here and its number of bundles.
    pub(crate) fn get_placement_group(&self, name: &str) -> Result<(PlacementGroupId, usize), TaskError> {
        let ns = crate::actor::DEFAULT_NAMESPACE;
        let not_found = |more: &str| {
            TaskError::new(ErrorKind::NotFound, format!("no placement group named `{name}` in namespace `{ns}`{more}"))
        };
        {
            let st = self.lock();
            if let Some(id) = st.pg_named(name) {
                return Ok((id, st.pgs[&id].spec.bundles.len()));
            }
        }
        let Some(rec) = self.read_pg_record(name)? else { return Err(not_found(" in the cluster")) };
        if rec.driver_pid == std::process::id() && self.cluster.get().is_some_and(|c| c.worker_addr == rec.address) {
            return Err(not_found(""));
        }
        if !rec.detached && !super::peers::driver_is_live(&rec.address) {
            return Err(not_found(&format!(
                ": the driver that made it (pid {}) is gone, and it was not detached",
                rec.driver_pid
            )));
        }
        let rt = crate::runtime::runtime().map_err(|e| system(e.to_string()))?;
        let id = PlacementGroupId(rt.ids.next_task().0);
        let n = rec.bundles.len();
        let spec = PlacementGroupSpec {
            id,
            bundles: rec.bundles.clone(),
            strategy: rec.strategy,
            name: Some(name.to_string()),
            detached: rec.detached,
        };
        let owner = format!("the driver with pid {} at {}", rec.driver_pid, rec.address);
        self.with_state(|st, fx| {
            // Looked up twice at once: one entry.
            if let Some(id) = st.pg_named(name) {
                return Ok((id, n));
            }
            st.add_foreign_pg(spec, rec.key.clone(), owner);
            if let Some(placed) = placed_of(&rec) {
                st.update_foreign_pg(id, placed, fx);
            }
            Ok((id, n))
        })
    }

    /// Follows the head's entries of the foreign groups this driver uses: created, moved off a
    /// dead node, or gone.
    pub(crate) fn refresh_foreign_pgs(&self) {
        let foreign: Vec<(PlacementGroupId, String, String)> = {
            let st = self.lock();
            st.pgs
                .iter()
                .filter(|(_, p)| p.foreign.is_some() && !matches!(p.state, PgState::Removed | PgState::Infeasible(_)))
                .filter_map(|(id, p)| p.spec.name.clone().map(|n| (*id, n, p.key.clone())))
                .collect()
        };
        for (id, name, key) in foreign {
            let rec = match self.read_pg_record(&name) {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!("{e}");
                    continue;
                }
            };
            match rec {
                Some(rec) if rec.key == key => {
                    if !rec.detached && !super::peers::driver_is_live(&rec.address) {
                        let why = format!("the driver that made it (pid {}) is gone", rec.driver_pid);
                        self.with_state(|st, fx| st.drop_placement_group(id, &why, fx));
                    } else if let Some(placed) = placed_of(&rec) {
                        self.with_state(|st, fx| st.update_foreign_pg(id, placed, fx));
                    }
                }
                _ => self.with_state(|st, fx| st.drop_placement_group(id, "another driver removed it", fx)),
            }
        }
    }
}

/// A record's placement: `None` while pending.
fn placed_of(rec: &PgRecord) -> Option<Result<Placed, String>> {
    match rec.state.as_str() {
        "CREATED" if rec.placed.len() == rec.bundles.len() => Some(Ok(rec.placed.clone())),
        "INFEASIBLE" => Some(Err(rec.why.clone().unwrap_or_else(|| "its creator could not place it".into()))),
        _ => None,
    }
}
