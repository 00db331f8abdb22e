//! The `shm` backend: ranks on one host exchange data through one shared-memory file.
//!
//! Layout: a control page (a futex word, each rank's arrival counter and the descriptor of
//! the collective it entered, one cache line each), then two sets of one slot per rank
//! (double buffering, so consecutive chunks need no extra barrier), then a mailbox per
//! ordered pair of ranks for `send`/`recv`.
//!
//! All-reduce, per chunk: every rank copies its chunk into its slot; barrier; rank `r` reduces
//! part `r` of every slot into its own slot; barrier; every rank copies all reduced parts
//! out. Waiting spins briefly, then sleeps on a futex, so oversubscribed hosts stay usable.
//! Rank 0 creates the file and unlinks it once everyone has mapped it, so nothing is left
//! behind however the ranks end.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use memmap2::MmapMut;

use crate::check;
use crate::dtype::{chunk_range, finish_mean_bytes, reduce_bytes};
use crate::group::{group_accessors, op, GroupCore};
use crate::ring::{fnv, Fail};
use crate::{Backend, Buf, BufMut, CollectiveError, Communicator, DType, GroupOptions, ReduceOp, Result, Store};

const MAGIC: u64 = 0x464c_4152_4553_484d; // "FLARESHM"
/// Bytes per rank per buffer set: one chunk of a collective.
const SLOT_BYTES: usize = 1 << 20;
/// Bytes per mailbox (one per ordered pair of ranks).
const MAILBOX_BYTES: usize = 256 << 10;
const LINE: usize = 64;

struct Layout {
    n: usize,
    data: usize,
    mail: usize,
    total: usize,
}

impl Layout {
    fn new(n: usize) -> Layout {
        // Line 0: magic, world; line 1: futex word and abort word; then per rank two lines
        // (arrival counter, two banks of collective descriptors); then per ordered pair one
        // line of mailbox control.
        let control = (2 + 2 * n + n * n) * LINE;
        let data = control.div_ceil(4096) * 4096;
        let mail = data + 2 * n * SLOT_BYTES;
        Layout { n, data, mail, total: mail + n * n * MAILBOX_BYTES }
    }
}

/// One rank's member of a shared-memory group.
pub struct ShmComm {
    core: GroupCore,
    map: Arc<MmapMut>,
    layout: Layout,
    /// Barriers passed so far (each rank's arrival counter).
    bseq: u64,
    /// Which buffer set the next chunk uses.
    parity: usize,
}

/// Host identity: ranks must share a kernel to share memory.
fn host_id() -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}/{}", host.trim(), boot.trim())
}

fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec { tv_sec: timeout.as_secs() as libc::time_t, tv_nsec: timeout.subsec_nanos() as libc::c_long };
    // SAFETY: `word` is a live, aligned u32 in shared memory; FUTEX_WAIT only reads it.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAIT, expected, &ts as *const libc::timespec, 0usize, 0u32);
    }
}

fn futex_wake(word: &AtomicU32) {
    // SAFETY: as above.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX, 0usize, 0usize, 0u32);
    }
}

