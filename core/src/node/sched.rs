//! Tasks and placement groups: dependencies, queues, the scheduling pass, dispatch, completion,
//! retries and cancellation.

use super::state::{AllocFrom, Dependent, NodeState, ObjState, PgEntry, PgState, Role, TaskEntry, WorkerStatus, LOCAL};
use super::Effect;
use crate::codec::{Arg, Payload, RefKey};
use crate::error::{ErrorKind, TaskError};
use crate::ids::{ObjectId, PlacementGroupId, TaskId, WorkerId};
use crate::promise::Promise;
use crate::protocol::ToWorker;
use crate::resources::{Allocation, ResourcePool, ResourceSet, CPU};
use crate::runtime::StoredData;
use crate::scheduler::{self, BundlePlacement, HybridPolicy, SchedulingPolicy, SchedulingResult, SchedulingStrategy};
use crate::spec::{PlacementGroupSpec, TaskSpec};
use crate::state::TaskState;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) enum Decision {
    Alloc(Allocation, AllocFrom),
    Wait,
    /// Cannot run; `true` fails it at once (a removed placement group), `false` after the grace period.
    Infeasible(String, bool),
}

/// Retry backoff: 50 ms doubling per attempt, at most 2 s.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((50u64 << attempt.saturating_sub(1).min(6)).min(2000))
}

impl NodeState {
    pub(crate) fn submit_task(&mut self, caller: WorkerId, spec: TaskSpec, fx: &mut Vec<Effect>) {
        let ret = spec.return_id();
        self.create_pending(caller, ret);
        if self.shutting_down {
            self.set_failed(ret, super::shutting_down(), fx);
            return;
        }
        if crate::registry::function(&spec.name).is_none() {
            let e = TaskError::new(
                ErrorKind::NotRegistered,
                format!("no remote function `{}` is registered in this binary; is it marked #[flare::remote]?", spec.name),
            );
            self.set_failed(ret, e, fx);
            return;
        }
        self.admit_task(Arc::new(spec), 0);
    }

    /// Takes a task in: counts its arguments, waits for the ones not ready, queues it when all are.
    fn admit_task(&mut self, spec: Arc<TaskSpec>, attempt: u32) {
        let id = spec.task_id;
        let missing = self.hold_args(&spec.args, &spec.contained, Some(Dependent::Task(id)));
        let entry = TaskEntry {
            retries_left: spec.max_retries,
            spec,
            state: TaskState::PendingArgs,
            missing,
            attempt,
            alloc: None,
            cpu_lent: false,
            worker: None,
            cancelled: false,
            submitted: Instant::now(),
            infeasible_since: None,
        };
        self.tasks.insert(id, entry);
        if missing == 0 {
            self.enqueue_task(id);
        }
    }

    pub(crate) fn dependency_ready(&mut self, id: TaskId) {
        let Some(t) = self.tasks.get_mut(&id) else {
            return;
        };
        t.missing = t.missing.saturating_sub(1);
        if t.missing == 0 && t.state == TaskState::PendingArgs {
            self.enqueue_task(id);
        }
    }

    pub(crate) fn enqueue_task(&mut self, id: TaskId) {
        let Some(t) = self.tasks.get_mut(&id) else {
            return;
        };
        t.state = TaskState::PendingScheduling;
        let key = (t.spec.resources.clone(), t.spec.strategy.clone());
        match self.ready.iter_mut().find(|(k, _)| *k == key) {
            Some((_, q)) => q.push_back(id),
            None => self.ready.push((key, VecDeque::from([id]))),
        }
        self.dirty = true;
    }

    /// Decides where a request runs now.
    pub(crate) fn decide(&mut self, req: &ResourceSet, strategy: &SchedulingStrategy, fx: &mut Vec<Effect>) -> Decision {
        if let SchedulingStrategy::PlacementGroup { pg, bundle_index } = strategy {
            return self.decide_bundle(req, *pg, *bundle_index, fx);
        }
        let view = self.node_views();
        let result = match strategy {
            SchedulingStrategy::Spread => self.spread.schedule(req, &view, LOCAL),
            SchedulingStrategy::NodeAffinity { node, soft } => {
                scheduler::node_affinity(req, &view, *node, *soft, &HybridPolicy::default(), LOCAL)
            }
            _ => HybridPolicy::default().schedule(req, &view, LOCAL),
        };
        match result {
            SchedulingResult::Scheduled(n) => match self.take_on(n, req, fx) {
                Some(a) => Decision::Alloc(a, AllocFrom::Node(n)),
                None => Decision::Wait,
            },
            SchedulingResult::Queued => Decision::Wait,
            SchedulingResult::Infeasible(why) => Decision::Infeasible(why, false),
        }
    }

