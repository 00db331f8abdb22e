//! The head's HTTP API: Ray's Jobs REST API, packages, KV, status and metrics.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use super::jobs::{ApiError, SubmitRequest};
use super::Shared;

/// The largest working-dir package a client may upload.
pub const MAX_PACKAGE: usize = 512 << 20;
/// The largest JSON body any other endpoint takes.
const MAX_JSON: usize = 1 << 20;
/// The largest KV value.
const MAX_KV: usize = 16 << 20;
/// The Ray version reported to Ray's clients (they check it against their features).
pub const RAY_VERSION: &str = "2.60.0";

type S = State<Arc<Shared>>;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.0).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (code, self.1).into_response()
    }
}

fn err(code: u16, msg: impl Into<String>) -> ApiError {
    ApiError(code, msg.into())
}

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let packages = Router::new()
        .route("/api/packages/{protocol}/{name}", get(package_exists).put(package_upload))
        .layer(DefaultBodyLimit::max(MAX_PACKAGE + 1));
    let kv =
        Router::new().route("/api/kv/{*key}", get(kv_get).put(kv_put).delete(kv_delete)).layer(DefaultBodyLimit::max(MAX_KV));
    Router::new()
        .route("/api/version", get(version))
        .route("/api/jobs/", post(submit).get(list))
        .route("/api/jobs/{id}", get(job).delete(delete))
        .route("/api/jobs/{id}/stop", post(stop))
        .route("/api/jobs/{id}/logs", get(logs))
        .route("/api/jobs/{id}/logs/tail", get(tail))
        .route("/api/kv", get(kv_keys))
        .route("/api/kv_add/{*key}", post(kv_add))
        .route("/api/kv_claim/{*key}", post(kv_claim))
        .route("/api/kv_delete_prefix", post(kv_delete_prefix))
        .route("/api/cluster_status", get(cluster_status))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(MAX_JSON))
        .merge(packages)
        .merge(kv)
        .layer(middleware::from_fn_with_state(shared.clone(), auth))
        .with_state(shared)
}

/// Every endpoint needs `Authorization: Bearer <cluster token>`: without it nothing runs.
async fn auth(State(s): S, req: Request, next: Next) -> Response {
    let given = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    match given {
        None => (
            StatusCode::UNAUTHORIZED,
            "this Flare head requires its cluster token: send `Authorization: Bearer <token>` \
             (`flare token` prints it; Ray's client sends it with RAY_AUTH_MODE=token RAY_AUTH_TOKEN=<token>)",
        )
            .into_response(),
        Some(t) if constant_time_eq(t.trim().as_bytes(), s.token.as_bytes()) => next.run(req).await,
        Some(_) => (StatusCode::FORBIDDEN, "the token does not match this cluster's (`flare token` prints it)").into_response(),
    }
}

/// Compares two secrets in a time that does not depend on where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn version(State(s): S) -> Json<serde_json::Value> {
    Json(json!({
        "version": "4",
        "ray_version": RAY_VERSION,
        "ray_commit": "flare",
        "session_name": s.opts.session_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        "flare_version": env!("CARGO_PKG_VERSION"),
    }))
}

async fn package_exists(State(s): S, Path((protocol, name)): Path<(String, String)>) -> Result<StatusCode, ApiError> {
    let p = s.jobs.package_path(&protocol, &name).map_err(|e| err(400, e))?;
    if p.exists() {
        Ok(StatusCode::OK)
    } else {
        Err(err(404, format!("package {protocol}://{name} does not exist")))
    }
}

async fn package_upload(
    State(s): S,
    Path((protocol, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let p = s.jobs.package_path(&protocol, &name).map_err(|e| err(400, e))?;
    let too_big = || {
        err(413, format!("package {protocol}://{name} is over the {} MiB limit; leave large files out of the working dir (excludes) and fetch them in the job", MAX_PACKAGE >> 20))
    };
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_PACKAGE as u64) {
        return Err(too_big());
    }
    let bytes = axum::body::to_bytes(body, MAX_PACKAGE).await.map_err(|_| too_big())?;
    let dir = p.parent().unwrap().to_path_buf();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    tokio::fs::create_dir_all(&dir).await.map_err(|e| err(500, e.to_string()))?;
    tokio::fs::write(&tmp, &bytes).await.map_err(|e| err(500, e.to_string()))?;
    tokio::fs::rename(&tmp, &p).await.map_err(|e| err(500, e.to_string()))?;
    Ok(StatusCode::OK)
}

async fn submit(State(s): S, body: Bytes) -> Result<Json<serde_json::Value>, ApiError> {
    let req: SubmitRequest = serde_json::from_slice(&body).map_err(|e| err(400, format!("Failed to parse request: {e}")))?;
    let jobs = s.clone();
    let id = tokio::task::spawn_blocking(move || jobs.jobs.submit(req)).await.map_err(|e| err(500, e.to_string()))??;
    Ok(Json(json!({ "job_id": id, "submission_id": id })))
}

async fn list(State(s): S) -> Json<serde_json::Value> {
    Json(serde_json::to_value(s.jobs.list()).unwrap())
}

async fn job(State(s): S, Path(id): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    s.jobs.get(&id).map(|j| Json(serde_json::to_value(j).unwrap())).ok_or_else(|| err(404, format!("Job {id} does not exist")))
}

async fn stop(State(s): S, Path(id): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(json!({ "stopped": s.jobs.stop(&id)? })))
}

