//! Ray Train's configuration objects: how many ranks and what each gets, where results go,
//! which checkpoints to keep and how many failures to survive.

use flare_core::{Bundle, PlacementStrategy};
use std::path::PathBuf;

/// How the training runs: ranks and their resources.
#[derive(Clone, Debug)]
pub struct ScalingConfig {
    /// Ranks (one actor each). Default 1.
    pub num_workers: usize,
    /// One GPU per rank (unless `resources_per_worker` says otherwise) and NCCL.
    pub use_gpu: bool,
    /// Each rank's bundle. Default: 1 CPU, and 1 GPU with `use_gpu`.
    pub resources_per_worker: Option<Bundle>,
    /// How bundles lie over nodes. Default PACK.
    pub placement_strategy: PlacementStrategy,
}

impl Default for ScalingConfig {
    fn default() -> Self {
        ScalingConfig { num_workers: 1, use_gpu: false, resources_per_worker: None, placement_strategy: PlacementStrategy::Pack }
    }
}

impl ScalingConfig {
    pub fn new(num_workers: usize) -> Self {
        ScalingConfig { num_workers, ..Default::default() }
    }
    pub fn use_gpu(mut self, yes: bool) -> Self {
        self.use_gpu = yes;
        self
    }
    pub fn resources_per_worker(mut self, b: Bundle) -> Self {
        self.resources_per_worker = Some(b);
        self
    }
    pub fn placement_strategy(mut self, s: PlacementStrategy) -> Self {
        self.placement_strategy = s;
        self
    }

    /// Each rank's bundle.
    pub fn bundle(&self) -> Bundle {
        match &self.resources_per_worker {
            Some(b) => b.clone(),
            None => Bundle { num_cpus: 1.0, num_gpus: if self.use_gpu { 1.0 } else { 0.0 }, ..Default::default() },
        }
    }
}

/// Whether a higher or a lower score is better.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ScoreMode {
    #[default]
    Max,
    Min,
}

/// Which checkpoints to keep.
#[derive(Clone, Debug, Default)]
pub struct CheckpointConfig {
    /// Keep at most this many (the best by `score_attribute`, else the newest); `None` keeps all.
    /// The newest is always kept too, as the run resumes from it after a failure.
    pub num_to_keep: Option<usize>,
    /// The reported metric that ranks checkpoints.
    pub score_attribute: Option<String>,
    pub score_mode: ScoreMode,
}

/// How many failures a run survives.
#[derive(Clone, Debug, Default)]
pub struct FailureConfig {
    /// Restarts of the whole group from the latest checkpoint; -1 is unlimited. Default 0.
    pub max_failures: i32,
}

/// Where a run's results go and how it survives failures.
#[derive(Clone, Debug, Default)]
pub struct RunConfig {
    /// The run's directory name. Default `Trainer_<time>`.
    pub name: Option<String>,
    /// The parent directory (shared by all nodes). Default `~/flare_results`.
    pub storage_path: Option<PathBuf>,
    pub checkpoint: CheckpointConfig,
    pub failure: FailureConfig,
    /// Print a progress line and the final table (default true; `FLARE_TRAIN_QUIET=1` turns it off).
    pub verbose: Option<bool>,
}
