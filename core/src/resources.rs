//! Resource quantities, requests and a node's (or a bundle's) pool of them.
//!
//! Quantities are fixed point with four decimals (Ray's `FixedPoint`), so that four 0.25-GPU
//! requests add up to exactly one GPU and never drift past it. GPUs are allocated per device:
//! a fractional request lands on one device, a whole request takes whole devices exclusively.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// One unit of a resource in fixed point (1.0 == 10_000).
pub const UNIT: u64 = 10_000;

/// The CPU resource name.
pub const CPU: &str = "CPU";
/// The GPU resource name.
pub const GPU: &str = "GPU";
/// The memory resource name (bytes).
pub const MEMORY: &str = "memory";

/// Converts a user-facing amount to fixed point, rejecting negative and non-finite values.
pub fn to_fixed(name: &str, amount: f64) -> Result<u64, String> {
    if !amount.is_finite() || amount < 0.0 {
        return Err(format!("resource `{name}` must be a finite, non-negative number, got {amount}"));
    }
    let fixed = (amount * UNIT as f64).round();
    if fixed > (u64::MAX / 4) as f64 {
        return Err(format!("resource `{name}` = {amount} is too large"));
    }
    Ok(fixed as u64)
}

fn fmt_fixed(v: u64) -> String {
    if v % UNIT == 0 {
        format!("{}", v / UNIT)
    } else {
        let s = format!("{:.4}", v as f64 / UNIT as f64);
        s.trim_end_matches('0').to_string()
    }
}

/// Bytes in the largest binary unit that keeps the number at least 1 (e.g. `23.5 GiB`).
pub fn fmt_bytes(b: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", units[i])
    }
}

/// A set of named resource amounts in fixed point; absent names are zero.
#[derive(Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ResourceSet(BTreeMap<String, u64>);

impl ResourceSet {
    pub fn new() -> Self {
        ResourceSet(BTreeMap::new())
    }

    /// Sets `name` to `amount` (user units, e.g. 0.25 GPUs). Zero removes it.
    pub fn set(&mut self, name: &str, amount: f64) -> Result<(), String> {
        let fixed = to_fixed(name, amount)?;
        self.set_fixed(name, fixed);
        Ok(())
    }

    pub fn set_fixed(&mut self, name: &str, fixed: u64) {
        if fixed == 0 {
            self.0.remove(name);
        } else {
            self.0.insert(name.to_string(), fixed);
        }
    }

    pub fn get_fixed(&self, name: &str) -> u64 {
        self.0.get(name).copied().unwrap_or(0)
    }

    /// The amount of `name` in user units.
    pub fn get(&self, name: &str) -> f64 {
        self.get_fixed(name) as f64 / UNIT as f64
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.0.iter().map(|(k, v)| (k.as_str(), *v))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether every amount here is at most the same amount in `other`.
    pub fn is_subset_of(&self, other: &ResourceSet) -> bool {
        self.iter().all(|(k, v)| other.get_fixed(k) >= v)
    }

    /// The names and amounts that `other` lacks to cover `self`.
    pub fn shortfall(&self, other: &ResourceSet) -> ResourceSet {
        let mut missing = ResourceSet::new();
        for (k, v) in self.iter() {
            let have = other.get_fixed(k);
            if have < v {
                missing.set_fixed(k, v);
            }
        }
        missing
    }

    pub fn add(&mut self, other: &ResourceSet) {
        for (k, v) in other.iter() {
            let cur = self.get_fixed(k);
            self.set_fixed(k, cur + v);
        }
    }

    /// Subtracts `other`; callers check [`is_subset_of`](Self::is_subset_of) first.
    pub fn sub(&mut self, other: &ResourceSet) {
        for (k, v) in other.iter() {
            let cur = self.get_fixed(k);
            debug_assert!(cur >= v, "resource `{k}` would go negative");
            self.set_fixed(k, cur.saturating_sub(v));
        }
    }
}

impl fmt::Debug for ResourceSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for ResourceSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{")?;
        for (i, (k, v)) in self.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            if k == MEMORY {
                write!(f, "{k}: {}", fmt_bytes(v / UNIT))?;
            } else {
                write!(f, "{k}: {}", fmt_fixed(v))?;
            }
        }
        write!(f, "}}")
    }
}

