//! Serve end to end: replicas in worker processes behind the HTTP proxy, driven over real
//! sockets: batching, priorities, autoscaling, overload, replica death, health checks,
//! multiplexing, bad input and graceful shutdown.

use flare_serve::client::{HttpClient, HttpResponse};
use flare_serve::{
    deployment, Application, AutoscalingConfig, BatchConfig, Deployment, DeploymentSpec, ReplicaContext, ReplicaState, Request,
    Response, Serve, ServeOptions, MODEL_ID_HEADER, PRIORITY_HEADER,
};
use serde::{Deserialize, Serialize};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

#[derive(Clone, Default, Serialize, Deserialize)]
struct EchoConfig {
    sleep_ms: u64,
    health_marker: Option<String>,
}

/// Answers every request with what it saw: its process, the batch size, the path, the model.
struct Echo {
    c: EchoConfig,
    log: Mutex<Vec<String>>,
}

impl Deployment for Echo {
    type Config = EchoConfig;

    fn new(c: EchoConfig, _: &ReplicaContext) -> Result<Self, String> {
        Ok(Echo { c, log: Mutex::new(Vec::new()) })
    }

    fn handle_batch(&self, batch: Vec<Request>) -> Result<Vec<Response>, String> {
        if batch.iter().any(|r| r.body == b"fail") {
            return Err("asked to fail".into());
        }
        if batch.iter().any(|r| r.body == b"panic") {
            panic!("asked to panic");
        }
        std::thread::sleep(Duration::from_millis(self.c.sleep_ms));
        let n = batch.len();
        let log = self.log.lock().unwrap().clone();
        Ok(batch
            .into_iter()
            .map(|r| {
                if r.path == "/json" {
                    if let Err(resp) = r.json::<serde_json::Value>() {
                        return resp;
                    }
                }
                Response::json(&serde_json::json!({
                    "pid": std::process::id(), "batch_size": n, "path": r.path, "model": r.model_id,
                    "body": String::from_utf8_lossy(&r.body), "log": log,
                }))
            })
            .collect())
    }

    fn check_health(&self) -> Result<(), String> {
        match &self.c.health_marker {
            Some(m) if std::path::Path::new(m).exists() => Err("the marker file says unhealthy".into()),
            _ => Ok(()),
        }
    }

    fn load_model(&self, id: &str) -> Result<(), String> {
        if id == "broken" {
            return Err("no such model".into());
        }
        self.log.lock().unwrap().push(format!("load:{id}"));
        Ok(())
    }

    fn unload_model(&self, id: &str) {
        self.log.lock().unwrap().push(format!("unload:{id}"));
    }
}

fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        flare_core::init_with(flare_core::Config::new().num_cpus(64.0).log_to_driver(false)).expect("flare init");
    });
}

fn echo(name: &str, c: EchoConfig) -> DeploymentSpec {
    deployment::<Echo>(name, c).num_cpus(0.5)
}

fn start(prefix: &str, d: DeploymentSpec, opts: ServeOptions) -> Serve {
    init();
    let s = flare_serve::run([Application::new(prefix, d)], ServeOptions { port: 0, ..opts }).unwrap();
    s.wait_ready(Duration::from_secs(60)).unwrap();
    s
}

fn post(s: &Serve, path: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
    HttpClient::new(s.addr().to_string()).request("POST", path, headers, body).unwrap()
}

/// `n` clients at once, each sending one request; their responses in client order.
fn burst(s: &Serve, n: usize, path: &str, body: &'static [u8]) -> Vec<HttpResponse> {
    let addr = s.addr().to_string();
    let path = path.to_string();
    let hs: Vec<_> = (0..n)
        .map(|_| {
            let (addr, path) = (addr.clone(), path.clone());
            std::thread::spawn(move || HttpClient::new(addr).request("POST", &path, &[], body).unwrap())
        })
        .collect();
    hs.into_iter().map(|h| h.join().unwrap()).collect()
}

