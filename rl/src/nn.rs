//! The policy and value networks of the classic-control learners as plain data: a multilayer
//! perceptron (tanh hidden layers, linear output) whose parameters are one flat `Vec<f32>`,
//! per layer the weight `[out, in]` row-major then the bias. Env runners step with it on their
//! CPUs, one observation at a time; the learners train it as candle variables
//! ([`crate::learner::Net`], same layout) and send these copies out through the object store.

use crate::rng::Rng;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Mlp {
    pub sizes: Vec<usize>,
    pub params: Vec<f32>,
}

impl Mlp {
    /// Orthogonal initialization as in CleanRL: gain `hidden_gain` for hidden layers,
    /// `out_gain` for the last one; biases zero.
    pub fn new(sizes: &[usize], hidden_gain: f32, out_gain: f32, rng: &mut Rng) -> Self {
        let mut params = Vec::new();
        for l in 0..sizes.len() - 1 {
            let (n_in, n_out) = (sizes[l], sizes[l + 1]);
            let gain = if l + 2 == sizes.len() { out_gain } else { hidden_gain };
            params.extend(orthogonal(n_out, n_in, gain, rng));
            params.extend(std::iter::repeat_n(0.0, n_out));
        }
        Mlp { sizes: sizes.to_vec(), params }
    }

    fn layer_offsets(&self) -> Vec<(usize, usize, usize, usize)> {
        let mut out = Vec::new();
        let mut off = 0;
        for l in 0..self.sizes.len() - 1 {
            let (n_in, n_out) = (self.sizes[l], self.sizes[l + 1]);
            out.push((off, off + n_in * n_out, n_in, n_out));
            off += n_in * n_out + n_out;
        }
        out
    }

    /// The output for one observation.
    pub fn forward(&self, x: &[f32]) -> Vec<f32> {
        let layers = self.layer_offsets();
        let mut h = x.to_vec();
        for (i, &(w, b, n_in, n_out)) in layers.iter().enumerate() {
            let mut out = vec![0.0f32; n_out];
            for (o, slot) in out.iter_mut().enumerate() {
                let row = &self.params[w + o * n_in..w + (o + 1) * n_in];
                *slot = self.params[b + o] + row.iter().zip(&h).map(|(a, b)| a * b).sum::<f32>();
            }
            if i + 1 < layers.len() {
                out.iter_mut().for_each(|v| *v = v.tanh());
            }
            h = out;
        }
        h
    }
}

/// A dense layer as plain data: weight `[out, in]` row-major, then the bias.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Layer {
    pub n_in: usize,
    pub n_out: usize,
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

impl Layer {
    fn apply(&self, x: &[f32]) -> Vec<f32> {
        (0..self.n_out)
            .map(|o| {
                self.bias[o] + self.weight[o * self.n_in..(o + 1) * self.n_in].iter().zip(x).map(|(w, v)| w * v).sum::<f32>()
            })
            .collect()
    }
}

/// SAC's policy as plain data, for env runners: a ReLU trunk, a mean head and a log-std head
/// (tanh, rescaled into `[log_std_min, log_std_max]`), a sample squashed by tanh into the
/// action bounds (`scale * tanh(x) + bias`).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct GaussianPolicy {
    pub trunk: Vec<Layer>,
    pub mean: Layer,
    pub log_std: Layer,
    pub log_std_min: f32,
    pub log_std_max: f32,
    pub scale: Vec<f32>,
    pub bias: Vec<f32>,
}

impl GaussianPolicy {
    /// Mean and log-std of the Gaussian before the squash.
    fn dist(&self, obs: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let mut h = obs.to_vec();
        for l in &self.trunk {
            h = l.apply(&h).into_iter().map(|v| v.max(0.0)).collect();
        }
        let span = 0.5 * (self.log_std_max - self.log_std_min);
        let log_std = self.log_std.apply(&h).into_iter().map(|v| self.log_std_min + span * (v.tanh() + 1.0)).collect();
        (self.mean.apply(&h), log_std)
    }

    fn squash(&self, x: impl Iterator<Item = f32>) -> Vec<f32> {
        x.enumerate().map(|(i, v)| v.tanh() * self.scale[i] + self.bias[i]).collect()
    }

