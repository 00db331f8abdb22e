//! The worker process: started by the node from the driver's own executable, it connects back
//! over the node socket, runs tasks and actor calls from the registry, and never returns.

use crate::actor::{ActorInstance, MethodCall};
use crate::codec::{ObjectData, Payload, RefKey, ReturnValue};
use crate::error::{ErrorKind, TaskError};
use crate::ids::{ActorId, ObjectId, PlacementGroupId, TaskId, WorkerId};
use crate::node::workers_env as env;
use crate::promise::Promise;
use crate::protocol::{Conn, Receiver, Reply, Request, ToNode, ToWorker};
use crate::runtime::{Core, ObjectResult, Runtime, StateQuery, StoredData};
use crate::spec::{ActorCallSpec, ActorSpec, PlacementGroupSpec, TaskSpec};
use crate::state::StateSnapshot;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

type Completer = Box<dyn FnOnce(Reply) + Send>;

/// A worker's side of the node connection.
pub(crate) struct WorkerCore {
    conn: Arc<Conn>,
    pending: Mutex<HashMap<u64, Completer>>,
    next_req: AtomicU64,
}

impl WorkerCore {
    fn send(&self, msg: ToNode) {
        if self.conn.send(&msg).is_err() {
            // The node is gone; so is this worker's purpose.
            std::process::exit(0);
        }
    }

    fn request(&self, body: Request, done: Completer) {
        let req = self.next_req.fetch_add(1, Ordering::Relaxed);
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).insert(req, done);
        self.send(ToNode::Request { req, body });
    }

    /// Sends a request; the reply, turned into a `T` by `extract`, completes the promise.
    fn call<T: Clone + Send + 'static>(&self, body: Request, extract: fn(Reply) -> T) -> Promise<T> {
        let p = Promise::new();
        let q = p.clone();
        self.request(body, Box::new(move |r| q.complete(extract(r))));
        p
    }

    fn request_unit(&self, body: Request) -> Result<(), TaskError> {
        self.call(body, |r| match r {
            Reply::Unit(r) => r,
            other => Err(unexpected(other)),
        })
        .wait()
    }
}

fn unexpected(r: Reply) -> TaskError {
    TaskError::new(ErrorKind::System, format!("unexpected reply from the node: {r:?}"))
}

impl Core for WorkerCore {
    fn submit_task(&self, spec: TaskSpec) {
        self.send(ToNode::SubmitTask(spec))
    }
    fn create_actor(&self, spec: ActorSpec) -> Result<(), TaskError> {
        self.request_unit(Request::CreateActor(spec))
    }
    fn submit_actor_task(&self, spec: ActorCallSpec) {
        self.send(ToNode::SubmitActorTask(spec))
    }
    fn get(&self, id: ObjectId) -> Promise<ObjectResult> {
        self.call(Request::Get(id), |r| match r {
            Reply::Object(r) => r.and_then(StoredData::from_payload),
            other => Err(unexpected(other)),
        })
    }
    fn put(&self, id: ObjectId, payload: Payload, contained: Vec<RefKey>) {
        self.send(ToNode::Put { id, payload, contained })
    }
    fn add_ref(&self, key: RefKey) {
        self.send(ToNode::AddRef(key))
    }
    fn remove_ref(&self, key: RefKey) {
        self.send(ToNode::RemoveRef(key))
    }
    fn cancel(&self, id: ObjectId, force: bool) -> Result<(), TaskError> {
        self.request_unit(Request::Cancel { id, force })
    }
    fn kill_actor(&self, id: ActorId, no_restart: bool) -> Result<(), TaskError> {
        self.request_unit(Request::KillActor { id, no_restart })
    }
    fn get_named_actor(&self, name: &str, namespace: &str) -> Result<(ActorId, String), TaskError> {
        let body = Request::GetNamedActor { name: name.to_string(), namespace: namespace.to_string() };
        self.call(body, |r| match r {
            Reply::NamedActor(r) => r,
            other => Err(unexpected(other)),
        })
        .wait()
    }
    fn create_placement_group(&self, spec: PlacementGroupSpec) -> Result<(), TaskError> {
        self.request_unit(Request::CreatePlacementGroup(spec))
    }
    fn remove_placement_group(&self, id: PlacementGroupId) -> Result<(), TaskError> {
        self.request_unit(Request::RemovePlacementGroup(id))
    }
    fn placement_group_ready(&self, id: PlacementGroupId) -> Promise<Result<(), TaskError>> {
        self.call(Request::PlacementGroupReady(id), |r| match r {
            Reply::Unit(r) => r,
            other => Err(unexpected(other)),
        })
    }
    fn get_placement_group(&self, name: &str) -> Result<(PlacementGroupId, usize), TaskError> {
        self.call(Request::GetPlacementGroup { name: name.to_string() }, |r| match r {
            Reply::PlacementGroup(r) => r,
            other => Err(unexpected(other)),
        })
        .wait()
    }
    fn state(&self, query: StateQuery) -> Result<StateSnapshot, TaskError> {
        self.call(Request::State(query), |r| match r {
            Reply::State(r) => *r,
            other => Err(unexpected(other)),
        })
        .wait()
    }
    fn shutdown(&self) {}
    fn recycled_file(&self, size: u64) -> Option<String> {
        self.call(Request::RecycledFile(size), |r| match r {
            Reply::Path(p) => p,
            _ => None,
        })
        .wait()
    }
}

