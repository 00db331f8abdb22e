//! The Tuner: generates trial configs (grid points x samples, the searcher for the rest),
//! runs each trial as an actor with its resources, feeds results to the scheduler and the
//! searcher, keeps an append-only journal of the experiment, and returns a `ResultGrid`.

use crate::schedulers::{Decision, Fifo, TrialScheduler};
use crate::search::{Mode, RandomSearch, Searcher, Suggestion};
use crate::space::{build_config, grid_points, Flat, ParamSpace};
use crate::trial::{Event, Trainable, TrialSetup, TrialWorker};
use crate::{Error, Result};
use flare_core::ActorHandle;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Each trial's resource request.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct Resources {
    pub cpu: f64,
    pub gpu: f64,
    pub memory: u64,
}

impl Default for Resources {
    fn default() -> Self {
        Resources { cpu: 1.0, gpu: 0.0, memory: 0 }
    }
}

/// A trainable with its per-trial resources (Ray's `tune.with_resources`).
#[derive(Clone, Copy)]
pub struct WithResources {
    pub trainable: Trainable,
    pub resources: Resources,
}

pub fn with_resources(trainable: Trainable, resources: Resources) -> WithResources {
    WithResources { trainable, resources }
}

impl From<Trainable> for WithResources {
    fn from(trainable: Trainable) -> Self {
        WithResources { trainable, resources: Resources::default() }
    }
}

/// How the sweep runs.
pub struct TuneConfig {
    /// The metric searchers and schedulers optimize (a key of the reported metrics; nested
    /// keys joined by `/`).
    pub metric: Option<String>,
    pub mode: Mode,
    /// Samples of the space (each repeated over every grid point). Default 1.
    pub num_samples: usize,
    /// At most this many trials at once (default: as many as the cluster's resources fit).
    pub max_concurrent_trials: Option<usize>,
    /// Default: random search.
    pub search_alg: Option<Box<dyn Searcher>>,
    /// Default: FIFO.
    pub scheduler: Option<Box<dyn TrialScheduler>>,
    /// Stop starting trials and stop running ones after this long.
    pub time_budget: Option<Duration>,
    /// Seed of the default random search.
    pub seed: u64,
}

impl Default for TuneConfig {
    fn default() -> Self {
        TuneConfig {
            metric: None,
            mode: Mode::Min,
            num_samples: 1,
            max_concurrent_trials: None,
            search_alg: None,
            scheduler: None,
            time_budget: None,
            seed: 0,
        }
    }
}

/// How many failures a trial survives.
#[derive(Clone, Debug, Default)]
pub struct FailureConfig {
    /// Retries of a failed trial (from its latest checkpoint); -1 is unlimited. Default 0.
    pub max_failures: i32,
}

/// Where results go and how failures are handled.
#[derive(Clone, Debug, Default)]
pub struct RunConfig {
    pub name: Option<String>,
    /// Default `~/flare_results`.
    pub storage_path: Option<PathBuf>,
    /// Retries of a failed trial.
    pub failure: FailureConfig,
    /// The progress table (default on; `FLARE_TUNE_QUIET=1` turns it off).
    pub verbose: Option<bool>,
}

/// A trial's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TrialStatus {
    Pending,
    Running,
    /// Waiting for the scheduler (its process is gone; it resumes from its checkpoint).
    Paused,
    /// Returned normally.
    Terminated,
    /// Stopped by the scheduler or the time budget.
    Stopped,
    Error,
}

impl TrialStatus {
    /// Terminated, stopped or errored.
    pub fn is_done(self) -> bool {
        self.done()
    }
    fn done(self) -> bool {
        matches!(self, TrialStatus::Terminated | TrialStatus::Stopped | TrialStatus::Error)
    }
    fn label(self) -> &'static str {
        match self {
            TrialStatus::Pending => "PENDING",
            TrialStatus::Running => "RUNNING",
            TrialStatus::Paused => "PAUSED",
            TrialStatus::Terminated => "TERMINATED",
            TrialStatus::Stopped => "STOPPED",
            TrialStatus::Error => "ERROR",
        }
    }
}