/// What was taken from a pool for one task, actor or bundle; given back with [`ResourcePool::release`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    /// Everything taken, GPUs included as a total.
    pub resources: ResourceSet,
    /// The GPU devices taken and how much of each (fixed point), sorted by device id.
    pub gpus: Vec<(u32, u64)>,
    /// The node agent's grant it is held under, on another node than the driver's (0: none).
    #[serde(default)]
    pub lease: u64,
}

impl Allocation {
    /// Whether two allocations take the same resources and the same GPU devices (their grants aside).
    pub fn same_as(&self, other: &Allocation) -> bool {
        self.resources == other.resources && self.gpus == other.gpus
    }

    /// Adds `other` (resources, and GPU devices by id).
    pub fn add(&mut self, other: &Allocation) {
        self.resources.add(&other.resources);
        for &(id, amount) in &other.gpus {
            match self.gpus.iter_mut().find(|(i, _)| *i == id) {
                Some((_, a)) => *a += amount,
                None => self.gpus.push((id, amount)),
            }
        }
        self.gpus.sort_unstable();
    }

    /// The device ids this allocation may use (what `CUDA_VISIBLE_DEVICES` shows).
    pub fn gpu_ids(&self) -> Vec<u32> {
        self.gpus.iter().map(|(id, _)| *id).collect()
    }
}

/// One GPU device of a pool: its id and how much of it is free and in total (fixed point).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuSlot {
    pub id: u32,
    pub available: u64,
    pub capacity: u64,
}

/// A pool of resources: a node's, or a placement-group bundle's (which holds exactly what was
/// reserved for it, GPU devices included).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourcePool {
    total: ResourceSet,
    available: ResourceSet,
    gpus: Vec<GpuSlot>,
    /// What others hold in it, as far as it was free when they were last said (a driver's view
    /// of another node, whose agent grants its resources to every driver).
    #[serde(default)]
    external: Allocation,
}

impl ResourcePool {
    /// A node pool: `total` with its GPU amount split into whole devices `0..n`.
    pub fn new(total: ResourceSet) -> Result<Self, String> {
        let gpu = total.get_fixed(GPU);
        if gpu % UNIT != 0 {
            return Err(format!("a node declares whole GPUs only, got {}", fmt_fixed(gpu)));
        }
        let gpus = (0..(gpu / UNIT) as u32).map(|id| GpuSlot { id, available: UNIT, capacity: UNIT }).collect();
        Ok(ResourcePool { available: total.clone(), total, gpus, external: Allocation::default() })
    }

    /// A bundle pool made of exactly what `alloc` took from its parent.
    pub fn from_allocation(alloc: &Allocation) -> Self {
        let gpus = alloc.gpus.iter().map(|&(id, amount)| GpuSlot { id, available: amount, capacity: amount }).collect();
        ResourcePool { total: alloc.resources.clone(), available: alloc.resources.clone(), gpus, external: Allocation::default() }
    }

    pub fn total(&self) -> &ResourceSet {
        &self.total
    }

    pub fn available(&self) -> &ResourceSet {
        &self.available
    }

    pub fn gpu_slots(&self) -> &[GpuSlot] {
        &self.gpus
    }

    /// Checks that a request is well formed (a GPU amount above one is whole).
    pub fn validate_request(req: &ResourceSet) -> Result<(), String> {
        let gpu = req.get_fixed(GPU);
        if gpu > UNIT && gpu % UNIT != 0 {
            return Err(format!(
                "num_gpus = {} is not allowed: ask for a fraction of one GPU (at most 1) or a whole number of GPUs",
                fmt_fixed(gpu)
            ));
        }
        Ok(())
    }

