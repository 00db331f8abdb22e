//! The head and its Ray-compatible Jobs API, end to end: a real `flare start --head` process
//! on 127.0.0.1, real jobs, real HTTP, and (where it is installed) Ray's own `ray job` CLI.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use flare::head::client::HeadClient;
use flare::head::HeadInfo;
use serde_json::json;

fn flare() -> Command {
    Command::new(env!("CARGO_BIN_EXE_flare"))
}

/// A head in its own temp dir, stopped (and killed if need be) on drop.
struct Head {
    temp: PathBuf,
    pid: u32,
    url: String,
    token: String,
}

impl Head {
    fn start(temp: PathBuf) -> Head {
        Head::start_on(temp, 0)
    }
    /// A head whose gRPC port is `port` (0: any); nodes are declared dead after 1.5 s.
    fn start_on(temp: PathBuf, port: u16) -> Head {
        let out = flare()
            .args(["start", "--head", "--dashboard-port", "0", "--port", &port.to_string(), "--num-cpus", "4", "--temp-dir"])
            .arg(&temp)
            .env("FLARE_NODE_DEAD_AFTER_MS", "1500")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "flare start: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let info = HeadInfo::read(&temp.join("session_latest")).unwrap();
        let token = flare::head::read_token(&temp.join("session_latest")).unwrap();
        Head { temp, pid: info.pid, url: info.dashboard_url, token }
    }
    fn fresh(name: &str) -> Head {
        let temp = std::env::temp_dir().join(format!("flare-head-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&temp);
        Head::start(temp)
    }
    fn client(&self) -> HeadClient {
        HeadClient::new(&self.url, Some(self.token.clone())).unwrap()
    }
    fn flare(&self) -> Command {
        let mut c = flare();
        c.env_remove("FLARE_ADDRESS").env_remove("FLARE_TOKEN").env_remove("RAY_AUTH_TOKEN");
        c
    }
    fn stop(&mut self) {
        let out = self.flare().arg("stop").arg("--temp-dir").arg(&self.temp).output().unwrap();
        assert!(out.status.success());
        self.pid = 0;
    }
}

impl Drop for Head {
    fn drop(&mut self) {
        if self.pid != 0 {
            // SAFETY: the head this test started.
            unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
        }
    }
}

fn wait_status(c: &HeadClient, id: &str, want: &[&str]) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let j = c.get(&format!("/api/jobs/{id}")).unwrap().ok_json().unwrap();
        if want.contains(&j["status"].as_str().unwrap()) {
            return j;
        }
        assert!(Instant::now() < deadline, "job {id} never reached {want:?}: {j}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Live (not zombie) processes of a process group, from /proc.
fn group_members(pgid: i64) -> Vec<i64> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i64>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // Fields after the command (which is in parentheses): state, ppid, pgrp, ...
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f[2].parse::<i64>() == Ok(pgid) && f[0] != "Z" {
            out.push(pid);
        }
    }
    out
}

#[test]
fn jobs_api_runs_jobs_needs_the_token_and_survives_a_restart() {
    let mut head = Head::fresh("api");
    let c = head.client();

    // Without the token nothing runs: 401, and no job appears.
    let anon = HeadClient::new(&head.url, None).unwrap();
    let r = anon.post_json("/api/jobs/", &json!({"entrypoint": "touch /tmp/flare-should-not-exist"})).unwrap();
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(r.text().contains("Authorization: Bearer"), "{}", r.text());
    assert_eq!(anon.get("/api/version").unwrap().status, 401);
    let wrong = HeadClient::new(&head.url, Some("x".repeat(64))).unwrap();
    assert_eq!(wrong.get("/api/jobs/").unwrap().status, 403);
    assert_eq!(c.get("/api/jobs/").unwrap().ok_json().unwrap(), json!([]));
    let v = c.get("/api/version").unwrap().ok_json().unwrap();
    assert_eq!(v["ray_version"], "2.60.0");

    // A job with a working dir package and env vars, as Ray's client sends it.
    let wd = head.temp.join("wd");
    std::fs::create_dir_all(wd.join("sub")).unwrap();
    std::fs::write(wd.join("run.sh"), "echo \"hello $WHO\"; cat sub/data.txt; pwd\n").unwrap();
    std::fs::write(wd.join("sub/data.txt"), "payload\n").unwrap();
    let (name, zip) = flare::head::package::zip_dir(&wd, 1 << 20).unwrap();
    let pkg = format!("/api/packages/gcs/{name}");
    assert_eq!(c.get(&pkg).unwrap().status, 404);
    assert_eq!(c.request("PUT", &pkg, Some(("application/zip", &zip))).unwrap().status, 200);
    assert_eq!(c.get(&pkg).unwrap().status, 200);
    let r = c
        .post_json(
            "/api/jobs/",
            &json!({
                "entrypoint": "sh run.sh",
                "submission_id": "job-one",
                "runtime_env": {"working_dir": format!("gcs://{name}"), "env_vars": {"WHO": "flare"}},
                "metadata": {"owner": "test"},
                "entrypoint_num_cpus": 1,
            }),
        )
        .unwrap()
        .ok_json()
        .unwrap();
    assert_eq!(r["submission_id"], "job-one");
    let j = wait_status(&c, "job-one", &["SUCCEEDED", "FAILED"]);
    assert_eq!(j["status"], "SUCCEEDED", "{j}");
    assert_eq!(j["driver_exit_code"], 0);
    assert_eq!(j["metadata"]["owner"], "test");
    assert_eq!(j["type"], "SUBMISSION");
    assert!(j["start_time"].as_u64().unwrap() > 1_600_000_000_000, "times are in milliseconds: {j}");
    assert!(j["end_time"].as_u64().unwrap() >= j["start_time"].as_u64().unwrap());
    let logs = c.get("/api/jobs/job-one/logs").unwrap().ok_json().unwrap()["logs"].as_str().unwrap().to_string();
    assert!(logs.contains("hello flare") && logs.contains("payload") && logs.contains("working_dir"), "{logs}");

    // The same submission id again is refused.
    let again = c.post_json("/api/jobs/", &json!({"entrypoint": "true", "submission_id": "job-one"})).unwrap();
    assert_eq!(again.status, 400);
    assert!(again.text().contains("already exists"), "{}", again.text());

    // A failing job reports its exit code and the end of its log.
    c.post_json("/api/jobs/", &json!({"entrypoint": "echo boom >&2; exit 7", "submission_id": "job-fail"}))
        .unwrap()
        .ok_json()
        .unwrap();
    let j = wait_status(&c, "job-fail", &["FAILED"]);
    assert_eq!(j["driver_exit_code"], 7);
    assert!(j["message"].as_str().unwrap().contains("exit code 7") && j["message"].as_str().unwrap().contains("boom"), "{j}");

    // Stop kills the job's whole process group.
    c.post_json("/api/jobs/", &json!({"entrypoint": "sleep 60 & sleep 60; wait", "submission_id": "job-sleep"}))
        .unwrap()
        .ok_json()
        .unwrap();
    let j = wait_status(&c, "job-sleep", &["RUNNING"]);
    let pgid = j["pgid"].as_i64().unwrap();
    let del = c.request("DELETE", "/api/jobs/job-sleep", None).unwrap();
    assert_eq!(del.status, 400, "a running job cannot be deleted: {}", del.text());
    let t = Instant::now();
    assert_eq!(c.request("POST", "/api/jobs/job-sleep/stop", None).unwrap().ok_json().unwrap()["stopped"], true);
    let j = wait_status(&c, "job-sleep", &["STOPPED"]);
    assert!(t.elapsed() < Duration::from_secs(5), "stop took {:?}", t.elapsed());
    assert!(j["end_time"].is_u64());
    let deadline = Instant::now() + Duration::from_secs(5);
    while !group_members(pgid).is_empty() {
        assert!(Instant::now() < deadline, "the job's processes outlived the stop: {:?}", group_members(pgid));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(c.request("POST", "/api/jobs/job-sleep/stop", None).unwrap().ok_json().unwrap()["stopped"], false);

    // Bad input gets 4xx with a message.
    let bad = c.request("POST", "/api/jobs/", Some(("application/json", b"{not json"))).unwrap();
    assert_eq!(bad.status, 400);
    assert!(bad.text().contains("Failed to parse request"), "{}", bad.text());
    let r = c.post_json("/api/jobs/", &json!({"entrypoint": "true", "entrypoint_num_cpus": 64})).unwrap();
    assert_eq!(r.status, 400);
    assert!(r.text().contains("64 CPU"), "{}", r.text());
    assert_eq!(c.get("/api/jobs/nope").unwrap().status, 404);
    let r =
        c.post_json("/api/jobs/", &json!({"entrypoint": "true", "runtime_env": {"working_dir": "/home/me/project"}})).unwrap();
    assert_eq!(r.status, 400);
    assert!(r.text().contains("not a package URI"), "{}", r.text());

    // An oversized package is refused with 413 before its body is read.
    let authority = head.url.trim_start_matches("http://").to_string();
    let mut s = std::net::TcpStream::connect(&authority).unwrap();
    let req = format!(
        "PUT /api/packages/gcs/_ray_pkg_big.zip HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        head.token,
        600u64 << 20
    );
    s.write_all(req.as_bytes()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.contains("512 MiB"), "{reply}");

    // Delete a finished job.
    assert_eq!(c.request("DELETE", "/api/jobs/job-fail", None).unwrap().ok_json().unwrap()["deleted"], true);
    assert_eq!(c.get("/api/jobs/job-fail").unwrap().status, 404);

    // KV and metrics.
    assert_eq!(
        c.request("PUT", "/api/kv/coll/g/addr/0", Some(("application/octet-stream", b"127.0.0.1:1"))).unwrap().status,
        200
    );
    let m = c.get("/metrics").unwrap();
    assert!(m.text().contains("flare_jobs{status=\"SUCCEEDED\"} 1"), "{}", m.text());

    // Through `flare job`.
    let out =
        head.flare().args(["job", "submit", "--temp-dir"]).arg(&head.temp).args(["--", "echo", "via-cli"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("via-cli") && text.contains("succeeded"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = head.flare().args(["job", "list", "--temp-dir"]).arg(&head.temp).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("job-one") && text.contains("SUCCEEDED"), "{text}");
    let out = head.flare().args(["job", "status", "job-one", "--temp-dir"]).arg(&head.temp).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("SUCCEEDED"));
    let out = head.flare().args(["job", "submit", "--temp-dir"]).arg(&head.temp).args(["--", "exit", "3"]).output().unwrap();
    assert!(!out.status.success(), "a failed job fails `flare job submit`");
    let out = head.flare().args(["status", "--temp-dir"]).arg(&head.temp).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("4/4 CPU") || String::from_utf8_lossy(&out.stdout).contains("/4 CPU"));
    let out = head.flare().args(["token", "--temp-dir"]).arg(&head.temp).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), head.token);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(head.temp.join("session_latest/token")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the token file is readable by its owner only");

    // Restart on the same directory: the jobs and keys are still there, the token is the same.
    let temp = head.temp.clone();
    head.stop();
    let head2 = Head::start(temp);
    assert_eq!(head2.token, head.token);
    let c2 = head2.client();
    let jobs = c2.get("/api/jobs/").unwrap().ok_json().unwrap();
    let ids: Vec<&str> = jobs.as_array().unwrap().iter().map(|j| j["submission_id"].as_str().unwrap()).collect();
    assert!(ids.contains(&"job-one") && ids.contains(&"job-sleep") && !ids.contains(&"job-fail"), "{ids:?}");
    assert_eq!(c2.get("/api/jobs/job-one").unwrap().ok_json().unwrap()["status"], "SUCCEEDED");
    assert_eq!(c2.get("/api/kv/coll/g/addr/0").unwrap().body, b"127.0.0.1:1");
    drop(head2);
    let _ = std::fs::remove_dir_all(&head.temp);
}

/// Ray's own CLI from PyPI (`ray[default]==2.60.0`) against a Flare head. `.ci/run` installs
/// it into ~/.cache/flare/ray-jobs-venv (or FLARE_RAY_JOBS_VENV); under CI its absence fails.
#[test]
fn ray_job_submit_works_against_a_flare_head() {
    let venv = std::env::var_os("FLARE_RAY_JOBS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/flare/ray-jobs-venv"));
    let ray = venv.join("bin/ray");
    if !ray.exists() {
        assert!(std::env::var_os("CI").is_none(), "CI must install ray[default]==2.60.0 into {} (.ci/run does)", venv.display());
        eprintln!("skipping: {} not found (bash .ci/run installs it)", ray.display());
        return;
    }
    let head = Head::fresh("ray");
    let wd = head.temp.join("wd");
    std::fs::create_dir_all(&wd).unwrap();
    std::fs::write(wd.join("job.sh"), "echo \"ray-client-ok $FOO\"\n").unwrap();
    let ray_cmd = |args: &[&str], token: Option<&str>| {
        let mut c = Command::new(&ray);
        c.args(["job", args[0], "--address", &head.url]).args(&args[1..]).env("RAY_AUTH_MODE", "token").env_remove("RAY_ADDRESS");
        match token {
            Some(t) => c.env("RAY_AUTH_TOKEN", t),
            None => c.env_remove("RAY_AUTH_TOKEN"),
        };
        c.output().unwrap()
    };
    let wd_s = wd.to_string_lossy().to_string();
    let out = ray_cmd(
        &[
            "submit",
            "--submission-id",
            "from-ray",
            "--working-dir",
            &wd_s,
            "--runtime-env-json",
            r#"{"env_vars": {"FOO": "bar"}}"#,
            "--",
            "sh",
            "job.sh",
        ],
        Some(&head.token),
    );
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "ray job submit failed:\n{text}");
    assert!(text.contains("ray-client-ok bar"), "the tailed logs: {text}");
    assert!(text.contains("succeeded"), "{text}");
    let out = ray_cmd(&["status", "from-ray"], Some(&head.token));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("Job 'from-ray' succeeded"), "{text}");
    let out = ray_cmd(&["logs", "from-ray"], Some(&head.token));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ray-client-ok bar"));
    let out = ray_cmd(&["list"], Some(&head.token));
    assert!(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)).contains("from-ray"));
    // A long job stopped through Ray's CLI.
    let out = ray_cmd(&["submit", "--no-wait", "--submission-id", "ray-sleep", "--", "sleep", "60"], Some(&head.token));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_status(&head.client(), "ray-sleep", &["RUNNING"]);
    let out = ray_cmd(&["stop", "ray-sleep"], Some(&head.token));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_status(&head.client(), "ray-sleep", &["STOPPED"]);
    // Without the token Ray's client is refused and nothing runs.
    let out = ray_cmd(&["submit", "--no-wait", "--", "touch", "/tmp/flare-ray-no-token"], None);
    assert!(!out.status.success());
    let jobs = head.client().get("/api/jobs/").unwrap().ok_json().unwrap();
    assert_eq!(jobs.as_array().unwrap().len(), 2, "{jobs}");
    let _ = std::fs::remove_dir_all(&head.temp);
    drop(head);
}