    fn decide_bundle(&mut self, req: &ResourceSet, pg: PlacementGroupId, index: Option<usize>, fx: &mut Vec<Effect>) -> Decision {
        let Some(entry) = self.pgs.get_mut(&pg) else {
            return Decision::Infeasible(format!("placement group {pg} does not exist"), true);
        };
        let bundles = match &mut entry.state {
            PgState::Pending => return Decision::Wait,
            PgState::Infeasible(why) => return Decision::Infeasible(format!("placement group {pg} is infeasible: {why}"), true),
            PgState::Removed => return Decision::Infeasible(format!("placement group {pg} was removed"), true),
            PgState::Created(b) => b,
        };
        let n = bundles.len();
        let candidates: Vec<usize> = match index {
            Some(i) if i >= n => {
                return Decision::Infeasible(
                    format!("bundle index {i} is out of range: placement group {pg} has {n} bundle(s)"),
                    true,
                )
            }
            Some(i) => vec![i],
            None => (0..n).collect(),
        };
        if let Some(why) = &entry.foreign {
            let lost = &self.lost_bundles;
            if let Some(&i) = candidates.iter().find(|&&i| bundles[i].node == LOCAL && !lost.contains(&(pg, i))) {
                return Decision::Infeasible(
                    format!("bundle {i} of placement group {pg} is on the own node of {why}; only that driver places work in it"),
                    true,
                );
            }
        }
        if candidates.iter().all(|&i| bundles[i].pool.could_fit(req).is_err()) {
            let sizes: Vec<String> = candidates.iter().map(|&i| format!("{}", bundles[i].pool.total())).collect();
            return Decision::Infeasible(
                format!(
                    "needs {req} but the placement group's bundle(s) hold {}; ask for less or make bigger bundles",
                    sizes.join(", ")
                ),
                true,
            );
        }
        // A bundle whose node died waits until it is placed again (on a grant of another node).
        for i in candidates {
            if self.lost_bundles.contains(&(pg, i)) {
                continue;
            }
            let Some(PgEntry { state: PgState::Created(b), .. }) = self.pgs.get_mut(&pg) else { break };
            let node = b[i].node;
            let Some(mut a) = b[i].pool.try_allocate(req) else { continue };
            // On another node the bundle is in its agent's ledger, shared with other drivers.
            if self.lease(node, &mut a, Some((pg, i)), fx) {
                return Decision::Alloc(a, AllocFrom::Bundle(pg, i));
            }
            if let Some(PgEntry { state: PgState::Created(b), .. }) = self.pgs.get_mut(&pg) {
                b[i].pool.release(&a);
            }
        }
        Decision::Wait
    }

    pub(crate) fn release_alloc(&mut self, alloc: Allocation, from: AllocFrom, cpu_lent: bool, fx: &mut Vec<Effect>) {
        let mut alloc = alloc;
        if cpu_lent {
            alloc.resources.set_fixed(CPU, 0);
        }
        match from {
            AllocFrom::Node(n) => {
                // A node that died took its resources with it.
                if let Some(p) = self.pool_mut(n) {
                    p.release(&alloc);
                }
                // Then its grant, on another node (the grant is found by its id).
                self.unlease(n, &alloc, fx);
            }
            AllocFrom::Bundle(pg, i) => {
                let mut node = None;
                if let Some(PgEntry { state: PgState::Created(b), .. }) = self.pgs.get_mut(&pg) {
                    if let Some(b) = b.get_mut(i) {
                        b.pool.release(&alloc);
                        // The others' share is taken again as far as it is free now.
                        b.pool.retake_external(&b.others);
                        node = Some(b.node);
                    }
                }
                if let Some(n) = node {
                    self.unlease(n, &alloc, fx);
                }
            }
        }
        self.dirty = true;
    }

    fn pool_of(&mut self, from: AllocFrom) -> Option<&mut ResourcePool> {
        match from {
            AllocFrom::Node(n) => self.pool_mut(n),
            AllocFrom::Bundle(pg, i) => match self.pgs.get_mut(&pg) {
                Some(PgEntry { state: PgState::Created(b), .. }) => b.get_mut(i).map(|b| &mut b.pool),
                _ => None,
            },
        }
    }

