//! Jobs: a shell entrypoint run in its unpacked working dir, with Ray's statuses and fields.
//! The entrypoint's resources are reserved on a node that has them free: the head's machine
//! when it fits there, else the first live node agent that has them, which runs it and streams
//! its output back into the head's log of the job.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::db::Db;
use super::rpc::NodeEntry;
use super::{now_ms, HeadOptions};

/// The head's node table, shared with the gRPC service that keeps it.
pub(crate) type NodeTable = Arc<Mutex<HashMap<String, NodeEntry>>>;

/// Ray's job statuses, spelled as Ray spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobStatus {
    Pending,
    Running,
    Stopped,
    Succeeded,
    Failed,
}

impl JobStatus {
    pub fn is_terminal(self) -> bool {
        matches!(self, JobStatus::Stopped | JobStatus::Succeeded | JobStatus::Failed)
    }
}

/// A job as Ray's `JobDetails` has it (field names and millisecond times included).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobInfo {
    #[serde(rename = "type")]
    pub kind: String,
    pub job_id: Option<String>,
    pub submission_id: String,
    pub driver_info: Option<serde_json::Value>,
    pub status: JobStatus,
    pub entrypoint: String,
    pub message: Option<String>,
    pub error_type: Option<String>,
    pub start_time: Option<u64>,
    pub end_time: Option<u64>,
    pub metadata: HashMap<String, String>,
    pub runtime_env: serde_json::Value,
    pub driver_agent_http_address: Option<String>,
    pub driver_node_id: Option<String>,
    pub driver_exit_code: Option<i32>,
    pub entrypoint_num_cpus: Option<f64>,
    pub entrypoint_num_gpus: Option<f64>,
    pub entrypoint_memory: Option<u64>,
    pub entrypoint_resources: Option<HashMap<String, f64>>,
    /// The entrypoint's process group (not in Ray's fields; ignored by its client).
    #[serde(default)]
    pub pgid: Option<i32>,
}

/// What `POST /api/jobs/` takes (Ray's `JobSubmitRequest`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    pub entrypoint: String,
    pub submission_id: Option<String>,
    pub job_id: Option<String>,
    #[serde(default)]
    pub runtime_env: Option<serde_json::Value>,
    #[serde(default)]
    pub metadata: Option<HashMap<String, String>>,
    pub entrypoint_num_cpus: Option<f64>,
    pub entrypoint_num_gpus: Option<f64>,
    pub entrypoint_memory: Option<u64>,
    pub entrypoint_resources: Option<HashMap<String, f64>>,
    pub entrypoint_label_selector: Option<HashMap<String, String>>,
}

/// An error with the HTTP status it maps to.
pub(crate) struct ApiError(pub u16, pub String);

struct Inner {
    jobs: HashMap<String, JobInfo>,
    /// Resources reserved by running entrypoints, by node.
    used: HashMap<String, HashMap<String, f64>>,
    stop_requested: std::collections::HashSet<String>,
}

#[derive(Clone)]
pub(crate) struct Jobs {
    inner: Arc<(Mutex<Inner>, Condvar)>,
    db: Arc<Db>,
    session: PathBuf,
    /// The head machine's resources (what the head node offers entrypoints).
    total: HashMap<String, f64>,
    nodes: NodeTable,
    token: String,
}

/// The head's own node in the node table.
pub(crate) const HEAD_NODE: &str = "head";

pub(crate) fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        && !id.starts_with('.')
}

fn random_id() -> Result<String, String> {
    let b: [u8; 16] = super::random_bytes()?;
    const A: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    Ok(b.iter().map(|x| A[*x as usize % A.len()] as char).collect())
}

/// Ray keeps the last 20,000 characters of a failed job's log in its message.
fn log_tail(path: &Path, max: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let start = text.len().saturating_sub(max);
    String::from_utf8_lossy(&text[start..]).into_owned()
}

