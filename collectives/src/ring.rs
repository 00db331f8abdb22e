//! The `ring` backend: TCP between every pair of ranks, and bandwidth-optimal ring algorithms.
//!
//! All-reduce is a reduce-scatter followed by an all-gather around the ring, `2(n-1)` steps
//! that each move `1/n` of the buffer. Within and across steps the transfer is pipelined: one
//! thread drives non-blocking sockets with `poll`, sends whatever is ready, reduces received
//! bytes as they arrive (through a small cache-resident staging window, with vectorized
//! loops), and starts forwarding a segment as soon as its first reduced bytes exist. Every
//! collective starts with a 32-byte header to the next rank, so ranks that call different
//! collectives (or the same one with different sizes) get [`CollectiveError::Mismatch`]
//! instead of garbage.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::check;
use crate::dtype::{chunk_range, finish_mean_bytes, reduce_bytes};
use crate::group::{group_accessors, op, GroupCore};
use crate::{AbortHandle, Backend, Buf, BufMut, CollectiveError, Communicator, DType, GroupOptions, ReduceOp, Result, Store};

/// Why a transfer stopped.
#[derive(Debug)]
pub(crate) enum Fail {
    Timeout { detail: String },
    Peer { peer: usize, detail: String },
    Mismatch(String),
    Aborted,
}

const HELLO_MAGIC: u32 = 0x464c_5231; // "FLR1"
const HEADER_MAGIC: u32 = 0x464c_4331; // "FLC1"
const STAGING_BYTES: usize = 256 << 10;

/// What a collective announces to its neighbor before its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    op: u8,
    dtype: u8,
    reduce: u8,
    seq: u64,
    count: u64,
    extra: u64,
}

impl Header {
    fn encode(&self) -> [u8; 32] {
        let mut b = [0u8; 32];
        b[0..4].copy_from_slice(&HEADER_MAGIC.to_le_bytes());
        b[4] = self.op;
        b[5] = self.dtype;
        b[6] = self.reduce;
        b[8..16].copy_from_slice(&self.seq.to_le_bytes());
        b[16..24].copy_from_slice(&self.count.to_le_bytes());
        b[24..32].copy_from_slice(&self.extra.to_le_bytes());
        b
    }
    fn decode(b: &[u8]) -> Option<Header> {
        if b.len() != 32 || u32::from_le_bytes(b[0..4].try_into().ok()?) != HEADER_MAGIC {
            return None;
        }
        Some(Header {
            op: b[4],
            dtype: b[5],
            reduce: b[6],
            seq: u64::from_le_bytes(b[8..16].try_into().ok()?),
            count: u64::from_le_bytes(b[16..24].try_into().ok()?),
            extra: u64::from_le_bytes(b[24..32].try_into().ok()?),
        })
    }
    fn describe(&self) -> String {
        let arg = if self.op == op::BROADCAST { self.extra } else { self.reduce as u64 };
        op::describe(self.op, self.seq, self.count, self.dtype, arg)
    }
}

/// Checks the header a peer sent: `(bytes, peer)`.
type HeaderCheck<'a> = &'a mut dyn FnMut(&[u8], usize) -> std::result::Result<(), String>;

/// Who a collective talks to and what moves.
struct Plan {
    send_to: Option<usize>,
    recv_from: Option<usize>,
    sends: Vec<SendItem>,
    recvs: Vec<RecvItem>,
}

struct SendItem {
    data: *const u8,
    len: usize,
    /// May send only as many bytes as recv item `dep` has made final.
    dep: Option<usize>,
}

#[derive(Clone, Copy)]
enum Mode {
    Copy,
    Reduce(DType, ReduceOp),
    Header,
}

struct RecvItem {
    data: *mut u8,
    len: usize,
    mode: Mode,
}