/// One trial in the result grid.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct TrialResult {
    pub trial_id: String,
    pub config: Value,
    pub status: TrialStatus,
    /// The last reported metrics.
    pub metrics: Value,
    pub iterations: u64,
    pub path: PathBuf,
    pub checkpoint: Option<PathBuf>,
    pub error: Option<String>,
    pub failures: u32,
}

/// Every trial's result.
#[derive(Clone, Debug)]
pub struct ResultGrid {
    pub results: Vec<TrialResult>,
    pub metric: Option<String>,
    pub mode: Mode,
    pub path: PathBuf,
}

fn metric_value(v: &Value, metric: &str) -> Option<f64> {
    let mut cur = v;
    for p in metric.split('/') {
        cur = cur.get(p)?;
    }
    cur.as_f64().filter(|x| x.is_finite())
}

impl ResultGrid {
    /// The trial with the best last result of `metric` (default: the tune config's).
    pub fn get_best_result(&self, metric: Option<&str>, mode: Option<Mode>) -> Option<&TrialResult> {
        let metric = metric.map(str::to_string).or_else(|| self.metric.clone())?;
        let mode = mode.unwrap_or(self.mode);
        self.results
            .iter()
            .filter_map(|r| metric_value(&r.metrics, &metric).map(|v| (r, v)))
            .max_by(|a, b| {
                let o = a.1.total_cmp(&b.1);
                if mode == Mode::Max {
                    o
                } else {
                    o.reverse()
                }
            })
            .map(|(r, _)| r)
    }
    pub fn num_errors(&self) -> usize {
        self.results.iter().filter(|r| r.status == TrialStatus::Error).count()
    }
    /// All results as JSON.
    pub fn to_json(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(&self.results).map_err(|e| Error::Io(e.to_string()))?;
        std::fs::write(path, text).map_err(|e| Error::Io(format!("writing {}: {e}", path.display())))
    }
    /// One row per trial: id, status, iterations, `config/...` and the last metrics.
    pub fn to_csv(&self, path: &Path) -> Result<()> {
        let flat = |prefix: &str, v: &Value, out: &mut BTreeMap<String, String>| flatten_into(prefix, v, out);
        let rows: Vec<BTreeMap<String, String>> = self
            .results
            .iter()
            .map(|r| {
                let mut m = BTreeMap::new();
                flat("config/", &r.config, &mut m);
                flat("", &r.metrics, &mut m);
                m.insert("trial_id".into(), r.trial_id.clone());
                m.insert("status".into(), r.status.label().into());
                m.insert("iterations".into(), r.iterations.to_string());
                m
            })
            .collect();
        let mut cols: Vec<String> = vec!["trial_id".into(), "status".into(), "iterations".into()];
        for r in &rows {
            for k in r.keys() {
                if !cols.contains(k) {
                    cols.push(k.clone());
                }
            }
        }
        let esc = |s: &str| if s.contains([',', '"', '\n']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() };
        let mut out = cols.iter().map(|c| esc(c)).collect::<Vec<_>>().join(",") + "\n";
        for r in &rows {
            out += &(cols.iter().map(|c| esc(r.get(c).map(String::as_str).unwrap_or(""))).collect::<Vec<_>>().join(",") + "\n");
        }
        std::fs::write(path, out).map_err(|e| Error::Io(format!("writing {}: {e}", path.display())))
    }
}

fn flatten_into(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                flatten_into(&format!("{prefix}{k}/"), x, out);
            }
        }
        Value::String(s) => {
            out.insert(prefix.trim_end_matches('/').to_string(), s.clone());
        }
        other => {
            out.insert(prefix.trim_end_matches('/').to_string(), other.to_string());
        }
    }
}

/// The experiment journal: one JSON object a line, appended and fsynced.
struct Journal {
    file: std::fs::File,
}

impl Journal {
    fn open(path: &Path) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::Io(format!("opening the journal {}: {e}", path.display())))?;
        Ok(Journal { file })
    }
    fn append(&mut self, v: Value) -> Result<()> {
        let mut line = v.to_string();
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.sync_data())
            .map_err(|e| Error::Io(format!("writing the journal: {e}")))
    }
}

/// The journal's file name in the experiment directory.
pub const JOURNAL: &str = "experiment_state.jsonl";