impl Jobs {
    /// Loads the jobs of an earlier head. Jobs that were pending or running when it stopped
    /// are marked failed, and their leftover processes (verified by their job id) are killed.
    pub fn recover(db: Arc<Db>, opts: &HeadOptions, nodes: NodeTable, token: String) -> Result<Jobs, String> {
        let mut jobs = HashMap::new();
        for (id, bytes) in db.jobs()? {
            let Ok(mut j) = serde_json::from_slice::<JobInfo>(&bytes) else { continue };
            if !j.status.is_terminal() {
                if let Some(pgid) = j.pgid {
                    kill_if_ours(pgid, &j.submission_id);
                }
                j.status = JobStatus::Failed;
                j.error_type = Some("JOB_SUPERVISOR_ACTOR_DIED".into());
                j.message = Some("The head stopped while this job was pending or running; its process was ended.".into());
                j.end_time = Some(now_ms());
                db.put_job(&id, &serde_json::to_vec(&j).unwrap()).ok();
            }
            jobs.insert(id, j);
        }
        let mut total: HashMap<String, f64> = opts.resources.iter().cloned().collect();
        total.insert("CPU".into(), opts.num_cpus);
        total.insert("GPU".into(), opts.num_gpus);
        total.insert("memory".into(), opts.memory as f64);
        Ok(Jobs {
            inner: Arc::new((
                Mutex::new(Inner { jobs, used: HashMap::new(), stop_requested: Default::default() }),
                Condvar::new(),
            )),
            db,
            session: opts.session_dir.clone(),
            total,
            nodes,
            token,
        })
    }

    fn save(db: &Db, j: &JobInfo) {
        if let Err(e) = db.put_job(&j.submission_id, &serde_json::to_vec(j).unwrap()) {
            tracing::warn!("saving job {}: {e}", j.submission_id);
        }
    }

    pub fn log_path(&self, id: &str) -> PathBuf {
        self.session.join("logs").join(format!("job-driver-{id}.log"))
    }

    pub fn get(&self, id: &str) -> Option<JobInfo> {
        self.inner.0.lock().unwrap().jobs.get(id).cloned()
    }

    pub fn list(&self) -> Vec<JobInfo> {
        let mut v: Vec<JobInfo> = self.inner.0.lock().unwrap().jobs.values().cloned().collect();
        v.sort_by_key(|j| j.start_time);
        v
    }

    /// The resources a request reserves, checked against what the cluster's nodes have: some
    /// live node must have them all.
    fn demand(&self, r: &SubmitRequest) -> Result<HashMap<String, f64>, ApiError> {
        let mut d: HashMap<String, f64> = r.entrypoint_resources.clone().unwrap_or_default();
        if let Some(c) = r.entrypoint_num_cpus {
            d.insert("CPU".into(), c);
        }
        if let Some(g) = r.entrypoint_num_gpus {
            d.insert("GPU".into(), g);
        }
        if let Some(m) = r.entrypoint_memory {
            d.insert("memory".into(), m as f64);
        }
        for (k, v) in &d {
            if !v.is_finite() || *v < 0.0 {
                return Err(ApiError(400, format!("entrypoint resource {k} = {v} must be a non-negative number")));
            }
        }
        let totals = self.node_totals();
        if !totals.iter().any(|(_, _, total)| fits(&d, total, &HashMap::new())) {
            let largest = |k: &str| totals.iter().map(|(_, _, t)| t.get(k).copied().unwrap_or(0.0)).fold(0.0, f64::max);
            let short: Vec<String> = d
                .iter()
                .filter(|(k, v)| **v > largest(k) + 1e-9)
                .map(|(k, v)| format!("{v} {k} (the most a node has: {})", largest(k)))
                .collect();
            let what = if short.is_empty() { format!("{d:?} on one node; no node has all of them") } else { short.join(", ") };
            return Err(ApiError(400, format!("the entrypoint asks for {what}; ask for less or add a node that has it")));
        }
        Ok(d)
    }

    /// Live nodes as `(id, agent address, resources)`: the head's machine first, then node
    /// agents by id.
    fn node_totals(&self) -> Vec<(String, Option<String>, HashMap<String, f64>)> {
        let mut v = vec![(HEAD_NODE.to_string(), None, self.total.clone())];
        let nodes = self.nodes.lock().unwrap();
        let mut agents: Vec<&NodeEntry> = nodes.values().filter(|n| n.alive && !n.is_head).collect();
        agents.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        v.extend(agents.into_iter().map(|n| (n.node_id.clone(), Some(n.address.clone()), n.resources_total.clone())));
        v
    }