    /// One scheduling pass: placement groups, then actors, then tasks by class.
    pub(crate) fn schedule(&mut self, fx: &mut Vec<Effect>) {
        if !self.dirty || self.shutting_down {
            return;
        }
        self.dirty = false;
        if !self.lost_bundles.is_empty() {
            self.replace_lost_bundles(fx);
        }
        self.schedule_placement_groups(fx);
        self.schedule_actors(fx);
        let now = Instant::now();
        let grace = self.cfg.infeasible_grace;
        let mut qi = 0;
        while qi < self.ready.len() {
            while let Some(&tid) = self.ready[qi].1.front() {
                let Some(t) = self.tasks.get(&tid) else {
                    self.ready[qi].1.pop_front();
                    continue;
                };
                if t.state != TaskState::PendingScheduling {
                    self.ready[qi].1.pop_front();
                    continue;
                }
                let (req, strategy) = self.ready[qi].0.clone();
                match self.decide(&req, &strategy, fx) {
                    Decision::Alloc(alloc, from) => {
                        self.ready[qi].1.pop_front();
                        self.start_task(tid, alloc, from, fx);
                    }
                    Decision::Wait => break,
                    Decision::Infeasible(why, now_or_never) => {
                        let t = self.tasks.get_mut(&tid).expect("checked above");
                        let since = *t.infeasible_since.get_or_insert(now);
                        if now_or_never || now.duration_since(since) >= grace {
                            self.ready[qi].1.pop_front();
                            let name = t.spec.name.clone();
                            let e = TaskError::new(ErrorKind::Infeasible, why).with_task(&name);
                            self.finish_task(tid, Err(e), fx);
                        } else {
                            break;
                        }
                    }
                }
            }
            if self.ready[qi].1.is_empty() {
                self.ready.swap_remove(qi);
            } else {
                qi += 1;
            }
        }
    }

    fn start_task(&mut self, tid: TaskId, alloc: Allocation, from: AllocFrom, fx: &mut Vec<Effect>) {
        let key = alloc.gpu_ids();
        let node = self.node_of(from);
        let t = self.tasks.get_mut(&tid).expect("queued task exists");
        metrics::histogram!("flare_scheduling_latency_seconds").record(t.submitted.elapsed().as_secs_f64());
        t.alloc = Some((alloc, from));
        match self.take_idle_worker(node, &key) {
            Some(w) => self.dispatch_task(tid, w, fx),
            None => {
                let w = self.spawn_worker(node, key, Role::Pool, fx);
                if let Some(we) = self.workers.get_mut(&w) {
                    we.assigned = Some(tid);
                }
                let t = self.tasks.get_mut(&tid).expect("queued task exists");
                t.state = TaskState::PendingWorker;
                t.worker = Some(w);
            }
        }
    }

    /// Argument payloads for dispatch; a failed argument fails the task with its error.
    pub(crate) fn resolve_args(&self, args: &[Arg]) -> Result<Vec<Payload>, TaskError> {
        args.iter()
            .map(|a| match a {
                Arg::Value(v) => Ok(Payload::Inline(v.clone())),
                Arg::Ref(id) => match self.objects.get(id).map(|o| &o.state) {
                    Some(ObjState::Ready(d)) => Ok(d.to_payload()),
                    Some(ObjState::Failed(e)) => Err(e.clone()),
                    Some(ObjState::Pending) => Err(TaskError::new(ErrorKind::System, format!("argument {id} is not ready"))),
                    None => Err(TaskError::new(ErrorKind::ObjectLost, format!("argument {id} was freed before the task ran"))),
                },
            })
            .collect()
    }

    pub(crate) fn dispatch_task(&mut self, tid: TaskId, wid: WorkerId, fx: &mut Vec<Effect>) {
        let _span = tracing::trace_span!("dispatch", task = %tid, worker = %wid).entered();
        let Some(t) = self.tasks.get(&tid) else {
            self.worker_idle(wid);
            return;
        };
        let spec = t.spec.clone();
        let gpu_ids = t.alloc.as_ref().map(|(a, _)| a.gpu_ids()).unwrap_or_default();
        let attempt = t.attempt;
        if t.cancelled {
            self.worker_idle(wid);
            self.finish_task(tid, Err(cancelled(&spec.name)), fx);
            return;
        }
        // An argument whose file vanished is rebuilt first; the task waits for it.
        let lost: Vec<ObjectId> = spec
            .args
            .iter()
            .filter_map(|a| if let Arg::Ref(id) = a { Some(*id) } else { None })
            .filter(|id| self.is_lost(*id))
            .collect();
        if !lost.is_empty() {
            let mut waiting = 0;
            for id in &lost {
                if self.reconstruct(*id, fx) && self.wait_for(*id, Dependent::Task(tid)) {
                    waiting += 1;
                }
            }
            if waiting > 0 {
                self.worker_idle(wid);
                let t = self.tasks.get_mut(&tid).expect("checked above");
                if let Some((a, from)) = t.alloc.take() {
                    let lent = std::mem::take(&mut t.cpu_lent);
                    self.release_alloc(a, from, lent, fx);
                }
                let t = self.tasks.get_mut(&tid).expect("checked above");
                t.state = TaskState::PendingArgs;
                t.missing = waiting;
                t.worker = None;
                return;
            }
        }
        let args = match self.resolve_args(&spec.args) {
            Ok(a) => a,
            Err(e) => {
                self.worker_idle(wid);
                self.finish_task(tid, Err(e), fx);
                return;
            }
        };
        let Some(w) = self.workers.get_mut(&wid) else {
            return;
        };
        let Some(conn) = w.conn.clone() else { return };
        w.status = WorkerStatus::Busy(tid);
        w.assigned = None;
        *w.label.lock().unwrap_or_else(|p| p.into_inner()) = short_name(&spec.name).to_string();
        let t = self.tasks.get_mut(&tid).expect("checked above");
        t.state = TaskState::Running;
        t.worker = Some(wid);
        fx.push(Effect::Send(conn, ToWorker::Execute { task_id: tid, name: spec.name.clone(), args, gpu_ids, attempt }));
    }

