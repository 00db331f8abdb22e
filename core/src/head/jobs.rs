//! Jobs: a shell entrypoint run in its unpacked working dir, with Ray's statuses and fields.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::db::Db;
use super::{now_ms, HeadOptions};

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
    /// Resources reserved by running entrypoints.
    used: HashMap<String, f64>,
    stop_requested: std::collections::HashSet<String>,
}

pub(crate) struct Jobs {
    inner: Arc<(Mutex<Inner>, Condvar)>,
    db: Arc<Db>,
    session: PathBuf,
    total: HashMap<String, f64>,
}

fn valid_id(id: &str) -> bool {
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
    pub fn recover(db: Arc<Db>, opts: &HeadOptions) -> Result<Jobs, String> {
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

    /// The resources a request reserves, checked against what the head's machine has.
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
            let have = self.total.get(k).copied().unwrap_or(0.0);
            if *v > have + 1e-9 {
                return Err(ApiError(
                    400,
                    format!("the entrypoint asks for {v} {k} but the cluster has {have} in all; ask for less or add a node that has it"),
                ));
            }
        }
        Ok(d)
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
        let (inner, db, session, total) = (self.inner.clone(), self.db.clone(), self.session.clone(), self.total.clone());
        std::thread::Builder::new()
            .name(format!("flare-job-{id}"))
            .spawn(move || supervise(inner, db, session, total, launch))
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

    pub fn used(&self) -> HashMap<String, f64> {
        self.inner.0.lock().unwrap().used.clone()
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

fn unpack(zip_path: &Path, into: &Path) -> Result<(), String> {
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

fn supervise(inner: Arc<(Mutex<Inner>, Condvar)>, db: Arc<Db>, session: PathBuf, total: HashMap<String, f64>, launch: Launch) {
    let Launch { id, entrypoint, log, working_dir, env_vars, demand } = launch;
    let update = |f: &mut dyn FnMut(&mut JobInfo)| {
        let mut g = inner.0.lock().unwrap();
        if let Some(j) = g.jobs.get_mut(&id) {
            f(j);
            Jobs::save(&db, j);
        }
    };
    let finish = |status: JobStatus, message: String, exit: Option<i32>| {
        update(&mut |j| {
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
    };
    // Unpack the working dir.
    let cwd = match &working_dir {
        None => session.clone(),
        Some(pkg) => {
            let dir = session.join("jobs").join(&id).join("working_dir");
            if let Err(e) = std::fs::create_dir_all(&dir).map_err(|e| e.to_string()).and_then(|_| unpack(pkg, &dir)) {
                return finish(JobStatus::Failed, format!("Failed to set up the working_dir: {e}"), None);
            }
            dir
        }
    };
    // Reserve the entrypoint's resources (waiting while running jobs hold them).
    {
        let mut g = inner.0.lock().unwrap();
        loop {
            if g.stop_requested.contains(&id) {
                drop(g);
                return finish(JobStatus::Stopped, "Job was intentionally stopped.".into(), None);
            }
            let fits = demand
                .iter()
                .all(|(k, v)| g.used.get(k).copied().unwrap_or(0.0) + v <= total.get(k).copied().unwrap_or(0.0) + 1e-9);
            if fits {
                for (k, v) in &demand {
                    *g.used.entry(k.clone()).or_default() += v;
                }
                break;
            }
            if let Some(j) = g.jobs.get_mut(&id) {
                j.message = Some(format!("Waiting for resources {demand:?}: running jobs hold them."));
            }
            g = inner.1.wait_timeout(g, Duration::from_millis(500)).unwrap().0;
        }
    }
    let release = || {
        let mut g = inner.0.lock().unwrap();
        for (k, v) in &demand {
            *g.used.entry(k.clone()).or_default() -= v;
        }
        drop(g);
        inner.1.notify_all();
    };
    let out = match std::fs::OpenOptions::new().create(true).append(true).open(&log) {
        Ok(f) => f,
        Err(e) => {
            release();
            return finish(JobStatus::Failed, format!("cannot open the job log {}: {e}", log.display()), None);
        }
    };
    let err = out.try_clone().expect("dup of the log file");
    let head_url = super::HeadInfo::read(&session).map(|h| h.dashboard_url).unwrap_or_default();
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(&entrypoint)
        .current_dir(&cwd)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .env("FLARE_ADDRESS", &head_url)
        .env("FLARE_TOKEN", super::read_token(&session).unwrap_or_default())
        .env("FLARE_JOB_ID", &id)
        .env("RAY_JOB_ID", &id)
        .process_group(0);
    if let Some(c) = demand.get("CPU") {
        cmd.env("FLARE_NUM_CPUS", c.to_string());
    }
    for (k, v) in &env_vars {
        cmd.env(k, v);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            release();
            return finish(JobStatus::Failed, format!("Failed to start the entrypoint: {e}"), None);
        }
    };
    let pgid = child.id() as i32;
    let stop_now = {
        let mut g = inner.0.lock().unwrap();
        if let Some(j) = g.jobs.get_mut(&id) {
            j.status = JobStatus::Running;
            j.pgid = Some(pgid);
            j.message = Some("Job is currently running.".into());
            Jobs::save(&db, j);
        }
        g.stop_requested.contains(&id)
    };
    if stop_now {
        // SAFETY: the job's own process group.
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
    }
    let status = child.wait();
    release();
    let stopped = inner.0.lock().unwrap().stop_requested.contains(&id);
    match status {
        _ if stopped => finish(JobStatus::Stopped, "Job was intentionally stopped.".into(), None),
        Ok(s) if s.success() => finish(JobStatus::Succeeded, "Job finished successfully.".into(), Some(0)),
        Ok(s) => {
            use std::os::unix::process::ExitStatusExt;
            let code = s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0));
            let tail = log_tail(&log, 20_000);
            finish(
                JobStatus::Failed,
                format!("Job entrypoint command failed with exit code {code}, last available logs (truncated to 20,000 chars):\n{tail}"),
                Some(code),
            )
        }
        Err(e) => finish(JobStatus::Failed, format!("waiting for the entrypoint failed: {e}"), None),
    }
}
