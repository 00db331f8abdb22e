//! Collective communication for Flare: the layer under data-parallel training and multi-GPU
//! inference.
//!
//! A [`Communicator`] is one rank's member of a group. Groups are created by name, rank and
//! world size through [`init`], which meets the other ranks through a [`Store`]
//! ([`MemStore`] for threads, [`TcpStore`] for processes, or the cluster's KV store).
//! Backends:
//! - [`Backend::Ring`]: TCP between ranks on any hosts; bandwidth-optimal ring algorithms,
//!   pipelined so that sending, receiving and reducing overlap.
//! - [`Backend::Shm`]: ranks on one host through shared memory.
//! - [`Backend::Nccl`]: NCCL on CUDA devices (the `nccl` feature; libnccl loaded at run time).
//!
//! Every collective has a deadline ([`GroupOptions::timeout`]); when a rank does not arrive,
//! every other rank gets [`CollectiveError::Timeout`] naming the missing ranks before the
//! deadline, instead of hanging. A failed group is [`Communicator::abort`]ed and created again
//! with the next [`GroupOptions::generation`].
//!
//! This crate knows nothing of actors or tasks (the architecture's invariant): Flare's trainer
//! creates groups from its actors, and anything else can create them from threads or processes.

mod asynch;
mod check;
mod dtype;
mod error;
mod group;
#[cfg(feature = "nccl")]
pub mod nccl;
mod ring;
mod shm;
mod store;
mod tensor;

use std::sync::Arc;

pub use asynch::{AsyncCommunicator, Work};
pub use dtype::{chunk_range, finish_mean, reduce_slice, Buf, BufMut, DType, Element, ReduceOp};
pub use error::{CollectiveError, Result};
pub use group::{AbortHandle, Backend, GroupOptions};
pub use ring::RingComm;
pub use shm::ShmComm;
pub use store::{MemStore, Store, TcpStore, TcpStoreServer, MAX_KEY, MAX_VALUE};

/// One rank's member of a communication group.
///
/// Every rank of the group must call the same collectives in the same order with the same
/// sizes (as with NCCL and `torch.distributed`); ranks that disagree get
/// [`CollectiveError::Mismatch`]. Buffers are type-erased views ([`Buf`], [`BufMut`]) made with
/// `.into()` from slices or vectors of any [`Element`]; [`CommunicatorExt`] adds typed and
/// candle-tensor forms.
pub trait Communicator: Send {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    fn backend(&self) -> Backend;
    fn group_name(&self) -> &str;

    /// Reduces `buf` across all ranks in place; every rank ends with the result.
    fn all_reduce(&mut self, buf: BufMut<'_>, op: ReduceOp) -> Result<()>;
    /// Copies `root`'s `buf` into every other rank's `buf`.
    fn broadcast(&mut self, buf: BufMut<'_>, root: usize) -> Result<()>;
    /// Every rank contributes `input`; `output` (world size x input long) gets rank `i`'s
    /// input at part `i`.
    fn all_gather(&mut self, input: Buf<'_>, output: BufMut<'_>) -> Result<()>;
    /// Reduces `input` across ranks and leaves part `rank` of the result (the range
    /// [`chunk_range`]`(input.len(), world_size, rank)`) in `output`. The input's length need not
    /// divide by the world size.
    fn reduce_scatter(&mut self, input: Buf<'_>, output: BufMut<'_>, op: ReduceOp) -> Result<()>;
    /// Returns once every rank has entered the barrier.
    fn barrier(&mut self) -> Result<()>;
    /// Sends `buf` to rank `dst`, which must call [`Communicator::recv`] with the same size.
    fn send(&mut self, buf: Buf<'_>, dst: usize) -> Result<()>;
    /// Receives into `buf` what rank `src` sends.
    fn recv(&mut self, buf: BufMut<'_>, src: usize) -> Result<()>;

    /// A handle that aborts this group from another thread.
    fn abort_handle(&self) -> AbortHandle;
    /// Fails the collective in progress and every later one; peers fail promptly too.
    /// Create the group again (next generation) to go on.
    fn abort(&mut self) {
        self.abort_handle().abort()
    }

    /// All-reduces a candle tensor, returning the result on the tensor's device. The default
    /// moves the data through host memory; NCCL with the `cuda` feature reduces CUDA tensors
    /// on the device.
    fn all_reduce_tensor(&mut self, t: &candle_core::Tensor, op: ReduceOp) -> Result<candle_core::Tensor> {
        tensor::all_reduce_host(self, t, op)
    }
    /// Broadcasts `root`'s tensor; every rank passes a tensor of the same shape and dtype.
    fn broadcast_tensor(&mut self, t: &candle_core::Tensor, root: usize) -> Result<candle_core::Tensor> {
        tensor::broadcast_host(self, t, root)
    }
}

/// Typed and tensor conveniences over any [`Communicator`].
pub trait CommunicatorExt: Communicator {
    fn all_reduce_slice<T: Element>(&mut self, buf: &mut [T], op: ReduceOp) -> Result<()> {
        self.all_reduce(BufMut::new(buf), op)
    }
    fn broadcast_slice<T: Element>(&mut self, buf: &mut [T], root: usize) -> Result<()> {
        self.broadcast(BufMut::new(buf), root)
    }
    /// Gathers every rank's `input` into a new vector, rank order.
    fn all_gather_vec<T: Element>(&mut self, input: &[T]) -> Result<Vec<T>> {
        let mut out = vec![input.first().copied().unwrap_or_else(|| T::from_f64(0.0)); input.len() * self.world_size()];
        self.all_gather(Buf::new(input), BufMut::new(&mut out))?;
        Ok(out)
    }
    /// This rank's part of the reduced `input`.
    fn reduce_scatter_vec<T: Element>(&mut self, input: &[T], op: ReduceOp) -> Result<Vec<T>> {
        let part = chunk_range(input.len(), self.world_size(), self.rank());
        let mut out = input[part].to_vec();
        self.reduce_scatter(Buf::new(input), BufMut::new(&mut out), op)?;
        Ok(out)
    }
    /// Gathers tensors of equal shape along a new leading dimension (`[world_size, ..shape]`).
    fn all_gather_tensor(&mut self, t: &candle_core::Tensor) -> Result<candle_core::Tensor> {
        tensor::all_gather_host(self, t)
    }
}

impl<C: Communicator + ?Sized> CommunicatorExt for C {}

/// Joins a group: returns this rank's communicator once every rank has joined (or a
/// [`CollectiveError::Rendezvous`] naming who did not, within the timeout).
pub fn init(opts: GroupOptions, store: Arc<dyn Store>) -> Result<Box<dyn Communicator>> {
    Ok(match opts.backend {
        Backend::Ring => Box::new(RingComm::new(opts, store)?),
        Backend::Shm => Box::new(ShmComm::new(opts, store)?),
        #[cfg(feature = "nccl")]
        Backend::Nccl => Box::new(nccl::NcclComm::new(opts, store)?),
        #[cfg(not(feature = "nccl"))]
        Backend::Nccl => {
            return Err(CollectiveError::Unsupported(
                "this build has no NCCL backend: build with the `nccl` feature (on by default)".into(),
            ))
        }
    })
}