#[doc(hidden)]
pub fn tuner_journal_name() -> &'static str {
    JOURNAL
}

struct Live {
    idx: usize,
    actor: ActorHandle<TrialWorker>,
    /// The outstanding `poll` call: a trial whose actor waits for resources (held by another
    /// sweep, say) must not hold up the others, so calls are waited on together.
    pending: Option<flare_core::ObjectRef<Vec<Event>>>,
    started: Option<flare_core::ObjectRef<()>>,
}

/// A hyperparameter sweep.
pub struct Tuner {
    trainable: WithResources,
    space: ParamSpace,
    tune: TuneConfig,
    run: RunConfig,
    restored: Option<(PathBuf, Vec<TrialResult>, bool)>,
}

impl Tuner {
    pub fn new(trainable: impl Into<WithResources>, space: ParamSpace) -> Self {
        Tuner { trainable: trainable.into(), space, tune: TuneConfig::default(), run: RunConfig::default(), restored: None }
    }
    pub fn tune_config(mut self, c: TuneConfig) -> Self {
        self.tune = c;
        self
    }
    pub fn run_config(mut self, r: RunConfig) -> Self {
        self.run = r;
        self
    }

    /// Resumes the experiment in `path` (after the driver was killed): finished trials are
    /// kept, unfinished ones run again from their latest checkpoint; errored ones too with
    /// `restart_errored`. Give the same trainable, space and tune config.
    pub fn restore(path: &Path, trainable: impl Into<WithResources>, space: ParamSpace, restart_errored: bool) -> Result<Self> {
        let text = std::fs::read_to_string(path.join(JOURNAL))
            .map_err(|e| Error::State(format!("reading {}: {e}", path.join(JOURNAL).display())))?;
        let mut trials: Vec<TrialResult> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            // A line cut short by the kill is the only one that can be broken: the last.
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                if n + 1 == text.lines().count() {
                    break;
                }
                return Err(Error::State(format!("journal line {} is not JSON", n + 1)));
            };
            let id = v["id"].as_str().unwrap_or_default().to_string();
            match v["event"].as_str() {
                Some("trial") => trials.push(TrialResult {
                    trial_id: id.clone(),
                    config: v["config"].clone(),
                    status: TrialStatus::Pending,
                    metrics: Value::Null,
                    iterations: 0,
                    path: path.join(&id),
                    checkpoint: None,
                    error: None,
                    failures: 0,
                }),
                Some(ev) => {
                    let Some(t) = trials.iter_mut().find(|t| t.trial_id == id) else { continue };
                    match ev {
                        "result" => {
                            t.metrics = v["metrics"].clone();
                            t.iterations = v["iteration"].as_u64().unwrap_or(t.iterations);
                            if let Some(c) = v["checkpoint"].as_str() {
                                t.checkpoint = Some(PathBuf::from(c));
                            }
                        }
                        "exploit" => {
                            t.config = v["config"].clone();
                            t.checkpoint = v["checkpoint"].as_str().map(PathBuf::from);
                            t.iterations = v["iteration"].as_u64().unwrap_or(0);
                        }
                        "done" => {
                            t.status = serde_json::from_value(v["status"].clone()).unwrap_or(TrialStatus::Error);
                            t.error = v["error"].as_str().map(str::to_string);
                        }
                        _ => {}
                    }
                }
                None => {}
            }
        }
        let mut t = Tuner::new(trainable, space);
        t.run.name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        t.run.storage_path = path.parent().map(Path::to_path_buf);
        t.restored = Some((path.to_path_buf(), trials, restart_errored));
        Ok(t)
    }

    /// Runs the sweep to the end.
    pub fn fit(mut self) -> Result<ResultGrid> {
        let flat: Flat = self.space.flatten()?;
        let metric = self.tune.metric.clone();
        let mode = self.tune.mode;
        if self.tune.num_samples == 0 {
            return Err(Error::Config("num_samples must be at least 1".into()));
        }
        let res = self.trainable.resources;
        if res.cpu < 0.0 || res.gpu < 0.0 || (res.gpu > 1.0 && res.gpu.fract() != 0.0) {
            return Err(Error::Config(format!("invalid trial resources {res:?}: GPUs above 1 must be whole")));
        }
        flare_core::init()?;
        let total = flare_core::cluster_resources()?.total;
        let fits = |have: f64, need: f64| if need > 0.0 { (have / need + 1e-9).floor() as usize } else { usize::MAX };
        let capacity =
            fits(total.get(flare_core::resources::CPU), res.cpu).min(fits(total.get(flare_core::resources::GPU), res.gpu));
        if capacity == 0 {
            return Err(Error::Infeasible(format!(
                "a trial needs {{CPU: {}, GPU: {}}} but the cluster has {{CPU: {}, GPU: {}}}",
                res.cpu,
                res.gpu,
                total.get(flare_core::resources::CPU),
                total.get(flare_core::resources::GPU)
            )));
        }
        let limit = self.tune.max_concurrent_trials.unwrap_or(usize::MAX).min(capacity).max(1);
        let mut searcher: Box<dyn Searcher> =
            self.tune.search_alg.take().unwrap_or_else(|| Box::new(RandomSearch::new(self.tune.seed)));
        searcher.set_search_properties(&flat.searched, metric.as_deref().unwrap_or(""), mode);
        if metric.is_none() && self.tune.scheduler.is_some() {
            return Err(Error::Config("a scheduler needs `metric` in the tune config".into()));
        }
        let mut scheduler: Box<dyn TrialScheduler> = self.tune.scheduler.take().unwrap_or_else(|| Box::new(Fifo));
        let (dir, mut trials, restart_errored) = match self.restored.take() {
            Some((p, t, r)) => (p, t, r),
            None => {
                let name = self
                    .run
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("tune_{}_{}", flare_core::util::now_ms(), std::process::id()));
                if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                    return Err(Error::Config(format!("experiment name `{name}` must be a plain directory name")));
                }
                let base = self.run.storage_path.clone().unwrap_or_else(|| {
                    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(std::env::temp_dir).join("flare_results")
                });
                (base.join(name), Vec::new(), false)
            }
        };
        std::fs::create_dir_all(&dir).map_err(|e| Error::Io(format!("creating {}: {e}", dir.display())))?;
        let mut journal = Journal::open(&dir.join(JOURNAL))?;
        // Restored trials: finished ones stay; the others run again.
        for t in trials.iter_mut() {
            if t.status == TrialStatus::Error && restart_errored {
                t.status = TrialStatus::Pending;
                t.error = None;
            }
            if !t.status.done() {
                t.status = TrialStatus::Pending;
            }
        }
        let grid = grid_points(&flat.grids);
        let planned = self.tune.num_samples * grid.len();
        let verbose = self.run.verbose.unwrap_or_else(|| std::env::var("FLARE_TUNE_QUIET").map_or(true, |v| v != "1"));
        let code = flare_core::util::CodeRef::of_addr(self.trainable.trainable as usize);
        let started = Instant::now();
        let mut live: Vec<Live> = Vec::new();
        let mut last_table = Instant::now();
        let mut searcher_done = false;
        let mut exploits: Vec<(usize, String)> = Vec::new();
        let mut pauses: Vec<usize> = Vec::new();
        let mut told_all_started = false;
        let mut added: std::collections::HashSet<String> = std::collections::HashSet::new();
        loop {
            if !told_all_started && (searcher_done || trials.len() >= planned) {
                told_all_started = true;
                scheduler.all_trials_started();
            }
            // Paused trials the scheduler resumes (from their latest checkpoint) or stops.
            apply_resumed_and_stopped(scheduler.as_mut(), &mut trials, searcher.as_mut(), &mut journal)?;
            let over_budget = self.tune.time_budget.is_some_and(|b| started.elapsed() >= b);
            // Start trials while there is room: restored pending ones first, then new ones.
            while !over_budget && live.len() < limit {
                let idx = match trials.iter().position(|t| t.status == TrialStatus::Pending) {
                    Some(i) => i,
                    None => {
                        if searcher_done || trials.len() >= planned {
                            break;
                        }
                        let n = trials.len();
                        let id = format!("{:05}", n);
                        let values = match searcher.suggest(&id) {
                            Suggestion::Config(v) => v,
                            Suggestion::Wait => break,
                            Suggestion::Done => {
                                searcher_done = true;
                                break;
                            }
                        };
                        let config = build_config(&flat, &values, &grid[n % grid.len()]);
                        journal.append(json!({"event": "trial", "id": id, "config": config}))?;
                        trials.push(TrialResult {
                            trial_id: id.clone(),
                            config,
                            status: TrialStatus::Pending,
                            metrics: Value::Null,
                            iterations: 0,
                            path: dir.join(&id),
                            checkpoint: None,
                            error: None,
                            failures: 0,
                        });
                        n
                    }
                };
                let t = &mut trials[idx];
                if added.insert(t.trial_id.clone()) {
                    scheduler.on_trial_add(&t.trial_id);
                }
                std::fs::create_dir_all(&t.path).map_err(|e| Error::Io(format!("creating {}: {e}", t.path.display())))?;
                let _ = std::fs::write(t.path.join("params.json"), serde_json::to_string_pretty(&t.config).unwrap_or_default());
                let actor = TrialWorker::remote().num_cpus(res.cpu).num_gpus(res.gpu).memory(res.memory).spawn()?;
                // Not waited on here: the actor may wait for resources that running trials
                // (this sweep's or another's) free only once they are polled. Its answer comes
                // before the first poll's (an actor's calls run in order).
                let started = actor.start(TrialSetup {
                    trainable: code,
                    trial_id: t.trial_id.clone(),
                    config: t.config.to_string(),
                    dir: t.path.clone(),
                    checkpoint: t.checkpoint.clone(),
                    iteration: if t.checkpoint.is_some() { t.iterations } else { 0 },
                });
                if t.checkpoint.is_none() {
                    t.iterations = 0;
                }
                t.status = TrialStatus::Running;
                live.push(Live { idx, actor, started: Some(started), pending: None });
            }
            if live.is_empty() && trials.iter().any(|t| t.status == TrialStatus::Paused) && !over_budget {
                // Everything left is paused: the scheduler must decide now.
                scheduler.all_trials_started();
                told_all_started = true;
                if !trials.iter().any(|t| t.status == TrialStatus::Pending)
                    && !apply_resumed_and_stopped(scheduler.as_mut(), &mut trials, searcher.as_mut(), &mut journal)?
                {
                    return Err(Error::State("every remaining trial is paused and the scheduler resumes none".into()));
                }
                continue;
            }
            if live.is_empty() {
                let more = !over_budget && !searcher_done && trials.len() < planned;
                if !more && trials.iter().all(|t| t.status.done()) {
                    break;
                }
                if !more {
                    break;
                }
                // The searcher said Wait with nothing running: it cannot make progress.
                return Err(Error::Config("the searcher is waiting but no trial is running".into()));
            }
            // Poll every running trial; take the answers that are in.
            let wait_ms = if live.len() > 8 { 20 } else { 100 };
            for l in live.iter_mut() {
                if l.pending.is_none() {
                    l.pending = Some(l.actor.poll(wait_ms));
                }
            }
            let refs: Vec<_> = live.iter().filter_map(|l| l.pending.clone()).collect();
            let (ready, _) = flare_core::wait(&refs, refs.len(), Some(Duration::from_millis(wait_ms + 100)))?;
            let mut finished: Vec<usize> = Vec::new();
            for (k, l) in live.iter_mut().enumerate() {
                let Some(r) = l.pending.take_if(|r| ready.contains(r)) else { continue };
                let idx = l.idx;
                let start = l.started.take().map(|s| s.get()).unwrap_or(Ok(()));
                let outcome: std::result::Result<Vec<Event>, String> = match start {
                    Err(e) => Err(format!("the trial could not start: {e}")),
                    Ok(()) => r.get().map_err(|e| format!("the trial's process died: {e}")),
                };
                let events = match outcome {
                    Ok(e) => e,
                    Err(why) => vec![Event::Failed { error: why }],
                };
                for ev in events {
                    let t = &mut trials[idx];
                    if t.status.done() {
                        break;
                    }
                    match ev {
                        Event::Report { iteration, metrics, checkpoint } => {
                            let mut m: Value = serde_json::from_str(&metrics).unwrap_or(Value::Null);
                            if let Value::Object(o) = &mut m {
                                o.insert("training_iteration".into(), json!(iteration));
                                o.insert("time_total_s".into(), json!(started.elapsed().as_secs_f64()));
                            }
                            if let Ok(mut f) =
                                std::fs::OpenOptions::new().create(true).append(true).open(t.path.join("result.jsonl"))
                            {
                                let _ = writeln!(f, "{m}");
                            }
                            t.iterations = iteration;
                            if checkpoint.is_some() {
                                t.checkpoint = checkpoint.clone();
                            }
                            journal.append(json!({"event": "result", "id": t.trial_id, "iteration": iteration, "metrics": m,
                                                  "checkpoint": checkpoint.map(|c| c.display().to_string())}))?;
                            t.metrics = m.clone();
                            searcher.on_trial_result(&t.trial_id, &m);
                            let value = metric.as_deref().and_then(|k| metric_value(&m, k));
                            match scheduler.on_result(&t.trial_id, iteration, value, mode) {
                                Decision::Continue => {}
                                Decision::Stop => t.status = TrialStatus::Stopped,
                                Decision::Exploit { from } => {
                                    // Later reports of this batch ran past the decision: dropped.
                                    exploits.push((idx, from));
                                    break;
                                }
                                Decision::Pause => {
                                    pauses.push(idx);
                                    break;
                                }
                            }
                        }
                        Event::Finished => t.status = TrialStatus::Terminated,
                        Event::Failed { error } => {
                            t.failures += 1;
                            let max = self.run.failure.max_failures;
                            if max < 0 || (t.failures as i64) <= max as i64 {
                                t.status = TrialStatus::Pending;
                                if verbose {
                                    eprintln!("[tune] trial {} failed ({error}); retrying ({} of {max})", t.trial_id, t.failures);
                                }
                                finished.push(k);
                                break;
                            }
                            t.status = TrialStatus::Error;
                            t.error = Some(error);
                        }
                    }
                }
                let t = &trials[idx];
                if t.status.done() {
                    finished.push(k);
                    scheduler.on_complete(&t.trial_id);
                    end_trial(t, searcher.as_mut(), &mut journal)?;
                }
            }
            if self.tune.time_budget.is_some_and(|b| started.elapsed() >= b) {
                for (k, l) in live.iter().enumerate() {
                    let t = &mut trials[l.idx];
                    if !t.status.done() && t.status != TrialStatus::Pending {
                        t.status = TrialStatus::Stopped;
                        scheduler.on_complete(&t.trial_id);
                        end_trial(t, searcher.as_mut(), &mut journal)?;
                        finished.push(k);
                    }
                }
            }
            // Pauses: the process goes; the trial waits for the scheduler to resume it.
            for idx in pauses.drain(..) {
                if trials[idx].status == TrialStatus::Running {
                    trials[idx].status = TrialStatus::Paused;
                    if let Some(k) = live.iter().position(|l| l.idx == idx) {
                        finished.push(k);
                    }
                }
            }
            // Exploits: the trial restarts from the donor's checkpoint with an explored config.
            for (idx, from) in exploits.drain(..) {
                let Some(donor) = trials.iter().find(|d| d.trial_id == from) else { continue };
                let (Some(ck), false) = (donor.checkpoint.clone(), trials[idx].status.done()) else { continue };
                let donor_iterations = donor.iterations;
                let config = scheduler.explore(&donor.config);
                let t = &mut trials[idx];
                let copy = t.path.join(format!("exploited_{:06}_from_{from}", donor_iterations));
                copy_dir(&ck, &copy).map_err(|e| Error::Io(format!("copying {} for PBT: {e}", ck.display())))?;
                journal.append(json!({"event": "exploit", "id": t.trial_id, "from": from, "config": config,
                                      "checkpoint": copy.display().to_string(), "iteration": donor_iterations}))?;
                if verbose {
                    eprintln!(
                        "[tune] PBT: trial {} restarts from trial {from}'s checkpoint (iteration {donor_iterations})",
                        t.trial_id
                    );
                }
                t.config = config;
                t.checkpoint = Some(copy);
                t.iterations = donor_iterations;
                t.status = TrialStatus::Pending;
                let _ = std::fs::write(t.path.join("params.json"), serde_json::to_string_pretty(&t.config).unwrap_or_default());
                if let Some(k) = live.iter().position(|l| l.idx == idx) {
                    finished.push(k);
                }
            }
            finished.sort_unstable();
            finished.dedup();
            for k in finished.into_iter().rev() {
                let l = live.remove(k);
                // Frees the trial's resources at once.
                let _ = flare_core::kill(&l.actor);
            }
            if verbose && last_table.elapsed() >= Duration::from_secs(5) {
                last_table = Instant::now();
                eprintln!("{}", progress_table(&trials, metric.as_deref(), started.elapsed(), scheduler.name()));
            }
        }
        // Trials still paused when the sweep ends (time budget): stopped.
        for t in trials.iter_mut().filter(|t| t.status == TrialStatus::Paused) {
            t.status = TrialStatus::Stopped;
            journal.append(json!({"event": "done", "id": t.trial_id, "status": t.status, "error": null}))?;
        }
        if verbose {
            eprintln!("{}", progress_table(&trials, metric.as_deref(), started.elapsed(), scheduler.name()));
        }
        Ok(ResultGrid { results: trials, metric, mode, path: dir })
    }
}

