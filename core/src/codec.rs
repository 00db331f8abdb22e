//! The value codec: serde values in bincode's compact binary form, plus the bookkeeping that
//! finds `ObjectRef`s inside a value (so the node keeps them alive while the value exists).

use crate::buffer;
use crate::error::{ErrorKind, TaskError};
use crate::ids::{ActorId, ObjectId};
use memmap2::Mmap;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::sync::Arc;

/// Objects at least this large go to the shared-memory store; smaller ones travel inline
/// (Ray's `max_direct_call_object_size`).
pub const INLINE_THRESHOLD: u64 = 100 * 1024;

/// Something reference counted across processes: an object, or an actor (through its handles).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RefKey {
    Object(ObjectId),
    Actor(ActorId),
}

thread_local! {
    static CAPTURED: RefCell<Option<Vec<RefKey>>> = const { RefCell::new(None) };
}

/// Called by `ObjectRef`'s and `ActorRef`'s `Serialize`: records the reference when a capture
/// is running on this thread.
pub(crate) fn note_serialized_ref(id: RefKey) {
    CAPTURED.with(|c| {
        if let Some(v) = c.borrow_mut().as_mut() {
            v.push(id);
        }
    });
}

/// Runs `f` and returns the references serialized while it ran.
pub(crate) fn capture_refs<R>(f: impl FnOnce() -> R) -> (R, Vec<RefKey>) {
    let prev = CAPTURED.with(|c| c.borrow_mut().replace(Vec::new()));
    let out = f();
    let mut ids = CAPTURED.with(|c| std::mem::replace(&mut *c.borrow_mut(), prev)).unwrap_or_default();
    ids.sort();
    ids.dedup();
    (out, ids)
}

fn ser_error(e: impl std::fmt::Display, what: &str) -> TaskError {
    TaskError::new(ErrorKind::Serialization, format!("could not encode {what}: {e}"))
}

/// Encodes a value.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, TaskError> {
    bincode::serialize(value).map_err(|e| ser_error(e, std::any::type_name::<T>()))
}

/// The encoded size of a value, without encoding it.
pub fn encoded_size<T: Serialize + ?Sized>(value: &T) -> Result<u64, TaskError> {
    bincode::serialized_size(value).map_err(|e| ser_error(e, std::any::type_name::<T>()))
}

/// Encodes a value into exactly `out.len()` bytes (from [`encoded_size`]). Large byte runs
/// (a `Buffer`) are copied by several threads at once.
pub fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut [u8]) -> Result<(), TaskError> {
    let mut w = ParallelWriter { buf: out, pos: 0 };
    bincode::serialize_into(&mut w, value).map_err(|e| ser_error(e, std::any::type_name::<T>()))
}

/// Copies at least this many bytes with several threads.
const PARALLEL_COPY_MIN: usize = 8 << 20;

/// A slice writer that splits large writes over threads: one core cannot saturate memory
/// bandwidth when copying into shared memory (measured 3.5 vs 8.8 GB/s with 1 vs 2 threads
/// for 800 MiB on the 2-core dev machine).
struct ParallelWriter<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl std::io::Write for ParallelWriter<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(self.buf.len() - self.pos);
        let dst = &mut self.buf[self.pos..self.pos + n];
        if n >= PARALLEL_COPY_MIN {
            parallel_copy(dst, &data[..n]);
        } else {
            dst.copy_from_slice(&data[..n]);
        }
        self.pos += n;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn parallel_copy(dst: &mut [u8], src: &[u8]) {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(1, 8);
    let chunk = src.len().div_ceil(threads).max(1 << 20);
    std::thread::scope(|s| {
        let mut parts = dst.chunks_mut(chunk).zip(src.chunks(chunk));
        let first = parts.next();
        for (d, sr) in parts {
            s.spawn(move || d.copy_from_slice(sr));
        }
        if let Some((d, sr)) = first {
            d.copy_from_slice(sr);
        }
    });
}

/// Decodes a value; a mismatch between the encoded and the expected type is a `Serialization` error.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, TaskError> {
    bincode::deserialize(bytes).map_err(|e| {
        TaskError::new(
            ErrorKind::Serialization,
            format!(
                "could not decode a {} from {} bytes: {e}; do the caller and the callee agree on the type?",
                std::any::type_name::<T>(),
                bytes.len()
            ),
        )
    })
}

/// Object bytes as they travel between processes of a node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Payload {
    /// The encoded value itself (small objects).
    Inline(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A file holding the encoded value: in the shared-memory directory, or spilled to disk.
    File { id: ObjectId, path: String, size: u64 },
    /// No value: producing it failed (a `put` of a value that could not be encoded).
    Error(TaskError),
}

/// A read-only mapping of a store file. While it lives it holds a reference to its object, so
/// the node neither frees nor recycles the file under a reader (zero-copy `Buffer`s keep it).
pub struct MappedFile {
    map: Mmap,
    _pin: Option<crate::object_ref::RefGuard>,
}

impl std::ops::Deref for MappedFile {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.map
    }
}

impl std::fmt::Debug for MappedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MappedFile({} bytes)", self.map.len())
    }
}

/// Object bytes resolved in this process: owned, or a read-only mapping of a store file.
#[derive(Clone, Debug)]
pub enum ObjectData {
    Inline(Arc<Vec<u8>>),
    Mapped(Arc<MappedFile>),
}

impl ObjectData {
    pub fn len(&self) -> usize {
        match self {
            ObjectData::Inline(v) => v.len(),
            ObjectData::Mapped(m) => m.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decodes the value; `Buffer`s inside a mapped object borrow the mapping (zero copy).
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, TaskError> {
        match self {
            ObjectData::Inline(v) => decode(v),
            ObjectData::Mapped(m) => buffer::with_mapping(m, || decode(&m[..])),
        }
    }

    /// Maps the store file of object `id` read-only, holding a reference to the object.
    /// On a worker whose driver is on another node, a file that is not on this node is pulled
    /// first (and the copy deleted once mapped).
    pub fn map_file(id: ObjectId, path: &str) -> std::io::Result<ObjectData> {
        // A file of this node written by a worker here is opened where it is.
        let here = crate::transfer::split_remote(path).map(|(_, p)| p).filter(|p| crate::transfer::in_own_store(p));
        let pulled = if here.is_some() { None } else { crate::transfer::localize(id, path)? };
        let file = std::fs::File::open(pulled.as_deref().unwrap_or(std::path::Path::new(here.unwrap_or(path))))?;
        if let Some(p) = &pulled {
            let _ = std::fs::remove_file(p);
        }
        // Safety: store files are written once, before they are published, and not modified
        // while referenced (a mapping holds a reference through its pin).
        let map = unsafe { Mmap::map(&file)? };
        let pin = Some(crate::object_ref::RefGuard::hold(vec![RefKey::Object(id)]));
        Ok(ObjectData::Mapped(Arc::new(MappedFile { map, _pin: pin })))
    }
}

/// A value produced by user code, encoded by the runtime where it will be stored.
pub trait ReturnValue: Send {
    fn encoded_size(&self) -> Result<u64, TaskError>;
    fn encode_into(&self, out: &mut [u8]) -> Result<(), TaskError>;
}

impl<T: Serialize + Send> ReturnValue for T {
    fn encoded_size(&self) -> Result<u64, TaskError> {
        encoded_size(self)
    }
    fn encode_into(&self, out: &mut [u8]) -> Result<(), TaskError> {
        encode_into(self, out)
    }
}

/// One argument of a task as submitted: an encoded value, or a reference resolved before the task runs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Arg {
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    Ref(ObjectId),
}
