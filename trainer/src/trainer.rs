//! The driver side: gang-schedules the ranks in a placement group, starts them, records what
//! they report, keeps checkpoints, and restarts the whole group from the latest checkpoint
//! when a rank fails.

use crate::checkpoint::Checkpoint;
use crate::config::{RunConfig, ScalingConfig, ScoreMode};
use crate::context::{Event, TrainLoop};
use crate::logger::{self, Progress, TensorBoardWriter};
use crate::worker::{parse_backend, LoopRef, Placement, Setup, TrainWorker};
use crate::{Error, Result};
use flare_collectives::TcpStoreServer;
use flare_core::{ActorHandle, PlacementGroup};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What [`Trainer::fit`] returns.
#[derive(Clone, Debug)]
pub struct TrainResult {
    /// Rank 0's last report.
    pub metrics: Value,
    /// The latest checkpoint.
    pub checkpoint: Option<Checkpoint>,
    /// The checkpoints kept, best first (by the score attribute; else newest first), with the
    /// metrics reported with each.
    pub best_checkpoints: Vec<(Checkpoint, Value)>,
    /// Every report of rank 0, in order (those lost to a restore are dropped).
    pub history: Vec<Value>,
    /// The run's directory.
    pub path: PathBuf,
    /// Failures survived (group restarts).
    pub failures: usize,
}

/// A data-parallel training run: Ray Train's `TorchTrainer`, for candle models.
pub struct Trainer {
    train_loop: TrainLoop,
    config: std::result::Result<Value, String>,
    scaling: ScalingConfig,
    run: RunConfig,
    resume_from: Option<Checkpoint>,
    backend: Option<String>,
    timeout: Duration,
    bucket_bytes: usize,
}

struct Kept {
    checkpoint: Checkpoint,
    metrics: Value,
    iteration: u64,
}

struct Gang {
    pg: PlacementGroup,
    workers: Vec<ActorHandle<TrainWorker>>,
}

impl Gang {
    fn stop(self) {
        for w in &self.workers {
            let _ = flare_core::kill(w);
        }
        let _ = flare_core::remove_placement_group(&self.pg);
    }
}

fn now_s() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

