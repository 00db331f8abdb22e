//! Actors on the node: creation, the ordered call queue, restarts after a process death,
//! kills, names, and ending an actor once its last handle is gone.

use super::state::{ActorEntry, Dependent, NodeState, Refs, Role, WorkerStatus};
use super::Effect;
use crate::actor::short_class;
use crate::codec::{Arg, Payload, RefKey};
use crate::error::{ErrorKind, TaskError};
use crate::ids::{ActorId, TaskId, WorkerId};
use crate::protocol::ToWorker;
use crate::runtime::StoredData;
use crate::spec::{ActorCallSpec, ActorSpec};
use crate::state::ActorState;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

impl NodeState {
    pub(crate) fn create_actor(&mut self, caller: WorkerId, spec: ActorSpec, _fx: &mut Vec<Effect>) -> Result<(), TaskError> {
        if self.shutting_down {
            return Err(super::shutting_down());
        }
        if crate::registry::actor_class(&spec.class).is_none() {
            return Err(TaskError::new(
                ErrorKind::NotRegistered,
                format!("no actor class `{}` is registered in this binary; is its impl marked #[flare::actor]?", spec.class),
            ));
        }
        if let Some(name) = &spec.name {
            let key = (spec.namespace.clone(), name.clone());
            if let Some(existing) = self.named.get(&key) {
                if self.actors.get(existing).is_some_and(|a| a.state != ActorState::Dead) {
                    return Err(TaskError::new(
                        ErrorKind::System,
                        format!(
                            "an actor named `{name}` already exists in namespace `{}`; pick another name or look it up with flare::get_actor",
                            spec.namespace
                        ),
                    ));
                }
            }
            self.named.insert(key, spec.actor_id);
        }
        let aid = spec.actor_id;
        let missing = self.hold_args(&spec.args, &spec.contained, Some(Dependent::ActorCreation(aid)));
        let mut refs = Refs::default();
        refs.holders.push(caller);
        self.actors.insert(
            aid,
            ActorEntry {
                spec: Arc::new(spec),
                state: if missing > 0 { ActorState::DependenciesUnready } else { ActorState::PendingCreation },
                missing,
                alloc: None,
                worker: None,
                pid: None,
                pending: VecDeque::new(),
                inflight: VecDeque::new(),
                restarts: 0,
                refs,
                death: None,
                infeasible_since: None,
                terminate_when_idle: false,
                owner: None,
            },
        );
        self.note_held(caller, RefKey::Actor(aid));
        if missing == 0 {
            self.actor_queue.push_back(aid);
            self.dirty = true;
        }
        Ok(())
    }

    pub(crate) fn actor_dependency_ready(&mut self, aid: ActorId) {
        let Some(a) = self.actors.get_mut(&aid) else {
            return;
        };
        a.missing = a.missing.saturating_sub(1);
        if a.missing == 0 && a.state == ActorState::DependenciesUnready {
            a.state = ActorState::PendingCreation;
            self.actor_queue.push_back(aid);
            self.dirty = true;
        }
    }

