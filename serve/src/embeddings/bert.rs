//! sentence-transformers' all-MiniLM-L6-v2 in candle: BERT's encoder (post-LN, exact-erf GELU),
//! then masked mean pooling and L2 normalization, with the tokenizer set up as
//! sentence-transformers runs it (truncation at `max_seq_length`, padding per batch).

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};
use std::path::Path;

/// BERT's sizes from `config.json`.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_types")]
    pub type_vocab_size: usize,
}

fn default_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}
fn default_types() -> usize {
    2
}

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    out_norm: LayerNorm,
}

/// The encoder with its tokenizer.
pub struct SentenceEncoder {
    word: Embedding,
    position: Embedding,
    token_type: Tensor,
    emb_norm: LayerNorm,
    layers: Vec<Layer>,
    heads: usize,
    hidden: usize,
    pub max_seq_length: usize,
    tokenizer: tokenizers::Tokenizer,
    device: Device,
}

fn err(what: &str) -> impl Fn(candle_core::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{} is not what was expected: {e}", path.display()))
}

impl SentenceEncoder {
    /// Loads a sentence-transformers model folder (config.json, model.safetensors,
    /// tokenizer.json, sentence_bert_config.json), as `scripts/fetch-minilm.sh` unpacks it.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, String> {
        let weights = dir.join("model.safetensors");
        if !weights.is_file() {
            return Err(format!(
                "{} has no model.safetensors: run scripts/fetch-minilm.sh {} to fetch all-MiniLM-L6-v2",
                dir.display(),
                dir.display()
            ));
        }
        let cfg: BertConfig = read_json(&dir.join("config.json"))?;
        if cfg.hidden_act != "gelu" {
            return Err(format!("hidden_act '{}' is not supported (only BERT's exact gelu)", cfg.hidden_act));
        }
        if cfg.num_attention_heads == 0 || cfg.hidden_size % cfg.num_attention_heads != 0 {
            return Err("config.json: hidden_size must be a multiple of num_attention_heads".into());
        }
        let max_seq_length = match read_json::<serde_json::Value>(&dir.join("sentence_bert_config.json")) {
            Ok(v) => v["max_seq_length"].as_u64().map(|n| n as usize).unwrap_or(cfg.max_position_embeddings),
            Err(_) => cfg.max_position_embeddings,
        }
        .min(cfg.max_position_embeddings);
        // Safety: the weights file is mapped read-only and not changed while the model lives.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, device) }
            .map_err(err("loading model.safetensors"))?;
        let h = cfg.hidden_size;
        let e = vb.pp("embeddings");
        let word = candle_nn::embedding(cfg.vocab_size, h, e.pp("word_embeddings")).map_err(err("word embeddings"))?;
        let position = candle_nn::embedding(cfg.max_position_embeddings, h, e.pp("position_embeddings"))
            .map_err(err("position embeddings"))?;
        let token_type =
            e.pp("token_type_embeddings").get((cfg.type_vocab_size, h), "weight").map_err(err("token type embeddings"))?;
        let token_type = token_type.get(0).map_err(err("token type 0"))?;
        let emb_norm = candle_nn::layer_norm(h, cfg.layer_norm_eps, e.pp("LayerNorm")).map_err(err("embedding LayerNorm"))?;
        let mut layers = Vec::new();
        for i in 0..cfg.num_hidden_layers {
            let l = vb.pp(format!("encoder.layer.{i}"));
            let what = format!("encoder layer {i}");
            let lin = |name: &str, i: usize, o: usize| candle_nn::linear(i, o, l.pp(name)).map_err(err(&what));
            layers.push(Layer {
                query: lin("attention.self.query", h, h)?,
                key: lin("attention.self.key", h, h)?,
                value: lin("attention.self.value", h, h)?,
                attn_out: lin("attention.output.dense", h, h)?,
                attn_norm: candle_nn::layer_norm(h, cfg.layer_norm_eps, l.pp("attention.output.LayerNorm"))
                    .map_err(err(&what))?,
                intermediate: lin("intermediate.dense", h, cfg.intermediate_size)?,
                output: lin("output.dense", cfg.intermediate_size, h)?,
                out_norm: candle_nn::layer_norm(h, cfg.layer_norm_eps, l.pp("output.LayerNorm")).map_err(err(&what))?,
            });
        }
        let tokenizer = Self::tokenizer(&dir.join("tokenizer.json"), max_seq_length)?;
        Ok(SentenceEncoder {
            word,
            position,
            token_type,
            emb_norm,
            layers,
            heads: cfg.num_attention_heads,
            hidden: h,
            max_seq_length,
            tokenizer,
            device: device.clone(),
        })
    }

    /// The package's tokenizer.json pads to 128 and truncates at 128; sentence-transformers
    /// truncates at `max_seq_length` (special tokens included) and pads per batch.
    fn tokenizer(path: &Path, max_len: usize) -> Result<tokenizers::Tokenizer, String> {
        let mut t = tokenizers::Tokenizer::from_file(path).map_err(|e| format!("loading {}: {e}", path.display()))?;
        t.with_padding(None);
        t.with_truncation(Some(tokenizers::TruncationParams { max_length: max_len, ..Default::default() }))
            .map_err(|e| format!("setting truncation: {e}"))?;
        Ok(t)
    }

    pub fn dim(&self) -> usize {
        self.hidden
    }

    /// Token ids as the model sees them ([CLS] ... [SEP], truncated).
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>, String> {
        let enc = self.tokenizer.encode_batch(texts.to_vec(), true).map_err(|e| format!("tokenizing: {e}"))?;
        Ok(enc.into_iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// Embeddings of token-id sequences run as one padded batch: mean-pooled over each
    /// sequence's tokens, L2-normalized when `normalize`.
    pub fn embed_ids(&self, ids: &[Vec<u32>], normalize: bool) -> Result<Vec<Vec<f32>>, String> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.forward(ids, normalize).map_err(|e| format!("the model's forward failed: {e}"))
    }

    /// Embeddings of texts: tokenized, sorted by length and run in batches of up to
    /// `batch_size` (padding per batch, as sentence-transformers' `encode` does).
    pub fn embed(&self, texts: &[&str], batch_size: usize, normalize: bool) -> Result<Vec<Vec<f32>>, String> {
        self.embed_sorted(&self.tokenize(texts)?, batch_size, normalize)
    }

    /// Embeddings of token-id sequences, sorted by length and run in batches of up to
    /// `batch_size`; in the order given.
    pub fn embed_sorted(&self, ids: &[Vec<u32>], batch_size: usize, normalize: bool) -> Result<Vec<Vec<f32>>, String> {
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(ids[i].len()));
        let mut out = vec![Vec::new(); ids.len()];
        for chunk in order.chunks(batch_size.max(1)) {
            let batch: Vec<Vec<u32>> = chunk.iter().map(|&i| ids[i].clone()).collect();
            for (&i, e) in chunk.iter().zip(self.embed_ids(&batch, normalize)?) {
                out[i] = e;
            }
        }
        Ok(out)
    }

    fn forward(&self, ids: &[Vec<u32>], normalize: bool) -> candle_core::Result<Vec<Vec<f32>>> {
        let b = ids.len();
        let t = ids.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let mut flat = Vec::with_capacity(b * t);
        let mut mask = Vec::with_capacity(b * t);
        for s in ids {
            flat.extend(s.iter().copied().chain(std::iter::repeat_n(0, t - s.len())));
            mask.extend((0..t).map(|j| if j < s.len() { 1f32 } else { 0f32 }));
        }
        let dev = &self.device;
        let ids_t = Tensor::from_vec(flat, (b, t), dev)?;
        let mask_t = Tensor::from_vec(mask, (b, t), dev)?;
        let positions = Tensor::arange(0u32, t as u32, dev)?;
        let mut x = self
            .word
            .forward(&ids_t)?
            .broadcast_add(&self.position.forward(&positions)?.unsqueeze(0)?)?
            .broadcast_add(&self.token_type)?;
        x = self.emb_norm.forward(&x)?;
        // Padded keys get the most negative float (exp gives exactly 0), as transformers does.
        let bias = ((mask_t.ones_like()? - &mask_t)? * f32::MIN as f64)?.reshape((b, 1, 1, t))?;
        let hd = self.hidden / self.heads;
        let scale = 1.0 / (hd as f64).sqrt();
        let split =
            |y: Tensor| -> candle_core::Result<Tensor> { y.reshape((b, t, self.heads, hd))?.transpose(1, 2)?.contiguous() };
        for l in &self.layers {
            let q = split(l.query.forward(&x)?)?;
            let k = split(l.key.forward(&x)?)?;
            let v = split(l.value.forward(&x)?)?;
            let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&bias)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            let ctx = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, t, self.hidden))?;
            let a = l.attn_norm.forward(&(l.attn_out.forward(&ctx)? + &x)?)?;
            let inter = l.intermediate.forward(&a)?.gelu_erf()?;
            x = l.out_norm.forward(&(l.output.forward(&inter)? + &a)?)?;
        }
        // Masked mean pooling.
        let m = mask_t.unsqueeze(2)?;
        let summed = x.broadcast_mul(&m)?.sum(1)?;
        let counts = m.sum(1)?.clamp(1e-9, f64::MAX)?;
        let mut pooled = summed.broadcast_div(&counts)?;
        if normalize {
            let norm = pooled.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
            pooled = pooled.broadcast_div(&norm)?;
        }
        pooled.to_dtype(DType::F32)?.to_vec2::<f32>()
    }
}
