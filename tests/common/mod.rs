//! Helpers shared by the integration tests: start the embedded cluster once per test binary,
//! and wait for conditions with a deadline instead of sleeping.

#![allow(dead_code)]

use std::time::{Duration, Instant};

/// Starts the embedded cluster for this test binary (once; later calls reuse it).
pub fn init(config: flare::Config) {
    flare::init_with(config.log_to_driver(false)).expect("flare::init_with");
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes; returns whether it held.
pub fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

/// A fresh path in the system temp dir for marker files.
pub fn temp_path(tag: &str) -> String {
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    std::env::temp_dir().join(format!("flare-test-{tag}-{}-{stamp}", std::process::id())).to_string_lossy().into_owned()
}

/// SIGKILLs a process.
pub fn sigkill(pid: u32) {
    // Safety: plain syscall on a worker of this test's cluster.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
}