    /// Ends a task: its value (or error) is stored, its resources and arguments released.
    /// User errors are retried first when the task asked for it.
    pub(crate) fn finish_task(&mut self, tid: TaskId, result: Result<(Payload, Vec<RefKey>), TaskError>, fx: &mut Vec<Effect>) {
        let Some(t) = self.tasks.get_mut(&tid) else {
            return;
        };
        let result = if t.cancelled { Err(cancelled(&t.spec.name)) } else { result };
        if let Err(e) = &result {
            let user = matches!(e.kind, ErrorKind::UserError | ErrorKind::UserPanic);
            if user && t.spec.retry_exceptions && t.retries_left > 0 {
                t.retries_left -= 1;
                t.attempt += 1;
                t.worker = None;
                if let Some((a, from)) = t.alloc.take() {
                    let lent = std::mem::take(&mut t.cpu_lent);
                    self.release_alloc(a, from, lent, fx);
                }
                self.enqueue_task(tid);
                return;
            }
        }
        let t = self.tasks.remove(&tid).expect("checked above");
        if let Some((a, from)) = t.alloc.clone() {
            self.release_alloc(a, from, t.cpu_lent, fx);
        }
        let ret = t.spec.return_id();
        let mut info = self.task_info(tid, &t);
        match result {
            Ok((payload, contained)) => match StoredData::from_payload(payload) {
                Ok(data) => {
                    info.state = TaskState::Finished;
                    self.set_ready(ret, data, contained, fx);
                }
                Err(e) => {
                    info.state = TaskState::Failed;
                    self.set_failed(ret, e, fx)
                }
            },
            Err(e) => {
                info.state = if e.kind == ErrorKind::Cancelled { TaskState::Cancelled } else { TaskState::Failed };
                info.error = Some(e.to_string());
                self.set_failed(ret, e.with_task(&t.spec.name), fx);
            }
        }
        self.record_history(info);
        // A retriable task's output in a store file (inline ones cannot be lost) keeps its
        // lineage, and so its arguments, to be rebuilt if the file is lost (Ray's lineage pinning).
        let keep = info_finished(&self.history) && t.spec.max_retries > 0;
        match self.objects.get_mut(&ret) {
            Some(o) if keep && matches!(o.state, ObjState::Ready(StoredData::File { .. })) => o.lineage = Some(t.spec.clone()),
            _ => self.release_args(&t.spec.args, &t.spec.contained, fx),
        }
    }

    /// Rebuilds an object whose file vanished by re-running its task; false if it has no lineage
    /// (then it is marked lost).
    pub(crate) fn reconstruct(&mut self, id: ObjectId, fx: &mut Vec<Effect>) -> bool {
        let Some(o) = self.objects.get_mut(&id) else { return false };
        if let Some(seq) = o.resident_seq.take() {
            self.resident.remove(&seq);
            if let ObjState::Ready(d) = &o.state {
                self.store_used = self.store_used.saturating_sub(d.size());
            }
        }
        let Some(spec) = o.lineage.take() else {
            let e = TaskError::new(
                ErrorKind::ObjectLost,
                format!("{id}: its stored bytes are gone and it has no lineage to rebuild it from (a put, an actor result, or max_retries=0)"),
            );
            o.state = ObjState::Failed(e);
            return false;
        };
        o.state = ObjState::Pending;
        tracing::warn!(object = %id, "rebuilding a lost object by re-running `{}`", spec.name);
        let attempt = self.history.iter().rev().find(|h| h.task_id == spec.task_id).map(|h| h.attempt + 1).unwrap_or(1);
        // Count the new run's use of the arguments before dropping the lineage's pin on them.
        self.admit_task(spec.clone(), attempt);
        self.release_args(&spec.args, &spec.contained, fx);
        true
    }

