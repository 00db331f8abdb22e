//! Deployment types built into the `flare` binary for config files (`import_path`).

use crate::config::Registry;
use crate::deployment::{Deployment, ReplicaContext};
use crate::types::{Request, Response};
use serde::{Deserialize, Serialize};

/// Answers every request with what it saw (method, path, body, batch size, process): a smoke
/// test and a no-op benchmark target.
pub struct Echo {
    delay: std::time::Duration,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EchoConfig {
    /// Sleeps this long per batch (a stand-in for model time).
    pub delay_ms: u64,
}

impl Deployment for Echo {
    type Config = EchoConfig;

    fn new(c: EchoConfig, _: &ReplicaContext) -> Result<Self, String> {
        Ok(Echo { delay: std::time::Duration::from_millis(c.delay_ms) })
    }

    fn handle_batch(&self, batch: Vec<Request>) -> Result<Vec<Response>, String> {
        std::thread::sleep(self.delay);
        let n = batch.len();
        Ok(batch
            .iter()
            .map(|r| {
                Response::json(&serde_json::json!({
                    "method": r.method, "path": r.path, "body": String::from_utf8_lossy(&r.body),
                    "batch_size": n, "pid": std::process::id(),
                }))
            })
            .collect())
    }
}

/// The deployment types of the `flare` binary: `flare.echo` and `flare.embeddings`.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.register::<Echo>("flare.echo").register::<crate::embeddings::Embeddings>("flare.embeddings");
    r
}