/// One rank's member of a ring group.
pub struct RingComm {
    core: GroupCore,
    /// `peers[r]`: the connection to rank `r` (`None` for this rank).
    peers: Vec<Option<TcpStream>>,
    staging: Vec<u64>,
    scratch: Vec<u64>,
}

// SAFETY: the raw pointers in transfers live only inside one call on this thread.
unsafe impl Send for RingComm {}

fn io_err(e: std::io::Error) -> CollectiveError {
    CollectiveError::Io(e.to_string())
}

impl RingComm {
    /// Joins the group: publishes this rank's address in the store, connects to every lower
    /// rank and accepts every higher one, all within the group's timeout.
    pub fn new(opts: GroupOptions, store: Arc<dyn Store>) -> Result<Self> {
        let core = GroupCore::new(opts, store)?;
        let (rank, n) = (core.rank(), core.world());
        let group = core.name().to_string();
        let rdv = |detail: String| CollectiveError::Rendezvous { group: group.clone(), detail };
        let deadline = Instant::now() + core.opts.timeout;
        let mut peers: Vec<Option<TcpStream>> = (0..n).map(|_| None).collect();
        if n > 1 {
            let listener = TcpListener::bind((core.opts.host.as_str(), 0))
                .map_err(|e| rdv(format!("cannot listen on {}: {e}", core.opts.host)))?;
            let addr = listener.local_addr().map_err(io_err)?;
            core.store.set(&format!("{}/addr/{rank}", core.prefix), addr.to_string().as_bytes())?;
            let token = fnv(core.prefix.as_bytes());
            for (peer, slot) in peers.iter_mut().enumerate().take(rank) {
                let left = deadline.saturating_duration_since(Instant::now());
                let a = core
                    .store
                    .get(&format!("{}/addr/{peer}", core.prefix), left)
                    .map_err(|_| rdv(format!("rank {peer} never published its address within {:?}", core.opts.timeout)))?;
                let a = String::from_utf8_lossy(&a).to_string();
                let sa: std::net::SocketAddr =
                    a.parse().map_err(|_| rdv(format!("rank {peer} published a bad address `{a}`")))?;
                let mut s = loop {
                    match TcpStream::connect_timeout(&sa, Duration::from_secs(2)) {
                        Ok(s) => break s,
                        Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                        Err(e) => return Err(rdv(format!("cannot connect to rank {peer} at {a}: {e}"))),
                    }
                };
                let mut hello = Vec::with_capacity(24);
                hello.extend_from_slice(&HELLO_MAGIC.to_le_bytes());
                hello.extend_from_slice(&(rank as u32).to_le_bytes());
                hello.extend_from_slice(&(n as u32).to_le_bytes());
                hello.extend_from_slice(&[0; 4]);
                hello.extend_from_slice(&token.to_le_bytes());
                s.write_all(&hello).map_err(|e| rdv(format!("hello to rank {peer}: {e}")))?;
                *slot = Some(s);
            }
            listener.set_nonblocking(true).map_err(io_err)?;
            let mut waiting = n - 1 - rank;
            while waiting > 0 {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        // A stray or foreign connection is dropped; the group keeps waiting.
                        s.set_nonblocking(false).map_err(io_err)?;
                        s.set_read_timeout(Some(Duration::from_secs(5))).map_err(io_err)?;
                        let mut b = [0u8; 24];
                        if s.read_exact(&mut b).is_err() {
                            continue;
                        }
                        let magic = u32::from_le_bytes(b[0..4].try_into().unwrap());
                        let peer = u32::from_le_bytes(b[4..8].try_into().unwrap()) as usize;
                        let world = u32::from_le_bytes(b[8..12].try_into().unwrap()) as usize;
                        let t = u64::from_le_bytes(b[16..24].try_into().unwrap());
                        if magic != HELLO_MAGIC || t != token {
                            continue;
                        }
                        if world != n {
                            return Err(CollectiveError::Mismatch {
                                group,
                                detail: format!("rank {peer} joined with world size {world}, this rank has {n}"),
                            });
                        }
                        if peer <= rank || peer >= n || peers[peer].is_some() {
                            continue;
                        }
                        peers[peer] = Some(s);
                        waiting -= 1;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if Instant::now() > deadline {
                            let missing: Vec<usize> = (rank + 1..n).filter(|r| peers[*r].is_none()).collect();
                            return Err(rdv(format!("ranks {missing:?} never connected within {:?}", core.opts.timeout)));
                        }
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(e) => return Err(rdv(format!("accept: {e}"))),
                }
            }
            for s in peers.iter().flatten() {
                s.set_nonblocking(true).map_err(io_err)?;
                s.set_nodelay(true).map_err(io_err)?;
                core.abort.fds.lock().unwrap().push(s.as_raw_fd());
            }
        }
        Ok(RingComm { core, peers, staging: vec![0u64; STAGING_BYTES / 8], scratch: Vec::new() })
    }

    fn next(&self) -> usize {
        (self.core.rank() + 1) % self.core.world()
    }
    fn prev(&self) -> usize {
        (self.core.rank() + self.core.world() - 1) % self.core.world()
    }

    /// Runs one collective's transfer with the next and previous ranks of the ring.
    fn run(&mut self, op: &'static str, seq: u64, header: Header, plan: Plan, start: Instant) -> Result<()> {
        let deadline = self.core.io_deadline(start);
        let staging = bytes_of_mut(&mut self.staging);
        let fd = |r: usize| (r, self.peers[r].as_ref().map(|s| s.as_raw_fd()).unwrap_or(-1));
        let send = plan.send_to.map(fd);
        let recv = plan.recv_from.map(fd);
        let abort = self.core.abort.clone();
        let expect = header;
        let mut check = |got: &[u8], from: usize| {
            let Some(h) = Header::decode(got) else {
                return Err(format!("rank {from} sent bytes that are not a collective header"));
            };
            if h != expect {
                return Err(format!("this rank called {}, rank {from} called {}", expect.describe(), h.describe()));
            }
            Ok(())
        };
        let res = transfer(send, recv, &plan.sends, &plan.recvs, staging, deadline, &abort, &mut check);
        res.map_err(|f| self.core.fail(op, seq, start, f))
    }

    fn header(&self, op: u8, dtype: DType, reduce: Option<ReduceOp>, seq: u64, count: usize, extra: u64) -> Header {
        Header { op, dtype: dtype as u8, reduce: reduce.map(|r| r as u8).unwrap_or(0), seq, count: count as u64, extra }
    }

    /// The reduce-scatter and all-gather phases over `data` split into `n` segments. Step `k`
    /// of the reduce-scatter sends segment `r-k+rs_shift` and reduces `r-k-1+rs_shift` into
    /// place, leaving rank `r` owning segment `r+1+rs_shift`; step `k` of the gather sends
    /// `r+1+shift-k` and receives `r+shift-k`.
    #[allow(clippy::too_many_arguments)]
    fn ring_items(
        &self,
        data: *mut u8,
        count: usize,
        dtype: DType,
        reduce: Option<ReduceOp>,
        rs_shift: usize,
        gather: Option<usize>,
        header_out: &[u8; 32],
        header_in: &mut [u8; 32],
    ) -> (Vec<SendItem>, Vec<RecvItem>) {
        let (r, n, es) = (self.core.rank(), self.core.world(), dtype.size());
        let seg = |i: usize| {
            let c = chunk_range(count, n, i % n);
            // SAFETY: the range lies inside `data`'s `count` elements.
            (unsafe { data.add(c.start * es) }, c.len() * es)
        };
        let mut sends = vec![SendItem { data: header_out.as_ptr(), len: 32, dep: None }];
        let mut recvs = vec![RecvItem { data: header_in.as_mut_ptr(), len: 32, mode: Mode::Header }];
        let mut push = |s: usize, rv: usize, mode: Mode| {
            let (sp, sl) = seg(s);
            let (rp, rl) = seg(rv);
            let dep = if sends.len() == 1 { None } else { Some(recvs.len() - 1) };
            sends.push(SendItem { data: sp, len: sl, dep });
            recvs.push(RecvItem { data: rp, len: rl, mode });
        };
        if let Some(op) = reduce {
            for k in 0..n - 1 {
                push(r + 2 * n - k + rs_shift, r + 2 * n - k - 1 + rs_shift, Mode::Reduce(dtype, op));
            }
        }
        if let Some(shift) = gather {
            for k in 0..n - 1 {
                push(r + 2 * n + 1 + shift - k, r + 2 * n + shift - k, Mode::Copy);
            }
        }
        (sends, recvs)
    }
}

