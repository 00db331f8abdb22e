//! What the PPO, A2C and DQN learners share, on candle: the device they learn on, the tanh MLPs
//! as candle variables, and an Adam step with global-norm gradient clipping.
//!
//! The learner runs on the GPU its process was given: a learner actor spawned with `num_gpus`
//! sees the GPU the scheduler assigned as `cuda:0` (its `CUDA_VISIBLE_DEVICES` lists only that
//! one); a learner in the driver uses the first GPU it sees. Without a GPU (or a build without
//! the `cuda` feature) it learns on the CPU. The env runners keep stepping on their CPUs with
//! [`Mlp`] copies of the policy, which the learner hands out after each update: a [`Net`] has
//! exactly an [`Mlp`]'s layers and layout, so the copy is a flat read of its variables.

use crate::error::{Error, Result};
use crate::nn::Mlp;
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use serde::{Deserialize, Serialize};

pub(crate) type CResult<T> = std::result::Result<T, candle_core::Error>;

pub(crate) fn learner_error(e: candle_core::Error) -> Error {
    Error::Learner(e.to_string())
}

/// Where a learner runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum LearnerDevice {
    /// The first GPU this process sees (the assigned one in a learner actor), else the CPU.
    #[default]
    Auto,
    Cpu,
    /// This CUDA device (an index among the ones the process sees); an error where it is not.
    Cuda(usize),
}

impl std::str::FromStr for LearnerDevice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(LearnerDevice::Auto),
            "cpu" => Ok(LearnerDevice::Cpu),
            "cuda" | "gpu" => Ok(LearnerDevice::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|i| i.parse().ok())
                .map(LearnerDevice::Cuda)
                .ok_or_else(|| Error::Learner(format!("learner device `{other}`: expected auto, cpu, cuda or cuda:N"))),
        }
    }
}

impl LearnerDevice {
    /// The candle device, or an error that says why the GPU asked for cannot be used.
    pub fn open(self) -> Result<Device> {
        match self {
            LearnerDevice::Auto => Device::cuda_if_available(0).map_err(learner_error),
            LearnerDevice::Cpu => Ok(Device::Cpu),
            LearnerDevice::Cuda(i) => {
                if !candle_core::utils::cuda_is_available() {
                    return Err(Error::Learner(format!(
                        "learner device cuda:{i}: this build has no CUDA (build with `--features cuda`, \
                         see scripts/build-cuda.sh) — use --device cpu or auto"
                    )));
                }
                Device::new_cuda(i).map_err(|e| {
                    Error::Learner(format!(
                        "learner device cuda:{i} cannot be opened ({e}): is a GPU visible to this process? \
                         Otherwise use --device cpu or auto"
                    ))
                })
            }
        }
    }
}

/// A name for a device, as the progress lines and summaries print it.
pub fn device_name(dev: &Device) -> String {
    match dev.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// An [`Mlp`] as candle variables: per layer a weight `[out, in]` and a bias `[out]`, tanh
/// between layers, linear output.
pub struct Net {
    sizes: Vec<usize>,
    layers: Vec<(Var, Var)>,
}

impl Net {
    pub fn from_mlp(m: &Mlp, dev: &Device) -> CResult<Net> {
        let mut layers = Vec::with_capacity(m.sizes.len() - 1);
        let mut off = 0;
        for w in m.sizes.windows(2) {
            let (n_in, n_out) = (w[0], w[1]);
            let weight = Tensor::from_slice(&m.params[off..off + n_in * n_out], (n_out, n_in), dev)?;
            off += n_in * n_out;
            let bias = Tensor::from_slice(&m.params[off..off + n_out], n_out, dev)?;
            off += n_out;
            layers.push((Var::from_tensor(&weight)?, Var::from_tensor(&bias)?));
        }
        Ok(Net { sizes: m.sizes.clone(), layers })
    }

    /// `x` is `[batch, in]`; the result `[batch, out]`.
    pub fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        let mut h = x.clone();
        for (i, (w, b)) in self.layers.iter().enumerate() {
            h = h.matmul(&w.as_tensor().t()?)?.broadcast_add(b.as_tensor())?;
            if i + 1 < self.layers.len() {
                h = h.tanh()?;
            }
        }
        Ok(h)
    }

    /// The width of the input.
    pub fn inputs(&self) -> usize {
        self.sizes[0]
    }

    /// The weights as an [`Mlp`] (what runners step with and checkpoints hold).
    pub fn to_mlp(&self) -> CResult<Mlp> {
        let mut params = Vec::new();
        for (w, b) in &self.layers {
            params.extend(w.as_tensor().flatten_all()?.to_vec1::<f32>()?);
            params.extend(b.as_tensor().to_vec1::<f32>()?);
        }
        Ok(Mlp { sizes: self.sizes.clone(), params })
    }

    pub fn vars(&self) -> Vec<Var> {
        self.layers.iter().flat_map(|(w, b)| [w.clone(), b.clone()]).collect()
    }

    /// Sets these weights to `other`'s (a target network's sync).
    pub fn copy_from(&self, other: &Net) -> CResult<()> {
        for ((w, b), (ow, ob)) in self.layers.iter().zip(&other.layers) {
            w.set(ow.as_tensor())?;
            b.set(ob.as_tensor())?;
        }
        Ok(())
    }
}

