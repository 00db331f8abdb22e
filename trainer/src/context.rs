//! What a rank's train loop sees: its rank and device, its communicator, the config, the
//! checkpoint to resume from, and `report`.

use crate::checkpoint::{Checkpoint, CheckpointData};
use crate::ddp;
use crate::params::Grads;
use crate::{Error, Result};
use flare_collectives::AsyncCommunicator;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::time::Duration;

/// The error a train loop returns (anything that converts, `anyhow::Error` included).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A train loop: runs on every rank. A plain `fn` (or a closure that captures nothing), so
/// every worker process, which runs this same executable, finds it.
pub type TrainLoop = fn(&mut TrainContext) -> std::result::Result<(), BoxError>;

/// What a rank sends to the driver.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[doc(hidden)]
pub enum Event {
    Report { rank: usize, iteration: u64, metrics: String, checkpoint: Option<PathBuf> },
    Finished { rank: usize },
    Failed { rank: usize, error: String },
}

/// One rank's view of the run.
pub struct TrainContext {
    pub(crate) rank: usize,
    pub(crate) local_rank: usize,
    pub(crate) local_world_size: usize,
    pub(crate) world_size: usize,
    pub(crate) node_rank: usize,
    pub(crate) device: flare_gpu::Device,
    pub(crate) comm: AsyncCommunicator,
    pub(crate) config: Value,
    pub(crate) checkpoint: Option<Checkpoint>,
    pub(crate) run_dir: PathBuf,
    pub(crate) attempt: usize,
    pub(crate) iteration: u64,
    pub(crate) bucket_bytes: usize,
    pub(crate) events: Sender<Event>,
    pub(crate) comm_wait: Duration,
}

impl TrainContext {
    pub fn rank(&self) -> usize {
        self.rank
    }
    /// The rank among the ranks on this node.
    pub fn local_rank(&self) -> usize {
        self.local_rank
    }
    pub fn local_world_size(&self) -> usize {
        self.local_world_size
    }
    pub fn world_size(&self) -> usize {
        self.world_size
    }
    /// This node's index among the nodes of the run.
    pub fn node_rank(&self) -> usize {
        self.node_rank
    }
    /// The device this rank trains on: the GPU the scheduler assigned, else the CPU.
    pub fn device(&self) -> flare_gpu::Device {
        self.device
    }
    /// The same device as a candle device.
    pub fn candle_device(&self) -> Result<candle_core::Device> {
        self.device.to_candle().map_err(|e| Error::Config(format!("rank {}: {e}", self.rank)))
    }
    /// The group of all ranks (NCCL with GPUs, else a CPU backend).
    pub fn communicator(&self) -> &AsyncCommunicator {
        &self.comm
    }
    /// The train-loop config the Trainer was given.
    pub fn config_value(&self) -> &Value {
        &self.config
    }
    /// The train-loop config, decoded.
    pub fn config<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_value(self.config.clone()).map_err(|e| Error::Config(format!("the train loop config does not fit: {e}")))
    }
    /// The checkpoint to resume from: the latest one after a restart, or the one the run was
    /// started from.
    pub fn checkpoint(&self) -> Option<&Checkpoint> {
        self.checkpoint.as_ref()
    }
    /// The run's directory (checkpoints, metrics).
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }
    /// 0 on the first attempt, then 1 after the first restart, and so on.
    pub fn attempt(&self) -> usize {
        self.attempt
    }
    /// Reports made so far in the run (counting those before a restore).
    pub fn iteration(&self) -> u64 {
        self.iteration
    }

    /// Reports this iteration's metrics (a JSON object), with a checkpoint to save. Every rank
    /// reports; the driver records rank 0's metrics, and rank 0 writes the checkpoint (ranks
    /// hold the same state in data-parallel training), atomically, in the run directory.
    pub fn report(&mut self, metrics: Value, checkpoint: Option<CheckpointData>) -> Result<()> {
        if !metrics.is_object() {
            return Err(Error::Config(format!("report() takes a JSON object of metrics, got {metrics}")));
        }
        self.iteration += 1;
        let mut path = None;
        if let (Some(data), 0) = (checkpoint, self.rank) {
            let dir = self.run_dir.join(format!("checkpoint_{:06}", self.iteration));
            let data = data.meta("_iteration", self.iteration);
            path = Some(data.write(&dir, &metrics)?.path().to_path_buf());
        }
        let metrics = serde_json::to_string(&metrics).map_err(|e| Error::Config(e.to_string()))?;
        let _ = self.events.send(Event::Report { rank: self.rank, iteration: self.iteration, metrics, checkpoint: path });
        Ok(())
    }

    /// This rank's contiguous share of `n` items (the ranges of all ranks cover `0..n` once).
    pub fn shard_range(&self, n: usize) -> Range<usize> {
        flare_collectives::chunk_range(n, self.world_size, self.rank)
    }
    /// This rank's contiguous share of `items`.
    pub fn shard<'a, T>(&self, items: &'a [T]) -> &'a [T] {
        &items[self.shard_range(items.len())]
    }

    /// Averages gradients over all ranks in buckets (PyTorch DDP's all-reduce); every rank
    /// gets the same bits back.
    pub fn all_reduce_gradients(&mut self, grads: Grads) -> Result<Grads> {
        let (g, waited) = ddp::all_reduce_mean(&self.comm, grads, self.bucket_bytes)?;
        self.comm_wait += waited;
        Ok(g)
    }

    /// Time spent waiting on gradient all-reduces so far.
    pub fn communication_wait(&self) -> Duration {
        self.comm_wait
    }

    /// Averages a scalar over all ranks (a loss or an accuracy for reporting).
    pub fn mean_across_ranks(&self, v: f64) -> Result<f64> {
        if self.world_size == 1 {
            return Ok(v);
        }
        Ok(self.comm.all_reduce(vec![v], flare_collectives::ReduceOp::Mean).wait()?[0])
    }
}
