//! `flare bench collectives`: N ranks as separate processes, rows in nccl-tests' style.
//!
//! The parent serves a TCP store on 127.0.0.1, starts N copies of this executable (the hidden
//! `__collective-rank` subcommand), and prints what rank 0 measured. Each size is warmed up,
//! then timed over `iters` back-to-back operations; the time is the slowest rank's.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::ValueEnum;
use flare::collectives::{init, Backend, CommunicatorExt, GroupOptions, ReduceOp, Store, TcpStore, TcpStoreServer};
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Op {
    AllReduce,
    AllGather,
    ReduceScatter,
    Broadcast,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::AllReduce => "all_reduce",
            Op::AllGather => "all_gather",
            Op::ReduceScatter => "reduce_scatter",
            Op::Broadcast => "broadcast",
        }
    }
    /// nccl-tests' bus bandwidth factor: what each link carries relative to the buffer.
    fn bus_factor(self, n: usize) -> f64 {
        let n = n as f64;
        match self {
            Op::AllReduce => 2.0 * (n - 1.0) / n,
            Op::AllGather | Op::ReduceScatter => (n - 1.0) / n,
            Op::Broadcast => 1.0,
        }
    }
}

#[derive(Serialize, serde::Deserialize, Debug)]
pub struct Row {
    pub op: String,
    pub backend: String,
    pub world_size: usize,
    pub bytes: usize,
    pub count: usize,
    pub dtype: String,
    pub time_us: f64,
    pub algbw_gbps: f64,
    pub busbw_gbps: f64,
}

/// Parses `1M,16M,1024` style sizes (K/M/G are powers of two).
pub fn parse_sizes(s: &str) -> anyhow::Result<Vec<usize>> {
    s.split(',')
        .map(|t| {
            let t = t.trim();
            let (num, mul) = match t.chars().last() {
                Some('K' | 'k') => (&t[..t.len() - 1], 1usize << 10),
                Some('M' | 'm') => (&t[..t.len() - 1], 1 << 20),
                Some('G' | 'g') => (&t[..t.len() - 1], 1 << 30),
                _ => (t, 1),
            };
            let n: usize = num.parse().with_context(|| format!("`{t}` is not a size (write bytes, or 64K, 1M, 1G)"))?;
            Ok(n * mul)
        })
        .collect()
}

pub struct Args {
    pub op: Op,
    pub backend: Backend,
    pub world_size: usize,
    pub sizes: Vec<usize>,
    pub iters: usize,
    pub warmup: usize,
    pub json: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    if a.world_size == 0 || a.world_size > 64 {
        bail!("--world-size must be 1 to 64");
    }
    let server = TcpStoreServer::bind("127.0.0.1:0")?;
    let exe = std::env::current_exe()?;
    let sizes = a.sizes.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(",");
    let mut children = Vec::new();
    for rank in 0..a.world_size {
        let child = Command::new(&exe)
            .args(["__collective-rank", "--store", &server.addr().to_string(), "--rank", &rank.to_string()])
            .args(["--world-size", &a.world_size.to_string(), "--backend", &a.backend.to_string()])
            .args([
                "--op",
                a.op.to_possible_value().expect("every op has a name").get_name(),
                "--sizes",
                &sizes,
                "--iters",
                &a.iters.to_string(),
                "--warmup",
                &a.warmup.to_string(),
            ])
            .stdout(if rank == 0 { Stdio::piped() } else { Stdio::null() })
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting a rank")?;
        children.push(child);
    }
    let out = children[0].stdout.take().unwrap();
    if !a.json {
        println!(
            "# flare bench collectives: {} backend={} world_size={} (ranks are processes)",
            a.op.name(),
            a.backend,
            a.world_size
        );
        println!(
            "{:>12} {:>12} {:>8} {:>12} {:>10} {:>10}",
            "size(B)", "count", "type", "time(us)", "algbw(GB/s)", "busbw(GB/s)"
        );
    }
    for line in BufReader::new(out).lines() {
        let line = line?;
        if a.json {
            println!("{line}");
        } else {
            let r: Row = serde_json::from_str(&line)?;
            println!(
                "{:>12} {:>12} {:>8} {:>12.1} {:>10.3} {:>10.3}",
                r.bytes, r.count, r.dtype, r.time_us, r.algbw_gbps, r.busbw_gbps
            );
        }
    }
    let mut failed = Vec::new();
    for (rank, mut c) in children.into_iter().enumerate() {
        if !c.wait()?.success() {
            failed.push(rank);
        }
    }
    if !failed.is_empty() {
        bail!("ranks {failed:?} failed (their errors are above)");
    }
    Ok(())
}