    pub(crate) fn schedule_actors(&mut self, fx: &mut Vec<Effect>) {
        let now = Instant::now();
        let grace = self.cfg.infeasible_grace;
        let mut still = VecDeque::new();
        while let Some(aid) = self.actor_queue.pop_front() {
            let Some(a) = self.actors.get(&aid) else {
                continue;
            };
            if a.state != ActorState::PendingCreation || a.alloc.is_some() {
                continue;
            }
            let (req, strategy) = (a.spec.resources.clone(), a.spec.strategy.clone());
            match self.decide(&req, &strategy, fx) {
                super::sched::Decision::Alloc(alloc, from) => {
                    let key = alloc.gpu_ids();
                    let node = self.node_of(from);
                    let a = self.actors.get_mut(&aid).expect("checked above");
                    a.alloc = Some((alloc, from));
                    let wid = match self.take_idle_worker(node, &key) {
                        Some(w) => {
                            let we = self.workers.get_mut(&w).expect("idle worker exists");
                            we.role = Role::Actor(aid);
                            we.status = WorkerStatus::Actor;
                            self.send_create_actor(aid, w, fx);
                            w
                        }
                        None => self.spawn_worker(node, key, Role::Actor(aid), fx),
                    };
                    if let Some(a) = self.actors.get_mut(&aid) {
                        a.worker = Some(wid);
                    }
                }
                super::sched::Decision::Wait => still.push_back(aid),
                super::sched::Decision::Infeasible(why, now_or_never) => {
                    let a = self.actors.get_mut(&aid).expect("checked above");
                    let since = *a.infeasible_since.get_or_insert(now);
                    if now_or_never || now.duration_since(since) >= grace {
                        let class = short_class(&a.spec.class).to_string();
                        let e = TaskError::new(ErrorKind::Infeasible, format!("actor {class} {why}"));
                        self.mark_actor_dead(aid, e, fx);
                    } else {
                        still.push_back(aid);
                    }
                }
            }
        }
        self.actor_queue = still;
    }

    /// Sends the constructor call to the actor's (new) worker.
    pub(crate) fn send_create_actor(&mut self, aid: ActorId, wid: WorkerId, fx: &mut Vec<Effect>) {
        let Some(a) = self.actors.get(&aid) else {
            return;
        };
        let spec = a.spec.clone();
        let gpu_ids = a.alloc.as_ref().map(|(al, _)| al.gpu_ids()).unwrap_or_default();
        let args = match self.resolve_args(&spec.args) {
            Ok(a) => a,
            Err(e) => {
                let e = TaskError::new(
                    ErrorKind::ActorDied,
                    format!("a constructor argument of {} failed: {e}", short_class(&spec.class)),
                );
                self.mark_actor_dead(aid, e, fx);
                return;
            }
        };
        let Some(w) = self.workers.get_mut(&wid) else {
            return;
        };
        *w.label.lock().unwrap_or_else(|p| p.into_inner()) = short_class(&spec.class).to_string();
        let pid = w.pid;
        let Some(conn) = w.conn.clone() else { return };
        if let Some(a) = self.actors.get_mut(&aid) {
            a.pid = pid;
        }
        fx.push(Effect::Send(
            conn,
            ToWorker::CreateActor {
                actor_id: aid,
                class: spec.class.clone(),
                args,
                gpu_ids,
                max_concurrency: spec.max_concurrency,
                is_async: spec.is_async,
            },
        ));
    }

    pub(crate) fn actor_ready(&mut self, aid: ActorId, result: Result<(), TaskError>, fx: &mut Vec<Effect>) {
        let Some(a) = self.actors.get_mut(&aid) else {
            return;
        };
        match result {
            Ok(()) => {
                if matches!(a.state, ActorState::PendingCreation | ActorState::Restarting) {
                    a.state = ActorState::Alive;
                    self.flush_actor(aid, fx);
                }
            }
            Err(e) => {
                let class = short_class(&a.spec.class).to_string();
                let err = TaskError {
                    kind: ErrorKind::ActorDied,
                    message: format!("the constructor of {class} failed: {}", e.message),
                    ..e
                };
                self.mark_actor_dead(aid, err, fx);
            }
        }
    }

