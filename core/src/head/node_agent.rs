//! A worker node's agent: registers with the head over gRPC and heartbeats, reconnecting when
//! the head restarts. (Running the node's worker pool and object store for the cluster's
//! scheduler is the next step; today the agent makes the node and its resources known.)

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request};

use super::rpc::{HeartbeatRequest, RegisterNodeRequest, RpcClient};

#[derive(Debug, Clone)]
pub struct NodeAgentOptions {
    /// `host:port` of the head's gRPC service.
    pub head: String,
    pub token: String,
    pub node_id: String,
    /// This node's address as other nodes will reach it.
    pub address: String,
    pub resources: HashMap<String, f64>,
    pub labels: HashMap<String, String>,
    pub session_dir: PathBuf,
}

/// What `node.json` holds.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NodeInfo {
    pub pid: u32,
    pub node_id: String,
    pub head: String,
}

fn authed<T>(msg: T, token: &str) -> Request<T> {
    let mut r = Request::new(msg);
    if let Ok(v) = format!("Bearer {token}").parse() {
        r.metadata_mut().insert("authorization", v);
    }
    r
}

async fn connect(head: &str) -> Result<RpcClient<Channel>, String> {
    let ep = Endpoint::from_shared(format!("http://{head}"))
        .map_err(|e| format!("`{head}` is not a head address: {e}"))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5));
    let ch = ep.connect().await.map_err(|e| format!("cannot reach the head at {head}: {e}"))?;
    Ok(RpcClient::new(ch))
}

/// Runs the agent until SIGTERM or SIGINT. Fails at once if the head refuses the token.
pub fn run(opts: NodeAgentOptions) -> Result<(), String> {
    std::fs::create_dir_all(&opts.session_dir).map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(|e| e.to_string())?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).map_err(|e| e.to_string())?;
        let mut registered_once = false;
        loop {
            let session = async {
                let mut c = connect(&opts.head).await?;
                let req = RegisterNodeRequest {
                    node_id: opts.node_id.clone(),
                    address: opts.address.clone(),
                    resources: opts.resources.clone(),
                    labels: opts.labels.clone(),
                    pid: std::process::id(),
                };
                let reply = c.register_node(authed(req, &opts.token)).await.map_err(|s| match s.code() {
                    Code::Unauthenticated | Code::PermissionDenied => {
                        format!("FATAL the head refused this node: {}", s.message())
                    }
                    _ => format!("registering with the head: {}", s.message()),
                })?;
                let every = Duration::from_millis(reply.into_inner().heartbeat_interval_ms.clamp(50, 10_000));
                if !registered_once {
                    let info = NodeInfo { pid: std::process::id(), node_id: opts.node_id.clone(), head: opts.head.clone() };
                    let p = opts.session_dir.join("node.json");
                    std::fs::write(&p, serde_json::to_vec_pretty(&info).unwrap()).map_err(|e| e.to_string())?;
                    registered_once = true;
                }
                tracing::info!(node = %opts.node_id, head = %opts.head, "registered with the head");
                loop {
                    tokio::time::sleep(every).await;
                    let r = c
                        .heartbeat(authed(HeartbeatRequest { node_id: opts.node_id.clone() }, &opts.token))
                        .await
                        .map_err(|s| s.message().to_string())?;
                    if !r.into_inner().known {
                        return Err::<(), String>("the head no longer knows this node; registering again".into());
                    }
                }
            };
            tokio::select! {
                r = session => {
                    if let Err(e) = r {
                        if let Some(fatal) = e.strip_prefix("FATAL ") {
                            return Err(fatal.to_string());
                        }
                        tracing::warn!("{e}; retrying");
                    }
                }
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        let _ = std::fs::remove_file(opts.session_dir.join("node.json"));
        Ok(())
    })
}
