//! [`Buffer`]: bytes that travel as one raw block instead of element by element, and that a
//! `get` on the same node reads in place from the shared-memory store (zero copy).

use crate::codec::MappedFile;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::cell::RefCell;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

thread_local! {
    /// The mapped object being decoded on this thread, so a `Buffer` inside it can borrow the
    /// mapping instead of copying.
    static DECODING_FROM: RefCell<Option<Arc<MappedFile>>> = const { RefCell::new(None) };
}

/// Runs `f` while `map` is the mapping that `Buffer`s decoded on this thread may borrow.
pub(crate) fn with_mapping<R>(map: &Arc<MappedFile>, f: impl FnOnce() -> R) -> R {
    struct Reset(Option<Arc<MappedFile>>);
    impl Drop for Reset {
        fn drop(&mut self) {
            let prev = self.0.take();
            DECODING_FROM.with(|d| *d.borrow_mut() = prev);
        }
    }
    let prev = DECODING_FROM.with(|d| d.borrow_mut().replace(map.clone()));
    let _reset = Reset(prev);
    f()
}

#[derive(Clone)]
enum Repr {
    Owned(Arc<Vec<u8>>),
    Mapped { map: Arc<MappedFile>, offset: usize, len: usize },
}

/// An immutable byte buffer. Build it from a `Vec<u8>` (no copy); a `Buffer` read back with
/// `flare::get` from a large object is a view into the node's shared memory.
#[derive(Clone)]
pub struct Buffer(Repr);

impl Buffer {
    /// Whether this buffer borrows shared memory rather than owning a heap copy.
    pub fn is_zero_copy(&self) -> bool {
        matches!(self.0, Repr::Mapped { .. })
    }

    /// Copies the bytes out into a `Vec`.
    pub fn to_vec(&self) -> Vec<u8> {
        self.deref().to_vec()
    }
}

impl From<Vec<u8>> for Buffer {
    fn from(v: Vec<u8>) -> Self {
        Buffer(Repr::Owned(Arc::new(v)))
    }
}

impl From<&[u8]> for Buffer {
    fn from(v: &[u8]) -> Self {
        Buffer::from(v.to_vec())
    }
}

impl Deref for Buffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.0 {
            Repr::Owned(v) => v,
            Repr::Mapped { map, offset, len } => &map[*offset..*offset + *len],
        }
    }
}

impl AsRef<[u8]> for Buffer {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl PartialEq for Buffer {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl fmt::Debug for Buffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Buffer({} bytes{})", self.len(), if self.is_zero_copy() { ", shared memory" } else { "" })
    }
}

impl Serialize for Buffer {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self)
    }
}

impl<'de> Deserialize<'de> for Buffer {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Buffer;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte buffer")
            }
            fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Buffer, E> {
                let mapped = DECODING_FROM.with(|d| {
                    let d = d.borrow();
                    let map = d.as_ref()?;
                    let base = map.as_ptr() as usize;
                    let start = v.as_ptr() as usize;
                    (start >= base && start + v.len() <= base + map.len())
                        .then(|| Buffer(Repr::Mapped { map: map.clone(), offset: start - base, len: v.len() }))
                });
                Ok(mapped.unwrap_or_else(|| Buffer::from(v)))
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Buffer, E> {
                Ok(Buffer::from(v))
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Buffer, E> {
                Ok(Buffer::from(v))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Buffer, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(Buffer::from(out))
            }
        }
        d.deserialize_bytes(V)
    }
}
