//! Small models for examples and tests, with PyTorch's parameter names.

use candle_core::{Module, Tensor};
use candle_nn::{Linear, VarBuilder, VarMap};

/// `Linear -> ReLU -> ... -> Linear` with no activation after the last layer; layer `i` is
/// named `layers.{i}` (a torch `ModuleList`), weights `[out, in]`.
pub struct Mlp {
    layers: Vec<Linear>,
    compute: Option<candle_core::DType>,
}

impl Mlp {
    /// An MLP with the given widths (`[16, 64, 64, 4]`), its variables in `vm`, initialized
    /// as torch's `nn.Linear` (uniform in ±1/sqrt(fan_in)).
    pub fn new(widths: &[usize], vm: &VarMap, device: &candle_core::Device) -> candle_core::Result<Self> {
        let vb = VarBuilder::from_varmap(vm, candle_core::DType::F32, device);
        let mut layers = Vec::new();
        for (i, w) in widths.windows(2).enumerate() {
            let vb = vb.pp("layers").pp(i.to_string());
            let bound = 1.0 / (w[0] as f64).sqrt();
            let init = candle_nn::Init::Uniform { lo: -bound, up: bound };
            let weight = vb.get_with_hints((w[1], w[0]), "weight", init)?;
            let bias = vb.get_with_hints(w[1], "bias", init)?;
            layers.push(Linear::new(weight, Some(bias)));
        }
        Ok(Mlp { layers, compute: None })
    }

    /// Computes the forward pass (and so the backward) in `dtype` while the parameters stay
    /// in their own (for example float32 weights with float64 arithmetic, each result rounded
    /// back when the gradient reaches the weights).
    pub fn compute_dtype(mut self, dtype: candle_core::DType) -> Self {
        self.compute = Some(dtype);
        self
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = match self.compute {
            Some(dt) => x.to_dtype(dt)?,
            None => x.clone(),
        };
        for (i, l) in self.layers.iter().enumerate() {
            h = match self.compute {
                Some(dt) => {
                    let w = l.weight().to_dtype(dt)?;
                    let b = l.bias().map(|b| b.to_dtype(dt)).transpose()?;
                    Linear::new(w, b).forward(&h)?
                }
                None => l.forward(&h)?,
            };
            if i + 1 < self.layers.len() {
                h = h.relu()?;
            }
        }
        match self.compute {
            Some(_) => h.to_dtype(x.dtype()),
            None => Ok(h),
        }
    }
}
