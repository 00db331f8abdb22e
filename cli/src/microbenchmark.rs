//! `flare microbenchmark`: the cases of `ray microbenchmark`, with the same names, timed the
//! same way (Ray's `timeit`: a warm-up, then four trials, each reporting calls per second), and
//! printed as `NAME per second RATE +- STDDEV`.

use flare::prelude::*;
use serde::Serialize;
use std::time::{Duration, Instant};

#[flare::remote]
fn small_value() -> u64 {
    0
}

/// An object holding 10,000 refs ("single client get object containing 10k refs").
#[flare::remote]
fn create_object_containing_ref() -> flare::Result<Vec<ObjectRef<u64>>> {
    (0..10_000).map(|i| flare::put(&(i as u64))).collect()
}

/// Puts `count` small objects from inside a task ("multi client put calls").
#[flare::remote]
fn do_put_small(count: u32) -> flare::Result<()> {
    for _ in 0..count {
        flare::put(&0u64)?;
    }
    Ok(())
}

/// Puts `count` objects of `bytes` bytes from inside a task ("multi client put gigabytes").
#[flare::remote]
fn do_put(count: u32, bytes: u64) -> flare::Result<()> {
    let data = Buffer::from(vec![0u8; bytes as usize]);
    for _ in 0..count {
        flare::put(&data)?;
    }
    Ok(())
}

/// Calls `n` small actor methods spread over `actors` and waits for them ("n:n actor calls").
#[flare::remote]
fn work(actors: Vec<ActorHandle<Server>>, n: u32) -> flare::Result<()> {
    let refs: Vec<_> = (0..n as usize).map(|i| actors[i % actors.len()].small_value()).collect();
    flare::get_all(&refs)?;
    Ok(())
}

/// Ray's benchmark `Actor`.
pub struct Server;

#[flare::actor]
impl Server {
    fn new() -> Self {
        Server
    }
    fn small_value(&self) -> u64 {
        0
    }
    fn small_value_arg(&self, _x: u64) -> u64 {
        0
    }
    /// Submits `n` tasks and waits for them ("multi client tasks async").
    fn small_value_batch(&self, n: u32) -> flare::Result<()> {
        let refs: Vec<_> = (0..n).map(|_| small_value::remote()).collect();
        flare::get_all(&refs)?;
        Ok(())
    }
}

/// Ray's benchmark `AsyncActor`.
pub struct AsyncServer;

#[flare::actor]
impl AsyncServer {
    fn new() -> Self {
        AsyncServer
    }
    async fn small_value(&self) -> u64 {
        0
    }
    async fn small_value_with_arg(&self, _x: u64) -> u64 {
        0
    }
}

/// Ray's benchmark `Client` over async actors ("1:n async-actor calls").
pub struct AsyncClient {
    servers: Vec<ActorHandle<AsyncServer>>,
}

#[flare::actor]
impl AsyncClient {
    fn new(servers: Vec<ActorHandle<AsyncServer>>) -> Self {
        AsyncClient { servers }
    }
    fn small_value_batch(&self, n: u32) -> flare::Result<()> {
        let refs: Vec<_> = self.servers.iter().flat_map(|s| (0..n).map(move |_| s.small_value())).collect();
        flare::get_all(&refs)?;
        Ok(())
    }
}

/// Calls `n` async-actor methods spread over `actors` and waits for them ("n:n async-actor calls").
#[flare::remote]
fn async_actor_work(actors: Vec<ActorHandle<AsyncServer>>, n: u32) -> flare::Result<()> {
    let refs: Vec<_> = (0..n as usize).map(|i| actors[i % actors.len()].small_value()).collect();
    flare::get_all(&refs)?;
    Ok(())
}

/// Ray's benchmark `Client`: calls a set of servers.
pub struct Client {
    servers: Vec<ActorHandle<Server>>,
}

#[flare::actor]
impl Client {
    fn new(servers: Vec<ActorHandle<Server>>) -> Self {
        Client { servers }
    }
    fn small_value_batch(&self, n: u32) -> flare::Result<()> {
        let refs: Vec<_> = self.servers.iter().flat_map(|s| (0..n).map(move |_| s.small_value())).collect();
        flare::get_all(&refs)?;
        Ok(())
    }
    fn small_value_batch_arg(&self, n: u32) -> flare::Result<()> {
        let x = flare::put(&0u64)?;
        let refs: Vec<_> = self.servers.iter().flat_map(|s| (0..n).map(|_| s.small_value_arg(&x)).collect::<Vec<_>>()).collect();
        flare::get_all(&refs)?;
        Ok(())
    }
}