impl Trainer {
    pub fn new(train_loop: TrainLoop) -> Self {
        Trainer {
            train_loop,
            config: Ok(Value::Null),
            scaling: ScalingConfig::default(),
            run: RunConfig::default(),
            resume_from: None,
            backend: None,
            timeout: Duration::from_secs(120),
            bucket_bytes: crate::ddp::DEFAULT_BUCKET_BYTES,
        }
    }
    /// The train loop's config (`train_loop_config`), any serializable value.
    pub fn config(mut self, c: impl serde::Serialize) -> Self {
        self.config = serde_json::to_value(c).map_err(|e| e.to_string());
        self
    }
    pub fn scaling(mut self, s: ScalingConfig) -> Self {
        self.scaling = s;
        self
    }
    pub fn run_config(mut self, r: RunConfig) -> Self {
        self.run = r;
        self
    }
    /// Starts from a checkpoint directory (of this or another run).
    pub fn resume_from(mut self, c: Checkpoint) -> Self {
        self.resume_from = Some(c);
        self
    }
    /// The collective backend: `nccl`, `ring` or `shm`. Default: NCCL with GPUs, shared memory
    /// when every rank is on one node, else the TCP ring.
    pub fn backend(mut self, b: &str) -> Self {
        self.backend = Some(b.to_string());
        self
    }
    /// The deadline of each collective (and of the group's rendezvous). Default 120 s.
    pub fn collective_timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }
    /// The gradient bucket size (default 25 MB, as DDP).
    pub fn bucket_size_bytes(mut self, b: usize) -> Self {
        self.bucket_bytes = b.max(1);
        self
    }

    fn run_dir(&self) -> Result<(String, PathBuf)> {
        let name = match &self.run.name {
            Some(n) if n.is_empty() || n.contains('/') || n == "." || n == ".." => {
                return Err(Error::Config(format!("run name `{n}` must be a plain directory name")))
            }
            Some(n) => n.clone(),
            None => format!("Trainer_{}", chrono_like_stamp()),
        };
        let base = match &self.run.storage_path {
            Some(p) => p.clone(),
            None => std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(std::env::temp_dir).join("flare_results"),
        };
        Ok((name.clone(), base.join(name)))
    }

    /// Runs the training to the end; survives up to `max_failures` failures.
    pub fn fit(self) -> Result<TrainResult> {
        let config =
            self.config.clone().map_err(|e| Error::Config(format!("the train loop config cannot be serialized: {e}")))?;
        let n = self.scaling.num_workers;
        if n == 0 {
            return Err(Error::Config("num_workers must be at least 1".into()));
        }
        if let Some(b) = &self.backend {
            parse_backend(b).map_err(Error::Config)?;
        }
        let bundle = self.scaling.bundle();
        if self.scaling.use_gpu && bundle.num_gpus <= 0.0 {
            return Err(Error::Config("use_gpu is set but resources_per_worker asks for no GPU".into()));
        }
        if let Some(c) = &self.resume_from {
            c.metadata().map_err(|e| Error::Checkpoint(format!("cannot resume from {}: {e}", c.path().display())))?;
        }
        flare_core::init()?;
        let (name, dir) = self.run_dir()?;
        std::fs::create_dir_all(&dir).map_err(|e| Error::Io(format!("creating the run directory {}: {e}", dir.display())))?;
        let verbose = self.run.verbose.unwrap_or_else(|| std::env::var("FLARE_TRAIN_QUIET").map_or(true, |v| v != "1"));
        let mut progress = Progress::new(verbose);
        let mut tb = TensorBoardWriter::create(&dir)
            .map_err(|e| Error::Io(format!("creating the TensorBoard file in {}: {e}", dir.display())))?;
        let host = std::env::var("FLARE_COLLECTIVE_HOST").unwrap_or_else(|_| "127.0.0.1".into());
        let store = TcpStoreServer::bind((host.as_str(), 0))
            .map_err(|e| Error::Io(format!("starting the rendezvous store on {host}: {e}")))?;
        let threads = bundle.num_cpus.floor().max(1.0) as u32;

        let started = Instant::now();
        let mut history: Vec<Value> = Vec::new();
        let mut kept: Vec<Kept> = Vec::new();
        let mut latest: Option<(Checkpoint, u64)> = self.resume_from.as_ref().map(|c| (c.clone(), 0));
        let mut failures = 0usize;
        let loop_ref = LoopRef::of(self.train_loop);
        for attempt in 0.. {
            let gang = self.schedule(&bundle, threads)?;
            let placements: Vec<Placement> =
                gang.workers.iter().map(|w| w.placement().get()).collect::<std::result::Result<_, _>>()?;
            let mut nodes: Vec<&str> = Vec::new();
            for p in &placements {
                if !nodes.contains(&p.node.as_str()) {
                    nodes.push(&p.node);
                }
            }
            let backend = match &self.backend {
                Some(b) => b.clone(),
                None if self.scaling.use_gpu => "nccl".into(),
                None if nodes.len() == 1 => "shm".into(),
                None => "ring".into(),
            };
            // A checkpoint given to resume from starts the iteration count at its own.
            let base_iteration = match &latest {
                Some((c, 0)) => c.metadata().ok().and_then(|m| m.get("_iteration").and_then(Value::as_u64)).unwrap_or(0),
                Some((_, it)) => *it,
                None => 0,
            };
            for (rank, w) in gang.workers.iter().enumerate() {
                let node = placements[rank].node.as_str();
                let node_rank = nodes.iter().position(|x| *x == node).unwrap_or(0);
                let local_rank = placements[..rank].iter().filter(|p| p.node == node).count();
                let local_world_size = placements.iter().filter(|p| p.node == node).count();
                let setup = Setup {
                    train_loop: loop_ref,
                    rank,
                    world_size: n,
                    local_rank,
                    local_world_size,
                    node_rank,
                    group: format!("train:{name}:{}", std::process::id()),
                    generation: attempt as u64,
                    store: store.addr().to_string(),
                    backend: backend.clone(),
                    timeout_ms: self.timeout.as_millis() as u64,
                    use_gpu: self.scaling.use_gpu,
                    config: config.to_string(),
                    checkpoint: latest.as_ref().map(|(c, _)| c.path().to_path_buf()),
                    iteration: base_iteration,
                    run_dir: dir.clone(),
                    attempt,
                    bucket_bytes: self.bucket_bytes,
                };
                w.start(setup).get()?;
            }
            let outcome = self.watch(&gang, &mut |ev| {
                if let Event::Report { rank: 0, iteration, metrics, checkpoint } = ev {
                    let mut m: Value = serde_json::from_str(&metrics).unwrap_or(Value::Null);
                    if let Value::Object(o) = &mut m {
                        o.insert("training_iteration".into(), json!(iteration));
                        o.insert("time_total_s".into(), json!(started.elapsed().as_secs_f64()));
                        o.insert("timestamp".into(), json!(now_s() as u64));
                        o.insert("attempt".into(), json!(attempt));
                    }
                    let mut scalars = logger::scalars(&m);
                    scalars.retain(|(k, _)| k != "timestamp" && k != "training_iteration");
                    let _ = tb.scalars(iteration as i64, &scalars);
                    progress.update(iteration, &m);
                    history.push(m.clone());
                    if let Some(p) = checkpoint {
                        let c = Checkpoint::from_directory(p);
                        latest = Some((c.clone(), iteration));
                        kept.push(Kept { checkpoint: c, metrics: m, iteration });
                        prune(&mut kept, &self.run, iteration);
                    }
                    let _ = logger::append_row(&dir, &history);
                }
            });
            gang.stop();
            match outcome {
                Ok(()) => break,
                Err(why) => {
                    failures += 1;
                    let max = self.run.failure.max_failures;
                    if max >= 0 && failures as i64 > max as i64 {
                        progress.finish();
                        return Err(Error::Failed { attempts: attempt + 1, max_failures: max, last: why });
                    }
                    let from = latest.as_ref().map(|(c, it)| (c.path().display().to_string(), *it));
                    let keep = from.as_ref().map_or(0, |(_, it)| *it);
                    history.retain(|h| h.get("training_iteration").and_then(Value::as_u64).is_some_and(|i| i <= keep));
                    let _ = logger::write_tables(&dir, &history);
                    progress.message(&match from {
                        Some((p, it)) => format!("{why}; restarting all ranks from {p} (iteration {it}), failure {failures}"),
                        None => format!("{why}; restarting all ranks from the start, failure {failures}"),
                    });
                }
            }
        }
        progress.finish();
        let _ = logger::write_tables(&dir, &history);
        let metrics = history.last().cloned().unwrap_or(Value::Null);
        let mut best: Vec<&Kept> = kept.iter().collect();
        sort_best_first(&mut best, &self.run);
        let result = TrainResult {
            metrics: metrics.clone(),
            checkpoint: latest.map(|(c, _)| c),
            best_checkpoints: best.iter().map(|k| (k.checkpoint.clone(), k.metrics.clone())).collect(),
            history,
            path: dir.clone(),
            failures,
        };
        if verbose {
            let mut rows = logger::metric_rows(&metrics);
            rows.push(("path".into(), dir.display().to_string()));
            if let Some(c) = &result.checkpoint {
                rows.push(("checkpoint".into(), c.path().display().to_string()));
            }
            rows.push(("failures".into(), failures.to_string()));
            eprintln!("{}", logger::summary_table(&format!("Training finished: {name} ({n} ranks)"), &rows));
            eprintln!("[train] TensorBoard: tensorboard --logdir {}", tb.path().parent().unwrap_or(&dir).display());
        }
        Ok(result)
    }

    fn schedule(&self, bundle: &flare_core::Bundle, threads: u32) -> Result<Gang> {
        let n = self.scaling.num_workers;
        let bundles = vec![bundle.clone(); n];
        let pg = flare_core::placement_group(&bundles, self.scaling.placement_strategy)?;
        if let Err(e) = pg.ready() {
            let _ = flare_core::remove_placement_group(&pg);
            return Err(Error::Infeasible(format!(
                "{n} ranks of {{CPU: {}, GPU: {}}} ({:?}): {e}",
                bundle.num_cpus, bundle.num_gpus, self.scaling.placement_strategy
            )));
        }
        let mut workers = Vec::with_capacity(n);
        for i in 0..n {
            let mut b = TrainWorker::remote(threads)
                .num_cpus(bundle.num_cpus)
                .num_gpus(bundle.num_gpus)
                .memory(bundle.memory)
                .scheduling_strategy(pg.bundle(Some(i)));
            for (k, v) in &bundle.resources {
                b = b.resources(k.clone(), *v);
            }
            match b.spawn() {
                Ok(w) => workers.push(w),
                Err(e) => {
                    Gang { pg, workers }.stop();
                    return Err(e.into());
                }
            }
        }
        Ok(Gang { pg, workers })
    }

    /// Polls every rank until all finish (`Ok`) or one fails (`Err` with why).
    fn watch(&self, gang: &Gang, on: &mut dyn FnMut(Event)) -> std::result::Result<(), String> {
        let n = gang.workers.len();
        let mut done = vec![false; n];
        loop {
            let refs: Vec<_> =
                gang.workers.iter().enumerate().filter(|(i, _)| !done[*i]).map(|(i, w)| (i, w.poll(200))).collect();
            let mut failure = None;
            for (i, r) in refs {
                match r.get() {
                    Ok(events) => {
                        for ev in events {
                            match &ev {
                                Event::Finished { rank } => done[*rank] = true,
                                Event::Failed { error, .. } => {
                                    failure.get_or_insert_with(|| error.clone());
                                }
                                Event::Report { .. } => {}
                            }
                            on(ev);
                        }
                    }
                    Err(e) => {
                        failure.get_or_insert_with(|| format!("rank {i} died: {e}"));
                    }
                }
            }
            if let Some(why) = failure {
                // Take what the other ranks had already sent (rank 0's last checkpoint) first.
                for (i, w) in gang.workers.iter().enumerate() {
                    if !done[i] {
                        if let Ok(events) = w.poll(0).get_timeout(Duration::from_secs(2)) {
                            events.into_iter().filter(|e| matches!(e, Event::Report { .. })).for_each(&mut *on);
                        }
                    }
                }
                return Err(why);
            }
            if done.iter().all(|d| *d) {
                return Ok(());
            }
        }
    }
}

