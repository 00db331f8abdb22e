//! `flare bench train`: the time of one data-parallel training step, broken into forward,
//! backward, gradient all-reduce and optimizer, at each world size. `benches/vs_torch_ddp.sh`
//! runs PyTorch DDP (gloo) on the same MLP and batch beside it.

use candle_core::{DType, Device, Module, Tensor};
use flare::train::models::{Loss, Mlp};
use flare::train::{Adam, BoxError, Optimizer, Params, RunConfig, ScalingConfig, TrainContext, Trainer};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::time::Instant;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Args {
    pub ranks: Vec<usize>,
    pub widths: Vec<usize>,
    /// The global batch, split over the ranks.
    pub batch: usize,
    pub steps: usize,
    pub warmup: usize,
    pub backend: Option<String>,
    /// Gradients by candle's autograd instead of the MLP's explicit backprop.
    pub autograd: bool,
    pub json: bool,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn bench_loop(ctx: &mut TrainContext) -> Result<(), BoxError> {
    let a: Args = ctx.config()?;
    let per_rank = a.batch / ctx.world_size();
    let dev = Device::Cpu;
    let vm = candle_nn::VarMap::new();
    let model = Mlp::new(&a.widths, &vm, &dev)?;
    let params = Params::from_varmap(&vm)?;
    let mut opt = Adam::new(1e-3);
    let x = Tensor::randn(0f32, 1.0, (per_rank, a.widths[0]), &dev)?;
    let classes = *a.widths.last().unwrap_or(&2) as u32;
    let y: Vec<u32> = (0..per_rank as u32).map(|i| (i * 7 + ctx.rank() as u32) % classes).collect();
    let y = Tensor::new(y.as_slice(), &dev)?;
    let (mut fwd, mut bwd, mut ar, mut optim, mut step) = (vec![], vec![], vec![], vec![], vec![]);
    for i in 0..a.warmup + a.steps {
        ctx.communicator().barrier().wait()?;
        let t0 = Instant::now();
        let (t1, grads) = if a.autograd {
            let loss = flare::train::loss::cross_entropy(&model.forward(&x)?, &y)?;
            let _ = loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
            let t1 = Instant::now();
            (t1, params.grads(&loss)?)
        } else {
            // Explicit backprop: forward keeps each layer's input; the loss is computed in backward.
            let tape = model.forward_tape(&x)?;
            let _ = tape.output().sum_all()?.to_scalar::<f32>()?;
            let t1 = Instant::now();
            let (loss, grads) = model.backward(tape, &params, &y, Loss::CrossEntropy)?;
            let _ = loss.to_scalar::<f32>()?;
            (t1, grads)
        };
        let t2 = Instant::now();
        let grads = ctx.all_reduce_gradients(grads)?;
        let t3 = Instant::now();
        opt.step(&params, &grads)?;
        let t4 = Instant::now();
        if i >= a.warmup {
            fwd.push((t1 - t0).as_secs_f64() * 1e3);
            bwd.push((t2 - t1).as_secs_f64() * 1e3);
            ar.push((t3 - t2).as_secs_f64() * 1e3);
            optim.push((t4 - t3).as_secs_f64() * 1e3);
            step.push((t4 - t0).as_secs_f64() * 1e3);
        }
    }
    // The slowest rank's medians: a step is as slow as its slowest rank.
    let mine = vec![median(&mut fwd), median(&mut bwd), median(&mut ar), median(&mut optim), median(&mut step)];
    let worst = ctx.communicator().all_reduce(mine, flare::collectives::ReduceOp::Max).wait()?;
    ctx.report(
        json!({"forward_ms": worst[0], "backward_ms": worst[1], "allreduce_ms": worst[2], "optimizer_ms": worst[3], "step_ms": worst[4],
               "params": params.numel()}),
        None,
    )?;
    Ok(())
}

pub fn run(a: Args) -> anyhow::Result<()> {
    if a.widths.len() < 2 || a.ranks.is_empty() || a.steps == 0 {
        anyhow::bail!("need at least two widths, one world size and one step");
    }
    let max_ranks = *a.ranks.iter().max().unwrap_or(&1);
    // One CPU (one compute thread) per rank, as the torch side sets torch.set_num_threads(1).
    flare::init_with(flare::Config::new().num_cpus(max_ranks as f64))?;
    let storage = std::env::temp_dir().join(format!("flare_bench_train_{}", std::process::id()));
    if !a.json {
        println!(
            "MLP {:?}, global batch {}, Adam, {} timed steps after {} warm-up; milliseconds (median; slowest rank)",
            a.widths, a.batch, a.steps, a.warmup
        );
        println!(
            "{:>5} {:>9} {:>9} {:>10} {:>9} {:>9} {:>12}",
            "ranks", "forward", "backward", "allreduce", "optim", "step", "samples/s"
        );
    }
    for &n in &a.ranks {
        if a.batch % n != 0 {
            anyhow::bail!("the batch {} does not divide by {n} ranks", a.batch);
        }
        let mut t = Trainer::new(bench_loop).config(&a).scaling(ScalingConfig::new(n)).run_config(RunConfig {
            name: Some(format!("bench_{n}")),
            storage_path: Some(storage.clone()),
            verbose: Some(false),
            ..Default::default()
        });
        if let Some(b) = &a.backend {
            t = t.backend(b);
        }
        let r = t.fit()?;
        let m = &r.metrics;
        let f = |k: &str| m[k].as_f64().unwrap_or(f64::NAN);
        let sps = a.batch as f64 / (f("step_ms") / 1e3);
        if a.json {
            println!(
                "{}",
                json!({"impl": "flare", "ranks": n, "widths": a.widths, "batch": a.batch, "forward_ms": f("forward_ms"), "backward_ms": f("backward_ms"),
                       "allreduce_ms": f("allreduce_ms"), "optimizer_ms": f("optimizer_ms"), "step_ms": f("step_ms"), "samples_per_s": sps})
            );
        } else {
            println!(
                "{n:>5} {:>9.3} {:>9.3} {:>10.3} {:>9.3} {:>9.3} {:>12.0}",
                f("forward_ms"),
                f("backward_ms"),
                f("allreduce_ms"),
                f("optimizer_ms"),
                f("step_ms"),
                sps
            );
        }
    }
    let _ = std::fs::remove_dir_all(storage);
    Ok(())
}
