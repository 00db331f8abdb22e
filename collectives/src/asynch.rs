//! Asynchronous collectives: a communicator moved onto its own thread runs operations in the
//! order they are submitted (as a CUDA stream does), and each returns a [`Work`] handle. This
//! is how a trainer overlaps gradient all-reduce with the rest of its backward pass.

use std::sync::mpsc;
use std::thread::JoinHandle;

use crate::{AbortHandle, BufMut, CollectiveError, Communicator, Element, ReduceOp, Result};

type Job = Box<dyn FnOnce(&mut dyn Communicator) + Send>;

/// A pending operation; [`Work::wait`] returns its result (and gives back the buffer).
pub struct Work<T> {
    rx: mpsc::Receiver<Result<T>>,
    done: Option<Result<T>>,
}

impl<T> Work<T> {
    /// Blocks until the operation has finished.
    pub fn wait(mut self) -> Result<T> {
        if let Some(r) = self.done.take() {
            return r;
        }
        self.rx.recv().unwrap_or_else(|_| Err(CollectiveError::Io("the communicator thread exited".into())))
    }

    /// Whether the operation has finished (then `wait` returns at once).
    pub fn is_completed(&mut self) -> bool {
        if self.done.is_none() {
            match self.rx.try_recv() {
                Ok(r) => self.done = Some(r),
                Err(mpsc::TryRecvError::Empty) => return false,
                Err(mpsc::TryRecvError::Disconnected) => {
                    self.done = Some(Err(CollectiveError::Io("the communicator thread exited".into())))
                }
            }
        }
        true
    }
}

/// A communicator on its own thread.
pub struct AsyncCommunicator {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    abort: AbortHandle,
    rank: usize,
    world_size: usize,
}

impl AsyncCommunicator {
    pub fn new(mut comm: Box<dyn Communicator>) -> Self {
        let (tx, rx) = mpsc::channel::<Job>();
        let abort = comm.abort_handle();
        let (rank, world_size) = (comm.rank(), comm.world_size());
        let thread = std::thread::Builder::new()
            .name("flare-collective".into())
            .spawn(move || {
                for job in rx {
                    job(comm.as_mut());
                }
            })
            .expect("spawning the communicator thread");
        AsyncCommunicator { tx: Some(tx), thread: Some(thread), abort, rank, world_size }
    }

    pub fn rank(&self) -> usize {
        self.rank
    }
    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// Runs `f` on the communicator thread after every operation submitted before it.
    pub fn submit<R: Send + 'static>(&self, f: impl FnOnce(&mut dyn Communicator) -> Result<R> + Send + 'static) -> Work<R> {
        let (rtx, rrx) = mpsc::channel();
        let job: Job = Box::new(move |c| {
            let _ = rtx.send(f(c));
        });
        if let Some(tx) = &self.tx {
            if tx.send(job).is_err() {
                let (etx, erx) = mpsc::channel();
                let _ = etx.send(Err(CollectiveError::Io("the communicator thread exited".into())));
                return Work { rx: erx, done: None };
            }
        }
        Work { rx: rrx, done: None }
    }

    /// All-reduces `buf` in the background; `wait` gives it back reduced.
    pub fn all_reduce<T: Element>(&self, mut buf: Vec<T>, op: ReduceOp) -> Work<Vec<T>> {
        self.submit(move |c| {
            c.all_reduce(BufMut::new(&mut buf), op)?;
            Ok(buf)
        })
    }

    pub fn broadcast<T: Element>(&self, mut buf: Vec<T>, root: usize) -> Work<Vec<T>> {
        self.submit(move |c| {
            c.broadcast(BufMut::new(&mut buf), root)?;
            Ok(buf)
        })
    }

    pub fn barrier(&self) -> Work<()> {
        self.submit(|c| c.barrier())
    }

    /// Aborts the group, failing the operation in progress and every queued one.
    pub fn abort(&self) {
        self.abort.abort()
    }
}

impl Drop for AsyncCommunicator {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