/// One result row.
#[derive(Debug, Serialize)]
pub struct Row {
    pub name: String,
    pub rate: f64,
    pub stddev: f64,
}

/// Timing settings: Ray uses a 1 s warm-up and four 2 s trials.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub warmup: Duration,
    pub trial: Duration,
    pub trials: usize,
}

/// Ray's `timeit`: `multiplier` operations happen per call of `f`.
fn timeit(
    name: &str,
    timing: Timing,
    multiplier: f64,
    json: bool,
    mut f: impl FnMut() -> flare::Result<()>,
) -> flare::Result<Row> {
    let start = Instant::now();
    let mut count = 0u64;
    while start.elapsed() < timing.warmup {
        f()?;
        count += 1;
    }
    let step = count / 10 + 1;
    let mut stats = Vec::with_capacity(timing.trials);
    for _ in 0..timing.trials {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < timing.trial {
            for _ in 0..step {
                f()?;
            }
            n += step;
        }
        stats.push(multiplier * n as f64 / start.elapsed().as_secs_f64());
    }
    let mean = stats.iter().sum::<f64>() / stats.len() as f64;
    let var = stats.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / stats.len() as f64;
    let row = Row { name: name.to_string(), rate: mean, stddev: var.sqrt() };
    if json {
        println!("{}", serde_json::to_string(&row).unwrap_or_default());
    } else {
        println!("{} per second {:.2} +- {:.2}", row.name, row.rate, row.stddev);
    }
    Ok(row)
}