    /// Whether a stored object's file is missing (deleted behind the store's back), or is on a
    /// node that is gone.
    pub(crate) fn is_lost(&self, id: ObjectId) -> bool {
        let Some(ObjState::Ready(StoredData::File { path, .. })) = self.objects.get(&id).map(|o| &o.state) else {
            return false;
        };
        match crate::transfer::split_remote(path) {
            Some((addr, _)) => !self.remote.values().any(|r| r.link.address == addr),
            None => !std::path::Path::new(&**path).exists(),
        }
    }

    /// Counts a submission's use of its argument objects and of the references inside its values;
    /// registers `waiter` on the arguments not ready yet and returns how many those are.
    pub(crate) fn hold_args(&mut self, args: &[Arg], contained: &[RefKey], waiter: Option<Dependent>) -> u32 {
        for k in contained {
            self.adjust_contained(*k, 1);
        }
        let mut missing = 0;
        for a in args {
            if let Arg::Ref(o) = a {
                self.adjust_task_ref(*o, 1);
                if waiter.is_some_and(|w| self.wait_for(*o, w)) {
                    missing += 1;
                }
            }
        }
        missing
    }

    /// Undoes [`hold_args`](Self::hold_args) once the submission is done with its arguments.
    pub(crate) fn release_args(&mut self, args: &[Arg], contained: &[RefKey], fx: &mut Vec<Effect>) {
        for a in args {
            if let Arg::Ref(id) = a {
                self.release_task_ref(*id, fx);
            }
        }
        for k in contained {
            self.release_contained(*k, fx);
        }
    }

    /// The worker running (or starting for) a task died: retry with backoff, or fail.
    pub(crate) fn task_worker_died(&mut self, tid: TaskId, reason: &str, fx: &mut Vec<Effect>) {
        let Some(t) = self.tasks.get_mut(&tid) else {
            return;
        };
        t.worker = None;
        if let Some((a, from)) = t.alloc.take() {
            let lent = std::mem::take(&mut t.cpu_lent);
            self.release_alloc(a, from, lent, fx);
        }
        let t = self.tasks.get_mut(&tid).expect("checked above");
        if t.cancelled {
            let name = t.spec.name.clone();
            self.finish_task(tid, Err(cancelled(&name)), fx);
        } else if t.retries_left > 0 {
            t.retries_left -= 1;
            t.attempt += 1;
            t.state = TaskState::PendingRetry;
            tracing::info!(task = %tid, attempt = t.attempt, "retrying `{}` after its worker died: {reason}", t.spec.name);
            let at = Instant::now() + backoff(t.attempt);
            self.delayed.push((at, tid));
        } else {
            let msg = format!(
                "the worker process running `{}` died ({reason}) and no retries are left (max_retries={})",
                t.spec.name, t.spec.max_retries
            );
            self.finish_task(tid, Err(TaskError::new(ErrorKind::WorkerDied, msg)), fx);
        }
    }

    /// A worker blocked in `get` gives its task's CPUs back until the get returns.
    pub(crate) fn lend_cpu(&mut self, wid: WorkerId, fx: &mut Vec<Effect>) {
        let Some(w) = self.workers.get_mut(&wid) else {
            return;
        };
        w.blocked_gets += 1;
        let WorkerStatus::Busy(tid) = w.status else {
            return;
        };
        let Some(t) = self.tasks.get_mut(&tid) else {
            return;
        };
        if t.cpu_lent {
            return;
        }
        let Some((a, from)) = t.alloc.clone() else {
            return;
        };
        let cpu = a.resources.get_fixed(CPU);
        if cpu == 0 {
            return;
        }
        t.cpu_lent = true;
        let mut part = Allocation::default();
        part.resources.set_fixed(CPU, cpu);
        if let Some(pool) = self.pool_of(from) {
            pool.release(&part);
        }
        let n = self.node_of(from);
        if n != LOCAL {
            self.lend_grant(n, a.lease, true, fx);
        }
        self.dirty = true;
    }

    /// Takes the CPUs back once the worker's last blocking `get` returned (if they are free;
    /// otherwise the task finishes without them, as Ray's borrowed CPUs do).
    pub(crate) fn reclaim_cpu(&mut self, wid: WorkerId, fx: &mut Vec<Effect>) {
        let Some(w) = self.workers.get_mut(&wid) else {
            return;
        };
        w.blocked_gets = w.blocked_gets.saturating_sub(1);
        if w.blocked_gets > 0 {
            return;
        }
        let WorkerStatus::Busy(tid) = w.status else {
            return;
        };
        let Some(t) = self.tasks.get(&tid) else {
            return;
        };
        if !t.cpu_lent {
            return;
        }
        let Some((a, from)) = t.alloc.clone() else {
            return;
        };
        let mut req = ResourceSet::new();
        req.set_fixed(CPU, a.resources.get_fixed(CPU));
        let took = self.pool_of(from).and_then(|p| p.try_allocate(&req)).is_some();
        if took {
            let n = self.node_of(from);
            if n != LOCAL {
                self.lend_grant(n, a.lease, false, fx);
            }
            if let Some(t) = self.tasks.get_mut(&tid) {
                t.cpu_lent = false;
            }
        }
    }

