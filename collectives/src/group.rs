//! What every backend shares: the group's identity, its deadline, its sequence numbers and
//! the progress each rank publishes, so that a timeout names the ranks that never arrived.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::{CollectiveError, Result, Store};

/// Which transport a group uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Backend {
    /// TCP between ranks on any hosts, bandwidth-optimal ring algorithms.
    Ring,
    /// Shared memory between ranks on one host.
    Shm,
    /// NCCL on CUDA devices (the `nccl` feature and a GPU with libnccl).
    Nccl,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Ring => "ring",
            Backend::Shm => "shm",
            Backend::Nccl => "nccl",
        })
    }
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "ring" | "tcp" | "gloo" => Ok(Backend::Ring),
            "shm" => Ok(Backend::Shm),
            "nccl" => Ok(Backend::Nccl),
            _ => Err(format!("`{s}` is not a backend: use ring, shm or nccl")),
        }
    }
}

/// How to create one rank's member of a group.
#[derive(Debug, Clone)]
pub struct GroupOptions {
    /// The group's name; ranks with the same name (and generation) form one group.
    pub name: String,
    pub rank: usize,
    pub world_size: usize,
    pub backend: Backend,
    /// The deadline of every collective and of the rendezvous.
    pub timeout: Duration,
    /// Bumped to create a group again after a failure: the old generation's keys and
    /// connections are never mixed with the new ones.
    pub generation: u64,
    /// The address the ring backend listens on (default `127.0.0.1`; a cluster passes the
    /// node's address).
    pub host: String,
    /// The CUDA device of this rank for NCCL (`None`: device 0).
    pub device: Option<usize>,
}

impl GroupOptions {
    pub fn new(name: impl Into<String>, rank: usize, world_size: usize) -> Self {
        GroupOptions {
            name: name.into(),
            rank,
            world_size,
            backend: Backend::Ring,
            timeout: Duration::from_secs(120),
            generation: 0,
            host: std::env::var("FLARE_COLLECTIVE_HOST").unwrap_or_else(|_| "127.0.0.1".into()),
            device: None,
        }
    }
    pub fn backend(mut self, b: Backend) -> Self {
        self.backend = b;
        self
    }
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }
    pub fn generation(mut self, g: u64) -> Self {
        self.generation = g;
        self
    }
    pub fn host(mut self, h: impl Into<String>) -> Self {
        self.host = h.into();
        self
    }
    pub fn device(mut self, d: usize) -> Self {
        self.device = Some(d);
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.world_size == 0 {
            return Err(CollectiveError::InvalidArgument("world_size must be at least 1".into()));
        }
        if self.rank >= self.world_size {
            return Err(CollectiveError::InvalidArgument(format!(
                "rank {} is out of range for world size {} (ranks are 0..{})",
                self.rank, self.world_size, self.world_size
            )));
        }
        if self.name.is_empty() || self.name.contains('/') {
            return Err(CollectiveError::InvalidArgument(format!(
                "group name `{}` must be non-empty and without `/`",
                self.name
            )));
        }
        if self.timeout.is_zero() {
            return Err(CollectiveError::InvalidArgument("timeout must be above zero".into()));
        }
        Ok(())
    }

    pub(crate) fn prefix(&self) -> String {
        format!("flare/collective/{}/{}", self.name, self.generation)
    }
}

type Hook = Box<dyn Fn() + Send + Sync>;

/// Lets another thread abort a group that may be blocked in a collective.
#[derive(Clone, Default)]
pub struct AbortHandle {
    pub(crate) flag: Arc<AtomicBool>,
    pub(crate) fds: Arc<Mutex<Vec<i32>>>,
    hooks: Arc<Mutex<Vec<Hook>>>,
}

impl std::fmt::Debug for AbortHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AbortHandle").field("aborted", &self.is_aborted()).finish()
    }
}

impl AbortHandle {
    /// Fails the collective in progress (and every later one) with [`CollectiveError::Aborted`],
    /// and breaks this rank's connections so that its peers fail at once instead of at their deadline.
    pub fn abort(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.shutdown_sockets();
        for hook in self.hooks.lock().unwrap().iter() {
            hook();
        }
    }