fn json(r: &HttpResponse) -> serde_json::Value {
    assert_eq!(r.status, 200, "{}", r.text());
    r.json().unwrap()
}

fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

fn running(s: &Serve) -> Vec<u32> {
    s.status().applications[0].deployments[0]
        .replicas
        .iter()
        .filter(|r| r.state == ReplicaState::Running)
        .filter_map(|r| r.pid)
        .collect()
}

#[test]
fn requests_are_batched_up_to_the_max_and_a_lone_one_waits_the_timeout() {
    let d = echo("batched", EchoConfig::default()).max_batch_size(8, Duration::from_millis(300)).max_ongoing_requests(8);
    let s = start("/", d, ServeOptions::default());
    let sizes: Vec<u64> = burst(&s, 8, "/", b"x").iter().map(|r| json(r)["batch_size"].as_u64().unwrap()).collect();
    assert!(sizes.iter().all(|&b| b <= 8), "{sizes:?}");
    assert!(*sizes.iter().max().unwrap() >= 6, "8 requests at once were not batched together: {sizes:?}");
    let t0 = Instant::now();
    let alone = json(&post(&s, "/", &[], b"x"));
    let waited = t0.elapsed();
    assert_eq!(alone["batch_size"], 1);
    assert!(waited >= Duration::from_millis(290) && waited < Duration::from_secs(3), "a lone request took {waited:?}");
    // 16 at once: two full batches of 8, never more.
    let sizes: Vec<u64> = burst(&s, 16, "/", b"x").iter().map(|r| json(r)["batch_size"].as_u64().unwrap()).collect();
    assert!(sizes.iter().all(|&b| b <= 8), "{sizes:?}");
    let mut m = HttpClient::new(s.addr().to_string());
    let metrics = m.get("/metrics").unwrap().text();
    assert!(metrics.contains("flare_serve_batch_size_bucket{deployment=\"batched\",le=\"8\"}"), "{metrics}");
}

#[test]
fn a_preferred_batch_size_goes_without_waiting_and_the_batch_is_not_capped_by_max_ongoing() {
    let b = BatchConfig {
        max_batch_size: 16,
        batch_wait_timeout: Duration::from_secs(5),
        preferred_batch_sizes: vec![4],
        ..Default::default()
    };
    // max_ongoing_requests 2 would cap Ray Serve's batches at 2; here a full batch always runs.
    let s = start("/", echo("preferred", EchoConfig::default()).batching(b).max_ongoing_requests(2), ServeOptions::default());
    let t0 = Instant::now();
    let sizes: Vec<u64> = burst(&s, 4, "/", b"x").iter().map(|r| json(r)["batch_size"].as_u64().unwrap()).collect();
    assert!(t0.elapsed() < Duration::from_millis(2500), "a preferred size waited {:?}", t0.elapsed());
    assert_eq!(sizes, vec![4, 4, 4, 4]);
}

#[test]
fn higher_priority_requests_run_first() {
    let d = echo("prio", EchoConfig { sleep_ms: 150, ..Default::default() }).max_ongoing_requests(1);
    let s = start("/", d, ServeOptions::default());
    let addr = s.addr().to_string();
    let send = |prio: &'static str, delay: u64| {
        let addr = addr.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(delay));
            HttpClient::new(addr).request("POST", "/", &[(PRIORITY_HEADER, prio)], b"x").unwrap();
            Instant::now()
        })
    };
    // One runs; three low ones queue; then a high one arrives and must overtake them.
    let first = send("0", 0);
    let lows: Vec<_> = (0..3).map(|_| send("0", 40)).collect();
    let high = send("10", 90);
    let high_done = high.join().unwrap();
    first.join().unwrap();
    let lows_done: Vec<Instant> = lows.into_iter().map(|h| h.join().unwrap()).collect();
    let overtaken = lows_done.iter().filter(|&&t| t > high_done).count();
    assert!(overtaken >= 2, "the high-priority request finished after {} of 3 queued low ones", 3 - overtaken);
}