    pub fn submit(&self, r: SubmitRequest) -> Result<String, ApiError> {
        if r.entrypoint.trim().is_empty() {
            return Err(ApiError(400, "entrypoint must be a non-empty shell command".into()));
        }
        if r.entrypoint.len() > 64 << 10 {
            return Err(ApiError(400, "entrypoint is over 64 KiB".into()));
        }
        if r.entrypoint_label_selector.as_ref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError(400, "entrypoint_label_selector is not supported by this head yet".into()));
        }
        let id = match r.submission_id.clone().or(r.job_id.clone()) {
            Some(id) => id,
            None => format!("raysubmit_{}", random_id().map_err(|e| ApiError(500, e))?),
        };
        if !valid_id(&id) {
            return Err(ApiError(400, format!("submission_id `{id}` must be 1-128 letters, digits, `_`, `-` or `.`")));
        }
        let demand = self.demand(&r)?;
        let runtime_env = r.runtime_env.clone().unwrap_or_else(|| serde_json::json!({}));
        let env_vars: Vec<(String, String)> = match runtime_env.get("env_vars") {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::Object(m)) => m
                .iter()
                .map(|(k, v)| match v {
                    serde_json::Value::String(s) => Ok((k.clone(), s.clone())),
                    _ => Err(ApiError(400, format!("runtime_env.env_vars.{k} must be a string"))),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(ApiError(400, "runtime_env.env_vars must be an object of strings".into())),
        };
        let working_dir = match runtime_env.get("working_dir") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(uri)) => Some(self.package_for(uri)?),
            Some(_) => return Err(ApiError(400, "runtime_env.working_dir must be a package URI string".into())),
        };
        let job = JobInfo {
            kind: "SUBMISSION".into(),
            job_id: Some(id.clone()),
            submission_id: id.clone(),
            driver_info: None,
            status: JobStatus::Pending,
            entrypoint: r.entrypoint.clone(),
            message: Some("Job has not started yet.".into()),
            error_type: None,
            start_time: Some(now_ms()),
            end_time: None,
            metadata: r.metadata.clone().unwrap_or_default(),
            runtime_env,
            driver_agent_http_address: None,
            driver_node_id: None,
            driver_exit_code: None,
            entrypoint_num_cpus: r.entrypoint_num_cpus,
            entrypoint_num_gpus: r.entrypoint_num_gpus,
            entrypoint_memory: r.entrypoint_memory,
            entrypoint_resources: r.entrypoint_resources.clone(),
            pgid: None,
        };
        {
            let mut g = self.inner.0.lock().unwrap();
            if g.jobs.contains_key(&id) {
                return Err(ApiError(
                    400,
                    format!("Job with submission_id {id} already exists. Please use a different submission_id."),
                ));
            }
            g.jobs.insert(id.clone(), job.clone());
        }
        Self::save(&self.db, &job);
        let launch = Launch { id: id.clone(), entrypoint: r.entrypoint, log: self.log_path(&id), working_dir, env_vars, demand };
        let jobs = self.clone();
        std::thread::Builder::new()
            .name(format!("flare-job-{id}"))
            .spawn(move || jobs.supervise(launch))
            .map_err(|e| ApiError(500, e.to_string()))?;
        Ok(id)
    }

    /// The local file of an uploaded package URI such as `gcs://_ray_pkg_<hash>.zip`.
    fn package_for(&self, uri: &str) -> Result<PathBuf, ApiError> {
        let (protocol, name) = uri.split_once("://").ok_or_else(|| {
            ApiError(400, format!("working_dir `{uri}` is not a package URI; upload the directory first (ray job submit and flare job submit do)"))
        })?;
        let p = self.package_path(protocol, name).map_err(|e| ApiError(400, e))?;
        if !p.exists() {
            return Err(ApiError(
                400,
                format!("package {uri} was not uploaded; PUT it to /api/packages/{protocol}/{name} first"),
            ));
        }
        Ok(p)
    }

    pub fn package_path(&self, protocol: &str, name: &str) -> Result<PathBuf, String> {
        if !valid_id(protocol) || !valid_id(name) {
            return Err(format!("package `{protocol}://{name}`: names are letters, digits, `_`, `-` and `.`"));
        }
        Ok(self.session.join("packages").join(protocol).join(name))
    }

    /// Asks a job to stop: SIGTERM to its process group, SIGKILL 3 s later.
    pub fn stop(&self, id: &str) -> Result<bool, ApiError> {
        let mut g = self.inner.0.lock().unwrap();
        let Some(j) = g.jobs.get(id) else { return Err(ApiError(404, format!("Job {id} does not exist"))) };
        if j.status.is_terminal() {
            return Ok(false);
        }
        let pgid = j.pgid;
        g.stop_requested.insert(id.to_string());
        drop(g);
        self.inner.1.notify_all();
        if let Some(pgid) = pgid {
            // SAFETY: signals to the job's own process group.
            unsafe { libc::kill(-pgid, libc::SIGTERM) };
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_secs(3));
                // SAFETY: as above; a finished group gives ESRCH.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
            });
        }
        Ok(true)
    }

    pub fn delete(&self, id: &str) -> Result<bool, ApiError> {
        let mut g = self.inner.0.lock().unwrap();
        let Some(j) = g.jobs.get(id) else { return Err(ApiError(404, format!("Job {id} does not exist"))) };
        if !j.status.is_terminal() {
            return Err(ApiError(
                400,
                format!("Attempted to delete job '{id}', but it is in a non-terminal state {:?}; stop it first", j.status),
            ));
        }
        g.jobs.remove(id);
        drop(g);
        let _ = std::fs::remove_dir_all(self.session.join("jobs").join(id));
        self.db.delete_job(id).map_err(|e| ApiError(500, e))
    }

    /// Stops every running job (the head is shutting down) and waits briefly for them.
    pub fn stop_all(&self) {
        let ids: Vec<String> = self.list().into_iter().filter(|j| !j.status.is_terminal()).map(|j| j.submission_id).collect();
        for id in &ids {
            let _ = self.stop(id);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline && self.list().iter().any(|j| !j.status.is_terminal()) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn counts(&self) -> HashMap<&'static str, usize> {
        let mut m = HashMap::new();
        for j in self.inner.0.lock().unwrap().jobs.values() {
            let k = match j.status {
                JobStatus::Pending => "PENDING",
                JobStatus::Running => "RUNNING",
                JobStatus::Stopped => "STOPPED",
                JobStatus::Succeeded => "SUCCEEDED",
                JobStatus::Failed => "FAILED",
            };
            *m.entry(k).or_default() += 1;
        }
        m
    }

    /// What running entrypoints hold on `node`.
    pub fn used_on(&self, node: &str) -> HashMap<String, f64> {
        self.inner.0.lock().unwrap().used.get(node).cloned().unwrap_or_default()
    }
    pub fn total(&self) -> &HashMap<String, f64> {
        &self.total
    }
}

