//! Collectives on candle tensors through host memory (any backend, any device).

use candle_core::{DType as CDType, Device, Tensor};

use crate::{Buf, BufMut, CollectiveError, Communicator, ReduceOp, Result};

fn candle(e: candle_core::Error) -> CollectiveError {
    CollectiveError::InvalidArgument(format!("candle: {e}"))
}

fn unsupported(d: CDType) -> CollectiveError {
    CollectiveError::InvalidArgument(format!("tensors of {d:?} cannot be reduced: use f32, f64, f16, bf16, i32 or i64"))
}

/// Runs `f` on the tensor's elements as a host vector of their own type, then makes a tensor
/// of `shape` on `device` from the result.
macro_rules! on_host {
    ($t:expr, $shape:expr, $device:expr, |$v:ident| $body:expr) => {{
        let flat = $t.flatten_all().map_err(candle)?.to_device(&Device::Cpu).map_err(candle)?;
        match $t.dtype() {
            CDType::F32 => {
                let mut $v = flat.to_vec1::<f32>().map_err(candle)?;
                $body;
                Tensor::from_vec($v, $shape, $device)
            }
            CDType::F64 => {
                let mut $v = flat.to_vec1::<f64>().map_err(candle)?;
                $body;
                Tensor::from_vec($v, $shape, $device)
            }
            CDType::F16 => {
                let mut $v = flat.to_vec1::<half::f16>().map_err(candle)?;
                $body;
                Tensor::from_vec($v, $shape, $device)
            }
            CDType::BF16 => {
                let mut $v = flat.to_vec1::<half::bf16>().map_err(candle)?;
                $body;
                Tensor::from_vec($v, $shape, $device)
            }
            CDType::I32 => {
                let mut $v = flat.to_vec1::<i32>().map_err(candle)?;
                $body;
                Tensor::from_vec($v, $shape, $device)
            }
            CDType::I64 => {
                let mut $v = flat.to_vec1::<i64>().map_err(candle)?;
                $body;
                Tensor::from_vec($v, $shape, $device)
            }
            d => return Err(unsupported(d)),
        }
        .map_err(candle)
    }};
}

pub(crate) fn all_reduce_host<C: Communicator + ?Sized>(c: &mut C, t: &Tensor, op: ReduceOp) -> Result<Tensor> {
    on_host!(t, t.shape(), t.device(), |v| c.all_reduce(BufMut::new(&mut v), op)?)
}

pub(crate) fn broadcast_host<C: Communicator + ?Sized>(c: &mut C, t: &Tensor, root: usize) -> Result<Tensor> {
    on_host!(t, t.shape(), t.device(), |v| c.broadcast(BufMut::new(&mut v), root)?)
}

pub(crate) fn all_gather_host<C: Communicator + ?Sized>(c: &mut C, t: &Tensor) -> Result<Tensor> {
    let n = c.world_size();
    let mut dims = vec![n];
    dims.extend_from_slice(t.dims());
    on_host!(t, dims.as_slice(), t.device(), |v| {
        let mut out = v.repeat(n);
        c.all_gather(Buf::new(&v), BufMut::new(&mut out))?;
        v = out;
    })
}