#[test]
fn autoscaling_goes_up_under_load_and_back_down_after() {
    let a = AutoscalingConfig {
        min_replicas: 1,
        max_replicas: 3,
        target_ongoing_requests: 1.0,
        upscale_delay: Duration::from_millis(300),
        downscale_delay: Duration::from_secs(1),
        look_back: Duration::from_millis(500),
    };
    let d = echo("scaled", EchoConfig { sleep_ms: 50, ..Default::default() }).autoscaling(a).max_ongoing_requests(1);
    let s = start("/", d, ServeOptions::default());
    assert_eq!(running(&s).len(), 1);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let addr = s.addr().to_string();
    let clients: Vec<_> = (0..6)
        .map(|_| {
            let (addr, stop) = (addr.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut c = HttpClient::new(addr);
                let (mut ok, mut pids) = (0, std::collections::BTreeSet::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let r = c.request("POST", "/", &[], b"x").unwrap();
                    assert_eq!(r.status, 200, "{}", r.text());
                    pids.insert(r.json().unwrap()["pid"].as_u64().unwrap());
                    ok += 1;
                }
                (ok, pids)
            })
        })
        .collect();
    let up = eventually(Duration::from_secs(30), || running(&s).len() == 3);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut pids = std::collections::BTreeSet::new();
    for c in clients {
        let (ok, p) = c.join().unwrap();
        assert!(ok > 0);
        pids.extend(p);
    }
    assert!(up, "never reached 3 replicas: {:?}", s.status());
    assert!(pids.len() >= 2, "the load went to {} replica process(es)", pids.len());
    assert!(eventually(Duration::from_secs(30), || running(&s).len() == 1), "did not scale back down: {:?}", s.status());
    assert!(s.status().applications[0].deployments[0].replicas_started >= 3);
}

#[test]
fn overload_gets_503_with_retry_after_and_the_queue_stays_bounded() {
    let d = echo("small", EchoConfig { sleep_ms: 100, ..Default::default() }).max_ongoing_requests(1).max_queued_requests(5);
    let s = start("/", d, ServeOptions::default());
    let rs = burst(&s, 40, "/", b"x");
    let ok = rs.iter().filter(|r| r.status == 200).count();
    let rejected: Vec<&HttpResponse> = rs.iter().filter(|r| r.status == 503).collect();
    assert_eq!(ok + rejected.len(), 40, "{:?}", rs.iter().map(|r| r.status).collect::<Vec<_>>());
    assert!((5..=12).contains(&ok), "{ok} served with one running and five queued");
    assert!(rejected.iter().all(|r| r.header("retry-after") == Some("1") && r.text().contains("max_queued_requests")));
    assert!(s.status().applications[0].deployments[0].queued <= 5);
}

#[test]
fn a_killed_replica_is_replaced_and_its_requests_are_retried_or_fail_cleanly() {
    let d = echo("killme", EchoConfig { sleep_ms: 20, ..Default::default() }).num_replicas(2).max_ongoing_requests(2);
    let s = start("/", d, ServeOptions::default());
    let before = running(&s);
    assert_eq!(before.len(), 2);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let addr = s.addr().to_string();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (addr, stop) = (addr.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut c = HttpClient::new(addr);
                let mut codes = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    codes.push(c.request("POST", "/", &[], b"x").unwrap().status);
                }
                codes
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    // Safety: a worker process of this test's own cluster.
    unsafe { libc::kill(before[0] as i32, libc::SIGKILL) };
    let replaced = eventually(Duration::from_secs(30), || {
        let now = running(&s);
        now.len() == 2 && !now.contains(&before[0])
    });
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let codes: Vec<u16> = clients.into_iter().flat_map(|c| c.join().unwrap()).collect();
    assert!(replaced, "the killed replica was not replaced: {:?}", s.status());
    assert!(codes.iter().all(|&c| c == 200 || c == 503), "unexpected statuses: {codes:?}");
    let ok = codes.iter().filter(|&&c| c == 200).count();
    assert!(ok * 10 >= codes.len() * 9, "{ok} of {} requests served", codes.len());
    assert!(s.status().applications[0].deployments[0].replicas_started >= 3);
    for r in burst(&s, 8, "/", b"x") {
        assert_eq!(r.status, 200);
    }
}

