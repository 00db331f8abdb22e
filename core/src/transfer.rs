//! Moving object files between nodes, and the executable a node starts workers from.
//!
//! A pull is one TCP connection: a [`Hello::Pull`] frame, a [`PullReply`], then the file's raw
//! bytes, sent with `sendfile` and received into a preallocated destination file a chunk at a
//! time, so neither side holds more than a chunk in memory. Only files under the serving
//! node's store directories are served.

use crate::ids::ObjectId;
use crate::protocol::{read_frame, write_frame, Hello, PullReply};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

/// Bytes per write and read of a pull.
const CHUNK: usize = 8 << 20;
/// How long a pull may go without progress.
const STALL: Duration = Duration::from_secs(30);

/// Connects to `addr` ("host:port") within a few seconds.
pub(crate) fn connect(addr: &str) -> io::Result<TcpStream> {
    use std::net::ToSocketAddrs;
    let mut last = io::Error::new(io::ErrorKind::NotFound, format!("`{addr}` resolves to no address"));
    for a in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&a, Duration::from_secs(5)) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Whether `given` is the cluster token (the head's constant-time comparison).
pub(crate) fn token_ok(given: &str, want: &str) -> bool {
    crate::head::constant_time_eq(given.as_bytes(), want.as_bytes())
}

/// Serves one pull on an accepted connection whose `Hello::Pull` was read and authorized:
/// `len` bytes from `offset`; with `consume`, the file is deleted afterwards.
pub(crate) fn serve_pull(
    mut stream: TcpStream,
    path: &str,
    offset: u64,
    len: u64,
    consume: bool,
    roots: &[PathBuf],
) -> io::Result<()> {
    let _ = stream.set_write_timeout(Some(STALL));
    let mut file = match open_under(path, roots) {
        Ok(f) => f,
        Err(e) => return write_frame(&mut stream, &PullReply::Err(e)),
    };
    let size = file.metadata()?.len();
    write_frame(&mut stream, &PullReply::Ok { size })?;
    let want = len.min(size.saturating_sub(offset));
    if want > 0 {
        use std::io::Seek;
        file.seek(io::SeekFrom::Start(offset))?;
        // `io::copy` from a file to a socket is `sendfile` on Linux: no copy through user space.
        let sent = io::copy(&mut file.take(want), &mut stream)?;
        if sent != want {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("{path} shrank while it was sent")));
        }
    }
    stream.flush()?;
    if consume {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

fn open_under(path: &str, roots: &[PathBuf]) -> Result<std::fs::File, String> {
    let p = std::fs::canonicalize(path).map_err(|e| format!("no object file {path} on this node: {e}"))?;
    let inside = roots.iter().filter_map(|r| std::fs::canonicalize(r).ok()).any(|r| p.starts_with(r));
    if !inside {
        return Err(format!("{path} is not an object file of this node"));
    }
    std::fs::File::open(&p).map_err(|e| format!("opening {path}: {e}"))
}

/// Objects at least this large are pulled over two connections at once.
const PARALLEL_MIN: u64 = 64 << 20;

/// One request: the file's size, and `len` bytes from `offset` written at `offset` of `out`.
fn pull_range(
    addr: &str,
    token: &str,
    path: &str,
    offset: u64,
    len: u64,
    consume: bool,
    out: Option<&std::fs::File>,
) -> Result<u64, String> {
    use std::os::unix::fs::FileExt;
    let mut s = connect(addr).map_err(|e| format!("cannot connect: {e}"))?;
    let _ = s.set_read_timeout(Some(STALL));
    let _ = s.set_write_timeout(Some(STALL));
    let hello = Hello::Pull { token: token.to_string(), path: path.to_string(), offset, len, consume };
    write_frame(&mut s, &hello).map_err(|e| e.to_string())?;
    let size = match read_frame::<PullReply>(&mut s, 64 << 10).map_err(|e| e.to_string())? {
        PullReply::Ok { size } => size,
        PullReply::Err(e) => return Err(e),
    };
    let Some(out) = out else { return Ok(size) };
    let want = len.min(size.saturating_sub(offset));
    // Plain reads and positioned writes through one chunk buffer: for tmpfs this beats filling
    // a mapping page fault by page fault, and a full tmpfs is a write error (ENOSPC) here,
    // never a SIGBUS in a reader later.
    let mut buf = vec![0u8; CHUNK.min(want as usize)];
    let mut at = offset;
    while at < offset + want {
        let n = ((offset + want - at) as usize).min(buf.len());
        s.read_exact(&mut buf[..n]).map_err(|e| format!("the transfer broke off: {e}"))?;
        out.write_all_at(&buf[..n], at).map_err(|e| format!("writing: {e}"))?;
        at += n as u64;
    }
    Ok(size)
}

/// Pulls `path` from the node at `addr` into the new file `dest` (large files over two
/// connections at once); with `consume`, the source is deleted once all of it arrived.
/// Returns its size.
pub(crate) fn pull(addr: &str, token: &str, path: &str, consume: bool, dest: &Path) -> Result<u64, String> {
    let what = |e: String| format!("pulling {path} from {addr}: {e}");
    let size = pull_range(addr, token, path, 0, 0, false, None).map_err(what)?;
    let tmp = PathBuf::from(format!("{}.pulling", dest.display()));
    let out = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| what(format!("creating {}: {e}", tmp.display())))?;
    let result = (|| {
        out.set_len(size).map_err(|e| e.to_string())?;
        if size >= PARALLEL_MIN {
            let half = size / 2;
            std::thread::scope(|sc| {
                let second = sc.spawn(|| pull_range(addr, token, path, half, size - half, false, Some(&out)));
                let first = pull_range(addr, token, path, 0, half, false, Some(&out));
                first.and(second.join().unwrap_or_else(|_| Err("a transfer thread panicked".into())))
            })?;
        } else {
            pull_range(addr, token, path, 0, size, false, Some(&out))?;
        }
        std::fs::rename(&tmp, dest).map_err(|e| e.to_string())?;
        if consume {
            pull_range(addr, token, path, 0, 0, true, None)?;
        }
        Ok::<(), String>(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(what(e));
    }
    Ok(size)
}

/// Where this process keeps copies of object files it pulls from other nodes, and the token
/// it pulls with (a driver that joined a cluster, and every worker of one).
#[derive(Clone)]
struct Store {
    dir: PathBuf,
    token: String,
}

/// Set again by a driver that shut down and joined another cluster.
static STORE: std::sync::RwLock<Option<Store>> = std::sync::RwLock::new(None);

fn store() -> Option<Store> {
    STORE.read().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Sets where this process's pulled copies go and the cluster token for pulls.
pub(crate) fn set_store(dir: PathBuf, token: String) {
    *STORE.write().unwrap_or_else(|p| p.into_inner()) = Some(Store { dir, token });
}

/// Whether `path` is in this process's own store directory (so on this node).
pub(crate) fn in_own_store(path: &str) -> bool {
    match REMOTE.get() {
        Some(r) => Path::new(path).starts_with(&r.shm_dir),
        None => store().is_some_and(|s| Path::new(path).starts_with(&s.dir)),
    }
}

/// An object file that stays on the node that made it: `@HOST:PORT/abs/path` names the node
/// agent that serves `path`.
pub(crate) fn remote_path(addr: &str, path: &str) -> String {
    format!("@{addr}{path}")
}

/// `(agent address, path there)` of a [`remote_path`].
pub(crate) fn split_remote(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix('@')?;
    let slash = rest.find('/')?;
    Some((&rest[..slash], &rest[slash..]))
}

/// Where a worker on another node than its driver fetches object files that are not on its node.
struct RemoteSource {
    addr: String,
    token: String,
    shm_dir: PathBuf,
}

static REMOTE: OnceLock<RemoteSource> = OnceLock::new();

/// Makes this worker fetch object files outside `shm_dir` from its driver's node at `addr`.
pub(crate) fn set_remote_source(addr: String, token: String, shm_dir: PathBuf) {
    let _ = REMOTE.set(RemoteSource { addr, token, shm_dir });
}

/// A local copy of object file `path` when it lives on another node (the caller maps it, then
/// deletes it): a [`remote_path`] not in this process's own store is pulled from the agent it
/// names; on a worker on another node than its driver, a plain path is on the driver's node
/// and is pulled from there. `None` when the file is local.
pub(crate) fn localize(id: ObjectId, path: &str) -> io::Result<Option<PathBuf>> {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    if let Some((addr, _)) = split_remote(path) {
        let (dir, token) = match (REMOTE.get(), store()) {
            (Some(r), _) => (r.shm_dir.clone(), r.token.clone()),
            (None, Some(s)) => (s.dir, s.token),
            (None, None) => {
                return Err(io::Error::other(format!("{path} is on another node and this process has no cluster token")))
            }
        };
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dest = dir.join(format!("pulled-{:x}.{}-{}-{n}", id.task.0, id.index, std::process::id()));
        let (_, there) = split_remote(path).expect("checked above");
        pull(addr, &token, there, false, &dest).map_err(io::Error::other)?;
        return Ok(Some(dest));
    }
    let Some(r) = REMOTE.get() else { return Ok(None) };
    if Path::new(path).starts_with(&r.shm_dir) {
        return Ok(None);
    }
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dest = r.shm_dir.join(format!("pulled-{:x}.{}-{}-{n}", id.task.0, id.index, std::process::id()));
    pull(&r.addr, &r.token, path, false, &dest).map_err(io::Error::other)?;
    Ok(Some(dest))
}

/// The SHA-256 of this process's executable, and its size (computed once).
pub(crate) fn exe_digest() -> Result<(String, u64), String> {
    static DIGEST: OnceLock<Result<(String, u64), String>> = OnceLock::new();
    DIGEST
        .get_or_init(|| {
            use sha2::Digest;
            let mut f = std::fs::File::open("/proc/self/exe").map_err(|e| format!("reading this executable: {e}"))?;
            let mut h = sha2::Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut size = 0u64;
            loop {
                let n = f.read(&mut buf).map_err(|e| format!("reading this executable: {e}"))?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
                size += n as u64;
            }
            let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
            Ok((hex, size))
        })
        .clone()
}
