//! Resilience and safety: upstream faults (closed, stalled, refused, crashed and restarted,
//! flooding), stale serving, bad input, limits, access control, reload and graceful restart.

mod common;

use common::routes::poll_route;
use common::*;
use futures_util::StreamExt;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config(up_addr: &str, routes: &str, head_extra: &str) -> String {
    format!(
        r#"{HEAD}{head_extra}upstreams:
  backend:
    address: "{up_addr}"
    connect_timeout: 500ms
    read_timeout: 3s
routes:
{routes}
  - name: default
    prefix: "/"
    upstream: backend
"#
    )
}

fn latest_route(extra: &str) -> String {
    poll_route(
        "prices",
        &format!(
            r#"    mode: latest
    first_message_wait: 1s
    reconnect: {{ min: 50ms, max: 200ms }}
{extra}"#
        ),
    )
}

async fn get(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    let r = get_with(addr, path, headers).await;
    (r.status, r.head, r.body)
}

#[tokio::test]
async fn stalled_subscriptions_are_detected_and_reconnected() {
    let up = Upstream::start().await;
    up.publish("/ws/prices/s", "v1");
    let gw = Gateway::start(&config(
        &up.addr.to_string(),
        &latest_route("    ping_interval: 100ms\n"),
        "",
    ))
    .await;
    assert_eq!(get(gw.addr, "/api/prices/s", &[]).await.0, 200);
    up.stall_ws("/ws/prices/s");
    up.drop_websockets();
    // The gateway reconnects into a stall; pings go unanswered and it must give up and retry.
    up.wait_for("reconnects into the stalled socket", |u| {
        u.ws_connects("/ws/prices/s") >= 3
    })
    .await;
    gw.wait_metric(
        r#"pollgate_upstream_errors_total{kind="subscription_stalled",upstream="backend"}"#,
        |v| v >= 1.0,
    )
    .await;
    up.unstall_ws("/ws/prices/s");
    up.wait_for("a healthy socket again", |u| u.ws_open("/ws/prices/s") == 1)
        .await;
    up.publish_live("/ws/prices/s", "v2");
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(gw.addr, "/api/prices/s", &[]).await.2 != "v2" {
        assert!(Instant::now() < deadline, "fresh data never flowed again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gw.wait_metric(r#"pollgate_upstream_connected{route="prices"}"#, |v| {
        v == 1.0
    })
    .await;
}

#[tokio::test]
async fn refused_subscriptions_are_retried_with_backoff_until_accepted() {
    let up = Upstream::start().await;
    up.refuse_ws("/ws/prices/r");
    up.on_http(|_| Reply::ok("from backend"));
    let gw = Gateway::start(&config(&up.addr.to_string(), &latest_route(""), "")).await;
    let (status, _, body) = get(gw.addr, "/api/prices/r", &[]).await;
    assert_eq!((status, body.as_str()), (200, "from backend"));
    up.wait_for("several retries", |u| {
        u.ws_connects("/ws/prices/r") == 0
            && u.requests()
                .iter()
                .filter(|r| r.target == "/ws/prices/r")
                .count()
                >= 3
    })
    .await;
    assert!(
        gw.metric(r#"pollgate_upstream_reconnects_total{route="prices"}"#)
            .await
            >= 2.0
    );
    up.publish("/ws/prices/r", "cached now");
    up.allow_ws("/ws/prices/r");
    up.wait_for("the subscription", |u| u.ws_open("/ws/prices/r") == 1)
        .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, head, body) = get(gw.addr, "/api/prices/r", &[]).await;
        if body == "cached now" {
            assert!(
                header_of(&head, "via").is_none(),
                "served from cache, not proxied"
            );
            break;
        }
        assert!(Instant::now() < deadline);
    }
}

