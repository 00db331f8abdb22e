//! [`TestCluster`]: a head and node agents as real processes on 127.0.0.1 with ephemeral ports,
//! for tests and benchmarks (Ray's `ray.cluster_utils.Cluster`). Everything it started is
//! killed, and its directories removed, when it drops.

use crate::head::client::HeadClient;
use crate::head::HeadInfo;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// One node agent of a [`TestCluster`].
#[derive(Debug)]
pub struct TestNode {
    pub name: String,
    pub pid: u32,
    pub dir: PathBuf,
}

#[derive(Debug)]
pub struct TestCluster {
    flare: PathBuf,
    pub dir: PathBuf,
    pub head_pid: u32,
    /// `http://127.0.0.1:PORT`: what drivers join (`Config::address`).
    pub address: String,
    pub grpc_address: String,
    pub token: String,
    pub nodes: Vec<TestNode>,
    head_cpus: f64,
    /// Agents killed by `kill_node`: their store directories are removed at drop.
    killed: Vec<u32>,
}

fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{what}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{what} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)));
    }
    Ok(())
}

impl TestCluster {
    /// Starts a head offering `head_cpus` CPUs, with the `flare` binary at `flare`. Nodes are
    /// declared dead after 1.5 s without heartbeats.
    pub fn start(flare: impl AsRef<Path>, head_cpus: f64) -> Result<TestCluster, String> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("flare-testcluster-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let flare = flare.as_ref().to_path_buf();
        let mut cmd = Command::new(&flare);
        cmd.args([
            "start",
            "--head",
            "--dashboard-port",
            "0",
            "--port",
            "0",
            "--num-cpus",
            &head_cpus.to_string(),
            "--num-gpus",
            "0",
        ])
        .arg("--temp-dir")
        .arg(&dir)
        .env("FLARE_NODE_DEAD_AFTER_MS", "1500")
        .env_remove("FLARE_ADDRESS");
        run(&mut cmd, "starting the head")?;
        let session = dir.join("session_latest");
        let info = HeadInfo::read(&session)?;
        let token = crate::head::read_token(&session)?;
        Ok(TestCluster {
            flare,
            dir,
            head_pid: info.pid,
            address: info.dashboard_url,
            grpc_address: info.grpc_address,
            token,
            nodes: Vec::new(),
            head_cpus,
            killed: Vec::new(),
        })
    }

    pub fn client(&self) -> HeadClient {
        HeadClient::new(&self.address, Some(self.token.clone())).expect("the head's own address")
    }

    /// Starts a node agent `name` with `num_cpus` CPUs, `num_gpus` declared GPUs and custom
    /// resources, and waits until the head lists it alive.
    pub fn add_node(&mut self, name: &str, num_cpus: f64, num_gpus: f64, resources: &[(&str, f64)]) -> Result<(), String> {
        let dir = self.dir.join(format!("node-{name}"));
        let mut cmd = Command::new(&self.flare);
        cmd.args(["start", "--address", &self.grpc_address, "--node-id", name])
            .args(["--num-cpus", &num_cpus.to_string(), "--num-gpus", &num_gpus.to_string()])
            .arg("--temp-dir")
            .arg(&dir)
            .env("FLARE_TOKEN", &self.token)
            .env_remove("FLARE_ADDRESS");
        if !resources.is_empty() {
            let m: serde_json::Map<String, serde_json::Value> =
                resources.iter().map(|(k, v)| (k.to_string(), (*v).into())).collect();
            cmd.args(["--resources", &serde_json::Value::Object(m).to_string()]);
        }
        run(&mut cmd, &format!("starting node {name}"))?;
        let text = std::fs::read_to_string(dir.join("session_latest/node.json")).map_err(|e| e.to_string())?;
        let pid =
            serde_json::from_str::<serde_json::Value>(&text).map_err(|e| e.to_string())?["pid"].as_u64().unwrap_or(0) as u32;
        self.nodes.push(TestNode { name: name.to_string(), pid, dir });
        self.wait_alive(name, true, Duration::from_secs(15))
    }

    /// Waits until the head's table lists `name` with `alive`.
    pub fn wait_alive(&self, name: &str, alive: bool, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.client().get("/api/cluster_status")?.ok_json()?;
            let now =
                v["nodes"].as_array().and_then(|a| a.iter().find(|n| n["node_id"] == name)).and_then(|n| n["alive"].as_bool());
            if now == Some(alive) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("node {name} did not become alive={alive} within {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the head (SIGTERM) and starts it again on the same directory and ports, as
    /// after a head crash; node agents reconnect to it on their own.
    pub fn restart_head(&mut self) -> Result<(), String> {
        // Safety: plain syscall on the head this cluster started.
        unsafe { libc::kill(self.head_pid as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while unsafe { libc::kill(self.head_pid as libc::pid_t, 0) } == 0 {
            if Instant::now() > deadline {
                // Safety: as above.
                unsafe { libc::kill(self.head_pid as libc::pid_t, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let port = |a: &str| a.rsplit(':').next().unwrap_or("0").to_string();
        let mut cmd = Command::new(&self.flare);
        cmd.args(["start", "--head", "--dashboard-port", &port(&self.address), "--port", &port(&self.grpc_address)])
            .args(["--num-cpus", &self.head_cpus.to_string(), "--num-gpus", "0"])
            .arg("--temp-dir")
            .arg(&self.dir)
            .env("FLARE_NODE_DEAD_AFTER_MS", "1500")
            .env_remove("FLARE_ADDRESS");
        run(&mut cmd, "restarting the head")?;
        self.head_pid = HeadInfo::read(&self.dir.join("session_latest"))?.pid;
        Ok(())
    }

    /// SIGKILLs node `name`'s agent (its workers die with it).
    pub fn kill_node(&mut self, name: &str) -> Result<(), String> {
        let i = self.nodes.iter().position(|n| n.name == name).ok_or_else(|| format!("no node {name}"))?;
        let n = self.nodes.remove(i);
        // Safety: plain syscall on a process this cluster started.
        unsafe { libc::kill(n.pid as libc::pid_t, libc::SIGKILL) };
        self.killed.push(n.pid);
        Ok(())
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for n in &self.nodes {
            // Safety: plain syscalls on processes this cluster started.
            unsafe { libc::kill(n.pid as libc::pid_t, libc::SIGTERM) };
        }
        // Safety: as above.
        unsafe { libc::kill(self.head_pid as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        let alive = |pid: u32| unsafe { libc::kill(pid as libc::pid_t, 0) == 0 };
        let pids: Vec<u32> = self.nodes.iter().map(|n| n.pid).chain([self.head_pid]).collect();
        while Instant::now() < deadline && pids.iter().any(|p| alive(*p)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        for p in pids {
            if alive(p) {
                // Safety: as above.
                unsafe { libc::kill(p as libc::pid_t, libc::SIGKILL) };
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        // A SIGKILLed agent could not remove its store directory (`flare_node_<pid>_<ms>`).
        if let Ok(entries) = std::fs::read_dir("/dev/shm") {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if self.killed.iter().any(|pid| name.starts_with(&format!("flare_node_{pid}_"))) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
}