impl ShmComm {
    pub fn new(opts: GroupOptions, store: Arc<dyn Store>) -> Result<Self> {
        let core = GroupCore::new(opts, store)?;
        let (rank, n) = (core.rank(), core.world());
        let group = core.name().to_string();
        let rdv = |detail: String| CollectiveError::Rendezvous { group: group.clone(), detail };
        let layout = Layout::new(n);
        let key = format!("{}/shm", core.prefix);
        let me = host_id();
        let dir = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm".into() } else { std::env::temp_dir() };
        let (file, path) = if rank == 0 {
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
            let path = std::path::Path::new(&dir).join(format!(
                "flare-coll-{}-{:x}-{nanos:x}",
                std::process::id(),
                fnv(core.prefix.as_bytes())
            ));
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| rdv(format!("cannot create {}: {e}", path.display())))?;
            f.set_len(layout.total as u64).map_err(|e| rdv(format!("cannot size {}: {e}", path.display())))?;
            let value = format!("{}\n{}", path.display(), me);
            core.store.set(&key, value.as_bytes())?;
            (f, path)
        } else {
            let v = core
                .store
                .get(&key, core.opts.timeout)
                .map_err(|_| rdv(format!("rank 0 never created the shared memory within {:?}", core.opts.timeout)))?;
            let v = String::from_utf8_lossy(&v).to_string();
            let (path, host) = v.split_once('\n').unwrap_or((&v, ""));
            if host != me {
                return Err(CollectiveError::Unsupported(format!(
                    "the shm backend needs every rank on one host: rank 0 is on `{host}`, rank {rank} on `{me}`; use the ring backend"
                )));
            }
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(|e| rdv(format!("cannot open rank 0's shared memory {path}: {e}")))?;
            (f, path.into())
        };
        // SAFETY: the file is ours and sized; other ranks map the same file, and all access to
        // the shared region goes through atomics or is ordered by the barriers below.
        let mut map = unsafe { MmapMut::map_mut(file.as_raw_fd()) }.map_err(|e| rdv(format!("mmap: {e}")))?;
        if rank == 0 {
            map[0..8].copy_from_slice(&MAGIC.to_le_bytes());
            map[8..16].copy_from_slice(&(n as u64).to_le_bytes());
        }
        let map = Arc::new(map);
        let mut comm = ShmComm { core, map, layout, bseq: 0, parity: 0 };
        // Everyone has mapped the file once this barrier passes; then the name can go.
        let start = Instant::now();
        let res = comm.barrier_wait(start);
        if rank == 0 {
            let _ = std::fs::remove_file(&path);
        }
        res.map_err(|f| match f {
            Fail::Timeout { .. } => {
                let missing: Vec<usize> = (0..n).filter(|q| comm.arrive(*q).load(Ordering::SeqCst) < 1).collect();
                rdv(format!("ranks {missing:?} never mapped the shared memory within {:?}", comm.core.opts.timeout))
            }
            other => rdv(format!("{other:?}")),
        })?;
        if comm.map[0..8] != MAGIC.to_le_bytes() || comm.map[8..16] != (n as u64).to_le_bytes() {
            return Err(CollectiveError::Mismatch { group, detail: "rank 0's shared memory has another world size".into() });
        }
        // Aborting tells the peers through the shared abort word and wakes them.
        let map2 = comm.map.clone();
        let me1 = rank as u32 + 1;
        comm.core.abort.on_abort(Box::new(move || {
            let w = word(&map2, LINE + 4);
            w.store(me1, Ordering::SeqCst);
            let e = word(&map2, LINE);
            e.fetch_add(1, Ordering::SeqCst);
            futex_wake(e);
        }));
        Ok(comm)
    }

    fn epoch(&self) -> &AtomicU32 {
        word(&self.map, LINE)
    }
    fn aborted_by(&self) -> u32 {
        word(&self.map, LINE + 4).load(Ordering::SeqCst)
    }
    fn arrive(&self, q: usize) -> &AtomicU64 {
        word64(&self.map, (2 + 2 * q) * LINE)
    }
    /// Descriptor word `i` of rank `q`'s collective number `seq`. Two banks, so a rank that
    /// runs ahead into the next collective never overwrites what a slower rank still reads.
    fn desc(&self, q: usize, seq: u64, i: usize) -> &AtomicU64 {
        word64(&self.map, (2 + 2 * q) * LINE + 8 + 32 * (seq as usize % 2) + 8 * i)
    }
    fn mail_ctl(&self, s: usize, d: usize) -> (&AtomicU32, &AtomicU64) {
        let at = (2 + 2 * self.layout.n + s * self.layout.n + d) * LINE;
        (word(&self.map, at), word64(&self.map, at + 8))
    }

    fn slot(&self, set: usize, q: usize) -> *mut u8 {
        // SAFETY: inside the mapping's data region.
        unsafe { (self.map.as_ptr() as *mut u8).add(self.layout.data + (set * self.layout.n + q) * SLOT_BYTES) }
    }
    fn mailbox(&self, s: usize, d: usize) -> *mut u8 {
        // SAFETY: inside the mapping's mailbox region.
        unsafe { (self.map.as_ptr() as *mut u8).add(self.layout.mail + (s * self.layout.n + d) * MAILBOX_BYTES) }
    }

    fn check_abort(&self) -> std::result::Result<(), Fail> {
        if self.core.abort.is_aborted() {
            return Err(Fail::Aborted);
        }
        match self.aborted_by() {
            0 => Ok(()),
            who => Err(Fail::Peer { peer: who as usize - 1, detail: "it aborted the group".into() }),
        }
    }

    /// Waits until `cond` holds, spinning briefly and then sleeping on the futex.
    fn wait_until(&self, deadline: Instant, mut cond: impl FnMut() -> bool) -> std::result::Result<(), Fail> {
        for _ in 0..64 {
            if cond() {
                return Ok(());
            }
            std::hint::spin_loop();
        }
        loop {
            let e = self.epoch().load(Ordering::SeqCst);
            if cond() {
                return Ok(());
            }
            self.check_abort()?;
            let now = Instant::now();
            if now >= deadline {
                return Err(Fail::Timeout { detail: String::new() });
            }
            futex_wait(self.epoch(), e, (deadline - now).min(Duration::from_millis(100)));
        }
    }

    fn bump(&self) {
        self.epoch().fetch_add(1, Ordering::SeqCst);
        futex_wake(self.epoch());
    }

    /// A barrier over the shared arrival counters.
    fn barrier_wait(&mut self, start: Instant) -> std::result::Result<(), Fail> {
        self.bseq += 1;
        let b = self.bseq;
        let (r, n) = (self.core.rank(), self.core.world());
        self.arrive(r).store(b, Ordering::SeqCst);
        let all = |c: &ShmComm| (0..n).all(|q| c.arrive(q).load(Ordering::SeqCst) >= b);
        if all(self) {
            self.bump();
            return Ok(());
        }
        let deadline = self.core.io_deadline(start);
        self.wait_until(deadline, || all(self))
    }

    fn fail(&mut self, op: &'static str, seq: u64, start: Instant, f: Fail) -> CollectiveError {
        let group = self.core.name().to_string();
        let b = self.bseq;
        let missing: Vec<usize> = (0..self.core.world()).filter(|q| self.arrive(*q).load(Ordering::SeqCst) < b).collect();
        let err = match f {
            Fail::Timeout { .. } => {
                CollectiveError::Timeout { group, op, seq, waited: start.elapsed(), missing, detail: "shared memory".into() }
            }
            Fail::Peer { peer, detail } => CollectiveError::PeerFailed { group, op, seq, peer, missing, detail },
            Fail::Mismatch(detail) => CollectiveError::Mismatch { group, detail },
            Fail::Aborted => return CollectiveError::Aborted { group },
        };
        self.core.broken = Some(err.to_string());
        err
    }

    /// Publishes this rank's descriptor, passes the first barrier and checks that every rank
    /// entered the same collective.
    fn enter_checked(
        &mut self,
        code: u8,
        dtype: DType,
        count: usize,
        extra: u64,
        start: Instant,
    ) -> std::result::Result<(), Fail> {
        let r = self.core.rank();
        let d = [code as u64, dtype as u64, count as u64, extra | (self.core.seq << 16)];
        let seq = self.core.seq;
        for (i, v) in d.iter().enumerate() {
            self.desc(r, seq, i).store(*v, Ordering::SeqCst);
        }
        self.barrier_wait(start)?;
        for q in 0..self.core.world() {
            let theirs: Vec<u64> = (0..4).map(|i| self.desc(q, seq, i).load(Ordering::SeqCst)).collect();
            if theirs != d {
                return Err(Fail::Mismatch(format!(
                    "this rank called {}, rank {q} called {}",
                    describe(&d),
                    describe(&[theirs[0], theirs[1], theirs[2], theirs[3]])
                )));
            }
        }
        Ok(())
    }

    fn next_set(&mut self) -> usize {
        self.parity ^= 1;
        self.parity
    }

    fn all_reduce_inner(&mut self, buf: &mut [u8], dtype: DType, op: ReduceOp, start: Instant) -> std::result::Result<(), Fail> {
        let (r, n, es) = (self.core.rank(), self.core.world(), dtype.size());
        let count = buf.len() / es;
        self.enter_checked(op::ALL_REDUCE, dtype, count, op as u64, start)?;
        let per = SLOT_BYTES / es;
        let mut off = 0;
        while off < count {
            let l = per.min(count - off);
            let set = self.next_set();
            let bytes = &mut buf[off * es..(off + l) * es];
            // SAFETY: our own slot; no other rank reads it until the barrier below.
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.slot(set, r), bytes.len()) };
            self.barrier_wait(start)?;
            let mine = chunk_range(l, n, r);
            let (a, b) = (mine.start * es, mine.end * es);
            // SAFETY: part `r` of our slot is written only by us; other ranks read only their own parts of it.
            let acc = unsafe { std::slice::from_raw_parts_mut(self.slot(set, r).add(a), b - a) };
            for q in (0..n).filter(|q| *q != r) {
                // SAFETY: part `r` of rank q's slot is final since the barrier and read-only now.
                let src = unsafe { std::slice::from_raw_parts(self.slot(set, q).add(a), b - a) };
                reduce_bytes(dtype, op, acc, src);
            }
            if op == ReduceOp::Mean {
                finish_mean_bytes(dtype, acc, n);
            }
            self.barrier_wait(start)?;
            for q in 0..n {
                let part = chunk_range(l, n, q);
                let (a, b) = (part.start * es, part.end * es);
                // SAFETY: reduced parts are read-only until the next use of this set, two chunks on.
                unsafe { std::ptr::copy_nonoverlapping(self.slot(set, q).add(a), bytes.as_mut_ptr().add(a), b - a) };
            }
            off += l;
        }
        Ok(())
    }
}