/// A trial ended: the searcher hears its last result (or its error) and the journal records it.
fn end_trial(t: &TrialResult, searcher: &mut dyn Searcher, journal: &mut Journal) -> Result<()> {
    searcher.on_trial_complete(&t.trial_id, Some(&t.metrics).filter(|m| !m.is_null()), t.status == TrialStatus::Error);
    journal.append(json!({"event": "done", "id": t.trial_id, "status": t.status, "error": t.error}))
}

/// Applies the scheduler's resume and stop lists to paused trials; whether there was any.
fn apply_resumed_and_stopped(
    scheduler: &mut dyn TrialScheduler,
    trials: &mut [TrialResult],
    searcher: &mut dyn Searcher,
    journal: &mut Journal,
) -> Result<bool> {
    let (resumed, stopped) = (scheduler.take_resumed(), scheduler.take_stopped());
    for id in &resumed {
        if let Some(t) = trials.iter_mut().find(|t| &t.trial_id == id && t.status == TrialStatus::Paused) {
            t.status = TrialStatus::Pending;
        }
    }
    for id in &stopped {
        if let Some(t) = trials.iter_mut().find(|t| &t.trial_id == id && t.status == TrialStatus::Paused) {
            t.status = TrialStatus::Stopped;
            end_trial(t, searcher, journal)?;
        }
    }
    Ok(!resumed.is_empty() || !stopped.is_empty())
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let dst = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &dst)?;
        } else {
            std::fs::copy(e.path(), dst)?;
        }
    }
    Ok(())
}

