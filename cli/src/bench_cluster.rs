//! `flare bench cluster`: a head and two node agents as real processes on this machine (a
//! `TestCluster` started from this binary), this process as the driver that joins them.
//! Measures object transfer between nodes (a driver-owned object pulled by a task on a node
//! agent's worker; and node to node: a result made on `n1`, which stays there, pulled by a
//! task on `n2` straight from `n1`'s agent) and task throughput on one node against two, and
//! in a placement group with a bundle on each node (work in a bundle runs under grants taken
//! from it in the node agents' ledgers).

use flare::cluster_utils::TestCluster;
use flare::{Buffer, Config, SchedulingStrategy};
use std::time::{Duration, Instant};

#[flare::remote]
fn byte_len(data: Buffer) -> u64 {
    data.len() as u64
}

#[flare::remote]
fn make(n: u64, seed: u8) -> Buffer {
    Buffer::from(vec![seed; n as usize])
}

#[flare::remote]
fn noop(i: u64) -> u64 {
    i
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(size: u64, rounds: usize, tasks: usize) -> anyhow::Result<serde_json::Value> {
    let exe = std::env::current_exe()?;
    let mut c = TestCluster::start(&exe, 0.0).map_err(anyhow::Error::msg)?;
    c.add_node("n1", 2.0, 0.0, &[]).map_err(anyhow::Error::msg)?;
    c.add_node("n2", 2.0, 0.0, &[]).map_err(anyhow::Error::msg)?;
    flare::init_with(Config::new().address(&c.address).token(&c.token).log_to_driver(false))?;
    let id = |name: &str| flare::nodes().ok().and_then(|v| v.into_iter().find(|n| n.name == name)).map(|n| n.node_id);
    let n1 = id("n1").ok_or_else(|| anyhow::anyhow!("node n1 did not join"))?;
    let n2 = id("n2").ok_or_else(|| anyhow::anyhow!("node n2 did not join"))?;
    let on = |n| SchedulingStrategy::NodeAffinity { node: n, soft: false };
    let t = Duration::from_secs(300);
    // Warm: a worker on each node.
    for n in [n1, n2] {
        byte_len::options().scheduling_strategy(on(n)).remote(Buffer::from(vec![1u8; 16])).get_timeout(t)?;
    }
    // Driver -> node: a fresh object each round (a worker pulls each argument once).
    let mut pull_s = Vec::new();
    for r in 0..rounds {
        let obj = flare::put(&Buffer::from(vec![r as u8; size as usize]))?;
        let t0 = Instant::now();
        let n = byte_len::options().scheduling_strategy(on(n1)).remote(&obj).get_timeout(t)?;
        pull_s.push(t0.elapsed().as_secs_f64());
        anyhow::ensure!(n == size, "the task saw {n} bytes, not {size}");
    }
    // Node -> node: made on n1 (waited for first), taken by a task on n2.
    let mut n2n_s = Vec::new();
    for r in 0..rounds {
        let obj = make::options().scheduling_strategy(on(n1)).remote(size, r as u8);
        flare::wait(std::slice::from_ref(&obj), 1, Some(t))?;
        let t0 = Instant::now();
        let n = byte_len::options().scheduling_strategy(on(n2)).remote(&obj).get_timeout(t)?;
        n2n_s.push(t0.elapsed().as_secs_f64());
        anyhow::ensure!(n == size, "the task on n2 saw {n} bytes, not {size}");
    }
    let small = flare::put(&Buffer::from(vec![0u8; 16]))?;
    let mut base_s = Vec::new();
    for _ in 0..rounds {
        let t0 = Instant::now();
        byte_len::options().scheduling_strategy(on(n1)).remote(&small).get_timeout(t)?;
        base_s.push(t0.elapsed().as_secs_f64());
    }
    // Throughput: 1-CPU no-op tasks pinned to one node, then free to use both.
    let rate = |strategy: Option<SchedulingStrategy>| -> anyhow::Result<f64> {
        let t0 = Instant::now();
        let refs: Vec<_> = (0..tasks as u64)
            .map(|i| match &strategy {
                Some(s) => noop::options().scheduling_strategy(s.clone()).remote(i),
                None => noop::remote(i),
            })
            .collect();
        for (i, r) in refs.into_iter().enumerate() {
            anyhow::ensure!(r.get_timeout(t)? == i as u64, "task {i} answered wrong");
        }
        Ok(tasks as f64 / t0.elapsed().as_secs_f64())
    };
    let one = rate(Some(on(n1)))?;
    let two = rate(None)?;
    let pg =
        flare::placement_group(&[flare::Bundle::cpus(2.0), flare::Bundle::cpus(2.0)], flare::PlacementStrategy::StrictSpread)?;
    anyhow::ensure!(pg.wait(t)?, "the placement group was not created");
    let in_pg = rate(Some(pg.bundle(None)))?;
    flare::remove_placement_group(&pg)?;
    flare::shutdown();
    drop(c);
    let pull = median(pull_s);
    let base = median(base_s);
    Ok(serde_json::json!({
        "object_bytes": size,
        "pull_s_median": pull,
        "task_overhead_s_median": base,
        "gb_per_s": size as f64 / pull / 1e9,
        "node_to_node_s_median": median(n2n_s.clone()),
        "node_to_node_gb_per_s": size as f64 / median(n2n_s) / 1e9,
        "gb_per_s_net_of_task_overhead": size as f64 / (pull - base).max(1e-9) / 1e9,
        "tasks": tasks,
        "tasks_per_s_one_node": one,
        "tasks_per_s_two_nodes": two,
        "two_over_one": two / one,
        "tasks_per_s_placement_group": in_pg,
        "placement_group_over_two_nodes": in_pg / two,
    }))
}
