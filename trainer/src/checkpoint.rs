//! Checkpoints: a directory with the model (`model.safetensors`, torch names), the optimizer
//! state (`optimizer.safetensors`) and `metadata.json` (step, epoch, metrics, optimizer
//! settings). Written to a temporary directory and renamed into place, so a checkpoint that
//! exists is complete.

use crate::optim::{Optimizer, OptimizerState};
use crate::params::Params;
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub const MODEL_FILE: &str = "model.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const METADATA_FILE: &str = "metadata.json";

/// A checkpoint directory on disk.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    path: PathBuf,
}

impl Checkpoint {
    /// A checkpoint at `path` (to resume a new run from it: [`crate::Trainer::resume_from`]).
    pub fn from_directory(path: impl Into<PathBuf>) -> Self {
        Checkpoint { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The metadata written with it (`step`, `epoch`, `metrics`, ...).
    pub fn metadata(&self) -> Result<Value> {
        let p = self.path.join(METADATA_FILE);
        let text = std::fs::read_to_string(&p).map_err(|e| Error::Checkpoint(format!("reading {}: {e}", p.display())))?;
        serde_json::from_str(&text).map_err(|e| Error::Checkpoint(format!("{} is not valid JSON: {e}", p.display())))
    }

    /// The model tensors, on `device`.
    pub fn model_tensors(&self, device: &Device) -> Result<HashMap<String, Tensor>> {
        let p = self.path.join(MODEL_FILE);
        candle_core::safetensors::load(&p, device).map_err(|e| Error::Checkpoint(format!("reading {}: {e}", p.display())))
    }

    /// Loads the model into `params`.
    pub fn load_model(&self, params: &Params) -> Result<()> {
        let device = params.vars().first().map(|v| v.device().clone()).unwrap_or(Device::Cpu);
        params.load(&self.model_tensors(&device)?)
    }

    /// Restores the optimizer's state (its kind must match).
    pub fn load_optimizer(&self, params: &Params, opt: &mut dyn Optimizer) -> Result<()> {
        let meta = self.metadata()?;
        let o = meta
            .get("optimizer")
            .ok_or_else(|| Error::Checkpoint(format!("{} holds no optimizer state", self.path.display())))?;
        let device = params.vars().first().map(|v| v.device().clone()).unwrap_or(Device::Cpu);
        let p = self.path.join(OPTIMIZER_FILE);
        let tensors = if p.exists() {
            candle_core::safetensors::load(&p, &device).map_err(|e| Error::Checkpoint(format!("reading {}: {e}", p.display())))?
        } else {
            HashMap::new()
        };
        let state = OptimizerState {
            kind: o.get("kind").and_then(Value::as_str).unwrap_or("").to_string(),
            step: o.get("step").and_then(Value::as_u64).unwrap_or(0),
            hyper: o.get("hyper").cloned().unwrap_or(Value::Null),
            tensors,
        };
        opt.load_state(params, &state)
    }
}

/// What a rank hands to [`crate::TrainContext::report`] to be saved.
#[derive(Clone, Default)]
pub struct CheckpointData {
    model: HashMap<String, Tensor>,
    optimizer: Option<OptimizerState>,
    metadata: serde_json::Map<String, Value>,
}

impl CheckpointData {
    pub fn new() -> Self {
        CheckpointData::default()
    }
    /// The model's parameters (copied now, so training can go on while it is written).
    pub fn model(mut self, params: &Params) -> Result<Self> {
        self.model = params.tensors()?;
        Ok(self)
    }
    pub fn optimizer(mut self, params: &Params, opt: &dyn Optimizer) -> Result<Self> {
        self.optimizer = Some(opt.state(params)?);
        Ok(self)
    }
    /// Any JSON value under `key` in `metadata.json` (`step`, `epoch`, ...).
    pub fn meta(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.metadata.insert(key.to_string(), value.into());
        self
    }

    /// Writes the checkpoint to `dir` atomically: a temporary sibling directory, then a rename.
    pub fn write(&self, dir: &Path, metrics: &Value) -> Result<Checkpoint> {
        let parent = dir.parent().ok_or_else(|| Error::Checkpoint(format!("{} has no parent directory", dir.display())))?;
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("checkpoint");
        std::fs::create_dir_all(parent).map_err(|e| Error::Checkpoint(format!("creating {}: {e}", parent.display())))?;
        let tmp = parent.join(format!(".tmp_{name}_{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| Error::Checkpoint(format!("creating {}: {e}", tmp.display())))?;
        let io = |what: &Path, e: &dyn std::fmt::Display| Error::Checkpoint(format!("writing {}: {e}", what.display()));
        let model = tmp.join(MODEL_FILE);
        candle_core::safetensors::save(&self.model, &model).map_err(|e| io(&model, &e))?;
        let mut meta = self.metadata.clone();
        meta.insert("metrics".into(), metrics.clone());
        if let Some(o) = &self.optimizer {
            let p = tmp.join(OPTIMIZER_FILE);
            candle_core::safetensors::save(&o.tensors, &p).map_err(|e| io(&p, &e))?;
            meta.insert("optimizer".into(), json!({"kind": o.kind, "step": o.step, "hyper": o.hyper}));
        }
        let mp = tmp.join(METADATA_FILE);
        let text = serde_json::to_string_pretty(&Value::Object(meta)).map_err(|e| io(&mp, &e))?;
        std::fs::write(&mp, text).map_err(|e| io(&mp, &e))?;
        for f in [MODEL_FILE, OPTIMIZER_FILE, METADATA_FILE] {
            if let Ok(file) = std::fs::File::open(tmp.join(f)) {
                let _ = file.sync_all();
            }
        }
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| io(dir, &e))?;
        }
        std::fs::rename(&tmp, dir).map_err(|e| io(dir, &e))?;
        if let Ok(d) = std::fs::File::open(parent) {
            let _ = d.sync_all();
        }
        Ok(Checkpoint::from_directory(dir))
    }
}
