//! The head's gRPC service (tonic + prost): node agents register and heartbeat.
//! Every call carries `authorization: Bearer <cluster token>` metadata.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

use super::{now_ms, Shared};

#[allow(clippy::all, missing_docs, unreachable_pub)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/flare.Head.rs"));
}
pub use generated::head_client::HeadClient as RpcClient;
pub use generated::head_server::{Head as HeadService, HeadServer};

#[derive(Clone, PartialEq, prost::Message)]
pub struct RegisterNodeRequest {
    #[prost(string, tag = "1")]
    pub node_id: String,
    #[prost(string, tag = "2")]
    pub address: String,
    #[prost(map = "string, double", tag = "3")]
    pub resources: HashMap<String, f64>,
    #[prost(map = "string, string", tag = "4")]
    pub labels: HashMap<String, String>,
    #[prost(uint32, tag = "5")]
    pub pid: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RegisterNodeReply {
    #[prost(uint64, tag = "1")]
    pub heartbeat_interval_ms: u64,
    #[prost(string, tag = "2")]
    pub session_name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct HeartbeatRequest {
    #[prost(string, tag = "1")]
    pub node_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct HeartbeatReply {
    /// False when the head does not know the node (it must register again).
    #[prost(bool, tag = "1")]
    pub known: bool,
}

/// A node as the head's table has it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NodeEntry {
    pub node_id: String,
    pub address: String,
    pub is_head: bool,
    pub alive: bool,
    pub resources_total: HashMap<String, f64>,
    pub labels: HashMap<String, String>,
    pub pid: u32,
    pub last_heartbeat_ms: u64,
    pub registered_ms: u64,
}

/// How often node agents heartbeat.
pub const HEARTBEAT: Duration = Duration::from_millis(500);

/// How long a node may miss heartbeats before it is declared dead (`FLARE_NODE_DEAD_AFTER_MS`).
pub fn dead_after() -> Duration {
    std::env::var("FLARE_NODE_DEAD_AFTER_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(Duration::from_secs(5))
}

pub(crate) struct Rpc(pub Arc<Shared>);

fn check<T>(s: &Shared, req: &Request<T>) -> Result<(), Status> {
    let given = req.metadata().get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    match given {
        None => Err(Status::unauthenticated("this Flare head requires its cluster token (authorization: Bearer <token>)")),
        Some(t) if super::http::constant_time_eq(t.as_bytes(), s.token.as_bytes()) => Ok(()),
        Some(_) => Err(Status::permission_denied("the token does not match this cluster's")),
    }
}

#[tonic::async_trait]
impl HeadService for Rpc {
    async fn register_node(&self, req: Request<RegisterNodeRequest>) -> Result<Response<RegisterNodeReply>, Status> {
        check(&self.0, &req)?;
        let r = req.into_inner();
        if r.node_id.is_empty() || r.node_id.len() > 128 || r.resources.len() > 1024 || r.labels.len() > 1024 {
            return Err(Status::invalid_argument("node_id must be 1-128 bytes, with at most 1024 resources and labels"));
        }
        if r.resources.values().any(|v| !v.is_finite() || *v < 0.0) {
            return Err(Status::invalid_argument("resources must be non-negative numbers"));
        }
        let now = now_ms();
        let entry = NodeEntry {
            node_id: r.node_id.clone(),
            address: r.address,
            is_head: false,
            alive: true,
            resources_total: r.resources,
            labels: r.labels,
            pid: r.pid,
            last_heartbeat_ms: now,
            registered_ms: now,
        };
        tracing::info!(node = %entry.node_id, "node registered");
        self.0.put_node(entry).map_err(Status::internal)?;
        Ok(Response::new(RegisterNodeReply {
            heartbeat_interval_ms: HEARTBEAT.as_millis() as u64,
            session_name: self.0.opts.session_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        }))
    }

    async fn heartbeat(&self, req: Request<HeartbeatRequest>) -> Result<Response<HeartbeatReply>, Status> {
        check(&self.0, &req)?;
        let id = req.into_inner().node_id;
        let known = self.0.touch_node(&id);
        Ok(Response::new(HeartbeatReply { known }))
    }
}
