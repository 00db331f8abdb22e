//! [`ObjectRef`]: a typed reference to an object that exists (or will) in the cluster, and the
//! calls on objects: `get`, `wait`, `put`, `cancel`.

use crate::codec::{encode, Arg, Payload, RefKey, INLINE_THRESHOLD};
use crate::error::{Error, ErrorKind, Result, TaskError};
use crate::ids::ObjectId;
use crate::promise::Promise;
use crate::runtime::{runtime, try_runtime, ObjectResult, Runtime};
use crate::store::{encode_object, materialize};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// A reference to an object of type `T`. Clone it freely and pass it to other tasks (it is
/// resolved to its value before they run) or put it inside other values; the object is freed
/// once no reference to it remains anywhere.
pub struct ObjectRef<T> {
    id: ObjectId,
    _type: PhantomData<fn() -> T>,
}

impl<T> ObjectRef<T> {
    /// A reference the node already counts for this process (a submission's return, a put).
    pub(crate) fn owned(rt: &Runtime, id: ObjectId) -> Self {
        rt.register_owned(RefKey::Object(id));
        ObjectRef { id, _type: PhantomData }
    }

    pub fn id(&self) -> ObjectId {
        self.id
    }

    fn promise(&self) -> Result<Promise<ObjectResult>> {
        Ok(runtime()?.core.get(self.id))
    }
}

impl<T: DeserializeOwned> ObjectRef<T> {
    /// Blocks until the value is ready and returns it, or the error its task produced.
    pub fn get(&self) -> Result<T> {
        decode_result(self.id, self.promise()?.wait())
    }

    /// Like [`get`](Self::get), but gives up with `TimedOut` after `timeout`.
    pub fn get_timeout(&self, timeout: Duration) -> Result<T> {
        match self.promise()?.wait_timeout(timeout) {
            Some(r) => decode_result(self.id, r),
            None => Err(TaskError::new(
                ErrorKind::TimedOut,
                format!("get of {} timed out after {timeout:?}; its task may still be queued or running", self.id),
            )
            .into()),
        }
    }
}

/// Decodes a resolved object, re-asking the node once if a spill moved its file meanwhile.
fn decode_result<T: DeserializeOwned>(id: ObjectId, r: ObjectResult) -> Result<T> {
    let stored = r?;
    match materialize(&stored) {
        Ok(data) => Ok(data.decode()?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let again = runtime()?.core.get(id).wait()?;
            let data = materialize(&again).map_err(|e| Error::io(format!("reading {id}"), e))?;
            Ok(data.decode()?)
        }
        Err(e) => Err(Error::io(format!("reading {id}"), e)),
    }
}

impl<T> Clone for ObjectRef<T> {
    fn clone(&self) -> Self {
        if let Some(rt) = try_runtime() {
            rt.add_local_ref(RefKey::Object(self.id));
        }
        ObjectRef { id: self.id, _type: PhantomData }
    }
}

impl<T> Drop for ObjectRef<T> {
    fn drop(&mut self) {
        if let Some(rt) = try_runtime() {
            rt.remove_local_ref(RefKey::Object(self.id));
        }
    }
}

impl<T> fmt::Debug for ObjectRef<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectRef<{}>({})", std::any::type_name::<T>(), self.id)
    }
}

impl<T> PartialEq for ObjectRef<T> {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl<T> Serialize for ObjectRef<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        crate::codec::note_serialized_ref(RefKey::Object(self.id));
        self.id.serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for ObjectRef<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let id = ObjectId::deserialize(d)?;
        if let Some(rt) = try_runtime() {
            rt.add_local_ref(RefKey::Object(id));
        }
        Ok(ObjectRef { id, _type: PhantomData })
    }
}

/// The future of `ref.await`.
pub struct GetFuture<T> {
    id: ObjectId,
    promise: std::result::Result<Promise<ObjectResult>, Option<Error>>,
    _keep: ObjectRef<T>,
}

impl<T: DeserializeOwned> Future for GetFuture<T> {
    type Output = Result<T>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        let this = self.get_mut();
        match &mut this.promise {
            Err(e) => {
                Poll::Ready(Err(e.take().unwrap_or_else(|| TaskError::new(ErrorKind::System, "polled after completion").into())))
            }
            Ok(p) => Pin::new(p).poll(cx).map(|r| decode_result(this.id, r)),
        }
    }
}

impl<T: DeserializeOwned> IntoFuture for ObjectRef<T> {
    type Output = Result<T>;
    type IntoFuture = GetFuture<T>;
    fn into_future(self) -> GetFuture<T> {
        GetFuture { id: self.id, promise: self.promise().map_err(Some), _keep: self }
    }
}