#[test]
fn a_replica_failing_its_health_check_is_replaced() {
    let marker = std::env::temp_dir().join(format!("flare-serve-unhealthy-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let c = EchoConfig { health_marker: Some(marker.to_string_lossy().into()), ..Default::default() };
    let d = echo("health", c).health_check(Duration::from_millis(200), Duration::from_secs(5));
    let s = start("/", d, ServeOptions::default());
    let old = running(&s);
    std::fs::write(&marker, b"1").unwrap();
    assert!(eventually(Duration::from_secs(20), || !running(&s).contains(&old[0])), "{:?}", s.status());
    std::fs::remove_file(&marker).unwrap();
    assert!(eventually(Duration::from_secs(30), || running(&s).len() == 1), "{:?}", s.status());
    assert!(s.status().applications[0].deployments[0].message.contains("health check"), "{:?}", s.status());
    assert_eq!(json(&post(&s, "/", &[], b"x"))["batch_size"], 1);
}

#[test]
fn multiplexed_models_route_to_a_replica_that_has_them_and_are_evicted_lru() {
    let s = start("/", echo("multi", EchoConfig::default()).num_replicas(2).max_models_per_replica(2), ServeOptions::default());
    let mut c = HttpClient::new(s.addr().to_string());
    let mut pids = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let r = json(&c.request("POST", "/", &[(MODEL_ID_HEADER, "m1")], b"x").unwrap());
        assert_eq!(r["model"], "m1");
        pids.insert(r["pid"].as_u64().unwrap());
    }
    assert_eq!(pids.len(), 1, "requests for one model went to {} replicas", pids.len());
    let broken = c.request("POST", "/", &[(MODEL_ID_HEADER, "broken")], b"x").unwrap();
    assert_eq!(broken.status, 500);
    assert!(broken.text().contains("loading model 'broken' failed: no such model"), "{}", broken.text());

    // LRU on one replica: a, b, a, c evicts b.
    let s = start("/", echo("lru", EchoConfig::default()).max_models_per_replica(2), ServeOptions::default());
    let mut c = HttpClient::new(s.addr().to_string());
    for m in ["a", "b", "a", "c", "c"] {
        json(&c.request("POST", "/", &[(MODEL_ID_HEADER, m)], b"x").unwrap());
    }
    let r = json(&c.request("POST", "/", &[(MODEL_ID_HEADER, "a")], b"x").unwrap());
    let log: Vec<&str> = r["log"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(log, ["load:a", "load:b", "unload:b", "load:c"]);
    let models = || s.status().applications[0].deployments[0].replicas[0].models.clone();
    assert!(eventually(Duration::from_secs(5), || models() == ["c", "a"]), "loaded models {:?}", models());
}

#[test]
fn bad_input_gets_4xx_and_handler_errors_fail_their_batch_with_the_message() {
    let opts = ServeOptions { max_body_bytes: 1 << 20, ..Default::default() };
    let s = start("/api", echo("strict", EchoConfig::default()).max_batch_size(4, Duration::from_millis(50)), opts);
    let bad = post(&s, "/api/json", &[], b"{not json");
    assert_eq!(bad.status, 400);
    assert!(bad.text().contains("not valid JSON"), "{}", bad.text());
    let big = vec![b'x'; 2 << 20];
    let r = post(&s, "/api/json", &[], &big);
    assert_eq!(r.status, 413);
    assert!(r.text().contains("larger than the limit of 1048576 bytes"), "{}", r.text());
    let r = post(&s, "/elsewhere", &[], b"x");
    assert_eq!(r.status, 404);
    assert!(r.text().contains("no application serves '/elsewhere'"));
    let r = post(&s, "/api", &[(PRIORITY_HEADER, "high")], b"x");
    assert_eq!(r.status, 400);
    assert_eq!(json(&post(&s, "/api/x/y", &[], b"ok"))["path"], "/x/y");
    // An error fails every request of its batch, with the message; a panic too.
    let rs = burst(&s, 4, "/api", b"fail");
    assert!(
        rs.iter().all(|r| r.status == 500 && r.text().contains("asked to fail")),
        "{:?}",
        rs.iter().map(|r| r.text()).collect::<Vec<_>>()
    );
    let r = post(&s, "/api", &[], b"panic");
    assert_eq!(r.status, 500);
    assert!(r.text().contains("the handler panicked: asked to panic"), "{}", r.text());
    // The replica keeps serving.
    assert_eq!(json(&post(&s, "/api", &[], b"ok"))["body"], "ok");
    let mut c = HttpClient::new(s.addr().to_string());
    assert_eq!(c.get("/-/healthz").unwrap().text(), "success");
    assert_eq!(c.get("/-/routes").unwrap().json().unwrap(), serde_json::json!({"/api": "strict"}));
    let m = c.get("/metrics").unwrap().text();
    assert!(m.contains("flare_serve_requests_total{route=\"/api\",status=\"413\"} 1"), "{m}");
    assert!(m.contains("flare_serve_replicas{deployment=\"strict\",state=\"RUNNING\"} 1"), "{m}");
    assert!(m.contains("flare_serve_queue_depth{deployment=\"strict\"} 0"), "{m}");
}

#[test]
fn graceful_shutdown_answers_every_accepted_request() {
    let d = echo("drain", EchoConfig { sleep_ms: 200, ..Default::default() }).max_ongoing_requests(1);
    let s = start("/", d, ServeOptions::default());
    let addr = s.addr().to_string();
    let hs: Vec<_> = (0..5)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || HttpClient::new(addr).request("POST", "/", &[], b"x").map(|r| r.status))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(150));
    let t0 = Instant::now();
    s.shutdown();
    let codes: Vec<u16> = hs.into_iter().map(|h| h.join().unwrap().unwrap()).collect();
    assert_eq!(codes, vec![200; 5], "shutdown took {:?}", t0.elapsed());
    assert!(HttpClient::new(addr).get("/-/healthz").is_err(), "the proxy still accepts connections");
}

