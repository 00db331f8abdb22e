//! A model's parameters in a fixed order, and their gradients.
//!
//! Every rank lists the same parameters in the same order (sorted by name), so gradient
//! buckets line up across ranks and a checkpoint names each tensor as PyTorch would
//! (`layers.0.weight`).

use crate::{Error, Result};
use candle_core::{DType, Device, Tensor, Var};
use std::collections::HashMap;
use std::path::Path;

/// Named trainable tensors, in the order every rank agrees on.
#[derive(Clone)]
pub struct Params {
    names: Vec<String>,
    vars: Vec<Var>,
}

impl Params {
    /// Parameters from `(name, var)` pairs; they are sorted by name.
    pub fn new(named: impl IntoIterator<Item = (String, Var)>) -> Result<Self> {
        let mut named: Vec<(String, Var)> = named.into_iter().collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some(w) = named.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(Error::Config(format!("parameter `{}` is listed twice", w[0].0)));
        }
        let (names, vars) = named.into_iter().unzip();
        Ok(Params { names, vars })
    }

    /// Every variable of a candle-nn `VarMap`.
    pub fn from_varmap(vm: &candle_nn::VarMap) -> Result<Self> {
        let data = vm.data().lock().unwrap_or_else(|p| p.into_inner());
        Params::new(data.iter().map(|(k, v)| (k.clone(), v.clone())))
    }

    pub fn len(&self) -> usize {
        self.vars.len()
    }
    pub fn is_empty(&self) -> bool {
        self.vars.is_empty()
    }
    pub fn names(&self) -> &[String] {
        &self.names
    }
    pub fn vars(&self) -> &[Var] {
        &self.vars
    }
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.names.iter().map(String::as_str).zip(self.vars.iter())
    }
    /// The number of scalar parameters.
    pub fn numel(&self) -> usize {
        self.vars.iter().map(|v| v.elem_count()).sum()
    }
    pub fn get(&self, name: &str) -> Option<&Var> {
        self.names.iter().position(|n| n == name).map(|i| &self.vars[i])
    }

    /// Backpropagates `loss` and returns the gradient of every parameter (zeros for a parameter
    /// the loss does not depend on, as PyTorch's DDP all-reduces those too).
    pub fn grads(&self, loss: &Tensor) -> Result<Grads> {
        let store = loss.backward()?;
        let grads = self
            .vars
            .iter()
            .map(|v| match store.get(v.as_tensor()) {
                Some(g) => Ok(g.clone()),
                None => Ok(v.as_tensor().zeros_like()?),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Grads(grads))
    }

    /// The current values, by name (copies that do not track gradients).
    pub fn tensors(&self) -> Result<HashMap<String, Tensor>> {
        self.iter().map(|(n, v)| Ok((n.to_string(), v.as_tensor().detach().copy()?))).collect()
    }

    /// Sets every parameter from `tensors` (by name); a missing name or a shape or dtype that
    /// differs is an error naming it, and nothing is changed then.
    pub fn load(&self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        let mut staged = Vec::with_capacity(self.len());
        for (name, var) in self.iter() {
            let t = tensors
                .get(name)
                .ok_or_else(|| Error::Checkpoint(format!("no tensor `{name}` to load (the model has it, the file does not)")))?;
            if t.dims() != var.dims() {
                return Err(Error::Checkpoint(format!(
                    "`{name}` has shape {:?} in the file but {:?} in the model",
                    t.dims(),
                    var.dims()
                )));
            }
            staged.push(t.to_dtype(var.dtype())?.to_device(var.device())?);
        }
        for (var, t) in self.vars.iter().zip(staged) {
            var.set(&t)?;
        }
        Ok(())
    }

    /// Loads a safetensors file (torch names and layouts) into the parameters.
    pub fn load_safetensors(&self, path: &Path) -> Result<()> {
        let device = self.vars.first().map(|v| v.device().clone()).unwrap_or(Device::Cpu);
        let t = candle_core::safetensors::load(path, &device)
            .map_err(|e| Error::Checkpoint(format!("reading {}: {e}", path.display())))?;
        self.load(&t)
    }

    /// Writes the parameters to a safetensors file.
    pub fn save_safetensors(&self, path: &Path) -> Result<()> {
        candle_core::safetensors::save(&self.tensors()?, path)
            .map_err(|e| Error::Checkpoint(format!("writing {}: {e}", path.display())))
    }

    /// The largest absolute difference from `other` over all parameters (by name).
    pub fn max_abs_diff(&self, other: &HashMap<String, Tensor>) -> Result<f64> {
        let mut worst = 0.0f64;
        for (name, var) in self.iter() {
            let o = other.get(name).ok_or_else(|| Error::Checkpoint(format!("no tensor `{name}` to compare with")))?;
            let d = (var.as_tensor().to_dtype(DType::F64)? - o.to_dtype(DType::F64)?.to_device(var.device())?)?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f64>()?;
            worst = worst.max(d);
        }
        Ok(worst)
    }
}

/// One gradient per parameter, in the parameters' order.
#[derive(Clone, Debug)]
pub struct Grads(pub Vec<Tensor>);

impl Grads {
    /// Adds `other` into these gradients (gradient accumulation over micro-batches).
    pub fn accumulate(&mut self, other: &Grads) -> Result<()> {
        if self.0.len() != other.0.len() {
            return Err(Error::Config(format!("accumulating {} gradients into {}", other.0.len(), self.0.len())));
        }
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a = (&*a + b)?;
        }
        Ok(())
    }

    /// Multiplies every gradient by `s` (for example `1 / accumulation steps`).
    pub fn scale(&mut self, s: f64) -> Result<()> {
        for g in &mut self.0 {
            *g = g.affine(s, 0.0)?;
        }
        Ok(())
    }

    /// The 2-norm of all gradients together, as `torch.nn.utils.clip_grad_norm_` computes it
    /// (the norm of the per-tensor norms).
    pub fn global_norm(&self) -> Result<f64> {
        let mut norms = Vec::with_capacity(self.0.len());
        for g in &self.0 {
            norms.push(g.sqr()?.sum_all()?.sqrt()?);
        }
        if norms.is_empty() {
            return Ok(0.0);
        }
        let stacked = Tensor::stack(&norms, 0)?;
        Ok(stacked.sqr()?.sum_all()?.sqrt()?.to_dtype(DType::F64)?.to_scalar::<f64>()?)
    }

    /// Scales the gradients so their global norm is at most `max_norm`, with PyTorch's rule
    /// (`coef = min(1, max_norm / (norm + 1e-6))`); returns the norm before clipping.
    pub fn clip_norm(&mut self, max_norm: f64) -> Result<f64> {
        if max_norm.is_nan() || max_norm <= 0.0 {
            return Err(Error::Config(format!("max_norm must be positive, got {max_norm}")));
        }
        let norm = self.global_norm()?;
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            self.scale(coef)?;
        }
        Ok(norm)
    }
}
