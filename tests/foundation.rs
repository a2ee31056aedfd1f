//! Gateway foundation: CLI, config validation, routing, plain proxying, WebSocket pass-through,
//! metrics, logs and graceful shutdown, each against the real binary and a real upstream.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use std::process::Command;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

fn proxy_config(up: &Upstream, extra_upstream: &str) -> String {
    format!(
        r#"{HEAD}upstreams:
  backend:
    address: "{}"
{extra_upstream}
routes:
  - name: api
    prefix: "/api/"
    upstream: backend
  - name: default
    prefix: "/"
    upstream: backend
"#,
        up.addr
    )
}

#[test]
fn help_and_version() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--conf",
        "--test",
        "--daemon",
        "--upgrade",
        "--log-format",
        "demo",
    ] {
        assert!(text.contains(flag), "--help lacks {flag}:\n{text}");
    }
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn test_flag_validates_every_shipped_config() {
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/config")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let out = check_config(&path);
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn test_flag_reports_every_problem_with_path_and_line() {
    let dir = scratch_dir();
    let path = dir.join("bad.yaml");
    std::fs::write(
        &path,
        r#"listen: "127.0.0.1:8080"
upstreams:
  backend:
    address: "127.0.0.1:9000"
routes:
  - name: api
    prefix: "/api/"
    upstream: backend
  - name: default
    prefix: "/"
    upstream: bakend
  - name: poll
    path: "/p/{topic}"
    upstream: backend
    subscribe:
      path: "/ws/{topic}"
"#,
    )
    .unwrap();
    let out = check_config(&path);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(r#"routes[1].upstream: unknown upstream "bakend" (line 11)"#),
        "{err}"
    );
    assert!(
        err.contains("routes[2].access: required on poll routes"),
        "{err}"
    );

    std::fs::write(
        &path,
        "listen: \"127.0.0.1:8080\"\nlisten_typo: 1\nupstreams: {}\nroutes: []\n",
    )
    .unwrap();
    let out = check_config(&path);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown field `listen_typo`") && err.contains("line 2"),
        "{err}"
    );

    // A typo'd key is named with the key it most likely meant.
    std::fs::write(
        &path,
        "listen: \"127.0.0.1:8080\"\nupstreams:\n  b: { address: \"127.0.0.1:9000\" }\nroutes:\n  - { name: a, prefx: /, upstream: b }\n",
    )
    .unwrap();
    let out = check_config(&path);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("  routes[0]: unknown field `prefx`, did you mean `prefix`? (line 5)\n"),
        "{err}"
    );

    let out = check_config(dir.join("missing.yaml"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

#[test]
fn test_flag_reports_independent_mistakes_in_one_run() {
    // A typo'd key, a bad duration, a value of the wrong type and an unknown upstream: serde
    // alone stops at the first, and the unknown upstream is only found by the checks after it.
    let dir = scratch_dir();
    let path = dir.join("four.yaml");
    std::fs::write(
        &path,
        r#"listen: "127.0.0.1:8080"
threads: two
upstreams:
  backend:
    address: "127.0.0.1:9000"
    connect_timeout: 5x
routes:
  - name: api
    prefix: "/api/"
    upstream: bakend
  - name: prices
    path: "/api/prices/{topic}"
    upstream: backend
    access: public
    subscribe:
      path: "/ws/{topic}"
    long_pol: 25s
"#,
    )
    .unwrap();
    let out = check_config(&path);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let problems: Vec<&str> = err.lines().filter_map(|l| l.strip_prefix("  ")).collect();
    assert_eq!(
        problems,
        [
            r#"threads: expected a whole number (0 or more), found the string "two" (line 2)"#,
            "upstreams.backend.connect_timeout: unknown unit `x` in `5x` (expected ms, s, m or h) (line 6)",
            r#"routes[0].upstream: unknown upstream "bakend" (line 10)"#,
            "routes[1]: unknown field `long_pol`, did you mean `long_poll`? (line 17)",
        ],
        "{err}"
    );

    // A YAML syntax error is placed in the same words, with its column.
    std::fs::write(&path, "listen: [\"127.0.0.1:8080\"\nthreads: 2\n").unwrap();
    let out = check_config(&path);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("(line 2, column 1)") && !err.contains(" at line "),
        "{err}"
    );
}

#[tokio::test]
async fn proxies_with_forwarding_headers_and_without_hop_by_hop() {
    let up = Upstream::start().await;
    up.on_http(|r| {
        let mut reply = common::upstream::Reply::ok(&format!("{} {}", r.method, r.target));
        reply
            .headers
            .push(("keep-alive".into(), "timeout=5".into()));
        reply.headers.push(("x-backend".into(), "yes".into()));
        reply
    });
    let gw = Gateway::start(&proxy_config(&up, "")).await;
    let req = "GET /api/items?x=1 HTTP/1.1\r\nHost: evil.example\r\nConnection: keep-alive, X-Secret\r\nX-Secret: s\r\nKeep-Alive: timeout=9\r\nProxy-Authorization: Basic eA==\r\nTE: trailers\r\nX-Forwarded-For: 10.1.1.1\r\n\r\n";
    let resp = raw_request(gw.addr, req.as_bytes(), Duration::from_millis(500))
        .await
        .unwrap();
    let (head, body) = split_response(&resp);
    assert_eq!(status_of(&head), 200, "{head}");
    assert_eq!(body, "GET /api/items?x=1");
    assert_eq!(header_of(&head, "x-backend").as_deref(), Some("yes"));
    assert!(header_of(&head, "keep-alive").is_none(), "{head}");
    assert_eq!(header_of(&head, "via").as_deref(), Some("1.1 pollgate"));

    let seen = up.http_requests();
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    for h in ["x-secret", "keep-alive", "proxy-authorization", "te"] {
        assert!(
            r.header(h).is_none(),
            "{h} crossed the gateway: {:?}",
            r.headers
        );
    }
    assert_eq!(r.header("x-forwarded-for"), Some("10.1.1.1, 127.0.0.1"));
    assert_eq!(r.header("x-forwarded-proto"), Some("http"));
    assert_eq!(r.header("via"), Some("1.1 pollgate"));
    // The Host header is passed on but never chooses where the request goes.
    assert_eq!(r.header("host"), Some("evil.example"));
}

#[tokio::test]
async fn streams_bodies_both_ways_and_keeps_connections_alive() {
    let up = Upstream::start().await;
    up.on_http(|r| {
        let mut reply = common::upstream::Reply::ok("");
        reply.body = r.body.iter().rev().copied().collect();
        reply.chunked = r.target.contains("chunked");
        reply
    });
    let gw = Gateway::start(&proxy_config(&up, "")).await;
    let c = client();
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let resp = c
        .post(gw.url("/upload"))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got = resp.bytes().await.unwrap();
    assert_eq!(got.len(), big.len());
    assert!(got.iter().eq(big.iter().rev()));

    // Chunked request body (a stream of unknown length) and a chunked response.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..20).map(|i| Ok(vec![b'a' + i as u8; 1000])).collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let resp = c.post(gw.url("/chunked")).body(body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let got = resp.bytes().await.unwrap();
    assert_eq!(got.len(), 20_000);
    assert_eq!(got[0], b'a' + 19);
    let seen = up.http_requests();
    assert_eq!(seen.last().unwrap().body.len(), 20_000);

    // Keep-alive: ten requests on one client connection reuse upstream connections too.
    let before = up.accepts();
    for i in 0..10 {
        let r = c.get(gw.url(&format!("/k{i}"))).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    assert!(
        up.accepts() - before <= 2,
        "upstream connections were not reused: {}",
        up.accepts() - before
    );
}

#[tokio::test]
async fn unmatched_paths_get_404_json_and_absolute_uris_are_refused() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&format!(
        r#"{HEAD}upstreams:
  backend:
    address: "{}"
routes:
  - name: api
    prefix: "/api/"
    upstream: backend
"#,
        up.addr
    ))
    .await;
    let (status, body) = raw_get(gw.addr, "/other").await.unwrap();
    assert_eq!(status, 404);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"], "not_found");

    let resp = raw_request(
        gw.addr,
        b"GET http://169.254.169.254/api/latest HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n",
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    let (head, body) = split_response(&resp);
    assert_eq!(status_of(&head), 400, "{head}");
    assert!(body.contains("absolute-form"));
    assert!(
        up.requests().is_empty(),
        "the upstream saw {:?}",
        up.requests()
    );
}

#[tokio::test]
async fn unreachable_upstream_is_502_and_slow_upstream_is_504() {
    let up = Upstream::start().await;
    up.on_http(|_| {
        let mut r = common::upstream::Reply::ok("late");
        r.delay = Duration::from_secs(3);
        r
    });
    let dead = free_port();
    let gw = Gateway::start(&format!(
        r#"{HEAD}upstreams:
  slow:
    address: "{}"
    read_timeout: 500ms
  dead:
    address: "127.0.0.1:{dead}"
    connect_timeout: 1s
routes:
  - name: slow
    prefix: "/slow"
    upstream: slow
  - name: dead
    prefix: "/"
    upstream: dead
"#,
        up.addr
    ))
    .await;
    let (status, body) = raw_get(gw.addr, "/anything").await.unwrap();
    assert_eq!(status, 502, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"], "bad_gateway");

    let t = Instant::now();
    let (status, body) = raw_get(gw.addr, "/slow").await.unwrap();
    assert_eq!(status, 504, "{body}");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "the read timeout was not applied"
    );
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"], "gateway_timeout");

    let m = gw.metrics().await;
    assert!(
        metric_value(
            &m,
            r#"pollgate_upstream_errors_total{kind="connect_refused",upstream="dead"}"#
        ) >= 1.0,
        "{m}"
    );
    assert!(
        metric_value(
            &m,
            r#"pollgate_upstream_errors_total{kind="read_timeout",upstream="slow"}"#
        ) >= 1.0,
        "{m}"
    );
    assert!(
        metric_value(
            &m,
            r#"pollgate_proxied_requests_total{route="dead",status="502"}"#
        ) >= 1.0,
        "{m}"
    );
}

async fn open_ws(
    gw: &Gateway,
    path: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let mut req = format!("ws://{}{}", gw.addr, path)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        "chat.v2, chat.v1".parse().unwrap(),
    );
    let (ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("handshake through the gateway");
    assert_eq!(resp.status(), 101);
    assert_eq!(
        resp.headers().get("sec-websocket-protocol").unwrap(),
        "chat.v2"
    );
    ws
}

#[tokio::test]
async fn websocket_tunnels_relay_all_frames_many_times_in_a_row() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&proxy_config(&up, "")).await;
    // A backend that speaks first: its frame follows the 101 at once, often in the same segment.
    up.publish("/ws/greet", "welcome");
    // pingora issue #946: a fast upstream could see the tunnel closed right after the 101.
    for i in 0..200 {
        if i % 2 == 1 {
            let mut ws = open_ws(&gw, "/ws/greet").await;
            let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
                .await
                .expect("greeting in time");
            assert_eq!(
                got.unwrap().unwrap(),
                Message::text("welcome"),
                "tunnel {i}"
            );
            ws.close(None).await.unwrap();
            continue;
        }
        let mut ws = open_ws(&gw, "/echo").await;
        let text = format!("hello {i}");
        ws.send(Message::text(text.clone())).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("echo in time");
        assert_eq!(got.unwrap().unwrap(), Message::text(text), "tunnel {i}");
        if i % 20 == 0 {
            let bin = vec![0u8, 1, 2, 255, 254];
            ws.send(Message::binary(bin.clone())).await.unwrap();
            assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(bin));
            ws.send(Message::Ping(vec![7, 7].into())).await.unwrap();
            assert_eq!(
                ws.next().await.unwrap().unwrap(),
                Message::Pong(vec![7, 7].into())
            );
        }
        ws.close(None).await.unwrap();
        // The close handshake completes end to end: the backend's close frame comes back.
        loop {
            match tokio::time::timeout(Duration::from_secs(5), ws.next())
                .await
                .expect("close in time")
            {
                Some(Ok(Message::Close(_))) | None => break,
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("tunnel {i}: {e}"),
            }
        }
    }
    assert_eq!(up.ws_connects("/echo"), 100);
    assert_eq!(up.ws_connects("/ws/greet"), 100);
    gw.wait_metric("pollgate_websocket_passthrough_active", |v| v == 0.0)
        .await;
    assert_eq!(
        gw.metric("pollgate_websocket_passthrough_total").await,
        200.0
    );
}

