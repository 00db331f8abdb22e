//! The HTTP proxy (axum on hyper; HTTP/1.1 keep-alive and HTTP/2): routes by prefix to an
//! application's ingress deployment, bounds bodies and waiting time, and serves `/-/healthz`,
//! `/-/routes` and `/metrics`.

use crate::controller::Controller;
use crate::metrics::{label, Metrics};
use crate::router::Answer;
use crate::types::{Request, Response, MODEL_ID_HEADER, PRIORITY_HEADER};
use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use http_body_util::BodyExt;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// The proxy's settings.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub host: String,
    /// 0 picks a free port.
    pub port: u16,
    /// A request without a response by then gets 504.
    pub request_timeout: Duration,
    /// Larger request bodies get 413.
    pub max_body_bytes: usize,
    /// How long shutdown waits for accepted requests to finish.
    pub graceful_shutdown_timeout: Duration,
    /// How long a client may take to send a request's headers; an idle keep-alive connection
    /// is closed after it too.
    pub header_read_timeout: Duration,
    /// Serves the REST config API (`GET/PUT/DELETE /api/serve/applications/`) to callers
    /// presenting this bearer token; off when `None`.
    pub admin_token: Option<String>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            host: "127.0.0.1".into(),
            port: 8000,
            request_timeout: Duration::from_secs(60),
            max_body_bytes: 16 << 20,
            graceful_shutdown_timeout: Duration::from_secs(30),
            admin_token: None,
            header_read_timeout: Duration::from_secs(30),
        }
    }
}

/// A served application: its route prefix and its deployments' controllers (the ingress first).
pub(crate) struct Route {
    pub prefix: String,
    pub app: String,
    pub controllers: Vec<Arc<Controller>>,
}

impl Route {
    /// The deployment HTTP requests go to.
    pub fn ingress(&self) -> &Arc<Controller> {
        &self.controllers[0]
    }

    pub fn statuses(&self) -> Vec<crate::controller::DeploymentStatus> {
        self.controllers.iter().map(|c| c.status()).collect()
    }
}

/// What the REST config API asks of the thread that owns the [`crate::Serve`].
pub(crate) enum AdminCommand {
    Put(crate::config::ServeConfig, tokio::sync::oneshot::Sender<Result<(), String>>),
    Delete(tokio::sync::oneshot::Sender<()>),
}

pub(crate) struct ProxyState {
    pub routes: RwLock<Vec<Arc<Route>>>,
    pub metrics: Arc<Metrics>,
    pub opts: ServeOptions,
    pub draining: AtomicBool,
    pub admin: Option<std::sync::Mutex<std::sync::mpsc::Sender<AdminCommand>>>,
    /// `http://host:port` of the proxy.
    pub url: String,
}

impl ProxyState {
    /// The application whose prefix is the longest one matching `path`.
    fn route(&self, path: &str) -> Option<Arc<Route>> {
        let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
        routes
            .iter()
            .filter(|r| {
                r.prefix == "/" || path == r.prefix || path.strip_prefix(r.prefix.as_str()).is_some_and(|s| s.starts_with('/'))
            })
            .max_by_key(|r| r.prefix.len())
            .cloned()
    }
}

fn to_http(resp: Response) -> axum::response::Response {
    let body = Body::from(resp.body);
    with_body(resp.status, resp.headers, body)
}

fn with_body(status: u16, headers: Vec<(String, String)>, body: Body) -> axum::response::Response {
    let mut out = axum::response::Response::new(body);
    *out.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (k, v) in headers {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k), HeaderValue::try_from(v)) {
            out.headers_mut().append(k, v);
        }
    }
    out
}

/// Accepts connections until `stop`, then lets the open ones finish their requests (HTTP/1.1
/// and HTTP/2 by prior knowledge on one port; slow headers are cut off).
pub(crate) async fn serve_connections(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    header_read_timeout: Duration,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(header_read_timeout).keep_alive(true);
    builder.http2().timer(TokioTimer::new()).keep_alive_interval(Some(Duration::from_secs(20)));
    tokio::pin!(stop);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: wait instead of spinning.
                        tracing::warn!("the proxy could not accept a connection: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let svc = hyper_util::service::TowerToHyperService::new(app.clone());
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            _ = &mut stop => break,
        }
    }
    drop(listener);
    graceful.shutdown().await;
}

