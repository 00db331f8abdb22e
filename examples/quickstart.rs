//! Flare's main demo on an embedded local cluster: tasks, objects, actors and fractional GPUs.
//!
//! Run it with `cargo run --release --example quickstart`.

use flare::prelude::*;
use std::time::Instant;

#[flare::remote]
fn square(x: u64) -> u64 {
    x * x
}

#[flare::remote]
fn sum(values: Vec<u64>) -> u64 {
    values.iter().sum()
}

/// A task that submits tasks of its own.
#[flare::remote]
fn sum_of_squares(n: u64) -> flare::Result<u64> {
    let refs: Vec<_> = (0..n).map(square::remote).collect();
    Ok(flare::get_all(&refs)?.into_iter().sum())
}

#[flare::remote]
fn which_gpu(tag: u32) -> (u32, Vec<u32>, String) {
    (tag, flare::get_gpu_ids(), std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_default())
}

struct Counter {
    n: u64,
}

#[flare::actor]
impl Counter {
    fn new(start: u64) -> Self {
        Counter { n: start }
    }
    fn incr(&mut self, by: u64) -> u64 {
        self.n += by;
        self.n
    }
    fn value(&self) -> u64 {
        self.n
    }
}

fn main() -> anyhow::Result<()> {
    flare::init_with(Config::new().num_gpus(1.0))?;
    let res = flare::cluster_resources()?;
    println!("embedded cluster: {} (object store {} MiB)", res.total, res.store_capacity >> 20);

    // Tasks run in worker processes; refs can be passed straight into other tasks.
    let t0 = Instant::now();
    let squares: Vec<ObjectRef<u64>> = (0..100).map(square::remote).collect();
    let values = flare::get_all(&squares)?;
    let total = sum::remote(values).get()?;
    println!("sum of 100 squares = {total} ({:.1} ms)", t0.elapsed().as_secs_f64() * 1e3);
    println!("nested tasks: sum_of_squares(10) = {}", sum_of_squares::remote(10).get()?);

    // Objects: put once, read zero-copy from shared memory.
    let blob = flare::put(&Buffer::from(vec![7u8; 64 << 20]))?;
    let back: Buffer = blob.get()?;
    println!("64 MiB object: {} bytes back, zero-copy = {}", back.len(), back.is_zero_copy());

    // Actors keep state between calls.
    let counter = Counter::remote(10).spawn()?;
    let calls: Vec<_> = (0..5).map(|_| counter.incr(1)).collect();
    println!("counter after 5 calls: {:?} -> {}", flare::get_all(&calls)?, counter.value().get()?);

    // Four quarter-GPU tasks share the one declared GPU and see the same device id.
    let gpu: Vec<_> = (0..4).map(|i| which_gpu::options().num_gpus(0.25).num_cpus(0.0).remote(i)).collect();
    for (tag, ids, visible) in flare::get_all(&gpu)? {
        println!("task {tag}: gpu ids {ids:?}, CUDA_VISIBLE_DEVICES={visible}");
    }

    // Errors are values: asking for two GPUs on a one-GPU node says what is missing.
    let err = which_gpu::options().num_gpus(2.0).remote(9).get().unwrap_err();
    println!("infeasible request: {err}");
    Ok(())
}