    pub(crate) fn submit_actor_task(&mut self, caller: WorkerId, spec: ActorCallSpec, fx: &mut Vec<Effect>) {
        let ret = spec.return_id();
        self.create_pending(caller, ret);
        self.hold_args(&spec.args, &spec.contained, None);
        let aid = spec.actor_id;
        let Some(a) = self.actors.get_mut(&aid) else {
            let e = TaskError::new(ErrorKind::ActorDied, format!("{aid} does not exist on this node"));
            self.release_args(&spec.args, &spec.contained, fx);
            self.set_failed(ret, e, fx);
            return;
        };
        if a.state == ActorState::Dead {
            let e = a.death.clone().unwrap_or_else(|| TaskError::new(ErrorKind::ActorDied, "the actor is dead"));
            let name = format!("{}.{}", short_class(&a.spec.class), spec.method);
            self.release_args(&spec.args, &spec.contained, fx);
            self.set_failed(ret, e.with_task(&name), fx);
            return;
        }
        let retries = a.spec.max_task_retries;
        a.pending.push_back((Arc::new(spec), retries));
        self.actor_calls.insert(ret.task, aid);
        self.flush_actor(aid, fx);
    }

    /// Sends queued calls to a live actor, in order, stopping at the first whose arguments are
    /// not ready yet (so calls never overtake each other).
    pub(crate) fn flush_actor(&mut self, aid: ActorId, fx: &mut Vec<Effect>) {
        loop {
            let Some(a) = self.actors.get(&aid) else {
                return;
            };
            if a.state != ActorState::Alive {
                return;
            }
            let Some(conn) = a.worker.and_then(|w| self.workers.get(&w)).and_then(|w| w.conn.clone()) else {
                return;
            };
            let Some((call, retries)) = a.pending.front().cloned() else {
                return;
            };
            let blocking = call.args.iter().find_map(|arg| match arg {
                Arg::Ref(id) if self.objects.contains_key(id) && !self.is_resolved(*id) => Some(*id),
                _ => None,
            });
            if let Some(id) = blocking {
                self.wait_for(id, Dependent::ActorCalls(aid));
                return;
            }
            let resolved = self.resolve_args(&call.args);
            let a = self.actors.get_mut(&aid).expect("checked above");
            a.pending.pop_front();
            match resolved {
                Ok(args) => {
                    a.inflight.push_back((call.clone(), retries));
                    fx.push(Effect::Send(conn, ToWorker::CallActor { task_id: call.task_id, method: call.method.clone(), args }));
                }
                Err(e) => self.finish_call(aid, &call, Err(e), fx),
            }
        }
    }

    /// A call finished on the actor's worker.
    pub(crate) fn actor_call_done(
        &mut self,
        tid: TaskId,
        result: Result<(Payload, Vec<RefKey>), TaskError>,
        fx: &mut Vec<Effect>,
    ) {
        let Some(&aid) = self.actor_calls.get(&tid) else {
            return;
        };
        let Some(a) = self.actors.get_mut(&aid) else {
            return;
        };
        let Some(pos) = a.inflight.iter().position(|(c, _)| c.task_id == tid) else {
            return;
        };
        let (call, _) = a.inflight.remove(pos).expect("position is valid");
        self.finish_call(aid, &call, result, fx);
        self.maybe_terminate_idle(aid, fx);
    }

    fn finish_call(
        &mut self,
        aid: ActorId,
        call: &ActorCallSpec,
        result: Result<(Payload, Vec<RefKey>), TaskError>,
        fx: &mut Vec<Effect>,
    ) {
        self.actor_calls.remove(&call.task_id);
        let ret = call.return_id();
        let class = self.actors.get(&aid).map(|a| short_class(&a.spec.class).to_string()).unwrap_or_default();
        match result.and_then(|(p, c)| StoredData::from_payload(p).map(|d| (d, c))) {
            Ok((data, contained)) => self.set_ready(ret, data, contained, fx),
            Err(e) => self.set_failed(ret, e.with_task(&format!("{class}.{}", call.method)), fx),
        }
        self.release_args(&call.args, &call.contained, fx);
    }