#[tokio::test]
async fn malformed_handshakes_get_400_and_are_never_forwarded() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&proxy_config(&up, "")).await;
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    let cases = [
        "GET /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n".to_string(),
        "GET /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: c2hvcnQ=\r\n\r\n".to_string(),
        format!("GET /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: {key}\r\n\r\n"),
        format!("GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"),
        format!("POST /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\nContent-Length: 0\r\n\r\n"),
        format!("GET /echo HTTP/1.1\r\nHost: x\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"),
    ];
    for (i, req) in cases.iter().enumerate() {
        let resp = raw_request(gw.addr, req.as_bytes(), Duration::from_secs(2))
            .await
            .unwrap();
        let (head, body) = split_response(&resp);
        assert_eq!(status_of(&head), 400, "case {i}: {head}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        assert!(
            v["message"].as_str().is_some_and(|m| !m.is_empty()),
            "case {i}: {body}"
        );
    }
    assert!(up.requests().is_empty(), "forwarded: {:?}", up.requests());
}

#[tokio::test]
async fn idle_tunnels_live_for_the_configured_idle_time() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&proxy_config(&up, "    websocket_idle_timeout: 3s")).await;
    let mut ws = open_ws(&gw, "/echo").await;
    // Idle for most of the configured time: the tunnel must still carry messages.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("still here")
    );
    // Idle past it: the gateway closes the tunnel (so the setting is really what applies).
    let t = Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("tunnel closed by the idle timeout");
    assert!(
        matches!(end, None | Some(Err(_)) | Some(Ok(Message::Close(_)))),
        "{end:?}"
    );
    assert!(
        t.elapsed() >= Duration::from_millis(2500),
        "closed too early: {:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn metrics_expose_the_contract_names() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&proxy_config(&up, "")).await;
    let (status, _) = raw_get(gw.addr, "/api/x").await.unwrap();
    assert_eq!(status, 200);
    let mut ws = open_ws(&gw, "/echo").await;
    ws.send(Message::text("x")).await.unwrap();
    ws.next().await.unwrap().unwrap();
    let m = gw.metrics().await;
    for name in [
        r#"pollgate_proxied_requests_total{route="api",status="200"} 1"#,
        r#"pollgate_request_duration_seconds_bucket{kind="proxy",route="api","#,
        "pollgate_websocket_passthrough_active 1",
        "pollgate_websocket_passthrough_total 1",
        "pollgate_process_resident_memory_bytes",
    ] {
        assert!(m.contains(name), "missing {name} in\n{m}");
    }
    for line in m.lines().filter(|l| !l.starts_with('#')) {
        assert!(line.starts_with("pollgate_"), "unprefixed metric: {line}");
        assert!(!line.contains("path="), "unbounded label: {line}");
    }
    check_with_promtool(&m);
}