fn describe(d: &[u64; 4]) -> String {
    op::describe(d[0] as u8, d[3] >> 16, d[2], d[1] as u8, d[3] & 0xffff)
}

fn word(map: &MmapMut, at: usize) -> &AtomicU32 {
    // SAFETY: `at` is 4-aligned inside the control page; AtomicU32 has u32's layout.
    unsafe { &*(map.as_ptr().add(at) as *const AtomicU32) }
}
fn word64(map: &MmapMut, at: usize) -> &AtomicU64 {
    // SAFETY: `at` is 8-aligned inside the control page.
    unsafe { &*(map.as_ptr().add(at) as *const AtomicU64) }
}

impl Communicator for ShmComm {
    group_accessors!(Backend::Shm);

    fn all_reduce(&mut self, mut buf: BufMut<'_>, op: ReduceOp) -> Result<()> {
        let seq = self.core.enter()?;
        let start = Instant::now();
        let dtype = buf.dtype();
        if self.core.world() == 1 {
            return Ok(());
        }
        self.all_reduce_inner(buf.as_bytes_mut(), dtype, op, start).map_err(|f| self.fail("all_reduce", seq, start, f))
    }

    fn broadcast(&mut self, mut buf: BufMut<'_>, root: usize) -> Result<()> {
        let n = self.core.world();
        check::root(root, n)?;
        let seq = self.core.enter()?;
        let start = Instant::now();
        if n == 1 {
            return Ok(());
        }
        let (dtype, r) = (buf.dtype(), self.core.rank());
        let bytes = buf.as_bytes_mut();
        let res = (|| {
            self.enter_checked(op::BROADCAST, dtype, bytes.len() / dtype.size(), root as u64, start)?;
            for chunk in bytes.chunks_mut(SLOT_BYTES) {
                let set = self.next_set();
                if r == root {
                    // SAFETY: the root's slot; readers wait for the barrier.
                    unsafe { std::ptr::copy_nonoverlapping(chunk.as_ptr(), self.slot(set, root), chunk.len()) };
                }
                self.barrier_wait(start)?;
                if r != root {
                    // SAFETY: final since the barrier; rewritten only two chunks on.
                    unsafe { std::ptr::copy_nonoverlapping(self.slot(set, root), chunk.as_mut_ptr(), chunk.len()) };
                }
            }
            Ok(())
        })();
        res.map_err(|f| self.fail("broadcast", seq, start, f))
    }

