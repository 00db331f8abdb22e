//! Actors: stateful workers. `#[flare::actor]` on an `impl` block implements [`Actor`] and
//! generates a client type, so `handle.method(args)` returns an `ObjectRef` to the result.

use crate::codec::{ObjectData, RefKey, ReturnValue};
use crate::error::{Error, ErrorKind, Result, TaskError};
use crate::ids::{ActorId, ObjectId};
use crate::object_ref::{build_args, failed_ref, unregistered, ArgSlot, ObjectRef};
use crate::runtime::{runtime, try_runtime};
use crate::scheduler::SchedulingStrategy;
use crate::spec::{resource_request, ActorCallSpec, ActorOptions, ActorSpec};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::future::Future;
use std::marker::PhantomData;
use std::ops::Deref;
use std::pin::Pin;

/// The namespace of actor names when none is given.
pub const DEFAULT_NAMESPACE: &str = "default";

/// An actor class. Implemented by `#[flare::actor]`; not by hand.
pub trait Actor: Sized + Send + Sync + 'static {
    /// The registered class name (module path and type name).
    const CLASS: &'static str;
    /// Whether its methods are `async` (run on an async executor, up to `max_concurrency` at once).
    const IS_ASYNC: bool;
    /// The generated client whose methods submit calls.
    type Client: From<ActorRef> + Clone;
    fn actor_ref(client: &Self::Client) -> &ActorRef;
}

/// An untyped, reference-counted handle on an actor.
pub struct ActorRef {
    id: ActorId,
}

impl ActorRef {
    pub fn id(&self) -> ActorId {
        self.id
    }

    /// Submits a call of `method` (used by generated clients).
    pub fn call<R>(
        &self,
        class: &'static str,
        method: &'static str,
        slots: Vec<std::result::Result<ArgSlot, TaskError>>,
    ) -> ObjectRef<R> {
        let name = || format!("{}.{method}", short_class(class));
        let Ok(rt) = runtime() else {
            return unregistered(ObjectId::for_return(crate::ids::TaskId(0), 0));
        };
        let (args, contained, keep) = match build_args(&rt, slots) {
            Ok(a) => a,
            Err(e) => return failed_ref(&rt, e.with_task(&name())),
        };
        let spec = ActorCallSpec { task_id: rt.ids.next_task(), actor_id: self.id, method: method.to_string(), args, contained };
        let r = ObjectRef::owned(&rt, spec.return_id());
        rt.core.submit_actor_task(spec);
        drop(keep);
        r
    }

    fn new_counted(id: ActorId) -> Self {
        if let Some(rt) = try_runtime() {
            rt.add_local_ref(RefKey::Actor(id));
        }
        ActorRef { id }
    }
}

/// `crate::module::Type` -> `Type`, for messages.
pub(crate) fn short_class(class: &str) -> &str {
    class.rsplit("::").next().unwrap_or(class)
}

impl Clone for ActorRef {
    fn clone(&self) -> Self {
        ActorRef::new_counted(self.id)
    }
}

impl Drop for ActorRef {
    fn drop(&mut self) {
        if let Some(rt) = try_runtime() {
            rt.remove_local_ref(RefKey::Actor(self.id));
        }
    }
}

impl Serialize for ActorRef {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        crate::codec::note_serialized_ref(RefKey::Actor(self.id));
        self.id.serialize(s)
    }
}

impl<'de> Deserialize<'de> for ActorRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Ok(ActorRef::new_counted(ActorId::deserialize(d)?))
    }
}

/// A typed handle on a running actor. Cheap to clone; pass it to tasks and other actors.
/// Method calls go through `Deref` to the generated client: `handle.incr(1)`.
pub struct ActorHandle<A: Actor> {
    client: A::Client,
}

impl<A: Actor> ActorHandle<A> {
    pub fn id(&self) -> ActorId {
        A::actor_ref(&self.client).id()
    }

    fn from_ref(r: ActorRef) -> Self {
        ActorHandle { client: A::Client::from(r) }
    }
}

impl<A: Actor> Deref for ActorHandle<A> {
    type Target = A::Client;
    fn deref(&self) -> &A::Client {
        &self.client
    }
}

impl<A: Actor> Clone for ActorHandle<A> {
    fn clone(&self) -> Self {
        ActorHandle { client: self.client.clone() }
    }
}

impl<A: Actor> std::fmt::Debug for ActorHandle<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ActorHandle<{}>({})", short_class(A::CLASS), self.id())
    }
}

impl<A: Actor> Serialize for ActorHandle<A> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        A::actor_ref(&self.client).serialize(s)
    }
}

impl<'de, A: Actor> Deserialize<'de> for ActorHandle<A> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Ok(ActorHandle::from_ref(ActorRef::deserialize(d)?))
    }
}

/// Creates an actor: `Counter::remote(0).name("c").max_restarts(2).spawn()?`.
#[must_use = "an actor is created only by .spawn()"]
pub struct ActorBuilder<A: Actor> {
    args: Vec<std::result::Result<ArgSlot, TaskError>>,
    opts: ActorOptions,
    _class: PhantomData<fn() -> A>,
}