fn bytes_of_mut(v: &mut [u64]) -> &mut [u8] {
    // SAFETY: u64 has no invalid bit patterns and u8 has weaker alignment.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, v.len() * 8) }
}

pub(crate) fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, x| (h ^ *x as u64).wrapping_mul(0x100_0000_01b3))
}

/// What a non-blocking `send`/`recv` returned.
enum Io {
    Done(usize),
    WouldBlock,
    Interrupted,
}

fn syscall(n: isize, peer: usize) -> std::result::Result<Io, Fail> {
    if n >= 0 {
        return Ok(Io::Done(n as usize));
    }
    let e = std::io::Error::last_os_error();
    match e.kind() {
        std::io::ErrorKind::WouldBlock => Ok(Io::WouldBlock),
        std::io::ErrorKind::Interrupted => Ok(Io::Interrupted),
        _ => Err(Fail::Peer { peer, detail: e.to_string() }),
    }
}

/// Moves `sends` to one peer and `recvs` from another (possibly the same socket) until both
/// are done, the deadline passes, or the group is aborted.
#[allow(clippy::too_many_arguments)]
fn transfer(
    send: Option<(usize, i32)>,
    recv: Option<(usize, i32)>,
    sends: &[SendItem],
    recvs: &[RecvItem],
    staging: &mut [u8],
    deadline: Instant,
    abort: &AbortHandle,
    on_header: HeaderCheck<'_>,
) -> std::result::Result<(), Fail> {
    let (mut si, mut soff) = (0usize, 0usize);
    let (mut ri, mut roff, mut rdone, mut base) = (0usize, 0usize, 0usize, 0usize);
    let sends_total = if send.is_some() { sends.len() } else { 0 };
    let recvs_total = if recv.is_some() { recvs.len() } else { 0 };
    loop {
        if abort.is_aborted() {
            return Err(Fail::Aborted);
        }
        let mut progressed = false;
        let mut send_blocked_on_data = false;
        // Sends: as much as is ready.
        if let Some((peer, fd)) = send {
            while si < sends_total {
                let it = &sends[si];
                let ready = match it.dep {
                    None => it.len,
                    Some(d) if d < ri => it.len,
                    Some(d) if d == ri => rdone.min(it.len),
                    Some(_) => 0,
                };
                if soff == it.len {
                    si += 1;
                    soff = 0;
                    continue;
                }
                if soff >= ready {
                    send_blocked_on_data = true;
                    break;
                }
                // SAFETY: `soff..ready` lies inside the item's live buffer.
                let n = unsafe { libc::send(fd, it.data.add(soff) as *const libc::c_void, ready - soff, libc::MSG_NOSIGNAL) };
                let n = match syscall(n, peer)? {
                    Io::Done(n) => n,
                    Io::WouldBlock => break,
                    Io::Interrupted => continue,
                };
                soff += n;
                progressed = true;
            }
        }
        // Receives: read what has arrived, reduce whole elements at once.
        if let Some((peer, fd)) = recv {
            while ri < recvs_total {
                let it = &recvs[ri];
                if roff == it.len {
                    if let Mode::Header = it.mode {
                        // SAFETY: the header buffer holds `it.len` received bytes.
                        let got = unsafe { std::slice::from_raw_parts(it.data, it.len) };
                        on_header(got, peer).map_err(Fail::Mismatch)?;
                    }
                    ri += 1;
                    (roff, rdone, base) = (0, 0, 0);
                    continue;
                }
                let (ptr, want) = match it.mode {
                    Mode::Copy | Mode::Header => (unsafe { it.data.add(roff) }, it.len - roff),
                    Mode::Reduce(..) => {
                        if roff - base == staging.len() {
                            base = roff;
                        }
                        let at = roff - base;
                        // SAFETY: `at` is inside the staging window.
                        (unsafe { staging.as_mut_ptr().add(at) }, (it.len - roff).min(staging.len() - at))
                    }
                };
                // SAFETY: `ptr..ptr+want` lies inside the destination (item buffer or staging).
                let n = unsafe { libc::recv(fd, ptr as *mut libc::c_void, want, 0) };
                let n = match syscall(n, peer)? {
                    Io::Done(0) => return Err(Fail::Peer { peer, detail: "connection closed".into() }),
                    Io::Done(n) => n,
                    Io::WouldBlock => break,
                    Io::Interrupted => continue,
                };
                roff += n;
                progressed = true;
                match it.mode {
                    Mode::Copy => rdone = roff,
                    Mode::Header => {}
                    Mode::Reduce(dtype, op) => {
                        let es = dtype.size();
                        let upto = base + (roff - base) / es * es;
                        if upto > rdone {
                            // SAFETY: `rdone..upto` is inside the item, and inside the staging window at `rdone - base`.
                            let dst = unsafe { std::slice::from_raw_parts_mut(it.data.add(rdone), upto - rdone) };
                            reduce_bytes(dtype, op, dst, &staging[rdone - base..upto - base]);
                            rdone = upto;
                        }
                    }
                }
            }
        }
        if si >= sends_total && ri >= recvs_total {
            return Ok(());
        }
        if progressed {
            continue;
        }
        let now = Instant::now();
        if now >= deadline {
            let detail = match (si < sends_total, ri < recvs_total) {
                (true, true) => format!(
                    "waiting to send to rank {} and to receive from rank {}",
                    send.map(|s| s.0).unwrap_or(0),
                    recv.map(|s| s.0).unwrap_or(0)
                ),
                (true, false) => format!("waiting to send to rank {}", send.map(|s| s.0).unwrap_or(0)),
                _ => format!("waiting to receive from rank {}", recv.map(|s| s.0).unwrap_or(0)),
            };
            return Err(Fail::Timeout { detail });
        }
        let mut fds = [libc::pollfd { fd: -1, events: 0, revents: 0 }; 2];
        let mut nfds = 0;
        let want_out = si < sends_total && !send_blocked_on_data;
        let want_in = ri < recvs_total;
        match (send, recv) {
            (Some((_, a)), Some((_, b))) if a == b => {
                fds[0] = libc::pollfd {
                    fd: a,
                    events: (if want_out { libc::POLLOUT } else { 0 }) | (if want_in { libc::POLLIN } else { 0 }),
                    revents: 0,
                };
                nfds = 1;
            }
            _ => {
                if let (true, Some((_, a))) = (want_out, send) {
                    fds[nfds] = libc::pollfd { fd: a, events: libc::POLLOUT, revents: 0 };
                    nfds += 1;
                }
                if let (true, Some((_, b))) = (want_in, recv) {
                    fds[nfds] = libc::pollfd { fd: b, events: libc::POLLIN, revents: 0 };
                    nfds += 1;
                }
            }
        }
        // Wake at least every 100 ms to notice an abort.
        let wait = (deadline - now).min(Duration::from_millis(100)).as_millis().max(1) as i32;
        // SAFETY: `fds[..nfds]` are initialized pollfds.
        unsafe { libc::poll(fds.as_mut_ptr(), nfds as libc::nfds_t, wait) };
    }
}

