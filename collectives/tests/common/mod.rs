#![allow(dead_code)]
use std::sync::Arc;
use std::time::Duration;

use flare_collectives::{init, Backend, Communicator, GroupOptions, MemStore, Store};

/// Runs `f` on `n` ranks, each a thread with its own communicator of one group.
pub fn run_threads<R: Send>(
    n: usize,
    backend: Backend,
    timeout: Duration,
    f: impl Fn(&mut dyn Communicator) -> R + Sync,
) -> Vec<R> {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    run_threads_with(n, &store, |r| GroupOptions::new("g", r, n).backend(backend).timeout(timeout), f)
}

pub fn run_threads_with<R: Send>(
    n: usize,
    store: &Arc<dyn Store>,
    opts: impl Fn(usize) -> GroupOptions + Sync,
    f: impl Fn(&mut dyn Communicator) -> R + Sync,
) -> Vec<R> {
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..n)
            .map(|r| {
                let (store, opts, f) = (store.clone(), &opts, &f);
                s.spawn(move || {
                    let mut c = init(opts(r), store).unwrap_or_else(|e| panic!("rank {r} init: {e}"));
                    f(c.as_mut())
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("a rank panicked")).collect()
    })
}
