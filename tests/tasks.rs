//! Tasks, objects and actors end to end, in real worker processes.

mod common;

use common::{eventually, init};
use flare::prelude::*;
use flare::StateQuery;
use std::time::{Duration, Instant};

fn setup() {
    init(Config::new().num_cpus(4.0));
}

#[flare::remote]
fn square(x: u64) -> u64 {
    x * x
}

#[flare::remote]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

#[flare::remote]
fn pid() -> u32 {
    std::process::id()
}

#[flare::remote]
fn fan_out(n: u64) -> flare::Result<u64> {
    let refs: Vec<_> = (0..n).map(square::remote).collect();
    Ok(flare::get_all(&refs)?.iter().sum())
}

/// Three levels deep: a nested task that itself nests (needs CPU lending to finish on few CPUs).
#[flare::remote]
fn deep(level: u32) -> flare::Result<u32> {
    if level == 0 {
        return Ok(0);
    }
    let inner = deep::remote(level - 1);
    Ok(inner.get()? + 1)
}

#[flare::remote]
fn fails(msg: String) -> Result<u32, String> {
    Err(msg)
}

#[flare::remote]
fn panics() -> u32 {
    panic!("boom from a task")
}

#[flare::remote]
fn sum_refs(refs: Vec<ObjectRef<u64>>) -> flare::Result<u64> {
    Ok(flare::get_all(&refs)?.iter().sum())
}

#[flare::remote]
fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[flare::remote]
fn until_cancelled() -> u32 {
    let start = Instant::now();
    while !flare::is_cancelled() && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(5));
    }
    7
}

#[test]
fn tasks_run_in_worker_processes() {
    setup();
    let refs: Vec<_> = (0..20).map(square::remote).collect();
    assert_eq!(flare::get_all(&refs).unwrap(), (0..20).map(|x| x * x).collect::<Vec<_>>());
    let worker_pid = pid::remote().get().unwrap();
    assert_ne!(worker_pid, std::process::id(), "tasks must run outside the driver");
}

#[test]
fn refs_as_arguments_are_resolved_first() {
    setup();
    let a = square::remote(3);
    let b = flare::put(&4u64).unwrap();
    assert_eq!(add::remote(&a, &b).get().unwrap(), 13);
    // A chain: each depends on the previous one.
    let mut acc = flare::put(&0u64).unwrap();
    for i in 0..10 {
        acc = add::remote(acc, i);
    }
    assert_eq!(acc.get().unwrap(), 45);
}

#[test]
fn nested_tasks() {
    setup();
    assert_eq!(fan_out::remote(10).get().unwrap(), 285);
    assert_eq!(deep::remote(6).get().unwrap(), 6);
}

#[test]
fn refs_inside_values() {
    setup();
    let refs: Vec<_> = (1..=4).map(|i| flare::put(&(i as u64)).unwrap()).collect();
    assert_eq!(sum_refs::remote(refs.clone()).get().unwrap(), 10);
    // A ref stored inside an object keeps its target alive after the last direct ref drops.
    let outer = flare::put(&refs).unwrap();
    drop(refs);
    let inner: Vec<ObjectRef<u64>> = outer.get().unwrap();
    assert_eq!(flare::get_all(&inner).unwrap(), vec![1, 2, 3, 4]);
}

#[test]
fn errors_come_back_as_values() {
    setup();
    let e = fails::remote("bad input".to_string()).get().unwrap_err();
    let te = e.as_task_error().expect("a task error");
    assert_eq!(te.kind, ErrorKind::UserError);
    assert_eq!(te.message, "bad input");
    assert!(te.task_name.as_deref().unwrap().ends_with("fails"), "{te:?}");

    let e = panics::remote().get().unwrap_err();
    let te = e.as_task_error().unwrap();
    assert_eq!(te.kind, ErrorKind::UserPanic);
    assert_eq!(te.message, "boom from a task");
    assert!(te.location.as_deref().unwrap().contains("tests/tasks.rs"), "{te:?}");
    // The worker survives a panic and keeps serving.
    assert_eq!(square::remote(5).get().unwrap(), 25);
}

