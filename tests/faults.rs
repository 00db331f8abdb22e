//! Fault tolerance with real SIGKILLs: tasks are retried on a new worker and the driver gets the
//! right answer; without retries it gets `WorkerDied`.

mod common;

use common::{eventually, init, sigkill, temp_path};
use flare::prelude::*;
use std::path::Path;
use std::time::Duration;

fn setup() {
    init(Config::new().num_cpus(4.0));
}

/// First attempt: records its pid and hangs. A retry sees the record and answers.
#[flare::remote]
fn hang_once(marker: String, answer: u64) -> u64 {
    if Path::new(&marker).exists() {
        return answer;
    }
    std::fs::write(&marker, std::process::id().to_string()).unwrap();
    std::thread::sleep(Duration::from_secs(60));
    0
}

fn pid_in(marker: &str) -> u32 {
    assert!(eventually(Duration::from_secs(20), || std::fs::read_to_string(marker).is_ok_and(|s| !s.is_empty())));
    std::fs::read_to_string(marker).unwrap().trim().parse().unwrap()
}

#[test]
fn sigkilled_task_is_retried_with_the_right_answer() {
    setup();
    let marker = temp_path("retry");
    let r = hang_once::remote(marker.clone(), 42);
    sigkill(pid_in(&marker));
    assert_eq!(r.get_timeout(Duration::from_secs(30)).unwrap(), 42);
    let t = flare::list(flare::StateQuery::Tasks).unwrap().tasks.into_iter().find(|t| t.task_id == r.id().task).unwrap();
    assert_eq!(t.attempt, 1, "one retry");
    let _ = std::fs::remove_file(marker);
}

#[test]
fn without_retries_the_caller_gets_worker_died() {
    setup();
    let marker = temp_path("noretry");
    let r = hang_once::options().max_retries(0).remote(marker.clone(), 1);
    sigkill(pid_in(&marker));
    let e = r.get_timeout(Duration::from_secs(30)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::WorkerDied);
    assert!(e.to_string().contains("SIGKILL"), "{e}");
    let _ = std::fs::remove_file(marker);
}

#[flare::remote]
fn flaky(marker: String) -> Result<u32, String> {
    let n = std::fs::read_to_string(&marker).map(|s| s.len()).unwrap_or(0);
    std::fs::write(&marker, "x".repeat(n + 1)).unwrap();
    if n < 2 {
        Err(format!("attempt {n} failed"))
    } else {
        Ok(n as u32)
    }
}

#[test]
fn user_errors_are_retried_only_when_asked() {
    setup();
    let m1 = temp_path("flaky1");
    let e = flaky::remote(m1.clone()).get().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::UserError);
    assert_eq!(std::fs::read_to_string(&m1).unwrap().len(), 1, "not retried by default");
    let m2 = temp_path("flaky2");
    assert_eq!(flaky::options().retry_exceptions(true).max_retries(3).remote(m2.clone()).get().unwrap(), 2);
    let _ = std::fs::remove_file(m1);
    let _ = std::fs::remove_file(m2);
}

#[flare::remote]
fn big_output() -> (u32, Buffer) {
    (std::process::id(), Buffer::from(vec![5u8; 4 << 20]))
}

#[test]
fn outputs_outlive_the_worker_that_made_them() {
    setup();
    // The node's store, not the worker, holds a task's output: killing the worker loses nothing.
    let r = big_output::remote();
    let (pid, _) = r.get().unwrap();
    sigkill(pid);
    assert!(eventually(Duration::from_secs(5), || !Path::new(&format!("/proc/{pid}")).exists()));
    let (_, data) = r.get().unwrap();
    assert_eq!(data.len(), 4 << 20);
    assert!(data.iter().all(|b| *b == 5));
}

#[flare::remote]
fn counted_big(marker: String) -> Buffer {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&marker).unwrap();
    writeln!(f, "run").unwrap();
    Buffer::from(vec![7u8; 2 << 20])
}

#[flare::remote]
fn first_byte(b: Buffer) -> u8 {
    b[0]
}

fn runs(marker: &str) -> usize {
    std::fs::read_to_string(marker).map(|s| s.lines().count()).unwrap_or(0)
}

fn object_file<T>(r: &ObjectRef<T>) -> std::path::PathBuf {
    let dir = flare::cluster_resources().unwrap().shm_dir;
    std::path::Path::new(&dir).join(format!("{:x}.{}", r.id().task.0, r.id().index))
}

#[test]
fn lost_objects_are_rebuilt_from_lineage() {
    setup();
    let marker = temp_path("lineage");
    let r = counted_big::remote(marker.clone());
    assert!(r.get().unwrap().iter().all(|b| *b == 7));
    assert_eq!(runs(&marker), 1);
    // The store's file disappears behind its back: the next get re-runs the task.
    std::fs::remove_file(object_file(&r)).unwrap();
    assert!(r.get().unwrap().iter().all(|b| *b == 7));
    assert_eq!(runs(&marker), 2);
    // Lost again, and needed as an argument this time.
    std::fs::remove_file(object_file(&r)).unwrap();
    assert_eq!(first_byte::remote(&r).get().unwrap(), 7);
    assert_eq!(runs(&marker), 3);
    // A put has no lineage: losing it is reported, not hidden.
    let p = flare::put(&Buffer::from(vec![1u8; 2 << 20])).unwrap();
    std::fs::remove_file(object_file(&p)).unwrap();
    assert_eq!(p.get().unwrap_err().kind(), ErrorKind::ObjectLost);
    let _ = std::fs::remove_file(marker);
}
