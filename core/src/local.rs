//! Local mode (`Config::local_mode`): every task and actor call runs in the driver process,
//! synchronously, at submission, so a debugger and `println!` see everything (Ray's
//! `local_mode=True`). No worker processes, no scheduling: resources are not checked.

use crate::actor::{ActorInstance, MethodCall};
use crate::codec::{Arg, ObjectData, Payload, RefKey, ReturnValue};
use crate::error::{ErrorKind, TaskError};
use crate::ids::{ActorId, ObjectId, PlacementGroupId};
use crate::promise::Promise;
use crate::runtime::{runtime, Core, ObjectResult, StateQuery, StoredData};
use crate::spec::{ActorCallSpec, ActorSpec, PlacementGroupSpec, TaskSpec};
use crate::state::{ActorInfo, ActorState, ObjectInfo, ObjectLocation, StateSnapshot};
use crate::store::{encode_object, materialize};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

struct LocalActor {
    spec: Arc<ActorSpec>,
    instance: Option<Arc<dyn ActorInstance>>,
    death: Option<TaskError>,
}

#[derive(Default)]
struct LocalState {
    objects: HashMap<ObjectId, (ObjectResult, u32)>,
    actors: HashMap<ActorId, LocalActor>,
    named: HashMap<(String, String), ActorId>,
}

/// The core of a local-mode driver.
pub(crate) struct LocalCore {
    st: Mutex<LocalState>,
    pub(crate) dir: PathBuf,
}

impl LocalCore {
    pub(crate) fn new(dir: PathBuf) -> Self {
        LocalCore { st: Mutex::new(LocalState::default()), dir }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LocalState> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn args(&self, args: &[Arg]) -> Result<Vec<ObjectData>, TaskError> {
        args.iter()
            .map(|a| match a {
                Arg::Value(v) => Ok(ObjectData::Inline(Arc::new(v.clone()))),
                Arg::Ref(id) => {
                    let stored = self.lock().objects.get(id).map(|(r, _)| r.clone()).unwrap_or_else(|| Err(lost(*id)))?;
                    materialize(&stored).map_err(|e| TaskError::new(ErrorKind::ObjectLost, format!("reading {id}: {e}")))
                }
            })
            .collect()
    }

    fn store(&self, id: ObjectId, value: Result<Box<dyn ReturnValue>, TaskError>, name: &str) {
        let result = value.and_then(|v| {
            let rt = runtime()?;
            let (payload, _contained) = encode_object(&rt, id, &*v)?;
            StoredData::from_payload(payload)
        });
        let result = result.map_err(|e| e.with_task(name));
        self.lock().objects.entry(id).or_insert((Err(lost(id)), 1)).0 = result;
    }
}

fn lost(id: ObjectId) -> TaskError {
    TaskError::new(ErrorKind::ObjectLost, format!("{id} does not exist (freed, or never created)"))
}

fn catch<T>(f: impl FnOnce() -> Result<T, TaskError>) -> Result<T, TaskError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let msg = crate::util::panic_message(&*p);
        Err(TaskError::new(ErrorKind::UserPanic, if msg.is_empty() { "panicked".into() } else { msg }))
    })
}

fn run_call(call: MethodCall) -> Result<Box<dyn ReturnValue>, TaskError> {
    match call {
        MethodCall::Ready(v) => v,
        MethodCall::Future(f) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| TaskError::new(ErrorKind::System, format!("cannot start an async executor: {e}")))?
            .block_on(f),
    }
}

impl Core for LocalCore {
    fn submit_task(&self, spec: TaskSpec) {
        let id = spec.return_id();
        self.lock().objects.insert(id, (Err(lost(id)), 1));
        let value = match crate::registry::function(&spec.name) {
            None => Err(TaskError::new(ErrorKind::NotRegistered, format!("no remote function `{}` is registered", spec.name))),
            Some(f) => self.args(&spec.args).and_then(|args| catch(|| (f.invoke)(args))),
        };
        self.store(id, value, &spec.name);
    }

    fn create_actor(&self, spec: ActorSpec) -> Result<(), TaskError> {
        let Some(class) = crate::registry::actor_class(&spec.class) else {
            return Err(TaskError::new(ErrorKind::NotRegistered, format!("no actor class `{}` is registered", spec.class)));
        };
        if let Some(name) = &spec.name {
            let key = (spec.namespace.clone(), name.clone());
            if self.lock().named.contains_key(&key) {
                return Err(TaskError::new(
                    ErrorKind::System,
                    format!("an actor named `{name}` already exists in namespace `{}`", key.0),
                ));
            }
            self.lock().named.insert(key, spec.actor_id);
        }
        let built = self.args(&spec.args).and_then(|a| catch(|| (class.construct)(a)));
        let (instance, death) = match built {
            Ok(i) => (Some(Arc::from(i)), None),
            Err(e) => (None, Some(TaskError::new(ErrorKind::ActorDied, format!("the constructor failed: {}", e.message)))),
        };
        self.lock().actors.insert(spec.actor_id, LocalActor { spec: Arc::new(spec), instance, death });
        Ok(())
    }