pub(crate) fn router(state: Arc<ProxyState>) -> axum::Router {
    use axum::routing::get;
    axum::Router::new()
        .route("/-/healthz", get(healthz))
        .route("/-/routes", get(routes))
        .route("/metrics", get(metrics))
        .route("/api/serve/applications", get(admin_get).put(admin_put).delete(admin_delete))
        .route("/api/serve/applications/", get(admin_get).put(admin_put).delete(admin_delete))
        .fallback(handle)
        .with_state(state)
}

async fn healthz(axum::extract::State(s): axum::extract::State<Arc<ProxyState>>) -> axum::response::Response {
    if s.draining.load(Ordering::Relaxed) {
        to_http(Response::text(503, "draining"))
    } else {
        to_http(Response::text(200, "success"))
    }
}

async fn routes(axum::extract::State(s): axum::extract::State<Arc<ProxyState>>) -> axum::response::Response {
    let routes = s.routes.read().unwrap_or_else(|p| p.into_inner());
    let map: serde_json::Map<String, serde_json::Value> =
        routes.iter().map(|r| (r.prefix.clone(), r.app.clone().into())).collect();
    to_http(Response::json(&map))
}

async fn metrics(axum::extract::State(s): axum::extract::State<Arc<ProxyState>>) -> axum::response::Response {
    let mut out = String::new();
    s.metrics.render(&mut out);
    let routes: Vec<Arc<Route>> = s.routes.read().unwrap_or_else(|p| p.into_inner()).clone();
    out.push_str("# HELP flare_serve_queue_depth Requests waiting for a replica.\n# TYPE flare_serve_queue_depth gauge\n");
    for c in routes.iter().flat_map(|r| &r.controllers) {
        let _ = writeln!(out, "flare_serve_queue_depth{{deployment=\"{}\"}} {}", label(&c.router.name), c.router.queued());
    }
    out.push_str("# HELP flare_serve_replicas Replicas by state.\n# TYPE flare_serve_replicas gauge\n");
    for st in routes.iter().flat_map(|r| r.statuses()) {
        for state in crate::controller::ReplicaState::ALL {
            let n = st.replicas.iter().filter(|x| x.state == state).count();
            let _ = writeln!(out, "flare_serve_replicas{{deployment=\"{}\",state=\"{}\"}} {n}", label(&st.name), state.as_str());
        }
    }
    let mut resp = Response::text(200, out);
    resp.headers = vec![("content-type".into(), "text/plain; version=0.0.4".into())];
    to_http(resp)
}

async fn handle(
    axum::extract::State(s): axum::extract::State<Arc<ProxyState>>,
    req: axum::extract::Request,
) -> axum::response::Response {
    let t0 = Instant::now();
    let path = req.uri().path().to_string();
    let Some(route) = s.route(&path) else {
        return to_http(Response::error(404, &format!("no application serves '{path}' (see /-/routes)")));
    };
    let answer = forward(&s, &route, req).await;
    let mut resp = answer.resp;
    s.metrics.request(&route.prefix, resp.status, t0.elapsed().as_secs_f64());
    let stream_id = resp.header(crate::stream::STREAM_HEADER).and_then(|v| v.parse::<u64>().ok());
    match (stream_id, answer.replica) {
        (Some(id), Some(replica)) => {
            resp.headers.retain(|(k, _)| k != crate::stream::STREAM_HEADER);
            with_body(resp.status, resp.headers, stream_body(replica, id))
        }
        _ => to_http(resp),
    }
}

/// Cancels a replica's stream when the client goes before it ended.
struct StreamGuard {
    replica: crate::replica::Backend,
    id: u64,
    done: bool,
    pending: std::collections::VecDeque<Vec<u8>>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if !self.done {
            self.replica.stream_cancel(self.id);
        }
    }
}