    pub(crate) fn cancel(&mut self, id: ObjectId, force: bool, fx: &mut Vec<Effect>) -> Result<(), TaskError> {
        let tid = id.task;
        if let Some(t) = self.tasks.get_mut(&tid) {
            t.cancelled = true;
            match t.state {
                TaskState::Running => {
                    let wid = t.worker;
                    let w = wid.and_then(|w| self.workers.get(&w));
                    match (force, w) {
                        (true, Some(w)) => fx.extend(w.kill_effect(wid.expect("a worker was found by it"))),
                        (false, Some(w)) => {
                            if let Some(c) = &w.conn {
                                fx.push(Effect::Send(c.clone(), ToWorker::Cancel { task_id: tid }));
                            }
                        }
                        _ => {}
                    }
                }
                TaskState::PendingWorker => {
                    if let Some(w) = t.worker.and_then(|w| self.workers.get_mut(&w)) {
                        w.assigned = None;
                    }
                    let name = t.spec.name.clone();
                    self.finish_task(tid, Err(cancelled(&name)), fx);
                }
                _ => {
                    self.delayed.retain(|(_, d)| *d != tid);
                    let name = t.spec.name.clone();
                    self.finish_task(tid, Err(cancelled(&name)), fx);
                }
            }
            return Ok(());
        }
        if let Some(&aid) = self.actor_calls.get(&tid) {
            return self.cancel_actor_call(aid, tid, fx);
        }
        // Already finished (or unknown): nothing to cancel, as in Ray.
        Ok(())
    }

    // ---- placement groups ----

    /// Takes a group in (`key`: its name in the nodes' ledgers; its bundles were checked with
    /// [`check_pg_spec`](Self::check_pg_spec)); it is placed in a scheduling pass.
    pub(crate) fn create_placement_group(&mut self, spec: PlacementGroupSpec, key: String) -> Result<(), TaskError> {
        if let Some(name) = &spec.name {
            if let Some(id) = self.pg_named(name) {
                return Err(TaskError::new(
                    ErrorKind::Infeasible,
                    format!("a placement group named `{name}` exists already ({id}); remove it first or pick another name"),
                ));
            }
        }
        let id = spec.id;
        self.pg_keys.insert(key.clone(), id);
        self.pgs.insert(id, PgEntry { spec, state: PgState::Pending, waiters: Vec::new(), key, foreign: None });
        self.pending_pgs.push_back(id);
        self.dirty = true;
        Ok(())
    }

    /// A group's bundles are valid requests.
    pub(crate) fn check_pg_spec(spec: &PlacementGroupSpec) -> Result<(), TaskError> {
        if spec.bundles.is_empty() {
            return Err(TaskError::new(ErrorKind::Infeasible, "a placement group needs at least one bundle"));
        }
        for (i, b) in spec.bundles.iter().enumerate() {
            if b.is_empty() {
                return Err(TaskError::new(
                    ErrorKind::Infeasible,
                    format!("bundle {i} is empty; every bundle must ask for something"),
                ));
            }
            ResourcePool::validate_request(b).map_err(|m| TaskError::new(ErrorKind::Infeasible, format!("bundle {i}: {m}")))?;
        }
        Ok(())
    }

    /// The group named `name` that is not removed (this driver's, or another's found before).
    pub(crate) fn pg_named(&self, name: &str) -> Option<PlacementGroupId> {
        self.pgs
            .iter()
            .find(|(_, p)| p.spec.name.as_deref() == Some(name) && !matches!(p.state, PgState::Removed))
            .map(|(id, _)| *id)
    }

    /// Another driver's group, found by name: its bundles are where its creator placed them
    /// (`placed`: each bundle's allocation and node, once created).
    pub(crate) fn add_foreign_pg(&mut self, spec: PlacementGroupSpec, key: String, owner: String) {
        let id = spec.id;
        self.pg_keys.insert(key.clone(), id);
        self.pgs.insert(id, PgEntry { spec, state: PgState::Pending, waiters: Vec::new(), key, foreign: Some(owner) });
    }