async fn delete(State(s): S, Path(id): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(json!({ "deleted": s.jobs.delete(&id)? })))
}

/// The largest log `GET .../logs` returns (the end of it).
const MAX_LOG: u64 = 64 << 20;

async fn logs(State(s): S, Path(id): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    if s.jobs.get(&id).is_none() {
        return Err(err(404, format!("Job {id} does not exist")));
    }
    let path = s.jobs.log_path(&id);
    let text = tokio::task::spawn_blocking(move || -> String {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(mut f) = std::fs::File::open(&path) else { return String::new() };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(MAX_LOG)));
        let mut b = Vec::new();
        let _ = f.read_to_end(&mut b);
        String::from_utf8_lossy(&b).into_owned()
    })
    .await
    .map_err(|e| err(500, e.to_string()))?;
    Ok(Json(json!({ "logs": text })))
}

async fn tail(State(s): S, Path(id): Path<String>, ws: WebSocketUpgrade) -> Result<Response, ApiError> {
    if s.jobs.get(&id).is_none() {
        return Err(err(404, format!("Job {id} does not exist")));
    }
    Ok(ws.on_upgrade(move |socket| follow(s, id, socket)))
}

/// Streams the log as it grows; closes normally once the job has ended and all is sent.
async fn follow(s: Arc<Shared>, id: String, mut socket: WebSocket) {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let path = s.jobs.log_path(&id);
    let mut offset = 0u64;
    loop {
        let done = s.jobs.get(&id).map(|j| j.status.is_terminal()).unwrap_or(true);
        let mut chunk = Vec::new();
        if let Ok(mut f) = tokio::fs::File::open(&path).await {
            if f.seek(std::io::SeekFrom::Start(offset)).await.is_ok() {
                let _ = (&mut f).take(1 << 20).read_to_end(&mut chunk).await;
            }
        }
        if !chunk.is_empty() {
            offset += chunk.len() as u64;
            if socket.send(Message::Text(String::from_utf8_lossy(&chunk).into_owned().into())).await.is_err() {
                return;
            }
            continue;
        }
        if done {
            // A normal close (1000), then wait for the client's close frame, as aiohttp expects.
            let frame = axum::extract::ws::CloseFrame { code: axum::extract::ws::close_code::NORMAL, reason: "".into() };
            if socket.send(Message::Close(Some(frame))).await.is_ok() {
                let _ =
                    tokio::time::timeout(Duration::from_secs(5), async { while let Some(Ok(_)) = socket.recv().await {} }).await;
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[derive(serde::Deserialize)]
struct Prefix {
    prefix: Option<String>,
}

fn kv_key(key: &str) -> Result<&str, ApiError> {
    if key.is_empty() || key.len() > 4096 {
        return Err(err(400, "KV keys are 1 to 4096 bytes"));
    }
    Ok(key)
}

async fn kv_get(State(s): S, Path(key): Path<String>) -> Result<Vec<u8>, ApiError> {
    s.db.kv_get(kv_key(&key)?).map_err(|e| err(500, e))?.ok_or_else(|| err(404, format!("no key {key}")))
}

async fn kv_put(State(s): S, Path(key): Path<String>, body: Bytes) -> Result<StatusCode, ApiError> {
    s.db.kv_put(kv_key(&key)?, &body).map_err(|e| err(500, e))?;
    Ok(StatusCode::OK)
}

async fn kv_delete(State(s): S, Path(key): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(json!({ "deleted": s.db.kv_delete(kv_key(&key)?).map_err(|e| err(500, e))? })))
}

/// Atomically adds the decimal integer in the body to the one at `key` (0 when unset).
async fn kv_add(State(s): S, Path(key): Path<String>, body: Bytes) -> Result<String, ApiError> {
    let key = kv_key(&key)?.to_string();
    let delta: i64 = std::str::from_utf8(&body)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| err(400, "the body must be a decimal integer"))?;
    let _guard = s.kv_lock.lock().await;
    let cur = match s.db.kv_get(&key).map_err(|e| err(500, e))? {
        None => 0,
        Some(v) => std::str::from_utf8(&v)
            .ok()
            .and_then(|v| v.parse::<i64>().ok())
            .ok_or_else(|| err(400, format!("{key} does not hold an integer")))?,
    };
    let new = cur.wrapping_add(delta);
    s.db.kv_put(&key, new.to_string().as_bytes()).map_err(|e| err(500, e))?;
    Ok(new.to_string())
}

/// Stores the body at `key` only if nothing is there (a named actor's claim on its name):
/// 200, or 409 with what the key holds.
async fn kv_claim(State(s): S, Path(key): Path<String>, body: Bytes) -> Result<Response, ApiError> {
    let key = kv_key(&key)?.to_string();
    let _guard = s.kv_lock.lock().await;
    if let Some(cur) = s.db.kv_get(&key).map_err(|e| err(500, e))? {
        return Ok((StatusCode::CONFLICT, cur).into_response());
    }
    s.db.kv_put(&key, &body).map_err(|e| err(500, e))?;
    Ok(StatusCode::OK.into_response())
}

async fn kv_delete_prefix(State(s): S, Query(q): Query<Prefix>) -> Result<String, ApiError> {
    let prefix = q.prefix.unwrap_or_default();
    let _guard = s.kv_lock.lock().await;
    let keys = s.db.kv_keys(&prefix).map_err(|e| err(500, e))?;
    for k in &keys {
        s.db.kv_delete(k).map_err(|e| err(500, e))?;
    }
    Ok(keys.len().to_string())
}

async fn kv_keys(State(s): S, Query(q): Query<Prefix>) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(json!({ "keys": s.db.kv_keys(q.prefix.as_deref().unwrap_or("")).map_err(|e| err(500, e))? })))
}