#[test]
fn bad_requests_fail_fast_with_reasons() {
    setup();
    let e = square::options().num_gpus(1.0).remote(1).get().unwrap_err();
    let te = e.as_task_error().unwrap();
    assert_eq!(te.kind, ErrorKind::Infeasible);
    assert!(te.message.contains("GPU: 1") && te.message.contains("largest node"), "{}", te.message);
    let e = square::options().num_cpus(-1.0).remote(1).get().unwrap_err();
    assert!(e.to_string().contains("non-negative"), "{e}");
    let e = square::options().num_gpus(1.5).remote(1).get().unwrap_err();
    assert!(e.to_string().contains("whole number"), "{e}");
}

#[test]
fn get_timeout_and_wait() {
    setup();
    let slow = sleep_ms::remote(600);
    let e = slow.get_timeout(Duration::from_millis(50)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TimedOut);
    let fast = sleep_ms::remote(1);
    let refs = vec![slow.clone(), fast.clone()];
    let (ready, not_ready) = flare::wait(&refs, 1, Some(Duration::from_secs(5))).unwrap();
    assert_eq!(ready, vec![fast.clone()]);
    assert_eq!(not_ready, vec![slow.clone()]);
    let (ready, _) = flare::wait(&refs, 2, None).unwrap();
    assert_eq!(ready.len(), 2);
    assert!(flare::wait(&refs, 3, None).is_err(), "num_returns past the list is an error");
}

#[test]
fn await_on_refs() {
    setup();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let total = rt.block_on(async {
        let a = square::remote(6);
        let b = square::remote(8);
        a.await.unwrap() + (&b).await.unwrap()
    });
    assert_eq!(total, 100);
}

#[test]
fn cancel_queued_and_running() {
    setup();
    // Running, cooperative: the task sees the flag, but its result is Cancelled all the same.
    let r = until_cancelled::remote();
    assert!(eventually(Duration::from_secs(10), || {
        flare::list(StateQuery::Tasks)
            .unwrap()
            .tasks
            .iter()
            .any(|t| t.task_id == r.id().task && t.state == flare::state::TaskState::Running)
    }));
    flare::cancel(&r, false).unwrap();
    assert_eq!(r.get().unwrap_err().kind(), ErrorKind::Cancelled);

    // Queued behind an argument that is not ready: never runs.
    let blocker = sleep_ms::remote(400);
    let queued = add::remote(&blocker, 1);
    flare::cancel(&queued, false).unwrap();
    assert_eq!(queued.get().unwrap_err().kind(), ErrorKind::Cancelled);

    // Running, forced: the worker is killed and the task is not retried.
    let forced = sleep_ms::remote(20_000);
    assert!(eventually(Duration::from_secs(10), || {
        flare::list(StateQuery::Tasks)
            .unwrap()
            .tasks
            .iter()
            .any(|t| t.task_id == forced.id().task && t.state == flare::state::TaskState::Running)
    }));
    let t0 = Instant::now();
    flare::cancel(&forced, true).unwrap();
    assert_eq!(forced.get().unwrap_err().kind(), ErrorKind::Cancelled);
    assert!(t0.elapsed() < Duration::from_secs(10));
}

#[test]
fn objects_are_freed_when_refs_drop() {
    setup();
    let small = flare::put(&vec![1u32; 10]).unwrap();
    let large = flare::put(&Buffer::from(vec![3u8; 1 << 20])).unwrap();
    let (sid, lid) = (small.id(), large.id());
    let listed = |id| flare::list(StateQuery::Objects).unwrap().objects.iter().any(|o| o.object_id == id);
    assert!(listed(sid) && listed(lid));
    let copy = large.clone();
    drop(large);
    assert!(listed(lid), "a clone keeps the object alive");
    drop(copy);
    drop(small);
    assert!(eventually(Duration::from_secs(2), || !listed(sid) && !listed(lid)), "objects must be freed");
    // A task's return held only by a pending consumer stays until the consumer ran.
    let r = add::remote(square::remote(2), 1);
    assert_eq!(r.get().unwrap(), 5);
}

