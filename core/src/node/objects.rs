//! The object table: readiness, reference counts, freeing, and spilling to disk.

use super::state::{Dependent, NodeState, ObjState, ObjectEntry};
use super::Effect;
use crate::codec::{Payload, RefKey};
use crate::error::{ErrorKind, TaskError};
use crate::ids::{ObjectId, WorkerId};
use crate::promise::Promise;
use crate::runtime::{ObjectResult, StoredData};

impl NodeState {
    /// A promise of the object's value (already complete when it is ready or failed).
    pub(crate) fn get(&mut self, id: ObjectId, fx: &mut Vec<Effect>) -> Promise<ObjectResult> {
        if self.is_lost(id) {
            self.reconstruct(id, fx);
        }
        match self.objects.get_mut(&id) {
            None => Promise::ready(Err(TaskError::new(
                ErrorKind::ObjectLost,
                format!("{id} does not exist: it was freed when its last reference was dropped, or never created"),
            ))),
            Some(o) => match &o.state {
                ObjState::Ready(d) => Promise::ready(Ok(d.clone())),
                ObjState::Failed(e) => Promise::ready(Err(e.clone())),
                ObjState::Pending => {
                    let p = Promise::new();
                    o.waiters.push(p.clone());
                    p
                }
            },
        }
    }

    /// Creates a pending object held by `caller` (a submission's return value).
    pub(crate) fn create_pending(&mut self, caller: WorkerId, id: ObjectId) {
        let mut e = ObjectEntry::pending();
        e.refs.holders.push(caller);
        self.objects.insert(id, e);
        self.note_held(caller, RefKey::Object(id));
    }

    pub(crate) fn put(&mut self, caller: WorkerId, id: ObjectId, payload: Payload, contained: Vec<RefKey>, fx: &mut Vec<Effect>) {
        self.create_pending(caller, id);
        match StoredData::from_payload(payload) {
            Ok(data) => self.set_ready(id, data, contained, fx),
            Err(e) => self.set_failed(id, e, fx),
        }
    }

    /// Stores a value. If nobody references the object any more, its bytes are dropped at once.
    pub(crate) fn set_ready(&mut self, id: ObjectId, data: StoredData, contained: Vec<RefKey>, fx: &mut Vec<Effect>) {
        for k in &contained {
            self.adjust_contained(*k, 1);
        }
        let Some(o) = self.objects.get_mut(&id) else {
            // Freed while pending: the value is not wanted.
            self.discard(&data, fx);
            for k in contained {
                self.release_contained(k, fx);
            }
            return;
        };
        if !matches!(o.state, ObjState::Pending) {
            // A duplicate completion (a retried task whose first run finished after all).
            if !matches!((&o.state, &data), (ObjState::Ready(StoredData::File { path: a, .. }), StoredData::File { path: b, .. }) if a == b)
            {
                self.discard(&data, fx);
            }
            for k in contained {
                self.release_contained(k, fx);
            }
            return;
        }
        o.contains = contained;
        if let StoredData::File { path, size, .. } = &data {
            if let Some((addr, _)) = crate::transfer::split_remote(path) {
                // It stays on the node that made it: that node's share, not this store's.
                if let Some(r) = self.remote_at(addr) {
                    r.object_bytes += size;
                }
            } else {
                self.seq += 1;
                o.resident_seq = Some(self.seq);
                self.resident.insert(self.seq, id);
                self.store_used += size;
            }
        }
        let Some(o) = self.objects.get_mut(&id) else { return };
        for w in o.waiters.drain(..) {
            fx.push(Effect::Complete(w, Ok(data.clone())));
        }
        o.state = ObjState::Ready(data);
        let deps = std::mem::take(&mut o.dependents);
        self.notify_dependents(deps, fx);
        self.ensure_capacity();
    }

    pub(crate) fn set_failed(&mut self, id: ObjectId, err: TaskError, fx: &mut Vec<Effect>) {
        let Some(o) = self.objects.get_mut(&id) else {
            return;
        };
        if !matches!(o.state, ObjState::Pending) {
            return;
        }
        for w in o.waiters.drain(..) {
            fx.push(Effect::Complete(w, Err(err.clone())));
        }
        o.state = ObjState::Failed(err);
        let deps = std::mem::take(&mut o.dependents);
        self.notify_dependents(deps, fx);
    }