/// Per-thread facts about the work running now.
#[derive(Clone, Default)]
struct Current {
    task: Option<TaskId>,
    gpu_ids: Vec<u32>,
}

thread_local! {
    static CURRENT: RefCell<Current> = RefCell::new(Current::default());
    static LAST_PANIC: RefCell<Option<(String, Option<String>)>> = const { RefCell::new(None) };
}

static CANCELLED: Mutex<Option<HashSet<TaskId>>> = Mutex::new(None);
static PROCESS_GPU_IDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// The GPU ids this task or actor may use, as the scheduler assigned them.
pub(crate) fn gpu_ids() -> Vec<u32> {
    let ids = CURRENT.with(|c| c.borrow().gpu_ids.clone());
    if ids.is_empty() {
        PROCESS_GPU_IDS.lock().unwrap_or_else(|p| p.into_inner()).clone()
    } else {
        ids
    }
}

/// Whether the running task was cancelled (cooperative cancellation).
pub(crate) fn is_cancelled() -> bool {
    let Some(t) = CURRENT.with(|c| c.borrow().task) else {
        return false;
    };
    CANCELLED.lock().unwrap_or_else(|p| p.into_inner()).as_ref().is_some_and(|s| s.contains(&t))
}

fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = if let Some(s) = info.payload().downcast_ref::<&str>() {
            s.to_string()
        } else if let Some(s) = info.payload().downcast_ref::<String>() {
            s.clone()
        } else {
            "panic with a non-string payload".to_string()
        };
        let loc = info.location().map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
        LAST_PANIC.with(|p| *p.borrow_mut() = Some((msg, loc)));
        default(info);
    }));
}

fn panic_error() -> TaskError {
    let (msg, loc) = LAST_PANIC.with(|p| p.borrow_mut().take()).unwrap_or_else(|| ("panicked".to_string(), None));
    TaskError { kind: ErrorKind::UserPanic, message: msg, location: loc, task_name: None }
}

/// Decodes dispatch payloads into local data (mapping shared-memory files).
fn materialize_args(args: Vec<Payload>) -> Result<Vec<ObjectData>, TaskError> {
    args.into_iter()
        .map(|p| match p {
            Payload::Inline(v) => Ok(ObjectData::Inline(Arc::new(v))),
            Payload::File { id, path, .. } => ObjectData::map_file(id, &path)
                .map_err(|e| TaskError::new(ErrorKind::ObjectLost, format!("could not map argument {path}: {e}"))),
            Payload::Error(e) => Err(e),
        })
        .collect()
}

