//! GPU-aware scheduling and placement groups on declared (logical) GPUs: the same code paths a
//! GPU machine uses, exercised on CPU-only machines.

mod common;

use common::{eventually, init, temp_path};
use flare::prelude::*;
use flare::StateQuery;
use std::sync::Mutex;
use std::time::Duration;

/// Tests here share two declared GPUs; they take turns so that one test's GPU work never
/// changes where another's lands.
static GPUS: Mutex<()> = Mutex::new(());

fn setup() -> std::sync::MutexGuard<'static, ()> {
    init(Config::new().num_cpus(8.0).num_gpus(2.0).resource("accel", 2.0));
    GPUS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reports the GPU ids it was given, after every task of its group has arrived: if the group
/// did not run at the same time, the rendezvous times out and the task fails.
#[flare::remote]
fn gpu_rendezvous(dir: String, me: u32, group: u32) -> Result<(Vec<u32>, String), String> {
    std::fs::write(format!("{dir}/{me}"), b"here").map_err(|e| e.to_string())?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0) < group as usize {
        if std::time::Instant::now() > deadline {
            return Err(format!("only some of {group} tasks ran at the same time"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok((flare::get_gpu_ids(), std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_default()))
}

#[flare::remote]
fn gpu_ids() -> (Vec<u32>, String) {
    (flare::get_gpu_ids(), std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_default())
}

#[flare::remote]
fn hold(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

struct GpuActor;

#[flare::actor]
impl GpuActor {
    fn new() -> Self {
        GpuActor
    }
    fn ids(&self) -> (Vec<u32>, String) {
        (flare::get_gpu_ids(), std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_default())
    }
}

#[test]
fn four_quarter_gpu_tasks_share_one_device_at_once() {
    let _gpus = setup();
    let dir = temp_path("quarters");
    std::fs::create_dir_all(&dir).unwrap();
    let refs: Vec<_> = (0..4).map(|i| gpu_rendezvous::options().num_gpus(0.25).remote(dir.clone(), i, 4)).collect();
    let results = flare::get_all(&refs).unwrap();
    let first = &results[0];
    assert_eq!(first.0.len(), 1);
    for (ids, visible) in &results {
        assert_eq!(ids, &first.0, "all four quarters see the same device");
        assert_eq!(visible, &first.0[0].to_string());
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn whole_gpu_tasks_get_distinct_devices() {
    let _gpus = setup();
    let dir = temp_path("wholes");
    std::fs::create_dir_all(&dir).unwrap();
    let refs: Vec<_> = (0..2).map(|i| gpu_rendezvous::options().num_gpus(1.0).remote(dir.clone(), i, 2)).collect();
    let results = flare::get_all(&refs).unwrap();
    let mut ids: Vec<u32> = results.iter().map(|(ids, _)| ids[0]).collect();
    ids.sort();
    assert_eq!(ids, vec![0, 1]);
    for (ids, visible) in &results {
        assert_eq!(visible, &ids[0].to_string());
    }
    // Two GPUs at once on one task.
    let (ids, visible) = gpu_ids::options().num_gpus(2.0).remote().get().unwrap();
    assert_eq!(ids, vec![0, 1]);
    assert_eq!(visible, "0,1");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn gpu_work_queues_instead_of_oversubscribing() {
    let _gpus = setup();
    // Three 1-GPU tasks on two GPUs: the third waits for a free device.
    let t0 = std::time::Instant::now();
    let refs: Vec<_> = (0..3).map(|_| hold::options().num_gpus(1.0).remote(300)).collect();
    flare::get_all(&refs).unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(600), "a third GPU task must wait for a device");
    let a = GpuActor::remote().num_gpus(1.0).spawn().unwrap();
    let (ids, visible) = a.ids().get().unwrap();
    assert_eq!(ids.len(), 1);
    assert_eq!(visible, ids[0].to_string());
    flare::kill(&a).unwrap();
}

#[test]
fn custom_resources_are_scheduled() {
    let _gpus = setup();
    let t0 = std::time::Instant::now();
    let refs: Vec<_> = (0..4).map(|_| hold::options().resources("accel", 1.0).remote(250)).collect();
    flare::get_all(&refs).unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(500), "only two `accel` tasks fit at a time");
    let e = hold::options().resources("tpu", 1.0).remote(1).get().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Infeasible);
    assert!(e.to_string().contains("tpu"), "{e}");
}

#[test]
fn strict_spread_on_one_node_fails_clearly() {
    let _gpus = setup();
    let pg = flare::placement_group(&[Bundle::cpus(1.0), Bundle::cpus(1.0)], PlacementStrategy::StrictSpread).unwrap();
    let e = pg.ready().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Infeasible);
    assert!(e.to_string().contains("STRICT_SPREAD needs 2 distinct nodes"), "{e}");
    let e = hold::options().scheduling_strategy(pg.bundle(Some(0))).remote(1).get().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Infeasible);
}

#[test]
fn placement_groups_reserve_bundles_atomically() {
    let _gpus = setup();
    let pg =
        flare::placement_group(&[Bundle::gpus(1.0).with_cpus(1.0), Bundle::gpus(1.0).with_cpus(1.0)], PlacementStrategy::Pack)
            .unwrap();
    pg.ready().unwrap();
    let res = flare::cluster_resources().unwrap();
    assert_eq!(res.available.get("GPU"), 0.0, "both GPUs are reserved by the group");
    // Work outside the group cannot get a GPU now, and waits.
    let outside = gpu_ids::options().num_gpus(1.0).remote();
    assert!(outside.get_timeout(Duration::from_millis(300)).is_err());
    // Work inside bundle 1 gets that bundle's device.
    let (ids, _) = gpu_ids::options().num_gpus(1.0).scheduling_strategy(pg.bundle(Some(1))).remote().get().unwrap();
    let info = flare::list(StateQuery::PlacementGroups).unwrap().placement_groups;
    let me = info.iter().find(|p| p.id == pg.id()).unwrap();
    assert_eq!(ids, me.bundle_gpu_ids[1]);
    // Asking a bundle for more than it holds is infeasible at once.
    let e = gpu_ids::options().num_gpus(2.0).scheduling_strategy(pg.bundle(Some(0))).remote().get().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Infeasible);
    // Removal frees the bundles and the waiting task runs.
    flare::remove_placement_group(&pg).unwrap();
    assert_eq!(outside.get_timeout(Duration::from_secs(10)).unwrap().0.len(), 1);
    assert!(eventually(Duration::from_secs(2), || flare::cluster_resources().unwrap().available.get("GPU") == 2.0));
    // An impossible group says so.
    let too_big = flare::placement_group(&[Bundle::gpus(3.0)], PlacementStrategy::StrictPack).unwrap();
    assert_eq!(too_big.ready().unwrap_err().kind(), ErrorKind::Infeasible);
}