    pub(crate) fn cancel_actor_call(&mut self, aid: ActorId, tid: TaskId, fx: &mut Vec<Effect>) -> Result<(), TaskError> {
        let Some(a) = self.actors.get_mut(&aid) else {
            return Ok(());
        };
        if let Some(pos) = a.pending.iter().position(|(c, _)| c.task_id == tid) {
            let (call, _) = a.pending.remove(pos).expect("position is valid");
            self.finish_call(
                aid,
                &call,
                Err(TaskError::new(ErrorKind::Cancelled, "the actor call was cancelled before it ran")),
                fx,
            );
            return Ok(());
        }
        Err(TaskError::new(
            ErrorKind::System,
            "this actor call is already running; a running actor call cannot be cancelled (kill the actor to stop it)",
        ))
    }

    /// The actor's process died: restart it (re-running the constructor) if it may, else it is dead.
    pub(crate) fn actor_worker_died(&mut self, aid: ActorId, reason: &str, fx: &mut Vec<Effect>) {
        let Some(a) = self.actors.get_mut(&aid) else {
            return;
        };
        a.worker = None;
        a.pid = None;
        if a.state == ActorState::Dead {
            return;
        }
        let max = a.spec.max_restarts;
        let class = short_class(&a.spec.class).to_string();
        let can_restart = !a.terminate_when_idle && !self.shutting_down && (max < 0 || (a.restarts as i32) < max);
        if !can_restart {
            let msg = format!("the process of actor {class} died ({reason}) and it has no restarts left (max_restarts={max})");
            self.mark_actor_dead(aid, TaskError::new(ErrorKind::ActorDied, msg), fx);
            return;
        }
        a.restarts += 1;
        a.state = ActorState::Restarting;
        let restarts = a.restarts;
        let inflight = std::mem::take(&mut a.inflight);
        let mut retry = Vec::new();
        let mut failed = Vec::new();
        for (call, left) in inflight {
            if left != 0 {
                retry.push((call, if left > 0 { left - 1 } else { left }));
            } else {
                failed.push(call);
            }
        }
        for item in retry.into_iter().rev() {
            a.pending.push_front(item);
        }
        let key = a.alloc.as_ref().map(|(al, _)| al.gpu_ids()).unwrap_or_default();
        let from = a.alloc.as_ref().map(|(_, f)| *f);
        tracing::warn!(actor = %aid, "actor {class} died ({reason}); restarting ({restarts} of {max})");
        for call in failed {
            let msg = format!(
                "actor {class} died while running this call ({reason}); it is restarting (restart {restarts}, max_restarts={max}) \
                 and the call was not retried (max_task_retries=0)"
            );
            self.finish_call(aid, &call, Err(TaskError::new(ErrorKind::ActorRestarting, msg)), fx);
        }
        let node = from.map(|f| self.node_of(f)).unwrap_or(super::state::LOCAL);
        if !self.node_alive(node) {
            // Its node is gone: schedule it again wherever it fits now.
            if let Some(a) = self.actors.get_mut(&aid) {
                if let Some((al, f)) = a.alloc.take() {
                    self.release_alloc(al, f, false, fx);
                }
            }
            if let Some(a) = self.actors.get_mut(&aid) {
                a.state = ActorState::PendingCreation;
            }
            self.actor_queue.push_back(aid);
            self.dirty = true;
            return;
        }
        let wid = self.spawn_worker(node, key, Role::Actor(aid), fx);
        if let Some(a) = self.actors.get_mut(&aid) {
            a.worker = Some(wid);
        }
    }