/// Kills a leftover process group only if its leader is still this job's process.
fn kill_if_ours(pgid: i32, id: &str) {
    let environ = std::fs::read(format!("/proc/{pgid}/environ")).unwrap_or_default();
    let marker = format!("FLARE_JOB_ID={id}");
    if environ.split(|b| *b == 0).any(|kv| kv == marker.as_bytes()) {
        // SAFETY: the group is verified to be this job's.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    }
}

/// The largest working dir a package may unpack to.
const MAX_UNPACKED: u64 = 8 << 30;

pub(crate) fn unpack(zip_path: &Path, into: &Path) -> Result<(), String> {
    let f = std::fs::File::open(zip_path).map_err(|e| format!("{}: {e}", zip_path.display()))?;
    let mut z = zip::ZipArchive::new(f).map_err(|e| format!("the working_dir package is not a zip file: {e}"))?;
    let mut total = 0u64;
    for i in 0..z.len() {
        let mut entry = z.by_index(i).map_err(|e| e.to_string())?;
        // Entries may not leave the directory (zip slip).
        let Some(rel) = entry.enclosed_name() else {
            return Err(format!("the package entry `{}` points outside its directory", entry.name()));
        };
        let out = into.join(rel);
        if entry.is_dir() {
            std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
            continue;
        }
        total += entry.size();
        if total > MAX_UNPACKED {
            return Err(format!("the package unpacks to more than {} GiB", MAX_UNPACKED >> 30));
        }
        if let Some(p) = out.parent() {
            std::fs::create_dir_all(p).map_err(|e| e.to_string())?;
        }
        let mut w = std::fs::File::create(&out).map_err(|e| format!("{}: {e}", out.display()))?;
        std::io::copy(&mut (&mut entry).take(MAX_UNPACKED), &mut w).map_err(|e| e.to_string())?;
        if let Some(mode) = entry.unix_mode() {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&out, std::fs::Permissions::from_mode(mode & 0o777));
        }
    }
    Ok(())
}