/// What the live drivers published (`super::STATE_PREFIX`): resources they hold per node, and
/// the work they cannot place now.
fn driver_usage(
    s: &Shared,
) -> (std::collections::HashMap<String, std::collections::HashMap<String, f64>>, Vec<serde_json::Value>) {
    let mut used: std::collections::HashMap<String, std::collections::HashMap<String, f64>> = Default::default();
    let mut demands = Vec::new();
    let now = super::now_ms();
    for key in s.db.kv_keys(super::STATE_PREFIX).unwrap_or_default() {
        let Ok(Some(bytes)) = s.db.kv_get(&key) else { continue };
        let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&bytes) else { continue };
        // A driver that stopped publishing (killed) no longer holds anything.
        if now.saturating_sub(doc["updated_ms"].as_u64().unwrap_or(0)) > 15_000 {
            continue;
        }
        for n in doc["nodes"].as_array().into_iter().flatten() {
            let entry = used.entry(n["name"].as_str().unwrap_or_default().to_string()).or_default();
            for (k, v) in n["used"].as_object().into_iter().flatten() {
                *entry.entry(k.clone()).or_default() += v.as_f64().unwrap_or(0.0);
            }
        }
        demands.extend(doc["demands"].as_array().into_iter().flatten().cloned());
    }
    (used, demands)
}

async fn cluster_status(State(s): S) -> Json<serde_json::Value> {
    let (used, demands) = driver_usage(&s);
    let nodes: Vec<serde_json::Value> = s
        .node_list()
        .into_iter()
        .map(|n| {
            let mut v = serde_json::to_value(&n).unwrap();
            v["resources_used_by_jobs"] = json!(s.jobs.used_on(&n.node_id));
            v["resources_used_by_drivers"] = json!(used.get(&n.node_id).cloned().unwrap_or_default());
            v
        })
        .collect();
    Json(json!({
        "nodes": nodes,
        "pending_demands": demands,
        "jobs": s.jobs.counts(),
        "head_started_at_ms": s.started_at_ms,
    }))
}

async fn metrics(State(s): S) -> impl IntoResponse {
    let mut out = String::new();
    out += "# HELP flare_jobs Jobs by status.\n# TYPE flare_jobs gauge\n";
    let counts = s.jobs.counts();
    for status in ["PENDING", "RUNNING", "STOPPED", "SUCCEEDED", "FAILED"] {
        out += &format!("flare_jobs{{status=\"{status}\"}} {}\n", counts.get(status).copied().unwrap_or(0));
    }
    out += "# HELP flare_node_resource_total Resources of each node.\n# TYPE flare_node_resource_total gauge\n";
    let nodes = s.node_list();
    for n in &nodes {
        let mut keys: Vec<_> = n.resources_total.iter().collect();
        keys.sort_by(|a, b| a.0.cmp(b.0));
        for (k, v) in keys {
            out += &format!("flare_node_resource_total{{node=\"{}\",resource=\"{k}\"}} {v}\n", n.node_id);
        }
    }
    out += "# HELP flare_node_alive Whether each node is alive (heartbeats arrive).\n# TYPE flare_node_alive gauge\n";
    for n in &nodes {
        out += &format!("flare_node_alive{{node=\"{}\"}} {}\n", n.node_id, u8::from(n.alive));
    }
    out += "# HELP flare_node_resource_used_by_jobs Resources job entrypoints hold.\n# TYPE flare_node_resource_used_by_jobs gauge\n";
    for n in &nodes {
        let mut used: Vec<_> = s.jobs.used_on(&n.node_id).into_iter().collect();
        used.sort_by(|a, b| a.0.cmp(&b.0));
        for (k, v) in used {
            out += &format!("flare_node_resource_used_by_jobs{{node=\"{}\",resource=\"{k}\"}} {v}\n", n.node_id);
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
