//! The `nccl` backend: NCCL through cudarc, loaded at run time.
//!
//! Ranks exchange NCCL's unique id through the group's store, after a store barrier so that
//! `ncclCommInitRank` (which cannot time out) only starts once every rank is there. Collectives
//! are queued on this rank's CUDA stream and then waited on with the group's deadline: past it,
//! the communicator is aborted (`ncclCommAbort`) and the error names the ranks that never
//! arrived, instead of the silent hang NCCL is known for.
//!
//! Device buffers ([`CudaSlice`]) are reduced in place on the GPU; host buffers (the
//! [`Communicator`] trait) go through the device; with the `cuda` feature, candle CUDA tensors
//! are reduced on the device without leaving it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits};
use cudarc::nccl::{Comm, Id, NcclType, ReduceOp as NReduce};

use crate::check;
use crate::group::{group_accessors, GroupCore};
use crate::ring::Fail;
use crate::{Backend, Buf, BufMut, CollectiveError, Communicator, DType, GroupOptions, ReduceOp, Result, Store};

fn nccl_op(op: ReduceOp) -> NReduce {
    match op {
        ReduceOp::Sum => NReduce::Sum,
        ReduceOp::Mean => NReduce::Avg,
        ReduceOp::Max => NReduce::Max,
        ReduceOp::Min => NReduce::Min,
        ReduceOp::Product => NReduce::Prod,
    }
}

fn cuda_err(what: &str, e: impl std::fmt::Debug) -> CollectiveError {
    CollectiveError::Io(format!("{what}: {e:?}"))
}

/// Whether this process can create NCCL communicators, and why not.
pub fn available() -> std::result::Result<(), String> {
    if !flare_gpu::cuda_driver_present() {
        return Err(format!(
            "NCCL needs the CUDA driver, and this machine has none ({})",
            flare_gpu::discover().reason.clone().unwrap_or_default()
        ));
    }
    if !flare_gpu::nccl_present() {
        return Err("libnccl.so was not found: put a directory with libnccl.so (a symlink to libnccl.so.2, \
                    e.g. from the nvidia-nccl-cu13 wheel) on LD_LIBRARY_PATH"
            .into());
    }
    if flare_gpu::discover().gpus.is_empty() {
        return Err(format!("no GPU is visible ({})", flare_gpu::discover().reason.clone().unwrap_or_default()));
    }
    Ok(())
}

/// One rank's NCCL communicator on one CUDA device.
pub struct NcclComm {
    core: GroupCore,
    stream: Arc<CudaStream>,
    comm: Option<Comm>,
}

// SAFETY: an NCCL communicator may move between threads as long as no two threads call it
// at once (NCCL's rule); every use goes through `&mut self`, and cudarc binds the CUDA context
// to the calling thread on each call.
unsafe impl Send for NcclComm {}

impl NcclComm {
    pub fn new(opts: GroupOptions, store: Arc<dyn Store>) -> Result<Self> {
        available().map_err(CollectiveError::Unsupported)?;
        let core = GroupCore::new(opts, store)?;
        let (rank, n) = (core.rank(), core.world());
        let group = core.name().to_string();
        let rdv = |detail: String| CollectiveError::Rendezvous { group: group.clone(), detail };
        let device = core.opts.device.unwrap_or(0);
        let ctx = CudaContext::new(device).map_err(|e| cuda_err(&format!("CUDA device {device}"), e))?;
        let stream = ctx.new_stream().map_err(|e| cuda_err("cuCtxCreateStream", e))?;
        let key = format!("{}/nccl_id", core.prefix);
        let id = if rank == 0 {
            let id = Id::new().map_err(|e| cuda_err("ncclGetUniqueId", e))?;
            let bytes: Vec<u8> = id.internal().iter().map(|b| *b as u8).collect();
            core.store.set(&key, &bytes)?;
            id
        } else {
            let bytes = core
                .store
                .get(&key, core.opts.timeout)
                .map_err(|_| rdv(format!("rank 0 never published the NCCL id within {:?}", core.opts.timeout)))?;
            let internal: [std::ffi::c_char; 128] =
                bytes
                    .iter()
                    .map(|b| *b as std::ffi::c_char)
                    .collect::<Vec<_>>()
                    .try_into()
                    .map_err(|_| rdv(format!("the NCCL id in the store has {} bytes, not 128", bytes.len())))?;
            Id::uninit(internal)
        };
        // ncclCommInitRank blocks until every rank calls it and cannot time out: wait for all
        // ranks in the store first, so a missing rank is an error and not a hang.
        core.store.set(&format!("{}/nccl_ready/{rank}", core.prefix), b"1")?;
        let deadline = Instant::now() + core.opts.timeout;
        loop {
            let missing: Vec<usize> = (0..n)
                .filter(|r| core.store.try_get(&format!("{}/nccl_ready/{r}", core.prefix)).ok().flatten().is_none())
                .collect();
            if missing.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                return Err(rdv(format!("ranks {missing:?} never joined within {:?}", core.opts.timeout)));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let comm = Comm::from_rank(stream.clone(), rank, n, id).map_err(|e| cuda_err("ncclCommInitRank", e))?;
        Ok(NcclComm { core, stream, comm: Some(comm) })
    }

    /// The CUDA stream this communicator's work runs on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    fn comm(&self) -> Result<&Comm> {
        self.comm.as_ref().ok_or_else(|| CollectiveError::Aborted { group: self.core.name().into() })
    }