    fn notify_dependents(&mut self, deps: Vec<Dependent>, fx: &mut Vec<Effect>) {
        for d in deps {
            match d {
                Dependent::Task(t) => self.dependency_ready(t),
                Dependent::ActorCreation(a) => self.actor_dependency_ready(a),
                Dependent::ActorCalls(a) => self.flush_actor(a, fx),
            }
        }
    }

    /// Whether the object is ready or failed (not pending, not missing).
    pub(crate) fn is_resolved(&self, id: ObjectId) -> bool {
        self.objects.get(&id).is_some_and(|o| !matches!(o.state, ObjState::Pending))
    }

    /// Registers `who` to hear when `id` resolves; false if it already has.
    pub(crate) fn wait_for(&mut self, id: ObjectId, who: Dependent) -> bool {
        match self.objects.get_mut(&id) {
            Some(o) if matches!(o.state, ObjState::Pending) => {
                o.dependents.push(who);
                true
            }
            _ => false,
        }
    }

    pub(crate) fn note_held(&mut self, caller: WorkerId, key: RefKey) {
        if caller != WorkerId::DRIVER {
            if let Some(w) = self.workers.get_mut(&caller) {
                w.held.insert(key);
            }
        }
    }

    pub(crate) fn add_ref(&mut self, caller: WorkerId, key: RefKey) {
        let refs = match key {
            RefKey::Object(id) => self.objects.get_mut(&id).map(|o| &mut o.refs),
            RefKey::Actor(id) => self.actors.get_mut(&id).map(|a| &mut a.refs),
        };
        if let Some(r) = refs {
            if !r.holders.contains(&caller) {
                r.holders.push(caller);
            }
            self.note_held(caller, key);
        }
    }

    pub(crate) fn remove_ref(&mut self, caller: WorkerId, key: RefKey, fx: &mut Vec<Effect>) {
        if let Some(w) = self.workers.get_mut(&caller) {
            w.held.remove(&key);
        }
        let refs = match key {
            RefKey::Object(id) => self.objects.get_mut(&id).map(|o| &mut o.refs),
            RefKey::Actor(id) => self.actors.get_mut(&id).map(|a| &mut a.refs),
        };
        if let Some(r) = refs {
            r.holders.retain(|h| *h != caller);
        }
        self.maybe_free(key, fx);
    }

    /// Counts a pending task's use of an argument object.
    pub(crate) fn adjust_task_ref(&mut self, id: ObjectId, delta: i32) {
        if let Some(o) = self.objects.get_mut(&id) {
            o.refs.task_refs = o.refs.task_refs.saturating_add_signed(delta);
        }
    }

    pub(crate) fn adjust_contained(&mut self, key: RefKey, delta: i32) {
        let refs = match key {
            RefKey::Object(id) => self.objects.get_mut(&id).map(|o| &mut o.refs),
            RefKey::Actor(id) => self.actors.get_mut(&id).map(|a| &mut a.refs),
        };
        if let Some(r) = refs {
            r.contained_in = r.contained_in.saturating_add_signed(delta);
        }
    }

    pub(crate) fn release_contained(&mut self, key: RefKey, fx: &mut Vec<Effect>) {
        self.adjust_contained(key, -1);
        self.maybe_free(key, fx);
    }

    pub(crate) fn release_task_ref(&mut self, id: ObjectId, fx: &mut Vec<Effect>) {
        self.adjust_task_ref(id, -1);
        self.maybe_free(RefKey::Object(id), fx);
    }

    /// Frees an object (or ends an actor) once nothing references it.
    pub(crate) fn maybe_free(&mut self, key: RefKey, fx: &mut Vec<Effect>) {
        match key {
            RefKey::Object(id) => {
                if !self.objects.get(&id).is_some_and(|o| o.refs.is_zero()) {
                    return;
                }
                let Some(o) = self.objects.remove(&id) else {
                    return;
                };
                if let Some(seq) = o.resident_seq {
                    self.resident.remove(&seq);
                    if let ObjState::Ready(d) = &o.state {
                        self.store_used = self.store_used.saturating_sub(d.size());
                    }
                }
                if let ObjState::Ready(d) = &o.state {
                    match d {
                        StoredData::File { path, size, .. } if o.resident_seq.is_some() => {
                            self.recycle(path, *size, id.task.issuer())
                        }
                        _ => self.discard(d, fx),
                    }
                }
                for k in o.contains {
                    self.release_contained(k, fx);
                }
                if let Some(spec) = o.lineage {
                    self.release_args(&spec.args, &spec.contained, fx);
                }
            }
            RefKey::Actor(id) => self.actor_handles_dropped(id, fx),
        }
    }