impl<A: Actor> ActorBuilder<A> {
    #[doc(hidden)]
    pub fn new(args: Vec<std::result::Result<ArgSlot, TaskError>>) -> Self {
        ActorBuilder { args, opts: ActorOptions::default(), _class: PhantomData }
    }

    /// Replaces all options at once.
    pub fn options(mut self, opts: ActorOptions) -> Self {
        self.opts = opts;
        self
    }
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.opts.name = Some(name.into());
        self
    }
    pub fn namespace(mut self, ns: impl Into<String>) -> Self {
        self.opts.namespace = Some(ns.into());
        self
    }
    pub fn num_cpus(mut self, n: f64) -> Self {
        self.opts.num_cpus = n;
        self
    }
    pub fn num_gpus(mut self, n: f64) -> Self {
        self.opts.num_gpus = n;
        self
    }
    pub fn memory(mut self, bytes: u64) -> Self {
        self.opts.memory = bytes;
        self
    }
    pub fn resources(mut self, name: impl Into<String>, amount: f64) -> Self {
        self.opts.resources.push((name.into(), amount));
        self
    }
    pub fn max_restarts(mut self, n: i32) -> Self {
        self.opts.max_restarts = n;
        self
    }
    pub fn max_task_retries(mut self, n: i32) -> Self {
        self.opts.max_task_retries = n;
        self
    }
    pub fn max_concurrency(mut self, n: u32) -> Self {
        self.opts.max_concurrency = Some(n);
        self
    }
    /// The actor outlives its handles: it lives until killed or the cluster stops.
    pub fn detached(mut self) -> Self {
        self.opts.detached = true;
        self
    }
    pub fn scheduling_strategy(mut self, s: SchedulingStrategy) -> Self {
        self.opts.scheduling_strategy = s;
        self
    }

    /// Creates the actor. Fails at once on bad options or a taken name; a constructor that
    /// fails makes later calls fail with `ActorDied` and the constructor's message.
    pub fn spawn(self) -> Result<ActorHandle<A>> {
        let rt = runtime()?;
        let o = &self.opts;
        let resources = resource_request(o.num_cpus, o.num_gpus, o.memory, &o.resources)
            .map_err(|m| Error::Config(format!("actor {}: {m}", short_class(A::CLASS))))?;
        let max_concurrency = o.max_concurrency.unwrap_or(if A::IS_ASYNC { 1000 } else { 1 });
        if max_concurrency == 0 {
            return Err(Error::Config("max_concurrency must be at least 1".into()));
        }
        if let Some(name) = &o.name {
            if name.is_empty() {
                return Err(Error::Config("an actor name must not be empty".into()));
            }
        }
        let (args, contained, keep) = build_args(&rt, self.args)?;
        let actor_id = ActorId(rt.ids.next_task().0);
        let spec = ActorSpec {
            actor_id,
            class: A::CLASS.to_string(),
            args,
            contained,
            resources,
            strategy: o.scheduling_strategy.clone(),
            max_restarts: o.max_restarts,
            max_task_retries: o.max_task_retries,
            max_concurrency,
            is_async: A::IS_ASYNC,
            name: o.name.clone(),
            namespace: o.namespace.clone().unwrap_or_else(|| DEFAULT_NAMESPACE.to_string()),
            detached: o.detached,
        };
        rt.register_owned(RefKey::Actor(actor_id));
        let created = rt.core.create_actor(spec);
        drop(keep);
        if let Err(e) = created {
            // The node never counted this handle: forget our count without telling it.
            rt.remove_local_ref_silently(RefKey::Actor(actor_id));
            return Err(e.into());
        }
        Ok(ActorHandle::from_ref(ActorRef { id: actor_id }))
    }
}

/// The handle of the actor named `name` in the default namespace.
pub fn get_actor<A: Actor>(name: &str) -> Result<ActorHandle<A>> {
    get_actor_in::<A>(name, DEFAULT_NAMESPACE)
}

/// The handle of the actor named `name` in `namespace`.
pub fn get_actor_in<A: Actor>(name: &str, namespace: &str) -> Result<ActorHandle<A>> {
    let rt = runtime()?;
    let (id, class) = rt.core.get_named_actor(name, namespace)?;
    if class != A::CLASS {
        return Err(
            TaskError::new(ErrorKind::NotFound, format!("the actor named `{name}` is a {class}, not a {}", A::CLASS)).into()
        );
    }
    Ok(ActorHandle::from_ref(ActorRef::new_counted(id)))
}

/// Kills the actor's process at once; it is not restarted and its calls fail with `ActorDied`.
pub fn kill<A: Actor>(handle: &ActorHandle<A>) -> Result<()> {
    Ok(runtime()?.core.kill_actor(handle.id(), true)?)
}

/// What a method call produced: at once (sync methods), or a future (async methods).
pub enum MethodCall {
    Ready(std::result::Result<Box<dyn ReturnValue>, TaskError>),
    Future(BoxedCall),
}

/// A live actor inside its worker process.
pub trait ActorInstance: Send + Sync {
    fn call(&self, method: &str, args: Vec<ObjectData>) -> MethodCall;
}

/// The future of an async method call.
pub type BoxedCall = Pin<Box<dyn Future<Output = std::result::Result<Box<dyn ReturnValue>, TaskError>> + Send>>;
