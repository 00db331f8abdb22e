//! Every op and dtype on world sizes 1 to 8, as threads, against a serial reduction.

mod common;

use std::time::{Duration, Instant};

use common::run_threads;
use flare_collectives::{chunk_range, Backend, CollectiveError, CommunicatorExt, DType, Element, ReduceOp};
use half::{bf16, f16};

/// A deterministic input: element `i` of rank `r`. Products stay near 1 so nothing overflows.
fn value<T: Element>(r: usize, i: usize, op: ReduceOp) -> T {
    let h = (r as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let h = (h ^ (h >> 31)) % 1000;
    let v = match (T::DTYPE, op) {
        (DType::I32 | DType::I64, ReduceOp::Product) => (h % 3) as f64 + 1.0,
        (DType::I32 | DType::I64, _) => h as f64 - 500.0,
        (_, ReduceOp::Product) => 0.9 + h as f64 / 5000.0,
        _ => (h as f64 - 500.0) / 250.0,
    };
    T::from_f64(v)
}

/// The serial reduction of element `i` over `n` ranks, in rank order, in the element's own arithmetic.
fn serial<T: Element>(n: usize, i: usize, op: ReduceOp) -> T {
    let mut acc: T = value(0, i, op);
    for r in 1..n {
        let v: T = value(r, i, op);
        acc = match op {
            ReduceOp::Sum | ReduceOp::Mean => acc.add(v),
            ReduceOp::Product => acc.mul(v),
            ReduceOp::Max => {
                if v > acc {
                    v
                } else {
                    acc
                }
            }
            ReduceOp::Min => {
                if v < acc {
                    v
                } else {
                    acc
                }
            }
        };
    }
    if op == ReduceOp::Mean {
        acc = acc.div_count(n);
    }
    acc
}

fn close<T: Element>(got: T, want: T, n: usize, op: ReduceOp) -> bool {
    let (g, w) = (got.to_f64(), want.to_f64());
    let tol = match T::DTYPE {
        DType::I32 | DType::I64 => return g == w,
        // Max and min pick one of the inputs: exact in every order.
        _ if matches!(op, ReduceOp::Max | ReduceOp::Min) => return g == w,
        DType::F64 => 1e-12,
        DType::F32 => 1e-5,
        DType::F16 => 4e-3,
        DType::BF16 => 3e-2,
    };
    (g - w).abs() <= tol * n as f64 * (1.0 + w.abs())
}

fn check_all_ops<T: Element>(c: &mut dyn flare_collectives::Communicator, lens: &[usize]) {
    let (r, n) = (c.rank(), c.world_size());
    for &len in lens {
        for op in ReduceOp::ALL {
            let mut buf: Vec<T> = (0..len).map(|i| value(r, i, op)).collect();
            c.all_reduce_slice(&mut buf, op).unwrap_or_else(|e| panic!("all_reduce {op:?} {len}: {e}"));
            for (i, got) in buf.iter().enumerate() {
                let want = serial::<T>(n, i, op);
                assert!(close(*got, want, n, op), "{:?} all_reduce {op:?} n={n} len={len} [{i}]: {got:?} != {want:?}", T::DTYPE);
            }
            // reduce_scatter: this rank's part of the same reduction.
            let input: Vec<T> = (0..len).map(|i| value(r, i, op)).collect();
            let part = c.reduce_scatter_vec(&input, op).unwrap();
            let range = chunk_range(len, n, r);
            assert_eq!(part.len(), range.len());
            for (j, got) in part.iter().enumerate() {
                let want = serial::<T>(n, range.start + j, op);
                assert!(close(*got, want, n, op), "{:?} reduce_scatter {op:?} n={n} len={len}", T::DTYPE);
            }
        }
        // broadcast from every root.
        for root in 0..n {
            let mut buf: Vec<T> = (0..len).map(|i| value(r, i, ReduceOp::Sum)).collect();
            c.broadcast_slice(&mut buf, root).unwrap();
            let want: Vec<T> = (0..len).map(|i| value(root, i, ReduceOp::Sum)).collect();
            assert!(buf.iter().zip(&want).all(|(a, b)| a.to_f64() == b.to_f64()), "broadcast n={n} root={root} len={len}");
        }
        // all_gather.
        let mine: Vec<T> = (0..len).map(|i| value(r, i, ReduceOp::Sum)).collect();
        let all = c.all_gather_vec(&mine).unwrap();
        for q in 0..n {
            for i in 0..len {
                assert_eq!(all[q * len + i].to_f64(), value::<T>(q, i, ReduceOp::Sum).to_f64(), "all_gather n={n}");
            }
        }
    }
    c.barrier().unwrap();
}

fn every_dtype_and_op(backend: Backend) {
    // Lengths below, at and above the world size, not divisible by it, and past one chunk.
    let lens = [0usize, 1, 7, 1000, 70_001];
    for n in 1..=8 {
        run_threads(n, backend, Duration::from_secs(60), |c| {
            check_all_ops::<f32>(c, &lens);
            check_all_ops::<f64>(c, &lens[..4]);
            check_all_ops::<f16>(c, &lens[..4]);
            check_all_ops::<bf16>(c, &lens[..4]);
            check_all_ops::<i32>(c, &lens);
            check_all_ops::<i64>(c, &lens[..4]);
        });
    }
}

#[test]
fn ring_every_dtype_and_op_world_1_to_8() {
    every_dtype_and_op(Backend::Ring);
}

#[test]
fn shm_every_dtype_and_op_world_1_to_8() {
    every_dtype_and_op(Backend::Shm);
}

fn large_sum(backend: Backend) {
    // 16 MiB of f32 over 4 ranks: many pipeline chunks and staging windows.
    let len = 4 << 20;
    let out = run_threads(4, backend, Duration::from_secs(60), |c| {
        let r = c.rank() as f32;
        let mut v: Vec<f32> = (0..len).map(|i| (i % 1024) as f32 + r).collect();
        c.all_reduce_slice(&mut v, ReduceOp::Sum).unwrap();
        v.iter().enumerate().all(|(i, x)| *x == 4.0 * (i % 1024) as f32 + 6.0)
    });
    assert!(out.iter().all(|ok| *ok));
}

#[test]
fn ring_large_buffer() {
    large_sum(Backend::Ring);
}

#[test]
fn shm_large_buffer() {
    large_sum(Backend::Shm);
}

fn point_to_point(backend: Backend) {
    run_threads(3, backend, Duration::from_secs(30), |c| {
        let len = 300_000; // more than one shm mailbox
        match c.rank() {
            0 => {
                let v: Vec<i64> = (0..len as i64).collect();
                c.send((&v).into(), 2).unwrap();
                let mut back = vec![0i64; 5];
                c.recv((&mut back).into(), 2).unwrap();
                assert_eq!(back, [4, 3, 2, 1, 0]);
            }
            2 => {
                let mut v = vec![0i64; len];
                c.recv((&mut v).into(), 0).unwrap();
                assert!(v.iter().enumerate().all(|(i, x)| *x == i as i64));
                c.send((&vec![4i64, 3, 2, 1, 0]).into(), 0).unwrap();
            }
            _ => {}
        }
        // The group is still in step for collectives afterwards.
        let mut x = [c.rank() as i32];
        c.all_reduce_slice(&mut x, ReduceOp::Sum).unwrap();
        assert_eq!(x[0], 3);
    });
}

#[test]
fn ring_send_recv() {
    point_to_point(Backend::Ring);
}

#[test]
fn shm_send_recv() {
    point_to_point(Backend::Shm);
}

fn missing_rank_then_recreate(backend: Backend) {
    use flare_collectives::{GroupOptions, MemStore, Store};
    use std::sync::Arc;
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let timeout = Duration::from_millis(1500);
    let n = 4;
    // Generation 0: rank 3 joins but never calls the all-reduce.
    let results = common::run_threads_with(
        n,
        &store,
        |r| GroupOptions::new("flaky", r, n).backend(backend).timeout(timeout),
        |c| {
            if c.rank() == 3 {
                std::thread::sleep(timeout + Duration::from_millis(500));
                c.abort();
                return None;
            }
            let t = Instant::now();
            let mut v = vec![1.0f32; 10_000];
            let err = c.all_reduce_slice(&mut v, ReduceOp::Sum).unwrap_err();
            let took = t.elapsed();
            // Later calls say the group is broken instead of hanging.
            let again = c.all_reduce_slice(&mut v, ReduceOp::Sum).unwrap_err();
            assert!(matches!(again, CollectiveError::Broken { .. }), "{again}");
            c.abort();
            Some((err, took))
        },
    );
    for (r, res) in results.iter().enumerate().take(3) {
        let (err, took) = res.as_ref().unwrap();
        assert_eq!(err.missing_ranks(), &[3], "rank {r}: {err}");
        assert!(err.to_string().contains("rank 3 never arrived"), "rank {r}: {err}");
        assert!(*took <= timeout + Duration::from_millis(300), "rank {r} waited {took:?}, past its {timeout:?} deadline");
    }
    // Generation 1: every rank again, and it works.
    let sums = common::run_threads_with(
        n,
        &store,
        |r| GroupOptions::new("flaky", r, n).backend(backend).timeout(timeout).generation(1),
        |c| {
            let mut v = vec![c.rank() as f64; 100];
            c.all_reduce_slice(&mut v, ReduceOp::Sum).unwrap();
            v[0]
        },
    );
    assert_eq!(sums, vec![6.0; 4]);
}

#[test]
fn ring_names_a_missing_rank_within_the_deadline_and_recreates() {
    missing_rank_then_recreate(Backend::Ring);
}

#[test]
fn shm_names_a_missing_rank_within_the_deadline_and_recreates() {
    missing_rank_then_recreate(Backend::Shm);
}

fn mismatch(backend: Backend) {
    let errs = run_threads(2, backend, Duration::from_secs(5), |c| {
        let mut v = vec![0f32; if c.rank() == 0 { 10 } else { 20 }];
        c.all_reduce_slice(&mut v, ReduceOp::Sum).unwrap_err()
    });
    assert!(errs.iter().any(|e| matches!(e, CollectiveError::Mismatch { .. })), "{errs:?}");
    let text = errs.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n");
    assert!(text.contains("of 10 float") && text.contains("of 20 float"), "{text}");
}

#[test]
fn ring_reports_mismatched_calls() {
    mismatch(Backend::Ring);
}

#[test]
fn shm_reports_mismatched_calls() {
    mismatch(Backend::Shm);
}

#[test]
fn bad_arguments_are_errors_and_leave_the_group_usable() {
    for backend in [Backend::Ring, Backend::Shm] {
        run_threads(2, backend, Duration::from_secs(10), |c| {
            let mut v = vec![1i32; 4];
            let e = c.broadcast_slice(&mut v, 5).unwrap_err();
            assert!(e.to_string().contains("root 5 is out of range"), "{e}");
            let mut small = vec![0i32; 3];
            let e = c.all_gather((&v).into(), (&mut small).into()).unwrap_err();
            assert!(e.to_string().contains("needs world size x input"), "{e}");
            let e = c.send((&v).into(), c.rank()).unwrap_err();
            assert!(e.to_string().contains("another rank"), "{e}");
            c.all_reduce_slice(&mut v, ReduceOp::Sum).unwrap();
            assert_eq!(v, [2; 4]);
        });
    }
    let e = flare_collectives::init(
        flare_collectives::GroupOptions::new("g", 3, 2),
        std::sync::Arc::new(flare_collectives::MemStore::new()),
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("rank 3 is out of range"), "{e}");
}

#[test]
fn async_operations_complete_in_order() {
    use flare_collectives::{AsyncCommunicator, GroupOptions, MemStore, Store};
    use std::sync::Arc;
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let n = 3;
    std::thread::scope(|s| {
        for r in 0..n {
            let store = store.clone();
            s.spawn(move || {
                let c = flare_collectives::init(GroupOptions::new("async", r, n), store).unwrap();
                let a = AsyncCommunicator::new(c);
                // Several all-reduces in flight at once, each waited on later.
                let works: Vec<_> = (0..5).map(|k| a.all_reduce(vec![(r + k) as i64; 1000], ReduceOp::Sum)).collect();
                for (k, w) in works.into_iter().enumerate() {
                    let v = w.wait().unwrap();
                    assert_eq!(v[999], (3 * k + 3) as i64);
                }
                let mut b = a.barrier();
                let t = Instant::now();
                while !b.is_completed() {
                    assert!(t.elapsed() < Duration::from_secs(10));
                    std::thread::yield_now();
                }
                b.wait().unwrap();
            });
        }
    });
}

#[test]
fn candle_tensors() {
    use candle_core::{Device, Tensor};
    let out = run_threads(2, Backend::Ring, Duration::from_secs(10), |c| {
        let t = Tensor::arange(0f32, 12.0, &Device::Cpu).unwrap().reshape((3, 4)).unwrap();
        let t = (t + c.rank() as f64).unwrap();
        let sum = c.all_reduce_tensor(&t, ReduceOp::Sum).unwrap();
        assert_eq!(sum.dims(), &[3, 4]);
        let g = c.all_gather_tensor(&t).unwrap();
        assert_eq!(g.dims(), &[2, 3, 4]);
        let b = c.broadcast_tensor(&t, 1).unwrap();
        (sum.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap())
    });
    assert_eq!(out[0].0[2][3], 11.0 + 11.0 + 1.0);
    assert_eq!(out[0].1[0][0], 1.0);
    let e = run_threads(1, Backend::Ring, Duration::from_secs(10), |c| {
        let t = Tensor::zeros(4, candle_core::DType::U8, &Device::Cpu).unwrap();
        c.all_reduce_tensor(&t, ReduceOp::Sum).unwrap_err().to_string()
    });
    assert!(e[0].contains("cannot be reduced"), "{}", e[0]);
}
