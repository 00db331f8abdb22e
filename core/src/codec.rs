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

/// Encodes a value into exactly `out.len()` bytes (from [`encoded_size`]).
pub fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut [u8]) -> Result<(), TaskError> {
    let mut w: &mut [u8] = out;
    bincode::serialize_into(&mut w, value).map_err(|e| ser_error(e, std::any::type_name::<T>()))
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
    File { path: String, size: u64 },
    /// No value: producing it failed (a `put` of a value that could not be encoded).
    Error(TaskError),
}

/// Object bytes resolved in this process: owned, or a read-only mapping of a store file.
#[derive(Clone, Debug)]
pub enum ObjectData {
    Inline(Arc<Vec<u8>>),
    Mapped(Arc<Mmap>),
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

    /// Maps a store file read-only.
    pub fn map_file(path: &str) -> std::io::Result<ObjectData> {
        let file = std::fs::File::open(path)?;
        // Safety: store files are written once, before they are published, and never modified.
        let map = unsafe { Mmap::map(&file)? };
        Ok(ObjectData::Mapped(Arc::new(map)))
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
