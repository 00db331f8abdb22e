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

/// An optimizer buffer: host values on the CPU path (kept between steps without copies),
/// a tensor on the tensor path and after loading a checkpoint.
#[derive(Clone, Debug)]
enum Buf {
    Host(Vec<f32>),
    Dev(Tensor),
}

impl Buf {
    fn into_host(self) -> Result<Vec<f32>> {
        match self {
            Buf::Host(v) => Ok(v),
            Buf::Dev(t) => Ok(t.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?),
        }
    }
    fn tensor(&self, like: &Tensor) -> Result<Tensor> {
        match self {
            Buf::Host(v) => Ok(Tensor::from_slice(v, like.dims(), like.device())?.to_dtype(like.dtype())?),
            Buf::Dev(t) => Ok(t.clone()),
        }
    }
}

/// Runs `$body` (a closure-free block) compiled for AVX2+FMA when the CPU has them, so the
/// loops vectorize and `mul_add` is one instruction; the results are the same bits either
/// way (a fused multiply-add is exactly rounded in software too).
macro_rules! simd_dispatch {
    ($name:ident($($arg:ident: $ty:ty),*) $body:block) => {
        fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn fast($($arg: $ty),*) {
                    body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // Safety: the CPU has the features `fast` is compiled for.
                    return unsafe { fast($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

/// torch SGD, in place: `d` is the gradient (becomes the update), `buf` the momentum buffer
/// (`None` on the first step: it starts as the gradient).
#[allow(clippy::too_many_arguments)]
fn sgd_host(
    p: &mut [f32],
    d: &mut [f32],
    buf: Option<&mut Vec<f32>>,
    wd: f32,
    mom: f32,
    damp: f32,
    nesterov: bool,
    neg_lr: f32,
) -> Option<Vec<f32>> {
    simd_dispatch!(decay(d: &mut [f32], p: &[f32], wd: f32) {
        d.iter_mut().zip(p).for_each(|(g, p)| *g = p.mul_add(wd, *g));
    });
    simd_dispatch!(momentum(b: &mut [f32], d: &[f32], mom: f32, damp: f32) {
        b.iter_mut().zip(d).for_each(|(b, g)| *b = g.mul_add(damp, *b * mom));
    });
    simd_dispatch!(nest(d: &mut [f32], b: &[f32], mom: f32) {
        d.iter_mut().zip(b).for_each(|(g, b)| *g = b.mul_add(mom, *g));
    });
    simd_dispatch!(apply(p: &mut [f32], d: &[f32], neg_lr: f32) {
        p.iter_mut().zip(d).for_each(|(p, g)| *p = g.mul_add(neg_lr, *p));
    });
    if wd != 0.0 {
        decay(d, p, wd);
    }
    let mut fresh = None;
    if mom != 0.0 {
        let b: &[f32] = match buf {
            Some(b) => {
                momentum(b, d, mom, damp);
                b
            }
            None => fresh.insert(d.to_vec()),
        };
        if nesterov {
            nest(d, b, mom);
        } else {
            d.copy_from_slice(b);
        }
    }
    apply(p, d, neg_lr);
    fresh
}

/// Constants of one Adam step, as torch rounds them to float32.
#[derive(Clone, Copy)]
struct AdamConsts {
    w1: f32,
    b2: f32,
    w2: f32,
    bc2_sqrt: f32,
    eps: f32,
    neg_step: f32,
}

simd_dispatch!(adam_moments(m: &mut [f32], v: &mut [f32], g: &[f32], c: AdamConsts) {
    // exp_avg.lerp_(grad, w1): fma(w, end - self, self) for w < 0.5, else
    // fma(w - 1, end - self, end); exp_avg_sq.mul_(b2).addcmul_(g, g, value=w2).
    if c.w1 < 0.5 {
        for ((m, v), &g) in m.iter_mut().zip(v.iter_mut()).zip(g) {
            *m = c.w1.mul_add(g - *m, *m);
            *v = *v * c.b2 + c.w2 * g * g;
        }
    } else {
        for ((m, v), &g) in m.iter_mut().zip(v.iter_mut()).zip(g) {
            *m = (c.w1 - 1.0).mul_add(g - *m, g);
            *v = *v * c.b2 + c.w2 * g * g;
        }
    }
});

simd_dispatch!(adam_apply(p: &mut [f32], m: &[f32], second: &[f32], c: AdamConsts) {
    // denom = sqrt(v) / bc2_sqrt + eps; param.addcdiv_(m, denom, value=-step): p + value * m / denom.
    for ((p, &m), &v) in p.iter_mut().zip(m).zip(second) {
        let denom = v.sqrt() / c.bc2_sqrt + c.eps;
        *p += c.neg_step * m / denom;
    }
});

simd_dispatch!(scale_in_place(x: &mut [f32], k: f32) {
    x.iter_mut().for_each(|x| *x *= k);
});

simd_dispatch!(max_in_place(a: &mut [f32], b: &[f32]) {
    a.iter_mut().zip(b).for_each(|(a, b)| *a = a.max(*b));
});

/// `a + alpha * b`, torch's `a.add(b, alpha=alpha)`.
fn add_scaled(a: &Tensor, b: &Tensor, alpha: f64) -> Result<Tensor> {
    Ok((a + b.affine(alpha, 0.0)?)?)
}

fn load_buffers(params: &Params, state: &OptimizerState, suffix: &str, required: bool) -> Result<Vec<Option<Buf>>> {
    params
        .iter()
        .map(|(name, var)| {
            let key = format!("{name}.{suffix}");
            match state.tensors.get(&key) {
                Some(t) if t.dims() == var.dims() => Ok(Some(Buf::Dev(t.to_dtype(var.dtype())?.to_device(var.device())?))),
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

fn save_buffers(params: &Params, bufs: &[Option<Buf>], suffix: &str, out: &mut HashMap<String, Tensor>) -> Result<()> {
    for ((name, var), b) in params.iter().zip(bufs) {
        if let Some(b) = b {
            out.insert(format!("{name}.{suffix}"), b.tensor(var.as_tensor())?);
        }
    }
    Ok(())
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
    bufs: Vec<Option<Buf>>,
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
                let (wd, mom, damp, neg_lr) =
                    (self.weight_decay as f32, self.momentum as f32, (1.0 - self.dampening) as f32, -self.lr as f32);
                let mut buf = self.bufs[i].take().map(Buf::into_host).transpose()?;
                let fresh = sgd_host(&mut pv, &mut d, buf.as_mut(), wd, mom, damp, self.nesterov, neg_lr);
                if self.momentum != 0.0 {
                    self.bufs[i] = buf.or(fresh).map(Buf::Host);
                }
                var.set(&to_tensor(pv, p)?)?;
                continue;
            }
            let mut d_p = if self.weight_decay != 0.0 { add_scaled(g, p, self.weight_decay)? } else { g.clone() };
            if self.momentum != 0.0 {
                let buf = match self.bufs[i].take() {
                    None => d_p.copy()?,
                    Some(b) => add_scaled(&b.tensor(p)?.affine(self.momentum, 0.0)?, &d_p, 1.0 - self.dampening)?,
                };
                d_p = if self.nesterov { add_scaled(&d_p, &buf, self.momentum)? } else { buf.clone() };
                self.bufs[i] = Some(Buf::Dev(buf));
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
        save_buffers(params, &self.bufs, "momentum_buffer", &mut tensors)?;
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
    m: Vec<Option<Buf>>,
    v: Vec<Option<Buf>>,
    vmax: Vec<Option<Buf>>,
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
                let mut m = self.m[i].take().map(Buf::into_host).transpose()?.unwrap_or_else(|| vec![0.0; n]);
                let mut v = self.v[i].take().map(Buf::into_host).transpose()?.unwrap_or_else(|| vec![0.0; n]);
                if self.decoupled {
                    scale_in_place(&mut pv, (1.0 - self.lr * self.weight_decay) as f32);
                } else if self.weight_decay != 0.0 {
                    let wd = self.weight_decay as f32;
                    gv.iter_mut().zip(&pv).for_each(|(g, p)| *g = p.mul_add(wd, *g));
                }
                let c = AdamConsts {
                    w1: (1.0 - b1) as f32,
                    b2: b2 as f32,
                    w2: (1.0 - b2) as f32,
                    bc2_sqrt: bias_correction2_sqrt as f32,
                    eps: self.eps as f32,
                    neg_step: -step_size as f32,
                };
                adam_moments(&mut m, &mut v, &gv, c);
                if self.amsgrad {
                    let mut vm = self.vmax[i].take().map(Buf::into_host).transpose()?.unwrap_or_else(|| v.clone());
                    max_in_place(&mut vm, &v);
                    adam_apply(&mut pv, &m, &vm, c);
                    self.vmax[i] = Some(Buf::Host(vm));
                } else {
                    adam_apply(&mut pv, &m, &v, c);
                }
                var.set(&to_tensor(pv, like)?)?;
                self.m[i] = Some(Buf::Host(m));
                self.v[i] = Some(Buf::Host(v));
                continue;
            }
            let mut p = var.as_tensor().clone();
            if self.decoupled {
                p = p.affine(1.0 - self.lr * self.weight_decay, 0.0)?;
            }
            let g = if !self.decoupled && self.weight_decay != 0.0 { add_scaled(g, &p, self.weight_decay)? } else { g.clone() };
            let zeros = || -> Result<Tensor> { Ok(p.zeros_like()?) };
            let m = self.m[i].take().map_or_else(zeros, |b| b.tensor(&p))?;
            let v = self.v[i].take().map_or_else(zeros, |b| b.tensor(&p))?;
            // exp_avg.lerp_(grad, 1 - beta1): self + w * (end - self) for w < 0.5.
            let w = 1.0 - b1;
            let m = if w < 0.5 { add_scaled(&m, &(&g - &m)?, w)? } else { (&g - (&g - &m)?.affine(1.0 - w, 0.0)?)? };
            // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            let v = add_scaled(&v.affine(b2, 0.0)?, &(&g * &g)?, 1.0 - b2)?;
            let second = if self.amsgrad {
                let vm = match self.vmax[i].take() {
                    Some(prev) => prev.tensor(&p)?.maximum(&v)?,
                    None => v.clone(),
                };
                self.vmax[i] = Some(Buf::Dev(vm.clone()));
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
            self.m[i] = Some(Buf::Dev(m));
            self.v[i] = Some(Buf::Dev(v));
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
        save_buffers(params, &self.m, "exp_avg", &mut tensors)?;
        save_buffers(params, &self.v, "exp_avg_sq", &mut tensors)?;
        save_buffers(params, &self.vmax, "max_exp_avg_sq", &mut tensors)?;
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
