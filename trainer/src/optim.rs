//! Optimizers with PyTorch's exact update rules (`torch.optim`, `foreach=False`), so a run
//! reproduces its PyTorch twin step for step. Each keeps its state as tensors named after the
//! parameter (`layers.0.weight.exp_avg`), which checkpoints store in safetensors.

use crate::params::{Grads, Params};
use crate::{Error, Result};
use candle_core::Tensor;
use serde_json::{json, Value};
use std::collections::HashMap;

/// What a checkpoint keeps of an optimizer.
#[derive(Clone, Debug)]
pub struct OptimizerState {
    /// `SGD`, `Adam` or `AdamW`.
    pub kind: String,
    /// Steps taken.
    pub step: u64,
    /// Hyperparameters, torch's names.
    pub hyper: Value,
    /// State tensors by `<param>.<buffer>`.
    pub tensors: HashMap<String, Tensor>,
}

/// An optimizer over [`Params`].
pub trait Optimizer: Send + std::fmt::Debug {
    /// One update of every parameter from its gradient.
    fn step(&mut self, params: &Params, grads: &Grads) -> Result<()>;
    fn learning_rate(&self) -> f64;
    fn set_learning_rate(&mut self, lr: f64);
    /// Steps taken so far.
    fn steps(&self) -> u64;
    fn state(&self, params: &Params) -> Result<OptimizerState>;
    /// Restores a state saved by [`Optimizer::state`] of the same kind.
    fn load_state(&mut self, params: &Params, state: &OptimizerState) -> Result<()>;
}

fn check_grads(params: &Params, grads: &Grads) -> Result<()> {
    if params.len() != grads.0.len() {
        return Err(Error::Config(format!("{} gradients for {} parameters", grads.0.len(), params.len())));
    }
    Ok(())
}

fn check_kind(want: &str, state: &OptimizerState) -> Result<()> {
    if state.kind != want {
        return Err(Error::Checkpoint(format!("the checkpoint holds {} state, this optimizer is {want}", state.kind)));
    }
    Ok(())
}

/// The values of a float32 tensor on the CPU (the host path, which follows torch's CPU kernels
/// operation by operation); `None` for other devices and dtypes (the tensor path).
fn host(t: &Tensor) -> Result<Option<Vec<f32>>> {
    if matches!(t.device(), candle_core::Device::Cpu) && t.dtype() == candle_core::DType::F32 {
        Ok(Some(t.flatten_all()?.to_vec1::<f32>()?))
    } else {
        Ok(None)
    }
}

fn to_tensor(v: Vec<f32>, like: &Tensor) -> Result<Tensor> {
    Ok(Tensor::from_vec(v, like.dims(), like.device())?)
}

/// `a + alpha * b`, torch's `a.add(b, alpha=alpha)`.
fn add_scaled(a: &Tensor, b: &Tensor, alpha: f64) -> Result<Tensor> {
    Ok((a + b.affine(alpha, 0.0)?)?)
}

fn load_buffers(params: &Params, state: &OptimizerState, suffix: &str, required: bool) -> Result<Vec<Option<Tensor>>> {
    params
        .iter()
        .map(|(name, var)| {
            let key = format!("{name}.{suffix}");
            match state.tensors.get(&key) {
                Some(t) if t.dims() == var.dims() => Ok(Some(t.to_dtype(var.dtype())?.to_device(var.device())?)),
                Some(t) => Err(Error::Checkpoint(format!(
                    "optimizer buffer `{key}` has shape {:?}, the parameter {:?}",
                    t.dims(),
                    var.dims()
                ))),
                None if required => Err(Error::Checkpoint(format!("optimizer buffer `{key}` is missing from the checkpoint"))),
                None => Ok(None),
            }
        })
        .collect()
}

fn save_buffers(params: &Params, bufs: &[Option<Tensor>], suffix: &str, out: &mut HashMap<String, Tensor>) {
    for ((name, _), b) in params.iter().zip(bufs) {
        if let Some(b) = b {
            out.insert(format!("{name}.{suffix}"), b.clone());
        }
    }
}