/// A body that pulls a replica's stream chunk by chunk.
fn stream_body(replica: crate::replica::Backend, id: u64) -> Body {
    let guard = StreamGuard { replica, id, done: false, pending: Default::default() };
    Body::from_stream(futures_util::stream::unfold(guard, |mut g| async move {
        loop {
            if let Some(c) = g.pending.pop_front() {
                return Some((Ok::<_, std::io::Error>(axum::body::Bytes::from(c)), g));
            }
            if g.done {
                return None;
            }
            match g.replica.stream_next(g.id, 100).await {
                Ok(chunk) => {
                    g.done = chunk.done;
                    g.pending.extend(chunk.chunks.into_iter().map(|b| b.into_vec()));
                }
                Err(e) => {
                    g.done = true;
                    return Some((Err(std::io::Error::other(format!("the stream broke: {e}"))), g));
                }
            }
        }
    }))
}

fn plain(resp: Response) -> Answer {
    Answer { resp, replica: None }
}

async fn forward(s: &ProxyState, route: &Route, req: axum::extract::Request) -> Answer {
    if s.draining.load(Ordering::Relaxed) {
        return plain(Response::error(503, "the server is shutting down").with_header("retry-after", "1"));
    }
    let max = s.opts.max_body_bytes;
    let too_large = || Response::error(413, &format!("the request body is larger than the limit of {max} bytes"));
    if let Some(len) = req.headers().get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok()) {
        if len > max as u64 {
            return plain(too_large());
        }
    }
    let (parts, body) = req.into_parts();
    // The body is bounded in time too (a client that sends it slowly gets 408).
    let body = match tokio::time::timeout(s.opts.request_timeout, http_body_util::Limited::new(body, max).collect()).await {
        Ok(Ok(b)) => b.to_bytes().to_vec(),
        Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => return plain(too_large()),
        Ok(Err(e)) => return plain(Response::error(400, &format!("reading the request body failed: {e}"))),
        Err(_) => {
            let t = s.opts.request_timeout.as_secs_f64();
            return plain(Response::error(408, &format!("the request body did not arrive within {t:.1} s")));
        }
    };
    let path = parts.uri.path();
    let sub = if route.prefix == "/" { path } else { &path[route.prefix.len()..] };
    let headers: Vec<(String, String)> =
        parts.headers.iter().filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str().to_string(), v.to_string()))).collect();
    let model_id = parts.headers.get(MODEL_ID_HEADER).and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty()).map(str::to_string);
    let priority = match parts.headers.get(PRIORITY_HEADER).map(|v| v.to_str().ok().and_then(|v| v.trim().parse::<i64>().ok())) {
        None => 0,
        Some(Some(p)) => p,
        Some(None) => return plain(Response::error(400, &format!("the {PRIORITY_HEADER} header must be an integer"))),
    };
    let request = Request {
        method: parts.method.as_str().to_string(),
        path: if sub.is_empty() { "/".into() } else { sub.to_string() },
        query: parts.uri.query().unwrap_or("").to_string(),
        headers,
        body,
        model_id,
    };
    let router = route.ingress().router.clone();
    match tokio::time::timeout(s.opts.request_timeout, async move { router.submit(request, priority).await.await }).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(_)) => plain(Response::error(500, "the request was dropped without an answer")),
        Err(_) => plain(Response::error(
            504,
            &format!("no response within the request timeout of {:.1} s", s.opts.request_timeout.as_secs_f64()),
        )),
    }
}

type S = axum::extract::State<Arc<ProxyState>>;

/// The REST config API's caller check: 404 when it is off, 401 without the token, 403 with a
/// wrong one.
#[allow(clippy::result_large_err)]
fn admin_auth(s: &ProxyState, headers: &axum::http::HeaderMap) -> Result<(), Response> {
    let Some(token) = &s.opts.admin_token else {
        return Err(Response::error(
            404,
            "the REST config API is off (it is served by `flare serve run` and `flare serve deploy`)",
        ));
    };
    match headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")) {
        None => Err(Response::error(
            401,
            "the REST config API needs `Authorization: Bearer TOKEN` (the token is in the session's serve.json)",
        )),
        Some(t) if flare_core::head::constant_time_eq(t.trim().as_bytes(), token.as_bytes()) => Ok(()),
        Some(_) => Err(Response::error(403, "the token does not match this Serve instance's")),
    }
}

