//! Data-parallel gradient averaging, PyTorch DDP's way: gradients are flattened into buckets
//! (default 25 MB, last parameters first, as DDP orders them), each bucket is all-reduced
//! (mean) on the communicator's thread while the next one is being flattened, and the
//! results are copied back as soon as each bucket returns.

use crate::params::Grads;
use crate::Result;
use candle_core::{DType, Device, Tensor};
use flare_collectives::{AsyncCommunicator, ReduceOp, Work};
use std::time::{Duration, Instant};

/// DDP's default bucket size.
pub const DEFAULT_BUCKET_BYTES: usize = 25 * 1024 * 1024;

/// The buckets: index ranges over the gradients, filled from the last gradient backwards.
pub fn buckets(sizes_bytes: &[usize], cap: usize) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut bytes = 0usize;
    for i in (0..sizes_bytes.len()).rev() {
        cur.push(i);
        bytes += sizes_bytes[i];
        if bytes >= cap.max(1) {
            out.push(std::mem::take(&mut cur));
            bytes = 0;
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

enum Pending {
    Host(Work<Vec<f32>>),
    Device(Work<Tensor>),
}

/// Averages `grads` over every rank of `comm`; returns them and the time spent waiting on
/// communication (what did not overlap with flattening and copying).
pub fn all_reduce_mean(comm: &AsyncCommunicator, grads: Grads, bucket_bytes: usize) -> Result<(Grads, Duration)> {
    if comm.world_size() == 1 || grads.0.is_empty() {
        return Ok((grads, Duration::ZERO));
    }
    let sizes: Vec<usize> = grads.0.iter().map(|g| g.elem_count() * g.dtype().size_in_bytes()).collect();
    let plan = buckets(&sizes, bucket_bytes);
    let mut pending = Vec::with_capacity(plan.len());
    for bucket in &plan {
        let host = bucket.iter().all(|&i| matches!(grads.0[i].device(), Device::Cpu) && grads.0[i].dtype() == DType::F32);
        if host {
            let total: usize = bucket.iter().map(|&i| grads.0[i].elem_count()).sum();
            let mut flat = Vec::with_capacity(total);
            for &i in bucket {
                flat.extend_from_slice(&grads.0[i].flatten_all()?.to_vec1::<f32>()?);
            }
            pending.push(Pending::Host(comm.all_reduce(flat, ReduceOp::Mean)));
        } else {
            let parts = bucket.iter().map(|&i| grads.0[i].flatten_all()).collect::<candle_core::Result<Vec<_>>>()?;
            let flat = Tensor::cat(&parts, 0)?;
            pending.push(Pending::Device(comm.submit(move |c| c.all_reduce_tensor(&flat, ReduceOp::Mean))));
        }
    }
    // Each reduced bucket becomes one tensor (the host vector is moved, not copied) and every
    // gradient a view of its part.
    let mut out = grads.0.clone();
    let mut waited = Duration::ZERO;
    for (bucket, p) in plan.iter().zip(pending) {
        let t0 = Instant::now();
        let flat = match p {
            Pending::Host(w) => {
                let v = w.wait()?;
                let n = v.len();
                Tensor::from_vec(v, n, &Device::Cpu)?
            }
            Pending::Device(w) => w.wait()?,
        };
        waited += t0.elapsed();
        let mut off = 0;
        for &i in bucket {
            let g = &grads.0[i];
            let n = g.elem_count();
            out[i] = flat.narrow(0, off, n)?.reshape(g.dims())?;
            off += n;
        }
    }
    Ok((Grads(out), waited))
}

#[cfg(test)]
mod tests {
    use super::buckets;

    #[test]
    fn buckets_fill_from_the_last_gradient_and_cover_each_once() {
        let b = buckets(&[10, 30, 5, 40, 1], 35);
        assert_eq!(b, vec![vec![4, 3], vec![2, 1], vec![0]]);
        let all: Vec<usize> = b.concat();
        let mut sorted = all.clone();
        sorted.sort();
        assert_eq!(sorted, vec![0, 1, 2, 3, 4]);
        assert_eq!(buckets(&[1, 1, 1], usize::MAX), vec![vec![2, 1, 0]]);
        assert!(buckets(&[], 10).is_empty());
    }
}