    /// Breaks this rank's connections so that peers blocked on it fail now.
    pub(crate) fn shutdown_sockets(&self) {
        for fd in self.fds.lock().unwrap().iter() {
            // SAFETY: shutdown on a socket we own; a closed fd gives EBADF, which is harmless.
            unsafe { libc::shutdown(*fd, libc::SHUT_RDWR) };
        }
    }

    /// Runs `hook` when the group is aborted (a backend tells its peers).
    pub(crate) fn on_abort(&self, hook: Hook) {
        self.hooks.lock().unwrap().push(hook);
    }
    pub fn is_aborted(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }
}

struct Progress {
    latest: Mutex<(u64, bool)>,
    changed: Condvar,
}

/// The part of a group every backend has.
pub(crate) struct GroupCore {
    pub opts: GroupOptions,
    pub prefix: String,
    pub store: Arc<dyn Store>,
    /// The number of group-wide collectives entered so far.
    pub seq: u64,
    /// Set when a collective failed: the connections are in an unknown state.
    pub broken: Option<String>,
    pub abort: AbortHandle,
    progress: Arc<Progress>,
    publisher: Option<std::thread::JoinHandle<()>>,
}

impl GroupCore {
    pub fn new(opts: GroupOptions, store: Arc<dyn Store>) -> Result<Self> {
        opts.validate()?;
        let prefix = opts.prefix();
        let progress = Arc::new(Progress { latest: Mutex::new((0, false)), changed: Condvar::new() });
        store.set(&format!("{prefix}/progress/{}", opts.rank), b"0")?;
        // Publishing progress off the critical path: a collective only bumps a counter; this
        // thread writes the newest value to the store, at most every few milliseconds.
        let publisher = if opts.world_size > 1 {
            let (p, s, key) = (progress.clone(), store.clone(), format!("{prefix}/progress/{}", opts.rank));
            let interval = (opts.timeout / 50).clamp(Duration::from_millis(1), Duration::from_millis(20));
            Some(
                std::thread::Builder::new()
                    .name("flare-coll-progress".into())
                    .spawn(move || {
                        let mut published = 0;
                        loop {
                            let (seq, stop) = {
                                let mut g = p.latest.lock().unwrap();
                                while g.0 == published && !g.1 {
                                    g = p.changed.wait(g).unwrap();
                                }
                                *g
                            };
                            if seq != published {
                                if s.set(&key, seq.to_string().as_bytes()).is_err() {
                                    return;
                                }
                                published = seq;
                            }
                            if stop {
                                return;
                            }
                            std::thread::sleep(interval);
                        }
                    })
                    .map_err(|e| CollectiveError::Io(e.to_string()))?,
            )
        } else {
            None
        };
        Ok(GroupCore { opts, prefix, store, seq: 0, broken: None, abort: AbortHandle::default(), progress, publisher })
    }

    pub fn rank(&self) -> usize {
        self.opts.rank
    }
    pub fn world(&self) -> usize {
        self.opts.world_size
    }
    pub fn name(&self) -> &str {
        &self.opts.name
    }

    /// Whether the group can still communicate (not aborted, not broken by a failure).
    pub fn ready(&self) -> Result<()> {
        if self.abort.is_aborted() {
            return Err(CollectiveError::Aborted { group: self.opts.name.clone() });
        }
        if let Some(cause) = &self.broken {
            return Err(CollectiveError::Broken { group: self.opts.name.clone(), cause: cause.clone() });
        }
        Ok(())
    }

    /// Checks that the group can run a collective, numbers it and publishes that this rank arrived.
    pub fn enter(&mut self) -> Result<u64> {
        self.ready()?;
        self.seq += 1;
        let mut g = self.progress.latest.lock().unwrap();
        g.0 = self.seq;
        drop(g);
        self.progress.changed.notify_one();
        Ok(self.seq)
    }

    /// When the current collective has to finish, leaving a tenth of the timeout (at most 2 s)
    /// to find out who is missing, so the error itself arrives within the deadline.
    pub fn io_deadline(&self, start: Instant) -> Instant {
        let t = self.opts.timeout;
        start + t - (t / 10).min(Duration::from_secs(2))
    }