/// `torch.optim.SGD`: momentum, dampening, Nesterov and L2 weight decay.
#[derive(Clone, Debug)]
pub struct Sgd {
    pub lr: f64,
    pub momentum: f64,
    pub dampening: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    step: u64,
    bufs: Vec<Option<Tensor>>,
}

impl Sgd {
    pub fn new(lr: f64) -> Self {
        Sgd { lr, momentum: 0.0, dampening: 0.0, nesterov: false, weight_decay: 0.0, step: 0, bufs: Vec::new() }
    }
    pub fn momentum(mut self, m: f64) -> Self {
        self.momentum = m;
        self
    }
    pub fn dampening(mut self, d: f64) -> Self {
        self.dampening = d;
        self
    }
    pub fn nesterov(mut self, n: bool) -> Self {
        self.nesterov = n;
        self
    }
    pub fn weight_decay(mut self, wd: f64) -> Self {
        self.weight_decay = wd;
        self
    }
    fn validate(&self) -> Result<()> {
        if self.nesterov && (self.momentum <= 0.0 || self.dampening != 0.0) {
            return Err(Error::Config("Nesterov momentum requires a momentum and zero dampening (as in torch)".into()));
        }
        if self.lr < 0.0 || self.momentum < 0.0 || self.weight_decay < 0.0 {
            return Err(Error::Config(format!(
                "invalid SGD settings: lr {}, momentum {}, weight_decay {}",
                self.lr, self.momentum, self.weight_decay
            )));
        }
        Ok(())
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, params: &Params, grads: &Grads) -> Result<()> {
        check_grads(params, grads)?;
        self.validate()?;
        self.bufs.resize(params.len(), None);
        for (i, (var, g)) in params.vars().iter().zip(&grads.0).enumerate() {
            let p = var.as_tensor();
            if let (Some(mut pv), Some(mut d)) = (host(p)?, host(g)?) {
                // torch's vectorized CPU kernels: `add(.., alpha)` is one fused multiply-add.
                let (wd, mom, damp, lr) =
                    (self.weight_decay as f32, self.momentum as f32, (1.0 - self.dampening) as f32, -self.lr as f32);
                if self.weight_decay != 0.0 {
                    d.iter_mut().zip(&pv).for_each(|(g, p)| *g = p.mul_add(wd, *g));
                }
                if self.momentum != 0.0 {
                    let buf = match self.bufs[i].take() {
                        None => d.clone(),
                        Some(b) => {
                            let mut b = host(&b)?.unwrap_or_default();
                            b.iter_mut().zip(&d).for_each(|(b, g)| *b = g.mul_add(damp, *b * mom));
                            b
                        }
                    };
                    if self.nesterov {
                        d.iter_mut().zip(&buf).for_each(|(g, b)| *g = b.mul_add(mom, *g));
                    } else {
                        d.copy_from_slice(&buf);
                    }
                    self.bufs[i] = Some(to_tensor(buf, p)?);
                }
                pv.iter_mut().zip(&d).for_each(|(p, g)| *p = g.mul_add(lr, *p));
                var.set(&to_tensor(pv, p)?)?;
                continue;
            }
            let mut d_p = if self.weight_decay != 0.0 { add_scaled(g, p, self.weight_decay)? } else { g.clone() };
            if self.momentum != 0.0 {
                let buf = match self.bufs[i].take() {
                    None => d_p.copy()?,
                    Some(b) => add_scaled(&b.affine(self.momentum, 0.0)?, &d_p, 1.0 - self.dampening)?,
                };
                d_p = if self.nesterov { add_scaled(&d_p, &buf, self.momentum)? } else { buf.clone() };
                self.bufs[i] = Some(buf);
            }
            var.set(&add_scaled(p, &d_p, -self.lr)?)?;
        }
        self.step += 1;
        Ok(())
    }
    fn learning_rate(&self) -> f64 {
        self.lr
    }
    fn set_learning_rate(&mut self, lr: f64) {
        self.lr = lr;
    }
    fn steps(&self) -> u64 {
        self.step
    }
    fn state(&self, params: &Params) -> Result<OptimizerState> {
        let mut tensors = HashMap::new();
        save_buffers(params, &self.bufs, "momentum_buffer", &mut tensors);
        Ok(OptimizerState {
            kind: "SGD".into(),
            step: self.step,
            hyper: json!({"lr": self.lr, "momentum": self.momentum, "dampening": self.dampening,
                          "nesterov": self.nesterov, "weight_decay": self.weight_decay}),
            tensors,
        })
    }
    fn load_state(&mut self, params: &Params, state: &OptimizerState) -> Result<()> {
        check_kind("SGD", state)?;
        self.bufs = load_buffers(params, state, "momentum_buffer", false)?;
        self.step = state.step;
        Ok(())
    }
}