/// Downstream: doubles `x`.
struct Doubler;

impl Deployment for Doubler {
    type Config = ();
    fn new(_: (), _: &ReplicaContext) -> Result<Self, String> {
        Ok(Doubler)
    }
    fn handle_batch(&self, batch: Vec<Request>) -> Result<Vec<Response>, String> {
        Ok(batch
            .iter()
            .map(|r| match r.json::<serde_json::Value>() {
                Ok(v) => Response::json(&serde_json::json!({"y": v["x"].as_i64().unwrap_or(0) * 2, "pid": std::process::id()})),
                Err(resp) => resp,
            })
            .collect())
    }
}

/// The ingress: parses a number and asks the doubler through a typed handle.
struct Front {
    doubler: flare_serve::DeploymentHandle<serde_json::Value, serde_json::Value>,
}

impl Deployment for Front {
    type Config = String;
    fn new(downstream: String, ctx: &ReplicaContext) -> Result<Self, String> {
        Ok(Front { doubler: ctx.handle(&downstream)? })
    }
    fn handle_batch(&self, batch: Vec<Request>) -> Result<Vec<Response>, String> {
        batch
            .iter()
            .map(|r| {
                let x: i64 = String::from_utf8_lossy(&r.body).trim().parse().map_err(|e| format!("not a number: {e}"))?;
                let v = self.doubler.call(&serde_json::json!({"x": x}))?;
                Ok(Response::json(
                    &serde_json::json!({"answer": v["y"], "doubler_pid": v["pid"], "front_pid": std::process::id()}),
                ))
            })
            .collect()
    }
}

