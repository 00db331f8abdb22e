//! Multi-node scheduling end to end: a real head and node agents (`flare start`) on 127.0.0.1,
//! this test binary as the driver that joins them (its executable shipped to each agent by
//! hash), tasks and actors in worker processes the agents start, objects pulled between nodes,
//! and node agents SIGKILLed under running work.

use flare::cluster_utils::TestCluster;
use flare::prelude::*;
use flare::{Buffer, SchedulingStrategy};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One driver per process: the tests take turns, each with its own cluster.
static TURN: Mutex<()> = Mutex::new(());

fn flare_bin() -> &'static str {
    env!("CARGO_BIN_EXE_flare")
}

/// This process's runtime, shut down when the test ends, passed or not (a failed test must not
/// leave the next one a runtime joined to a cluster that is gone).
struct Joined;

impl Drop for Joined {
    fn drop(&mut self) {
        flare::shutdown();
    }
}

#[must_use = "the runtime is shut down when this is dropped"]
fn join(c: &TestCluster) -> Joined {
    flare::init_with(Config::new().address(&c.address).token(&c.token).log_to_driver(false)).expect("joining the test cluster");
    Joined
}

/// The node this worker runs on, as its agent named it.
#[flare::remote]
fn where_am_i(sleep_ms: u64) -> String {
    std::thread::sleep(Duration::from_millis(sleep_ms));
    std::env::var("FLARE_NODE_NAME").unwrap_or_else(|_| "driver".into())
}

#[flare::remote]
fn checksum(data: Buffer) -> (u64, String) {
    let sum = data.iter().fold(0u64, |a, b| a.wrapping_mul(31).wrapping_add(*b as u64));
    (sum, std::env::var("FLARE_NODE_NAME").unwrap_or_default())
}

#[flare::remote]
fn make_bytes(n: u64, seed: u8) -> Buffer {
    Buffer::from((0..n).map(|i| (i as u8).wrapping_mul(seed)).collect::<Vec<u8>>())
}

fn local_checksum(data: &[u8]) -> u64 {
    data.iter().fold(0u64, |a, b| a.wrapping_mul(31).wrapping_add(*b as u64))
}

/// First attempt: records its node in `marker` and hangs; the retry answers with its node.
#[flare::remote]
fn hang_once(marker: String) -> String {
    let me = std::env::var("FLARE_NODE_NAME").unwrap_or_default();
    if std::path::Path::new(&marker).exists() {
        return me;
    }
    std::fs::write(&marker, &me).unwrap();
    std::thread::sleep(Duration::from_secs(60));
    String::new()
}

struct Where;

#[flare::actor]
impl Where {
    fn new() -> Self {
        Where
    }
    fn node(&self) -> String {
        std::env::var("FLARE_NODE_NAME").unwrap_or_default()
    }
}