    fn all_gather(&mut self, input: Buf<'_>, mut output: BufMut<'_>) -> Result<()> {
        let n = self.core.world();
        check::all_gather(&input, &output, n)?;
        let seq = self.core.enter()?;
        let start = Instant::now();
        let (dtype, r) = (input.dtype(), self.core.rank());
        let inb = input.as_bytes();
        let out = output.as_bytes_mut();
        if n == 1 {
            out.copy_from_slice(inb);
            return Ok(());
        }
        let res = (|| {
            self.enter_checked(op::ALL_GATHER, dtype, input.len(), 0, start)?;
            let mut off = 0;
            while off < inb.len() {
                let l = SLOT_BYTES.min(inb.len() - off);
                let set = self.next_set();
                // SAFETY: our slot; readers wait for the barrier.
                unsafe { std::ptr::copy_nonoverlapping(inb.as_ptr().add(off), self.slot(set, r), l) };
                self.barrier_wait(start)?;
                for q in 0..n {
                    let at = q * inb.len() + off;
                    // SAFETY: final since the barrier.
                    unsafe { std::ptr::copy_nonoverlapping(self.slot(set, q), out.as_mut_ptr().add(at), l) };
                }
                off += l;
            }
            Ok(())
        })();
        res.map_err(|f| self.fail("all_gather", seq, start, f))
    }

