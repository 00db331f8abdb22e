//! The rank actor: one per bundle of the trainer's placement group. `start` runs the train
//! loop on a thread of the actor's process; the driver collects what it reports with `poll`.

use crate::context::{Event, TrainContext, TrainLoop};
use flare_collectives::{AsyncCommunicator, Backend, GroupOptions, TcpStore};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// A train loop named across processes (see [`flare_core::util::CodeRef`]).
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct LoopRef(flare_core::util::CodeRef);

impl LoopRef {
    pub(crate) fn of(f: TrainLoop) -> Self {
        LoopRef(flare_core::util::CodeRef::of_addr(f as usize))
    }

    fn resolve(self) -> Result<TrainLoop, String> {
        let addr = self.0.resolve()?;
        // Safety: the address is the driver's `TrainLoop` in this same executable image (its
        // code bytes matched), so it is a function of exactly that type.
        Ok(unsafe { std::mem::transmute::<usize, TrainLoop>(addr) })
    }
}

/// Where a rank runs, for computing local ranks.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[doc(hidden)]
pub struct Placement {
    pub node: String,
    pub pid: u32,
    pub gpu_ids: Vec<u32>,
}

/// Everything a rank needs to join the run.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[doc(hidden)]
pub struct Setup {
    pub train_loop: LoopRef,
    pub rank: usize,
    pub world_size: usize,
    pub local_rank: usize,
    pub local_world_size: usize,
    pub node_rank: usize,
    pub group: String,
    pub generation: u64,
    pub store: String,
    pub backend: String,
    pub timeout_ms: u64,
    pub use_gpu: bool,
    pub config: String,
    pub checkpoint: Option<PathBuf>,
    pub iteration: u64,
    pub run_dir: PathBuf,
    pub attempt: usize,
    pub bucket_bytes: usize,
}

pub(crate) fn node_key() -> String {
    if let Ok(n) = std::env::var("FLARE_NODE_ID") {
        return n;
    }
    let mut buf = [0u8; 256];
    // Safety: gethostname writes at most buf.len() bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

pub(crate) fn parse_backend(s: &str) -> Result<Backend, String> {
    match s {
        "ring" => Ok(Backend::Ring),
        "shm" => Ok(Backend::Shm),
        "nccl" => Ok(Backend::Nccl),
        other => Err(format!("unknown backend `{other}`: use ring, shm or nccl")),
    }
}

/// A rank of a [`crate::Trainer`].
pub struct TrainWorker {
    events: flare_core::util::Mailbox<Event>,
}

fn run_rank(s: Setup, tx: std::sync::mpsc::Sender<Event>) -> Result<(), String> {
    let train_loop = s.train_loop.resolve()?;
    let backend = parse_backend(&s.backend)?;
    let device = if s.use_gpu {
        if !flare_core::get_gpu_ids().is_empty() || std::env::var("CUDA_VISIBLE_DEVICES").is_ok() {
            flare_gpu::Device::Cuda(0)
        } else {
            return Err("use_gpu is set but this rank was given no GPU".into());
        }
    } else {
        flare_gpu::Device::Cpu
    };
    let timeout = Duration::from_millis(s.timeout_ms);
    let store = TcpStore::connect(s.store.as_str(), timeout)
        .map_err(|e| format!("rank {}: reaching the rendezvous store: {e}", s.rank))?;
    let mut opts =
        GroupOptions::new(s.group.clone(), s.rank, s.world_size).backend(backend).timeout(timeout).generation(s.generation);
    if s.use_gpu {
        opts.device = Some(0);
    }
    let comm = flare_collectives::init(opts, Arc::new(store)).map_err(|e| format!("rank {}: joining the group: {e}", s.rank))?;
    let config = serde_json::from_str(&s.config).map_err(|e| format!("the train loop config is not JSON: {e}"))?;
    let mut ctx = TrainContext {
        rank: s.rank,
        local_rank: s.local_rank,
        local_world_size: s.local_world_size,
        world_size: s.world_size,
        node_rank: s.node_rank,
        device,
        comm: AsyncCommunicator::new(comm),
        config,
        checkpoint: s.checkpoint.map(crate::Checkpoint::from_directory),
        run_dir: s.run_dir,
        attempt: s.attempt,
        iteration: s.iteration,
        bucket_bytes: s.bucket_bytes,
        events: tx,
        comm_wait: Duration::ZERO,
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| train_loop(&mut ctx))) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("rank {}: the train loop failed: {e}", s.rank)),
        Err(p) => Err(format!("rank {}: the train loop panicked: {}", s.rank, flare_core::util::panic_message(&*p))),
    }
}

#[flare_macros::actor(crate = ::flare_core)]
impl TrainWorker {
    fn new(num_threads: u32) -> Self {
        // The rank's compute threads follow its CPU share (Ray sets OMP_NUM_THREADS the same
        // way), set before candle starts its thread pool.
        if std::env::var_os("RAYON_NUM_THREADS").is_none() && num_threads > 0 {
            std::env::set_var("RAYON_NUM_THREADS", num_threads.to_string());
        }
        // Every tensor op allocates its output; glibc returns large freed blocks to the OS
        // (mmap/munmap, trimming), so each training step would page-fault its buffers in
        // again. Keep them in the heap for reuse in this (the rank's own) process.
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // Safety: mallopt only changes allocator thresholds.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        }
        TrainWorker { events: flare_core::util::Mailbox::new() }
    }

    fn placement(&self) -> Placement {
        Placement { node: node_key(), pid: std::process::id(), gpu_ids: flare_core::get_gpu_ids() }
    }

    /// Starts the train loop on its own thread and returns at once.
    fn start(&self, setup: Setup) -> Result<(), String> {
        let tx = self.events.open()?;
        let rank = setup.rank;
        std::thread::Builder::new()
            .name(format!("flare-train-rank{rank}"))
            .spawn(move || {
                let done = tx.clone();
                let ev = match run_rank(setup, tx) {
                    Ok(()) => Event::Finished { rank },
                    Err(error) => Event::Failed { rank, error },
                };
                let _ = done.send(ev);
            })
            .map_err(|e| format!("starting the train loop thread: {e}"))?;
        Ok(())
    }

    /// The events since the last poll; waits up to `wait_ms` for the first.
    fn poll(&self, wait_ms: u64) -> Vec<Event> {
        self.events.poll(Duration::from_millis(wait_ms))
    }
}