/// Runs every case whose name contains `filter` (all with an empty filter).
pub fn run(timing: Timing, filter: &str, json: bool) -> flare::Result<Vec<Row>> {
    let mut rows = Vec::new();
    let want = |name: &str| filter.is_empty() || name.contains(filter);
    let n_cpu = (std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2) / 2).max(1);
    macro_rules! case {
        ($name:expr, $mult:expr, $body:expr) => {
            if want($name) {
                rows.push(timeit($name, timing, $mult as f64, json, $body)?);
            }
        };
    }

    let value = flare::put(&0u64)?;
    case!("single client get calls (Plasma Store)", 1, || value.get().map(|_| ()));
    case!("single client put calls (Plasma Store)", 1, || flare::put(&0u64).map(|_| ()));
    case!("multi client put calls (Plasma Store)", 1000, || {
        let refs: Vec<_> = (0..10).map(|_| do_put_small::remote(100)).collect();
        flare::get_all(&refs).map(|_| ())
    });
    if want("single client put gigabytes") {
        // Ray puts np.zeros(100 * 1024 * 1024, dtype=np.int64) (800 MiB) and counts it as 0.8 GB.
        let arr = Buffer::from(vec![0u8; 800 << 20]);
        case!("single client put gigabytes", 0.8, || flare::put(&arr).map(|_| ()));
    }
    case!("single client tasks and get batch", 1, || {
        let refs: Vec<_> = (0..1000).map(|_| small_value::remote()).collect();
        flare::get_all(&refs).map(|_| ())
    });
    case!("multi client put gigabytes", 10.0 * 8.0 * 0.1, || {
        let refs: Vec<_> = (0..10).map(|_| do_put::remote(10, 80 << 20)).collect();
        flare::get_all(&refs).map(|_| ())
    });
    if want("single client get object containing 10k refs") {
        let obj = create_object_containing_ref::remote();
        case!("single client get object containing 10k refs", 1, || obj.get().map(|_| ()));
    }
    case!("single client wait 1k refs", 1, || {
        let mut not_ready: Vec<_> = (0..1000).map(|_| small_value::remote()).collect();
        while !not_ready.is_empty() {
            let (_ready, rest) = flare::wait(&not_ready, 1, None)?;
            not_ready = rest;
        }
        Ok(())
    });
    case!("single client tasks sync", 1, || small_value::remote().get().map(|_| ()));
    case!("single client tasks async", 1000, || {
        let refs: Vec<_> = (0..1000).map(|_| small_value::remote()).collect();
        flare::get_all(&refs).map(|_| ())
    });
    if want("multi client tasks async") {
        let (n, m) = (10_000u32, 4usize);
        let actors = (0..m).map(|_| Server::remote().spawn()).collect::<flare::Result<Vec<_>>>()?;
        case!("multi client tasks async", n as usize * m, || {
            let refs: Vec<_> = actors.iter().map(|a| a.small_value_batch(n)).collect();
            flare::get_all(&refs).map(|_| ())
        });
    }
    let a = Server::remote().spawn()?;
    case!("1:1 actor calls sync", 1, || a.small_value().get().map(|_| ()));
    case!("1:1 actor calls async", 1000, || {
        let refs: Vec<_> = (0..1000).map(|_| a.small_value()).collect();
        flare::get_all(&refs).map(|_| ())
    });
    let concurrent = Server::remote().max_concurrency(16).spawn()?;
    case!("1:1 actor calls concurrent", 1000, || {
        let refs: Vec<_> = (0..1000).map(|_| concurrent.small_value()).collect();
        flare::get_all(&refs).map(|_| ())
    });
    if want("1:n actor calls async") {
        let n = 5000u32;
        let servers = (0..n_cpu).map(|_| Server::remote().spawn()).collect::<flare::Result<Vec<_>>>()?;
        let client = Client::remote(servers.clone()).spawn()?;
        case!("1:n actor calls async", n as usize * servers.len(), || client.small_value_batch(n).get());
    }
    if want("n:n actor calls async") {
        let (n, m) = (5000u32, 4usize);
        let servers = (0..n_cpu).map(|_| Server::remote().spawn()).collect::<flare::Result<Vec<_>>>()?;
        case!("n:n actor calls async", m * n as usize, || {
            let refs: Vec<_> = (0..m).map(|_| work::remote(servers.clone(), n)).collect();
            flare::get_all(&refs).map(|_| ())
        });
    }
    if want("n:n actor calls with arg async") {
        let n = 1000u32;
        let clients =
            (0..n_cpu).map(|_| Client::remote(vec![Server::remote().spawn()?]).spawn()).collect::<flare::Result<Vec<_>>>()?;
        case!("n:n actor calls with arg async", n as usize * clients.len(), || {
            let refs: Vec<_> = clients.iter().map(|c| c.small_value_batch_arg(n)).collect();
            flare::get_all(&refs).map(|_| ())
        });
    }
    let aa = AsyncServer::remote().spawn()?;
    case!("1:1 async-actor calls sync", 1, || aa.small_value().get().map(|_| ()));
    case!("1:1 async-actor calls async", 1000, || {
        let refs: Vec<_> = (0..1000).map(|_| aa.small_value()).collect();
        flare::get_all(&refs).map(|_| ())
    });
    case!("1:1 async-actor calls with args async", 1000, || {
        let refs: Vec<_> = (0..1000u64).map(|i| aa.small_value_with_arg(i)).collect();
        flare::get_all(&refs).map(|_| ())
    });
    if want("1:n async-actor calls async") {
        let n = 5000u32;
        let servers = (0..n_cpu).map(|_| AsyncServer::remote().spawn()).collect::<flare::Result<Vec<_>>>()?;
        let client = AsyncClient::remote(servers.clone()).spawn()?;
        case!("1:n async-actor calls async", n as usize * servers.len(), || client.small_value_batch(n).get());
    }
    if want("n:n async-actor calls async") {
        let (n, m) = (5000u32, 4usize);
        let servers = (0..n_cpu).map(|_| AsyncServer::remote().spawn()).collect::<flare::Result<Vec<_>>>()?;
        case!("n:n async-actor calls async", m * n as usize, || {
            let refs: Vec<_> = (0..m).map(|_| async_actor_work::remote(servers.clone(), n)).collect();
            flare::get_all(&refs).map(|_| ())
        });
    }
    if want("placement group create/removal") {
        let num_pgs = 100;
        case!("placement group create/removal", num_pgs, || {
            let pgs = (0..num_pgs)
                .map(|_| flare::placement_group(&[Bundle::default().with_resource("custom", 0.001)], PlacementStrategy::Pack))
                .collect::<flare::Result<Vec<_>>>()?;
            for pg in &pgs {
                pg.wait(Duration::from_secs(30))?;
            }
            for pg in &pgs {
                flare::remove_placement_group(pg)?;
            }
            Ok(())
        });
    }
    Ok(rows)
}