#[test]
fn an_ingress_calls_another_deployment_through_a_typed_handle() {
    init();
    let app = Application::new("/", deployment::<Front>("front", "doubler".into()).num_cpus(0.5))
        .with(deployment::<Doubler>("doubler", ()).num_replicas(2).num_cpus(0.5));
    let s = flare_serve::run([app], ServeOptions { port: 0, ..Default::default() }).unwrap();
    s.wait_ready(Duration::from_secs(60)).unwrap();
    assert_eq!(s.status().applications[0].deployments.len(), 2);
    let mut c = HttpClient::new(s.addr().to_string());
    let mut pids = std::collections::BTreeSet::new();
    for i in 0..30 {
        let v = json(&c.request("POST", "/", &[], i.to_string().as_bytes()).unwrap());
        assert_eq!(v["answer"], 2 * i);
        assert_ne!(v["doubler_pid"], v["front_pid"]);
        pids.insert(v["doubler_pid"].as_u64().unwrap());
    }
    assert_eq!(pids.len(), 2, "the handle used {} of the 2 doubler replicas", pids.len());
    let r = c.request("POST", "/", &[], b"zz").unwrap();
    assert_eq!(r.status, 500);
    assert!(r.text().contains("not a number"), "{}", r.text());

    // A handle on a deployment the application does not have fails the replica's start.
    let bad = Application::new("/bad", deployment::<Front>("front2", "nope".into()).num_cpus(0.5));
    let s2 = flare_serve::run([bad], ServeOptions { port: 0, ..Default::default() }).unwrap();
    let err = s2.wait_ready(Duration::from_secs(60)).unwrap_err().to_string();
    assert!(err.contains("this application has no deployment 'nope' (it has front2)"), "{err}");
}

/// Streams: `/sse` sends five events 150 ms apart; `/chunks` plain chunks; `/forever` until
/// the client goes (it records that in a marker file).
struct Streamer;

impl Deployment for Streamer {
    type Config = String;
    fn new(_: String, _: &ReplicaContext) -> Result<Self, String> {
        Ok(Streamer)
    }
    fn handle_batch(&self, batch: Vec<Request>) -> Result<Vec<Response>, String> {
        Ok(batch
            .iter()
            .map(|r| match r.path.as_str() {
                "/sse" => Response::sse(|sink| {
                    for i in 0..5 {
                        sink.send(format!("tick {i}"));
                        std::thread::sleep(Duration::from_millis(150));
                    }
                }),
                "/chunks" => Response::stream("text/plain", |sink| {
                    for i in 0..3 {
                        sink.send(format!("part {i};"));
                    }
                }),
                _ => {
                    let marker = String::from_utf8_lossy(&r.body).into_owned();
                    Response::stream("text/plain", move |sink| {
                        while sink.send(vec![b'x'; 1024]) {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        let _ = std::fs::write(marker, b"stopped");
                    })
                }
            })
            .collect())
    }
}

#[test]
fn streamed_responses_arrive_chunk_by_chunk_and_stop_when_the_client_goes() {
    use std::io::{Read, Write};
    let s = start("/", deployment::<Streamer>("streamer", String::new()).num_cpus(0.5), ServeOptions::default());
    let mut c = HttpClient::new(s.addr().to_string());
    let r = c.get("/chunks").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.text(), "part 0;part 1;part 2;");
    assert!(r.header("x-flare-stream").is_none());