/// What one job's supervisor starts.
struct Launch {
    id: String,
    entrypoint: String,
    log: PathBuf,
    /// The uploaded package to unpack as the working dir.
    working_dir: Option<PathBuf>,
    env_vars: Vec<(String, String)>,
    /// The entrypoint's resources, reserved while it runs.
    demand: HashMap<String, f64>,
}

/// Whether `demand` fits in `total` with `used` taken.
fn fits(demand: &HashMap<String, f64>, total: &HashMap<String, f64>, used: &HashMap<String, f64>) -> bool {
    demand.iter().all(|(k, v)| used.get(k).copied().unwrap_or(0.0) + v <= total.get(k).copied().unwrap_or(0.0) + 1e-9)
}

/// How a job's entrypoint ended.
enum Outcome {
    Exited(std::io::Result<std::process::ExitStatus>),
    /// On a node agent: its exit code or signal.
    Remote {
        code: Option<i32>,
        signal: Option<i32>,
    },
    /// Never started, or lost: the message says why.
    Failed(String),
}

impl Jobs {
    fn update(&self, id: &str, f: &mut dyn FnMut(&mut JobInfo)) {
        let mut g = self.inner.0.lock().unwrap();
        if let Some(j) = g.jobs.get_mut(id) {
            f(j);
            Jobs::save(&self.db, j);
        }
    }

    fn finish(&self, id: &str, status: JobStatus, message: String, exit: Option<i32>) {
        self.update(id, &mut |j| {
            j.status = status;
            j.message = Some(message.clone());
            j.end_time = Some(now_ms());
            j.driver_exit_code = exit;
            if status == JobStatus::Failed && j.error_type.is_none() {
                j.error_type = Some(
                    if exit.is_some() { "JOB_ENTRYPOINT_COMMAND_ERROR" } else { "JOB_SUPERVISOR_ACTOR_START_FAILURE" }.into(),
                );
            }
        });
    }

    fn stop_requested(&self, id: &str) -> bool {
        self.inner.0.lock().unwrap().stop_requested.contains(id)
    }

    /// Reserves the job's resources on the first node that has them free (the head's machine
    /// first), waiting while running jobs hold them. `None`: stopped while waiting.
    fn reserve(&self, id: &str, demand: &HashMap<String, f64>) -> Option<(String, Option<String>)> {
        let mut g = self.inner.0.lock().unwrap();
        loop {
            if g.stop_requested.contains(id) {
                return None;
            }
            let empty = HashMap::new();
            let place =
                self.node_totals().into_iter().find(|(node, _, total)| fits(demand, total, g.used.get(node).unwrap_or(&empty)));
            if let Some((node, addr, _)) = place {
                let used = g.used.entry(node.clone()).or_default();
                for (k, v) in demand {
                    *used.entry(k.clone()).or_default() += v;
                }
                return Some((node, addr));
            }
            if let Some(j) = g.jobs.get_mut(id) {
                j.message = Some(format!("Waiting for resources {demand:?}: no live node has them free now."));
            }
            g = self.inner.1.wait_timeout(g, Duration::from_millis(500)).unwrap().0;
        }
    }