impl<T: DeserializeOwned> IntoFuture for &ObjectRef<T> {
    type Output = Result<T>;
    type IntoFuture = GetFuture<T>;
    fn into_future(self) -> GetFuture<T> {
        self.clone().into_future()
    }
}

/// Blocks until the object is ready and returns its value.
pub fn get<T: DeserializeOwned>(r: &ObjectRef<T>) -> Result<T> {
    r.get()
}

/// Like [`get`], giving up with `TimedOut` after `timeout`.
pub fn get_timeout<T: DeserializeOwned>(r: &ObjectRef<T>, timeout: Duration) -> Result<T> {
    r.get_timeout(timeout)
}

/// Gets every value, in order; the first error wins.
pub fn get_all<T: DeserializeOwned>(refs: &[ObjectRef<T>]) -> Result<Vec<T>> {
    let rt = runtime()?;
    let promises: Vec<_> = refs.iter().map(|r| rt.core.get(r.id)).collect();
    refs.iter().zip(promises).map(|(r, p)| decode_result(r.id, p.wait())).collect()
}

/// Stores a value in the object store and returns a reference to it.
pub fn put<T: Serialize + Send>(value: &T) -> Result<ObjectRef<T>> {
    let rt = runtime()?;
    let id = ObjectId::for_return(rt.ids.next_task(), 0);
    let (payload, contained) = encode_object(&rt, id, value)?;
    let r = ObjectRef::owned(&rt, id);
    rt.core.put(id, payload, contained);
    Ok(r)
}

/// `(ready, not_ready)` as [`wait`] returns them.
pub type Split<T> = (Vec<ObjectRef<T>>, Vec<ObjectRef<T>>);

/// Waits until `num_returns` of `refs` are ready (values or errors) or `timeout` passes.
/// Returns `(ready, not_ready)`, each in the order of `refs`.
pub fn wait<T>(refs: &[ObjectRef<T>], num_returns: usize, timeout: Option<Duration>) -> Result<Split<T>> {
    if num_returns > refs.len() {
        return Err(Error::Config(format!(
            "wait: num_returns ({num_returns}) is larger than the number of refs ({})",
            refs.len()
        )));
    }
    let rt = runtime()?;
    let ids: Vec<ObjectId> = refs.iter().map(|r| r.id).collect();
    if let Some(now) = rt.core.resolved_now(&ids) {
        if now.iter().filter(|f| **f).count() >= num_returns || timeout == Some(Duration::ZERO) {
            return Ok(split_ready(refs, &now, num_returns));
        }
    }
    let done = Arc::new((Mutex::new(vec![false; refs.len()]), Condvar::new()));
    for (i, r) in refs.iter().enumerate() {
        let d = done.clone();
        rt.core.get(r.id).on_complete(move |_| {
            d.0.lock().unwrap_or_else(|p| p.into_inner())[i] = true;
            d.1.notify_all();
        });
    }
    let deadline = timeout.map(|t| Instant::now() + t);
    let (lock, cv) = &*done;
    let mut flags = lock.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        if flags.iter().filter(|f| **f).count() >= num_returns {
            break;
        }
        match deadline {
            None => flags = cv.wait(flags).unwrap_or_else(|p| p.into_inner()),
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    break;
                }
                flags = cv.wait_timeout(flags, d - now).unwrap_or_else(|p| p.into_inner()).0;
            }
        }
    }
    Ok(split_ready(refs, &flags, num_returns))
}

/// Splits refs into (ready, not ready); like Ray, at most `num_returns` count as ready.
fn split_ready<T>(refs: &[ObjectRef<T>], flags: &[bool], num_returns: usize) -> Split<T> {
    let mut ready = Vec::new();
    let mut not_ready = Vec::new();
    for (r, f) in refs.iter().zip(flags) {
        if *f && ready.len() < num_returns.max(1) {
            ready.push(r.clone());
        } else {
            not_ready.push(r.clone());
        }
    }
    (ready, not_ready)
}

/// Cancels the task that produces `r`: a queued task never runs; a running one is asked to stop
/// (see [`is_cancelled`](crate::is_cancelled)), or with `force` its worker is killed. Its
/// `get` then returns `Cancelled`.
pub fn cancel<T>(r: &ObjectRef<T>, force: bool) -> Result<()> {
    Ok(runtime()?.core.cancel(r.id, force)?)
}

/// One argument as the macro-generated code hands it over. A value keeps the references
/// found inside it counted until the submission has reached the node.
pub enum ArgSlot {
    Value(Vec<u8>, RefGuard),
    Ref(ObjectRef<()>),
}

/// Holds this process's count on some references, so they stay alive while a value that
/// contains them travels to the node even if the value itself was already dropped.
pub struct RefGuard(Vec<RefKey>);