fn score(k: &Kept, run: &RunConfig) -> Option<f64> {
    let attr = run.checkpoint.score_attribute.as_ref()?;
    k.metrics.get(attr).and_then(Value::as_f64)
}

/// Best first: by score (a checkpoint without the score last), else newest first.
fn sort_best_first(v: &mut [&Kept], run: &RunConfig) {
    let mode = run.checkpoint.score_mode;
    v.sort_by(|a, b| match (score(a, run), score(b, run), run.checkpoint.score_attribute.is_some()) {
        (Some(x), Some(y), true) => {
            let o = x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal);
            let o = if mode == ScoreMode::Max { o.reverse() } else { o };
            o.then(b.iteration.cmp(&a.iteration))
        }
        (Some(_), None, true) => std::cmp::Ordering::Less,
        (None, Some(_), true) => std::cmp::Ordering::Greater,
        _ => b.iteration.cmp(&a.iteration),
    });
}

/// Deletes the checkpoints that are neither among the best `num_to_keep` nor the newest.
fn prune(kept: &mut Vec<Kept>, run: &RunConfig, newest: u64) {
    let Some(keep) = run.checkpoint.num_to_keep else { return };
    let mut order: Vec<&Kept> = kept.iter().collect();
    sort_best_first(&mut order, run);
    let survivors: Vec<u64> = order.iter().take(keep.max(1)).map(|k| k.iteration).chain(std::iter::once(newest)).collect();
    kept.retain(|k| {
        let stays = survivors.contains(&k.iteration);
        if !stays {
            let _ = std::fs::remove_dir_all(k.checkpoint.path());
        }
        stays
    });
}

fn chrono_like_stamp() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02}_{:02}-{:02}-{:02}_{}", rem / 3600, rem / 60 % 60, rem % 60, std::process::id())
}