    /// What another driver's group looks like now, as its creator published it: created with
    /// each bundle's allocation on a node (by name; `None`, or a node this driver does not
    /// know: the bundle waits), or infeasible.
    pub(crate) fn update_foreign_pg(
        &mut self,
        id: PlacementGroupId,
        placed: Result<super::pgs::Placed, String>,
        fx: &mut Vec<Effect>,
    ) {
        let by_name: Vec<(String, crate::ids::NodeId)> = self.remote.iter().map(|(n, r)| (r.link.name.clone(), *n)).collect();
        let Some(pg) = self.pgs.get_mut(&id) else { return };
        if matches!(pg.state, PgState::Removed) {
            return;
        }
        let placed = match placed {
            Ok(p) => p,
            Err(why) => {
                let e = TaskError::new(ErrorKind::Infeasible, format!("placement group {id} cannot be created: {why}"));
                for w in pg.waiters.drain(..) {
                    fx.push(Effect::CompleteUnit(w, Err(e.clone())));
                }
                pg.state = PgState::Infeasible(why);
                self.dirty = true;
                return;
            }
        };
        let mut lost = Vec::new();
        let mut bundles: Vec<super::state::PgBundle> = match std::mem::replace(&mut pg.state, PgState::Pending) {
            PgState::Created(b) => b,
            _ => Vec::new(),
        };
        for (i, (alloc, node)) in placed.into_iter().enumerate() {
            // `None`: on its creator's own node (work from here cannot go there).
            let n = match node {
                None => Some(LOCAL),
                Some(name) => by_name.iter().find(|(m, _)| *m == name).map(|(_, n)| *n),
            };
            let Some(n) = n else {
                lost.push(i);
                if i >= bundles.len() {
                    bundles.push(super::state::PgBundle::new(alloc, LOCAL));
                }
                continue;
            };
            match bundles.get_mut(i) {
                Some(b) if b.node == n && b.alloc.same_as(&alloc) => {}
                Some(b) => *b = super::state::PgBundle::new(alloc, n),
                None => bundles.push(super::state::PgBundle::new(alloc, n)),
            }
        }
        pg.state = PgState::Created(bundles);
        for w in pg.waiters.drain(..) {
            fx.push(Effect::CompleteUnit(w, Ok(())));
        }
        self.lost_bundles.retain(|(p, _)| *p != id);
        self.lost_bundles.extend(lost.into_iter().map(|i| (id, i)));
        self.dirty = true;
    }

    fn schedule_placement_groups(&mut self, fx: &mut Vec<Effect>) {
        let mut still = VecDeque::new();
        while let Some(id) = self.pending_pgs.pop_front() {
            let Some(pg) = self.pgs.get(&id) else {
                continue;
            };
            if !matches!(pg.state, PgState::Pending) || pg.foreign.is_some() {
                continue;
            }
            let view = self.node_views();
            match scheduler::place_bundles(&pg.spec.bundles, pg.spec.strategy, &view) {
                BundlePlacement::Placed(nodes) => {
                    let bundles = pg.spec.bundles.clone();
                    let mut made = Vec::with_capacity(bundles.len());
                    for (b, n) in bundles.iter().zip(nodes) {
                        // None: not free, or its node's agent is asked for it (the group waits).
                        match self.take_on(n, b, fx) {
                            Some(a) => made.push((a, n)),
                            None => break,
                        }
                    }
                    if made.len() < bundles.len() {
                        // Undo and wait (for a grant; or, which cannot happen, the placement
                        // simulated allocations that did not take).
                        for (a, n) in made {
                            self.release_alloc(a, AllocFrom::Node(n), false, fx);
                        }
                        still.push_back(id);
                        continue;
                    }
                    // On other nodes the grants become bundles in the agents' ledgers.
                    let mut created = Vec::with_capacity(made.len());
                    for (i, (mut a, n)) in made.into_iter().enumerate() {
                        self.make_bundle(id, i, n, &mut a, fx);
                        created.push(super::state::PgBundle::new(a, n));
                    }
                    let pg = self.pgs.get_mut(&id).expect("checked above");
                    pg.state = PgState::Created(created);
                    for w in pg.waiters.drain(..) {
                        fx.push(Effect::CompleteUnit(w, Ok(())));
                    }
                    fx.push(Effect::PublishPg(id));
                    self.dirty = true;
                }
                BundlePlacement::Queued => still.push_back(id),
                BundlePlacement::Infeasible(why) => {
                    let pg = self.pgs.get_mut(&id).expect("checked above");
                    let e = TaskError::new(ErrorKind::Infeasible, format!("placement group {id} cannot be created: {why}"));
                    pg.state = PgState::Infeasible(why);
                    for w in pg.waiters.drain(..) {
                        fx.push(Effect::CompleteUnit(w, Err(e.clone())));
                    }
                    fx.push(Effect::PublishPg(id));
                    self.dirty = true;
                }
            }
        }
        self.pending_pgs = still;
    }