    // SSE: the first event arrives long before the last one is made.
    let t0 = Instant::now();
    let mut raw = std::net::TcpStream::connect(s.addr()).unwrap();
    raw.write_all(b"GET /sse HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("data: tick 0\n\n") {
        let n = raw.read(&mut buf).unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    let first = t0.elapsed();
    let text = String::from_utf8_lossy(&seen).to_lowercase();
    assert!(text.contains("content-type: text/event-stream"), "{text}");
    assert!(first < Duration::from_millis(600), "the first event took {first:?} (the stream takes 750 ms)");
    let r = c.get("/sse").unwrap();
    assert_eq!(r.text(), (0..5).map(|i| format!("data: tick {i}\n\n")).collect::<String>());

    // A client that hangs up stops the producer.
    let marker = std::env::temp_dir().join(format!("flare-serve-stream-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let mut raw = std::net::TcpStream::connect(s.addr()).unwrap();
    let m = marker.to_string_lossy().into_owned();
    raw.write_all(format!("POST /forever HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n{m}", m.len()).as_bytes()).unwrap();
    let n = raw.read(&mut buf).unwrap();
    assert!(n > 0);
    drop(raw);
    assert!(eventually(Duration::from_secs(20), || marker.exists()), "the producer kept running after the client left");
    let _ = std::fs::remove_file(&marker);
}

#[test]
fn in_process_replicas_run_in_the_proxy_process_and_batch_the_same_way() {
    let d = echo("local", EchoConfig::default()).in_process().num_replicas(2).max_batch_size(4, Duration::from_millis(200));
    let s = start("/", d, ServeOptions::default());
    let rs = burst(&s, 4, "/", b"x");
    for r in &rs {
        let v = json(r);
        assert_eq!(v["pid"], std::process::id(), "an in-process replica ran elsewhere");
    }
    assert!(rs.iter().any(|r| json(r)["batch_size"].as_u64().unwrap() >= 2));
    assert_eq!(running(&s), vec![std::process::id(); 2]);
    let r = post(&s, "/", &[], b"panic");
    assert_eq!(r.status, 500);
    assert!(r.text().contains("asked to panic"));
    assert_eq!(json(&post(&s, "/", &[], b"ok"))["body"], "ok");
    let bad = flare_serve::run(
        [Application::new("/", echo("gpu", EchoConfig::default()).in_process().num_gpus(1.0))],
        ServeOptions { port: 0, ..Default::default() },
    );
    assert!(bad.err().unwrap().to_string().contains("in_process replicas take no scheduler resources"));
}

#[test]
fn slow_clients_are_cut_off_in_the_headers_and_in_the_body() {
    use std::io::{Read, Write};
    let opts = ServeOptions {
        header_read_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let s = start("/", echo("slowloris", EchoConfig::default()), opts);
    // Headers that never finish: the connection is closed.
    let mut raw = std::net::TcpStream::connect(s.addr()).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    raw.write_all(b"POST / HTTP/1.1\r\nhost: x\r\n").unwrap();
    let t0 = Instant::now();
    let mut buf = [0u8; 1024];
    let n = raw.read(&mut buf).unwrap_or(0);
    assert!(t0.elapsed() < Duration::from_secs(5), "the half-sent headers were kept {:?}", t0.elapsed());
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(n == 0 || text.starts_with("HTTP/1.1 408"), "{text}");
    // A body that never arrives: 408.
    let mut raw = std::net::TcpStream::connect(s.addr()).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    raw.write_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nonly ten b").unwrap();
    let n = raw.read(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("did not arrive within 1.0 s"), "{text}");
}

#[test]
fn the_proxy_speaks_http2_by_prior_knowledge_on_the_same_port() {
    use http_body_util::BodyExt;
    let s = start("/", echo("h2", EchoConfig::default()), ServeOptions::default());
    let addr = s.addr();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (version, status, body) = rt.block_on(async move {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = hyper::Request::post(format!("http://{addr}/over/h2"))
            .body(http_body_util::Full::new(axum::body::Bytes::from_static(b"hello")))
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        let (version, status) = (resp.version(), resp.status().as_u16());
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (version, status, body)
    });
    assert_eq!(version, hyper::Version::HTTP_2);
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((v["path"].as_str(), v["body"].as_str()), (Some("/over/h2"), Some("hello")));
    // HTTP/1.1 on the same port.
    assert_eq!(json(&post(&s, "/x", &[], b"one"))["body"], "one");
}
