//! Where work runs: pure placement decisions over a view of the nodes, behind one trait.
//!
//! Nothing here does I/O or holds locks; the node calls these functions with its own state and
//! applies the result. That keeps the policies small and property-testable (Ray's
//! `ClusterResourceScheduler` policies are shaped the same way).

use crate::ids::{NodeId, PlacementGroupId};
use crate::resources::{ResourcePool, ResourceSet};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};

/// How a task or actor chooses its node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SchedulingStrategy {
    /// Hybrid: the local node while it is below the spread threshold, then the least loaded.
    #[default]
    Default,
    /// Spread over the nodes that fit: the least utilized, round robin among equals.
    Spread,
    /// A given node; `soft` falls back to the default policy when it cannot take the work.
    NodeAffinity { node: NodeId, soft: bool },
    /// A bundle of a placement group (`None`: any bundle with room).
    PlacementGroup { pg: PlacementGroupId, bundle_index: Option<usize> },
}

/// How a placement group lays its bundles over nodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PlacementStrategy {
    /// As few nodes as possible (best effort).
    #[default]
    Pack,
    /// As many nodes as possible (best effort).
    Spread,
    /// All bundles on one node, or fail.
    StrictPack,
    /// Every bundle on a different node, or fail.
    StrictSpread,
}

/// The outcome of a scheduling decision.
#[derive(Clone, Debug, PartialEq)]
pub enum SchedulingResult {
    /// Run it on this node now.
    Scheduled(NodeId),
    /// It fits some node's total but not what is free now: wait for resources.
    Queued,
    /// No node can ever run it; the message says what is missing and what to do.
    Infeasible(String),
}

/// The outcome of placing a placement group's bundles.
#[derive(Clone, Debug, PartialEq)]
pub enum BundlePlacement {
    /// One node per bundle, in bundle order.
    Placed(Vec<NodeId>),
    Queued,
    Infeasible(String),
}

/// One node as the scheduler sees it.
#[derive(Clone, Copy, Debug)]
pub struct NodeView<'a> {
    pub id: NodeId,
    pub pool: &'a ResourcePool,
}

