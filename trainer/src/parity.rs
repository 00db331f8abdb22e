//! Training the PyTorch reference runs (`../shared/oracles/train` format) through the
//! Trainer, to check that N ranks reproduce torch's losses and final weights.
//!
//! The directory holds `datasets.safetensors` (`<task>.x`, `<task>.y`), `init_weights.safetensors`
//! and `trajectories.json` (`batch_indices`, and per run: task, loss, optimizer, kwargs, losses,
//! final weights file). Every rank takes a contiguous 1/N of each batch, averages gradients
//! with the others and takes the same optimizer step.

use crate::models::Mlp;
use crate::{optim, Params, TrainContext, TrainResult, Trainer};
use crate::{BoxError, Error, Result};
use candle_core::{Module, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// Which run of which oracle directory.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ParityConfig {
    pub oracle: PathBuf,
    pub run: String,
}

/// How close the run came to torch.
#[derive(Clone, Debug)]
pub struct ParityReport {
    pub steps: usize,
    pub loss_max_abs_diff: f64,
    pub weight_max_abs_diff: f64,
    pub final_loss: f64,
    pub result: TrainResult,
}

fn read_json(p: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(p).map_err(|e| Error::Config(format!("reading {}: {e}", p.display())))?;
    serde_json::from_str(&text).map_err(|e| Error::Config(format!("{} is not JSON: {e}", p.display())))
}

/// The run's entry in `trajectories.json`, with its torch kwargs as a JSON object.
pub fn run_spec(oracle: &Path, run: &str) -> Result<(Value, Value)> {
    let traj = read_json(&oracle.join("trajectories.json"))?;
    let runs =
        traj.get("runs").and_then(Value::as_object).ok_or_else(|| Error::Config("trajectories.json has no `runs`".into()))?;
    let spec = runs.get(run).cloned().ok_or_else(|| {
        Error::Config(format!(
            "no run `{run}` in {}; it has: {}",
            oracle.display(),
            runs.keys().cloned().collect::<Vec<_>>().join(", ")
        ))
    })?;
    Ok((traj, spec))
}

fn widths(traj: &Value, params: &std::collections::HashMap<String, Tensor>) -> Result<Vec<usize>> {
    // From the weight shapes: layers.i.weight is [out, in].
    let mut w = Vec::new();
    for i in 0.. {
        match params.get(&format!("layers.{i}.weight")) {
            Some(t) if t.dims().len() == 2 => {
                if i == 0 {
                    w.push(t.dims()[1]);
                }
                w.push(t.dims()[0]);
            }
            Some(t) => return Err(Error::Config(format!("layers.{i}.weight has shape {:?}, not [out, in]", t.dims()))),
            None => break,
        }
    }
    if w.len() < 2 {
        return Err(Error::Config(format!("init_weights.safetensors has no layers.N.weight tensors (model: {})", traj["model"])));
    }
    Ok(w)
}

fn as_f64_vec(v: &Value, what: &str) -> Result<Vec<f64>> {
    v.as_array()
        .and_then(|a| a.iter().map(Value::as_f64).collect::<Option<Vec<_>>>())
        .ok_or_else(|| Error::Config(format!("`{what}` is not a list of numbers")))
}