/// Ray's `ServeInstanceDetails` shape, from the routes' controllers.
pub(crate) fn details(s: &ProxyState, url: &str) -> serde_json::Value {
    let routes: Vec<Arc<Route>> = s.routes.read().unwrap_or_else(|p| p.into_inner()).clone();
    let mut apps = serde_json::Map::new();
    for r in routes {
        let ds = r.statuses();
        // Ray's name for an application whose replicas do not start.
        let status = match crate::controller::application_status(&ds) {
            "UNHEALTHY" => "DEPLOY_FAILED",
            s => s,
        };
        let message: Vec<&str> = ds.iter().map(|d| d.message.as_str()).filter(|m| !m.is_empty()).collect();
        let mut deployments = serde_json::Map::new();
        for d in &ds {
            let mut states = serde_json::Map::new();
            for x in &d.replicas {
                let n = states.get(x.state.as_str()).and_then(|v| v.as_u64()).unwrap_or(0) + 1;
                states.insert(x.state.as_str().to_string(), n.into());
            }
            deployments.insert(
                d.name.clone(),
                serde_json::json!({
                    "name": d.name, "status": d.status, "message": d.message, "target_num_replicas": d.target_replicas,
                    "replica_states": states, "queued_requests": d.queued, "replicas": d.replicas,
                }),
            );
        }
        apps.insert(
            r.app.clone(),
            serde_json::json!({
                "name": r.app, "route_prefix": r.prefix, "status": status, "message": message.join("; "),
                "deployments": deployments,
            }),
        );
    }
    serde_json::json!({"proxy_location": "HeadOnly", "proxy_url": url, "applications": apps})
}

async fn admin_get(axum::extract::State(s): S, headers: axum::http::HeaderMap) -> axum::response::Response {
    if let Err(r) = admin_auth(&s, &headers) {
        return to_http(r);
    }
    to_http(Response::json(&details(&s, &s.url)))
}

async fn admin_send(s: &ProxyState, make: impl FnOnce() -> AdminCommand) -> Result<(), Response> {
    let Some(tx) = &s.admin else { return Err(Response::error(404, "the REST config API is off")) };
    tx.lock().unwrap_or_else(|p| p.into_inner()).send(make()).map_err(|_| Response::error(503, "Serve is shutting down"))
}

async fn admin_put(
    axum::extract::State(s): S,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    if let Err(r) = admin_auth(&s, &headers) {
        return to_http(r);
    }
    if body.len() > crate::config::MAX_CONFIG_BYTES {
        return to_http(Response::error(413, &format!("the config is larger than {} bytes", crate::config::MAX_CONFIG_BYTES)));
    }
    let cfg = match std::str::from_utf8(&body).map_err(|e| e.to_string()).and_then(crate::config::ServeConfig::parse) {
        Ok(c) => c,
        Err(e) => return to_http(Response::error(400, &e)),
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    if let Err(r) = admin_send(&s, || AdminCommand::Put(cfg, tx)).await {
        return to_http(r);
    }
    match tokio::time::timeout(Duration::from_secs(300), rx).await {
        Ok(Ok(Ok(()))) => to_http(Response::json(&serde_json::json!({"ok": true}))),
        Ok(Ok(Err(e))) => to_http(Response::error(400, &e)),
        _ => to_http(Response::error(503, "Serve did not apply the config (shutting down?)")),
    }
}

async fn admin_delete(axum::extract::State(s): S, headers: axum::http::HeaderMap) -> axum::response::Response {
    if let Err(r) = admin_auth(&s, &headers) {
        return to_http(r);
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    if let Err(r) = admin_send(&s, || AdminCommand::Delete(tx)).await {
        return to_http(r);
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
    to_http(Response::json(&serde_json::json!({"ok": true, "shutting_down": true})))
}