/// Encodes a result and reports it. The value is dropped only after the report is sent, so the
/// references inside it are still counted when the node learns of them.
fn report(ctx: &Ctx, task_id: TaskId, value: Result<Box<dyn ReturnValue>, TaskError>) {
    match value {
        Ok(v) => {
            let encoded = match crate::runtime::runtime() {
                Ok(rt) => crate::store::encode_object(&rt, ObjectId::for_return(task_id, 0), &*v),
                Err(e) => Err(e),
            };
            ctx.done(task_id, encoded);
            drop(v);
        }
        Err(e) => ctx.done(task_id, Err(e)),
    }
}

enum Work {
    Task { task_id: TaskId, name: String, args: Vec<Payload>, gpu_ids: Vec<u32> },
    CreateActor { actor_id: ActorId, class: String, args: Vec<Payload>, gpu_ids: Vec<u32>, max_concurrency: u32, is_async: bool },
    Call { task_id: TaskId, method: String, args: Vec<Payload> },
}

struct Ctx {
    core: Arc<WorkerCore>,
}

impl Ctx {
    fn done(&self, task_id: TaskId, result: crate::protocol::TaskResult) {
        self.core.send(ToNode::TaskDone { task_id, result });
    }
}

fn run_task(ctx: &Ctx, task_id: TaskId, name: &str, args: Vec<Payload>, gpu_ids: Vec<u32>) {
    let _span = tracing::debug_span!("task", name, task = %task_id).entered();
    CURRENT.with(|c| *c.borrow_mut() = Current { task: Some(task_id), gpu_ids: gpu_ids.clone() });
    *PROCESS_GPU_IDS.lock().unwrap_or_else(|p| p.into_inner()) = gpu_ids;
    let value = match (crate::registry::function(name), materialize_args(args)) {
        (None, _) => Err(TaskError::new(ErrorKind::NotRegistered, format!("no remote function `{name}` in this worker binary"))),
        (_, Err(e)) => Err(e),
        (Some(f), Ok(args)) => match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (f.invoke)(args))) {
            Ok(r) => r,
            Err(_) => Err(panic_error()),
        },
    };
    report(ctx, task_id, value);
    CURRENT.with(|c| *c.borrow_mut() = Current::default());
}

fn run_call(
    ctx: &Ctx,
    inst: &dyn ActorInstance,
    task_id: TaskId,
    method: &str,
    args: Vec<Payload>,
) -> Option<crate::actor::BoxedCall> {
    let _span = tracing::debug_span!("actor_call", method, task = %task_id).entered();
    let args = match materialize_args(args) {
        Ok(a) => a,
        Err(e) => {
            ctx.done(task_id, Err(e));
            return None;
        }
    };
    CURRENT.with(|c| c.borrow_mut().task = Some(task_id));
    let call = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inst.call(method, args)));
    CURRENT.with(|c| c.borrow_mut().task = None);
    match call {
        Ok(MethodCall::Ready(v)) => {
            report(ctx, task_id, v);
            None
        }
        Ok(MethodCall::Future(f)) => Some(f),
        Err(_) => {
            ctx.done(task_id, Err(panic_error()));
            None
        }
    }
}

