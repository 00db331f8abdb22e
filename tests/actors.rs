//! Actors in real worker processes: state, names, concurrency, async methods, kills, restarts.

mod common;

use common::{eventually, init, sigkill, temp_path};
use flare::prelude::*;
use flare::StateQuery;
use std::time::{Duration, Instant};

fn setup() {
    init(Config::new().num_cpus(4.0));
}

struct Counter {
    n: i64,
}

#[flare::actor]
impl Counter {
    fn new(start: i64) -> Self {
        Counter { n: start }
    }
    fn incr(&mut self, by: i64) -> i64 {
        self.n += by;
        self.n
    }
    fn get(&self) -> i64 {
        self.n
    }
    fn pid(&self) -> u32 {
        std::process::id()
    }
    fn fail(&self) -> Result<i64, String> {
        Err(format!("counter at {}", self.n))
    }
}

/// Calls a counter it was handed.
#[flare::remote]
fn bump(c: ActorHandle<Counter>, times: u32) -> flare::Result<i64> {
    let mut last = 0;
    for _ in 0..times {
        last = c.incr(1).get()?;
    }
    Ok(last)
}

struct Sleeper;

#[flare::actor]
impl Sleeper {
    fn new() -> Self {
        Sleeper
    }
    fn nap(&self, ms: u64) -> u64 {
        std::thread::sleep(Duration::from_millis(ms));
        ms
    }
}

struct AsyncSleeper;

#[flare::actor]
impl AsyncSleeper {
    fn new() -> Self {
        AsyncSleeper
    }
    async fn nap(&self, ms: u64) -> u64 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        ms
    }
}

/// Counts its constructions in a file, so a restart is visible.
struct Phoenix {
    starts: usize,
}

#[flare::actor]
impl Phoenix {
    fn new(marker: String) -> Self {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&marker).unwrap();
        writeln!(f, "start").unwrap();
        Phoenix { starts: std::fs::read_to_string(&marker).unwrap().lines().count() }
    }
    fn starts(&self) -> usize {
        self.starts
    }
    fn pid(&self) -> u32 {
        std::process::id()
    }
}

struct Broken;

#[flare::actor]
impl Broken {
    fn new(fail: bool) -> Result<Self, String> {
        if fail {
            Err("no config".into())
        } else {
            Ok(Broken)
        }
    }
    fn ping(&self) -> u8 {
        1
    }
}

#[test]
fn actor_state_persists_across_calls() {
    setup();
    let c = Counter::remote(10).spawn().unwrap();
    let calls: Vec<_> = (0..50).map(|_| c.incr(2)).collect();
    let values = flare::get_all(&calls).unwrap();
    assert_eq!(values, (1..=50).map(|i| 10 + 2 * i).collect::<Vec<_>>(), "calls run in submission order");
    assert_eq!(c.get().get().unwrap(), 110);
    assert_ne!(c.pid().get().unwrap(), std::process::id());
    let e = c.fail().get().unwrap_err();
    assert_eq!(e.as_task_error().unwrap().message, "counter at 110");
}

#[test]
fn handles_pass_to_tasks() {
    setup();
    let c = Counter::remote(0).spawn().unwrap();
    let a = bump::remote(c.clone(), 10);
    let b = bump::remote(c.clone(), 10);
    a.get().unwrap();
    b.get().unwrap();
    assert_eq!(c.get().get().unwrap(), 20);
}

#[test]
fn named_actors() {
    setup();
    let c = Counter::remote(5).name("shared-counter").spawn().unwrap();
    let again = flare::get_actor::<Counter>("shared-counter").unwrap();
    again.incr(1).get().unwrap();
    assert_eq!(c.get().get().unwrap(), 6);
    let dup = Counter::remote(0).name("shared-counter").spawn().unwrap_err();
    assert!(dup.to_string().contains("already exists"), "{dup}");
    // Same name in another namespace is fine.
    let other = Counter::remote(0).name("shared-counter").namespace("team-b").spawn().unwrap();
    assert_eq!(flare::get_actor_in::<Counter>("shared-counter", "team-b").unwrap().id(), other.id());
    let missing = flare::get_actor::<Counter>("nobody").unwrap_err();
    assert_eq!(missing.kind(), ErrorKind::NotFound);
    let wrong = flare::get_actor::<Sleeper>("shared-counter").unwrap_err();
    assert!(wrong.to_string().contains("not a"), "{wrong}");
}

