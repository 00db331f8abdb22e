//! Flare Train: data-parallel training of candle models, Ray Train's `TorchTrainer` with
//! PyTorch DDP's gradient all-reduce.
//!
//! ```no_run
//! use flare_train::{Trainer, ScalingConfig, TrainContext, BoxError};
//! fn train_loop(ctx: &mut TrainContext) -> Result<(), BoxError> {
//!     for step in 0..10 {
//!         // forward, `params.grads(&loss)`, `ctx.all_reduce_gradients(..)`, `opt.step(..)`
//!         ctx.report(serde_json::json!({"step": step}), None)?;
//!     }
//!     Ok(())
//! }
//! let result = Trainer::new(train_loop).scaling(ScalingConfig::new(2)).fit()?;
//! # Ok::<(), flare_train::Error>(())
//! ```
//!
//! Ranks are [`TrainWorker`] actors in a placement group (one bundle each), so a run is
//! gang-scheduled or not at all. Each runs the train loop with a [`TrainContext`]: its rank
//! and device, a communicator of all ranks, the checkpoint to resume from and `report`.
//! [`optim`] has PyTorch's SGD, Adam and AdamW with their exact update rules.

pub mod checkpoint;
mod config;
mod context;
pub mod ddp;
mod error;
pub mod logger;
pub mod models;
pub mod optim;
mod params;
pub mod parity;
mod trainer;
mod worker;

pub use checkpoint::{Checkpoint, CheckpointData};
pub use config::{CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, ScoreMode};
pub use context::{BoxError, TrainContext, TrainLoop};
pub use error::{Error, Result};
pub use optim::{Adam, Optimizer, Sgd};
pub use params::{Grads, Params};
pub use trainer::{TrainResult, Trainer};
pub use worker::TrainWorker;

/// Losses with PyTorch's reductions (the mean over the batch).
pub mod loss {
    use candle_core::Tensor;

    /// `torch.nn.functional.cross_entropy(logits, target)`: mean over the batch of the
    /// negative log-softmax at the target class (`target`: integer class ids).
    pub fn cross_entropy(logits: &Tensor, target: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::loss::cross_entropy(logits, target)
    }

    /// `torch.nn.functional.mse_loss(pred, target)`: mean over every element.
    pub fn mse(pred: &Tensor, target: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::loss::mse(pred, target)
    }
}