/// Runs a constructed actor's calls: in order on this thread, on a pool of threads, or as tasks
/// of an async executor, by its concurrency.
fn run_actor(ctx: Arc<Ctx>, inst: Arc<dyn ActorInstance>, rx: mpsc::Receiver<Work>, max_concurrency: u32, is_async: bool) {
    if is_async {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("flare worker: cannot start the async executor: {e}");
                std::process::exit(1);
            }
        };
        let limit = Arc::new(tokio::sync::Semaphore::new(max_concurrency as usize));
        let (tx, mut arx) = tokio::sync::mpsc::unbounded_channel::<Work>();
        std::thread::spawn(move || {
            while let Ok(w) = rx.recv() {
                if tx.send(w).is_err() {
                    return;
                }
            }
        });
        rt.block_on(async move {
            while let Some(w) = arx.recv().await {
                let Work::Call { task_id, method, args } = w else {
                    continue;
                };
                let permit = limit.clone().acquire_owned().await;
                let ctx = ctx.clone();
                let inst = inst.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    if let Some(fut) = run_call(&ctx, &*inst, task_id, &method, args) {
                        let r = futures_catch(fut).await;
                        report(&ctx, task_id, r);
                    }
                });
            }
        });
    } else if max_concurrency <= 1 {
        while let Ok(w) = rx.recv() {
            if let Work::Call { task_id, method, args } = w {
                run_call(&ctx, &*inst, task_id, &method, args);
            }
        }
    } else {
        let shared = Arc::new(Mutex::new(rx));
        let threads: Vec<_> = (0..max_concurrency)
            .map(|_| {
                let (ctx, inst, shared) = (ctx.clone(), inst.clone(), shared.clone());
                std::thread::spawn(move || loop {
                    let w = shared.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    match w {
                        Ok(Work::Call { task_id, method, args }) => {
                            run_call(&ctx, &*inst, task_id, &method, args);
                        }
                        Ok(_) => {}
                        Err(_) => return,
                    }
                })
            })
            .collect();
        for t in threads {
            let _ = t.join();
        }
    }
    std::process::exit(0);
}

/// Awaits an async method, turning a panic inside it into a `UserPanic` error.
async fn futures_catch(fut: crate::actor::BoxedCall) -> Result<Box<dyn ReturnValue>, TaskError> {
    struct CatchUnwind(crate::actor::BoxedCall);
    impl std::future::Future for CatchUnwind {
        type Output = Result<Box<dyn ReturnValue>, TaskError>;
        fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.0.as_mut().poll(cx))) {
                Ok(p) => p,
                Err(_) => std::task::Poll::Ready(Err(panic_error())),
            }
        }
    }
    CatchUnwind(fut).await
}

fn executor(ctx: Arc<Ctx>, rx: mpsc::Receiver<Work>) {
    while let Ok(w) = rx.recv() {
        match w {
            Work::Task { task_id, name, args, gpu_ids } => run_task(&ctx, task_id, &name, args, gpu_ids),
            Work::CreateActor { actor_id, class, args, gpu_ids, max_concurrency, is_async } => {
                *PROCESS_GPU_IDS.lock().unwrap_or_else(|p| p.into_inner()) = gpu_ids;
                let built = match (crate::registry::actor_class(&class), materialize_args(args)) {
                    (None, _) => {
                        Err(TaskError::new(ErrorKind::NotRegistered, format!("no actor class `{class}` in this worker binary")))
                    }
                    (_, Err(e)) => Err(e),
                    (Some(c), Ok(args)) => match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (c.construct)(args))) {
                        Ok(r) => r,
                        Err(_) => Err(panic_error()),
                    },
                };
                match built {
                    Ok(inst) => {
                        ctx.core.send(ToNode::ActorReady { actor_id, result: Ok(()) });
                        run_actor(ctx, Arc::from(inst), rx, max_concurrency, is_async);
                        return;
                    }
                    Err(e) => {
                        ctx.core.send(ToNode::ActorReady { actor_id, result: Err(e) });
                        std::process::exit(0);
                    }
                }
            }
            Work::Call { task_id, .. } => {
                ctx.done(task_id, Err(TaskError::new(ErrorKind::ActorDied, "this worker hosts no actor")));
            }
        }
    }
}

/// Runs this process as a worker if the node started it as one; otherwise returns.
pub(crate) fn maybe_run() {
    let Ok(wid) = std::env::var(env::WORKER_ID) else { return };
    let endpoint = match (std::env::var(env::SOCKET), std::env::var(env::TCP)) {
        (Ok(socket), _) => Endpoint::Unix(socket),
        (_, Ok(addr)) => Endpoint::Tcp(addr, std::env::var(env::TOKEN).unwrap_or_default()),
        _ => return,
    };
    let Ok(wid) = wid.parse::<u64>() else {
        eprintln!("flare worker: {}={wid:?} is not a worker id", env::WORKER_ID);
        std::process::exit(2);
    };
    run(endpoint, WorkerId(wid), std::env::var(env::SHM_DIR).map(PathBuf::from).unwrap_or_else(|_| std::env::temp_dir()));
}

