//! NCCL on a real GPU. Without one, creating a group must fail with a clear error; with
//! `FLARE_REQUIRE_GPU=1` (scripts/gpu-check.sh sets it) a missing GPU fails the test instead.
#![cfg(feature = "nccl")]

use std::sync::Arc;
use std::time::Duration;

use flare_collectives::nccl::{available, NcclComm};
use flare_collectives::{init, Backend, CollectiveError, Communicator, CommunicatorExt, GroupOptions, MemStore, ReduceOp, Store};

fn store() -> Arc<dyn Store> {
    Arc::new(MemStore::new())
}

/// `None` when this machine has no usable GPU and none is required.
fn gpu() -> Option<()> {
    match available() {
        Ok(()) => Some(()),
        Err(why) => {
            assert!(std::env::var("FLARE_REQUIRE_GPU").is_err(), "FLARE_REQUIRE_GPU is set but NCCL is unusable: {why}");
            None
        }
    }
}

#[test]
fn without_a_gpu_nccl_is_a_clear_error() {
    if gpu().is_some() {
        return;
    }
    let e = init(GroupOptions::new("g", 0, 1).backend(Backend::Nccl), store()).err().expect("NCCL without a GPU");
    assert!(matches!(e, CollectiveError::Unsupported(_)), "{e}");
    let text = e.to_string();
    assert!(text.contains("CUDA driver") || text.contains("libnccl") || text.contains("no GPU"), "{text}");
}

#[test]
fn device_buffers_every_dtype_and_several_communicators() {
    if gpu().is_none() {
        eprintln!("no GPU here: the NCCL device test runs in scripts/gpu-check.sh");
        return;
    }
    let opts = |name: &str| GroupOptions::new(name, 0, 1).backend(Backend::Nccl).timeout(Duration::from_secs(60));
    let mut c = NcclComm::new(opts("dev"), store()).unwrap();
    let host: Vec<f32> = (0..1_000_003).map(|i| (i % 1000) as f32).collect();
    let mut d = c.stream().clone_htod(&host).unwrap();
    c.all_reduce_device(&mut d, ReduceOp::Sum).unwrap();
    c.broadcast_device(&mut d, 0).unwrap();
    let back = c.stream().clone_dtoh(&d).unwrap();
    assert_eq!(back, host, "world size 1: the reduction is the input");
    let mut gathered = c.stream().alloc_zeros::<f32>(host.len()).unwrap();
    c.all_gather_device(&d, &mut gathered).unwrap();
    assert_eq!(c.stream().clone_dtoh(&gathered).unwrap(), host);

    // Host buffers through the trait: every dtype and op.
    for op in ReduceOp::ALL {
        let mut a = vec![3.5f64; 17];
        c.all_reduce_slice(&mut a, op).unwrap();
        assert_eq!(a, vec![3.5; 17], "{op:?}");
        let mut b = vec![half::bf16::from_f32(2.0); 9];
        c.all_reduce_slice(&mut b, op).unwrap();
        assert_eq!(b[8].to_f32(), 2.0);
        let mut h = vec![half::f16::from_f32(-1.5); 9];
        c.all_reduce_slice(&mut h, op).unwrap();
        assert_eq!(h[0].to_f32(), -1.5);
        let mut i = vec![-7i32; 5];
        c.all_reduce_slice(&mut i, op).unwrap();
        assert_eq!(i, [-7; 5]);
        let mut l = vec![1i64 << 40; 5];
        c.all_reduce_slice(&mut l, op).unwrap();
        assert_eq!(l, [1i64 << 40; 5]);
    }
    c.barrier().unwrap();
    assert_eq!(c.reduce_scatter_vec(&[1.0f32, 2.0, 3.0], ReduceOp::Sum).unwrap(), [1.0, 2.0, 3.0]);

    // Several communicators on the one GPU at once, each from its own thread.
    std::thread::scope(|s| {
        for k in 0..4 {
            s.spawn(move || {
                let mut c = NcclComm::new(opts(&format!("many{k}")), store()).unwrap();
                let host: Vec<i64> = (0..(1 << 20)).map(|i| i * k).collect();
                let mut d = c.stream().clone_htod(&host).unwrap();
                for _ in 0..10 {
                    c.all_reduce_device(&mut d, ReduceOp::Max).unwrap();
                }
                assert_eq!(c.stream().clone_dtoh(&d).unwrap(), host);
            });
        }
    });
}

#[cfg(feature = "cuda")]
#[test]
fn candle_cuda_tensors_reduce_on_the_device() {
    if gpu().is_none() {
        return;
    }
    use candle_core::{Device, Tensor};
    let dev = Device::new_cuda(0).unwrap();
    let mut c = NcclComm::new(GroupOptions::new("candle", 0, 1).backend(Backend::Nccl), store()).unwrap();
    let t = Tensor::arange(0f32, 4096.0, &dev).unwrap().reshape((64, 64)).unwrap();
    let r = c.all_reduce_tensor(&t, ReduceOp::Sum).unwrap();
    assert!(r.device().is_cuda());
    assert_eq!(r.dims(), &[64, 64]);
    let diff = (r - &t).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(diff, 0.0);
    let m = (t.matmul(&t.t().unwrap()).unwrap()).to_dtype(candle_core::DType::BF16).unwrap();
    let rm = c.all_reduce_tensor(&m, ReduceOp::Mean).unwrap();
    assert_eq!(rm.dtype(), candle_core::DType::BF16);
}