    /// Keeps a freed shared-memory file for the next large object, within a budget.
    fn recycle(&mut self, path: &str, size: u64, writer: WorkerId) {
        let budget = (self.cfg.store_capacity / 4).min(4 << 30);
        if size < crate::store::RECYCLE_MIN || self.recycled_bytes + size > budget || self.recycled.len() >= 32 {
            let _ = std::fs::remove_file(path);
            return;
        }
        self.seq += 1;
        let target = self.cfg.shm_dir.join(format!("recycled-{}", self.seq));
        if std::fs::rename(path, &target).is_ok() {
            self.recycled.push((target, size, writer));
            self.recycled_bytes += size;
        } else {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Hands out the recycled file that best fits `size`: one of exactly that size that `caller`
    /// wrote before (it may still have it mapped), else the smallest that holds it, else the largest.
    pub(crate) fn take_recycled(&mut self, size: u64, caller: WorkerId) -> Option<String> {
        let r = &self.recycled;
        let own = r.iter().position(|(_, s, w)| *s == size && *w == caller);
        let fits = || r.iter().enumerate().filter(|(_, (_, s, _))| *s >= size).min_by_key(|(_, (_, s, _))| *s).map(|(i, _)| i);
        let largest = || r.iter().enumerate().max_by_key(|(_, (_, s, _))| *s).map(|(i, _)| i);
        let i = own.or_else(fits).or_else(largest)?;
        let (path, s, _) = self.recycled.swap_remove(i);
        self.recycled_bytes -= s;
        Some(path.to_string_lossy().into_owned())
    }

    /// Spills the oldest shared-memory objects to disk until the store fits its capacity.
    pub(crate) fn ensure_capacity(&mut self) {
        while self.store_used > self.cfg.store_capacity {
            let Some((&seq, &id)) = self.resident.iter().next() else {
                break;
            };
            self.resident.remove(&seq);
            let Some(o) = self.objects.get_mut(&id) else {
                continue;
            };
            o.resident_seq = None;
            let ObjState::Ready(StoredData::File { path, size, .. }) = &o.state else {
                continue;
            };
            let size = *size;
            let file_name = std::path::Path::new(&**path).file_name().map(|n| n.to_os_string()).unwrap_or_default();
            let target = self.cfg.spill_dir.join(file_name);
            match std::fs::copy(&**path, &target) {
                Ok(_) => {
                    let _ = std::fs::remove_file(&**path);
                    o.state = ObjState::Ready(StoredData::File { id, path: target.to_string_lossy().into(), size });
                    self.store_used = self.store_used.saturating_sub(size);
                    self.spilled_total += size;
                    metrics::counter!("flare_object_store_spilled_bytes").increment(size);
                    tracing::debug!(%id, size, "spilled to disk");
                }
                Err(e) => {
                    // Leave it in memory: over capacity is better than lost data.
                    tracing::warn!(%id, error = %e, "could not spill object; keeping it in shared memory");
                    o.resident_seq = Some(seq);
                    self.resident.insert(seq, id);
                    break;
                }
            }
        }
    }
}

impl NodeState {
    /// Deletes a value's file: here, or through the agent of the node it is on.
    fn discard(&mut self, d: &StoredData, fx: &mut Vec<Effect>) {
        if let StoredData::File { path, size, .. } = d {
            if let Some((addr, there)) = crate::transfer::split_remote(path) {
                if let Some(r) = self.remote_at(addr) {
                    r.object_bytes = r.object_bytes.saturating_sub(*size);
                }
                fx.push(Effect::FreeRemote(addr.to_string(), there.to_string()));
                return;
            }
        }
        remove_file(d);
    }
}

fn remove_file(d: &StoredData) {
    if let StoredData::File { path, .. } = d {
        let _ = std::fs::remove_file(&**path);
    }
}
