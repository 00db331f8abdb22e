//! The framed protocols: a node and its workers (over a Unix socket, or TCP for workers on other
//! nodes), and a driver and the node agents that run its workers: a 4-byte little-endian
//! length, then one bincode-encoded message. Frames are bounded; large objects never travel in
//! frames (they go through shared-memory files), so a frame past the bound is a protocol error.
//! **Architecture Invariant:** only this module knows the wire format of node-worker messages.

use crate::codec::{Payload, RefKey};
use crate::error::TaskError;
use crate::ids::{ActorId, ObjectId, PlacementGroupId, TaskId, WorkerId};
use crate::runtime::StateQuery;
use crate::spec::{ActorCallSpec, ActorSpec, PlacementGroupSpec, TaskSpec};
use crate::state::StateSnapshot;
use serde::{Deserialize, Serialize};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::sync::Mutex;

/// The largest frame either side accepts.
pub const MAX_FRAME: u32 = 64 << 20;

/// A request from a worker that expects a [`Reply`].
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    Get(ObjectId),
    CreateActor(ActorSpec),
    Cancel { id: ObjectId, force: bool },
    KillActor { id: ActorId, no_restart: bool },
    GetNamedActor { name: String, namespace: String },
    CreatePlacementGroup(PlacementGroupSpec),
    RemovePlacementGroup(PlacementGroupId),
    PlacementGroupReady(PlacementGroupId),
    GetPlacementGroup { name: String },
    State(StateQuery),
    RecycledFile(u64),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    Unit(Result<(), TaskError>),
    Object(Result<Payload, TaskError>),
    NamedActor(Result<(ActorId, String), TaskError>),
    PlacementGroup(Result<(PlacementGroupId, usize), TaskError>),
    State(Box<Result<StateSnapshot, TaskError>>),
    Path(Option<String>),
}

/// What a finished task or actor call sends back: its value and the references inside it, or its error.
pub type TaskResult = Result<(Payload, Vec<RefKey>), TaskError>;

/// Worker to node.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToNode {
    Register {
        worker_id: WorkerId,
        pid: u32,
    },
    Request {
        req: u64,
        body: Request,
    },
    SubmitTask(TaskSpec),
    SubmitActorTask(ActorCallSpec),
    Put {
        id: ObjectId,
        payload: Payload,
        contained: Vec<RefKey>,
    },
    AddRef(RefKey),
    RemoveRef(RefKey),
    /// A task or actor call finished (value or error).
    TaskDone {
        task_id: TaskId,
        result: TaskResult,
    },
    ActorReady {
        actor_id: ActorId,
        result: Result<(), TaskError>,
    },
}

/// Node to worker.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToWorker {
    Execute {
        task_id: TaskId,
        name: String,
        args: Vec<Payload>,
        gpu_ids: Vec<u32>,
        attempt: u32,
    },
    CreateActor {
        actor_id: ActorId,
        class: String,
        args: Vec<Payload>,
        gpu_ids: Vec<u32>,
        max_concurrency: u32,
        is_async: bool,
    },
    CallActor {
        task_id: TaskId,
        method: String,
        args: Vec<Payload>,
    },
    Reply {
        req: u64,
        body: Reply,
    },
    Cancel {
        task_id: TaskId,
    },
    Exit,
    /// To the driver that owns a named actor, from another driver's link to it: kill the actor
    /// (`flare::kill` there), restarting it unless `no_restart`.
    KillActor {
        no_restart: bool,
    },
    /// To the driver that owns a named actor: the result file of call `task_id` was pulled
    /// from it, and may go.
    Fetched {
        task_id: TaskId,
    },
}