/// `torch.optim.Adam` (`decoupled = false`: L2 decay added to the gradient) and
/// `torch.optim.AdamW` (`decoupled = true`: `p *= 1 - lr * wd` before the Adam step, on
/// every parameter, biases included).
#[derive(Clone, Debug)]
pub struct Adam {
    pub lr: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    pub weight_decay: f64,
    pub amsgrad: bool,
    decoupled: bool,
    step: u64,
    m: Vec<Option<Tensor>>,
    v: Vec<Option<Tensor>>,
    vmax: Vec<Option<Tensor>>,
}

impl Adam {
    /// Adam with torch's defaults: betas (0.9, 0.999), eps 1e-8, no weight decay.
    pub fn new(lr: f64) -> Self {
        Adam {
            lr,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            amsgrad: false,
            decoupled: false,
            step: 0,
            m: Vec::new(),
            v: Vec::new(),
            vmax: Vec::new(),
        }
    }
    /// AdamW with torch's defaults: betas (0.9, 0.999), eps 1e-8, weight decay 0.01.
    pub fn adamw(lr: f64) -> Self {
        Adam { decoupled: true, weight_decay: 0.01, ..Adam::new(lr) }
    }
    pub fn betas(mut self, b1: f64, b2: f64) -> Self {
        self.betas = (b1, b2);
        self
    }
    pub fn eps(mut self, eps: f64) -> Self {
        self.eps = eps;
        self
    }
    pub fn weight_decay(mut self, wd: f64) -> Self {
        self.weight_decay = wd;
        self
    }
    pub fn amsgrad(mut self, a: bool) -> Self {
        self.amsgrad = a;
        self
    }
    fn kind(&self) -> &'static str {
        if self.decoupled {
            "AdamW"
        } else {
            "Adam"
        }
    }
    fn validate(&self) -> Result<()> {
        let (b1, b2) = self.betas;
        if !(0.0..1.0).contains(&b1) || !(0.0..1.0).contains(&b2) || self.eps < 0.0 || self.lr < 0.0 || self.weight_decay < 0.0 {
            return Err(Error::Config(format!(
                "invalid {} settings: lr {}, betas ({b1}, {b2}) (each in [0, 1)), eps {}, weight_decay {}",
                self.kind(),
                self.lr,
                self.eps,
                self.weight_decay
            )));
        }
        Ok(())
    }
}