#[test]
fn threaded_actor_runs_calls_concurrently() {
    setup();
    let s = Sleeper::remote().max_concurrency(4).spawn().unwrap();
    s.nap(1).get().unwrap();
    let t0 = Instant::now();
    let naps: Vec<_> = (0..4).map(|_| s.nap(400)).collect();
    flare::get_all(&naps).unwrap();
    let took = t0.elapsed();
    assert!(took < Duration::from_millis(1200), "4 x 400 ms calls took {took:?}; they should overlap");
    // The default is one call at a time.
    let serial = Sleeper::remote().spawn().unwrap();
    serial.nap(1).get().unwrap();
    let t0 = Instant::now();
    let naps: Vec<_> = (0..3).map(|_| serial.nap(200)).collect();
    flare::get_all(&naps).unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(600));
}

#[test]
fn async_actor_interleaves_awaits() {
    setup();
    let s = AsyncSleeper::remote().spawn().unwrap();
    s.nap(1).get().unwrap();
    let t0 = Instant::now();
    let naps: Vec<_> = (0..20).map(|_| s.nap(300)).collect();
    assert_eq!(flare::get_all(&naps).unwrap().len(), 20);
    let took = t0.elapsed();
    assert!(took < Duration::from_millis(1500), "20 x 300 ms awaits took {took:?}; they should interleave");
}

#[test]
fn actor_restarts_after_sigkill_then_dies() {
    setup();
    let marker = temp_path("phoenix");
    let p = Phoenix::remote(marker.clone()).max_restarts(1).max_task_retries(-1).spawn().unwrap();
    assert_eq!(p.starts().get().unwrap(), 1);
    let first_pid = p.pid().get().unwrap();
    sigkill(first_pid);
    // The constructor runs again in a new process; the call waits for it.
    assert_eq!(p.starts().get().unwrap(), 2);
    let second_pid = p.pid().get().unwrap();
    assert_ne!(first_pid, second_pid);
    sigkill(second_pid);
    let e = p.starts().get().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ActorDied, "{e}");
    assert!(e.to_string().contains("no restarts left"), "{e}");
    let _ = std::fs::remove_file(marker);
}

#[test]
fn kill_ends_an_actor() {
    setup();
    let c = Counter::remote(0).max_restarts(5).spawn().unwrap();
    let pid = c.pid().get().unwrap();
    flare::kill(&c).unwrap();
    let e = c.get().get().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ActorDied);
    assert!(eventually(Duration::from_secs(5), || !std::path::Path::new(&format!("/proc/{pid}")).exists()));
}

#[test]
fn failing_constructor_reports_its_message() {
    setup();
    let b = Broken::remote(true).spawn().unwrap();
    let e = b.ping().get().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ActorDied);
    assert!(e.to_string().contains("no config"), "{e}");
    assert_eq!(Broken::remote(false).spawn().unwrap().ping().get().unwrap(), 1);
}

#[test]
fn dropping_every_handle_ends_the_actor() {
    setup();
    let c = Counter::remote(0).spawn().unwrap();
    let pid = c.pid().get().unwrap();
    let id = c.id();
    drop(c);
    assert!(eventually(Duration::from_secs(5), || !std::path::Path::new(&format!("/proc/{pid}")).exists()));
    assert!(!flare::list(StateQuery::Actors)
        .unwrap()
        .actors
        .iter()
        .any(|a| a.actor_id == id && a.state == flare::state::ActorState::Alive));
    // A detached one survives its handles.
    let d = Counter::remote(0).detached().spawn().unwrap();
    let dpid = d.pid().get().unwrap();
    drop(d);
    std::thread::sleep(Duration::from_millis(300));
    assert!(std::path::Path::new(&format!("/proc/{dpid}")).exists());
}

/// Holds handles it was given inside a value.
struct Holder {
    inner: Vec<ActorHandle<Counter>>,
}

#[flare::actor]
impl Holder {
    fn new(inner: Vec<ActorHandle<Counter>>) -> Self {
        Holder { inner }
    }
    fn total(&self) -> flare::Result<i64> {
        let refs: Vec<_> = self.inner.iter().map(|c| c.get()).collect();
        Ok(flare::get_all(&refs)?.iter().sum())
    }
}

#[test]
fn handles_inside_arguments_stay_alive_in_transit() {
    setup();
    // The only driver-side handles are dropped while the argument travels to the node.
    let h = Holder::remote(vec![Counter::remote(3).spawn().unwrap(), Counter::remote(4).spawn().unwrap()]).spawn().unwrap();
    assert_eq!(h.total().get().unwrap(), 7);
}