impl Communicator for RingComm {
    group_accessors!(Backend::Ring);

    fn all_reduce(&mut self, mut buf: BufMut<'_>, op: ReduceOp) -> Result<()> {
        let seq = self.core.enter()?;
        let start = Instant::now();
        let n = self.core.world();
        let (dtype, count) = (buf.dtype(), buf.len());
        if n > 1 {
            let h = self.header(op::ALL_REDUCE, dtype, Some(op), seq, count, 0);
            let out = h.encode();
            let mut inn = [0u8; 32];
            let (sends, recvs) =
                self.ring_items(buf.as_bytes_mut().as_mut_ptr(), count, dtype, Some(op), 0, Some(0), &out, &mut inn);
            let plan = Plan { send_to: Some(self.next()), recv_from: Some(self.prev()), sends, recvs };
            self.run("all_reduce", seq, h, plan, start)?;
        }
        if op == ReduceOp::Mean {
            finish_mean_bytes(dtype, buf.as_bytes_mut(), n);
        }
        Ok(())
    }

    fn broadcast(&mut self, mut buf: BufMut<'_>, root: usize) -> Result<()> {
        let n = self.core.world();
        check::root(root, n)?;
        let seq = self.core.enter()?;
        let start = Instant::now();
        if n == 1 {
            return Ok(());
        }
        let (dtype, count) = (buf.dtype(), buf.len());
        let h = self.header(op::BROADCAST, dtype, None, seq, count, root as u64);
        let out = h.encode();
        let mut inn = [0u8; 32];
        let pos = (self.core.rank() + n - root) % n;
        let data = buf.as_bytes_mut();
        let (p, len) = (data.as_mut_ptr(), data.len());
        let mut sends = Vec::new();
        let mut recvs = Vec::new();
        if pos != 0 {
            recvs.push(RecvItem { data: inn.as_mut_ptr(), len: 32, mode: Mode::Header });
            recvs.push(RecvItem { data: p, len, mode: Mode::Copy });
        }
        if pos != n - 1 {
            sends.push(SendItem { data: out.as_ptr(), len: 32, dep: None });
            sends.push(SendItem { data: p, len, dep: if pos == 0 { None } else { Some(1) } });
        }
        let send_to = (pos != n - 1).then(|| self.next());
        let recv_from = (pos != 0).then(|| self.prev());
        self.run("broadcast", seq, h, Plan { send_to, recv_from, sends, recvs }, start)
    }