impl Optimizer for Adam {
    fn step(&mut self, params: &Params, grads: &Grads) -> Result<()> {
        check_grads(params, grads)?;
        self.validate()?;
        let n = params.len();
        self.m.resize(n, None);
        self.v.resize(n, None);
        self.vmax.resize(n, None);
        self.step += 1;
        let (b1, b2) = self.betas;
        let t = self.step as f64;
        // Python float arithmetic, as torch computes these scalars.
        let bias_correction1 = 1.0 - b1.powf(t);
        let bias_correction2 = 1.0 - b2.powf(t);
        let step_size = self.lr / bias_correction1;
        let bias_correction2_sqrt = bias_correction2.sqrt();
        for (i, (var, g)) in params.vars().iter().zip(&grads.0).enumerate() {
            if let (Some(mut pv), Some(mut gv)) = (host(var.as_tensor())?, host(g)?) {
                let like = var.as_tensor();
                let n = pv.len();
                let mut m = match self.m[i].take() {
                    Some(t) => host(&t)?.unwrap_or_else(|| vec![0.0; n]),
                    None => vec![0.0; n],
                };
                let mut v = match self.v[i].take() {
                    Some(t) => host(&t)?.unwrap_or_else(|| vec![0.0; n]),
                    None => vec![0.0; n],
                };
                let wd = self.weight_decay as f32;
                if self.decoupled {
                    let keep = (1.0 - self.lr * self.weight_decay) as f32;
                    pv.iter_mut().for_each(|p| *p *= keep);
                } else if self.weight_decay != 0.0 {
                    gv.iter_mut().zip(&pv).for_each(|(g, p)| *g = p.mul_add(wd, *g));
                }
                // lerp_ (weight < 0.5): fma(w, end - self, self); addcmul_: self + value * t1 * t2.
                let (w1, b2f, w2) = ((1.0 - b1) as f32, b2 as f32, (1.0 - b2) as f32);
                for j in 0..n {
                    let g = gv[j];
                    m[j] = if w1 < 0.5 { w1.mul_add(g - m[j], m[j]) } else { (w1 - 1.0).mul_add(g - m[j], g) };
                    v[j] = v[j] * b2f + w2 * g * g;
                }
                let second = if self.amsgrad {
                    let mut vm = match self.vmax[i].take() {
                        Some(t) => host(&t)?.unwrap_or_else(|| v.clone()),
                        None => v.clone(),
                    };
                    vm.iter_mut().zip(&v).for_each(|(a, b)| *a = a.max(*b));
                    let out = vm.clone();
                    self.vmax[i] = Some(to_tensor(vm, like)?);
                    out
                } else {
                    v.clone()
                };
                // denom = sqrt(v) / bc2_sqrt + eps; addcdiv_: self + value * t1 / t2.
                let (bc, eps, neg_step) = (bias_correction2_sqrt as f32, self.eps as f32, -step_size as f32);
                for j in 0..n {
                    let denom = second[j].sqrt() / bc + eps;
                    pv[j] += neg_step * m[j] / denom;
                }
                var.set(&to_tensor(pv, like)?)?;
                self.m[i] = Some(to_tensor(m, like)?);
                self.v[i] = Some(to_tensor(v, like)?);
                continue;
            }
            let mut p = var.as_tensor().clone();
            if self.decoupled {
                p = p.affine(1.0 - self.lr * self.weight_decay, 0.0)?;
            }
            let g = if !self.decoupled && self.weight_decay != 0.0 { add_scaled(g, &p, self.weight_decay)? } else { g.clone() };
            let zeros = || p.zeros_like();
            let m = self.m[i].take().map_or_else(zeros, Ok)?;
            let v = self.v[i].take().map_or_else(zeros, Ok)?;
            // exp_avg.lerp_(grad, 1 - beta1): self + w * (end - self) for w < 0.5.
            let w = 1.0 - b1;
            let m = if w < 0.5 { add_scaled(&m, &(&g - &m)?, w)? } else { (&g - (&g - &m)?.affine(1.0 - w, 0.0)?)? };
            // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            let v = add_scaled(&v.affine(b2, 0.0)?, &(&g * &g)?, 1.0 - b2)?;
            let second = if self.amsgrad {
                let vm = match self.vmax[i].take() {
                    Some(prev) => prev.maximum(&v)?,
                    None => v.clone(),
                };
                self.vmax[i] = Some(vm.clone());
                vm
            } else {
                v.clone()
            };
            // denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
            // (a true division by the f32 scalar, as torch does; candle's `/ f64` multiplies by
            // the reciprocal)
            let bc2 = Tensor::new(bias_correction2_sqrt as f32, p.device())?.to_dtype(p.dtype())?;
            let denom = second.sqrt()?.broadcast_div(&bc2)?.affine(1.0, self.eps)?;
            // param.addcdiv_(exp_avg, denom, value=-step_size)
            let p = add_scaled(&p, &(&m / &denom)?, -step_size)?;
            var.set(&p)?;
            self.m[i] = Some(m);
            self.v[i] = Some(v);
        }
        Ok(())
    }
    fn learning_rate(&self) -> f64 {
        self.lr
    }
    fn set_learning_rate(&mut self, lr: f64) {
        self.lr = lr;
    }
    fn steps(&self) -> u64 {
        self.step
    }
    fn state(&self, params: &Params) -> Result<OptimizerState> {
        let mut tensors = HashMap::new();
        save_buffers(params, &self.m, "exp_avg", &mut tensors);
        save_buffers(params, &self.v, "exp_avg_sq", &mut tensors);
        save_buffers(params, &self.vmax, "max_exp_avg_sq", &mut tensors);
        Ok(OptimizerState {
            kind: self.kind().into(),
            step: self.step,
            hyper: json!({"lr": self.lr, "betas": [self.betas.0, self.betas.1], "eps": self.eps,
                          "weight_decay": self.weight_decay, "amsgrad": self.amsgrad}),
            tensors,
        })
    }
    fn load_state(&mut self, params: &Params, state: &OptimizerState) -> Result<()> {
        check_kind(self.kind(), state)?;
        let required = state.step > 0;
        self.m = load_buffers(params, state, "exp_avg", required)?;
        self.v = load_buffers(params, state, "exp_avg_sq", required)?;
        self.vmax = load_buffers(params, state, "max_exp_avg_sq", required && self.amsgrad)?;
        self.step = state.step;
        Ok(())
    }
}