/// The first frame on a TCP connection to a node's cluster port (a driver's node, or a node
/// agent). Every kind carries the cluster token; a connection without the right one is dropped.
#[derive(Debug, Serialize, Deserialize)]
pub enum Hello {
    /// A worker on another node connects back to its driver's node; `ToNode`/`ToWorker` follow.
    Worker { token: String, worker_id: WorkerId, pid: u32 },
    /// Pull an object file (`path` on the serving node); a [`PullReply`] and the raw bytes follow.
    /// `consume` deletes the file once sent (results that move to their owner).
    /// `len` bytes from `offset` (clamped to the file); the reply gives the whole file's size.
    Pull { token: String, path: String, offset: u64, len: u64, consume: bool },
    /// A driver asks a node agent to run workers for it; `ToAgent`/`FromAgent` follow.
    Driver { token: String, exe_hash: String, exe_size: u64, pid: u32, worker_addr: String },
    /// The head asks a node agent to run a job's entrypoint (`sh -c`) with `env`: the working
    /// dir's zip follows as `ToAgent::PackageChunk`s (`package_size` bytes, none for no
    /// package); the agent answers `FromAgent::JobStarted` or `Refused`, streams the output as
    /// `JobOutput` and ends with `JobExited`. `ToAgent::StopJob`, or the head closing the
    /// connection, stops the job (SIGTERM to its process group, SIGKILL 3 s later).
    Job { token: String, id: String, entrypoint: String, env: Vec<(String, String)>, package_size: u64 },
    /// Another driver calls this driver's named actor `actor_id`: answered `FromAgent::Ready`
    /// or `Refused`; then the worker protocol with this driver on the worker's side (the
    /// caller sends `ToWorker::CreateActor` once, then `CallActor`s; `ToNode::TaskDone`s come
    /// back). Argument files are pulled from `pull_addr`, the caller's cluster port.
    ActorPeer { token: String, actor_id: ActorId, pid: u32, pull_addr: String },
    /// The head holds a job entrypoint's resources on a node agent: `ToAgent::AcquireAny` and
    /// `Release` follow; what the session holds goes back when it closes.
    Grants { token: String },
}

#[derive(Debug, Serialize, Deserialize)]
pub enum PullReply {
    Ok { size: u64 },
    Err(String),
}

/// Driver to node agent.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToAgent {
    /// Part of the driver's executable, when the agent does not have it cached.
    ExeChunk(#[serde(with = "serde_bytes")] Vec<u8>),
    ExeEnd,
    /// Start a worker for the driver; it connects back to the driver's `worker_addr`.
    Spawn {
        wid: WorkerId,
        gpu_key: Vec<u32>,
    },
    Kill {
        wid: WorkerId,
    },
    /// Part of a job's working-dir package.
    PackageChunk(#[serde(with = "serde_bytes")] Vec<u8>),
    StopJob,
    /// Grant this driver exactly `alloc` of the node (its GPU devices included) under `lease`;
    /// answered `Granted` or `Denied`.
    Acquire {
        lease: u64,
        alloc: crate::resources::Allocation,
    },
    /// Grant `resources` wherever they fit on the node (the agent picks the GPU devices).
    AcquireAny {
        lease: u64,
        resources: crate::resources::ResourceSet,
    },
    /// An object file of this driver on the node is no longer needed.
    Free {
        path: String,
    },
    /// The grant is given back.
    Release {
        lease: u64,
    },
    /// The work under the grant blocks: its CPUs are free for others until `Reclaim`.
    Lend {
        lease: u64,
    },
    /// The work under the grant runs again: take its CPUs back if they are free.
    Reclaim {
        lease: u64,
    },
    /// Grant exactly `alloc` out of bundle `index` of placement group `pg` (its cluster-wide
    /// key) on this node; answered `Granted` or `Denied` (`others`: the other drivers' use of
    /// the bundle), and `BundleGone` when there is no such bundle.
    AcquireIn {
        lease: u64,
        alloc: crate::resources::Allocation,
        pg: String,
        index: u32,
    },
    /// The grant `lease` becomes bundle `index` of placement group `pg`: any driver may then
    /// take from it with `AcquireIn`. It lasts until `RemoveBundles`, or until this driver's
    /// session ends unless `detached`.
    MakeBundle {
        lease: u64,
        pg: String,
        index: u32,
        detached: bool,
    },
    /// Every bundle of placement group `pg` on this node goes back to the node (grants taken
    /// in them stay their holders' until released).
    RemoveBundles {
        pg: String,
    },
}

/// Node agent to driver.
#[derive(Debug, Serialize, Deserialize)]
pub enum FromAgent {
    Welcome {
        node_id: String,
        need_exe: bool,
    },
    /// The executable is in place; workers can start.
    Ready,
    Refused(String),
    Spawned {
        wid: WorkerId,
        pid: u32,
    },
    Exited {
        wid: WorkerId,
        reason: String,
    },
    Log {
        wid: WorkerId,
        line: String,
    },
    /// A job's entrypoint runs, as process (group) `pid` on the agent's machine.
    JobStarted {
        pid: u32,
    },
    /// Output of the job (stdout and stderr, in the order read).
    JobOutput(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The entrypoint exited with `code`, or was ended by `signal`.
    JobExited {
        code: Option<i32>,
        signal: Option<i32>,
    },
    /// The node's resources are the driver's under `lease` until it gives them back: `alloc`.
    Granted {
        lease: u64,
        alloc: crate::resources::Allocation,
    },
    /// Not free: `others` is what other drivers hold on the node now.
    Denied {
        lease: u64,
        others: crate::resources::Allocation,
        why: String,
    },
    /// What other drivers hold on the node now (sent when it changes).
    Usage {
        others: crate::resources::Allocation,
    },
    /// What other drivers hold in bundle `index` of placement group `pg` now (sent, when it
    /// changes, to the drivers that took from the bundle and to its creator).
    BundleUsage {
        pg: String,
        index: u32,
        others: crate::resources::Allocation,
    },
    /// Placement group `pg` has no bundle on this node any more (removed, or its creator's
    /// session ended and it was not detached).
    BundleGone {
        pg: String,
        why: String,
    },
}

/// Writes one frame to an unbuffered stream (handshakes, before a [`Conn`] takes over).
pub fn write_frame<M: Serialize>(w: &mut impl Write, msg: &M) -> io::Result<()> {
    let body = bincode::serialize(msg).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    if body.len() > MAX_FRAME as usize {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "message exceeds the frame limit"));
    }
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    w.write_all(&out)?;
    w.flush()
}

