//! `flare serve deploy|status|shutdown` with Ray-style config files, and the REST config API
//! behind them (token required), on a real background Serve process.

use std::process::Command;
use std::time::Duration;

use flare::serve::client::HttpClient;

fn flare(temp: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_flare"));
    c.arg("serve").arg("--temp-dir").arg(temp);
    c
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn ok(c: &mut Command) -> String {
    let out = c.output().unwrap();
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{c:?} failed:\n{s}\n{}", String::from_utf8_lossy(&out.stderr));
    s
}

#[test]
fn serve_deploy_status_update_and_shutdown_through_the_config_api() {
    let temp = std::env::temp_dir().join(format!("flare-serve-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&temp);
    std::fs::create_dir_all(&temp).unwrap();
    let port = free_port();
    let cfg = temp.join("serve.yaml");
    let one = format!(
        "http_options:\n  port: {port}\napplications:\n  - name: echo\n    route_prefix: /echo\n    import_path: flare.echo\n    \
         deployments:\n      - name: echo\n        num_replicas: 2\n        max_ongoing_requests: 8\n        \
         ray_actor_options:\n          num_cpus: 0.5\n"
    );
    std::fs::write(&cfg, &one).unwrap();
    let out = ok(flare(&temp).arg("deploy").arg(&cfg));
    assert!(out.contains(&format!("Serve is running on http://127.0.0.1:{port}")), "{out}");
    let mut c = HttpClient::new(format!("127.0.0.1:{port}"));
    let r = c.request("POST", "/echo/x", &[], b"hi").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json().unwrap()["path"], "/x");
    let st: serde_json::Value = serde_json::from_str(&ok(flare(&temp).args(["status", "--json"]))).unwrap();
    assert_eq!(st["applications"]["echo"]["status"], "RUNNING", "{st}");
    assert_eq!(st["applications"]["echo"]["deployments"]["echo"]["replica_states"]["RUNNING"], 2, "{st}");
    let table = ok(flare(&temp).arg("status"));
    assert!(table.contains("echo") && table.contains("2/2"), "{table}");

    // The config API wants the session token.
    let r = c.request("GET", "/api/serve/applications/", &[], b"").unwrap();
    assert_eq!(r.status, 401);
    let r = c.request("DELETE", "/api/serve/applications/", &[("authorization", "Bearer wrong")], b"").unwrap();
    assert_eq!(r.status, 403);

    // A second application, the first unchanged; then a bad config changes nothing.
    let two = format!("{one}  - name: two\n    route_prefix: /two\n    import_path: flare.echo\n    args:\n      delay_ms: 1\n");
    std::fs::write(&cfg, &two).unwrap();
    ok(flare(&temp).arg("deploy").arg(&cfg));
    let ready = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        c.request("POST", "/two", &[], b"").map(|r| r.status == 200).unwrap_or(false)
    });
    assert!(ready, "the second application never answered");
    let st: serde_json::Value = serde_json::from_str(&ok(flare(&temp).args(["status", "--json"]))).unwrap();
    assert_eq!(st["applications"].as_object().unwrap().len(), 2, "{st}");
    std::fs::write(&cfg, one.replace("num_replicas: 2", "num_replicas: 2\n        max_batch_sizes: 3")).unwrap();
    let out = flare(&temp).arg("deploy").arg(&cfg).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown field `max_batch_sizes`"), "{err}");
    std::fs::write(&cfg, one.replace("flare.echo", "flare.nope")).unwrap();
    let out = flare(&temp).arg("deploy").arg(&cfg).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("import_path 'flare.nope' is not a known deployment type"));
    assert_eq!(c.request("POST", "/two", &[], b"").unwrap().status, 200, "a rejected config changed the running one");

    let out = ok(flare(&temp).arg("shutdown"));
    assert!(out.contains("shut down"), "{out}");
    assert!(HttpClient::new(format!("127.0.0.1:{port}")).get("/-/healthz").is_err());
    assert!(!temp.join("session_latest/serve.json").exists());
    let _ = std::fs::remove_dir_all(&temp);
}