#[tokio::test]
async fn a_crashed_backend_is_served_stale_then_503_then_fresh_when_back() {
    let up = Upstream::start().await;
    let addr = up.addr.to_string();
    up.publish("/ws/prices/c", "last good");
    let gw = Gateway::start(&config(&addr, &latest_route("    max_stale: 2s\n"), "")).await;
    assert_eq!(get(gw.addr, "/api/prices/c", &[]).await.2, "last good");
    drop(up);
    gw.wait_metric(r#"pollgate_upstream_connected{route="prices"}"#, |v| {
        v == 0.0
    })
    .await;
    let (status, head, body) = get(gw.addr, "/api/prices/c", &[]).await;
    assert_eq!((status, body.as_str()), (200, "last good"));
    assert_eq!(header_of(&head, "pollgate-stale").as_deref(), Some("true"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_, head, _) = get(gw.addr, "/api/prices/c", &[]).await;
    assert!(
        header_of(&head, "age").unwrap().parse::<u64>().unwrap() >= 1,
        "{head}"
    );
    // Past max_stale the poll falls back to the backend, which is down too: 503.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (status, head, body) = get(gw.addr, "/api/prices/c", &[]).await;
    assert_eq!(status, 503, "{head}");
    assert_eq!(
        header_of(&head, "retry-after").as_deref(),
        Some("1"),
        "{head}\n{body}"
    );
    assert!(
        serde_json::from_str::<serde_json::Value>(&body).is_ok(),
        "{body}"
    );
    // The backend returns on the same port: fresh data flows within a backoff step.
    let up = Upstream::start_on(&addr).await;
    up.publish("/ws/prices/c", "fresh");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, head, body) = get(gw.addr, "/api/prices/c", &[]).await;
        if status == 200 && body == "fresh" && header_of(&head, "pollgate-stale").is_none() {
            break;
        }
        assert!(Instant::now() < deadline, "{status} {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gw.child.as_ref().is_some(), "the gateway never exited");
}