    fn submit_actor_task(&self, spec: ActorCallSpec) {
        let id = spec.return_id();
        self.lock().objects.insert(id, (Err(lost(id)), 1));
        let actor = self.lock().actors.get(&spec.actor_id).map(|a| (a.instance.clone(), a.death.clone(), a.spec.class.clone()));
        let name = format!(
            "{}.{}",
            actor.as_ref().map(|a| crate::actor::short_class(&a.2).to_string()).unwrap_or_default(),
            spec.method
        );
        let value = match actor {
            None => Err(TaskError::new(ErrorKind::ActorDied, format!("{} does not exist", spec.actor_id))),
            Some((None, death, _)) => Err(death.unwrap_or_else(|| TaskError::new(ErrorKind::ActorDied, "the actor is dead"))),
            Some((Some(inst), _, _)) => self.args(&spec.args).and_then(|args| catch(|| run_call(inst.call(&spec.method, args)))),
        };
        self.store(id, value, &name);
    }

    fn get(&self, id: ObjectId) -> Promise<ObjectResult> {
        Promise::ready(self.lock().objects.get(&id).map(|(r, _)| r.clone()).unwrap_or_else(|| Err(lost(id))))
    }

    fn put(&self, id: ObjectId, payload: Payload, _contained: Vec<RefKey>) {
        self.lock().objects.insert(id, (StoredData::from_payload(payload), 1));
    }

    fn add_ref(&self, key: RefKey) {
        if let RefKey::Object(id) = key {
            if let Some(e) = self.lock().objects.get_mut(&id) {
                e.1 += 1;
            }
        }
    }

    fn remove_ref(&self, key: RefKey) {
        let RefKey::Object(id) = key else { return };
        let mut st = self.lock();
        let gone = st.objects.get_mut(&id).map(|e| {
            e.1 = e.1.saturating_sub(1);
            e.1 == 0
        });
        if gone == Some(true) {
            if let Some((Ok(StoredData::File { path, .. }), _)) = st.objects.remove(&id) {
                let _ = std::fs::remove_file(&*path);
            }
        }
    }

    fn cancel(&self, _id: ObjectId, _force: bool) -> Result<(), TaskError> {
        // Everything already ran at submission.
        Ok(())
    }

    fn kill_actor(&self, id: ActorId, _no_restart: bool) -> Result<(), TaskError> {
        let mut st = self.lock();
        let a = st.actors.get_mut(&id).ok_or_else(|| TaskError::new(ErrorKind::NotFound, format!("{id} does not exist")))?;
        a.instance = None;
        a.death = Some(TaskError::new(ErrorKind::ActorDied, "the actor was killed by flare::kill"));
        if let Some(name) = a.spec.name.clone() {
            let ns = a.spec.namespace.clone();
            st.named.remove(&(ns, name));
        }
        Ok(())
    }

    fn get_named_actor(&self, name: &str, namespace: &str) -> Result<(ActorId, String), TaskError> {
        let st = self.lock();
        st.named
            .get(&(namespace.to_string(), name.to_string()))
            .and_then(|id| st.actors.get(id).map(|a| (*id, a.spec.class.clone())))
            .ok_or_else(|| {
                TaskError::new(ErrorKind::NotFound, format!("no live actor named `{name}` in namespace `{namespace}`"))
            })
    }

    fn create_placement_group(&self, _spec: PlacementGroupSpec) -> Result<(), TaskError> {
        Ok(())
    }

    fn remove_placement_group(&self, _id: PlacementGroupId) -> Result<(), TaskError> {
        Ok(())
    }

    fn placement_group_ready(&self, _id: PlacementGroupId) -> Promise<Result<(), TaskError>> {
        Promise::ready(Ok(()))
    }

    fn get_placement_group(&self, name: &str) -> Result<(PlacementGroupId, usize), TaskError> {
        Err(TaskError::new(
            ErrorKind::NotFound,
            format!("no placement group named `{name}`: local mode does not keep placement groups"),
        ))
    }

    fn state(&self, query: StateQuery) -> Result<StateSnapshot, TaskError> {
        let st = self.lock();
        let mut s = StateSnapshot::default();
        match query {
            StateQuery::Objects => {
                s.objects = st
                    .objects
                    .iter()
                    .map(|(id, (r, n))| ObjectInfo {
                        object_id: *id,
                        size: r.as_ref().map(|d| d.size()).unwrap_or(0),
                        location: if r.is_ok() { ObjectLocation::Inline } else { ObjectLocation::Error },
                        holders: *n,
                        task_refs: 0,
                        contained_in: 0,
                    })
                    .collect()
            }
            StateQuery::Actors => {
                s.actors = st
                    .actors
                    .iter()
                    .map(|(id, a)| ActorInfo {
                        actor_id: *id,
                        class: a.spec.class.clone(),
                        state: if a.instance.is_some() { ActorState::Alive } else { ActorState::Dead },
                        name: a.spec.name.clone(),
                        namespace: a.spec.namespace.clone(),
                        pid: Some(std::process::id()),
                        restarts: 0,
                        death_cause: a.death.as_ref().map(|e| e.message.clone()),
                        node: Some(crate::ids::NodeId(0)),
                    })
                    .collect()
            }
            _ => {}
        }
        Ok(s)
    }

    fn shutdown(&self) {
        *self.lock() = LocalState::default();
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    fn recycled_file(&self, _size: u64) -> Option<String> {
        None
    }
}
