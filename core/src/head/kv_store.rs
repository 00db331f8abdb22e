//! The head's KV store as a collectives [`Store`]: ranks anywhere that can reach the head
//! rendezvous through it (addresses, NCCL ids, progress), with the cluster token.

use std::time::{Duration, Instant};

use flare_collectives::{CollectiveError, Result, Store};

use super::client::HeadClient;

/// A [`Store`] over the head's `/api/kv` endpoints.
pub struct HeadStore {
    client: HeadClient,
}

fn store_err(e: impl std::fmt::Display) -> CollectiveError {
    CollectiveError::Store(format!("head KV: {e}"))
}

/// Percent-encodes what a URL path cannot carry as it is.
fn encode(key: &str) -> String {
    key.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl HeadStore {
    /// `address`: `http://host:port` of the head; `token`: the cluster token.
    pub fn new(address: &str, token: &str) -> Result<HeadStore> {
        let client = HeadClient::new(address, Some(token.to_string())).map_err(store_err)?;
        Ok(HeadStore { client })
    }
}

impl Store for HeadStore {
    fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        let r = self
            .client
            .request("PUT", &format!("/api/kv/{}", encode(key)), Some(("application/octet-stream", value)))
            .map_err(store_err)?;
        if r.status != 200 {
            return Err(store_err(format!("{}: {}", r.status, r.text())));
        }
        Ok(())
    }

    fn get(&self, key: &str, timeout: Duration) -> Result<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut nap = Duration::from_millis(2);
        loop {
            if let Some(v) = self.try_get(key)? {
                return Ok(v);
            }
            if Instant::now() >= deadline {
                return Err(CollectiveError::Store(format!("`{key}` was not set within {timeout:?}")));
            }
            std::thread::sleep(nap.min(deadline.saturating_duration_since(Instant::now())));
            nap = (nap * 2).min(Duration::from_millis(50));
        }
    }

    fn try_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let r = self.client.get(&format!("/api/kv/{}", encode(key))).map_err(store_err)?;
        match r.status {
            200 => Ok(Some(r.body)),
            404 => Ok(None),
            s => Err(store_err(format!("{s}: {}", r.text()))),
        }
    }

    fn add(&self, key: &str, delta: i64) -> Result<i64> {
        let r = self
            .client
            .request("POST", &format!("/api/kv_add/{}", encode(key)), Some(("text/plain", delta.to_string().as_bytes())))
            .map_err(store_err)?;
        if r.status != 200 {
            return Err(store_err(format!("{}: {}", r.status, r.text())));
        }
        r.text().trim().parse().map_err(store_err)
    }

    fn delete_prefix(&self, prefix: &str) -> Result<usize> {
        let r = self
            .client
            .request("POST", &format!("/api/kv_delete_prefix?prefix={}", encode(prefix).replace('/', "%2F")), None)
            .map_err(store_err)?;
        if r.status != 200 {
            return Err(store_err(format!("{}: {}", r.status, r.text())));
        }
        r.text().trim().parse().map_err(store_err)
    }
}
