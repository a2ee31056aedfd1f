//! HTTP/2: ALPN `h2` on the TLS listener and prior-knowledge `h2c` on the cleartext one. Every
//! poll feature works over HTTP/2 (short, conditional, held, cursor, EventSource), many held
//! polls share one connection, `RST_STREAM` frees a held poll at once, and proxy routes relay.

mod common;

use common::http2::{get, h2_tls, h2c, read, start};
use common::routes::{behind, latest_long, since};
use common::sse::{Item, Parser};
use common::tls::TestCa;
use common::*;
use std::time::Duration;

const HELD: &str = r#"pollgate_long_polls_held{route="prices"}"#;

fn config(up: &Upstream, extra: &str) -> String {
    behind(up.addr, extra, &[&latest_long(), &since()])
}

/// A gateway with a TLS listener (ALPN h2, http/1.1) and h2c on its cleartext listener.
async fn start_gateway(up: &Upstream) -> (Gateway, TestCa) {
    let ca = TestCa::new();
    let dir = scratch_dir();
    let (cert, key) = ca.server(1).write(&dir, &ca);
    let extra = format!(
        "h2c: true\ntls:\n  listen: \"{{tls}}\"\n  cert: \"{}\"\n  key: \"{}\"\n",
        cert.display(),
        key.display()
    );
    let gw = Gateway::start(&config(up, &extra)).await;
    (gw, ca)
}

#[tokio::test]
async fn every_poll_kind_and_a_proxy_route_work_over_h2_with_alpn() {
    let up = Upstream::start().await;
    up.on_http(|r| Reply::ok(&format!("proxied {}", r.target)));
    up.publish("/ws/prices/btc", "v1");
    up.publish("/ws/news/n", "0");
    let (gw, ca) = start_gateway(&up).await;
    let conn = h2_tls(&ca, gw.tls.unwrap()).await;

    // Short poll.
    let r = get(&conn, "/api/prices/btc", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "v1"), "{r:?}");
    let etag = r.header("etag").unwrap();

    // Conditional poll that does not wait.
    let r = get(
        &conn,
        "/api/prices/btc",
        &[("if-none-match", &etag), ("prefer", "wait=0")],
    )
    .await;
    assert_eq!(r.status, 304, "{r:?}");

    // Held poll, answered by the next message.
    let (held, _send) = start(&conn, "/api/prices/btc", &[("if-none-match", &etag)]).await;
    gw.wait_metric(HELD, |v| v == 1.0).await;
    up.publish_live("/ws/prices/btc", "v2");
    let r = read(held).await;
    assert_eq!((r.status, r.body.as_str()), (200, "v2"), "{r:?}");

    // Cursor polls.
    let r = get(&conn, "/api/news/n", &[]).await;
    assert_eq!(r.body, "[0]", "{r:?}");
    let mut cursor = r.header("pollgate-cursor").unwrap();
    for i in 1..=3 {
        up.publish_live("/ws/news/n", &i.to_string());
    }
    let mut seen: Vec<u64> = Vec::new();
    while seen.len() < 3 {
        let r = get(&conn, &format!("/api/news/n?since={cursor}"), &[]).await;
        assert_eq!(r.status, 200, "{r:?}");
        cursor = r.header("pollgate-cursor").unwrap();
        seen.extend(serde_json::from_str::<Vec<u64>>(&r.body).unwrap());
    }
    assert_eq!(seen, vec![1, 2, 3]);

    // EventSource: the current message, then each new one, on one HTTP/2 stream.
    let (resp, _send) = start(&conn, "/api/news/n", &[("accept", "text/event-stream")]).await;
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .expect("stream head")
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut body = resp.into_body();
    let mut parser = Parser::default();
    let mut events = Vec::new();
    let mut published = false;
    let mut raw = String::new();
    while events.len() < 2 {
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.data())
            .await
            .unwrap_or_else(|_| panic!("no event within 10 s; so far: {raw}"))
            .expect("the stream stays open")
            .unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        raw.push_str(&String::from_utf8_lossy(&chunk));
        for item in parser.feed(&chunk) {
            if let Item::Event(e) = item {
                events.push(e.data);
            }
        }
        if !events.is_empty() && !published {
            up.publish_live("/ws/news/n", "4");
            published = true;
        }
    }
    assert_eq!(events, vec!["3", "4"], "{raw}");

    // A proxy route relays.
    let r = get(&conn, "/other?x=1", &[]).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "proxied /other?x=1"),
        "{r:?}"
    );
    let seen = up.http_requests();
    let other = seen.iter().find(|r| r.target == "/other?x=1").unwrap();
    assert_eq!(
        other.header("x-forwarded-proto"),
        Some("https"),
        "{other:?}"
    );

    // HTTP/1.1 clients still get HTTP/1.1 on the same TLS listener.
    let mut s = ca.connect(gw.tls.unwrap(), b"\x08http/1.1").await;
    assert_eq!(s.ssl().selected_alpn_protocol(), Some(&b"http/1.1"[..]));
    let r = common::tls::request_on(&mut s, "/api/prices/btc", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "v2"), "{}", r.head);
}