    fn release(&self, node: &str, demand: &HashMap<String, f64>) {
        let mut g = self.inner.0.lock().unwrap();
        if let Some(used) = g.used.get_mut(node) {
            for (k, v) in demand {
                *used.entry(k.clone()).or_default() -= v;
            }
        }
        drop(g);
        self.inner.1.notify_all();
    }

    /// The environment every entrypoint gets: how to join the cluster as its driver.
    fn entrypoint_env(&self, launch: &Launch) -> Vec<(String, String)> {
        let head_url = super::HeadInfo::read(&self.session).map(|h| h.dashboard_url).unwrap_or_default();
        let mut env = vec![
            ("FLARE_ADDRESS".to_string(), head_url),
            ("FLARE_TOKEN".to_string(), super::read_token(&self.session).unwrap_or_default()),
            ("FLARE_JOB_ID".to_string(), launch.id.clone()),
            ("RAY_JOB_ID".to_string(), launch.id.clone()),
        ];
        if let Some(c) = launch.demand.get("CPU") {
            env.push(("FLARE_NUM_CPUS".to_string(), c.to_string()));
        }
        env.extend(launch.env_vars.iter().cloned());
        env
    }

    fn mark_running(&self, id: &str, node: &str, pgid: Option<i32>) -> bool {
        let mut g = self.inner.0.lock().unwrap();
        if let Some(j) = g.jobs.get_mut(id) {
            j.status = JobStatus::Running;
            j.pgid = pgid;
            j.driver_node_id = Some(node.to_string());
            j.message = Some(format!("Job is currently running (on node {node})."));
            Jobs::save(&self.db, j);
        }
        g.stop_requested.contains(id)
    }

    fn supervise(&self, mut launch: Launch) {
        let id = launch.id.clone();
        // The head's reservation picks the node; the node's agent grants the resources (so
        // drivers scheduling there cannot take them while the entrypoint runs).
        let (node, addr, _grant) = loop {
            let Some((node, addr)) = self.reserve(&id, &launch.demand) else {
                return self.finish(&id, JobStatus::Stopped, "Job was intentionally stopped.".into(), None);
            };
            match self.grant(&node, addr.as_deref(), &launch.demand) {
                Ok(g) => {
                    if let Some((_, alloc)) = &g {
                        let ids = alloc.gpu_ids();
                        if !ids.is_empty() {
                            let ids: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
                            launch.env_vars.insert(0, ("CUDA_VISIBLE_DEVICES".into(), ids.join(",")));
                        }
                    }
                    break (node, addr, g);
                }
                Err(why) => {
                    self.release(&node, &launch.demand);
                    if let Some(j) = self.inner.0.lock().unwrap().jobs.get_mut(&id) {
                        j.message = Some(format!("Waiting for resources {:?}: {why}", launch.demand));
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        };
        let outcome = match &addr {
            None => self.run_here(&launch),
            Some(addr) => self.run_on_agent(&launch, &node, addr),
        };
        self.release(&node, &launch.demand);
        let stopped = self.stop_requested(&id);
        use std::os::unix::process::ExitStatusExt;
        let code = match outcome {
            _ if stopped => return self.finish(&id, JobStatus::Stopped, "Job was intentionally stopped.".into(), None),
            Outcome::Failed(why) => return self.finish(&id, JobStatus::Failed, why, None),
            Outcome::Exited(Err(e)) => {
                return self.finish(&id, JobStatus::Failed, format!("waiting for the entrypoint failed: {e}"), None)
            }
            Outcome::Exited(Ok(s)) => s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)),
            Outcome::Remote { code, signal } => code.unwrap_or_else(|| 128 + signal.unwrap_or(0)),
        };
        if code == 0 {
            self.finish(&id, JobStatus::Succeeded, "Job finished successfully.".into(), Some(0));
        } else {
            let tail = log_tail(&launch.log, 20_000);
            self.finish(
                &id,
                JobStatus::Failed,
                format!("Job entrypoint command failed with exit code {code}, last available logs (truncated to 20,000 chars):\n{tail}"),
                Some(code),
            );
        }
    }

    /// Holds the entrypoint's resources on `node` through its agent (the head's own for its
    /// machine) until the returned connection closes, with what was granted. `Err`: not free
    /// there now (drivers hold them), or the agent cannot be reached.
    fn grant(
        &self,
        node: &str,
        addr: Option<&str>,
        demand: &HashMap<String, f64>,
    ) -> Result<Option<(std::net::TcpStream, crate::resources::Allocation)>, String> {
        use crate::protocol::{read_frame, write_frame, FromAgent, Hello, ToAgent};
        let mut resources = crate::resources::ResourceSet::new();
        for (k, v) in demand.iter().filter(|(_, v)| **v > 0.0) {
            resources.set(k, *v)?;
        }
        if resources.is_empty() {
            return Ok(None);
        }
        let addr = match addr {
            Some(a) => a.to_string(),
            None => {
                self.nodes.lock().unwrap().get(HEAD_NODE).map(|n| n.address.clone()).ok_or("the head's node is not listed")?
            }
        };
        let why = |e: String| format!("node {node}'s agent at {addr}: {e}");
        let sock = addr.parse::<std::net::SocketAddr>().map_err(|e| why(e.to_string()))?;
        let mut s = std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(5)).map_err(|e| why(e.to_string()))?;
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        write_frame(&mut s, &Hello::Grants { token: self.token.clone() }).map_err(|e| why(e.to_string()))?;
        write_frame(&mut s, &ToAgent::AcquireAny { lease: 1, resources }).map_err(|e| why(e.to_string()))?;
        loop {
            match read_frame::<FromAgent>(&mut s, 1 << 20).map_err(|e| why(e.to_string()))? {
                FromAgent::Granted { alloc, .. } => {
                    let _ = s.set_read_timeout(None);
                    return Ok(Some((s, alloc)));
                }
                FromAgent::Denied { why: w, .. } => return Err(format!("drivers hold them on node {node} ({w})")),
                FromAgent::Refused(w) => return Err(why(w)),
                _ => {}
            }
        }
    }

