//! Backprop and optimizer steps against PyTorch's own numbers (`../shared/oracles/train`):
//! the gradient at init, and the weights after one step of every shipped run.

use candle_core::{DType, Device, Module, Tensor};
use flare_train::models::Mlp;
use flare_train::{loss, optim, Params};
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;

fn oracle() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/oracles/train");
    assert!(
        dir.join("trajectories.json").exists(),
        "the PyTorch oracle is missing: expected {} (../shared/oracles/train beside the repository)",
        dir.display()
    );
    dir
}

fn load(p: PathBuf) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(&p, &Device::Cpu).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

struct Setup {
    params: Params,
    model: Mlp,
    data: HashMap<String, Tensor>,
    traj: Value,
}

fn setup() -> Setup {
    let dir = oracle();
    let vm = candle_nn::VarMap::new();
    let model = Mlp::new(&[16, 64, 64, 4], &vm, &Device::Cpu).unwrap();
    let params = Params::from_varmap(&vm).unwrap();
    params.load_safetensors(&dir.join("init_weights.safetensors")).unwrap();
    let traj: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("trajectories.json")).unwrap()).unwrap();
    Setup { params, model, data: load(dir.join("datasets.safetensors")), traj }
}

fn batch(s: &Setup, task: &str, k: usize) -> (Tensor, Tensor) {
    let rows: Vec<u32> = s.traj["batch_indices"][k].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    let idx = Tensor::new(rows.as_slice(), &Device::Cpu).unwrap();
    let x = s.data[&format!("{task}.x")].index_select(&idx, 0).unwrap();
    let y = s.data[&format!("{task}.y")].index_select(&idx, 0).unwrap();
    (x, y)
}