    /// Waits for the stream's queued work with the group's deadline; aborts NCCL past it.
    fn wait(&mut self, op: &'static str, seq: u64, start: Instant) -> Result<()> {
        let event = self.stream.record_event(None).map_err(|e| cuda_err("cuEventRecord", e))?;
        let deadline = self.core.io_deadline(start);
        let mut nap = Duration::from_micros(5);
        loop {
            match event.try_is_complete() {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => {
                    self.comm = None;
                    return Err(self.core.fail(
                        op,
                        seq,
                        start,
                        Fail::Peer { peer: self.core.rank(), detail: format!("CUDA: {e:?}") },
                    ));
                }
            }
            if self.core.abort.is_aborted() {
                self.comm = None;
                return Err(CollectiveError::Aborted { group: self.core.name().into() });
            }
            if Instant::now() > deadline {
                // ncclCommAbort (in Comm's drop) unblocks the kernels waiting for the missing ranks.
                self.comm = None;
                let detail = "NCCL kernels were still waiting; the communicator was aborted".to_string();
                return Err(self.core.fail(op, seq, start, Fail::Timeout { detail }));
            }
            std::thread::sleep(nap);
            nap = (nap * 2).min(Duration::from_millis(1));
        }
    }

    fn nccl<T>(&self, what: &str, r: std::result::Result<T, cudarc::nccl::result::NcclError>) -> Result<T> {
        r.map_err(|e| cuda_err(what, e))
    }

    /// All-reduces a device buffer in place.
    pub fn all_reduce_device<T: NcclType + DeviceRepr>(&mut self, buf: &mut CudaSlice<T>, op: ReduceOp) -> Result<()> {
        let seq = self.core.enter()?;
        let start = Instant::now();
        let r = self.comm()?.all_reduce_in_place(buf, &nccl_op(op));
        self.nccl("ncclAllReduce", r)?;
        self.wait("all_reduce", seq, start)
    }

    /// Broadcasts a device buffer from `root` in place.
    pub fn broadcast_device<T: NcclType + DeviceRepr>(&mut self, buf: &mut CudaSlice<T>, root: usize) -> Result<()> {
        let n = self.core.world();
        check::root(root, n)?;
        let seq = self.core.enter()?;
        let start = Instant::now();
        let r = self.comm()?.broadcast_in_place(buf, root as i32);
        self.nccl("ncclBroadcast", r)?;
        self.wait("broadcast", seq, start)
    }

    /// Gathers every rank's `input` into `output` (world size x input long) on the device.
    pub fn all_gather_device<T: NcclType + DeviceRepr>(&mut self, input: &CudaSlice<T>, output: &mut CudaSlice<T>) -> Result<()> {
        let n = self.core.world();
        if output.len() != input.len() * n {
            return Err(CollectiveError::InvalidArgument(format!(
                "all_gather output holds {} elements; it needs {n} x {}",
                output.len(),
                input.len()
            )));
        }
        let seq = self.core.enter()?;
        let start = Instant::now();
        let r = self.comm()?.all_gather(input, output);
        self.nccl("ncclAllGather", r)?;
        self.wait("all_gather", seq, start)
    }