/// How a worker reaches its node: the node's Unix socket, or (on another node than its
/// driver) the driver node's TCP address and the cluster token.
enum Endpoint {
    Unix(String),
    Tcp(String, String),
}

fn connect(endpoint: &Endpoint, wid: WorkerId, shm: &std::path::Path) -> std::io::Result<(Conn, Receiver)> {
    match endpoint {
        Endpoint::Unix(socket) => {
            if let Ok(token) = std::env::var(env::TOKEN) {
                // A driver in a cluster: objects on other nodes are pulled from their agents.
                crate::transfer::set_store(shm.to_path_buf(), token);
            }
            let stream = UnixStream::connect(socket)?;
            let conn = Conn::new(stream.try_clone()?);
            conn.send(&ToNode::Register { worker_id: wid, pid: std::process::id() })?;
            Ok((conn, Receiver::new(stream)))
        }
        Endpoint::Tcp(addr, token) => {
            let mut stream = crate::transfer::connect(addr)?;
            let hello = crate::protocol::Hello::Worker { token: token.clone(), worker_id: wid, pid: std::process::id() };
            crate::protocol::write_frame(&mut stream, &hello)?;
            crate::transfer::set_remote_source(addr.clone(), token.clone(), shm.to_path_buf());
            Ok((Conn::new(stream.try_clone()?), Receiver::new(stream)))
        }
    }
}

fn run(endpoint: Endpoint, wid: WorkerId, shm: PathBuf) -> ! {
    // Safety: plain process-attribute syscalls. Die with the node (the driver), and do not be
    // killed by a write to a closed socket.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let (conn, mut receiver) = match connect(&endpoint, wid, &shm) {
        Ok(c) => c,
        Err(e) => {
            let to = match &endpoint {
                Endpoint::Unix(s) | Endpoint::Tcp(s, _) => s,
            };
            eprintln!("flare worker: cannot connect to the node at {to}: {e}");
            std::process::exit(1);
        }
    };
    let conn = Arc::new(conn);
    let core = Arc::new(WorkerCore { conn: conn.clone(), pending: Mutex::new(HashMap::new()), next_req: AtomicU64::new(1) });
    let rt = Arc::new(Runtime::new(core.clone(), wid, shm));
    if crate::runtime::install(rt).is_err() {
        std::process::exit(1);
    }
    install_panic_hook();
    *CANCELLED.lock().unwrap_or_else(|p| p.into_inner()) = Some(HashSet::new());
    let (tx, rx) = mpsc::channel::<Work>();
    let ctx = Arc::new(Ctx { core: core.clone() });
    std::thread::Builder::new().name("flare-executor".into()).spawn(move || executor(ctx, rx)).ok();
    loop {
        match receiver.recv::<ToWorker>() {
            Ok(Some(msg)) => match msg {
                ToWorker::Execute { task_id, name, args, gpu_ids, .. } => {
                    let _ = tx.send(Work::Task { task_id, name, args, gpu_ids });
                }
                ToWorker::CreateActor { actor_id, class, args, gpu_ids, max_concurrency, is_async } => {
                    let _ = tx.send(Work::CreateActor { actor_id, class, args, gpu_ids, max_concurrency, is_async });
                }
                ToWorker::CallActor { task_id, method, args } => {
                    let _ = tx.send(Work::Call { task_id, method, args });
                }
                ToWorker::Reply { req, body } => {
                    let done = core.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&req);
                    if let Some(done) = done {
                        done(body);
                    }
                }
                ToWorker::Cancel { task_id } => {
                    if let Some(s) = CANCELLED.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
                        s.insert(task_id);
                    }
                }
                ToWorker::Exit => std::process::exit(0),
                // Only for a link to another driver's actor.
                ToWorker::KillActor { .. } | ToWorker::Fetched { .. } => {}
            },
            Ok(None) | Err(_) => std::process::exit(0),
        }
    }
}