    pub(crate) fn placement_group_ready(&mut self, id: PlacementGroupId) -> Promise<Result<(), TaskError>> {
        let Some(pg) = self.pgs.get_mut(&id) else {
            return Promise::ready(Err(TaskError::new(ErrorKind::NotFound, format!("placement group {id} does not exist"))));
        };
        match &pg.state {
            PgState::Created(_) => Promise::ready(Ok(())),
            PgState::Infeasible(why) => Promise::ready(Err(TaskError::new(
                ErrorKind::Infeasible,
                format!("placement group {id} cannot be created: {why}"),
            ))),
            PgState::Removed => {
                Promise::ready(Err(TaskError::new(ErrorKind::NotFound, format!("placement group {id} was removed"))))
            }
            PgState::Pending => {
                let p = Promise::new();
                pg.waiters.push(p.clone());
                p
            }
        }
    }

    /// Removes a group (this driver's, or another's found by name, as Ray lets any driver):
    /// its bundles go back to their nodes; work placed in them is killed and fails.
    pub(crate) fn remove_placement_group(&mut self, id: PlacementGroupId, fx: &mut Vec<Effect>) -> Result<(), TaskError> {
        if !self.pgs.contains_key(&id) {
            return Err(TaskError::new(ErrorKind::NotFound, format!("placement group {id} does not exist")));
        }
        self.drop_placement_group(id, "it was removed", fx);
        Ok(())
    }

    /// The group is gone (`why`): removed here or by another driver, or its creator ended.
    pub(crate) fn drop_placement_group(&mut self, id: PlacementGroupId, why: &str, fx: &mut Vec<Effect>) {
        let Some(pg) = self.pgs.get_mut(&id) else { return };
        if matches!(pg.state, PgState::Removed) {
            return;
        }
        let old = std::mem::replace(&mut pg.state, PgState::Removed);
        let (key, foreign) = (pg.key.clone(), pg.foreign.is_some());
        let e = TaskError::new(ErrorKind::NotFound, format!("placement group {id} was removed: {why}"));
        for w in pg.waiters.drain(..) {
            fx.push(Effect::CompleteUnit(w, Err(e.clone())));
        }
        if pg.spec.name.is_some() {
            fx.push(Effect::UnpublishPg(id));
        }
        if let PgState::Created(bundles) = old {
            let mut nodes: Vec<crate::ids::NodeId> = Vec::new();
            for b in bundles {
                // The creator's view of each node gives the bundle back.
                if !foreign {
                    self.release_alloc(b.alloc, AllocFrom::Node(b.node), false, fx);
                }
                if b.node != LOCAL && !nodes.contains(&b.node) {
                    nodes.push(b.node);
                }
            }
            for n in nodes {
                if let Some(r) = self.remote.get(&n) {
                    fx.push(Effect::Agent(r.link.clone(), crate::protocol::ToAgent::RemoveBundles { pg: key.clone() }));
                }
            }
        }
        self.lost_bundles.retain(|(p, _)| *p != id);
        // Running tasks in the group: no retries, kill their workers; their grants go back.
        self.release_bundle_grants(id, fx);
        let in_group = |from: &AllocFrom| matches!(from, AllocFrom::Bundle(p, _) if *p == id);
        let mut kills = Vec::new();
        for t in self.tasks.values_mut() {
            if t.alloc.as_ref().is_some_and(|(_, f)| in_group(f)) {
                t.retries_left = 0;
                t.alloc = None;
                if let Some((wid, w)) = t.worker.and_then(|w| self.workers.get(&w).map(|e| (w, e))) {
                    kills.extend(w.kill_effect(wid));
                }
            }
        }
        fx.extend(kills);
        let actors: Vec<_> =
            self.actors.iter().filter(|(_, a)| a.alloc.as_ref().is_some_and(|(_, f)| in_group(f))).map(|(id, _)| *id).collect();
        for aid in actors {
            if let Some(a) = self.actors.get_mut(&aid) {
                a.alloc = None;
            }
            let err = TaskError::new(ErrorKind::ActorDied, format!("the actor's placement group {id} was removed: {why}"));
            self.mark_actor_dead(aid, err, fx);
        }
        self.dirty = true;
    }
}

pub(crate) fn cancelled(name: &str) -> TaskError {
    TaskError::new(ErrorKind::Cancelled, "the task was cancelled").with_task(name)
}

/// `crate::module::f` -> `f`, for log prefixes.
pub(crate) fn short_name(name: &str) -> &str {
    name.rsplit("::").next().unwrap_or(name)
}

/// Whether the task just recorded finished with a value.
fn info_finished(history: &std::collections::VecDeque<crate::state::TaskInfo>) -> bool {
    history.back().is_some_and(|h| h.state == TaskState::Finished)
}