    /// Marks an actor dead for good: its calls fail, its resources, name and arguments are released.
    pub(crate) fn mark_actor_dead(&mut self, aid: ActorId, err: TaskError, fx: &mut Vec<Effect>) {
        let Some(a) = self.actors.get_mut(&aid) else {
            return;
        };
        if a.state == ActorState::Dead {
            return;
        }
        a.state = ActorState::Dead;
        a.death = Some(err.clone());
        let calls: Vec<_> = a.pending.drain(..).chain(a.inflight.drain(..)).map(|(c, _)| c).collect();
        let alloc = a.alloc.take();
        let spec = a.spec.clone();
        let worker = a.worker.take();
        for call in calls {
            self.finish_call(aid, &call, Err(err.clone()), fx);
        }
        if let Some((al, from)) = alloc {
            self.release_alloc(al, from, false, fx);
        }
        if let Some(name) = &spec.name {
            let key = (spec.namespace.clone(), name.clone());
            if self.named.get(&key) == Some(&aid) {
                self.named.remove(&key);
                fx.push(Effect::Unclaim(spec.namespace.clone(), name.clone()));
            }
        }
        self.release_args(&spec.args, &spec.contained, fx);
        if let Some(w) = worker.and_then(|w| self.workers.get(&w)) {
            if let Some(c) = &w.conn {
                fx.push(Effect::Send(c.clone(), ToWorker::Exit));
            }
            // Make sure it goes even if it is stuck in user code.
            fx.extend(w.kill_effect(worker.expect("a worker was found by it")));
        }
    }

    pub(crate) fn kill_actor(&mut self, aid: ActorId, no_restart: bool, fx: &mut Vec<Effect>) -> Result<(), TaskError> {
        let Some(a) = self.actors.get(&aid) else {
            return Err(TaskError::new(ErrorKind::NotFound, format!("{aid} does not exist")));
        };
        // Another driver's actor: its owner kills it (and restarts it unless `no_restart`).
        if a.owner.is_some() {
            let conn = a.worker.and_then(|w| self.workers.get(&w)).and_then(|w| w.conn.clone());
            let Some(conn) = conn.filter(|_| a.state != ActorState::Dead) else {
                return Err(TaskError::new(ErrorKind::ActorDied, format!("{aid} is dead already")));
            };
            fx.push(Effect::Send(conn, ToWorker::KillActor { no_restart }));
            if !no_restart {
                return Ok(());
            }
        }
        if no_restart {
            let class = short_class(&a.spec.class).to_string();
            self.mark_actor_dead(
                aid,
                TaskError::new(ErrorKind::ActorDied, format!("actor {class} was killed by flare::kill")),
                fx,
            );
        } else if let Some((wid, w)) = a.worker.and_then(|w| self.workers.get(&w).map(|e| (w, e))) {
            fx.extend(w.kill_effect(wid));
        }
        Ok(())
    }

    pub(crate) fn named_actor(&self, name: &str, namespace: &str) -> Result<(ActorId, String), TaskError> {
        self.named
            .get(&(namespace.to_string(), name.to_string()))
            .and_then(|id| self.actors.get(id).filter(|a| a.state != ActorState::Dead).map(|a| (*id, a.spec.class.clone())))
            .ok_or_else(|| {
                TaskError::new(ErrorKind::NotFound, format!("no live actor named `{name}` in namespace `{namespace}`"))
            })
    }

    /// The last handle of a non-detached, unnamed actor is gone: end it once its queue drains.
    pub(crate) fn actor_handles_dropped(&mut self, aid: ActorId, fx: &mut Vec<Effect>) {
        let Some(a) = self.actors.get_mut(&aid) else {
            return;
        };
        if !a.refs.is_zero() || a.spec.detached || a.spec.name.is_some() || a.state == ActorState::Dead {
            return;
        }
        a.terminate_when_idle = true;
        self.maybe_terminate_idle(aid, fx);
    }

    fn maybe_terminate_idle(&mut self, aid: ActorId, fx: &mut Vec<Effect>) {
        let Some(a) = self.actors.get(&aid) else {
            return;
        };
        if a.terminate_when_idle && a.pending.is_empty() && a.inflight.is_empty() {
            let class = short_class(&a.spec.class).to_string();
            let e = TaskError::new(ErrorKind::ActorDied, format!("actor {class} ended: all its handles were dropped"));
            self.mark_actor_dead(aid, e, fx);
            // Dead actors without handles need no entry.
            self.actors.remove(&aid);
        }
    }
}