    /// The ranks that have not entered collective `seq`, from their published progress.
    pub fn missing(&self, seq: u64, budget: Duration) -> Vec<usize> {
        let until = Instant::now() + budget;
        // Give the peers' publishers one interval to catch up.
        std::thread::sleep((budget / 4).min(Duration::from_millis(50)));
        let mut missing = Vec::new();
        for r in (0..self.world()).filter(|r| *r != self.rank()) {
            if Instant::now() > until {
                break;
            }
            let key = format!("{}/progress/{r}", self.prefix);
            let seen = self
                .store
                .try_get(&key)
                .ok()
                .flatten()
                .and_then(|v| String::from_utf8(v).ok())
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0);
            if seen < seq {
                missing.push(r);
            }
        }
        missing
    }

    /// Turns a transport failure into the error the caller sees, and marks the group broken.
    pub fn fail(&mut self, op: &'static str, seq: u64, start: Instant, fail: crate::ring::Fail) -> CollectiveError {
        use crate::ring::Fail;
        let group = self.opts.name.clone();
        let left = (start + self.opts.timeout).saturating_duration_since(Instant::now());
        let err = match fail {
            Fail::Aborted => CollectiveError::Aborted { group },
            Fail::Timeout { detail } => {
                let missing = self.missing(seq, left);
                CollectiveError::Timeout { group, op, seq, waited: start.elapsed(), missing, detail }
            }
            Fail::Peer { peer, detail } => {
                let missing = self.missing(seq, left.min(Duration::from_millis(500)));
                CollectiveError::PeerFailed { group, op, seq, peer, missing, detail }
            }
            Fail::Mismatch(detail) => CollectiveError::Mismatch { group, detail },
        };
        if !matches!(err, CollectiveError::Aborted { .. }) {
            self.broken = Some(err.to_string());
            // Peers blocked on us fail now rather than at their own deadline.
            self.abort.shutdown_sockets();
        }
        err
    }
}

impl Drop for GroupCore {
    fn drop(&mut self) {
        self.progress.latest.lock().unwrap().1 = true;
        self.progress.changed.notify_one();
        if let Some(t) = self.publisher.take() {
            let _ = t.join();
        }
    }
}

/// The collectives' wire codes, shared by the backends' mismatch checks.
pub(crate) mod op {
    pub const ALL_REDUCE: u8 = 1;
    pub const BROADCAST: u8 = 2;
    pub const ALL_GATHER: u8 = 3;
    pub const REDUCE_SCATTER: u8 = 4;
    pub const BARRIER: u8 = 5;
    pub const P2P: u8 = 6;

    /// `all_reduce #3 of 10 float (sum)`: how mismatch errors name a rank's call. `arg` is the
    /// reduce op's code, or the root of a broadcast.
    pub fn describe(op: u8, seq: u64, count: u64, dtype: u8, arg: u64) -> String {
        let name = ["?", "all_reduce", "broadcast", "all_gather", "reduce_scatter", "barrier", "send/recv"]
            .get(op as usize)
            .copied()
            .unwrap_or("unknown collective");
        let dtype = crate::DType::from_u8(dtype).map(|d| d.name()).unwrap_or("?");
        let mut s = format!("{name} #{seq} of {count} {dtype}");
        if op == BROADCAST {
            s += &format!(" from root {arg}");
        } else if let Some(r) = crate::ReduceOp::from_u8(arg as u8) {
            s += &format!(" ({})", r.name());
        }
        s
    }
}

/// The `Communicator` methods every backend answers from its `GroupCore`.
macro_rules! group_accessors {
    ($backend:expr) => {
        fn rank(&self) -> usize {
            self.core.rank()
        }
        fn world_size(&self) -> usize {
            self.core.world()
        }
        fn backend(&self) -> $crate::Backend {
            $backend
        }
        fn group_name(&self) -> &str {
            self.core.name()
        }
        fn abort_handle(&self) -> $crate::AbortHandle {
            self.core.abort.clone()
        }
    };
}
pub(crate) use group_accessors;
