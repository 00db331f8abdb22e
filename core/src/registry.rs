//! The link-time registry of remote functions and actor classes. `#[flare::remote]` and
//! `#[flare::actor]` add entries with `linkme`, so a worker process (the same executable as its
//! driver) finds every function by its stable name without any registration call, even before
//! `main` runs.

use crate::actor::ActorInstance;
use crate::codec::{ObjectData, ReturnValue};
use crate::error::TaskError;
use linkme::distributed_slice;
use std::collections::HashMap;
use std::sync::OnceLock;

/// Invokes a function on decoded arguments.
pub type InvokeFn = fn(Vec<ObjectData>) -> Result<Box<dyn ReturnValue>, TaskError>;
/// Constructs an actor from decoded constructor arguments.
pub type ConstructFn = fn(Vec<ObjectData>) -> Result<Box<dyn ActorInstance>, TaskError>;

/// A `#[flare::remote]` function.
pub struct RemoteFunction {
    pub name: &'static str,
    pub invoke: InvokeFn,
}

/// A `#[flare::actor]` class.
pub struct ActorClass {
    pub name: &'static str,
    pub construct: ConstructFn,
}

#[distributed_slice]
pub static REMOTE_FUNCTIONS: [RemoteFunction];

#[distributed_slice]
pub static ACTOR_CLASSES: [ActorClass];

fn functions() -> &'static HashMap<&'static str, &'static RemoteFunction> {
    static MAP: OnceLock<HashMap<&'static str, &'static RemoteFunction>> = OnceLock::new();
    MAP.get_or_init(|| REMOTE_FUNCTIONS.iter().map(|f| (f.name, f)).collect())
}

fn classes() -> &'static HashMap<&'static str, &'static ActorClass> {
    static MAP: OnceLock<HashMap<&'static str, &'static ActorClass>> = OnceLock::new();
    MAP.get_or_init(|| ACTOR_CLASSES.iter().map(|c| (c.name, c)).collect())
}

pub(crate) fn function(name: &str) -> Option<&'static RemoteFunction> {
    functions().get(name).copied()
}

pub(crate) fn actor_class(name: &str) -> Option<&'static ActorClass> {
    classes().get(name).copied()
}
