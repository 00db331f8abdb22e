//! Key-value stores for rendezvous: ranks publish their addresses and NCCL ids, and their
//! progress (so that a timeout can name the ranks that never arrived).
//!
//! [`MemStore`] serves ranks that are threads of one process; [`TcpStore`] (with
//! [`TcpStoreServer`]) serves processes on any hosts, as PyTorch's `TCPStore` does. The
//! cluster's own KV store plugs in through the same [`Store`] trait.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::{CollectiveError, Result};

/// The longest key a store takes.
pub const MAX_KEY: usize = 4096;
/// The largest value a store takes (rendezvous data is small; this bounds a bad client).
pub const MAX_VALUE: usize = 16 << 20;

/// What every rendezvous store does.
pub trait Store: Send + Sync {
    fn set(&self, key: &str, value: &[u8]) -> Result<()>;
    /// Waits until `key` is set, up to `timeout`.
    fn get(&self, key: &str, timeout: Duration) -> Result<Vec<u8>>;
    fn try_get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Adds `delta` to the integer at `key` (0 when unset) and returns the new value.
    fn add(&self, key: &str, delta: i64) -> Result<i64>;
    /// Removes every key that starts with `prefix`; returns how many.
    fn delete_prefix(&self, prefix: &str) -> Result<usize>;
}

fn check_sizes(key: &str, value: &[u8]) -> Result<()> {
    if key.len() > MAX_KEY {
        return Err(CollectiveError::Store(format!("key of {} bytes is over the {MAX_KEY}-byte limit", key.len())));
    }
    if value.len() > MAX_VALUE {
        return Err(CollectiveError::Store(format!("value of {} bytes is over the {MAX_VALUE}-byte limit", value.len())));
    }
    Ok(())
}

#[derive(Default)]
struct Table {
    map: Mutex<HashMap<String, Vec<u8>>>,
    changed: Condvar,
}

impl Table {
    fn set(&self, key: &str, value: &[u8]) {
        self.map.lock().unwrap().insert(key.to_string(), value.to_vec());
        self.changed.notify_all();
    }
    fn get(&self, key: &str, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut map = self.map.lock().unwrap();
        loop {
            if let Some(v) = map.get(key) {
                return Some(v.clone());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            map = self.changed.wait_timeout(map, left).unwrap().0;
        }
    }
    fn add(&self, key: &str, delta: i64) -> std::result::Result<i64, String> {
        let mut map = self.map.lock().unwrap();
        let cur = match map.get(key) {
            None => 0,
            Some(v) => std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
                .ok_or_else(|| format!("`{key}` does not hold an integer"))?,
        };
        let new = cur.wrapping_add(delta);
        map.insert(key.to_string(), new.to_string().into_bytes());
        drop(map);
        self.changed.notify_all();
        Ok(new)
    }
    fn delete_prefix(&self, prefix: &str) -> usize {
        let mut map = self.map.lock().unwrap();
        let before = map.len();
        map.retain(|k, _| !k.starts_with(prefix));
        before - map.len()
    }
}

/// A store in this process's memory, for ranks that are threads. Clones share the table.
#[derive(Clone, Default)]
pub struct MemStore(Arc<Table>);

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Store for MemStore {
    fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        check_sizes(key, value)?;
        self.0.set(key, value);
        Ok(())
    }
    fn get(&self, key: &str, timeout: Duration) -> Result<Vec<u8>> {
        self.0.get(key, timeout).ok_or_else(|| CollectiveError::Store(format!("`{key}` was not set within {timeout:?}")))
    }
    fn try_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.0.map.lock().unwrap().get(key).cloned())
    }
    fn add(&self, key: &str, delta: i64) -> Result<i64> {
        self.0.add(key, delta).map_err(CollectiveError::Store)
    }
    fn delete_prefix(&self, prefix: &str) -> Result<usize> {
        Ok(self.0.delete_prefix(prefix))
    }
}

// Wire format. Request: op u8, key_len u32, key, value_len u32, value, timeout_ms u64 (all little endian).
// Reply: status u8 (0 ok, 1 not found / timed out, 2 error), len u32, payload.
const OP_SET: u8 = 1;
const OP_GET: u8 = 2;
const OP_TRY_GET: u8 = 3;
const OP_ADD: u8 = 4;
const OP_DELETE_PREFIX: u8 = 5;
/// The longest a server waits for one request's bytes once it has started.
const FRAME_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest blocking `get` a server accepts.
const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);

