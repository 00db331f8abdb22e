//! Placement groups: bundles of resources reserved atomically (gang scheduling), that tasks
//! and actors are then placed into.

use crate::error::{Error, Result, TaskError};
use crate::ids::PlacementGroupId;
use crate::resources::ResourceSet;
use crate::runtime::runtime;
use crate::scheduler::{PlacementStrategy, SchedulingStrategy};
use crate::spec::{resource_request, PlacementGroupSpec};
use std::time::Duration;

/// One bundle's request, in user units.
#[derive(Clone, Debug, Default)]
pub struct Bundle {
    pub num_cpus: f64,
    pub num_gpus: f64,
    pub memory: u64,
    pub resources: Vec<(String, f64)>,
}

impl Bundle {
    pub fn cpus(n: f64) -> Self {
        Bundle { num_cpus: n, ..Default::default() }
    }
    pub fn gpus(n: f64) -> Self {
        Bundle { num_gpus: n, ..Default::default() }
    }
    pub fn with_cpus(mut self, n: f64) -> Self {
        self.num_cpus = n;
        self
    }
    pub fn with_gpus(mut self, n: f64) -> Self {
        self.num_gpus = n;
        self
    }
    pub fn with_resource(mut self, name: impl Into<String>, amount: f64) -> Self {
        self.resources.push((name.into(), amount));
        self
    }

    fn to_set(&self) -> std::result::Result<ResourceSet, String> {
        resource_request(self.num_cpus, self.num_gpus, self.memory, &self.resources)
    }
}

/// A handle on a placement group. Removing it frees its bundles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlacementGroup {
    id: PlacementGroupId,
    bundles: usize,
}

impl PlacementGroup {
    pub fn id(&self) -> PlacementGroupId {
        self.id
    }

    pub fn bundle_count(&self) -> usize {
        self.bundles
    }

    /// Blocks until every bundle is reserved, or returns why it cannot be.
    pub fn ready(&self) -> Result<()> {
        Ok(runtime()?.core.placement_group_ready(self.id).wait()?)
    }

    /// Like [`ready`](Self::ready), with a deadline; `Ok(false)` if it passed.
    pub fn wait(&self, timeout: Duration) -> Result<bool> {
        match runtime()?.core.placement_group_ready(self.id).wait_timeout(timeout) {
            Some(r) => r.map(|_| true).map_err(Error::from),
            None => Ok(false),
        }
    }

    /// A scheduling strategy that places work in bundle `index` (or any bundle with `None`).
    pub fn bundle(&self, index: Option<usize>) -> SchedulingStrategy {
        SchedulingStrategy::PlacementGroup { pg: self.id, bundle_index: index }
    }
}

/// Reserves `bundles` with `strategy`. Creation is asynchronous: call [`PlacementGroup::ready`].
pub fn placement_group(bundles: &[Bundle], strategy: PlacementStrategy) -> Result<PlacementGroup> {
    placement_group_named(bundles, strategy, None)
}

/// Like [`placement_group`], with a name shown by the state API (and, in a cluster, that
/// other drivers find it by: [`get_placement_group`]).
pub fn placement_group_named(bundles: &[Bundle], strategy: PlacementStrategy, name: Option<&str>) -> Result<PlacementGroup> {
    let opts = PlacementGroupOptions { name: name.map(str::to_string), ..Default::default() };
    placement_group_with(bundles, strategy, &opts)
}

/// A placement group's name and lifetime (Ray's `name=` and `lifetime=`).
#[derive(Clone, Debug, Default)]
pub struct PlacementGroupOptions {
    /// Unique in the cluster while the group lives; other drivers find the group by it.
    pub name: Option<String>,
    /// The group outlives the driver that made it (`lifetime="detached"`) until some driver
    /// removes it; otherwise it goes when that driver ends.
    pub detached: bool,
}

impl PlacementGroupOptions {
    pub fn named(name: impl Into<String>) -> Self {
        PlacementGroupOptions { name: Some(name.into()), detached: false }
    }
    pub fn detached(mut self) -> Self {
        self.detached = true;
        self
    }
}

/// Like [`placement_group`], with a name and a lifetime.
pub fn placement_group_with(
    bundles: &[Bundle],
    strategy: PlacementStrategy,
    opts: &PlacementGroupOptions,
) -> Result<PlacementGroup> {
    let rt = runtime()?;
    if let Some(name) = &opts.name {
        if name.is_empty() || name.len() > 256 {
            return Err(Error::Config(format!("a placement group's name must be 1 to 256 bytes, got {} bytes", name.len())));
        }
    }
    let sets = bundles
        .iter()
        .enumerate()
        .map(|(i, b)| b.to_set().map_err(|m| Error::Config(format!("bundle {i}: {m}"))))
        .collect::<Result<Vec<_>>>()?;
    let id = PlacementGroupId(rt.ids.next_task().0);
    let spec = PlacementGroupSpec { id, bundles: sets, strategy, name: opts.name.clone(), detached: opts.detached };
    rt.core.create_placement_group(spec)?;
    Ok(PlacementGroup { id, bundles: bundles.len() })
}

/// The placement group named `name`: this driver's, or in a cluster any driver's (a detached
/// one outlives its creator), as Ray's `ray.util.get_placement_group`. Work placed in another
/// driver's group shares its bundles with that driver's work.
pub fn get_placement_group(name: &str) -> Result<PlacementGroup> {
    let (id, bundles) = runtime()?.core.get_placement_group(name)?;
    Ok(PlacementGroup { id, bundles })
}

/// Removes a placement group: its bundles are freed, and work placed in them is killed.
pub fn remove_placement_group(pg: &PlacementGroup) -> Result<()> {
    runtime()?.core.remove_placement_group(pg.id).map_err(|e: TaskError| e.into())
}