#[test]
fn large_objects_round_trip_zero_copy() {
    setup();
    let gib: usize = 1 << 30;
    let mut data = vec![0u8; gib];
    for (i, chunk) in data.chunks_mut(1 << 20).enumerate() {
        chunk.fill((i % 251) as u8);
    }
    let r = flare::put(&Buffer::from(data)).unwrap();
    let back: Buffer = r.get().unwrap();
    assert!(back.is_zero_copy());
    assert_eq!(back.len(), gib);
    assert!(back.chunks(1 << 20).enumerate().all(|(i, c)| c[0] == (i % 251) as u8 && c[c.len() - 1] == (i % 251) as u8));
    drop(back);
    drop(r);
}

#[test]
fn state_api_lists_work() {
    setup();
    let r = square::remote(9);
    r.get().unwrap();
    let tasks = flare::list(StateQuery::Tasks).unwrap().tasks;
    let t = tasks.iter().find(|t| t.task_id == r.id().task).expect("finished task listed");
    assert_eq!(t.state, flare::state::TaskState::Finished);
    let workers = flare::list(StateQuery::Workers).unwrap().workers;
    assert!(!workers.is_empty());
    let res = flare::cluster_resources().unwrap();
    assert_eq!(res.total.get("CPU"), 4.0);
}

#[flare::remote]
fn make_ref(v: u64) -> flare::Result<ObjectRef<u64>> {
    flare::put(&v)
}

#[test]
fn refs_returned_from_tasks_outlive_the_task() {
    setup();
    // The task's own reference is dropped when it returns; the one inside its result lives on.
    let outer = make_ref::remote(99);
    let inner: ObjectRef<u64> = outer.get().unwrap();
    assert_eq!(inner.get().unwrap(), 99);
}

#[flare::remote]
fn shout(tag: String) -> u32 {
    println!("stdout line {tag}");
    eprintln!("stderr line {tag}");
    std::process::id()
}

#[test]
fn worker_output_goes_to_session_logs() {
    setup();
    let tag = format!("marker-{}", std::process::id());
    let pid = shout::remote(tag.clone()).get().unwrap();
    let logs = std::path::PathBuf::from(flare::cluster_resources().unwrap().session_dir).join("logs");
    let found = |suffix: &str, text: &str| {
        std::fs::read_dir(&logs).unwrap().flatten().any(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.contains(&format!("-{pid}."))
                && name.ends_with(suffix)
                && std::fs::read_to_string(e.path()).unwrap_or_default().contains(text)
        })
    };
    assert!(eventually(Duration::from_secs(5), || found(".out", &format!("stdout line {tag}"))));
    assert!(eventually(Duration::from_secs(5), || found(".err", &format!("stderr line {tag}"))));
}

#[test]
fn zero_copy_buffers_survive_their_refs() {
    setup();
    // A zero-copy Buffer keeps its object's memory: freeing the ref and writing a new object of
    // the same size (which may reuse a freed file) must not change what the Buffer shows.
    let size = 8 << 20;
    let a = flare::put(&Buffer::from(vec![1u8; size])).unwrap();
    let view: Buffer = a.get().unwrap();
    assert!(view.is_zero_copy());
    drop(a);
    let others: Vec<_> = (0..4).map(|i| flare::put(&Buffer::from(vec![2 + i as u8; size])).unwrap()).collect();
    drop(others);
    let again: Vec<_> = (0..4).map(|i| flare::put(&Buffer::from(vec![9 + i as u8; size])).unwrap()).collect();
    assert!(view.iter().all(|b| *b == 1), "a live zero-copy view was overwritten");
    for (i, r) in again.iter().enumerate() {
        assert!(r.get().unwrap().iter().all(|b| *b == 9 + i as u8));
    }
}

#[test]
fn strangers_on_the_node_socket_are_dropped() {
    setup();
    // Garbage and oversized frames on the node's socket must not disturb the node.
    let sock = std::path::PathBuf::from(flare::cluster_resources().unwrap().session_dir).join("node.sock");
    use std::io::Write;
    let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    s.write_all(&u32::MAX.to_le_bytes()).unwrap();
    let mut s2 = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    s2.write_all(&[5, 0, 0, 0, 1, 2, 3, 4, 5]).unwrap();
    drop((s, s2));
    assert_eq!(square::remote(12).get().unwrap(), 144);
}
