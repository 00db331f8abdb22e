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

/// A forward pass with what the backward pass needs.
pub struct Tape {
    inputs: Vec<Tensor>,
    output: Tensor,
}

impl Tape {
    /// The model's output (logits).
    pub fn output(&self) -> &Tensor {
        &self.output
    }
}

/// The loss of [`Mlp::loss_and_grads`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    /// Cross-entropy over class ids (`u32` or `i64` targets), the batch mean.
    CrossEntropy,
    /// Mean squared error over every element.
    Mse,
}

impl Mlp {
    /// The loss on `(x, target)` and the gradient of every parameter in `params`' order, by
    /// explicit backpropagation: the GEMMs the math needs and nothing else (candle's autograd
    /// also computes the gradient of the input and zero-fills an accumulator per tensor). The
    /// same numbers as `params.grads(&loss)` up to float rounding.
    pub fn loss_and_grads(
        &self,
        params: &crate::Params,
        x: &Tensor,
        target: &Tensor,
        loss: Loss,
    ) -> crate::Result<(Tensor, crate::Grads)> {
        let tape = self.forward_tape(x)?;
        self.backward(tape, params, target, loss)
    }

    /// The forward pass, keeping each layer's input for [`Mlp::backward`].
    pub fn forward_tape(&self, x: &Tensor) -> crate::Result<Tape> {
        let mut inputs = Vec::with_capacity(self.layers.len());
        let mut h = x.clone();
        for (i, l) in self.layers.iter().enumerate() {
            inputs.push(h.clone());
            h = h.matmul(&l.weight().t()?)?;
            if let Some(b) = l.bias() {
                h = h.broadcast_add(b)?;
            }
            if i + 1 < self.layers.len() {
                h = h.relu()?;
            }
        }
        Ok(Tape { inputs, output: h })
    }

    /// The loss of a taped forward pass and the gradients, in `params`' order.
    pub fn backward(
        &self,
        tape: Tape,
        params: &crate::Params,
        target: &Tensor,
        loss: Loss,
    ) -> crate::Result<(Tensor, crate::Grads)> {
        use candle_core::{DType, D};
        let Tape { inputs, output: h } = tape;
        let (batch, width) = h.dims2()?;
        let (value, mut dz) = match loss {
            Loss::CrossEntropy => {
                let logp = candle_nn::ops::log_softmax(&h, D::Minus1)?;
                let ids: Vec<u32> = target.to_dtype(DType::U32)?.to_vec1::<u32>()?;
                if ids.len() != batch || ids.iter().any(|&c| c as usize >= width) {
                    return Err(crate::Error::Config(format!(
                        "{} targets for a batch of {batch} with {width} classes",
                        ids.len()
                    )));
                }
                let mut onehot = vec![0f32; batch * width];
                for (r, &c) in ids.iter().enumerate() {
                    onehot[r * width + c as usize] = 1.0;
                }
                let onehot = Tensor::from_vec(onehot, (batch, width), h.device())?;
                let value = ((&logp * &onehot)?.sum_all()? / -(batch as f64))?;
                // d(mean CE)/dz = (softmax(z) - onehot) / batch
                let dz = ((logp.exp()? - onehot)? / batch as f64)?;
                (value, dz)
            }
            Loss::Mse => {
                let diff = (&h - target)?;
                let n = diff.elem_count() as f64;
                let value = (diff.sqr()?.sum_all()? / n)?;
                (value, (diff * (2.0 / n))?)
            }
        };
        let mut grads: Vec<Option<Tensor>> = vec![None; params.len()];
        let slot = |t: &Tensor| params.vars().iter().position(|v| v.as_tensor().id() == t.id());
        for (i, l) in self.layers.iter().enumerate().rev() {
            let dw = dz.t()?.matmul(&inputs[i])?;
            if let Some(k) = slot(l.weight()) {
                grads[k] = Some(dw);
            }
            if let Some(b) = l.bias() {
                if let Some(k) = slot(b) {
                    grads[k] = Some(dz.sum(0)?);
                }
            }
            if i > 0 {
                // Through the ReLU: the gradient passes where its output was positive.
                let dh = dz.matmul(l.weight())?;
                let mask = inputs[i].gt(0f32)?.to_dtype(dh.dtype())?;
                dz = (dh * mask)?;
            }
        }
        let grads = grads
            .into_iter()
            .zip(params.iter())
            .map(|(g, (name, v))| match g {
                Some(g) => Ok(g),
                None if self.layers.iter().any(|l| l.weight().id() == v.as_tensor().id()) => Ok(v.as_tensor().zeros_like()?),
                None => Err(crate::Error::Config(format!("parameter `{name}` is not part of this MLP"))),
            })
            .collect::<crate::Result<Vec<_>>>()?;
        Ok((value, crate::Grads(grads)))
    }
}