    fn host_op<T: NcclType + DeviceRepr + ValidAsZeroBits + Copy>(
        &mut self,
        bytes: &mut [u8],
        f: impl FnOnce(&mut Self, &mut CudaSlice<T>) -> Result<()>,
    ) -> Result<()> {
        // SAFETY: the bytes view a `[T]` of this dtype (Buf/BufMut guarantee it).
        let host =
            unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr() as *mut T, bytes.len() / std::mem::size_of::<T>()) };
        if host.is_empty() {
            return f(self, &mut self.stream.alloc_zeros::<T>(0).map_err(|e| cuda_err("cuMemAlloc", e))?);
        }
        let mut dev = self.stream.clone_htod(host).map_err(|e| cuda_err("cuMemcpyHtoD", e))?;
        f(self, &mut dev)?;
        self.stream.memcpy_dtoh(&dev, host).map_err(|e| cuda_err("cuMemcpyDtoH", e))?;
        self.stream.synchronize().map_err(|e| cuda_err("cuStreamSynchronize", e))
    }
}

/// Dispatches on a dtype to a function generic over the NCCL element type.
macro_rules! nccl_dtype {
    ($dtype:expr, $f:ident ( $($arg:expr),* )) => {
        match $dtype {
            DType::F32 => $f::<f32>($($arg),*),
            DType::F64 => $f::<f64>($($arg),*),
            DType::F16 => $f::<half::f16>($($arg),*),
            DType::BF16 => $f::<half::bf16>($($arg),*),
            DType::I32 => $f::<i32>($($arg),*),
            DType::I64 => $f::<i64>($($arg),*),
        }
    };
}

impl Communicator for NcclComm {
    group_accessors!(Backend::Nccl);

    fn all_reduce(&mut self, mut buf: BufMut<'_>, op: ReduceOp) -> Result<()> {
        fn go<T: NcclType + DeviceRepr + ValidAsZeroBits + Copy>(c: &mut NcclComm, b: &mut [u8], op: ReduceOp) -> Result<()> {
            c.host_op::<T>(b, |c, d| c.all_reduce_device(d, op))
        }
        let dtype = buf.dtype();
        nccl_dtype!(dtype, go(self, buf.as_bytes_mut(), op))
    }

    fn broadcast(&mut self, mut buf: BufMut<'_>, root: usize) -> Result<()> {
        fn go<T: NcclType + DeviceRepr + ValidAsZeroBits + Copy>(c: &mut NcclComm, b: &mut [u8], root: usize) -> Result<()> {
            c.host_op::<T>(b, |c, d| c.broadcast_device(d, root))
        }
        let dtype = buf.dtype();
        nccl_dtype!(dtype, go(self, buf.as_bytes_mut(), root))
    }

    fn all_gather(&mut self, input: Buf<'_>, mut output: BufMut<'_>) -> Result<()> {
        check::all_gather(&input, &output, self.core.world())?;
        fn go<T: NcclType + DeviceRepr + ValidAsZeroBits + Copy>(c: &mut NcclComm, i: &[u8], o: &mut [u8]) -> Result<()> {
            // SAFETY: as in host_op.
            let input = unsafe { std::slice::from_raw_parts(i.as_ptr() as *const T, i.len() / std::mem::size_of::<T>()) };
            let dev_in = c.stream.clone_htod(input).map_err(|e| cuda_err("cuMemcpyHtoD", e))?;
            c.host_op::<T>(o, |c, d| c.all_gather_device(&dev_in, d))
        }
        let dtype = input.dtype();
        nccl_dtype!(dtype, go(self, input.as_bytes(), output.as_bytes_mut()))
    }

    fn reduce_scatter(&mut self, input: Buf<'_>, mut output: BufMut<'_>, op: ReduceOp) -> Result<()> {
        let (n, r) = (self.core.world(), self.core.rank());
        let own = check::reduce_scatter(&input, &output, n, r)?;
        // ncclReduceScatter needs equal parts; an all-reduce gives every length the same result.
        let mut all = input.as_bytes().to_vec();
        let es = input.dtype().size();
        self.all_reduce(BufMut { dtype: input.dtype(), bytes: &mut all }, op)?;
        output.as_bytes_mut().copy_from_slice(&all[own.start * es..own.end * es]);
        Ok(())
    }

    fn barrier(&mut self) -> Result<()> {
        let mut x = [0i32; 1];
        self.all_reduce(BufMut::new(&mut x), ReduceOp::Sum)
    }