    /// Whether the request could ever fit in this pool when nothing else runs; `Err` names what is missing.
    pub fn could_fit(&self, req: &ResourceSet) -> Result<(), ResourceSet> {
        let missing = req.shortfall(&self.total);
        if !missing.is_empty() {
            return Err(missing);
        }
        let gpu = req.get_fixed(GPU);
        let fits_gpu = if gpu == 0 {
            true
        } else if gpu <= UNIT {
            self.gpus.iter().any(|g| g.capacity >= gpu)
        } else {
            self.gpus.iter().filter(|g| g.capacity == UNIT).count() as u64 >= gpu / UNIT
        };
        if fits_gpu {
            Ok(())
        } else {
            let mut m = ResourceSet::new();
            m.set_fixed(GPU, gpu);
            Err(m)
        }
    }

    /// Takes the request if it fits now. Fractional GPU requests go to the fullest device that
    /// still fits them (packing); whole requests take whole free devices, lowest ids first.
    pub fn try_allocate(&mut self, req: &ResourceSet) -> Option<Allocation> {
        if !req.is_subset_of(&self.available) {
            return None;
        }
        let gpu = req.get_fixed(GPU);
        let mut gpus = Vec::new();
        if gpu > 0 && gpu < UNIT {
            let slot = self.gpus.iter_mut().filter(|g| g.available >= gpu).min_by_key(|g| (g.available, g.id))?;
            slot.available -= gpu;
            gpus.push((slot.id, gpu));
        } else if gpu >= UNIT {
            let want = (gpu / UNIT) as usize;
            let free: Vec<usize> = (0..self.gpus.len())
                .filter(|&i| self.gpus[i].available == UNIT && self.gpus[i].capacity == UNIT)
                .take(want)
                .collect();
            if free.len() < want {
                return None;
            }
            for i in free {
                self.gpus[i].available = 0;
                gpus.push((self.gpus[i].id, UNIT));
            }
        }
        self.available.sub(req);
        Some(Allocation { resources: req.clone(), gpus, lease: 0 })
    }

    /// Takes exactly `alloc` (its resources and its GPU devices) if all of it is free now.
    pub fn try_take(&mut self, alloc: &Allocation) -> bool {
        if !alloc.resources.is_subset_of(&self.available) {
            return false;
        }
        let gpu_sum: u64 = alloc.gpus.iter().map(|(_, a)| a).sum();
        if gpu_sum != alloc.resources.get_fixed(GPU) {
            return false;
        }
        let fits = alloc.gpus.iter().all(|&(id, amount)| self.gpus.iter().any(|g| g.id == id && g.available >= amount));
        if !fits {
            return false;
        }
        self.available.sub(&alloc.resources);
        for &(id, amount) in &alloc.gpus {
            if let Some(g) = self.gpus.iter_mut().find(|g| g.id == id) {
                g.available -= amount;
            }
        }
        true
    }

    /// Says what others hold in this pool now: gives back what the last call took and takes
    /// `others`, each resource and GPU device as far as it is free. Allocations of this pool's
    /// owner go on as before; the pool's availability is then what is free for everyone.
    pub fn set_external(&mut self, others: &Allocation) {
        let old = std::mem::take(&mut self.external);
        self.release(&old);
        let mut took = Allocation::default();
        for (k, v) in others.resources.iter() {
            let x = v.min(self.available.get_fixed(k));
            if x > 0 && k != GPU {
                took.resources.set_fixed(k, x);
            }
        }
        for &(id, amount) in &others.gpus {
            if let Some(g) = self.gpus.iter_mut().find(|g| g.id == id) {
                let x = amount.min(g.available);
                if x > 0 {
                    g.available -= x;
                    took.gpus.push((id, x));
                }
            }
        }
        let gpu: u64 = took.gpus.iter().map(|(_, a)| a).sum();
        if gpu > 0 {
            took.resources.set_fixed(GPU, gpu);
        }
        // The GPU devices were taken above; the rest (the GPU total included) here.
        self.available.sub(&took.resources);
        self.external = took;
    }

    /// Takes `others` again after this pool's owner gave something back, if the last
    /// [`set_external`](Self::set_external) could not take all of it (it was in use here).
    pub fn retake_external(&mut self, others: &Allocation) {
        if !self.external.same_as(others) {
            self.set_external(others);
        }
    }