/// Reads one frame of at most `limit` bytes, reading nothing past it (the raw bytes of a pull
/// follow its reply).
pub fn read_frame<M: for<'de> Deserialize<'de>>(r: &mut impl Read, limit: u32) -> io::Result<M> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len);
    if len > limit.min(MAX_FRAME) {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("frame of {len} bytes exceeds the {limit}-byte limit")));
    }
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf)?;
    bincode::deserialize(&buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// The sending half of a connection, shared by the threads that send on it.
pub struct Conn {
    writer: Mutex<BufWriter<Box<dyn Write + Send>>>,
}

impl Conn {
    pub fn new(stream: impl Write + Send + 'static) -> Self {
        Conn { writer: Mutex::new(BufWriter::with_capacity(64 * 1024, Box::new(stream))) }
    }

    /// Sends one message and flushes it.
    pub fn send<M: Serialize>(&self, msg: &M) -> io::Result<()> {
        let body = bincode::serialize(msg).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if body.len() > MAX_FRAME as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("message of {} bytes exceeds the {MAX_FRAME}-byte frame limit", body.len()),
            ));
        }
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        w.write_all(&(body.len() as u32).to_le_bytes())?;
        w.write_all(&body)?;
        w.flush()
    }
}

/// The receiving half of a connection.
pub struct Receiver {
    reader: BufReader<Box<dyn Read + Send>>,
    buf: Vec<u8>,
}

impl Receiver {
    pub fn new(stream: impl Read + Send + 'static) -> Self {
        Receiver { reader: BufReader::with_capacity(64 * 1024, Box::new(stream)), buf: Vec::new() }
    }

    /// The next message; `Ok(None)` at a clean end of stream.
    pub fn recv<M: for<'de> Deserialize<'de>>(&mut self) -> io::Result<Option<M>> {
        let mut len = [0u8; 4];
        match self.reader.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let len = u32::from_le_bytes(len);
        if len > MAX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("frame of {len} bytes exceeds the {MAX_FRAME}-byte limit"),
            ));
        }
        self.buf.resize(len as usize, 0);
        self.reader.read_exact(&mut self.buf)?;
        bincode::deserialize(&self.buf).map(Some).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}