/// `promtool check metrics` when promtool is installed (CI installs it; see .ci/run).
pub fn check_with_promtool(text: &str) {
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        assert!(std::env::var("CI").is_err(), "promtool is required in CI");
        eprintln!("promtool not installed; skipping the promtool check");
        return;
    };
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let errs = String::from_utf8_lossy(&out.stderr);
    // promtool exits non-zero for lint warnings too; only problems other than lint style fail.
    assert!(
        out.status.success()
            || errs.lines().all(
                |l| l.contains("counter metrics should have \"_total\" suffix")
                    || l.trim().is_empty()
            ),
        "promtool: {errs}{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Every gateway in these tests listens on port 0; this pins the contract the harness relies
/// on: the kernel's ports, held for the process, named in one documented line in both log
/// formats, and served.
#[tokio::test]
async fn port_zero_listeners_are_picked_held_announced_and_served() {
    let up = Upstream::start().await;
    for format in ["human", "json"] {
        let gw = Gateway::start_with(&proxy_config(&up, ""), &["--log-format", format], &[]).await;
        assert!(
            gw.addr.port() != 0 && gw.admin.port() != 0 && gw.addr != gw.admin,
            "{} {}",
            gw.addr,
            gw.admin
        );
        let log = gw.log();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains("listening")).collect();
        assert_eq!(lines.len(), 1, "{log}");
        if format == "human" {
            let want = format!(
                " INFO pollgate::listen: listening proxy={} admin={}",
                gw.addr, gw.admin
            );
            assert!(lines[0].ends_with(&want), "{}", lines[0]);
        } else {
            let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
            assert_eq!(v["level"], "INFO", "{}", lines[0]);
            assert_eq!(v["message"], "listening", "{}", lines[0]);
            assert_eq!(v["proxy"], gw.addr.to_string(), "{}", lines[0]);
            assert_eq!(v["admin"], gw.admin.to_string(), "{}", lines[0]);
        }
        // Nobody else can take the ports while the gateway runs.
        for a in [gw.addr, gw.admin] {
            let err = std::net::TcpListener::bind(a).expect_err("the port is held");
            assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "{a}: {err}");
        }
        // Served, many times over (the reservation beside each listener never takes one).
        for i in 0..20 {
            let (status, body) = raw_get(gw.addr, &format!("/api/{i}")).await.unwrap();
            assert_eq!(status, 200, "{body}");
        }
        assert_eq!(
            raw_get(gw.admin, "/readyz").await.unwrap(),
            (200, "ready\n".into())
        );
    }
}