fn task_loss(s: &Setup, task: &str, k: usize) -> Tensor {
    let (x, y) = batch(s, task, k);
    let out = s.model.forward(&x).unwrap();
    if task == "cls" {
        loss::cross_entropy(&out, &y).unwrap()
    } else {
        loss::mse(&out, &y).unwrap()
    }
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

#[test]
fn forward_and_loss_at_init_match_torch() {
    let s = setup();
    let x = s.data["cls.x"].narrow(0, 0, 8).unwrap();
    let logits = s.model.forward(&x).unwrap();
    let want: Vec<Vec<f32>> = s.traj["init_forward_first8_cls_logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect())
        .collect();
    let want = Tensor::new(want, &Device::Cpu).unwrap();
    eprintln!("logit diff {:e}", max_diff(&logits, &want));
    assert!(max_diff(&logits, &want) < 1e-6, "logits differ by {}", max_diff(&logits, &want));
    for task in ["cls", "reg"] {
        let l = task_loss(&s, task, 0).to_scalar::<f32>().unwrap() as f64;
        let w = s.traj["loss_at_init_batch0"][task].as_f64().unwrap();
        assert!((l - w).abs() < 1e-6, "{task} loss {l} vs torch {w}");
    }
}

#[test]
fn gradients_at_init_match_torch() {
    let s = setup();
    let want = load(oracle().join("grads_step0.safetensors"));
    for task in ["cls", "reg"] {
        let g = s.params.grads(&task_loss(&s, task, 0)).unwrap();
        for (name, grad) in s.params.names().iter().zip(&g.0) {
            let w = &want[&format!("{task}.{name}.grad")];
            let d = max_diff(grad, w);
            eprintln!("{task} grad {name} diff {d:e}");
            assert!(d < 1e-6, "{task} gradient of {name} differs by {d}");
        }
    }
}

#[test]
fn one_optimizer_step_matches_torch_for_every_shipped_run() {
    let runs = setup().traj["runs"].as_object().unwrap().clone();
    assert!(!runs.is_empty());
    for (name, run) in runs {
        let s = setup();
        let task = run["task"].as_str().unwrap();
        let mut opt = optim::from_torch(run["optimizer"].as_str().unwrap(), &run["opt_kwargs"]).unwrap();
        let g = s.params.grads(&task_loss(&s, task, 0)).unwrap();
        opt.step(&s.params, &g).unwrap();
        let want = load(oracle().join(run["after_step1_weights_file"].as_str().unwrap()));
        let d = s.params.max_abs_diff(&want).unwrap();
        eprintln!("{name} step1 diff {d:e}");
        assert!(d < 1e-7, "{name}: weights after one step differ from torch by {d}");
    }
}

#[test]
fn optimizer_state_round_trips_and_kinds_are_checked() {
    let s = setup();
    let mut adam = optim::from_torch("Adam", &serde_json::json!({"lr": 0.01})).unwrap();
    let g = s.params.grads(&task_loss(&s, "cls", 0)).unwrap();
    adam.step(&s.params, &g).unwrap();
    let st = adam.state(&s.params).unwrap();
    assert_eq!(st.step, 1);
    assert_eq!(st.tensors.len(), 12, "exp_avg and exp_avg_sq per parameter");
    let mut again = optim::from_torch("Adam", &serde_json::json!({"lr": 0.01})).unwrap();
    again.load_state(&s.params, &st).unwrap();
    assert_eq!(again.steps(), 1);
    let mut sgd = optim::from_torch("SGD", &serde_json::json!({"lr": 0.1})).unwrap();
    let e = sgd.load_state(&s.params, &st).unwrap_err().to_string();
    assert!(e.contains("Adam") && e.contains("SGD"), "{e}");
    let e = optim::from_torch("SGD", &serde_json::json!({"lr": 0.1, "momentun": 0.9})).unwrap_err().to_string();
    assert!(e.contains("momentun"), "{e}");
    assert!(optim::from_torch("Lion", &Value::Null).is_err());
}

#[test]
fn clipping_follows_torch_rule() {
    let s = setup();
    let mut g = s.params.grads(&task_loss(&s, "cls", 0)).unwrap();
    let norm = g.global_norm().unwrap();
    assert!(norm > 0.0);
    let before = g.clip_norm(norm / 2.0).unwrap();
    assert!((before - norm).abs() < 1e-9);
    let after = g.global_norm().unwrap();
    assert!((after - norm / 2.0).abs() / norm < 1e-5, "{after} vs {}", norm / 2.0);
    assert!(g.clip_norm(-1.0).is_err());
}

#[test]
fn the_tensor_path_used_off_the_cpu_agrees_with_the_host_path() {
    // float64 parameters take the tensor path (as CUDA tensors do); float32 on the CPU the
    // host path. Several steps of each optimizer must agree to float32 rounding.
    let s = setup();
    let f32_params = s.params.clone();
    let init = f32_params.tensors().unwrap();
    let f64_params = Params::new(
        init.iter().map(|(k, v)| (k.clone(), candle_core::Var::from_tensor(&v.to_dtype(DType::F64).unwrap()).unwrap())),
    )
    .unwrap();
    let cases = [
        ("SGD", serde_json::json!({"lr": 0.05, "momentum": 0.9, "nesterov": true, "weight_decay": 0.01})),
        ("SGD", serde_json::json!({"lr": 0.05, "momentum": 0.5, "dampening": 0.1})),
        ("Adam", serde_json::json!({"lr": 0.01, "weight_decay": 0.01, "amsgrad": true})),
        ("AdamW", serde_json::json!({"lr": 0.01, "betas": [0.8, 0.99]})),
    ];
    for (name, kw) in cases {
        f32_params.load(&init).unwrap();
        f64_params.load(&init).unwrap();
        let mut a = optim::from_torch(name, &kw).unwrap();
        let mut b = optim::from_torch(name, &kw).unwrap();
        for step in 0..3 {
            // Gradients: the same values for both, from the f32 model's loss.
            let g = s.params.grads(&task_loss(&s, "cls", step)).unwrap();
            let g64 = flare_train::Grads(g.0.iter().map(|t| t.to_dtype(DType::F64).unwrap()).collect());
            a.step(&f32_params, &g).unwrap();
            b.step(&f64_params, &g64).unwrap();
        }
        let d = f32_params.max_abs_diff(&f64_params.tensors().unwrap()).unwrap();
        assert!(d < 1e-6, "{name} {kw}: host and tensor paths differ by {d}");
    }
}

#[test]
fn explicit_backprop_matches_autograd_and_torch() {
    let s = setup();
    let want = load(oracle().join("grads_step0.safetensors"));
    for (task, l) in [("cls", flare_train::models::Loss::CrossEntropy), ("reg", flare_train::models::Loss::Mse)] {
        let (x, y) = batch(&s, task, 0);
        let (value, g) = s.model.loss_and_grads(&s.params, &x, &y, l).unwrap();
        let auto = task_loss(&s, task, 0);
        let dv = (value.to_scalar::<f32>().unwrap() - auto.to_scalar::<f32>().unwrap()).abs();
        assert!(dv < 1e-6, "{task}: loss {dv} off autograd's");
        for (name, grad) in s.params.names().iter().zip(&g.0) {
            let d = max_diff(grad, &want[&format!("{task}.{name}.grad")]);
            assert!(d < 1e-6, "{task}: explicit gradient of {name} differs from torch by {d}");
        }
    }
    let (x, _) = batch(&s, "cls", 0);
    let bad = Tensor::new(&[9u32; 256], &Device::Cpu).unwrap();
    assert!(s.model.loss_and_grads(&s.params, &x, &bad, flare_train::models::Loss::CrossEntropy).is_err());
}

#[test]
fn accumulating_two_half_batches_gives_the_full_batch_gradient() {
    let s = setup();
    let (x, y) = batch(&s, "cls", 0);
    let full = s.params.grads(&loss::cross_entropy(&s.model.forward(&x).unwrap(), &y).unwrap()).unwrap();
    let half = |i: usize| {
        let (xs, ys) = (x.narrow(0, i * 128, 128).unwrap(), y.narrow(0, i * 128, 128).unwrap());
        s.params.grads(&loss::cross_entropy(&s.model.forward(&xs).unwrap(), &ys).unwrap()).unwrap()
    };
    let mut acc = half(0);
    acc.accumulate(&half(1)).unwrap();
    acc.scale(0.5).unwrap();
    for ((name, a), f) in s.params.names().iter().zip(&acc.0).zip(&full.0) {
        let d = max_diff(a, f);
        assert!(d < 1e-6, "{name}: accumulated gradient differs by {d}");
    }
    assert!(acc.accumulate(&flare_train::Grads(vec![])).is_err());
}