#[tokio::test]
async fn oversize_messages_are_dropped_and_counted() {
    let up = Upstream::start().await;
    up.publish("/ws/prices/o", "small-1");
    let gw = Gateway::start(&config(
        &up.addr.to_string(),
        &latest_route("    max_message_bytes: 64\n"),
        "",
    ))
    .await;
    assert_eq!(get(gw.addr, "/api/prices/o", &[]).await.2, "small-1");
    up.publish_live("/ws/prices/o", &"x".repeat(1000));
    up.publish_live("/ws/prices/o", "small-2");
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(gw.addr, "/api/prices/o", &[]).await.2 != "small-2" {
        assert!(Instant::now() < deadline);
    }
    assert_eq!(
        gw.metric(r#"pollgate_upstream_messages_dropped_total{reason="oversize",route="prices"}"#)
            .await,
        1.0
    );
    assert_eq!(
        up.ws_connects("/ws/prices/o"),
        1,
        "an oversize message does not cost the subscription"
    );
}

#[tokio::test]
async fn bad_input_table_gets_4xx_and_never_reaches_the_upstream() {
    let up = Upstream::start().await;
    let since = poll_route("news", "    mode: since\n");
    let gw = Gateway::start(&config(
        &up.addr.to_string(),
        &format!("{}{since}", latest_route("")),
        "max_request_header_bytes: 8192\nmax_request_line_bytes: 2048\n",
    ))
    .await;
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    let big_uri = format!("/api/x?{}", "a".repeat(3000));
    let big_header = "b".repeat(9000);
    let many_headers: String = (0..300).map(|i| format!("X-H{i}: v\r\n")).collect();
    let long_topic = "t".repeat(257);
    let cases: Vec<(String, std::ops::RangeInclusive<u16>)> = vec![
        (format!("GET {big_uri} HTTP/1.1\r\nHost: t\r\n\r\n"), 431..=431),
        (format!("GET /api/x HTTP/1.1\r\nHost: t\r\nX-Big: {big_header}\r\n\r\n"), 431..=431),
        (format!("GET /api/x HTTP/1.1\r\nHost: t\r\n{many_headers}\r\n"), 400..=431),
        ("POST /api/x HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc".into(), 400..=400),
        ("POST /api/x HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".into(), 400..=400),
        ("POST /api/x HTTP/1.1\r\nHost: t\r\nContent-Length: 3, 3\r\n\r\nabc".into(), 400..=400),
        ("POST /api/x HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into(), 400..=400),
        ("POST /api/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n".into(), 400..=400),
        ("POST /api/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n".into(), 400..=400),
        ("POST /api/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into(), 400..=400),
        ("POST /api/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: identity\r\n\r\n".into(), 400..=400),
        ("POST /api/x HTTP/1.0\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into(), 400..=400),
        ("POST /api/x HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n".into(), 400..=400),
        ("POST /api/x HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n".into(), 400..=400),
        ("GET /api/x HTTP/1.1\r\n\r\n".into(), 400..=400),
        ("GET /api/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".into(), 400..=400),
        ("GET http://evil.example/api/x HTTP/1.1\r\nHost: evil.example\r\n\r\n".into(), 400..=400),
        ("GET https://evil.example/ HTTP/1.1\r\nHost: t\r\n\r\n".into(), 400..=400),
        ("GET http://169.254.169.254/latest/meta-data HTTP/1.1\r\nHost: t\r\n\r\n".into(), 400..=400),
        ("CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n".into(), 400..=405),
        ("GET /api/news/a?since=abc HTTP/1.1\r\nHost: t\r\n\r\n".into(), 400..=400),
        ("GET /api/news/a?since=1e5 HTTP/1.1\r\nHost: t\r\n\r\n".into(), 400..=400),
        ("GET /api/news/a?since=-1 HTTP/1.1\r\nHost: t\r\n\r\n".into(), 400..=400),
        ("GET /api/news/a?since=%ff HTTP/1.1\r\nHost: t\r\n\r\n".into(), 400..=400),
        ("GET /api/news/a?since=99999999999999999999999 HTTP/1.1\r\nHost: t\r\n\r\n".into(), 400..=400),
        ("GET /api/prices/a HTTP/1.1\r\nHost: t\r\nPrefer: wait=abc\r\n\r\n".into(), 400..=400),
        ("GET /api/prices/a HTTP/1.1\r\nHost: t\r\nPrefer: wait=\r\n\r\n".into(), 400..=400),
        ("GET /api/prices/a HTTP/1.1\r\nHost: t\r\nPrefer: wait=-5\r\n\r\n".into(), 400..=400),
        ("GET /api/prices/a HTTP/1.1\r\nHost: t\r\nPrefer: wait=1.5\r\n\r\n".into(), 400..=400),
        ("GET /api/prices/%ff HTTP/1.1\r\nHost: t\r\n\r\n".into(), 400..=400),
        ("GET /api/prices/%c3%28 HTTP/1.1\r\nHost: t\r\n\r\n".into(), 400..=400),
        (format!("GET /api/prices/{long_topic} HTTP/1.1\r\nHost: t\r\n\r\n"), 400..=400),
        ("GET /api/prices/a%00b HTTP/1.1\r\nHost: t\r\n\r\n".into(), 400..=400),
        ("GET /api/prices/%zz HTTP/1.1\r\nHost: t\r\n\r\n".into(), 400..=400),
        ("GET /api/prices/a HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello".into(), 400..=400),
        ("HEAD /api/prices/a HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi".into(), 400..=400),
        ("GET /api/prices/a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n".into(), 400..=400),
        ("GET /api/x HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n".into(), 400..=400),
        (format!("GET /api/x HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 12\r\nSec-WebSocket-Key: {key}\r\n\r\n"), 400..=400),
        ("GET /api/x HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: !!!\r\n\r\n".into(), 400..=400),
        (format!("GET /api/x HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"), 400..=400),
        (format!("PUT /api/x HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\nContent-Length: 0\r\n\r\n"), 400..=400),
        (format!("GET /api/x HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Key: {key}\r\n\r\n"), 400..=400),
        ("GET /api/x HTTP/1.1\r\nHost: t\r\nBad Header: x\r\n\r\n".into(), 400..=400),
        ("GET /api/x HTTP/1.1\r\nHost: t\r\nX-Fold: a\r\n  folded\r\n\r\n".into(), 400..=400),
        ("HELLO\r\n\r\n".into(), 400..=400),
    ];
    assert!(cases.len() >= 40, "{}", cases.len());
    for (i, (req, want)) in cases.iter().enumerate() {
        let raw = raw_request(gw.addr, req.as_bytes(), Duration::from_secs(3))
            .await
            .unwrap();
        let (head, _) = split_response(&raw);
        let status = status_of(&head);
        assert!(
            want.contains(&status),
            "case {i} ({:?}): got {status}\n{head}",
            &req[..req.len().min(80)]
        );
    }
    assert!(
        up.requests().is_empty(),
        "the upstream saw {:?}",
        up.requests().iter().map(|r| &r.target).collect::<Vec<_>>()
    );
    // Still serving after all that.
    up.publish("/ws/prices/ok", "fine");
    assert_eq!(get(gw.addr, "/api/prices/ok", &[]).await.2, "fine");
}

#[tokio::test]
async fn connection_and_tunnel_caps_refuse_with_503_and_spare_existing_clients() {
    let up = Upstream::start().await;
    let routes = r#"  - name: sockets
    prefix: "/echo"
    upstream: backend
    max_websockets: 1
"#;
    let gw = Gateway::start(&config(
        &up.addr.to_string(),
        routes,
        "max_connections: 3\nmax_websockets: 5\n",
    ))
    .await;
    // Per-route tunnel cap.
    let (mut ws1, _) = tokio_tungstenite::connect_async(format!("ws://{}/echo", gw.addr))
        .await
        .unwrap();
    let err = tokio_tungstenite::connect_async(format!("ws://{}/echo", gw.addr))
        .await
        .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(r) => {
            assert_eq!(r.status(), 503);
            assert_eq!(r.headers().get("retry-after").unwrap(), "1");
        }
        e => panic!("{e}"),
    }
    futures_util::SinkExt::send(
        &mut ws1,
        tokio_tungstenite::tungstenite::Message::text("ok"),
    )
    .await
    .unwrap();
    assert!(ws1.next().await.unwrap().is_ok());
    drop(ws1);
    // Connection cap (the tunnel above is gone; wait for its slot to be released).
    gw.wait_metric("pollgate_websocket_passthrough_active", |v| v == 0.0)
        .await;
    let mut conns = Vec::new();
    for _ in 0..3 {
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let mut r = wire::Reader::new(s);
        let a = r.answer(false).await.unwrap_or_else(|e| panic!("{e}"));
        assert!(a.head.starts_with("HTTP/1.1 200"), "{}", r.received());
        conns.push(r);
    }
    let (status, head, _) = get(gw.addr, "/x", &[]).await;
    assert_eq!(status, 503, "{head}");
    assert_eq!(
        header_of(&head, "retry-after").as_deref(),
        Some("1"),
        "{head}"
    );
    // Existing keep-alive clients are unaffected.
    let r = &mut conns[0];
    r.stream
        .write_all(b"GET /y HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let a = r.answer(false).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(a.head.starts_with("HTTP/1.1 200"), "{}", r.received());
    // A closed connection frees its slot.
    conns.pop();
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(gw.addr, "/x", &[]).await.0 != 200 {
        assert!(Instant::now() < deadline, "slot never released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let m = gw.metrics().await;
    assert!(
        metric_value(
            &m,
            r#"pollgate_rejected_total{reason="max_connections",route="none"}"#
        ) >= 1.0,
        "{m}"
    );
    assert_eq!(
        metric_value(
            &m,
            r#"pollgate_rejected_total{reason="max_websockets",route="sockets"}"#
        ),
        1.0,
        "{m}"
    );
}

#[tokio::test]
async fn auth_request_routes_never_leak_cached_data() {
    let up = Upstream::start().await;
    up.on_http(|r| {
        if r.target.starts_with("/auth/check?topic=") {
            if r.header("authorization") == Some("Bearer good")
                && r.header("x-pollgate-topic") == Some("secret")
            {
                return Reply::ok("");
            }
            let mut reply = Reply::ok(r#"{"error":"who are you"}"#);
            reply.status = if r.header("authorization").is_some() {
                403
            } else {
                401
            };
            reply.headers = vec![
                ("www-authenticate".into(), "Bearer".into()),
                ("content-type".into(), "application/json".into()),
            ];
            return reply;
        }
        Reply::ok("backend")
    });
    up.publish("/ws/prices/secret", "top secret payload");
    let routes = latest_route("").replace(
        "    access: public\n",
        "    access: { auth_request: \"/auth/check\", cache_for: 30s }\n",
    );
    let gw = Gateway::start(&config(&up.addr.to_string(), &routes, "")).await;

    let (status, head, body) = get(gw.addr, "/api/prices/secret", &[]).await;
    assert_eq!(status, 401);
    assert_eq!(
        header_of(&head, "www-authenticate").as_deref(),
        Some("Bearer")
    );
    assert!(!body.contains("secret payload"));
    assert_eq!(
        up.ws_connects_total(),
        0,
        "no subscription for an unauthorised client"
    );
    let (status, _, body) = get(
        gw.addr,
        "/api/prices/secret",
        &[("Authorization", "Bearer bad")],
    )
    .await;
    assert_eq!(status, 403);
    assert!(!body.contains("secret payload"));

    let (status, _, body) = get(
        gw.addr,
        "/api/prices/secret",
        &[("Authorization", "Bearer good")],
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "top secret payload"));
    // Now cached: a bad credential still gets nothing, a good one is not re-checked.
    let (status, _, body) = get(
        gw.addr,
        "/api/prices/secret",
        &[("Authorization", "Bearer bad")],
    )
    .await;
    assert_eq!(status, 403);
    assert!(!body.contains("secret payload"));
    let checks = |u: &Upstream| {
        u.http_requests()
            .iter()
            .filter(|r| r.target.starts_with("/auth/check"))
            .count()
    };
    let before = checks(&up);
    for _ in 0..5 {
        assert_eq!(
            get(
                gw.addr,
                "/api/prices/secret",
                &[("Authorization", "Bearer good")]
            )
            .await
            .0,
            200
        );
    }
    assert_eq!(
        checks(&up),
        before,
        "decisions are cached per credential and topic"
    );
    let with_cookie = get(
        gw.addr,
        "/api/prices/secret",
        &[("Authorization", "Bearer good"), ("Cookie", "s=1")],
    )
    .await;
    assert_eq!(with_cookie.0, 200);
    let last = up
        .http_requests()
        .into_iter()
        .rfind(|r| r.target.starts_with("/auth/check"))
        .unwrap();
    assert_eq!(last.header("cookie"), Some("s=1"));
    assert_eq!(last.target, "/auth/check?topic=secret");
}

#[tokio::test]
async fn sighup_reloads_atomically_and_keeps_unchanged_subscriptions() {
    let up = Upstream::start().await;
    up.publish("/ws/prices/k", "kept");
    up.publish("/ws/gone/g", "gone soon");
    let gone = r#"  - name: gone
    path: "/gone/{topic}"
    upstream: backend
    access: public
    subscribe:
      path: "/ws/gone/{topic}"
"#;
    let v1 = config(
        &up.addr.to_string(),
        &format!("{}{gone}", latest_route("")),
        "",
    );
    let gw = Gateway::start(&v1).await;
    assert_eq!(get(gw.addr, "/api/prices/k", &[]).await.2, "kept");
    assert_eq!(get(gw.addr, "/gone/g", &[]).await.2, "gone soon");
    assert_eq!(up.ws_open("/ws/gone/g"), 1);

    // Invalid file: logged, old config stays in force.
    let text = std::fs::read_to_string(&gw.config_path).unwrap();
    std::fs::write(
        &gw.config_path,
        text.replace(
            "upstream: backend\n    access: public",
            "upstream: nowhere\n    access: public",
        ),
    )
    .unwrap();
    gw.signal("HUP");
    gw.wait_metric(r#"pollgate_config_reloads_total{result="failure"}"#, |v| {
        v == 1.0
    })
    .await;
    assert!(gw.log().contains("unknown upstream"), "{}", gw.log());
    assert_eq!(get(gw.addr, "/gone/g", &[]).await.2, "gone soon");

    // Valid file: the `gone` route is removed, a new route added, `prices` untouched.
    let v2 = config(
        &up.addr.to_string(),
        &format!(
            "{}  - name: added\n    prefix: \"/added\"\n    upstream: backend\n",
            latest_route("")
        ),
        "",
    );
    std::fs::write(&gw.config_path, render(&v2, gw.addr, gw.admin)).unwrap();
    gw.signal("HUP");
    gw.wait_metric(r#"pollgate_config_reloads_total{result="success"}"#, |v| {
        v == 1.0
    })
    .await;
    up.wait_for("the removed route's subscription to close", |u| {
        u.ws_open("/ws/gone/g") == 0
    })
    .await;
    assert_eq!(get(gw.addr, "/api/prices/k", &[]).await.2, "kept");
    assert_eq!(
        up.ws_connects("/ws/prices/k"),
        1,
        "unchanged route kept its subscription"
    );
    let (_, _, body) = get(gw.addr, "/added/x", &[]).await;
    assert_eq!(body, "upstream saw GET /added/x");
    let (_, _, body) = get(gw.addr, "/gone/g", &[]).await;
    assert_eq!(
        body, "upstream saw GET /gone/g",
        "now served by the default route"
    );
}

#[tokio::test]
async fn graceful_upgrade_hands_over_without_refusing_anyone() {
    let up = Upstream::start().await;
    up.publish("/ws/prices/u", "v");
    let dir = scratch_dir();
    let sock = dir.join("upgrade.sock");
    let head = format!(
        "upgrade_sock: \"{}\"\npid_file: \"{}\"\n",
        sock.display(),
        dir.join("pid").display()
    );
    let routes = latest_route("    long_poll: 30s\n    hold_on: [if-none-match]\n");
    // A production-like grace period: requests the old process accepted just before it stopped
    // listening get time to finish even on a loaded machine.
    let cfg = config(&up.addr.to_string(), &routes, &head)
        .replace("grace_period_seconds: 1\n", "grace_period_seconds: 3\n");
    let mut old = Gateway::start(&cfg).await;
    let etag = header_of(&get(old.addr, "/api/prices/u", &[]).await.1, "etag").unwrap();
    // A held poll in the old process.
    let mut held = open_held_polls(old.addr, "/api/prices/u", &etag, 1)
        .await
        .remove(0);
    old.wait_metric(r#"pollgate_long_polls_held{route="prices"}"#, |v| v == 1.0)
        .await;

    // Clients keep polling throughout the handover.
    let addr = old.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s2 = stop.clone();
    let pollers = tokio::spawn(async move {
        let (mut ok, mut failed) = (0, Vec::new());
        while !s2.load(std::sync::atomic::Ordering::Relaxed) {
            match raw_request(
                addr,
                b"GET /api/prices/u HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
                Duration::from_secs(5),
            )
            .await
            {
                Ok(r) if status_of(&split_response(&r).0) == 200 => ok += 1,
                other => failed.push(format!("{other:?}")),
            }
        }
        (ok, failed)
    });
    // The new process takes the listeners over by address, so it must be told the ports the
    // kernel picked for the old one (port 0 would pick new ones).
    std::fs::write(&old.config_path, render(&cfg, old.addr, old.admin)).unwrap();
    let log = std::fs::File::create(dir.join("new.log")).unwrap();
    let mut new = std::process::Command::new(BIN)
        .arg("-c")
        .arg(&old.config_path)
        .arg("-u")
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(
            Instant::now() < deadline,
            "new process never opened the upgrade socket"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    old.signal("QUIT");
    // The held poll in the old process is answered before it exits.
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), held.read_to_end(&mut out))
        .await
        .expect("held poll answered")
        .unwrap();
    assert_eq!(status_of(&split_response(&out).0), 304);
    let code = tokio::task::spawn_blocking(move || old.wait_exit(Duration::from_secs(20)))
        .await
        .unwrap();
    assert_eq!(code, Some(0));
    // The new process serves the same port.
    let (status, _, body) = get(addr, "/api/prices/u", &[]).await;
    assert_eq!((status, body.as_str()), (200, "v"));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = pollers.await.unwrap();
    let _ = new.kill();
    let _ = new.wait();
    assert!(
        failed.is_empty(),
        "{} refused or failed during the handover: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert!(ok > 10);
}

#[tokio::test]
async fn slowloris_heads_are_cut_off_but_idle_keepalive_and_tunnels_are_not() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&config(
        &up.addr.to_string(),
        "",
        "header_read_timeout: 1s\n",
    ))
    .await;
    // A head trickled one byte at a time never completes within the deadline.
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let t = Instant::now();
    let head =
        b"GET /slow HTTP/1.1\r\nHost: t\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut cut = false;
    for b in head.iter() {
        if s.write_all(&[*b]).await.is_err() {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if t.elapsed() > Duration::from_secs(4) {
            break;
        }
    }
    if !cut {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
        let text = String::from_utf8_lossy(&out);
        assert!(out.is_empty() || text.starts_with("HTTP/1.1 4"), "{text}");
    }
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "held for {:?}",
        t.elapsed()
    );
    assert!(
        up.requests().is_empty(),
        "a trickled request reached the upstream"
    );

    // Idle keep-alive between requests is not a slow head.
    let mut r = wire::Reader::new(tokio::net::TcpStream::connect(gw.addr).await.unwrap());
    for _ in 0..2 {
        r.stream
            .write_all(b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let a = r.answer(false).await.unwrap_or_else(|e| panic!("{e}"));
        assert!(a.head.starts_with("HTTP/1.1 200"), "{}", r.received());
        // Idle for longer than header_read_timeout before the next request.
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    // Nor is an idle WebSocket tunnel.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/echo", gw.addr))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    futures_util::SinkExt::send(
        &mut ws,
        tokio_tungstenite::tungstenite::Message::text("alive"),
    )
    .await
    .unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        tokio_tungstenite::tungstenite::Message::text("alive")
    );
}