/// Collective groups can meet through the head's KV store (with the token) instead of a
/// TCP store of their own.
#[test]
fn collectives_rendezvous_through_the_head_kv() {
    use flare::collectives::{init, CommunicatorExt, GroupOptions, ReduceOp, Store};
    let head = Head::fresh("kv");
    let store: std::sync::Arc<dyn Store> = std::sync::Arc::new(flare::head::HeadStore::new(&head.url, &head.token).unwrap());
    assert_eq!(store.add("counter", 2).unwrap(), 2);
    assert_eq!(store.add("counter", 5).unwrap(), 7);
    store.set("a/x y", b"1").unwrap();
    assert_eq!(store.try_get("a/x y").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(store.delete_prefix("a/").unwrap(), 1);
    assert_eq!(store.try_get("a/x y").unwrap(), None);
    let n = 3;
    let sums: Vec<f64> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..n)
            .map(|r| {
                let store = store.clone();
                s.spawn(move || {
                    let mut c = init(GroupOptions::new("via-head", r, n), store).unwrap();
                    let mut v = vec![r as f64 + 1.0; 1000];
                    c.all_reduce_slice(&mut v, ReduceOp::Sum).unwrap();
                    v[999]
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(sums, vec![6.0; 3]);
    let bad = flare::head::HeadStore::new(&head.url, "wrong").unwrap();
    assert!(bad.set("k", b"v").unwrap_err().to_string().contains("403"));
    let _ = std::fs::remove_dir_all(&head.temp);
}

fn node_alive(c: &HeadClient, id: &str) -> Option<bool> {
    let v = c.get("/api/cluster_status").unwrap().ok_json().unwrap();
    v["nodes"].as_array().unwrap().iter().find(|n| n["node_id"] == id).map(|n| n["alive"].as_bool().unwrap())
}

fn wait_node(c: &HeadClient, id: &str, alive: bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while node_alive(c, id) != Some(alive) {
        assert!(Instant::now() < deadline, "node {id} never became alive={alive}: {:?}", node_alive(c, id));
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Node agents are real processes that register over gRPC with the token, heartbeat, are
/// declared dead when killed, and reconnect to a restarted head.
#[test]
fn node_agents_join_die_and_reconnect_over_grpc() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let temp = std::env::temp_dir().join(format!("flare-head-nodes-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&temp);
    let mut head = Head::start_on(temp.clone(), port);
    let grpc = HeadInfo::read(&temp.join("session_latest")).unwrap().grpc_address;
    assert_eq!(grpc, format!("127.0.0.1:{port}"));
    let node_dir = |n: &str| temp.join(format!("node-{n}"));
    let start_node = |n: &str, token: &str| {
        flare()
            .args(["start", "--address", &grpc, "--node-id", n, "--num-cpus", "3", "--num-gpus", "1", "--temp-dir"])
            .arg(node_dir(n))
            .env("FLARE_TOKEN", token)
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap()
    };
    let node_pid = |n: &str| -> i32 {
        let t = std::fs::read_to_string(node_dir(n).join("session_latest/node.json")).unwrap();
        serde_json::from_str::<serde_json::Value>(&t).unwrap()["pid"].as_i64().unwrap() as i32
    };
    let out = start_node("n1", &head.token);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = start_node("bad", "not-the-token");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("token does not match"), "{}", String::from_utf8_lossy(&out.stderr));

    let c = head.client();
    wait_node(&c, "n1", true);
    assert_eq!(node_alive(&c, "bad"), None, "a node without the token is not in the table");
    let v = c.get("/api/cluster_status").unwrap().ok_json().unwrap();
    let n1 = v["nodes"].as_array().unwrap().iter().find(|n| n["node_id"] == "n1").unwrap().clone();
    assert_eq!(n1["resources_total"]["CPU"], 3.0);
    assert_eq!(n1["resources_total"]["GPU"], 1.0);
    let out = head.flare().args(["status", "--temp-dir"]).arg(&temp).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("Active: 2"), "{}", String::from_utf8_lossy(&out.stdout));

    // SIGKILL of the agent: declared dead after the missed heartbeats.
    let t = Instant::now();
    // SAFETY: the agent this test started.
    unsafe { libc::kill(node_pid("n1"), libc::SIGKILL) };
    wait_node(&c, "n1", false);
    assert!(t.elapsed() < Duration::from_secs(5), "declared dead after {:?}", t.elapsed());
    let m = c.get("/metrics").unwrap().text();
    assert!(m.contains("flare_node_alive{node=\"n1\"} 0"), "{m}");

    // A head restarted on the same port and directory: the agent reconnects on its own.
    let out = start_node("n2", &head.token);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_node(&c, "n2", true);
    head.stop();
    let head2 = Head::start_on(temp.clone(), port);
    let c2 = head2.client();
    wait_node(&c2, "n2", true);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(node_alive(&c2, "n2"), Some(true), "n2 heartbeats to the new head");
    assert_eq!(node_alive(&c2, "n1"), Some(false), "n1 is remembered, and dead");
    let out = flare().arg("stop").arg("--temp-dir").arg(node_dir("n2")).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("Stopped node agent 'n2'"), "{}", String::from_utf8_lossy(&out.stdout));
    wait_node(&c2, "n2", false);
    drop(head2);
    let _ = std::fs::remove_dir_all(&temp);
}