    fn all_gather(&mut self, input: Buf<'_>, mut output: BufMut<'_>) -> Result<()> {
        let n = self.core.world();
        check::all_gather(&input, &output, n)?;
        let seq = self.core.enter()?;
        let start = Instant::now();
        let (dtype, count, r) = (input.dtype(), output.len(), self.core.rank());
        let es = dtype.size();
        let bytes = output.as_bytes_mut();
        let own = chunk_range(count, n, r);
        bytes[own.start * es..own.end * es].copy_from_slice(input.as_bytes());
        if n == 1 {
            return Ok(());
        }
        let h = self.header(op::ALL_GATHER, dtype, None, seq, input.len(), 0);
        let out = h.encode();
        let mut inn = [0u8; 32];
        // The gather phase alone, starting from this rank's own segment: step k sends r-k.
        let (sends, recvs) = self.ring_items(bytes.as_mut_ptr(), count, dtype, None, 0, Some(n - 1), &out, &mut inn);
        let plan = Plan { send_to: Some(self.next()), recv_from: Some(self.prev()), sends, recvs };
        self.run("all_gather", seq, h, plan, start)
    }

    fn reduce_scatter(&mut self, input: Buf<'_>, mut output: BufMut<'_>, op: ReduceOp) -> Result<()> {
        let (n, r) = (self.core.world(), self.core.rank());
        let own = check::reduce_scatter(&input, &output, n, r)?;
        let seq = self.core.enter()?;
        let start = Instant::now();
        let (dtype, count) = (input.dtype(), input.len());
        let es = dtype.size();
        let words = input.as_bytes().len().div_ceil(8);
        if self.scratch.len() < words {
            self.scratch.resize(words, 0);
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        let work = &mut bytes_of_mut(&mut scratch)[..input.as_bytes().len()];
        work.copy_from_slice(input.as_bytes());
        let res = if n > 1 {
            let h = self.header(op::REDUCE_SCATTER, dtype, Some(op), seq, count, 0);
            let out = h.encode();
            let mut inn = [0u8; 32];
            // Shift so that rank r owns segment r after the reduce-scatter.
            let (sends, recvs) = self.ring_items(work.as_mut_ptr(), count, dtype, Some(op), n - 1, None, &out, &mut inn);
            let plan = Plan { send_to: Some(self.next()), recv_from: Some(self.prev()), sends, recvs };
            self.run("reduce_scatter", seq, h, plan, start)
        } else {
            Ok(())
        };
        if res.is_ok() {
            output.as_bytes_mut().copy_from_slice(&work[own.start * es..own.end * es]);
            if op == ReduceOp::Mean {
                finish_mean_bytes(dtype, output.as_bytes_mut(), n);
            }
        }
        self.scratch = scratch;
        res
    }

    fn barrier(&mut self) -> Result<()> {
        let seq = self.core.enter()?;
        let start = Instant::now();
        if self.core.world() == 1 {
            return Ok(());
        }
        // A one-element all-reduce: nobody leaves before everybody has arrived.
        let mut token = [0i64; 1];
        let h = self.header(op::BARRIER, DType::I64, Some(ReduceOp::Sum), seq, 1, 0);
        let out = h.encode();
        let mut inn = [0u8; 32];
        let (sends, recvs) =
            self.ring_items(token.as_mut_ptr() as *mut u8, 1, DType::I64, Some(ReduceOp::Sum), 0, Some(0), &out, &mut inn);
        let plan = Plan { send_to: Some(self.next()), recv_from: Some(self.prev()), sends, recvs };
        self.run("barrier", seq, h, plan, start)
    }

    fn send(&mut self, buf: Buf<'_>, dst: usize) -> Result<()> {
        let n = self.core.world();
        check::peer("send to", dst, self.core.rank(), n)?;
        self.core.ready()?;
        let start = Instant::now();
        let h = self.header(op::P2P, buf.dtype(), None, 0, buf.len(), 0);
        let out = h.encode();
        let sends = vec![
            SendItem { data: out.as_ptr(), len: 32, dep: None },
            SendItem { data: buf.as_bytes().as_ptr(), len: buf.as_bytes().len(), dep: None },
        ];
        self.run("send", 0, h, Plan { send_to: Some(dst), recv_from: None, sends, recvs: Vec::new() }, start)
    }

    fn recv(&mut self, mut buf: BufMut<'_>, src: usize) -> Result<()> {
        let n = self.core.world();
        check::peer("recv from", src, self.core.rank(), n)?;
        self.core.ready()?;
        let start = Instant::now();
        let h = self.header(op::P2P, buf.dtype(), None, 0, buf.len(), 0);
        let mut inn = [0u8; 32];
        let bytes = buf.as_bytes_mut();
        let recvs = vec![
            RecvItem { data: inn.as_mut_ptr(), len: 32, mode: Mode::Header },
            RecvItem { data: bytes.as_mut_ptr(), len: bytes.len(), mode: Mode::Copy },
        ];
        self.run("recv", 0, h, Plan { send_to: None, recv_from: Some(src), sends: Vec::new(), recvs }, start)
    }
}

impl Drop for RingComm {
    fn drop(&mut self) {
        self.core.abort.fds.lock().unwrap().clear();
    }
}