#[tokio::test]
async fn json_logs_have_one_access_line_per_request() {
    let up = Upstream::start().await;
    let gw = Gateway::start_with(&proxy_config(&up, ""), &["--log-format", "json"], &[]).await;
    for p in ["/api/a", "/b"] {
        raw_get(gw.addr, p).await.unwrap();
    }
    raw_get(gw.addr, "/api/a").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = gw.log();
        let access: Vec<serde_json::Value> = log
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["target"] == "access")
            .collect();
        if access.len() >= 3 {
            assert_eq!(access.len(), 3, "{log}");
            assert_eq!(access[0]["route"], "api");
            assert_eq!(access[0]["status"], 200);
            assert_eq!(access[0]["upstream"], "backend");
            assert!(access[0]["duration_ms"].as_f64().is_some());
            assert_eq!(access[1]["route"], "default");
            break;
        }
        assert!(Instant::now() < deadline, "access lines missing:\n{log}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn sigterm_finishes_in_flight_requests_then_exits() {
    let up = Upstream::start().await;
    up.on_http(|_| {
        let mut r = common::upstream::Reply::ok("finished");
        r.delay = Duration::from_millis(700);
        r
    });
    let mut gw = Gateway::start(&proxy_config(&up, "")).await;
    let url = gw.url("/slow");
    let inflight = tokio::spawn(async move {
        client()
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    up.wait_for("the in-flight request", |u| !u.http_requests().is_empty())
        .await;
    gw.signal("TERM");
    assert_eq!(inflight.await.unwrap(), "finished");
    let code = tokio::task::spawn_blocking(move || gw.wait_exit(Duration::from_secs(15)))
        .await
        .unwrap();
    assert_eq!(code, Some(0));
}

static STRAY_GO: tokio::sync::Notify = tokio::sync::Notify::const_new();
static STRAY_SENT: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// A scripted HTTP/1.1 upstream on raw TCP: answers each request head with the bytes `script`
/// gives for its target (`None`: close the connection; a target ending in `close`: close after
/// the answer), and counts accepted connections.
async fn scripted_upstream(
    script: fn(&str) -> Option<Vec<u8>>,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            // Without it Nagle would hold a second small write until the gateway's next
            // packet, which would make the stray-answer check below a race.
            s.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end + 4);
                    let target = head.split_whitespace().nth(1).unwrap_or("").to_string();
                    match script(&target) {
                        Some(answer) => {
                            // Answers framed by nothing but the close end with one.
                            let close = target.ends_with("close");
                            if s.write_all(&answer).await.is_err() || close {
                                return;
                            }
                            if target == "/stray" {
                                // Later, when the test says so (the gateway has pooled this
                                // connection by then), a second answer nobody asked for, on a
                                // connection that stays open.
                                STRAY_GO.notified().await;
                                let stray =
                                    b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n";
                                let _ = s.write_all(stray).await;
                                STRAY_SENT.notify_one();
                            }
                        }
                        None => return,
                    }
                }
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn bodiless_requests_are_relayed_by_every_response_framing_over_pooled_connections() {
    use std::sync::atomic::Ordering;
    fn script(target: &str) -> Option<Vec<u8>> {
        let r: &[u8] = match target {
            "/len" => b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nKeep-Alive: timeout=5\r\nX-Up: 1\r\n\r\nabc",
            "/chunked" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
            "/early" => b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            "/empty" => b"HTTP/1.1 204 No Content\r\n\r\n",
            // What a HEAD of /len gets: the head alone.
            "/len-head" => b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
            "/bye" => b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbye",
            // Closes after answering without saying so: the pooled connection goes stale.
            "/stray" => b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nstr",
            "/quiet-close" => b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nqcl",
            "/until-close" => b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nstreamed until close",
            "/hangup" => return None,
            _ => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        };
        Some(r.to_vec())
    }
    let (addr, accepted) = scripted_upstream(script).await;
    let cfg = format!(
        r#"{HEAD}upstreams:
  backend:
    address: "{addr}"
    read_timeout: 5s
routes:
  - name: default
    prefix: "/"
    upstream: backend
"#
    );
    let gw = Gateway::start(&cfg).await;

    // One client connection, requests one after another (answers read in between).
    use tokio::io::AsyncWriteExt;
    let c = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let mut c = wire::Reader::new(c).with_limit(Duration::from_secs(5));
    // The final answer and any interim ones before it, as they were on the wire.
    let mut ask = async |req: &str| -> String {
        c.stream.write_all(req.as_bytes()).await.unwrap();
        let (interim, last) = c
            .final_answer(req.starts_with("HEAD "))
            .await
            .unwrap_or_else(|e| panic!("no answer to {req:?}: {e}"));
        let raw: Vec<u8> = interim
            .iter()
            .chain([&last])
            .flat_map(|a| a.raw.clone())
            .collect();
        String::from_utf8_lossy(&raw).into_owned()
    };
    let r = ask("GET /len HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    assert!(
        r.contains("X-Up: 1\r\n") && r.contains("Via: 1.1 pollgate\r\n"),
        "{r}"
    );
    assert!(
        !r.to_ascii_lowercase().contains("keep-alive: timeout"),
        "{r}"
    );
    // A chunked answer is decoded by pollgate's reader and chunked again for this hop: the
    // data arrives whole; chunk extensions and trailers do not cross (a trailer is never
    // relayed verbatim).
    let r = ask("GET /chunked HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert!(r.contains("Transfer-Encoding: chunked\r\n"), "{r}");
    let body = r.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    let decoded: String = body
        .split("\r\n")
        .collect::<Vec<_>>()
        .chunks(2)
        .filter_map(|c| c.get(1).copied())
        .collect();
    assert_eq!(decoded, "hello world", "{r}");
    assert!(!r.contains("X-Trailer") && !r.contains("ext=1"), "{r}");
    let r = ask("GET /early HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert!(
        r.starts_with("HTTP/1.1 103 Early Hints\r\n") && r.contains("HTTP/1.1 200 OK"),
        "{r}"
    );
    let r = ask("HEAD /len-head HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert!(
        r.contains("Content-Length: 3\r\n") && r.ends_with("\r\n\r\n"),
        "{r}"
    );
    let r = ask("GET /empty HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 204"), "{r}");
    // Every answer so far left the upstream connection reusable: one connection served all.
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    let r = ask("GET /bye HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let r = ask("GET /len HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "closed upstream connection not reused"
    );
    // The upstream drops a pooled connection silently: the next request is retried on a fresh
    // connection and the client never notices.
    ask("GET /quiet-close HTTP/1.1\r\nHost: t\r\n\r\n").await;
    let r = ask("GET /len HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
    // An upstream connection that received bytes nobody asked for while idle in the pool is
    // not reused (the next request would take them for its answer).
    ask("GET /stray HTTP/1.1\r\nHost: t\r\n\r\n").await;
    STRAY_GO.notify_one();
    STRAY_SENT.notified().await;
    let r = ask("GET /len HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    // An upstream that hangs up without answering: 502, and the client connection closes.
    let r = ask("GET /hangup HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 502"), "{r}");
    assert!(r.contains("\"bad_gateway\""), "{r}");
    // Whatever follows the answer, up to the close (or 5s): nothing.
    let _ = c.closed().await;
    assert!(c.pending().is_empty(), "{}", c.received());
    // A close-delimited answer is relayed whole; an HTTP/1.1 client gets it chunked (its
    // connection can stay open), an HTTP/1.0 client delimited by the close.
    let a = common::wire::exchange(gw.addr, b"GET /until-close HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(a.text(), "streamed until close", "{}", a.head);
    assert!(a.chunked && !a.closes(), "{}", a.head);
    let a = common::wire::exchange(gw.addr, b"GET /until-close HTTP/1.0\r\n\r\n")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(a.text(), "streamed until close", "{}", a.head);
    assert!(!a.chunked && a.closes(), "{}", a.head);
    let m = gw.metrics().await;
    assert!(
        metric_value(
            &m,
            r#"pollgate_upstream_errors_total{kind="protocol",upstream="backend"}"#
        ) >= 1.0,
        "{m}"
    );
}