    fn reduce_scatter(&mut self, input: Buf<'_>, mut output: BufMut<'_>, op: ReduceOp) -> Result<()> {
        let (n, r) = (self.core.world(), self.core.rank());
        let own = check::reduce_scatter(&input, &output, n, r)?;
        let seq = self.core.enter()?;
        let start = Instant::now();
        let dtype = input.dtype();
        let es = dtype.size();
        let inb = input.as_bytes();
        let out = output.as_bytes_mut();
        if n == 1 {
            out.copy_from_slice(inb);
            return Ok(());
        }
        let res = (|| {
            self.enter_checked(op::REDUCE_SCATTER, dtype, input.len(), op as u64, start)?;
            let (a, b) = (own.start * es, own.end * es);
            let mut off = 0;
            while off < inb.len() {
                let l = (SLOT_BYTES / es * es).min(inb.len() - off);
                let set = self.next_set();
                // SAFETY: our slot; readers wait for the barrier.
                unsafe { std::ptr::copy_nonoverlapping(inb.as_ptr().add(off), self.slot(set, r), l) };
                self.barrier_wait(start)?;
                // The part of this window that is ours.
                let (lo, hi) = (a.max(off), b.min(off + l));
                if lo < hi {
                    let dst = &mut out[lo - a..hi - a];
                    // SAFETY: final since the barrier.
                    dst.copy_from_slice(unsafe { std::slice::from_raw_parts(self.slot(set, r).add(lo - off), hi - lo) });
                    for q in (0..n).filter(|q| *q != r) {
                        // SAFETY: as above.
                        let src = unsafe { std::slice::from_raw_parts(self.slot(set, q).add(lo - off), hi - lo) };
                        reduce_bytes(dtype, op, dst, src);
                    }
                }
                off += l;
            }
            if op == ReduceOp::Mean {
                finish_mean_bytes(dtype, out, n);
            }
            Ok(())
        })();
        res.map_err(|f| self.fail("reduce_scatter", seq, start, f))
    }