fn kw_f64(kwargs: &serde_json::Map<String, Value>, key: &str, default: f64) -> Result<f64> {
    match kwargs.get(key) {
        None => Ok(default),
        Some(v) => v.as_f64().ok_or_else(|| Error::Config(format!("optimizer argument `{key}` must be a number, got {v}"))),
    }
}

fn kw_bool(kwargs: &serde_json::Map<String, Value>, key: &str) -> Result<bool> {
    match kwargs.get(key) {
        None => Ok(false),
        Some(v) => v.as_bool().ok_or_else(|| Error::Config(format!("optimizer argument `{key}` must be true or false, got {v}"))),
    }
}

/// An optimizer from torch's class name (`SGD`, `Adam`, `AdamW`) and keyword arguments, as a
/// JSON object (`{"lr": 0.1, "momentum": 0.9}`). Unknown names and arguments are errors.
pub fn from_torch(name: &str, kwargs: &Value) -> Result<Box<dyn Optimizer>> {
    let empty = serde_json::Map::new();
    let kw = match kwargs {
        Value::Object(m) => m,
        Value::Null => &empty,
        other => return Err(Error::Config(format!("optimizer arguments must be a JSON object, got {other}"))),
    };
    let allowed: &[&str] = match name {
        "SGD" => &["lr", "momentum", "dampening", "nesterov", "weight_decay"],
        "Adam" | "AdamW" => &["lr", "betas", "eps", "weight_decay", "amsgrad"],
        other => return Err(Error::Config(format!("unknown optimizer `{other}`: use SGD, Adam or AdamW"))),
    };
    if let Some(k) = kw.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(Error::Config(format!("{name} has no argument `{k}` here (supported: {})", allowed.join(", "))));
    }
    let lr = kw_f64(kw, "lr", if name == "SGD" { f64::NAN } else { 1e-3 })?;
    if lr.is_nan() {
        return Err(Error::Config("SGD needs a learning rate (`lr`)".into()));
    }
    Ok(match name {
        "SGD" => Box::new(
            Sgd::new(lr)
                .momentum(kw_f64(kw, "momentum", 0.0)?)
                .dampening(kw_f64(kw, "dampening", 0.0)?)
                .nesterov(kw_bool(kw, "nesterov")?)
                .weight_decay(kw_f64(kw, "weight_decay", 0.0)?),
        ),
        _ => {
            let base = if name == "AdamW" { Adam::adamw(lr) } else { Adam::new(lr) };
            let (b1, b2) = match kw.get("betas") {
                None => base.betas,
                Some(Value::Array(a)) if a.len() == 2 && a.iter().all(Value::is_number) => {
                    (a[0].as_f64().unwrap_or(0.9), a[1].as_f64().unwrap_or(0.999))
                }
                Some(v) => return Err(Error::Config(format!("`betas` must be two numbers, got {v}"))),
            };
            let wd = kw_f64(kw, "weight_decay", base.weight_decay)?;
            Box::new(base.betas(b1, b2).eps(kw_f64(kw, "eps", 1e-8)?).weight_decay(wd).amsgrad(kw_bool(kw, "amsgrad")?))
        }
    })
}