impl RefGuard {
    pub(crate) fn hold(keys: Vec<RefKey>) -> Self {
        if let Some(rt) = try_runtime() {
            for k in &keys {
                rt.add_local_ref(*k);
            }
        }
        RefGuard(keys)
    }

    pub(crate) fn keys(&self) -> &[RefKey] {
        &self.0
    }
}

impl Drop for RefGuard {
    fn drop(&mut self) {
        if let Some(rt) = try_runtime() {
            for k in &self.0 {
                rt.remove_local_ref(*k);
            }
        }
    }
}

/// What can be passed where a task parameter of type `T` is expected: a `T`, or a reference to
/// one (resolved before the task runs).
pub trait IntoArg<T> {
    fn into_arg(self) -> std::result::Result<ArgSlot, TaskError>;
}

impl<T: Serialize> IntoArg<T> for T {
    fn into_arg(self) -> std::result::Result<ArgSlot, TaskError> {
        let (bytes, contained) = crate::codec::capture_refs(|| encode(&self));
        Ok(ArgSlot::Value(bytes?, RefGuard::hold(contained)))
    }
}

impl<T> IntoArg<T> for ObjectRef<T> {
    fn into_arg(self) -> std::result::Result<ArgSlot, TaskError> {
        Ok(ArgSlot::Ref(ObjectRef { id: self.id, _type: PhantomData::<fn() -> ()> }.keep(self)))
    }
}

impl<T> IntoArg<T> for &ObjectRef<T> {
    fn into_arg(self) -> std::result::Result<ArgSlot, TaskError> {
        IntoArg::<T>::into_arg(self.clone())
    }
}

impl ObjectRef<()> {
    /// Re-types a reference, moving its count (no add/remove traffic).
    fn keep<U>(self, original: ObjectRef<U>) -> ObjectRef<()> {
        std::mem::forget(original);
        self
    }
}

/// Turns argument slots into wire arguments. Large values become objects of their own, so
/// task messages stay small. The returned refs must live until the submission is sent.
pub(crate) fn build_args(
    rt: &Runtime,
    slots: Vec<std::result::Result<ArgSlot, TaskError>>,
) -> std::result::Result<(Vec<Arg>, Vec<RefKey>, Keep), TaskError> {
    let mut args = Vec::with_capacity(slots.len());
    let mut contained = Vec::new();
    let mut keep = Keep::default();
    for slot in slots {
        match slot? {
            ArgSlot::Value(bytes, refs) if (bytes.len() as u64) < INLINE_THRESHOLD => {
                contained.extend_from_slice(refs.keys());
                args.push(Arg::Value(bytes));
                keep.guards.push(refs);
            }
            ArgSlot::Value(bytes, refs) => {
                let id = ObjectId::for_return(rt.ids.next_task(), 0);
                let payload = large_bytes_payload(rt, id, bytes)?;
                let r = ObjectRef::<()>::owned(rt, id);
                rt.core.put(id, payload, refs.keys().to_vec());
                args.push(Arg::Ref(id));
                keep.refs.push(r);
                keep.guards.push(refs);
            }
            ArgSlot::Ref(r) => {
                args.push(Arg::Ref(r.id));
                keep.refs.push(r);
            }
        }
    }
    Ok((args, contained, keep))
}

/// What must stay alive until a submission is sent.
#[derive(Default)]
pub(crate) struct Keep {
    refs: Vec<ObjectRef<()>>,
    guards: Vec<RefGuard>,
}

fn large_bytes_payload(rt: &Runtime, id: ObjectId, bytes: Vec<u8>) -> std::result::Result<Payload, TaskError> {
    let path = crate::store::object_file(&rt.shm_dir, id);
    crate::store::adopt_recycled(rt, &path, bytes.len() as u64);
    crate::store::write_file(&path, bytes.len() as u64, |out| {
        out.copy_from_slice(&bytes);
        Ok(())
    })?;
    Ok(Payload::File { id, path: path.to_string_lossy().into_owned(), size: bytes.len() as u64 })
}

/// A reference whose object is an error (an argument that could not be encoded, say).
pub(crate) fn failed_ref<R>(rt: &Runtime, err: TaskError) -> ObjectRef<R> {
    let id = ObjectId::for_return(rt.ids.next_task(), 0);
    let r = ObjectRef::owned(rt, id);
    rt.core.put(id, Payload::Error(err), Vec::new());
    r
}

/// A reference the runtime does not count (made when no runtime is running).
pub(crate) fn unregistered<R>(id: ObjectId) -> ObjectRef<R> {
    ObjectRef { id, _type: PhantomData }
}