    /// Runs the entrypoint on the head's machine.
    fn run_here(&self, launch: &Launch) -> Outcome {
        let id = &launch.id;
        let cwd = match &launch.working_dir {
            None => self.session.clone(),
            Some(pkg) => {
                let dir = self.session.join("jobs").join(id).join("working_dir");
                if let Err(e) = std::fs::create_dir_all(&dir).map_err(|e| e.to_string()).and_then(|_| unpack(pkg, &dir)) {
                    return Outcome::Failed(format!("Failed to set up the working_dir: {e}"));
                }
                dir
            }
        };
        let out = match std::fs::OpenOptions::new().create(true).append(true).open(&launch.log) {
            Ok(f) => f,
            Err(e) => return Outcome::Failed(format!("cannot open the job log {}: {e}", launch.log.display())),
        };
        let err = match out.try_clone() {
            Ok(e) => e,
            Err(e) => return Outcome::Failed(format!("cannot open the job log {}: {e}", launch.log.display())),
        };
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c").arg(&launch.entrypoint).current_dir(&cwd).stdin(Stdio::null()).stdout(out).stderr(err).process_group(0);
        for (k, v) in self.entrypoint_env(launch) {
            cmd.env(k, v);
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return Outcome::Failed(format!("Failed to start the entrypoint: {e}")),
        };
        let pgid = child.id() as i32;
        if self.mark_running(id, HEAD_NODE, Some(pgid)) {
            // SAFETY: the job's own process group.
            unsafe { libc::kill(-pgid, libc::SIGTERM) };
        }
        Outcome::Exited(child.wait())
    }