pub struct RankArgs {
    pub store: String,
    pub rank: usize,
    pub world_size: usize,
    pub backend: Backend,
    pub op: Op,
    pub sizes: Vec<usize>,
    pub iters: usize,
    pub warmup: usize,
}

/// One rank of the benchmark. Rank 0 prints one JSON row per size.
pub fn rank(a: RankArgs) -> anyhow::Result<()> {
    let op = a.op;
    let store: Arc<dyn Store> = Arc::new(TcpStore::connect(a.store.as_str(), Duration::from_secs(30))?);
    let opts = GroupOptions::new("bench", a.rank, a.world_size).backend(a.backend).timeout(Duration::from_secs(120));
    #[cfg(feature = "nccl")]
    if a.backend == Backend::Nccl {
        return nccl_rank(&a, op, opts, store);
    }
    let mut c = init(opts, store)?;
    let n = a.world_size;
    for &bytes in &a.sizes {
        let count = (bytes / 4).max(1);
        let mut buf = vec![1.0f32; count];
        let part = count.div_ceil(n);
        let mut out = vec![0f32; if op == Op::AllGather { part * n } else { part }];
        let mut step = |c: &mut dyn flare::collectives::Communicator| -> anyhow::Result<()> {
            match op {
                Op::AllReduce => c.all_reduce_slice(&mut buf, ReduceOp::Sum)?,
                Op::Broadcast => c.broadcast_slice(&mut buf, 0)?,
                Op::AllGather => c.all_gather((&buf[..part]).into(), (&mut out[..]).into())?,
                Op::ReduceScatter => {
                    let own = flare::collectives::chunk_range(count, n, c.rank());
                    c.reduce_scatter((&buf[..]).into(), (&mut out[..own.len()]).into(), ReduceOp::Sum)?
                }
            }
            Ok(())
        };
        for _ in 0..a.warmup {
            step(c.as_mut())?;
        }
        c.barrier()?;
        let t = Instant::now();
        for _ in 0..a.iters {
            step(c.as_mut())?;
        }
        let mut secs = [t.elapsed().as_secs_f64() / a.iters as f64];
        c.all_reduce_slice(&mut secs, ReduceOp::Max)?;
        if a.rank == 0 {
            let moved = match op {
                Op::AllGather => part * n * 4,
                _ => count * 4,
            };
            report(op, a.backend, n, moved, secs[0])?;
        }
    }
    Ok(())
}

fn report(op: Op, backend: Backend, n: usize, moved: usize, secs: f64) -> anyhow::Result<()> {
    let algbw = moved as f64 / secs / 1e9;
    let row = Row {
        op: op.name().into(),
        backend: backend.to_string(),
        world_size: n,
        bytes: moved,
        count: moved / 4,
        dtype: "float".into(),
        time_us: secs * 1e6,
        algbw_gbps: algbw,
        busbw_gbps: algbw * op.bus_factor(n),
    };
    println!("{}", serde_json::to_string(&row)?);
    Ok(())
}

/// NCCL on device buffers: the data never leaves the GPU, as in nccl-tests.
#[cfg(feature = "nccl")]
fn nccl_rank(a: &RankArgs, op: Op, opts: GroupOptions, store: Arc<dyn Store>) -> anyhow::Result<()> {
    use flare::collectives::nccl::NcclComm;
    let opts = opts.device(0);
    let mut c = NcclComm::new(opts, store)?;
    let n = a.world_size;
    for &bytes in &a.sizes {
        let count = (bytes / 4).max(1);
        let mut buf = c.stream().alloc_zeros::<f32>(count)?;
        let part = count.div_ceil(n);
        let input = c.stream().alloc_zeros::<f32>(part)?;
        let mut out = c.stream().alloc_zeros::<f32>(part * n)?;
        let mut step = |c: &mut NcclComm| -> anyhow::Result<()> {
            match op {
                Op::AllReduce => c.all_reduce_device(&mut buf, ReduceOp::Sum)?,
                Op::Broadcast => c.broadcast_device(&mut buf, 0)?,
                Op::AllGather => c.all_gather_device(&input, &mut out)?,
                Op::ReduceScatter => bail!("the NCCL benchmark covers all-reduce, all-gather and broadcast"),
            }
            Ok(())
        };
        for _ in 0..a.warmup {
            step(&mut c)?;
        }
        let t = Instant::now();
        for _ in 0..a.iters {
            step(&mut c)?;
        }
        c.stream().synchronize()?;
        let secs = t.elapsed().as_secs_f64() / a.iters as f64;
        if a.rank == 0 {
            let moved = if op == Op::AllGather { part * n * 4 } else { count * 4 };
            report(op, Backend::Nccl, n, moved, secs)?;
        }
    }
    Ok(())
}