/// Ray Tune's status table.
pub fn progress_table(trials: &[TrialResult], metric: Option<&str>, elapsed: Duration, scheduler: &str) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for t in trials {
        *counts.entry(t.status.label()).or_default() += 1;
    }
    let summary = counts.iter().map(|(k, v)| format!("{v} {k}")).collect::<Vec<_>>().join(", ");
    let mut s = format!(
        "== Status ==  {:.1}s elapsed, scheduler {scheduler}, {} trials: {summary}\n",
        elapsed.as_secs_f64(),
        trials.len()
    );
    let mcol = metric.unwrap_or("-");
    s += &format!("{:<8} {:<11} {:>5} {:>12}  params\n", "trial", "status", "iter", mcol);
    let shown = trials.iter().rev().take(20).collect::<Vec<_>>();
    for t in shown.into_iter().rev() {
        let mut params = BTreeMap::new();
        flatten_into("", &t.config, &mut params);
        let p =
            params.iter().map(|(k, v)| format!("{k}={}", v.chars().take(10).collect::<String>())).collect::<Vec<_>>().join(" ");
        let m = metric.and_then(|k| metric_value(&t.metrics, k)).map_or("-".to_string(), |v| format!("{v:.5}"));
        s += &format!("{:<8} {:<11} {:>5} {:>12}  {p}\n", t.trial_id, t.status.label(), t.iterations, m);
    }
    if trials.len() > 20 {
        s += &format!("... and {} more\n", trials.len() - 20);
    }
    s
}
