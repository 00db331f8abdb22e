//! The framed protocol between a node and its workers over a Unix socket: a 4-byte little-endian
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
use std::os::unix::net::UnixStream;
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
    State(StateQuery),
    RecycledFile(u64),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    Unit(Result<(), TaskError>),
    Object(Result<Payload, TaskError>),
    NamedActor(Result<(ActorId, String), TaskError>),
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
    Execute { task_id: TaskId, name: String, args: Vec<Payload>, gpu_ids: Vec<u32>, attempt: u32 },
    CreateActor { actor_id: ActorId, class: String, args: Vec<Payload>, gpu_ids: Vec<u32>, max_concurrency: u32, is_async: bool },
    CallActor { task_id: TaskId, method: String, args: Vec<Payload> },
    Reply { req: u64, body: Reply },
    Cancel { task_id: TaskId },
    Exit,
}

/// The sending half of a connection, shared by the threads that send on it.
pub struct Conn {
    writer: Mutex<BufWriter<UnixStream>>,
}

impl Conn {
    pub fn new(stream: UnixStream) -> Self {
        Conn { writer: Mutex::new(BufWriter::with_capacity(64 * 1024, stream)) }
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
    reader: BufReader<UnixStream>,
    buf: Vec<u8>,
}

impl Receiver {
    pub fn new(stream: UnixStream) -> Self {
        Receiver { reader: BufReader::with_capacity(64 * 1024, stream), buf: Vec::new() }
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