    /// Runs the entrypoint on a node agent: sends it the working dir's package, copies the
    /// output it streams into the job's log, relays a stop; the connection lost without an exit
    /// fails the job.
    fn run_on_agent(&self, launch: &Launch, node: &str, addr: &str) -> Outcome {
        use crate::protocol::{read_frame, write_frame, FromAgent, Hello, ToAgent};
        use std::io::Write;
        let id = &launch.id;
        let lost = |e: String| Outcome::Failed(format!("the job's entrypoint on node {node} ({addr}): {e}"));
        let package = match &launch.working_dir {
            None => None,
            Some(p) => match std::fs::File::open(p).and_then(|f| Ok((f.metadata()?.len(), f))) {
                Ok(x) => Some(x),
                Err(e) => return Outcome::Failed(format!("reading the working_dir package {}: {e}", p.display())),
            },
        };
        let sock = match addr.parse::<std::net::SocketAddr>() {
            Ok(a) => std::net::TcpStream::connect_timeout(&a, Duration::from_secs(5)),
            Err(e) => return lost(format!("bad agent address: {e}")),
        };
        let mut s = match sock {
            Ok(s) => s,
            Err(e) => return lost(format!("cannot connect: {e}")),
        };
        let _ = s.set_nodelay(true);
        let hello = Hello::Job {
            token: self.token.clone(),
            id: id.clone(),
            entrypoint: launch.entrypoint.clone(),
            env: self.entrypoint_env(launch),
            package_size: package.as_ref().map_or(0, |(n, _)| *n),
        };
        if let Err(e) = write_frame(&mut s, &hello) {
            return lost(e.to_string());
        }
        if let Some((_, mut f)) = package {
            let mut buf = vec![0u8; 4 << 20];
            loop {
                match f.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if let Err(e) = write_frame(&mut s, &ToAgent::PackageChunk(buf[..n].to_vec())) {
                            return lost(format!("sending the package: {e}"));
                        }
                    }
                    Err(e) => return Outcome::Failed(format!("reading the working_dir package: {e}")),
                }
            }
        }
        // Unpacking a large package takes a while; the entrypoint's start is answered after it.
        let _ = s.set_read_timeout(Some(Duration::from_secs(120)));
        let pid = match read_frame::<FromAgent>(&mut s, 1 << 20) {
            Ok(FromAgent::JobStarted { pid }) => pid,
            Ok(FromAgent::Refused(why)) => return Outcome::Failed(why),
            Ok(other) => return lost(format!("unexpected answer {other:?}")),
            Err(e) => return lost(format!("no answer: {e}")),
        };
        tracing::info!(job = %id, node, pid, "job started on a node agent");
        let _ = s.set_read_timeout(None);
        // A stop (or a stop that came while it started) goes to the agent from a watcher.
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop_now = self.mark_running(id, node, None);
        let watcher = s.try_clone().ok().map(|mut w| {
            let (jobs, id, done, node) = (self.clone(), id.clone(), done.clone(), node.to_string());
            std::thread::spawn(move || {
                let mut sent = false;
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    if !sent && (stop_now || jobs.stop_requested(&id)) {
                        sent = write_frame(&mut w, &ToAgent::StopJob).is_ok();
                    }
                    // A node declared dead (missed heartbeats) may never close the connection.
                    if !jobs.nodes.lock().unwrap().get(&node).is_some_and(|n| n.alive) {
                        let _ = w.shutdown(std::net::Shutdown::Both);
                        break;
                    }
                    let g = jobs.inner.0.lock().unwrap();
                    drop(jobs.inner.1.wait_timeout(g, Duration::from_millis(200)).unwrap());
                }
            })
        });
        let mut log = std::fs::OpenOptions::new().create(true).append(true).open(&launch.log).ok();
        let mut rx = crate::protocol::Receiver::new(s);
        let outcome = loop {
            match rx.recv::<FromAgent>() {
                Ok(Some(FromAgent::JobOutput(bytes))) => {
                    if let Some(f) = log.as_mut() {
                        let _ = f.write_all(&bytes);
                    }
                }
                Ok(Some(FromAgent::JobExited { code, signal })) => break Outcome::Remote { code, signal },
                Ok(Some(_)) => {}
                Ok(None) => {
                    break lost("the node agent closed the connection before the entrypoint exited (did the node die?)".into())
                }
                Err(e) => break lost(format!("the connection to the node agent failed ({e}); did the node die?")),
            }
        };
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        self.inner.1.notify_all();
        if let Some(w) = watcher {
            let _ = w.join();
        }
        outcome
    }
}