    fn barrier(&mut self) -> Result<()> {
        let seq = self.core.enter()?;
        let start = Instant::now();
        if self.core.world() == 1 {
            return Ok(());
        }
        self.enter_checked(op::BARRIER, DType::I64, 0, 0, start).map_err(|f| self.fail("barrier", seq, start, f))
    }

    fn send(&mut self, buf: Buf<'_>, dst: usize) -> Result<()> {
        let (n, r) = (self.core.world(), self.core.rank());
        check::peer("send to", dst, r, n)?;
        self.core.ready()?;
        let start = Instant::now();
        let deadline = start + self.core.opts.timeout;
        let bytes = buf.as_bytes();
        let res = (|| {
            let (full, total) = self.mail_ctl(r, dst);
            let mut first = true;
            for chunk in bytes.chunks(MAILBOX_BYTES).chain(bytes.is_empty().then_some(&[][..])) {
                self.wait_until(deadline, || full.load(Ordering::SeqCst) == 0)?;
                // SAFETY: the mailbox is ours to write while `full` is 0.
                unsafe { std::ptr::copy_nonoverlapping(chunk.as_ptr(), self.mailbox(r, dst), chunk.len()) };
                if first {
                    total.store(bytes.len() as u64, Ordering::SeqCst);
                    first = false;
                }
                full.store(chunk.len() as u32 + 1, Ordering::SeqCst);
                self.bump();
            }
            Ok(())
        })();
        res.map_err(|f| self.p2p_fail("send", dst, start, f))
    }

    fn recv(&mut self, mut buf: BufMut<'_>, src: usize) -> Result<()> {
        let (n, r) = (self.core.world(), self.core.rank());
        check::peer("recv from", src, r, n)?;
        self.core.ready()?;
        let start = Instant::now();
        let deadline = start + self.core.opts.timeout;
        let bytes = buf.as_bytes_mut();
        let want = bytes.len();
        let res = (|| {
            let (full, total) = self.mail_ctl(src, r);
            let mut got = 0;
            let mut first = true;
            while first || got < want {
                self.wait_until(deadline, || full.load(Ordering::SeqCst) != 0)?;
                if first {
                    let t = total.load(Ordering::SeqCst) as usize;
                    if t != want {
                        return Err(Fail::Mismatch(format!("rank {src} sent {t} bytes, this rank expects {want}")));
                    }
                    first = false;
                }
                let len = full.load(Ordering::SeqCst) as usize - 1;
                // SAFETY: the sender wrote `len` bytes and waits until `full` is 0 again.
                unsafe { std::ptr::copy_nonoverlapping(self.mailbox(src, r), bytes.as_mut_ptr().add(got), len) };
                got += len;
                full.store(0, Ordering::SeqCst);
                self.bump();
            }
            Ok(())
        })();
        res.map_err(|f| self.p2p_fail("recv", src, start, f))
    }
}

impl ShmComm {
    fn p2p_fail(&mut self, op: &'static str, peer: usize, start: Instant, f: Fail) -> CollectiveError {
        let group = self.core.name().to_string();
        match f {
            Fail::Timeout { .. } => {
                self.core.broken = Some(format!("{op} with rank {peer} timed out"));
                CollectiveError::Timeout {
                    group,
                    op,
                    seq: 0,
                    waited: start.elapsed(),
                    missing: vec![peer],
                    detail: format!(
                        "rank {peer} did not take part in the matching {}",
                        if op == "send" { "recv" } else { "send" }
                    ),
                }
            }
            other => self.fail(op, 0, start, other),
        }
    }
}