/// A node-choosing policy.
pub trait SchedulingPolicy: Send + Sync {
    /// Chooses a node for `req` among `nodes`; `local` is the submitter's node.
    fn schedule(&self, req: &ResourceSet, nodes: &[NodeView<'_>], local: NodeId) -> SchedulingResult;
}

/// Explains why nothing can ever run `req`, or `None` when some node could.
pub fn infeasibility(req: &ResourceSet, nodes: &[NodeView<'_>]) -> Option<String> {
    if nodes.iter().any(|n| n.pool.could_fit(req).is_ok()) {
        return None;
    }
    // Name the node that comes closest: the one short of the fewest resources.
    let closest = nodes.iter().min_by_key(|n| n.pool.could_fit(req).err().map(|m| m.iter().count()).unwrap_or(0));
    match closest {
        Some(n) => Some(format!(
            "needs {req} but the largest node has {} (short of {}); lower the request or add a node that has it",
            n.pool.total(),
            n.pool.could_fit(req).err().unwrap_or_default()
        )),
        None => Some(format!("needs {req} but the cluster has no nodes")),
    }
}

fn fits_now(req: &ResourceSet, pool: &ResourcePool) -> bool {
    pool.clone().try_allocate(req).is_some()
}

/// Ray's default: pack onto the local node until its utilization passes `spread_threshold`,
/// then take the least utilized node that fits.
pub struct HybridPolicy {
    pub spread_threshold: f64,
}

impl Default for HybridPolicy {
    fn default() -> Self {
        HybridPolicy { spread_threshold: 0.5 }
    }
}

impl SchedulingPolicy for HybridPolicy {
    fn schedule(&self, req: &ResourceSet, nodes: &[NodeView<'_>], local: NodeId) -> SchedulingResult {
        if let Some(why) = infeasibility(req, nodes) {
            return SchedulingResult::Infeasible(why);
        }
        if let Some(n) = nodes.iter().find(|n| n.id == local) {
            if n.pool.utilization() < self.spread_threshold && fits_now(req, n.pool) {
                return SchedulingResult::Scheduled(n.id);
            }
        }
        nodes
            .iter()
            .filter(|n| fits_now(req, n.pool))
            .min_by(|a, b| {
                let key = |n: &NodeView<'_>| (n.pool.utilization(), n.id != local);
                key(a).partial_cmp(&key(b)).unwrap_or(std::cmp::Ordering::Equal)
            })
            .map(|n| SchedulingResult::Scheduled(n.id))
            .unwrap_or(SchedulingResult::Queued)
    }
}

/// SPREAD: the least utilized node that fits now, round robin among equals.
#[derive(Default)]
pub struct SpreadPolicy {
    next: AtomicUsize,
}

impl SchedulingPolicy for SpreadPolicy {
    fn schedule(&self, req: &ResourceSet, nodes: &[NodeView<'_>], _local: NodeId) -> SchedulingResult {
        if let Some(why) = infeasibility(req, nodes) {
            return SchedulingResult::Infeasible(why);
        }
        // The least utilized node that fits now; ties go round robin, so a burst of work lands
        // on as many nodes as there are.
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let len = nodes.len();
        (0..len)
            .map(|i| &nodes[(start + i) % len])
            .enumerate()
            .filter(|(_, n)| fits_now(req, n.pool))
            .min_by(|(i, a), (j, b)| a.pool.utilization().total_cmp(&b.pool.utilization()).then(i.cmp(j)))
            .map(|(_, n)| SchedulingResult::Scheduled(n.id))
            .unwrap_or(SchedulingResult::Queued)
    }
}

/// A chosen node; `soft` falls back to `fallback` when that node is gone or can never fit.
pub fn node_affinity(
    req: &ResourceSet,
    nodes: &[NodeView<'_>],
    target: NodeId,
    soft: bool,
    fallback: &dyn SchedulingPolicy,
    local: NodeId,
) -> SchedulingResult {
    match nodes.iter().find(|n| n.id == target) {
        Some(n) if n.pool.could_fit(req).is_ok() => {
            if fits_now(req, n.pool) {
                SchedulingResult::Scheduled(n.id)
            } else if soft && nodes.iter().any(|m| fits_now(req, m.pool)) {
                fallback.schedule(req, nodes, local)
            } else {
                SchedulingResult::Queued
            }
        }
        _ if soft => fallback.schedule(req, nodes, local),
        Some(_) => SchedulingResult::Infeasible(format!(
            "node affinity (hard) to {target}, which can never fit {req}; use a soft affinity or a smaller request"
        )),
        None => SchedulingResult::Infeasible(format!(
            "node affinity (hard) to {target}, which is not in the cluster; use a soft affinity or a live node"
        )),
    }
}

/// Places all bundles at once or none (gang scheduling), honoring the strategy.
pub fn place_bundles(bundles: &[ResourceSet], strategy: PlacementStrategy, nodes: &[NodeView<'_>]) -> BundlePlacement {
    if bundles.is_empty() {
        return BundlePlacement::Infeasible("a placement group needs at least one bundle".to_string());
    }
    let now: Vec<(NodeId, ResourcePool)> = nodes.iter().map(|n| (n.id, n.pool.clone())).collect();
    if let Some(placed) = try_place(bundles, strategy, now) {
        return BundlePlacement::Placed(placed);
    }
    // It does not fit what is free; would it fit an idle cluster?
    let idle: Vec<(NodeId, ResourcePool)> =
        nodes.iter().map(|n| (n.id, ResourcePool::new(n.pool.total().clone()).unwrap_or_else(|_| n.pool.clone()))).collect();
    if try_place(bundles, strategy, idle).is_some() {
        return BundlePlacement::Queued;
    }
    let why = match strategy {
        PlacementStrategy::StrictSpread if bundles.len() > nodes.len() => format!(
            "STRICT_SPREAD needs {} distinct nodes (one per bundle) but the cluster has {}; add nodes or use SPREAD",
            bundles.len(),
            nodes.len()
        ),
        PlacementStrategy::StrictPack => {
            let mut sum = ResourceSet::new();
            bundles.iter().for_each(|b| sum.add(b));
            format!("STRICT_PACK needs {sum} on one node and no node has that much; use PACK or smaller bundles")
        }
        _ => {
            format!("the bundles {bundles:?} cannot fit on the cluster's nodes even when idle; use smaller bundles or add nodes")
        }
    };
    BundlePlacement::Infeasible(why)
}

fn try_place(
    bundles: &[ResourceSet],
    strategy: PlacementStrategy,
    mut pools: Vec<(NodeId, ResourcePool)>,
) -> Option<Vec<NodeId>> {
    let mut placed = Vec::with_capacity(bundles.len());
    match strategy {
        PlacementStrategy::StrictPack | PlacementStrategy::Pack => {
            // First try a single node for everything.
            for (id, pool) in &pools {
                let mut p = pool.clone();
                if bundles.iter().all(|b| p.try_allocate(b).is_some()) {
                    return Some(vec![*id; bundles.len()]);
                }
            }
            if strategy == PlacementStrategy::StrictPack {
                return None;
            }
            // Best effort: fill nodes in order.
            for b in bundles {
                let (id, pool) = pools.iter_mut().find(|(_, p)| fits_now(b, p))?;
                pool.try_allocate(b)?;
                placed.push(*id);
            }
        }
        PlacementStrategy::Spread | PlacementStrategy::StrictSpread => {
            let mut used: Vec<NodeId> = Vec::new();
            for b in bundles {
                let fresh = pools.iter_mut().find(|(id, p)| !used.contains(id) && fits_now(b, p));
                let chosen = match fresh {
                    Some(x) => x,
                    None if strategy == PlacementStrategy::Spread => pools.iter_mut().find(|(_, p)| fits_now(b, p))?,
                    None => return None,
                };
                chosen.1.try_allocate(b)?;
                used.push(chosen.0);
                placed.push(chosen.0);
            }
        }
    }
    Some(placed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{CPU, GPU};

    fn set(pairs: &[(&str, f64)]) -> ResourceSet {
        let mut r = ResourceSet::new();
        for (k, v) in pairs {
            r.set(k, *v).unwrap();
        }
        r
    }

    fn pools(n: usize, cpus: f64, gpus: f64) -> Vec<ResourcePool> {
        (0..n).map(|_| ResourcePool::new(set(&[(CPU, cpus), (GPU, gpus)])).unwrap()).collect()
    }

    fn views(p: &[ResourcePool]) -> Vec<NodeView<'_>> {
        p.iter().enumerate().map(|(i, pool)| NodeView { id: NodeId(i as u32), pool }).collect()
    }

    #[test]
    fn hybrid_prefers_local_then_queues_then_reports_infeasible() {
        let mut p = pools(1, 2.0, 1.0);
        let policy = HybridPolicy::default();
        assert_eq!(policy.schedule(&set(&[(CPU, 1.0)]), &views(&p), NodeId(0)), SchedulingResult::Scheduled(NodeId(0)));
        p[0].try_allocate(&set(&[(CPU, 2.0)])).unwrap();
        assert_eq!(policy.schedule(&set(&[(CPU, 1.0)]), &views(&p), NodeId(0)), SchedulingResult::Queued);
        match policy.schedule(&set(&[(GPU, 2.0)]), &views(&p), NodeId(0)) {
            SchedulingResult::Infeasible(why) => assert!(why.contains("GPU: 2"), "{why}"),
            other => panic!("expected infeasible, got {other:?}"),
        }
    }

    #[test]
    fn hybrid_spills_to_least_loaded_node() {
        let mut p = pools(3, 4.0, 0.0);
        p[0].try_allocate(&set(&[(CPU, 3.0)])).unwrap();
        p[1].try_allocate(&set(&[(CPU, 1.0)])).unwrap();
        let r = HybridPolicy::default().schedule(&set(&[(CPU, 1.0)]), &views(&p), NodeId(0));
        assert_eq!(r, SchedulingResult::Scheduled(NodeId(2)));
    }

    #[test]
    fn strict_spread_on_one_node_is_infeasible_with_reason() {
        let p = pools(1, 8.0, 0.0);
        let b = vec![set(&[(CPU, 1.0)]); 2];
        match place_bundles(&b, PlacementStrategy::StrictSpread, &views(&p)) {
            BundlePlacement::Infeasible(why) => assert!(why.contains("2 distinct nodes"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(place_bundles(&b, PlacementStrategy::Spread, &views(&p)), BundlePlacement::Placed(vec![NodeId(0); 2]));
        let p3 = pools(3, 1.0, 0.0);
        assert_eq!(
            place_bundles(&b, PlacementStrategy::StrictSpread, &views(&p3)),
            BundlePlacement::Placed(vec![NodeId(0), NodeId(1)])
        );
    }

    #[test]
    fn strict_pack_needs_one_node() {
        let p = pools(2, 2.0, 0.0);
        let b = vec![set(&[(CPU, 2.0)]); 2];
        assert!(matches!(place_bundles(&b, PlacementStrategy::StrictPack, &views(&p)), BundlePlacement::Infeasible(_)));
        assert_eq!(place_bundles(&b, PlacementStrategy::Pack, &views(&p)), BundlePlacement::Placed(vec![NodeId(0), NodeId(1)]));
    }

    #[test]
    fn bundles_queue_when_busy_but_feasible() {
        let mut p = pools(1, 2.0, 0.0);
        p[0].try_allocate(&set(&[(CPU, 2.0)])).unwrap();
        assert_eq!(place_bundles(&[set(&[(CPU, 1.0)])], PlacementStrategy::Pack, &views(&p)), BundlePlacement::Queued);
    }

    /// Property: whatever the placement answers, applying it never oversubscribes a node, and
    /// STRICT strategies keep their promise.
    #[test]
    fn random_placements_respect_strategies_and_capacity() {
        let mut rng = crate::util::SplitMix64::new(11);
        let strategies =
            [PlacementStrategy::Pack, PlacementStrategy::Spread, PlacementStrategy::StrictPack, PlacementStrategy::StrictSpread];
        for _ in 0..500 {
            let p = pools(1 + rng.below(4) as usize, 1.0 + rng.below(4) as f64, rng.below(3) as f64);
            let n_bundles = 1 + rng.below(4) as usize;
            let bundles: Vec<_> = (0..n_bundles)
                .map(|_| set(&[(CPU, rng.below(3) as f64), (GPU, [0.0, 0.5, 1.0][rng.below(3) as usize])]))
                .collect();
            let strategy = strategies[rng.below(4) as usize];
            if let BundlePlacement::Placed(nodes) = place_bundles(&bundles, strategy, &views(&p)) {
                let mut after = p.clone();
                for (b, n) in bundles.iter().zip(&nodes) {
                    assert!(after[n.0 as usize].try_allocate(b).is_some(), "placement oversubscribes {n}");
                }
                match strategy {
                    PlacementStrategy::StrictPack => assert!(nodes.iter().all(|n| *n == nodes[0])),
                    PlacementStrategy::StrictSpread => {
                        let mut d = nodes.clone();
                        d.sort();
                        d.dedup();
                        assert_eq!(d.len(), nodes.len());
                    }
                    _ => {}
                }
            }
        }
    }
}