    /// What others hold in this pool, as [`set_external`](Self::set_external) took it.
    pub fn external(&self) -> &Allocation {
        &self.external
    }

    /// What this pool's own allocations hold now (others' share left out).
    pub fn own_used(&self) -> ResourceSet {
        let mut used = self.total.clone();
        used.sub(&self.available);
        used.sub(&self.external.resources);
        used
    }

    /// Gives back what [`try_allocate`](Self::try_allocate) took.
    pub fn release(&mut self, alloc: &Allocation) {
        self.available.add(&alloc.resources);
        for &(id, amount) in &alloc.gpus {
            if let Some(slot) = self.gpus.iter_mut().find(|g| g.id == id) {
                slot.available = (slot.available + amount).min(slot.capacity);
            }
        }
    }

    /// The fraction of this pool in use, by its busiest resource (0.0 idle, 1.0 full).
    pub fn utilization(&self) -> f64 {
        self.total.iter().map(|(k, total)| 1.0 - self.available.get_fixed(k) as f64 / total.max(1) as f64).fold(0.0, f64::max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(pairs: &[(&str, f64)]) -> ResourceSet {
        let mut r = ResourceSet::new();
        for (k, v) in pairs {
            r.set(k, *v).unwrap();
        }
        r
    }

    #[test]
    fn four_quarters_pack_on_one_gpu() {
        let mut pool = ResourcePool::new(req(&[(CPU, 8.0), (GPU, 2.0)])).unwrap();
        let allocs: Vec<_> = (0..4).map(|_| pool.try_allocate(&req(&[(GPU, 0.25)])).unwrap()).collect();
        assert!(allocs.iter().all(|a| a.gpu_ids() == vec![0]), "{allocs:?}");
        // The fifth quarter goes to the second device, and a whole GPU no longer fits anywhere.
        let fifth = pool.try_allocate(&req(&[(GPU, 0.25)])).unwrap();
        assert_eq!(fifth.gpu_ids(), vec![1]);
        assert!(pool.try_allocate(&req(&[(GPU, 1.0)])).is_none());
        for a in &allocs {
            pool.release(a);
        }
        assert_eq!(pool.try_allocate(&req(&[(GPU, 1.0)])).unwrap().gpu_ids(), vec![0]);
    }

    #[test]
    fn exact_takes_and_others_share_of_a_view() {
        let mut agent = ResourcePool::new(req(&[(CPU, 4.0), (GPU, 2.0)])).unwrap();
        let mut view = agent.clone();
        // A driver's view picks GPU 0; the agent grants exactly that, once.
        let a = view.try_allocate(&req(&[(CPU, 1.0), (GPU, 1.0)])).unwrap();
        assert_eq!(a.gpu_ids(), vec![0]);
        assert!(agent.try_take(&a));
        assert!(!agent.try_take(&a), "GPU 0 is taken");
        // An allocation whose devices do not add up to its GPU amount is refused.
        let mut bad = a.clone();
        bad.gpus = vec![(1, UNIT / 2)];
        assert!(!agent.try_take(&bad));
        // Others hold 2 CPUs and GPU 1: the view has 1 CPU and no GPU left.
        let others = Allocation { resources: req(&[(CPU, 2.0), (GPU, 1.0)]), gpus: vec![(1, UNIT)], ..Default::default() };
        view.set_external(&others);
        assert_eq!(view.available(), &req(&[(CPU, 1.0), (GPU, 0.0)]));
        assert!(view.try_allocate(&req(&[(GPU, 0.5)])).is_none());
        assert_eq!(view.own_used(), req(&[(CPU, 1.0), (GPU, 1.0)]));
        // Others saying more than is free take only what is free, and give back only that.
        let mut more = others.clone();
        more.resources = req(&[(CPU, 9.0), (GPU, 1.0)]);
        view.set_external(&more);
        assert_eq!(view.available().get(CPU), 0.0);
        view.release(&a);
        view.set_external(&Allocation::default());
        assert_eq!(view.available(), view.total(), "everything back, nothing twice");
        assert_eq!(view.gpu_slots().iter().map(|g| g.available).sum::<u64>(), 2 * UNIT);
    }

    #[test]
    fn whole_gpus_are_exclusive() {
        let mut pool = ResourcePool::new(req(&[(GPU, 2.0)])).unwrap();
        let a = pool.try_allocate(&req(&[(GPU, 1.0)])).unwrap();
        let b = pool.try_allocate(&req(&[(GPU, 1.0)])).unwrap();
        assert_ne!(a.gpu_ids(), b.gpu_ids());
        assert!(pool.try_allocate(&req(&[(GPU, 0.1)])).is_none());
    }

    #[test]
    fn bad_requests_are_rejected_with_reasons() {
        assert!(to_fixed(CPU, -1.0).unwrap_err().contains("non-negative"));
        assert!(to_fixed(CPU, f64::NAN).is_err());
        assert!(ResourcePool::validate_request(&req(&[(GPU, 1.5)])).unwrap_err().contains("whole number"));
        let pool = ResourcePool::new(req(&[(CPU, 2.0), (GPU, 1.0)])).unwrap();
        assert_eq!(pool.could_fit(&req(&[(GPU, 2.0)])).unwrap_err(), req(&[(GPU, 2.0)]));
        assert_eq!(format!("{}", req(&[(CPU, 1.0), (GPU, 0.25)])), "{CPU: 1, GPU: 0.25}");
    }

    #[test]
    fn bundle_pool_keeps_device_ids() {
        let mut node = ResourcePool::new(req(&[(CPU, 4.0), (GPU, 4.0)])).unwrap();
        let _first = node.try_allocate(&req(&[(GPU, 1.0)])).unwrap();
        let bundle_alloc = node.try_allocate(&req(&[(CPU, 1.0), (GPU, 1.0)])).unwrap();
        let mut bundle = ResourcePool::from_allocation(&bundle_alloc);
        let inner = bundle.try_allocate(&req(&[(GPU, 0.5)])).unwrap();
        assert_eq!(inner.gpu_ids(), bundle_alloc.gpu_ids());
        assert!(bundle.try_allocate(&req(&[(CPU, 2.0)])).is_none());
    }

    /// Property: whatever sequence of allocations and releases, no resource and no device is
    /// ever oversubscribed, and releasing everything restores the pool.
    #[test]
    fn random_allocations_never_oversubscribe() {
        let mut rng = crate::util::SplitMix64::new(7);
        for _case in 0..300 {
            let n_gpus = rng.below(5) as f64;
            let total = req(&[(CPU, 1.0 + rng.below(8) as f64), (GPU, n_gpus), ("custom", 3.0)]);
            let mut pool = ResourcePool::new(total.clone()).unwrap();
            let fresh = pool.clone();
            let mut held = Vec::new();
            for _op in 0..60 {
                if rng.below(3) == 0 && !held.is_empty() {
                    let i = rng.below(held.len() as u64) as usize;
                    let a: Allocation = held.swap_remove(i);
                    pool.release(&a);
                } else {
                    let gpu = [0.0, 0.1, 0.25, 0.5, 1.0, 2.0][rng.below(6) as usize];
                    let r = req(&[(CPU, rng.below(3) as f64 * 0.5), (GPU, gpu), ("custom", rng.below(2) as f64)]);
                    if let Some(a) = pool.try_allocate(&r) {
                        held.push(a);
                    }
                }
                let mut used = ResourceSet::new();
                let mut per_gpu = vec![0u64; n_gpus as usize];
                for a in &held {
                    used.add(&a.resources);
                    for &(id, amt) in &a.gpus {
                        per_gpu[id as usize] += amt;
                    }
                }
                assert!(used.is_subset_of(&total), "oversubscribed: {used} of {total}");
                assert!(per_gpu.iter().all(|&g| g <= UNIT), "a device is oversubscribed: {per_gpu:?}");
                let mut sum = pool.available().clone();
                sum.add(&used);
                assert_eq!(sum, total);
            }
            for a in held.drain(..) {
                pool.release(&a);
            }
            assert_eq!(pool, fresh);
        }
    }
}
