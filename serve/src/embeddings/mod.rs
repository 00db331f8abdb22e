//! An OpenAI-compatible embeddings deployment: `POST /v1/embeddings` and `GET /v1/models`,
//! serving a sentence-transformers BERT model (all-MiniLM-L6-v2) with candle. A batch of HTTP
//! requests runs as batched forwards over all their inputs together.

pub mod bert;

use crate::deployment::{Deployment, ReplicaContext};
use crate::types::{Request, Response};
use base64::Engine;
use bert::SentenceEncoder;
use candle_core::Device;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The embeddings deployment's config.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct EmbeddingsConfig {
    /// A sentence-transformers model folder (`scripts/fetch-minilm.sh` makes one).
    pub model_dir: PathBuf,
    /// The model's name in requests and `/v1/models`.
    pub model_name: String,
    /// Inputs per forward (sorted by length, padded per forward).
    pub forward_batch_size: usize,
    /// Most inputs one request may carry (OpenAI's limit is 2048).
    pub max_inputs_per_request: usize,
    /// "auto" (the replica's GPU when it has one and Flare was built with `cuda`), "cpu", "cuda".
    pub device: String,
}

impl Default for EmbeddingsConfig {
    fn default() -> Self {
        EmbeddingsConfig {
            model_dir: PathBuf::from("models/all-MiniLM-L6-v2"),
            model_name: "all-MiniLM-L6-v2".into(),
            forward_batch_size: 64,
            max_inputs_per_request: 2048,
            device: "auto".into(),
        }
    }
}

/// The replica: the model on its device.
pub struct Embeddings {
    model: SentenceEncoder,
    config: EmbeddingsConfig,
}

#[derive(Deserialize)]
struct EmbeddingRequest {
    input: serde_json::Value,
    model: Option<String>,
    encoding_format: Option<String>,
    dimensions: Option<usize>,
    #[allow(dead_code)]
    user: Option<String>,
}

fn pick_device(want: &str, ctx: &ReplicaContext) -> Result<Device, String> {
    match want {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Device::new_cuda(0).map_err(|e| format!("device 'cuda' was asked for but is not usable: {e}")),
        "auto" if !ctx.gpu_ids.is_empty() && candle_core::utils::cuda_is_available() => {
            Device::new_cuda(0).map_err(|e| format!("the replica's GPU is not usable: {e}"))
        }
        "auto" => Ok(Device::Cpu),
        other => Err(format!("device '{other}' is not one of auto, cpu, cuda")),
    }
}

/// One request's parsed inputs, or the response that rejects it.
struct Parsed {
    texts: Vec<String>,
    base64: bool,
}

impl Embeddings {
    fn parse(&self, req: &Request) -> Result<Parsed, Response> {
        let r: EmbeddingRequest = req.json()?;
        if let Some(m) = &r.model {
            let name = &self.config.model_name;
            if m != name && m.strip_prefix("sentence-transformers/") != Some(name.as_str()) {
                return Err(Response::error(
                    404,
                    &format!("model '{m}' is not served here; this endpoint serves '{name}' (GET /v1/models)"),
                ));
            }
        }
        let base64 = match r.encoding_format.as_deref() {
            None | Some("float") => false,
            Some("base64") => true,
            Some(other) => return Err(Response::error(400, &format!("encoding_format '{other}' is not one of float, base64"))),
        };
        if let Some(d) = r.dimensions {
            if d != self.model.dim() {
                return Err(Response::error(
                    400,
                    &format!("dimensions {d} is not supported: this model gives {}", self.model.dim()),
                ));
            }
        }
        let texts: Vec<String> = match r.input {
            serde_json::Value::String(s) => vec![s],
            serde_json::Value::Array(items) if items.iter().all(|v| v.is_string()) => {
                items.into_iter().map(|v| v.as_str().unwrap_or_default().to_string()).collect()
            }
            serde_json::Value::Array(_) => {
                return Err(Response::error(
                    400,
                    "input must be a string or an array of strings (token-id input is not supported by this server)",
                ))
            }
            _ => return Err(Response::error(400, "input must be a string or an array of strings")),
        };
        if texts.is_empty() {
            return Err(Response::error(400, "input must not be an empty array"));
        }
        if texts.len() > self.config.max_inputs_per_request {
            return Err(Response::error(
                400,
                &format!(
                    "input has {} items; at most {} are allowed per request",
                    texts.len(),
                    self.config.max_inputs_per_request
                ),
            ));
        }
        Ok(Parsed { texts, base64 })
    }

    fn models(&self) -> Response {
        Response::json(&serde_json::json!({
            "object": "list",
            "data": [{"id": self.config.model_name, "object": "model", "created": 0, "owned_by": "flare"}],
        }))
    }
}

impl Deployment for Embeddings {
    type Config = EmbeddingsConfig;

    fn new(config: EmbeddingsConfig, ctx: &ReplicaContext) -> Result<Self, String> {
        let device = pick_device(&config.device, ctx)?;
        let model = SentenceEncoder::load(&config.model_dir, &device)?;
        Ok(Embeddings { model, config })
    }

    fn handle_batch(&self, batch: Vec<Request>) -> Result<Vec<Response>, String> {
        let mut out: Vec<Option<Response>> = vec![None; batch.len()];
        let mut jobs: Vec<(usize, Parsed)> = Vec::new();
        for (i, req) in batch.iter().enumerate() {
            match (req.method.as_str(), req.path.trim_end_matches('/')) {
                ("GET", "/v1/models") => out[i] = Some(self.models()),
                ("POST", "/v1/embeddings") => match self.parse(req) {
                    Ok(p) => jobs.push((i, p)),
                    Err(resp) => out[i] = Some(resp),
                },
                (_, "/v1/models") | (_, "/v1/embeddings") => {
                    out[i] = Some(Response::error(405, &format!("{} is not allowed on {}", req.method, req.path)))
                }
                _ => out[i] = Some(Response::error(404, &format!("no endpoint '{}' (try POST /v1/embeddings)", req.path))),
            }
        }
        // Every input of every request in one list: tokenized, sorted by length, batched.
        let texts: Vec<&str> = jobs.iter().flat_map(|(_, p)| p.texts.iter().map(String::as_str)).collect();
        let ids = self.model.tokenize(&texts)?;
        let vecs = self.model.embed_sorted(&ids, self.config.forward_batch_size, true)?;
        let mut at = 0;
        for (i, p) in jobs {
            let n = p.texts.len();
            let tokens: usize = ids[at..at + n].iter().map(Vec::len).sum();
            let data: Vec<serde_json::Value> = vecs[at..at + n]
                .iter()
                .enumerate()
                .map(|(j, v)| {
                    let embedding = if p.base64 {
                        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                        serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
                    } else {
                        serde_json::json!(v)
                    };
                    serde_json::json!({"object": "embedding", "index": j, "embedding": embedding})
                })
                .collect();
            at += n;
            out[i] = Some(Response::json(&serde_json::json!({
                "object": "list",
                "data": data,
                "model": self.config.model_name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            })));
        }
        Ok(out.into_iter().map(|r| r.unwrap_or_else(|| Response::error(500, "no response was made"))).collect())
    }
}