/// The train loop: one rank's share of the reference run.
pub fn parity_loop(ctx: &mut TrainContext) -> std::result::Result<(), BoxError> {
    let cfg: ParityConfig = ctx.config()?;
    let (traj, spec) = run_spec(&cfg.oracle, &cfg.run)?;
    let task = spec["task"].as_str().ok_or("the run has no `task`")?.to_string();
    let loss_name = spec["loss"].as_str().ok_or("the run has no `loss`")?.to_string();
    let ce = loss_name.starts_with("cross_entropy");
    if !ce && !loss_name.starts_with("mse") {
        return Err(format!("loss `{loss_name}` is not supported (cross_entropy or mse)").into());
    }
    let device = ctx.candle_device()?;
    let init = candle_core::safetensors::load(cfg.oracle.join("init_weights.safetensors"), &device)?;
    let data = candle_core::safetensors::load(cfg.oracle.join("datasets.safetensors"), &device)?;
    let x_all = data.get(&format!("{task}.x")).ok_or_else(|| format!("datasets.safetensors has no `{task}.x`"))?;
    let y_all = data.get(&format!("{task}.y")).ok_or_else(|| format!("datasets.safetensors has no `{task}.y`"))?;
    let vm = candle_nn::VarMap::new();
    let model = Mlp::new(&widths(&traj, &init)?, &vm, &device)?;
    let params = Params::from_varmap(&vm)?;
    params.load(&init)?;
    let mut opt = optim::from_torch(spec["optimizer"].as_str().ok_or("the run has no `optimizer`")?, &spec["opt_kwargs"])?;
    let want_losses = as_f64_vec(&spec["losses"], "losses")?;
    let batches = traj["batch_indices"].as_array().ok_or("trajectories.json has no `batch_indices`")?;
    let steps = want_losses.len().min(batches.len());
    let mut loss_diff = 0.0f64;
    let mut last_loss = f64::NAN;
    for (k, want) in want_losses.iter().enumerate().take(steps) {
        let rows: Vec<u32> =
            batches[k].as_array().ok_or("a batch is not a list")?.iter().map(|v| v.as_u64().unwrap_or(0) as u32).collect();
        let mine = ctx.shard(&rows);
        let idx = Tensor::new(mine, &device)?;
        let (x, y) = (x_all.index_select(&idx, 0)?, y_all.index_select(&idx, 0)?);
        let out = model.forward(&x)?;
        let loss = if ce { crate::loss::cross_entropy(&out, &y)? } else { crate::loss::mse(&out, &y)? };
        // Shards of unequal size (a batch that does not divide by the world size) weigh their
        // mean by their share, so the mean over ranks is still the whole batch's mean.
        let weight = (mine.len() * ctx.world_size()) as f64 / rows.len() as f64;
        let loss = if weight != 1.0 { loss.affine(weight, 0.0)? } else { loss };
        let grads = params.grads(&loss)?;
        let grads = ctx.all_reduce_gradients(grads)?;
        opt.step(&params, &grads)?;
        last_loss = ctx.mean_across_ranks(loss.to_scalar::<f32>()? as f64)?;
        loss_diff = loss_diff.max((last_loss - want).abs());
    }
    let final_file = spec["final_weights_file"].as_str().ok_or("the run has no `final_weights_file`")?;
    let want = candle_core::safetensors::load(cfg.oracle.join(final_file), &device)?;
    let weight_diff = params.max_abs_diff(&want)?;
    // Every rank must end with the same bits: compare a digest of the weights.
    let digest = weights_digest(&params)?;
    let all = ctx.communicator().submit(move |c| {
        use flare_collectives::CommunicatorExt;
        c.all_gather_vec(&[digest])
    });
    let digests = all.wait()?;
    let identical = digests.iter().all(|d| *d == digests[0]);
    ctx.report(
        json!({"steps": steps, "loss_max_abs_diff": loss_diff, "weight_max_abs_diff": weight_diff,
               "final_loss": last_loss, "ranks_identical": identical}),
        None,
    )?;
    Ok(())
}

/// A hash of every parameter's bits.
pub fn weights_digest(params: &Params) -> Result<i64> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (_, v) in params.iter() {
        for x in v.as_tensor().flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()? {
            h ^= x.to_bits() as u64;
            h = h.wrapping_mul(0x100_0000_01b3);
        }
    }
    Ok(h as i64)
}

/// Trains `run` with `world_size` ranks and compares with torch.
pub fn run_parity(oracle: &Path, run: &str, world_size: usize, storage: &Path) -> Result<ParityReport> {
    run_parity_on(oracle, run, world_size, false, storage)
}

/// Like [`run_parity`]; with `use_gpu` every rank trains on its own GPU (NCCL between ranks).
pub fn run_parity_on(oracle: &Path, run: &str, world_size: usize, use_gpu: bool, storage: &Path) -> Result<ParityReport> {
    run_spec(oracle, run)?;
    flare_core::init()?;
    // The reference is tiny: more ranks than CPUs share them (a fraction each), so world size 4
    // runs on a 2-core machine too.
    let cpus = flare_core::cluster_resources()?.total.get(flare_core::resources::CPU);
    let per_rank = ((cpus / world_size as f64) * 1e4).floor() / 1e4;
    let per_rank = per_rank.min(1.0);
    if per_rank <= 0.0 {
        return Err(Error::Infeasible("the cluster has no CPUs".into()));
    }
    let result = Trainer::new(parity_loop)
        .config(ParityConfig { oracle: oracle.to_path_buf(), run: run.to_string() })
        .scaling(
            crate::ScalingConfig::new(world_size)
                .use_gpu(use_gpu)
                .resources_per_worker(flare_core::Bundle::cpus(per_rank).with_gpus(if use_gpu { 1.0 } else { 0.0 })),
        )
        .run_config(crate::RunConfig {
            name: Some(format!("torch_parity_{run}_w{world_size}{}_{}", if use_gpu { "_gpu" } else { "" }, std::process::id())),
            storage_path: Some(storage.to_path_buf()),
            verbose: Some(false),
            ..Default::default()
        })
        .fit()?;
    let m = &result.metrics;
    let get = |k: &str| m.get(k).and_then(Value::as_f64).ok_or_else(|| Error::Config(format!("rank 0 reported no `{k}`: {m}")));
    if m.get("ranks_identical") != Some(&Value::Bool(true)) {
        return Err(Error::Config(format!("ranks ended with different weights: {m}")));
    }
    Ok(ParityReport {
        steps: get("steps")? as usize,
        loss_max_abs_diff: get("loss_max_abs_diff")?,
        weight_max_abs_diff: get("weight_max_abs_diff")?,
        final_loss: get("final_loss")?,
        result,
    })
}