/// Adam (torch's: no weight decay, `eps` after the bias-corrected square root) over `vars`, with
/// global-norm gradient clipping before each step as `torch.nn.utils.clip_grad_norm_` does.
pub struct ClippedAdam {
    opt: AdamW,
    vars: Vec<Var>,
    max_norm: f32,
}

impl ClippedAdam {
    pub fn new(vars: Vec<Var>, lr: f64, eps: f64, max_norm: f32) -> CResult<Self> {
        let opt = AdamW::new(vars.clone(), ParamsAdamW { lr, beta1: 0.9, beta2: 0.999, eps, weight_decay: 0.0 })?;
        Ok(ClippedAdam { opt, vars, max_norm })
    }

    pub fn set_lr(&mut self, lr: f64) {
        self.opt.set_learning_rate(lr);
    }

    /// Backpropagates `loss`, clips the gradients to the global norm, steps; returns the norm
    /// before clipping.
    pub fn step(&mut self, loss: &Tensor) -> CResult<f32> {
        let mut grads = loss.backward()?;
        let norm = clip_grad_norm(&self.vars, &mut grads, self.max_norm)?;
        self.opt.step(&grads)?;
        Ok(norm)
    }
}

/// Scales the gradients of `vars` so their global L2 norm is at most `max_norm` (by
/// `max_norm / (norm + 1e-6)`, as torch does); returns the norm before.
pub(crate) fn clip_grad_norm(vars: &[Var], grads: &mut GradStore, max_norm: f32) -> CResult<f32> {
    let mut squares = Vec::with_capacity(vars.len());
    for v in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            squares.push(g.sqr()?.sum_all()?);
        }
    }
    if squares.is_empty() {
        return Ok(0.0);
    }
    let norm = Tensor::stack(&squares, 0)?.sum_all()?.to_dtype(DType::F32)?.to_scalar::<f32>()?.sqrt();
    if norm > max_norm {
        let scale = (max_norm / (norm + 1e-6)) as f64;
        for v in vars {
            if let Some(g) = grads.remove(v.as_tensor()) {
                grads.insert(v.as_tensor(), (g * scale)?);
            }
        }
    }
    Ok(norm)
}

/// Rows of equal length as one `[rows, cols]` tensor.
pub(crate) fn rows(v: &[Vec<f32>], dev: &Device) -> CResult<Tensor> {
    let cols = v.first().map_or(0, |r| r.len());
    let flat: Vec<f32> = v.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_vec(flat, (v.len(), cols), dev)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn a_net_computes_what_its_mlp_computes() {
        let mut rng = Rng::new(7);
        let mlp = Mlp::new(&[4, 16, 8, 3], 2f32.sqrt(), 1.0, &mut rng);
        let net = Net::from_mlp(&mlp, &Device::Cpu).unwrap();
        let xs: Vec<Vec<f32>> = (0..5).map(|i| (0..4).map(|j| (i * 4 + j) as f32 * 0.1 - 1.0).collect()).collect();
        let out = net.forward(&rows(&xs, &Device::Cpu).unwrap()).unwrap().to_vec2::<f32>().unwrap();
        for (x, got) in xs.iter().zip(out) {
            let want = mlp.forward(x);
            for (a, b) in want.iter().zip(&got) {
                assert!((a - b).abs() < 1e-5, "{want:?} vs {got:?}");
            }
        }
        assert_eq!(net.to_mlp().unwrap().params, mlp.params);
    }

    #[test]
    fn clipping_scales_gradients_to_the_norm() {
        let dev = Device::Cpu;
        let a = Var::from_tensor(&Tensor::new(&[1f32, 2.0], &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::new(&[3f32], &dev).unwrap()).unwrap();
        // loss = 3 a0 + 4 a1 + 12 b: gradients (3, 4) and (12), global norm 13.
        let w = Tensor::new(&[3f32, 4.0], &dev).unwrap();
        let loss =
            ((a.as_tensor() * &w).unwrap().sum_all().unwrap() + (b.as_tensor() * 12.0).unwrap().sum_all().unwrap()).unwrap();
        let vars = [a.clone(), b.clone()];
        let mut grads = loss.backward().unwrap();
        let norm = clip_grad_norm(&vars, &mut grads, 1.3).unwrap();
        assert!((norm - 13.0).abs() < 1e-4, "{norm}");
        let ga = grads.get(a.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        let gb = grads.get(b.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        for (got, want) in ga.iter().chain(&gb).zip([0.3f32, 0.4, 1.2]) {
            assert!((got - want).abs() < 1e-5, "{ga:?} {gb:?}");
        }
        // Under the limit nothing changes.
        let mut grads = loss.backward().unwrap();
        clip_grad_norm(&vars, &mut grads, 20.0).unwrap();
        assert_eq!(grads.get(b.as_tensor()).unwrap().to_vec1::<f32>().unwrap(), vec![12.0]);
    }

    #[test]
    fn device_names_parse() {
        assert_eq!("cpu".parse::<LearnerDevice>().unwrap(), LearnerDevice::Cpu);
        assert_eq!("cuda:1".parse::<LearnerDevice>().unwrap(), LearnerDevice::Cuda(1));
        let e = "tpu".parse::<LearnerDevice>().unwrap_err().to_string();
        assert!(e.contains("expected auto, cpu, cuda"), "{e}");
    }
}
