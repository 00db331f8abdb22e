//! Ranks as separate processes (this test binary started again as each rank), meeting
//! through a TCP store: the way the trainer and `flare bench collectives` run them.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flare_collectives::{chunk_range, init, Backend, CommunicatorExt, GroupOptions, ReduceOp, Store, TcpStore, TcpStoreServer};

const ROLE: &str = "FLARE_COLLECTIVES_TEST_ROLE";

/// What a child rank does; the parent passes the role in the environment.
fn child() -> bool {
    let Ok(role) = std::env::var(ROLE) else { return false };
    let get = |k: &str| std::env::var(k).unwrap();
    let (rank, n): (usize, usize) = (get("RANK").parse().unwrap(), get("WORLD_SIZE").parse().unwrap());
    let backend: Backend = get("BACKEND").parse().unwrap();
    let store: Arc<dyn Store> = Arc::new(TcpStore::connect(get("STORE").as_str(), Duration::from_secs(20)).unwrap());
    let timeout = Duration::from_millis(get("TIMEOUT_MS").parse().unwrap());
    let mut c = init(GroupOptions::new(role.as_str(), rank, n).backend(backend).timeout(timeout), store).unwrap();
    match role.as_str() {
        "ops" => {
            for len in [1usize, 5, 1001, 300_007] {
                let mut v: Vec<f32> = (0..len).map(|i| (i % 97) as f32 * (rank + 1) as f32).collect();
                c.all_reduce_slice(&mut v, ReduceOp::Sum).unwrap();
                let k = (n * (n + 1) / 2) as f32;
                assert!(v.iter().enumerate().all(|(i, x)| *x == (i % 97) as f32 * k), "all_reduce len {len}");
                let mine: Vec<i64> = (0..len as i64).map(|i| i * 10 + rank as i64).collect();
                let all = c.all_gather_vec(&mine).unwrap();
                assert!((0..n).all(|q| all[q * len + len - 1] == (len as i64 - 1) * 10 + q as i64));
                let part = c.reduce_scatter_vec(&mine, ReduceOp::Max).unwrap();
                let r = chunk_range(len, n, rank);
                assert!(part.iter().zip(r).all(|(x, i)| *x == i as i64 * 10 + n as i64 - 1));
                let mut b = vec![rank as f64; len];
                c.broadcast_slice(&mut b, n - 1).unwrap();
                assert!(b.iter().all(|x| *x == (n - 1) as f64));
            }
            c.barrier().unwrap();
        }
        "dies" => {
            if rank == n - 1 {
                // This rank's process ends without a word, as a crashed one would.
                std::process::exit(0);
            }
            let t = Instant::now();
            let mut v = vec![1.0f32; 100_000];
            let e = c.all_reduce_slice(&mut v, ReduceOp::Sum).unwrap_err();
            assert_eq!(e.missing_ranks(), &[n - 1], "{e}");
            assert!(t.elapsed() <= timeout + Duration::from_millis(500), "took {:?}", t.elapsed());
            println!("rank {rank}: {e}");
        }
        _ => panic!("unknown role {role}"),
    }
    true
}

fn run_group(role: &str, backend: Backend, n: usize, timeout_ms: u64) {
    let server = TcpStoreServer::bind("127.0.0.1:0").unwrap();
    let exe = std::env::current_exe().unwrap();
    let test = if role == "ops" { "ranks_as_processes" } else { "a_dead_process_is_named" };
    let children: Vec<_> = (0..n)
        .map(|r| {
            Command::new(&exe)
                .args([test, "--exact", "--nocapture", "--test-threads=1"])
                .env(ROLE, role)
                .env("RANK", r.to_string())
                .env("WORLD_SIZE", n.to_string())
                .env("BACKEND", backend.to_string())
                .env("STORE", server.addr().to_string())
                .env("TIMEOUT_MS", timeout_ms.to_string())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (r, c) in children.into_iter().enumerate() {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{role} {backend} n={n} rank {r} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn ranks_as_processes() {
    if child() {
        return;
    }
    for backend in [Backend::Ring, Backend::Shm] {
        for n in 1..=8 {
            run_group("ops", backend, n, 60_000);
        }
    }
}

#[test]
fn a_dead_process_is_named() {
    if child() {
        return;
    }
    for backend in [Backend::Ring, Backend::Shm] {
        run_group("dies", backend, 3, 2_000);
    }
}