#[tokio::test]
async fn one_h2c_connection_holds_100_polls_answered_by_one_publish() {
    let up = Upstream::start().await;
    up.publish("/ws/prices/btc", "v1");
    let (gw, _ca) = start_gateway(&up).await;
    let conn = h2c(gw.addr).await;
    let r = get(&conn, "/api/prices/btc", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "v1"), "{r:?}");
    let etag = r.header("etag").unwrap();

    let mut held = Vec::new();
    for _ in 0..100 {
        held.push(start(&conn, "/api/prices/btc", &[("if-none-match", &etag)]).await);
    }
    gw.wait_metric(HELD, |v| v == 100.0).await;
    up.publish_live("/ws/prices/btc", "v2");
    for (resp, _send) in held {
        let r = read(resp).await;
        assert_eq!((r.status, r.body.as_str()), (200, "v2"), "{r:?}");
    }
    gw.wait_metric(HELD, |v| v == 0.0).await;
    // One subscription fed them all.
    assert_eq!(up.ws_connects("/ws/prices/btc"), 1);
}

#[tokio::test]
async fn rst_stream_frees_a_held_poll_and_the_connection_carries_on() {
    let up = Upstream::start().await;
    up.publish("/ws/prices/btc", "v1");
    let (gw, _ca) = start_gateway(&up).await;
    let conn = h2c(gw.addr).await;
    let etag = get(&conn, "/api/prices/btc", &[])
        .await
        .header("etag")
        .unwrap();
    let (resp, mut send) = start(&conn, "/api/prices/btc", &[("if-none-match", &etag)]).await;
    gw.wait_metric(HELD, |v| v == 1.0).await;
    send.send_reset(h2::Reason::CANCEL);
    drop(resp);
    gw.wait_metric(HELD, |v| v == 0.0).await;

    // The other streams of the connection are untouched.
    let r = get(&conn, "/api/prices/btc", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "v1"), "{r:?}");
}

#[tokio::test]
async fn a_head_over_max_request_header_bytes_is_refused_and_the_connection_carries_on() {
    let up = Upstream::start().await;
    up.publish("/ws/prices/btc", "v1");
    let (gw, _ca) = start_gateway(&up).await;
    let conn = h2c(gw.addr).await;
    // The default max_request_header_bytes is 32768.
    let big = "x".repeat(40_000);
    let (resp, _send) = start(&conn, "/api/prices/btc", &[("x-big", &big)]).await;
    match tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .expect("an answer or a reset")
    {
        Ok(r) => assert_eq!(r.status(), 431, "{r:?}"),
        Err(e) => assert!(e.is_reset() || e.is_remote(), "{e:?}"),
    }
    assert_eq!(up.http_requests().len(), 0);
    let r = get(&conn, "/api/prices/btc", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "v1"), "{r:?}");
}

#[tokio::test]
async fn shutdown_answers_held_polls_on_an_h2_connection() {
    let up = Upstream::start().await;
    up.publish("/ws/prices/btc", "v1");
    let (mut gw, ca) = start_gateway(&up).await;
    let conn = h2_tls(&ca, gw.tls.unwrap()).await;
    let etag = get(&conn, "/api/prices/btc", &[])
        .await
        .header("etag")
        .unwrap();
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(start(&conn, "/api/prices/btc", &[("if-none-match", &etag)]).await);
    }
    gw.wait_metric(HELD, |v| v == 5.0).await;
    gw.signal("TERM");
    for (resp, _send) in held {
        let r = read(resp).await;
        assert_eq!(r.status, 304, "{r:?}");
    }
    let code = tokio::task::spawn_blocking(move || gw.wait_exit(Duration::from_secs(15)))
        .await
        .unwrap();
    assert_eq!(code, Some(0));
}