/// Waits (at most 10 s) until this driver no longer lists node `name` (it saw it die).
fn wait_until_gone(name: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while flare::nodes().unwrap().iter().any(|n| n.name == name) {
        assert!(Instant::now() < deadline, "the driver never saw {name} die");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `flare list KIND --json` against the test cluster, parsed.
fn flare_list(c: &TestCluster, kind: &str) -> serde_json::Value {
    let out = std::process::Command::new(flare_bin())
        .args(["list", kind, "--json", "--address", &c.address])
        .env("FLARE_TOKEN", &c.token)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn node_id(name: &str) -> flare::ids::NodeId {
    flare::nodes().unwrap().into_iter().find(|n| n.name == name).unwrap_or_else(|| panic!("no node {name}")).node_id
}

#[test]
fn work_spills_to_nodes_spreads_and_moves_objects() {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = TestCluster::start(flare_bin(), 1.0).unwrap();
    c.add_node("n1", 2.0, 0.0, &[]).unwrap();
    c.add_node("n2", 2.0, 0.0, &[("special", 1.0)]).unwrap();
    let _joined = join(&c);
    let nodes = flare::nodes().unwrap();
    let mut names: Vec<_> = nodes.iter().map(|n| n.name.clone()).collect();
    names.sort();
    assert_eq!(names, ["head", "local", "n1", "n2"], "{nodes:?}");
    let total = flare::cluster_resources().unwrap().total;
    assert_eq!(total.get("CPU"), 5.0, "1 + 2 + 2 CPUs: {total}");

    // The driver's own node offers no CPUs: a 1-CPU task spills to a node agent's worker.
    let at = where_am_i::remote(0).get_timeout(Duration::from_secs(60)).unwrap();
    assert!(["head", "n1", "n2"].contains(&at.as_str()), "ran on {at}");
    // A custom resource only n2 has.
    let at = where_am_i::options().resources("special", 1.0).remote(0).get_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(at, "n2");
    // Hard node affinity.
    let n1 = node_id("n1");
    let at = where_am_i::options()
        .scheduling_strategy(SchedulingStrategy::NodeAffinity { node: n1, soft: false })
        .remote(0)
        .get_timeout(Duration::from_secs(30))
        .unwrap();
    assert_eq!(at, "n1");
    // SPREAD: three concurrent tasks land on three nodes.
    let refs: Vec<_> =
        (0..3).map(|_| where_am_i::options().scheduling_strategy(SchedulingStrategy::Spread).remote(300)).collect();
    let mut spread: Vec<String> = refs.into_iter().map(|r| r.get_timeout(Duration::from_secs(30)).unwrap()).collect();
    spread.sort();
    assert_eq!(spread, ["head", "n1", "n2"]);
    // A STRICT_SPREAD placement group across the three nodes: each bundle on its own node.
    let pg = flare::placement_group(&[Bundle::cpus(1.0), Bundle::cpus(1.0), Bundle::cpus(1.0)], PlacementStrategy::StrictSpread)
        .unwrap();
    assert!(pg.wait(Duration::from_secs(10)).unwrap());
    let mut in_pg: Vec<String> = (0..3)
        .map(|i| where_am_i::options().scheduling_strategy(pg.bundle(Some(i))).remote(0))
        .collect::<Vec<_>>()
        .into_iter()
        .map(|r| r.get_timeout(Duration::from_secs(30)).unwrap())
        .collect();
    in_pg.sort();
    assert_eq!(in_pg, ["head", "n1", "n2"]);
    // Four 1-CPU bundles cannot be strictly spread over three nodes.
    let e = flare::placement_group(
        &[Bundle::cpus(1.0), Bundle::cpus(1.0), Bundle::cpus(1.0), Bundle::cpus(1.0)],
        PlacementStrategy::StrictSpread,
    )
    .unwrap()
    .wait(Duration::from_secs(10))
    .unwrap_err();
    assert!(e.to_string().contains("node"), "{e}");
    flare::remove_placement_group(&pg).unwrap();

    // Objects both ways: a 48 MiB argument the driver put, pulled by a worker on n2, and a
    // 40 MiB result made on n1, pulled into the driver's store.
    let data: Vec<u8> = (0..48u64 << 20).map(|i| (i % 251) as u8).collect();
    let want = local_checksum(&data);
    let obj = flare::put(&Buffer::from(data)).unwrap();
    let (sum, at) = checksum::options().resources("special", 1.0).remote(&obj).get_timeout(Duration::from_secs(60)).unwrap();
    assert_eq!((sum, at.as_str()), (want, "n2"));
    let store_before = flare::cluster_resources().unwrap().store_used;
    let made =
        make_bytes::options().scheduling_strategy(SchedulingStrategy::NodeAffinity { node: n1, soft: false }).remote(40 << 20, 7);
    // ...as the argument of a task on n2: pulled from n1's agent, not through the driver,
    // whose store it never enters.
    let (sum, at) = checksum::options().resources("special", 1.0).remote(&made).get_timeout(Duration::from_secs(60)).unwrap();
    assert_eq!(at, "n2");
    assert_eq!(flare::cluster_resources().unwrap().store_used, store_before, "a result made on n1 stays on n1");
    // The driver reads it by pulling a copy.
    let bytes = made.get_timeout(Duration::from_secs(60)).unwrap();
    assert_eq!(bytes.len(), 40 << 20);
    assert!(bytes.iter().enumerate().all(|(i, b)| *b == (i as u8).wrapping_mul(7)));
    assert_eq!(sum, local_checksum(&bytes));
    // Once freed, its file on n1 is deleted through n1's agent.
    let n1_pid = c.nodes.iter().find(|n| n.name == "n1").unwrap().pid;
    let big_files_on_n1 = || -> usize {
        let mut n = 0;
        for store in std::fs::read_dir("/dev/shm").unwrap().flatten() {
            if !store.file_name().to_string_lossy().starts_with(&format!("flare_node_{n1_pid}_")) {
                continue;
            }
            for session in std::fs::read_dir(store.path()).unwrap().flatten() {
                for f in std::fs::read_dir(session.path()).into_iter().flatten().flatten() {
                    n += (f.metadata().map(|m| m.len()).unwrap_or(0) >= 40 << 20) as usize;
                }
            }
        }
        n
    };
    assert_eq!(big_files_on_n1(), 1, "the result's file is on n1");
    drop(bytes);
    drop(made);
    let deadline = Instant::now() + Duration::from_secs(10);
    while big_files_on_n1() > 0 {
        assert!(Instant::now() < deadline, "n1 kept the file of a freed object");
        std::thread::sleep(Duration::from_millis(20));
    }

    // A node agent's port runs nothing for a connection without the cluster's token.
    let n1_addr = flare::nodes().unwrap().into_iter().find(|n| n.name == "n1").unwrap().address;
    let mut s = std::net::TcpStream::connect(&n1_addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let hello = flare::protocol::Hello::Driver {
        token: "not-the-token".into(),
        exe_hash: "0".repeat(64),
        exe_size: 1,
        pid: 1,
        worker_addr: "127.0.0.1:1".into(),
    };
    flare::protocol::write_frame(&mut s, &hello).unwrap();
    match flare::protocol::read_frame::<flare::protocol::FromAgent>(&mut s, 1 << 20).unwrap() {
        flare::protocol::FromAgent::Refused(why) => assert!(why.contains("token"), "{why}"),
        other => panic!("a wrong token got {other:?}"),
    }

    // A node that joins while the driver runs is picked up and used.
    c.add_node("n3", 1.0, 0.0, &[("late", 1.0)]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !flare::nodes().unwrap().iter().any(|n| n.name == "n3") {
        assert!(Instant::now() < deadline, "the driver never connected to n3");
        std::thread::sleep(Duration::from_millis(50));
    }
    let at = where_am_i::options().resources("late", 1.0).remote(0).get_timeout(Duration::from_secs(60)).unwrap();
    assert_eq!(at, "n3");

    // A job's entrypoint that is a Flare program joins the cluster as its driver (the job
    // sets FLARE_ADDRESS and FLARE_TOKEN): here `flare microbenchmark`, whose tasks run on the
    // nodes' workers.
    let hc = c.client();
    let entry = format!("{} microbenchmark --filter 'single client tasks sync' --trial-secs 0.2 --json", flare_bin());
    let j = hc.post_json("/api/jobs/", &serde_json::json!({"entrypoint": entry})).unwrap().ok_json().unwrap();
    let id = j["submission_id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        let v = hc.get(&format!("/api/jobs/{id}")).unwrap().ok_json().unwrap();
        let st = v["status"].as_str().unwrap().to_string();
        if ["SUCCEEDED", "FAILED", "STOPPED"].contains(&st.as_str()) {
            break st;
        }
        assert!(Instant::now() < deadline, "the job never finished: {v}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let logs = hc.get(&format!("/api/jobs/{id}/logs")).unwrap().ok_json().unwrap()["logs"].as_str().unwrap_or("").to_string();
    assert_eq!(status, "SUCCEEDED", "{logs}");
    assert!(logs.contains("single client tasks sync"), "{logs}");

    // The agents run this very executable, shipped by content hash and cached.
    let exe_len = std::fs::metadata("/proc/self/exe").unwrap().len();
    for n in &c.nodes {
        let cached: Vec<_> = std::fs::read_dir(n.dir.join("session_latest/exe")).unwrap().flatten().collect();
        assert!(
            cached.iter().any(|e| e.metadata().unwrap().len() == exe_len && e.file_name().len() == 64),
            "node {} caches this executable under its SHA-256: {cached:?}",
            n.name
        );
    }
    flare::shutdown();
}

#[test]
fn a_killed_node_s_tasks_retry_and_its_actors_restart_elsewhere() {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = TestCluster::start(flare_bin(), 0.0).unwrap();
    c.add_node("a", 2.0, 0.0, &[]).unwrap();
    c.add_node("b", 2.0, 0.0, &[]).unwrap();
    let _joined = join(&c);

    // An actor, then the node it lives on dies: it restarts on the other node.
    let w = Where::remote().num_cpus(1.0).max_restarts(1).spawn().unwrap();
    let first = w.node().get_timeout(Duration::from_secs(60)).unwrap();
    assert!(["a", "b"].contains(&first.as_str()));
    let marker = std::env::temp_dir().join(format!("flare-cluster-hang-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    // A task that hangs on its first attempt; whichever node runs it is killed next.
    let r = hang_once::options().max_retries(2).remote(marker.to_string_lossy().into_owned());
    let deadline = Instant::now() + Duration::from_secs(60);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "the task never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(50));
    let victim = std::fs::read_to_string(&marker).unwrap();
    // An object made on the node about to die (it stays there).
    let on_victim = make_bytes::options()
        .num_cpus(0.0)
        .scheduling_strategy(SchedulingStrategy::NodeAffinity { node: node_id(&victim), soft: true })
        .remote(1 << 20, 3);
    assert_eq!(flare::wait(std::slice::from_ref(&on_victim), 1, Some(Duration::from_secs(60))).unwrap().0.len(), 1);
    let t = Instant::now();
    c.kill_node(&victim).unwrap();
    let survivor = if victim == "a" { "b" } else { "a" };
    let retried = r.get_timeout(Duration::from_secs(60)).unwrap();
    assert_eq!(retried, survivor, "retried on the surviving node");
    eprintln!("task retried on {survivor} {:?} after node {victim} was killed", t.elapsed());
    let after = w.node().get_timeout(Duration::from_secs(60)).unwrap();
    if first == victim {
        assert_eq!(after, survivor, "the actor restarted on the surviving node");
        let a = flare::list(flare::StateQuery::Actors).unwrap().actors;
        assert_eq!(a.iter().find(|x| x.actor_id == w.id()).unwrap().restarts, 1);
    } else {
        assert_eq!(after, first, "an actor on the surviving node is untouched");
    }
    // The dead node is out of the cluster.
    assert!(flare::nodes().unwrap().iter().all(|n| n.name != victim));
    // Its object is rebuilt from lineage (its task runs again elsewhere).
    let bytes = on_victim.get_timeout(Duration::from_secs(60)).unwrap();
    assert_eq!(bytes.len(), 1 << 20);
    assert!(bytes.iter().enumerate().all(|(i, b)| *b == (i as u8).wrapping_mul(3)));
    // `flare list actors` shows the actor, on its current node, from the driver's published state.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let rows = flare_list(&c, "actors");
        let mine = rows.as_array().unwrap().iter().find(|r| r["class"].as_str().is_some_and(|c| c.ends_with("Where"))).cloned();
        if let Some(r) = mine.filter(|r| r["node_name"] == after.as_str()) {
            assert_eq!(r["driver_pid"], std::process::id());
            break;
        }
        assert!(Instant::now() < deadline, "flare list actors never showed the actor on {after}: {rows}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = std::fs::remove_file(&marker);
    flare::shutdown();
}

struct Keeper {
    n: u64,
}

#[flare::actor]
impl Keeper {
    fn new() -> Self {
        Keeper { n: 0 }
    }
    fn add(&mut self, k: u64) -> u64 {
        self.n += k;
        self.n
    }
}

#[test]
fn work_goes_on_while_the_head_restarts() {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = TestCluster::start(flare_bin(), 0.0).unwrap();
    c.add_node("w1", 2.0, 0.0, &[]).unwrap();
    let _joined = join(&c);
    let k = Keeper::remote().num_cpus(1.0).name("keeper").spawn().unwrap();
    assert_eq!(k.add(1).get_timeout(Duration::from_secs(60)).unwrap(), 1);
    // The head shows what the driver holds on each node and what waits for resources: the
    // actor and one task fill w1's 2 CPUs, a second task waits.
    let busy: Vec<_> = (0..2).map(|_| where_am_i::remote(3000)).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = c.client().get("/api/cluster_status").unwrap().ok_json().unwrap();
        let w1 = v["nodes"].as_array().unwrap().iter().find(|n| n["node_id"] == "w1").unwrap().clone();
        let waiting = v["pending_demands"].as_array().unwrap().iter().any(|d| d["resources"]["CPU"] == 1.0 && d["count"] == 1);
        if w1["resources_used_by_drivers"]["CPU"] == 2.0 && waiting {
            break;
        }
        assert!(Instant::now() < deadline, "the head never showed w1 full and one task waiting: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = std::process::Command::new(flare_bin())
        .args(["status", "--address", &c.address])
        .env("FLARE_TOKEN", &c.token)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("2/2 CPU") && text.contains("pending tasks/actors"), "{text}");
    for b in busy {
        assert_eq!(b.get_timeout(Duration::from_secs(30)).unwrap(), "w1");
    }
    c.restart_head().unwrap();
    // The node agent's connection to the driver is direct: work and actor state carry on
    // while the head is away and after it is back.
    assert_eq!(where_am_i::remote(0).get_timeout(Duration::from_secs(30)).unwrap(), "w1");
    c.wait_alive("w1", true, Duration::from_secs(15)).unwrap();
    let again = flare::get_actor::<Keeper>("keeper").unwrap();
    assert_eq!(again.add(2).get_timeout(Duration::from_secs(30)).unwrap(), 3, "the actor kept its state");
    // The restarted head's own node is used again once the driver sees it.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !flare::nodes().unwrap().iter().any(|n| n.name == "head") {
        assert!(Instant::now() < deadline, "the driver never reconnected to the restarted head's node");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(k);
    flare::shutdown();
}

#[test]
fn a_placement_group_bundle_moves_off_a_dead_node() {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = TestCluster::start(flare_bin(), 0.0).unwrap();
    for n in ["p1", "p2", "p3"] {
        c.add_node(n, 1.0, 0.0, &[]).unwrap();
    }
    let _joined = join(&c);
    let pg = flare::placement_group(&[Bundle::cpus(1.0), Bundle::cpus(1.0)], PlacementStrategy::StrictSpread).unwrap();
    assert!(pg.wait(Duration::from_secs(10)).unwrap());
    let w = Where::remote().num_cpus(1.0).max_restarts(1).scheduling_strategy(pg.bundle(Some(0))).spawn().unwrap();
    let first = w.node().get_timeout(Duration::from_secs(60)).unwrap();
    let other =
        where_am_i::options().scheduling_strategy(pg.bundle(Some(1))).remote(0).get_timeout(Duration::from_secs(60)).unwrap();
    assert_ne!(first, other, "STRICT_SPREAD");
    c.kill_node(&first).unwrap();
    wait_until_gone(&first);
    // Bundle 0 moves to the one node that is neither dead nor bundle 1's; the actor restarts there.
    let third = ["p1", "p2", "p3"].into_iter().find(|n| *n != first && *n != other).unwrap();
    assert_eq!(w.node().get_timeout(Duration::from_secs(60)).unwrap(), third);
    flare::remove_placement_group(&pg).unwrap();
    flare::shutdown();
}

struct GpuHolder;

/// Kills a child process when the test that started it ends, passed or not.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts this test binary's `test` as another driver (a child process; `spec` in the
/// environment variable `var`) and waits until it writes `spec["ready"]`.
fn other_driver(test: &str, var: &str, spec: &serde_json::Value) -> KillOnDrop {
    let ready = std::path::PathBuf::from(spec["ready"].as_str().unwrap());
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture"])
        .env(var, spec.to_string())
        .env_remove("FLARE_ADDRESS")
        .spawn()
        .unwrap();
    let child = KillOnDrop(child);
    let deadline = Instant::now() + Duration::from_secs(90);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "the other driver ({test}) never got ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(50));
    child
}

/// In another driver: waits until the test writes `spec["stop"]` (at most 2 minutes, so it
/// never outlives a test that failed first).
fn wait_for_stop(spec: &serde_json::Value) {
    let stop = std::path::PathBuf::from(spec["stop"].as_str().unwrap());
    let deadline = Instant::now() + Duration::from_secs(120);
    while !stop.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[flare::actor]
impl GpuHolder {
    fn new() -> Self {
        GpuHolder
    }
    fn devices(&self) -> String {
        format!(
            "{}@{}",
            std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_default(),
            std::env::var("FLARE_NODE_NAME").unwrap_or_default()
        )
    }
}

/// The other driver of `two_drivers_share_a_node_without_oversubscribing_it`, run as a child
/// process of this test binary (it does nothing without `FLARE_TEST_OTHER_DRIVER`): joins the
/// cluster, holds a GPU and a CPU with an actor, writes where to its ready file, and keeps them
/// until its stop file appears (or it is killed).
#[test]
fn other_driver_holding_a_gpu() {
    let Ok(spec) = std::env::var("FLARE_TEST_OTHER_DRIVER") else { return };
    let v: serde_json::Value = serde_json::from_str(&spec).unwrap();
    let (address, token) = (v["address"].as_str().unwrap(), v["token"].as_str().unwrap());
    flare::init_with(Config::new().address(address).token(token).log_to_driver(false)).unwrap();
    let h = GpuHolder::remote().num_cpus(1.0).num_gpus(1.0).spawn().unwrap();
    let at = h.devices().get_timeout(Duration::from_secs(60)).unwrap();
    std::fs::write(v["ready"].as_str().unwrap(), at).unwrap();
    wait_for_stop(&v);
    drop(h);
    flare::shutdown();
}

#[test]
fn two_drivers_share_a_node_without_oversubscribing_it() {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = TestCluster::start(flare_bin(), 0.0).unwrap();
    c.add_node("n1", 2.0, 1.0, &[]).unwrap();
    let dir = std::env::temp_dir().join(format!("flare-two-drivers-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let other = |tag: &str| {
        let spec = serde_json::json!({
            "address": c.address, "token": c.token,
            "ready": dir.join(format!("{tag}.ready")), "stop": dir.join(format!("{tag}.stop")),
        });
        let child = other_driver("other_driver_holding_a_gpu", "FLARE_TEST_OTHER_DRIVER", &spec);
        assert_eq!(std::fs::read_to_string(dir.join(format!("{tag}.ready"))).unwrap(), "0@n1");
        child
    };
    let mut a = other("a");
    let _joined = join(&c);
    // This driver's view of n1 shows what the other holds: 1 of 2 CPUs and no GPU free.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let avail = flare::cluster_resources().unwrap().available;
        if avail.get("GPU") == 0.0 && avail.get("CPU") == 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "the driver never saw the other's use of n1: {avail}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // A GPU task waits while the other driver holds the GPU; a CPU task runs beside it.
    let gpu = where_am_i::options().num_cpus(0.0).num_gpus(1.0).remote(0);
    assert_eq!(where_am_i::remote(0).get_timeout(Duration::from_secs(60)).unwrap(), "n1");
    let e = gpu.get_timeout(Duration::from_secs(2)).unwrap_err();
    assert!(e.to_string().contains("imed out") || e.to_string().contains("timeout"), "{e}");
    // Two 1-CPU tasks of 600 ms share the one CPU left: one after the other.
    let t = Instant::now();
    let two: Vec<_> = (0..2).map(|_| where_am_i::remote(600)).collect();
    for r in two {
        assert_eq!(r.get_timeout(Duration::from_secs(60)).unwrap(), "n1");
    }
    assert!(t.elapsed() >= Duration::from_millis(1200), "two tasks ran at once on one free CPU: {:?}", t.elapsed());
    // The other driver ends: what it held goes back, and the GPU task runs.
    std::fs::write(dir.join("a.stop"), "").unwrap();
    assert!(a.0.wait().unwrap().success());
    assert_eq!(gpu.get_timeout(Duration::from_secs(30)).unwrap(), "n1");
    // A driver that is SIGKILLed gives its share back too (its agent session ends).
    let mut b = other("b");
    let gpu = where_am_i::options().num_cpus(0.0).num_gpus(1.0).remote(0);
    assert!(gpu.get_timeout(Duration::from_secs(2)).is_err(), "the GPU was handed out twice");
    unsafe { libc::kill(b.0.id() as i32, libc::SIGKILL) };
    let _ = b.0.wait();
    assert_eq!(gpu.get_timeout(Duration::from_secs(30)).unwrap(), "n1");
    flare::shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

struct Tally {
    n: u64,
}

#[flare::actor]
impl Tally {
    fn new() -> Self {
        Tally { n: 0 }
    }
    fn add(&mut self, k: u64) -> u64 {
        self.n += k;
        self.n
    }
    /// Adds the length of `data` (a large argument travels as a file).
    fn absorb(&mut self, data: Buffer) -> u64 {
        self.n += data.len() as u64;
        self.n
    }
    /// `n` bytes of a known pattern (a large result travels as a file).
    fn bytes(&self, n: u64) -> Buffer {
        Buffer::from((0..n).map(|i| (i as u8).wrapping_mul(13)).collect::<Vec<u8>>())
    }
}

/// The owner in `a_named_actor_is_called_from_another_driver`, run as a child process of
/// this test binary (it does nothing without `FLARE_TEST_ACTOR_OWNER`): creates the named
/// actor `shared` on the cluster, adds 1, says so in its ready file and keeps the actor until
/// its stop file appears.
#[test]
fn other_driver_owning_a_named_actor() {
    let Ok(spec) = std::env::var("FLARE_TEST_ACTOR_OWNER") else { return };
    let v: serde_json::Value = serde_json::from_str(&spec).unwrap();
    let (address, token) = (v["address"].as_str().unwrap(), v["token"].as_str().unwrap());
    flare::init_with(Config::new().address(address).token(token).log_to_driver(false)).unwrap();
    let t = Tally::remote().num_cpus(1.0).name("shared").spawn().unwrap();
    assert_eq!(t.add(1).get_timeout(Duration::from_secs(60)).unwrap(), 1);
    std::fs::write(v["ready"].as_str().unwrap(), std::process::id().to_string()).unwrap();
    wait_for_stop(&v);
    // What the other driver added is in the actor's state.
    std::fs::write(v["ready"].as_str().unwrap(), t.add(0).get_timeout(Duration::from_secs(30)).unwrap().to_string()).unwrap();
    drop(t);
    flare::shutdown();
}

#[test]
fn a_named_actor_is_called_from_another_driver() {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = TestCluster::start(flare_bin(), 0.0).unwrap();
    c.add_node("n1", 2.0, 0.0, &[]).unwrap();
    let dir = std::env::temp_dir().join(format!("flare-actor-owner-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (ready, stop) = (dir.join("ready"), dir.join("stop"));
    let spec = serde_json::json!({"address": c.address, "token": c.token, "ready": ready, "stop": stop});
    let mut owner = other_driver("other_driver_owning_a_named_actor", "FLARE_TEST_ACTOR_OWNER", &spec);
    let owner_pid = std::fs::read_to_string(&ready).unwrap();
    std::fs::remove_file(&ready).unwrap();
    let _joined = join(&c);

    // Found by name through the head's directory, and called: the owner's actor state.
    let t = flare::get_actor::<Tally>("shared").unwrap();
    assert_eq!(t.add(2).get_timeout(Duration::from_secs(30)).unwrap(), 3);
    // A 3 MiB argument (a file in this driver's store) reaches the owner's actor.
    let big = Buffer::from(vec![7u8; 3 << 20]);
    assert_eq!(t.absorb(big).get_timeout(Duration::from_secs(30)).unwrap(), 3 + (3 << 20));
    // A 100 MiB result (over the largest frame) comes back as a file pulled from the owner.
    let got = t.bytes(100 << 20).get_timeout(Duration::from_secs(60)).unwrap();
    assert_eq!(got.len(), 100 << 20);
    assert!(got.iter().enumerate().all(|(i, b)| *b == (i as u8).wrapping_mul(13)), "the result's bytes changed on the way");
    // Calls keep their order.
    let refs: Vec<_> = (0..20).map(|_| t.add(1)).collect();
    let got: Vec<u64> = refs.into_iter().map(|r| r.get_timeout(Duration::from_secs(30)).unwrap()).collect();
    assert_eq!(got, (1..=20).map(|i| 3 + (3 << 20) + i).collect::<Vec<_>>());
    // The name is the cluster's: this driver cannot take it, and is told who holds it.
    let e = Tally::remote().num_cpus(0.0).name("shared").spawn().unwrap_err();
    assert!(e.to_string().contains("already exists") && e.to_string().contains(&owner_pid), "{e}");
    // The directory lives in the head's database: a restarted head still has the entry, and
    // the call path (driver to driver) does not go through the head.
    c.restart_head().unwrap();
    assert_eq!(t.add(0).get_timeout(Duration::from_secs(30)).unwrap(), 3 + (3 << 20) + 20);
    let keys = c.client().get("/api/kv?prefix=__flare_actors/").unwrap().ok_json().unwrap();
    assert_eq!(keys["keys"].as_array().unwrap().len(), 1, "{keys}");

    // The owner ends: the name is free again and calls fail saying why.
    std::fs::write(&stop, "").unwrap();
    assert!(owner.0.wait().unwrap().success());
    assert_eq!(std::fs::read_to_string(&ready).unwrap(), (3 + (3 << 20) + 20).to_string(), "the owner saw every call");
    let e = t.add(1).get_timeout(Duration::from_secs(30)).unwrap_err();
    assert!(e.to_string().contains("owns it is gone"), "{e}");
    let e = flare::get_actor::<Tally>("shared").unwrap_err();
    assert!(e.to_string().contains("no live actor named `shared`"), "{e}");
    let mine = Tally::remote().num_cpus(0.0).name("shared").spawn().unwrap();
    assert_eq!(mine.add(5).get_timeout(Duration::from_secs(60)).unwrap(), 5);
    // A killed actor's name is free; an owner that is SIGKILLed leaves a claim that the next
    // driver to want the name takes over (the owner's port no longer answers).
    flare::kill(&mine).unwrap();
    std::fs::remove_file(&ready).unwrap();
    let _ = std::fs::remove_file(&stop);
    // Killed from this driver: its owner kills it, calls fail saying so, and the name is free.
    let mut owner = other_driver("other_driver_owning_a_named_actor", "FLARE_TEST_ACTOR_OWNER", &spec);
    let t = flare::get_actor::<Tally>("shared").unwrap();
    assert_eq!(t.add(1).get_timeout(Duration::from_secs(30)).unwrap(), 2);
    flare::kill(&t).unwrap();
    let e = t.add(1).get_timeout(Duration::from_secs(30)).unwrap_err();
    assert!(e.to_string().contains("killed"), "{e}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while flare::get_actor::<Tally>("shared").is_ok() {
        assert!(Instant::now() < deadline, "the killed actor's name was never freed");
        std::thread::sleep(Duration::from_millis(50));
    }
    unsafe { libc::kill(owner.0.id() as i32, libc::SIGKILL) };
    let _ = owner.0.wait();
    std::fs::remove_file(&ready).unwrap();
    let mut again = other_driver("other_driver_owning_a_named_actor", "FLARE_TEST_ACTOR_OWNER", &spec);
    unsafe { libc::kill(again.0.id() as i32, libc::SIGKILL) };
    let _ = again.0.wait();
    let taken = Tally::remote().num_cpus(0.0).name("shared").spawn().unwrap();
    assert_eq!(taken.add(7).get_timeout(Duration::from_secs(60)).unwrap(), 7);
    drop(taken);
    flare::shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Waits (at most 2 minutes) until `path` exists.
fn wait_for_file(path: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !path.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The creator in `a_placement_group_is_shared_between_drivers`, run as a child process of
/// this test binary (it does nothing without `FLARE_TEST_PG_OWNER`): makes the named groups
/// `shared` (a GPU bundle and a CPU bundle, STRICT_SPREAD), `short` and the detached `kept`,
/// holds bundle 1's CPU with an actor until the `free` file appears, and at `stop` writes
/// what became of `shared` to its `saw` file.
#[test]
fn other_driver_owning_a_placement_group() {
    let Ok(spec) = std::env::var("FLARE_TEST_PG_OWNER") else { return };
    let v: serde_json::Value = serde_json::from_str(&spec).unwrap();
    let (address, token) = (v["address"].as_str().unwrap(), v["token"].as_str().unwrap());
    let dir = std::path::PathBuf::from(v["dir"].as_str().unwrap());
    flare::init_with(Config::new().address(address).token(token).log_to_driver(false)).unwrap();
    let bundles = [Bundle::cpus(1.0).with_gpus(1.0), Bundle::cpus(1.0)];
    let shared = flare::placement_group_named(&bundles, PlacementStrategy::StrictSpread, Some("shared")).unwrap();
    let short = flare::placement_group_named(&[Bundle::cpus(0.5)], PlacementStrategy::Pack, Some("short")).unwrap();
    let opts = flare::PlacementGroupOptions::named("kept").detached();
    let kept = flare::placement_group_with(&[Bundle::cpus(0.5)], PlacementStrategy::Pack, &opts).unwrap();
    for pg in [&shared, &short, &kept] {
        assert!(pg.wait(Duration::from_secs(30)).unwrap());
    }
    let holder = Where::remote().num_cpus(1.0).scheduling_strategy(shared.bundle(Some(1))).spawn().unwrap();
    let at = holder.node().get_timeout(Duration::from_secs(60)).unwrap();
    std::fs::write(v["ready"].as_str().unwrap(), format!("{} {at}", std::process::id())).unwrap();
    wait_for_file(&dir.join("free"));
    flare::kill(&holder).unwrap();
    wait_for_file(&dir.join("stop"));
    let saw = match shared.ready() {
        Ok(()) => "still there".to_string(),
        Err(e) => e.to_string(),
    };
    std::fs::write(dir.join("saw"), saw).unwrap();
    flare::shutdown();
}

#[test]
fn a_placement_group_is_shared_between_drivers() {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = TestCluster::start(flare_bin(), 0.0).unwrap();
    c.add_node("n1", 2.0, 1.0, &[]).unwrap();
    c.add_node("n2", 2.0, 0.0, &[]).unwrap();
    c.add_node("n3", 2.0, 0.0, &[]).unwrap();
    let dir = std::env::temp_dir().join(format!("flare-pg-owner-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ready = dir.join("ready");
    let spec = serde_json::json!({"address": c.address, "token": c.token, "ready": ready, "dir": dir});
    let mut owner = other_driver("other_driver_owning_a_placement_group", "FLARE_TEST_PG_OWNER", &spec);
    let said = std::fs::read_to_string(&ready).unwrap();
    let (owner_pid, bundle1_node) = said.split_once(' ').unwrap();
    assert_ne!(bundle1_node, "n1", "STRICT_SPREAD puts the CPU bundle on another node than the GPU one");
    let _joined = join(&c);

    // Found by name through the head's table; the name is taken cluster-wide.
    let pg = flare::get_placement_group("shared").unwrap();
    assert_eq!(pg.bundle_count(), 2);
    assert!(pg.wait(Duration::from_secs(10)).unwrap());
    let e = flare::placement_group_named(&[Bundle::cpus(0.1)], PlacementStrategy::Pack, Some("shared")).unwrap_err();
    assert!(e.to_string().contains("exists already") && e.to_string().contains(owner_pid), "{e}");
    // This driver's actor takes bundle 0's GPU (on n1, the node the creator placed it on).
    let h = GpuHolder::remote().num_cpus(1.0).num_gpus(1.0).scheduling_strategy(pg.bundle(Some(0))).spawn().unwrap();
    assert_eq!(h.devices().get_timeout(Duration::from_secs(60)).unwrap(), "0@n1");
    // Bundle 1's CPU is the creator's actor's: a task there waits. The GPU is the group's:
    // work outside it does not get it.
    let in_b1 = where_am_i::options().num_cpus(1.0).scheduling_strategy(pg.bundle(Some(1))).remote(0);
    let gpu = where_am_i::options().num_cpus(0.0).num_gpus(1.0).remote(0);
    assert!(in_b1.get_timeout(Duration::from_secs(2)).is_err(), "a bundle's CPU was handed out twice");
    assert!(gpu.get_timeout(Duration::from_millis(500)).is_err(), "work outside the group took its GPU");
    // The creator's actor goes: the task in bundle 1 runs, on its node.
    std::fs::write(dir.join("free"), "").unwrap();
    assert_eq!(in_b1.get_timeout(Duration::from_secs(30)).unwrap(), bundle1_node);
    // The node under bundle 1 dies: its creator places the bundle again, on the one node
    // left that holds no bundle of the group, and this driver follows (the head's table).
    c.kill_node(bundle1_node).unwrap();
    wait_until_gone(bundle1_node);
    let third = if bundle1_node == "n2" { "n3" } else { "n2" };
    let moved = where_am_i::options().num_cpus(1.0).scheduling_strategy(pg.bundle(Some(1))).remote(0);
    assert_eq!(moved.get_timeout(Duration::from_secs(60)).unwrap(), third);
    // Removed from here: the work in it dies, its GPU is free for other work, and the creator
    // sees it removed.
    flare::remove_placement_group(&pg).unwrap();
    let e = h.devices().get_timeout(Duration::from_secs(30)).unwrap_err();
    assert!(e.to_string().contains("removed"), "{e}");
    assert_eq!(gpu.get_timeout(Duration::from_secs(30)).unwrap(), "n1");
    std::fs::write(dir.join("stop"), "").unwrap();
    assert!(owner.0.wait().unwrap().success());
    let saw = std::fs::read_to_string(dir.join("saw")).unwrap();
    assert!(saw.contains("removed"), "the creator did not see its group removed: {saw}");

    // Its creator ended: `short` went with it, the detached `kept` did not.
    let e = flare::get_placement_group("short").unwrap_err();
    assert!(e.to_string().contains("no placement group named `short`"), "{e}");
    let kept = flare::get_placement_group("kept").unwrap();
    assert!(kept.wait(Duration::from_secs(10)).unwrap());
    // `flare list placement-groups` shows it from the head's table (no live driver lists it).
    let rows = flare_list(&c, "placement-groups");
    let row = rows.as_array().unwrap().iter().find(|r| r["name"] == "kept").cloned();
    assert!(row.as_ref().is_some_and(|r| r["detached"] == true && r["creator"] == "gone"), "{rows}");
    let there = where_am_i::options().num_cpus(0.5).scheduling_strategy(kept.bundle(None)).remote(0);
    assert!(there.get_timeout(Duration::from_secs(30)).unwrap().starts_with('n'));
    flare::remove_placement_group(&kept).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let keys = c.client().get("/api/kv?prefix=__flare_pgs/").unwrap().ok_json().unwrap();
        if keys["keys"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the head still lists groups: {keys}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A creator that is SIGKILLed: its agents' sessions end and take its groups' bundles
    // back; its entries are stale, so the name is not found and can be taken.
    for f in ["ready", "free", "stop", "saw"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    let mut killed = other_driver("other_driver_owning_a_placement_group", "FLARE_TEST_PG_OWNER", &spec);
    unsafe { libc::kill(killed.0.id() as i32, libc::SIGKILL) };
    let _ = killed.0.wait();
    let e = flare::get_placement_group("shared").unwrap_err();
    assert!(e.to_string().contains("is gone"), "{e}");
    let mine =
        flare::placement_group_named(&[Bundle::cpus(1.0).with_gpus(1.0)], PlacementStrategy::Pack, Some("shared")).unwrap();
    assert!(mine.wait(Duration::from_secs(30)).unwrap(), "the killed driver's bundles were not given back");
    flare::remove_placement_group(&mine).unwrap();
    // A removed group's name is free again at once (its entry may not be deleted yet).
    let again = flare::placement_group_named(&[Bundle::cpus(1.0)], PlacementStrategy::Pack, Some("shared")).unwrap();
    assert!(again.wait(Duration::from_secs(30)).unwrap());
    flare::remove_placement_group(&again).unwrap();
    flare::remove_placement_group(&flare::get_placement_group("kept").unwrap()).unwrap();
    // Every bundle went back: the whole cluster is free again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let avail = flare::cluster_resources().unwrap().available;
        if avail.get("CPU") == 4.0 && avail.get("GPU") == 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "bundles were not given back: {avail}");
        std::thread::sleep(Duration::from_millis(50));
    }
    flare::shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Polls a job until its status is one of `want`.
fn wait_job(hc: &flare::head::client::HeadClient, id: &str, want: &[&str], within: Duration) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let j = hc.get(&format!("/api/jobs/{id}")).unwrap().ok_json().unwrap();
        if want.contains(&j["status"].as_str().unwrap_or("")) {
            return j;
        }
        assert!(Instant::now() < deadline, "job {id} never reached {want:?}: {j}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn job_logs(hc: &flare::head::client::HeadClient, id: &str) -> String {
    hc.get(&format!("/api/jobs/{id}/logs")).unwrap().ok_json().unwrap()["logs"].as_str().unwrap_or("").to_string()
}

#[test]
fn jobs_run_on_a_node_that_has_their_resources() {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = TestCluster::start(flare_bin(), 1.0).unwrap();
    c.add_node("n1", 2.0, 0.0, &[("special", 1.0)]).unwrap();
    c.add_node("n2", 1.0, 0.0, &[]).unwrap();
    let hc = c.client();

    // A working dir package; the entrypoint needs `special`, which only n1 has: the package
    // goes to n1's agent, the entrypoint runs there, its output lands in the head's log.
    let wd = c.dir.join("wd");
    std::fs::create_dir_all(&wd).unwrap();
    std::fs::write(wd.join("run.sh"), "echo \"on $FLARE_NODE_NAME as $FLARE_JOB_ID, $WHO\"; cat data.txt; echo oops >&2; pwd\n")
        .unwrap();
    std::fs::write(wd.join("data.txt"), "payload from the package\n").unwrap();
    let (name, zip) = flare::head::package::zip_dir(&wd, 1 << 20).unwrap();
    let pkg = format!("/api/packages/gcs/{name}");
    assert_eq!(hc.request("PUT", &pkg, Some(("application/zip", &zip))).unwrap().status, 200);
    let submit = |body: serde_json::Value| hc.post_json("/api/jobs/", &body).unwrap();
    let r = submit(serde_json::json!({
        "entrypoint": "sh run.sh",
        "submission_id": "on-n1",
        "runtime_env": {"working_dir": format!("gcs://{name}"), "env_vars": {"WHO": "with env"}},
        "entrypoint_resources": {"special": 1},
    }));
    assert_eq!(r.status, 200, "{}", r.text());
    let j = wait_job(&hc, "on-n1", &["SUCCEEDED", "FAILED"], Duration::from_secs(30));
    let logs = job_logs(&hc, "on-n1");
    assert_eq!(j["status"], "SUCCEEDED", "{j}\n{logs}");
    assert_eq!(j["driver_node_id"], "n1", "{j}");
    assert!(logs.contains("on n1 as on-n1, with env"), "{logs}");
    assert!(logs.contains("payload from the package") && logs.contains("oops"), "{logs}");
    let unpacked = c.nodes.iter().find(|n| n.name == "n1").unwrap().dir.join("session_latest/jobs/on-n1");
    assert!(logs.contains(&unpacked.join("working_dir").display().to_string()), "ran in n1's unpacked copy: {logs}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while unpacked.exists() {
        assert!(Instant::now() < deadline, "n1 removes its copy of the working dir once the job ended");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Two CPUs fit only on n1; a job that fits on the head stays there.
    submit(
        serde_json::json!({"entrypoint": "echo $FLARE_NODE_NAME; exit 3", "submission_id": "two-cpus", "entrypoint_num_cpus": 2}),
    );
    let j = wait_job(&hc, "two-cpus", &["FAILED", "SUCCEEDED"], Duration::from_secs(30));
    assert_eq!((j["driver_node_id"].as_str(), j["driver_exit_code"].as_i64()), (Some("n1"), Some(3)), "{j}");
    assert!(j["message"].as_str().unwrap().contains("exit code 3"), "{j}");
    submit(serde_json::json!({"entrypoint": "true", "submission_id": "small", "entrypoint_num_cpus": 1}));
    assert_eq!(wait_job(&hc, "small", &["SUCCEEDED"], Duration::from_secs(30))["driver_node_id"], "head");
    // `flare job submit --entrypoint-resources` (Ray's flag) places it the same way.
    let cli = |extra: &[&str]| {
        std::process::Command::new(flare_bin())
            .args(["job", "submit", "--temp-dir"])
            .arg(&c.dir)
            .args(extra)
            .env_remove("FLARE_ADDRESS")
            .env_remove("FLARE_TOKEN")
            .output()
            .unwrap()
    };
    let out = cli(&["--entrypoint-resources", r#"{"special": 1}"#, "--", "echo", "via-cli-on", "$FLARE_NODE_NAME"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("via-cli-on n1"), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let out = cli(&["--entrypoint-resources", "special=1", "--", "true"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a JSON object"));
    // More than any one node has is refused at once, naming the most a node has.
    let r = submit(serde_json::json!({"entrypoint": "true", "entrypoint_num_cpus": 3}));
    assert_eq!(r.status, 400);
    assert!(r.text().contains("3 CPU (the most a node has: 2)"), "{}", r.text());

    // While a remote job holds n1's `special`, the next waits, PENDING; stopping the first
    // ends its whole process group on n1 and the second runs.
    submit(
        serde_json::json!({"entrypoint": "sleep 61 & sleep 61; wait", "submission_id": "sleeper", "entrypoint_resources": {"special": 1}}),
    );
    wait_job(&hc, "sleeper", &["RUNNING"], Duration::from_secs(30));
    submit(serde_json::json!({"entrypoint": "echo second", "submission_id": "second", "entrypoint_resources": {"special": 1}}));
    std::thread::sleep(Duration::from_millis(500));
    let st = hc.get("/api/cluster_status").unwrap().ok_json().unwrap();
    let n1 = st["nodes"].as_array().unwrap().iter().find(|n| n["node_id"] == "n1").unwrap().clone();
    assert_eq!(n1["resources_used_by_jobs"]["special"], 1.0, "{n1}");
    assert_eq!(hc.get("/api/jobs/second").unwrap().ok_json().unwrap()["status"], "PENDING");
    let sleepers = || sleepers_of("sleep 61");
    let deadline = Instant::now() + Duration::from_secs(10);
    while sleepers() != 2 {
        assert!(Instant::now() < deadline, "the entrypoint's two sleeps never ran");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(hc.request("POST", "/api/jobs/sleeper/stop", None).unwrap().ok_json().unwrap()["stopped"], true);
    let j = wait_job(&hc, "sleeper", &["STOPPED", "FAILED", "SUCCEEDED"], Duration::from_secs(15));
    assert_eq!(j["status"], "STOPPED", "{j}");
    let j = wait_job(&hc, "second", &["SUCCEEDED", "FAILED"], Duration::from_secs(30));
    assert_eq!((j["status"].as_str(), j["driver_node_id"].as_str()), (Some("SUCCEEDED"), Some("n1")), "{j}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while sleepers() > 0 {
        assert!(Instant::now() < deadline, "the stopped job's processes outlived the stop");
        std::thread::sleep(Duration::from_millis(50));
    }

    // A node that dies under its job fails the job, saying so; the resources come back.
    submit(
        serde_json::json!({"entrypoint": "echo started; sleep 62", "submission_id": "doomed", "entrypoint_resources": {"special": 1}}),
    );
    wait_job(&hc, "doomed", &["RUNNING"], Duration::from_secs(30));
    let deadline = Instant::now() + Duration::from_secs(10);
    while sleepers_of("sleep 62") != 1 {
        assert!(Instant::now() < deadline, "the job's sleep never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    c.kill_node("n1").unwrap();
    let j = wait_job(&hc, "doomed", &["FAILED", "SUCCEEDED", "STOPPED"], Duration::from_secs(15));
    assert_eq!(j["status"], "FAILED", "{j}");
    assert!(j["message"].as_str().unwrap().contains("node n1"), "{j}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while sleepers_of("sleep 62") > 0 {
        assert!(Instant::now() < deadline, "the dead node's job outlived its agent");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_job_s_entrypoint_holds_its_gpu_against_drivers() {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = TestCluster::start(flare_bin(), 0.0).unwrap();
    c.add_node("n1", 1.0, 1.0, &[]).unwrap();
    let _joined = join(&c);
    let hc = c.client();
    // A driver's actor holds n1's GPU: a job that needs it waits, saying why.
    let h = GpuHolder::remote().num_cpus(0.0).num_gpus(1.0).spawn().unwrap();
    assert_eq!(h.devices().get_timeout(Duration::from_secs(60)).unwrap(), "0@n1");
    let body = serde_json::json!({"entrypoint": "echo gpus=$CUDA_VISIBLE_DEVICES; sleep 5", "entrypoint_num_gpus": 1});
    let j = hc.post_json("/api/jobs/", &body).unwrap().ok_json().unwrap();
    let id = j["submission_id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = hc.get(&format!("/api/jobs/{id}")).unwrap().ok_json().unwrap();
        assert_eq!(v["status"], "PENDING", "the job ran on a GPU a driver holds: {v}");
        if v["message"].as_str().is_some_and(|m| m.contains("drivers hold them on node n1")) {
            break;
        }
        assert!(Instant::now() < deadline, "the job never said what it waits for: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The driver lets go: the job runs, with the GPU it was granted.
    flare::kill(&h).unwrap();
    wait_job(&hc, &id, &["RUNNING", "SUCCEEDED"], Duration::from_secs(30));
    // While the entrypoint runs the GPU is its: a driver's GPU task waits for it.
    let t = where_am_i::options().num_cpus(0.0).num_gpus(1.0).remote(0);
    assert!(t.get_timeout(Duration::from_secs(1)).is_err(), "a driver took the GPU of a running job");
    let v = wait_job(&hc, &id, &["SUCCEEDED", "FAILED", "STOPPED"], Duration::from_secs(60));
    assert_eq!(v["status"], "SUCCEEDED", "{v}");
    assert!(job_logs(&hc, &id).contains("gpus=0"), "{}", job_logs(&hc, &id));
    assert_eq!(t.get_timeout(Duration::from_secs(30)).unwrap(), "n1");
    flare::shutdown();
}

fn sleepers_of(cmd: &str) -> usize {
    let out = std::process::Command::new("pgrep").args(["-f", &format!("^{cmd}$")]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}