    fn send(&mut self, buf: Buf<'_>, dst: usize) -> Result<()> {
        fn go<T: NcclType + DeviceRepr + ValidAsZeroBits + Copy>(c: &mut NcclComm, b: &[u8], dst: usize) -> Result<()> {
            // SAFETY: as in host_op.
            let host = unsafe { std::slice::from_raw_parts(b.as_ptr() as *const T, b.len() / std::mem::size_of::<T>()) };
            let dev = c.stream.clone_htod(host).map_err(|e| cuda_err("cuMemcpyHtoD", e))?;
            let start = Instant::now();
            let r = c.comm()?.send(&dev, dst as i32);
            c.nccl("ncclSend", r)?;
            c.wait("send", 0, start)
        }
        let n = self.core.world();
        check::peer("send to", dst, self.core.rank(), n)?;
        let dtype = buf.dtype();
        nccl_dtype!(dtype, go(self, buf.as_bytes(), dst))
    }

    fn recv(&mut self, mut buf: BufMut<'_>, src: usize) -> Result<()> {
        fn go<T: NcclType + DeviceRepr + ValidAsZeroBits + Copy>(c: &mut NcclComm, b: &mut [u8], src: usize) -> Result<()> {
            c.host_op::<T>(b, |c, d| {
                let start = Instant::now();
                let r = c.comm()?.recv(d, src as i32);
                c.nccl("ncclRecv", r)?;
                c.wait("recv", 0, start)
            })
        }
        let n = self.core.world();
        check::peer("recv from", src, self.core.rank(), n)?;
        let dtype = buf.dtype();
        nccl_dtype!(dtype, go(self, buf.as_bytes_mut(), src))
    }

    #[cfg(feature = "cuda")]
    fn all_reduce_tensor(&mut self, t: &candle_core::Tensor, op: ReduceOp) -> Result<candle_core::Tensor> {
        if !t.device().is_cuda() {
            return crate::tensor::all_reduce_host(self, t, op);
        }
        cuda_tensor::all_reduce(self, t, op)
    }
}

#[cfg(feature = "cuda")]
mod cuda_tensor {
    //! candle CUDA tensors reduced on the device: the tensor's slice goes to NCCL as it is.
    use super::*;
    use candle_core::backend::BackendStorage;
    use candle_core::cuda::CudaDType;
    use candle_core::{op::BackpropOp, CudaStorage, Storage, Tensor};

    fn candle(e: candle_core::Error) -> CollectiveError {
        CollectiveError::InvalidArgument(format!("candle: {e}"))
    }

    fn go<T: NcclType + DeviceRepr + ValidAsZeroBits + CudaDType + Copy>(
        c: &mut NcclComm,
        t: &Tensor,
        op: ReduceOp,
    ) -> Result<Tensor> {
        let t = t.contiguous().map_err(candle)?;
        let (storage, layout) = t.storage_and_layout();
        let Storage::Cuda(cs) = &*storage else {
            return Err(CollectiveError::InvalidArgument("expected a CUDA tensor".into()));
        };
        let src = cs.as_cuda_slice::<T>().map_err(candle)?;
        let (a, b) =
            layout.contiguous_offsets().ok_or_else(|| CollectiveError::InvalidArgument("tensor is not contiguous".into()))?;
        let view = src.slice(a..b);
        let mut out = c.stream.alloc_zeros::<T>(b - a).map_err(|e| cuda_err("cuMemAlloc", e))?;
        c.stream.memcpy_dtod(&view, &mut out).map_err(|e| cuda_err("cuMemcpyDtoD", e))?;
        let device = cs.device().clone();
        drop(storage);
        c.all_reduce_device(&mut out, op)?;
        let storage = Storage::Cuda(CudaStorage::wrap_cuda_slice(out, device));
        Ok(Tensor::from_storage(storage, t.shape().clone(), BackpropOp::none(), false))
    }

    pub(super) fn all_reduce(c: &mut NcclComm, t: &Tensor, op: ReduceOp) -> Result<Tensor> {
        use candle_core::DType as C;
        match t.dtype() {
            C::F32 => go::<f32>(c, t, op),
            C::F64 => go::<f64>(c, t, op),
            C::F16 => go::<half::f16>(c, t, op),
            C::BF16 => go::<half::bf16>(c, t, op),
            C::I64 => go::<i64>(c, t, op),
            C::I32 => go::<i32>(c, t, op),
            d => Err(CollectiveError::InvalidArgument(format!("tensors of {d:?} cannot be reduced by NCCL here"))),
        }
    }
}
