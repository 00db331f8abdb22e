//! Writing objects: small values inline, large ones into a file in the node's shared-memory
//! directory (mapped by readers on the node), and spill files on disk.

use crate::codec::{capture_refs, ObjectData, Payload, RefKey, ReturnValue, INLINE_THRESHOLD};
use crate::error::{ErrorKind, TaskError};
use crate::ids::ObjectId;
use crate::runtime::{Runtime, StoredData};
use std::fs::OpenOptions;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// The file name of an object in the shared-memory directory.
pub(crate) fn object_file(dir: &Path, id: ObjectId) -> PathBuf {
    dir.join(format!("{:x}.{}", id.task.0, id.index))
}

/// Objects at least this large give their file back to the node for reuse when freed, since a
/// tmpfs file whose pages already exist is written about 3.5x faster than a new one.
pub(crate) const RECYCLE_MIN: u64 = 1 << 20;

/// Encodes `value` for object `id`: inline when small, else into a shared-memory file.
/// Returns the payload and the references found inside the value.
pub(crate) fn encode_object(rt: &Runtime, id: ObjectId, value: &dyn ReturnValue) -> Result<(Payload, Vec<RefKey>), TaskError> {
    let (payload, contained) = capture_refs(|| -> Result<Payload, TaskError> {
        let size = value.encoded_size()?;
        if size < INLINE_THRESHOLD {
            let mut buf = vec![0u8; size as usize];
            value.encode_into(&mut buf)?;
            Ok(Payload::Inline(buf))
        } else {
            let path = object_file(&rt.shm_dir, id);
            adopt_recycled(rt, &path, size);
            write_file(&path, size, |out| value.encode_into(out))?;
            Ok(Payload::File { id, path: path.to_string_lossy().into_owned(), size })
        }
    });
    Ok((payload?, contained))
}

/// Mappings of store files this process wrote, kept so that writing the same file again (a
/// recycled file comes back under a new name, same inode) skips mapping it: mapping 800 MiB
/// with all its pages costs about as much as copying into them. Bounded, and entries whose
/// file was deleted meanwhile are dropped at the next write, since they pin its memory.
struct WriteMaps {
    entries: Vec<(std::fs::File, u64, memmap2::MmapMut)>,
}

const WRITE_MAPS_MAX: usize = 2;
const WRITE_MAPS_MAX_BYTES: u64 = 2 << 30;

static WRITE_MAPS: std::sync::Mutex<WriteMaps> = std::sync::Mutex::new(WriteMaps { entries: Vec::new() });

fn inode(f: &std::fs::File) -> Option<(u64, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    f.metadata().ok().map(|m| (m.dev(), m.ino(), m.nlink()))
}

fn cached_map(file: &std::fs::File, size: u64) -> Option<memmap2::MmapMut> {
    let (dev, ino, _) = inode(file)?;
    let mut maps = WRITE_MAPS.lock().unwrap_or_else(|p| p.into_inner());
    maps.entries.retain(|(f, _, _)| inode(f).is_some_and(|(_, _, links)| links > 0));
    let i = maps.entries.iter().position(|(f, len, _)| *len == size && inode(f).is_some_and(|(d, n, _)| d == dev && n == ino))?;
    Some(maps.entries.swap_remove(i).2)
}

fn keep_map(file: std::fs::File, size: u64, map: memmap2::MmapMut) {
    if size > WRITE_MAPS_MAX_BYTES {
        return;
    }
    let mut maps = WRITE_MAPS.lock().unwrap_or_else(|p| p.into_inner());
    maps.entries.push((file, size, map));
    while maps.entries.len() > WRITE_MAPS_MAX || maps.entries.iter().map(|(_, l, _)| *l).sum::<u64>() > WRITE_MAPS_MAX_BYTES {
        maps.entries.remove(0);
    }
}

/// Creates `path` with `size` bytes reserved up front (so a full tmpfs is an error here, not a
/// SIGBUS later), maps it and lets `fill` write it.
pub(crate) fn write_file(path: &Path, size: u64, fill: impl FnOnce(&mut [u8]) -> Result<(), TaskError>) -> Result<(), TaskError> {
    let sys = |what: &str, e: std::io::Error| {
        TaskError::new(ErrorKind::System, format!("object store: could not {what} {}: {e}", path.display()))
    };
    // No truncation: a recycled file keeps its pages; set_len below trims any excess.
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).map_err(|e| sys("create", e))?;
    let same_size = file.metadata().map(|m| m.len() == size).unwrap_or(false);
    if same_size {
        if let Some(mut map) = cached_map(&file, size) {
            let res = fill(&mut map[..]);
            if res.is_err() {
                let _ = std::fs::remove_file(path);
            } else {
                keep_map(file, size, map);
            }
            return res;
        }
    }
    // Safety: plain FFI on a file descriptor we own.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, size as libc::off_t) };
    if rc != 0 {
        let _ = std::fs::remove_file(path);
        let e = std::io::Error::from_raw_os_error(rc);
        return Err(TaskError::new(
            ErrorKind::System,
            format!(
                "object store: no room for a {size}-byte object in {} ({e}); free objects, lower object_store_memory, or enlarge /dev/shm",
                path.parent().map(|p| p.display().to_string()).unwrap_or_default()
            ),
        ));
    }
    file.set_len(size).map_err(|e| sys("size", e))?;
    // Safety: the file was just created by us and nobody else maps it until it is published.
    let mut map =
        unsafe { memmap2::MmapOptions::new().len(size as usize).populate().map_mut(&file) }.map_err(|e| sys("map", e))?;
    let res = fill(&mut map[..]);
    if res.is_err() {
        drop(map);
        let _ = std::fs::remove_file(path);
    } else if size >= RECYCLE_MIN {
        keep_map(file, size, map);
    }
    res
}

/// Maps or borrows stored bytes so they can be decoded here.
pub(crate) fn materialize(data: &StoredData) -> Result<ObjectData, std::io::Error> {
    match data {
        StoredData::Inline(v) => Ok(ObjectData::Inline(v.clone())),
        StoredData::File { id, path, .. } => ObjectData::map_file(*id, path),
    }
}

/// Moves a recycled store file (if the node has one) to `path`, so writing it reuses its pages.
pub(crate) fn adopt_recycled(rt: &Runtime, path: &Path, size: u64) {
    if size < RECYCLE_MIN {
        return;
    }
    if let Some(old) = rt.core.recycled_file(size) {
        if std::fs::rename(&old, path).is_err() {
            let _ = std::fs::remove_file(&old);
        }
    }
}