/// A TCP key-value store server (PyTorch's `TCPStore` with `is_master=True`). It serves until
/// dropped. Binds where it is told; use `127.0.0.1:0` for an ephemeral local port.
pub struct TcpStoreServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TcpStoreServer {
    pub fn bind(addr: impl ToSocketAddrs) -> Result<Self> {
        let listener = TcpListener::bind(addr).map_err(|e| CollectiveError::Store(format!("cannot bind the store: {e}")))?;
        let addr = listener.local_addr().map_err(|e| CollectiveError::Store(e.to_string()))?;
        listener.set_nonblocking(true).map_err(|e| CollectiveError::Store(e.to_string()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let table = Arc::new(Table::default());
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("flare-store".into())
            .spawn(move || {
                while !stop2.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let table = table.clone();
                            let stop = stop2.clone();
                            let _ = std::thread::Builder::new().name("flare-store-conn".into()).spawn(move || {
                                let _ = serve(stream, &table, &stop);
                            });
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
            .map_err(|e| CollectiveError::Store(e.to_string()))?;
        Ok(TcpStoreServer { addr, stop, thread: Some(thread) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for TcpStoreServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn read_u32(s: &mut impl Read) -> std::io::Result<u32> {
    let mut b = [0; 4];
    s.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_bounded(s: &mut impl Read, limit: usize, what: &str) -> std::io::Result<Vec<u8>> {
    let n = read_u32(s)? as usize;
    if n > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{what} of {n} bytes is over the {limit}-byte limit"),
        ));
    }
    let mut v = vec![0; n];
    s.read_exact(&mut v)?;
    Ok(v)
}

fn reply(s: &mut TcpStream, status: u8, payload: &[u8]) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(status);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    s.write_all(&out)
}

fn serve(mut s: TcpStream, table: &Table, stop: &AtomicBool) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    s.set_nonblocking(false)?;
    loop {
        // Idle connections are fine; poll for the first byte so that a stopped server lets go.
        s.set_read_timeout(Some(Duration::from_millis(200)))?;
        let mut op = [0u8; 1];
        match s.read(&mut op) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                if stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
                continue;
            }
            Err(e) => return Err(e),
        }
        s.set_read_timeout(Some(FRAME_TIMEOUT))?;
        let key = match read_bounded(&mut s, MAX_KEY, "key") {
            Ok(k) => k,
            Err(e) => return reply(&mut s, 2, e.to_string().as_bytes()),
        };
        let value = match read_bounded(&mut s, MAX_VALUE, "value") {
            Ok(v) => v,
            Err(e) => return reply(&mut s, 2, e.to_string().as_bytes()),
        };
        let mut t = [0; 8];
        s.read_exact(&mut t)?;
        let timeout = Duration::from_millis(u64::from_le_bytes(t)).min(MAX_WAIT);
        let Ok(key) = String::from_utf8(key) else {
            return reply(&mut s, 2, b"keys must be UTF-8");
        };
        match op[0] {
            OP_SET => {
                table.set(&key, &value);
                reply(&mut s, 0, &[])?
            }
            OP_GET => match table.get(&key, timeout) {
                Some(v) => reply(&mut s, 0, &v)?,
                None => reply(&mut s, 1, &[])?,
            },
            OP_TRY_GET => match table.map.lock().unwrap().get(&key).cloned() {
                Some(v) => reply(&mut s, 0, &v)?,
                None => reply(&mut s, 1, &[])?,
            },
            OP_ADD => {
                let delta = std::str::from_utf8(&value).ok().and_then(|v| v.parse::<i64>().ok());
                match delta.map(|d| table.add(&key, d)) {
                    Some(Ok(n)) => reply(&mut s, 0, n.to_string().as_bytes())?,
                    Some(Err(e)) => reply(&mut s, 2, e.as_bytes())?,
                    None => reply(&mut s, 2, b"add takes a decimal integer")?,
                }
            }
            OP_DELETE_PREFIX => {
                let n = table.delete_prefix(&key);
                reply(&mut s, 0, n.to_string().as_bytes())?
            }
            other => return reply(&mut s, 2, format!("unknown store op {other}").as_bytes()),
        }
    }
}

/// A client of a [`TcpStoreServer`]. Calls from several threads are serialized.
pub struct TcpStore {
    addr: SocketAddr,
    conn: Mutex<TcpStream>,
}

impl TcpStore {
    /// Connects, retrying until `timeout` (the server may still be starting).
    pub fn connect(addr: impl ToSocketAddrs, timeout: Duration) -> Result<Self> {
        let addrs: Vec<SocketAddr> =
            addr.to_socket_addrs().map_err(|e| CollectiveError::Store(format!("bad store address: {e}")))?.collect();
        let Some(&addr) = addrs.first() else {
            return Err(CollectiveError::Store("the store address resolves to nothing".into()));
        };
        let deadline = Instant::now() + timeout;
        loop {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                Ok(s) => {
                    s.set_nodelay(true).map_err(|e| CollectiveError::Store(e.to_string()))?;
                    return Ok(TcpStore { addr, conn: Mutex::new(s) });
                }
                Err(e) if Instant::now() >= deadline => {
                    return Err(CollectiveError::Store(format!("cannot reach the store at {addr} within {timeout:?}: {e}")))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn call(&self, op: u8, key: &str, value: &[u8], timeout: Duration) -> Result<Option<Vec<u8>>> {
        check_sizes(key, value)?;
        let mut req = Vec::with_capacity(17 + key.len() + value.len());
        req.push(op);
        req.extend_from_slice(&(key.len() as u32).to_le_bytes());
        req.extend_from_slice(key.as_bytes());
        req.extend_from_slice(&(value.len() as u32).to_le_bytes());
        req.extend_from_slice(value);
        req.extend_from_slice(&(timeout.as_millis().min(u64::MAX as u128) as u64).to_le_bytes());
        let mut s = self.conn.lock().unwrap();
        let err = |e: std::io::Error| CollectiveError::Store(format!("store at {} failed: {e}", self.addr));
        // A dead server must not hang the caller: give it the wait plus slack.
        s.set_read_timeout(Some(timeout + Duration::from_secs(10))).map_err(err)?;
        s.write_all(&req).map_err(err)?;
        let mut status = [0u8; 1];
        s.read_exact(&mut status).map_err(err)?;
        let payload = read_bounded(&mut *s, MAX_VALUE, "reply").map_err(err)?;
        match status[0] {
            0 => Ok(Some(payload)),
            1 => Ok(None),
            _ => Err(CollectiveError::Store(String::from_utf8_lossy(&payload).into_owned())),
        }
    }
}

impl Store for TcpStore {
    fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        self.call(OP_SET, key, value, Duration::ZERO).map(|_| ())
    }
    fn get(&self, key: &str, timeout: Duration) -> Result<Vec<u8>> {
        self.call(OP_GET, key, &[], timeout)?
            .ok_or_else(|| CollectiveError::Store(format!("`{key}` was not set within {timeout:?}")))
    }
    fn try_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.call(OP_TRY_GET, key, &[], Duration::ZERO)
    }
    fn add(&self, key: &str, delta: i64) -> Result<i64> {
        let v = self.call(OP_ADD, key, delta.to_string().as_bytes(), Duration::ZERO)?.unwrap_or_default();
        String::from_utf8_lossy(&v).parse().map_err(|_| CollectiveError::Store("add returned a non-integer".into()))
    }
    fn delete_prefix(&self, prefix: &str) -> Result<usize> {
        let v = self.call(OP_DELETE_PREFIX, prefix, &[], Duration::ZERO)?.unwrap_or_default();
        String::from_utf8_lossy(&v).parse().map_err(|_| CollectiveError::Store("delete returned a non-integer".into()))
    }
}

impl<S: Store + ?Sized> Store for Arc<S> {
    fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        (**self).set(key, value)
    }
    fn get(&self, key: &str, timeout: Duration) -> Result<Vec<u8>> {
        (**self).get(key, timeout)
    }
    fn try_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        (**self).try_get(key)
    }
    fn add(&self, key: &str, delta: i64) -> Result<i64> {
        (**self).add(key, delta)
    }
    fn delete_prefix(&self, prefix: &str) -> Result<usize> {
        (**self).delete_prefix(prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(s: &dyn Store) {
        s.set("a", b"1").unwrap();
        assert_eq!(s.get("a", Duration::from_secs(1)).unwrap(), b"1");
        assert_eq!(s.try_get("nope").unwrap(), None);
        assert!(s.get("nope", Duration::from_millis(50)).unwrap_err().to_string().contains("not set"));
        assert_eq!(s.add("n", 2).unwrap(), 2);
        assert_eq!(s.add("n", 3).unwrap(), 5);
        assert!(s.add("a", 1).is_ok());
        s.set("p/x", b"").unwrap();
        s.set("p/y", b"").unwrap();
        assert_eq!(s.delete_prefix("p/").unwrap(), 2);
        assert!(s.set(&"k".repeat(MAX_KEY + 1), b"").unwrap_err().to_string().contains("limit"));
    }

    #[test]
    fn mem_store() {
        exercise(&MemStore::new());
    }

    #[test]
    fn tcp_store_and_blocking_get() {
        let server = TcpStoreServer::bind("127.0.0.1:0").unwrap();
        let a = TcpStore::connect(server.addr(), Duration::from_secs(5)).unwrap();
        exercise(&a);
        let addr = server.addr();
        let t = std::thread::spawn(move || {
            let b = TcpStore::connect(addr, Duration::from_secs(5)).unwrap();
            std::thread::sleep(Duration::from_millis(50));
            b.set("late", b"v").unwrap();
        });
        assert_eq!(a.get("late", Duration::from_secs(5)).unwrap(), b"v");
        t.join().unwrap();
    }

    #[test]
    fn tcp_store_refuses_oversized_frames() {
        let server = TcpStoreServer::bind("127.0.0.1:0").unwrap();
        let mut raw = TcpStream::connect(server.addr()).unwrap();
        let mut req = vec![OP_SET];
        req.extend_from_slice(&u32::MAX.to_le_bytes());
        raw.write_all(&req).unwrap();
        let mut status = [0u8; 1];
        raw.read_exact(&mut status).unwrap();
        assert_eq!(status[0], 2);
        let msg = read_bounded(&mut raw, 1 << 20, "reply").unwrap();
        assert!(String::from_utf8_lossy(&msg).contains("limit"));
        // The server still serves others.
        let c = TcpStore::connect(server.addr(), Duration::from_secs(5)).unwrap();
        c.set("ok", b"1").unwrap();
    }
}