    /// An action for `obs`, drawn with `rng`'s standard-normal noise.
    pub fn sample(&self, obs: &[f32], rng: &mut Rng) -> Vec<f32> {
        let (mean, log_std) = self.dist(obs);
        self.squash(mean.iter().zip(&log_std).map(|(m, ls)| m + ls.exp() * gaussian(rng) as f32))
    }

    /// The deterministic action (evaluation): the squashed mean.
    pub fn act(&self, obs: &[f32]) -> Vec<f32> {
        self.squash(self.dist(obs).0.into_iter())
    }
}

/// A `rows x cols` matrix with orthonormal rows or columns, times `gain` (Gram-Schmidt on
/// Gaussian noise).
fn orthogonal(rows: usize, cols: usize, gain: f32, rng: &mut Rng) -> Vec<f32> {
    let (n, m) = if rows >= cols { (rows, cols) } else { (cols, rows) };
    // n vectors of length m would not be independent; make m orthonormal vectors of length n.
    let mut q: Vec<Vec<f64>> = Vec::with_capacity(m);
    while q.len() < m {
        let mut v: Vec<f64> = (0..n).map(|_| gaussian(rng)).collect();
        for u in &q {
            let d: f64 = v.iter().zip(u).map(|(a, b)| a * b).sum();
            v.iter_mut().zip(u).for_each(|(a, b)| *a -= d * b);
        }
        let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
        if norm > 1e-8 {
            q.push(v.into_iter().map(|a| a / norm).collect());
        }
    }
    let mut out = vec![0.0f32; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            let v = if rows >= cols { q[c][r] } else { q[r][c] };
            out[r * cols + c] = gain * v as f32;
        }
    }
    out
}

pub(crate) fn gaussian(rng: &mut Rng) -> f64 {
    let u1 = rng.next_f64().max(1e-12);
    let u2 = rng.next_f64();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Writes networks as one safetensors file: `NAME.params` (f32) and `NAME.sizes` (u32) each.
pub fn save_safetensors(path: &std::path::Path, nets: &[(&str, &Mlp)]) -> crate::Result<()> {
    use candle_core::{Device, Tensor};
    let err = |e: candle_core::Error| crate::Error::Learner(format!("writing {}: {e}", path.display()));
    let mut map = std::collections::HashMap::new();
    for (name, net) in nets {
        map.insert(format!("{name}.params"), Tensor::from_slice(&net.params, net.params.len(), &Device::Cpu).map_err(err)?);
        let sizes: Vec<u32> = net.sizes.iter().map(|s| *s as u32).collect();
        map.insert(format!("{name}.sizes"), Tensor::from_slice(&sizes, sizes.len(), &Device::Cpu).map_err(err)?);
    }
    candle_core::safetensors::save(&map, path).map_err(err)
}

/// Reads network `name` from a file written by [`save_safetensors`].
pub fn load_safetensors(path: &std::path::Path, name: &str) -> crate::Result<Mlp> {
    let err = |e: String| crate::Error::Learner(format!("reading {} from {}: {e}", name, path.display()));
    let map = candle_core::safetensors::load(path, &candle_core::Device::Cpu).map_err(|e| err(e.to_string()))?;
    let get = |k: &str| map.get(&format!("{name}.{k}")).ok_or_else(|| err(format!("no tensor {name}.{k}")));
    let params = get("params")?.to_vec1::<f32>().map_err(|e| err(e.to_string()))?;
    let sizes: Vec<usize> =
        get("sizes")?.to_vec1::<u32>().map_err(|e| err(e.to_string()))?.into_iter().map(|s| s as usize).collect();
    let want: usize = sizes.windows(2).map(|w| w[0] * w[1] + w[1]).sum();
    if want != params.len() {
        return Err(err(format!("{} parameters do not fit layer sizes {sizes:?} ({want})", params.len())));
    }
    Ok(Mlp { sizes, params })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orthogonal_rows_are_orthonormal() {
        let mut rng = Rng::new(1);
        let w = orthogonal(4, 8, 1.0, &mut rng);
        for a in 0..4 {
            for b in 0..4 {
                let d: f32 = (0..8).map(|j| w[a * 8 + j] * w[b * 8 + j]).sum();
                assert!((d - if a == b { 1.0 } else { 0.0 }).abs() < 1e-5);
            }
        }
    }
}
