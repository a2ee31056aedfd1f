//! Polling from cache: short, conditional, long and cursor polls answered from the per-topic
//! cache that the gateway fills from its own upstream WebSocket subscriptions.

mod common;

use common::routes::{behind, latest_long, poll_route};
use common::wire::Reader;
use common::*;
use futures_util::StreamExt;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::Message;

/// The prices route's held-poll gauge.
const HELD: &str = r#"pollgate_long_polls_held{route="prices"}"#;

fn config(up: &Upstream, routes: &str) -> String {
    behind(up.addr, "", &[routes])
}

fn latest() -> String {
    poll_route(
        "prices",
        r#"    mode: latest
    content_type: application/json
    first_message_wait: 2s
"#,
    )
}

fn since() -> String {
    poll_route(
        "news",
        r#"    mode: since
    history: 2000
    long_poll: 20s
    first_message_wait: 2s
"#,
    )
}

const SHARED: &str = r#"  - name: feed
    path: "/feed/{topic}"
    upstream: backend
    access: public
    subscribe:
      path: "/ws"
      send: '{"op":"subscribe","topic":"{topic}"}'
      unsend: '{"op":"unsubscribe","topic":"{topic}"}'
      topic_pointer: "/topic"
      payload_pointer: "/data"
    mode: since
    id_pointer: "/id"
    history: 100
    long_poll: 20s
    first_message_wait: 2s
"#;

async fn get(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> Resp {
    get_with(gw.addr, path, headers).await
}

#[tokio::test]
async fn latest_mode_serves_the_newest_payload_with_validators() {
    let up = Upstream::start().await;
    let payload = r#"{"price": 101.5, "note": "ünïcode"}"#;
    up.publish("/ws/prices/btc", payload);
    let gw = Gateway::start(&config(&up, &latest())).await;
    let r = get(&gw, "/api/prices/btc", &[]).await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.body, payload, "byte for byte");
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(r.header("cache-control").as_deref(), Some("no-cache"));
    assert!(r.header("age").is_some());
    let etag = r.header("etag").unwrap();
    assert!(etag.starts_with('"') && etag.ends_with('"') && !etag.starts_with("W/"));

    // Conditional: same ETag gives 304, an old one gives the new payload.
    let r = get(&gw, "/api/prices/btc", &[("If-None-Match", &etag)]).await;
    assert_eq!(r.status, 304);
    assert_eq!(r.header("etag").as_deref(), Some(etag.as_str()));
    up.publish("/ws/prices/btc", r#"{"price": 102}"#);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = get(&gw, "/api/prices/btc", &[("If-None-Match", &etag)]).await;
        if r.status == 200 {
            assert_eq!(r.body, r#"{"price": 102}"#);
            assert_ne!(r.header("etag").unwrap(), etag);
            break;
        }
        assert!(Instant::now() < deadline, "new message never visible");
    }
    // HEAD: the same headers, no body.
    let raw = raw_request(
        gw.addr,
        b"HEAD /api/prices/btc HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let (head, body) = split_response(&raw);
    assert_eq!(status_of(&head), 200);
    assert_eq!(header_of(&head, "content-length").as_deref(), Some("14"));
    assert!(body.is_empty());
    // Only WebSocket subscriptions reached the backend: no HTTP poll was forwarded.
    assert!(up.http_requests().is_empty(), "{:?}", up.http_requests());
    let m = gw.metrics().await;
    assert!(
        metric_value(
            &m,
            r#"pollgate_poll_requests_total{outcome="hit",route="prices"}"#
        ) >= 2.0,
        "{m}"
    );
    assert!(
        metric_value(
            &m,
            r#"pollgate_poll_requests_total{outcome="not_modified",route="prices"}"#
        ) >= 1.0,
        "{m}"
    );
    assert!(
        metric_value(
            &m,
            r#"pollgate_upstream_requests_saved_total{route="prices"}"#
        ) >= 3.0,
        "{m}"
    );
    assert_eq!(
        metric_value(&m, r#"pollgate_upstream_subscriptions{route="prices"}"#),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric_value(&m, r#"pollgate_topics_cached{route="prices"}"#),
        1.0,
        "{m}"
    );
    assert!(
        metric_value(&m, r#"pollgate_upstream_messages_total{route="prices"}"#) >= 2.0,
        "{m}"
    );
}

#[tokio::test]
async fn binary_frames_are_served_byte_for_byte() {
    let up = Upstream::start().await;
    let bytes: Vec<u8> = (0..=255u8).rev().collect();
    up.publish_binary("/ws/prices/bin", &bytes);
    let gw = Gateway::start(&config(&up, &latest())).await;
    let r = client()
        .get(gw.url("/api/prices/bin"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().to_vec(), bytes);
}

#[tokio::test]
async fn etags_are_the_same_on_every_replica() {
    let up = Upstream::start().await;
    up.publish("/ws/prices/eth", r#"{"price": 7}"#);
    let a = Gateway::start(&config(&up, &latest())).await;
    let b = Gateway::start(&config(&up, &latest())).await;
    let ra = get(&a, "/api/prices/eth", &[]).await;
    let rb = get(&b, "/api/prices/eth", &[]).await;
    assert_eq!(ra.status, 200);
    assert_eq!(ra.header("etag"), rb.header("etag"));
    // A client hopping replicas with its ETag is not sent the same message again.
    let r = get(
        &b,
        "/api/prices/eth",
        &[("If-None-Match", &ra.header("etag").unwrap())],
    )
    .await;
    assert_eq!(r.status, 304);
}

#[tokio::test]
async fn a_held_long_poll_returns_with_the_next_message() {
    let up = Upstream::start().await;
    up.publish("/ws/prices/btc", "v1");
    let gw = Gateway::start(&config(&up, &latest_long())).await;
    let r = get(&gw, "/api/prices/btc", &[]).await;
    let etag = r.header("etag").unwrap();
    let gw_addr = gw.addr;
    let held = tokio::spawn(async move {
        let req = format!("GET /api/prices/btc HTTP/1.1\r\nHost: t\r\nConnection: close\r\nIf-None-Match: {etag}\r\n\r\n");
        let raw = raw_request(gw_addr, req.as_bytes(), Duration::from_secs(30))
            .await
            .unwrap();
        (Instant::now(), raw)
    });
    gw.wait_metric(HELD, |v| v == 1.0).await;
    let published = Instant::now();
    up.publish("/ws/prices/btc", "v2");
    let (answered, raw) = held.await.unwrap();
    let (head, body) = split_response(&raw);
    assert_eq!(status_of(&head), 200, "{head}");
    assert_eq!(body, "v2");
    // Answered after the publish and long before the 20 s hold would have ended.
    assert!(answered >= published);
    assert!(
        answered - published < Duration::from_secs(5),
        "{:?}",
        answered - published
    );
    gw.wait_metric(HELD, |v| v == 0.0).await;
    let m = gw.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            r#"pollgate_poll_requests_total{outcome="held_served",route="prices"}"#
        ),
        1.0
    );
    assert!(metric_value(&m, r#"pollgate_delivery_lag_seconds_count{route="prices"}"#) >= 1.0);
}

/// A publish that is not news to a held poll (the same payload again, so the same ETag) wakes
/// it, and it waits on: it is answered by the next new message, not with the one it has.
#[tokio::test]
async fn a_publish_that_is_not_news_keeps_the_poll_held() {
    let up = Upstream::start().await;
    up.publish("/ws/prices/btc", "v1");
    let gw = Gateway::start(&config(&up, &latest_long())).await;
    let r = get(&gw, "/api/prices/btc", &[]).await;
    let inm = format!("If-None-Match: {}\r\n", r.header("etag").unwrap());
    let held = hold(&gw, "/api/prices/btc", &inm);
    gw.wait_metric(HELD, |v| v == 1.0).await;
    let messages = r#"pollgate_upstream_messages_total{route="prices"}"#;
    let before = metric_value(&gw.metrics().await, messages);
    up.publish("/ws/prices/btc", "v1");
    gw.wait_metric(messages, |v| v > before).await;
    // The publish made the poll an answer due; once it has looked, it found nothing new.
    gw.wait_metric("pollgate_fanout_answers_due", |v| v == 0.0)
        .await;
    answered_only_after(&gw, held, HELD, || up.publish("/ws/prices/btc", "v2"), "v2").await;
}

/// Asserts that `held` is still held (its route's gauge `gauge` at 1), then runs `publish` and
/// asserts that the poll is answered `200` with `body`.
async fn answered_only_after(
    gw: &Gateway,
    held: tokio::task::JoinHandle<Vec<u8>>,
    gauge: &str,
    publish: impl FnOnce(),
    body: &str,
) {
    assert_eq!(metric_value(&gw.metrics().await, gauge), 1.0);
    assert!(!held.is_finished());
    publish();
    let raw = held.await.unwrap();
    let (head, got) = split_response(&raw);
    assert_eq!(status_of(&head), 200, "{head}");
    assert_eq!(got, body, "{head}");
}

#[tokio::test]
async fn prefer_wait_holds_a_poll_and_times_out_with_304() {
    let up = Upstream::start().await;
    up.publish("/ws/prices/x", "same");
    let gw = Gateway::start(&config(&up, &latest())).await;
    let etag = get(&gw, "/api/prices/x", &[]).await.header("etag").unwrap();
    let t = Instant::now();
    let r = get(
        &gw,
        "/api/prices/x",
        &[("If-None-Match", &etag), ("Prefer", "wait=1")],
    )
    .await;
    assert_eq!(r.status, 304, "{}", r.head);
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "not held: {:?}",
        t.elapsed()
    );
    assert_eq!(r.header("preference-applied").as_deref(), Some("wait=1"));
    // Capped by the route: the route's max_wait (30 s default here) bounds a huge request.
    let m = gw.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            r#"pollgate_poll_requests_total{outcome="held_timeout",route="prices"}"#
        ),
        1.0
    );
    for bad in ["wait=abc", "wait=-1", "wait"] {
        let r = get(&gw, "/api/prices/x", &[("Prefer", bad)]).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.head);
    }
}

#[tokio::test]
async fn many_pollers_cost_one_subscription_per_topic() {
    let up = Upstream::start().await;
    for t in 0..5 {
        up.publish(&format!("/ws/prices/t{t}"), &format!("topic {t}"));
    }
    let gw = Gateway::start(&config(&up, &latest())).await;
    let c = client();
    let mut tasks = Vec::new();
    for i in 0..500 {
        let c = c.clone();
        let url = gw.url(&format!("/api/prices/t{}", i % 5));
        tasks.push(tokio::spawn(async move {
            let r = c.get(url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap(), i % 5)
        }));
    }
    for t in tasks {
        let (status, body, topic) = t.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(body, format!("topic {topic}"));
    }
    // Warm: another round costs the backend nothing at all.
    for i in 0..100 {
        let r = c
            .get(gw.url(&format!("/api/prices/t{}", i % 5)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(up.ws_connects_total(), 5, "one subscription per topic");
    for t in 0..5 {
        assert_eq!(up.ws_connects(&format!("/ws/prices/t{t}")), 1);
    }
    assert!(
        up.http_requests().is_empty(),
        "{} HTTP requests reached the backend",
        up.http_requests().len()
    );
}

#[tokio::test]
async fn since_mode_delivers_every_message_exactly_once_in_order() {
    let up = Upstream::start().await;
    up.publish("/ws/news/n", "0");
    let gw = Gateway::start(&config(&up, &since())).await;
    let first = get(&gw, "/api/news/n", &[]).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.body, "[0]");
    let mut cursor = first.header("pollgate-cursor").unwrap();
    assert_eq!(first.header("etag").unwrap(), format!("\"{cursor}\""));

    let gw_addr = gw.addr;
    let reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut gaps = 0;
        while seen.len() < 1000 {
            let req = format!(
                "GET /api/news/n?since={cursor} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
            );
            let raw = raw_request(gw_addr, req.as_bytes(), Duration::from_secs(30))
                .await
                .unwrap();
            let (head, body) = split_response(&raw);
            assert_eq!(status_of(&head), 200, "{head}");
            if header_of(&head, "pollgate-gap").is_some() {
                gaps += 1;
            }
            let items: Vec<u64> = serde_json::from_str(&body).unwrap();
            seen.extend(items);
            cursor = header_of(&head, "pollgate-cursor").unwrap();
        }
        (seen, gaps)
    });
    for i in 1..=1000 {
        up.publish_live("/ws/news/n", &i.to_string());
        if i % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let (seen, gaps) = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen, (1..=1000).collect::<Vec<u64>>());
    assert_eq!(gaps, 0);
}

#[tokio::test]
async fn since_mode_flags_cursors_outside_history_and_rejects_bad_ones() {
    let up = Upstream::start().await;
    up.publish("/ws/news/h", "0");
    let gw = Gateway::start(&config(
        &up,
        &since().replace("history: 2000", "history: 3"),
    ))
    .await;
    let first = get(&gw, "/api/news/h", &[]).await;
    let c0 = first.header("pollgate-cursor").unwrap();
    for i in 1..=5 {
        up.publish_live("/ws/news/h", &i.to_string());
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = get(&gw, &format!("/api/news/h?since={c0}"), &[]).await;
        if r.body == "[3,4,5]" {
            assert_eq!(r.header("pollgate-gap").as_deref(), Some("true"));
            break;
        }
        assert!(Instant::now() < deadline, "{}", r.body);
    }
    for bad in ["abc", "1.5", "-3", "%ff"] {
        let r = get(&gw, &format!("/api/news/h?since={bad}"), &[]).await;
        assert_eq!(r.status, 400, "cursor {bad}");
    }
    assert!(up.http_requests().is_empty());
}

#[tokio::test]
async fn shared_socket_routes_messages_to_their_topics() {
    let up = Upstream::start().await;
    up.publish_shared("a", r#"{"topic":"a","id":"a-1","data":{"v":"a1"}}"#);
    up.publish_shared("b", r#"{"topic":"b","id":"b-1","data":{"v":"b1"}}"#);
    let gw = Gateway::start(&config(&up, SHARED)).await;
    let ra = get(&gw, "/feed/a", &[]).await;
    let rb = get(&gw, "/feed/b", &[]).await;
    assert_eq!(ra.body, r#"[{"v":"a1"}]"#);
    assert_eq!(rb.body, r#"[{"v":"b1"}]"#);
    assert_eq!(ra.header("pollgate-cursor").as_deref(), Some("a-1"));
    up.publish_shared("b", r#"{"topic":"b","id":"b-2","data":{"v":"b2"}}"#);
    up.publish_shared("a", r#"{"topic":"a","id":"a-2","data":{"v":"a2"}}"#);
    let ra = get(&gw, "/feed/a?since=a-1", &[]).await;
    let rb = get(&gw, "/feed/b?since=b-1", &[]).await;
    assert_eq!(ra.body, r#"[{"v":"a2"}]"#, "{}", ra.head);
    assert_eq!(rb.body, r#"[{"v":"b2"}]"#);
    assert_eq!(up.ws_connects("/ws"), 1, "one shared socket for all topics");
    let frames = up.shared_frames();
    assert!(
        frames.contains(&r#"{"op":"subscribe","topic":"a"}"#.to_string()),
        "{frames:?}"
    );
    assert!(
        frames.contains(&r#"{"op":"subscribe","topic":"b"}"#.to_string()),
        "{frames:?}"
    );
}

#[tokio::test]
async fn cold_topics_fall_back_to_the_backend_over_http() {
    let up = Upstream::start().await;
    up.refuse_ws("/ws/prices/refused");
    up.on_http(|r| Reply::ok(&format!("legacy answer for {}", r.target)));
    let gw = Gateway::start(&config(
        &up,
        &latest().replace("first_message_wait: 2s", "first_message_wait: 300ms"),
    ))
    .await;
    // The upstream refuses the subscription: the poll is forwarded unchanged.
    let r = get(&gw, "/api/prices/refused?x=1", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "legacy answer for /api/prices/refused?x=1");
    // The subscription opens but says nothing within first_message_wait.
    let t = Instant::now();
    let r = get(&gw, "/api/prices/quiet", &[]).await;
    assert_eq!(r.body, "legacy answer for /api/prices/quiet");
    assert!(t.elapsed() >= Duration::from_millis(250));
    assert_eq!(up.http_requests().len(), 2);
    let m = gw.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            r#"pollgate_poll_requests_total{outcome="fallback",route="prices"}"#
        ),
        2.0
    );
}

/// Opens `n` polls on `path` carrying `etag` and returns once the gateway counts them held.
async fn hold_polls(gw: &Gateway, path: &str, etag: &str, n: usize) -> Vec<tokio::net::TcpStream> {
    let socks = open_held_polls(gw.addr, path, etag, n).await;
    gw.wait_metric(HELD, |v| v == n as f64).await;
    socks
}

#[tokio::test]
async fn hung_up_pollers_are_released_at_once() {
    let up = Upstream::start().await;
    up.publish("/ws/prices/h", "v");
    let gw = Gateway::start(&config(&up, &latest_long())).await;
    let etag = get(&gw, "/api/prices/h", &[]).await.header("etag").unwrap();
    let socks = hold_polls(&gw, "/api/prices/h", &etag, 20).await;
    drop(socks);
    gw.wait_metric(HELD, |v| v == 0.0).await;
}

/// SIGTERM with polls held on `socks`: each is answered (304, nothing new) before the process
/// exits, and it exits 0.
async fn terminate_answering(mut gw: Gateway, socks: Vec<tokio::net::TcpStream>) {
    gw.signal("TERM");
    for mut s in socks {
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .expect("answered before exit")
            .unwrap();
        let (head, _) = split_response(&out);
        assert_eq!(status_of(&head), 304, "{head}");
    }
    let code = tokio::task::spawn_blocking(move || gw.wait_exit(Duration::from_secs(15)))
        .await
        .unwrap();
    assert_eq!(code, Some(0));
}

#[tokio::test]
async fn shutdown_answers_every_held_poll() {
    let up = Upstream::start().await;
    up.publish("/ws/prices/s", "v");
    let gw = Gateway::start(&config(&up, &latest_long())).await;
    let etag = get(&gw, "/api/prices/s", &[]).await.header("etag").unwrap();
    let socks = hold_polls(&gw, "/api/prices/s", &etag, 5).await;
    terminate_answering(gw, socks).await;
}

/// Each connection runs in a task spawned from pingora's accept task (`src/accept.rs`); without
/// work stealing each worker is a runtime of its own, so the spawn lands on the accepting
/// thread's. Held polls there must be answered by a publish and by shutdown alike.
#[tokio::test]
async fn held_polls_are_answered_without_work_stealing() {
    held_polls_are_answered_on("threads: 2\nwork_stealing: false\n").await;
}

/// The suite runs `threads: 1`, whose default is the single-threaded runtime; deployments with
/// more threads run pingora's work-stealing one.
#[tokio::test]
async fn held_polls_are_answered_with_work_stealing() {
    held_polls_are_answered_on("threads: 2\n").await;
    held_polls_are_answered_on("threads: 1\nwork_stealing: true\n").await;
}

async fn held_polls_are_answered_on(runtime: &str) {
    let up = Upstream::start().await;
    up.publish("/ws/prices/w", "v1");
    let cfg = config(&up, &latest_long()).replace("threads: 1\n", runtime);
    let gw = Gateway::start(&cfg).await;
    let etag = get(&gw, "/api/prices/w", &[]).await.header("etag").unwrap();

    let socks = hold_polls(&gw, "/api/prices/w", &etag, 8).await;
    up.publish("/ws/prices/w", "v2");
    for mut s in socks {
        let r = Reader::new(&mut s)
            .with_limit(Duration::from_secs(10))
            .answer(false)
            .await
            .unwrap_or_else(|e| panic!("{runtime:?}: a held poll after the publish: {e}"));
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "v2"),
            "{runtime:?}: {}",
            r.head
        );
    }

    let etag = get(&gw, "/api/prices/w", &[]).await.header("etag").unwrap();
    let socks = hold_polls(&gw, "/api/prices/w", &etag, 8).await;
    terminate_answering(gw, socks).await;
}

#[tokio::test]
async fn limits_refuse_with_503_and_retry_after() {
    let up = Upstream::start().await;
    up.publish("/ws/prices/a", "a");
    up.publish("/ws/prices/b", "b");
    let cfg = config(
        &up,
        &latest_long().replace(
            "    mode: latest\n",
            "    mode: latest\n    max_held_polls: 1\n",
        ),
    )
    .replace("threads: 1\n", "threads: 1\nmax_topics: 1\n");
    let gw = Gateway::start(&cfg).await;
    assert_eq!(get(&gw, "/api/prices/a", &[]).await.status, 200);
    let r = get(&gw, "/api/prices/b", &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after").as_deref(), Some("1"));
    let etag = get(&gw, "/api/prices/a", &[]).await.header("etag").unwrap();
    let _held = hold_polls(&gw, "/api/prices/a", &etag, 1).await;
    let r = get(&gw, "/api/prices/a", &[("If-None-Match", &etag)]).await;
    assert_eq!(r.status, 503);
    let m = gw.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            r#"pollgate_rejected_total{reason="max_topics",route="prices"}"#
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &m,
            r#"pollgate_rejected_total{reason="max_held_polls",route="prices"}"#
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &m,
            r#"pollgate_poll_requests_total{outcome="rejected",route="prices"}"#
        ),
        2.0
    );
}

#[tokio::test]
async fn idle_topics_are_unsubscribed_and_evicted() {
    let up = Upstream::start().await;
    up.publish("/ws/prices/idle", "v");
    let gw = Gateway::start(&config(
        &up,
        &latest().replace(
            "    mode: latest\n",
            "    mode: latest\n    idle_unsubscribe: 500ms\n",
        ),
    ))
    .await;
    assert_eq!(get(&gw, "/api/prices/idle", &[]).await.status, 200);
    assert_eq!(up.ws_open("/ws/prices/idle"), 1);
    up.wait_for("the idle subscription to close", |u| {
        u.ws_open("/ws/prices/idle") == 0
    })
    .await;
    gw.wait_metric(r#"pollgate_topics_cached{route="prices"}"#, |v| v == 0.0)
        .await;
    assert_eq!(
        gw.metric(r#"pollgate_upstream_subscriptions{route="prices"}"#)
            .await,
        0.0
    );
    // Polled again, it is subscribed again.
    assert_eq!(get(&gw, "/api/prices/idle", &[]).await.status, 200);
    assert_eq!(up.ws_connects("/ws/prices/idle"), 2);
}

#[tokio::test]
async fn other_methods_and_websockets_on_poll_paths_go_to_the_backend() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&config(&up, &latest())).await;
    let r = client()
        .post(gw.url("/api/prices/btc"))
        .body("order")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "upstream saw POST /api/prices/btc");
    // A WebSocket handshake on a poll path is passed through, not polled.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/api/prices/btc", gw.addr))
        .await
        .unwrap();
    up.wait_for("the tunnel", |u| u.ws_open("/api/prices/btc") == 1)
        .await;
    up.publish_live("/api/prices/btc", "pushed");
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("pushed"));
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn bad_topics_are_refused() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&config(&up, &latest())).await;
    let long = "a".repeat(257);
    for path in [
        format!("/api/prices/{long}"),
        "/api/prices/%ff%fe".to_string(),
        "/api/prices/%zz".to_string(),
    ] {
        let r = get(&gw, &path, &[]).await;
        assert_eq!(r.status, 400, "{path}: {}", r.head);
    }
    let raw = raw_request(
        gw.addr,
        b"GET /api/prices/btc HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc",
        Duration::from_secs(3),
    )
    .await
    .unwrap();
    assert_eq!(status_of(&split_response(&raw).0), 400);
    assert!(up.requests().is_empty(), "{:?}", up.requests());
}

#[tokio::test]
async fn interrupted_subscriptions_reconnect_and_flag_the_gap() {
    let up = Upstream::start().await;
    up.publish("/ws/news/g", "1");
    let gw = Gateway::start(&config(&up, &since())).await;
    let r = get(&gw, "/api/news/g", &[]).await;
    assert_eq!(r.body, "[1]");
    let cursor = r.header("pollgate-cursor").unwrap();
    up.drop_websockets();
    up.wait_for("the reconnect", |u| u.ws_connects("/ws/news/g") >= 2)
        .await;
    gw.wait_metric(r#"pollgate_upstream_reconnects_total{route="news"}"#, |v| {
        v >= 1.0
    })
    .await;
    up.wait_for("the new socket", |u| u.ws_open("/ws/news/g") == 1)
        .await;
    up.publish_live("/ws/news/g", "2");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = get(
            &gw,
            &format!("/api/news/g?since={cursor}"),
            &[("Prefer", "wait=2")],
        )
        .await;
        if r.body.contains('2') {
            assert_eq!(
                r.header("pollgate-gap").as_deref(),
                Some("true"),
                "{}",
                r.head
            );
            break;
        }
        assert!(Instant::now() < deadline, "{} {}", r.head, r.body);
    }
}

/// A held cursor poll woken with nothing after its cursor (its subscription dropped, then came
/// back) waits on, and the next message answers it.
#[tokio::test]
async fn a_held_cursor_poll_waits_on_through_a_reconnect() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&config(&up, &since())).await;
    // Not retained: the new socket after the reconnect sends nothing until "2".
    let first = hold(&gw, "/api/news/w", "");
    up.wait_for("the subscription", |u| u.ws_open("/ws/news/w") == 1)
        .await;
    up.publish_live("/ws/news/w", "1");
    let r = first.await.unwrap();
    let (head, body) = split_response(&r);
    assert_eq!(body, "[1]", "{head}");
    let cursor = head
        .lines()
        .find_map(|l| l.strip_prefix("Pollgate-Cursor: "))
        .unwrap()
        .to_string();
    let held = hold(&gw, &format!("/api/news/w?since={cursor}"), "");
    let news_held = r#"pollgate_long_polls_held{route="news"}"#;
    gw.wait_metric(news_held, |v| v == 1.0).await;
    up.drop_websockets();
    gw.wait_metric(r#"pollgate_upstream_reconnects_total{route="news"}"#, |v| {
        v >= 1.0
    })
    .await;
    up.wait_for("the new socket", |u| u.ws_open("/ws/news/w") == 1)
        .await;
    let publish = || up.publish_live("/ws/news/w", "2");
    answered_only_after(&gw, held, news_held, publish, "[2]").await;
}

#[tokio::test]
async fn subscription_headers_expand_the_environment() {
    let up = Upstream::start().await;
    up.publish("/ws/prices/env", "v");
    let routes = latest().replace(
        "      path: \"/ws/prices/{topic}\"\n",
        "      path: \"/ws/prices/{topic}\"\n      headers: { Authorization: \"Bearer ${POLLGATE_TEST_TOKEN}\" }\n",
    );
    let gw = Gateway::start_with(
        &config(&up, &routes),
        &[],
        &[("POLLGATE_TEST_TOKEN", "t0k3n")],
    )
    .await;
    assert_eq!(get(&gw, "/api/prices/env", &[]).await.status, 200);
    let hs = up
        .requests()
        .into_iter()
        .find(|r| r.target == "/ws/prices/env")
        .unwrap();
    assert_eq!(hs.header("authorization"), Some("Bearer t0k3n"));
}

/// Splits a byte stream of HTTP/1.1 responses; `bodiless[i]`: response `i` answers a HEAD.
fn responses(mut raw: &[u8], bodiless: &[bool]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for &head_only in bodiless {
        let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
            break;
        };
        let head = String::from_utf8_lossy(&raw[..end]).into_owned();
        let status = status_of(&head);
        let len: usize = match (
            head_only || status == 304,
            header_of(&head, "content-length"),
        ) {
            (false, Some(l)) => l.parse().unwrap(),
            _ => 0,
        };
        let body_end = (end + 4 + len).min(raw.len());
        out.push((
            head,
            String::from_utf8_lossy(&raw[end + 4..body_end]).into_owned(),
        ));
        raw = &raw[body_end..];
    }
    assert!(raw.is_empty(), "unparsed: {}", String::from_utf8_lossy(raw));
    out
}

/// A head as two paths must give it: every line in order, name casing included, except the
/// values of `Date` and `Age` (clock readings).
fn comparable(head: &str) -> Vec<String> {
    head.lines()
        .map(|l| match l.split_once(':') {
            Some((k, _)) if k.eq_ignore_ascii_case("date") || k.eq_ignore_ascii_case("age") => {
                format!("{k}: *")
            }
            _ => l.to_string(),
        })
        .collect()
}

/// One answer: status, comparable head, body, raw head.
type Answer = (u16, Vec<String>, String, String);

fn request_on(method: &str, path: &str, extra: &str) -> String {
    format!("{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{extra}\r\n")
}

async fn ask(gw: &Gateway, method: &str, path: &str, extra: &str) -> Answer {
    let req = request_on(method, path, extra);
    let a = common::wire::exchange(gw.addr, req.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    (a.status, comparable(&a.head), a.text(), a.head)
}

/// Sends every case on pollgate's own path, then (switched by a reload that keeps the cache)
/// on pingora's path, and asserts identical answers; returns them (fast, full) and leaves the
/// gateway on its own path.
async fn on_both_paths(gw: &Gateway, cases: &[(&str, String, String)]) -> Vec<(Answer, Answer)> {
    let mut fast = Vec::new();
    for (method, path, extra) in cases {
        fast.push(ask(gw, method, path, extra).await);
    }
    gw.set_fast_paths(false).await;
    let mut full = Vec::new();
    for (method, path, extra) in cases {
        full.push(ask(gw, method, path, extra).await);
    }
    gw.set_fast_paths(true).await;
    let pairs: Vec<_> = fast.into_iter().zip(full).collect();
    for ((method, path, extra), (f, p)) in cases.iter().zip(&pairs) {
        assert_eq!(
            (f.0, &f.1, &f.2),
            (p.0, &p.1, &p.2),
            "{method} {path} {extra:?}:\nfast path:\n{}\nfull path:\n{}",
            f.3,
            p.3
        );
    }
    pairs
}

/// Opens one GET that the gateway is expected to hold; the task returns the raw answer.
fn hold(gw: &Gateway, path: &str, extra: &str) -> tokio::task::JoinHandle<Vec<u8>> {
    let req = request_on("GET", path, extra);
    let addr = gw.addr;
    tokio::spawn(async move {
        raw_request(addr, req.as_bytes(), Duration::from_secs(30))
            .await
            .unwrap()
    })
}

#[tokio::test]
async fn both_paths_answer_polls_alike_and_the_fast_path_shares_connections_with_the_proxy() {
    let up = Upstream::start().await;
    up.on_http(|r| {
        Reply::ok(&format!(
            "upstream saw {} {} {}",
            r.method,
            r.target,
            String::from_utf8_lossy(&r.body)
        ))
    });
    up.publish("/ws/prices/btc", r#"{"p":1}"#);
    let gw = Gateway::start(&config(&up, &latest_long())).await;
    let warm = get(&gw, "/api/prices/btc", &[]).await;
    assert_eq!(warm.status, 200, "{}", warm.head);
    let etag = warm.header("etag").unwrap();

    // The same polls on pollgate's connection loop and on pingora's proxy: the same status,
    // the same header lines in the same order and casing, the same body.
    let path = "/api/prices/btc".to_string();
    let cases = [
        ("GET", path.clone(), String::new()),
        (
            "GET",
            path.clone(),
            format!("If-None-Match: {etag}\r\nPrefer: wait=0\r\n"),
        ),
        (
            "HEAD",
            path.clone(),
            "If-None-Match: \"other\"\r\n".to_string(),
        ),
        ("GET", "/api/prices/..".to_string(), String::new()),
        ("GET", "/nowhere/x".to_string(), String::new()),
    ];
    let answers = on_both_paths(&gw, &cases).await;
    let statuses: Vec<u16> = answers.iter().map(|(f, _)| f.0).collect();
    assert_eq!(statuses, [200, 304, 200, 400, 200]);
    assert!(
        answers[0].0 .3.contains("\r\nETag: "),
        "{}",
        answers[0].0 .3
    );

    // One connection, five pipelined requests in one write, alternating between the cache
    // and the proxy: every answer comes back, in order, and only the proxied requests reach
    // the backend.
    let before = up.http_requests().len();
    let pipelined = format!(
        "GET /api/prices/btc HTTP/1.1\r\nHost: t\r\n\r\n\
         POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello\
         GET /api/prices/btc HTTP/1.1\r\nHost: t\r\nIf-None-Match: {etag}\r\nPrefer: wait=0\r\n\r\n\
         GET /plain?x=1 HTTP/1.1\r\nHost: t\r\n\r\n\
         HEAD /api/prices/btc HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    );
    let raw = raw_request(gw.addr, pipelined.as_bytes(), Duration::from_secs(10))
        .await
        .unwrap();
    let r = responses(&raw, &[false, false, false, false, true]);
    let statuses: Vec<u16> = r.iter().map(|(h, _)| status_of(h)).collect();
    assert_eq!(statuses, [200, 200, 304, 200, 200], "{r:#?}");
    assert_eq!(r[0].1, r#"{"p":1}"#);
    assert_eq!(r[1].1, "upstream saw POST /echo hello");
    assert_eq!(r[3].1, "upstream saw GET /plain?x=1 ");
    assert_eq!(header_of(&r[4].0, "content-length").as_deref(), Some("7"));
    let seen: Vec<String> = up.http_requests()[before..]
        .iter()
        .map(|r| format!("{} {}", r.method, r.target))
        .collect();
    assert_eq!(seen, ["POST /echo", "GET /plain?x=1"]);

    // A held poll on each path is answered by the same publish.
    let inm = format!("If-None-Match: {etag}\r\n");
    let fast = hold(&gw, "/api/prices/btc", &inm);
    gw.wait_metric(HELD, |v| v == 1.0).await;
    gw.set_fast_paths(false).await;
    let full = hold(&gw, "/api/prices/btc", &inm);
    gw.wait_metric(HELD, |v| v == 2.0).await;
    up.publish("/ws/prices/btc", r#"{"p":2}"#);
    let mut heads = Vec::new();
    for h in [fast, full] {
        let (head, body) = split_response(&h.await.unwrap());
        assert_eq!(status_of(&head), 200, "{head}");
        assert_eq!(body, r#"{"p":2}"#);
        heads.push(comparable(&head));
    }
    assert_eq!(heads[0], heads[1]);
}

#[tokio::test]
async fn cursor_polls_answer_alike_on_both_paths() {
    let up = Upstream::start().await;
    up.publish("/ws/news/n", "0");
    let gw = Gateway::start(&config(&up, &since())).await;
    let first = get(&gw, "/api/news/n", &[]).await;
    assert_eq!(first.body, "[0]", "{}", first.head);
    for i in 1..=3 {
        up.publish_live("/ws/news/n", &format!("{{\"n\":{i}}}"));
    }
    gw.wait_metric(r#"pollgate_upstream_messages_total{route="news"}"#, |v| {
        v >= 4.0
    })
    .await;
    let all = get(&gw, "/api/news/n", &[]).await;
    let newest = all.header("pollgate-cursor").unwrap();
    let middle = (newest.parse::<u64>().unwrap() - 2).to_string();
    let cases = [
        ("GET", "/api/news/n".to_string(), String::new()),
        ("GET", format!("/api/news/n?since={middle}"), String::new()),
        (
            "GET",
            format!("/api/news/n?x=1&since={newest}"),
            "Prefer: wait=0\r\n".to_string(),
        ),
        (
            "GET",
            "/api/news/n".to_string(),
            format!("If-None-Match: \"{middle}\"\r\n"),
        ),
        ("GET", "/api/news/n?since=nope".to_string(), String::new()),
    ];
    let answers = on_both_paths(&gw, &cases).await;
    let statuses: Vec<u16> = answers.iter().map(|(f, _)| f.0).collect();
    assert_eq!(statuses, [200, 200, 200, 200, 400]);
    assert_eq!(answers[1].0 .2, r#"[{"n":2},{"n":3}]"#);
    assert!(
        answers[1].0 .3.contains("\r\nPollgate-Cursor: "),
        "{}",
        answers[1].0 .3
    );

    // A held cursor poll on each path is answered by the same publish, with the same array.
    let fast = hold(&gw, &format!("/api/news/n?since={newest}"), "");
    gw.wait_metric(r#"pollgate_long_polls_held{route="news"}"#, |v| v == 1.0)
        .await;
    gw.set_fast_paths(false).await;
    let full = hold(&gw, &format!("/api/news/n?since={newest}"), "");
    gw.wait_metric(r#"pollgate_long_polls_held{route="news"}"#, |v| v == 2.0)
        .await;
    up.publish_live("/ws/news/n", r#"{"n":4}"#);
    let mut bodies = Vec::new();
    for h in [fast, full] {
        let (head, body) = split_response(&h.await.unwrap());
        assert_eq!(status_of(&head), 200, "{head}");
        bodies.push(body);
    }
    assert_eq!(bodies, [r#"[{"n":4}]"#, r#"[{"n":4}]"#]);
    let m = gw.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            r#"pollgate_poll_requests_total{outcome="held_served",route="news"}"#
        ),
        2.0
    );
}

/// A fan-out's ledger of answers due (`cache/due.rs`) settles whatever its clients do next, and
/// each next step is served: a client that leaves gets its connection closed, one that polls
/// again on the same connection is held again and answered by the next publish. A publish that
/// is no news to the held polls (the same payload) wakes them without leaving answers due.
#[tokio::test]
async fn a_fan_out_settles_and_then_serves_each_clients_next_step() {
    use tokio::io::AsyncWriteExt;
    let up = Upstream::start().await;
    up.publish("/ws/prices/f", "v1");
    let gw = Gateway::start(&config(&up, &latest_long())).await;
    let due = "pollgate_fanout_answers_due";
    let received = r#"pollgate_upstream_messages_total{route="prices"}"#;
    let etag = get(&gw, "/api/prices/f", &[]).await.header("etag").unwrap();
    let mut socks = hold_polls(&gw, "/api/prices/f", &etag, 30).await;

    let before = gw.metric(received).await;
    up.publish("/ws/prices/f", "v1");
    gw.wait_metric(received, |v| v > before).await;
    gw.wait_metric(due, |v| v == 0.0).await;
    assert_eq!(gw.metric(HELD).await, 30.0, "{}", gw.log());

    up.publish("/ws/prices/f", "v2");
    let mut next_etag = String::new();
    for s in socks.iter_mut() {
        let mut r = Reader::new(&mut *s).with_limit(Duration::from_secs(10));
        let a = r.answer(false).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (a.status, a.text().as_str()),
            (200, "v2"),
            "{}",
            r.received()
        );
        next_etag = a.header("etag").expect("an ETag");
    }
    gw.wait_metric(due, |v| v == 0.0).await;

    // Ten leave (half-close: the gateway must close its side), ten poll again at once.
    for s in &mut socks[..10] {
        s.shutdown().await.unwrap();
        let rest = Reader::new(&mut *s)
            .with_limit(Duration::from_secs(10))
            .closed()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    }
    let again =
        format!("GET /api/prices/f HTTP/1.1\r\nHost: t\r\nIf-None-Match: {next_etag}\r\n\r\n");
    for s in &mut socks[10..20] {
        s.write_all(again.as_bytes()).await.unwrap();
    }
    gw.wait_metric(HELD, |v| v == 10.0).await;
    up.publish("/ws/prices/f", "v3");
    for s in &mut socks[10..20] {
        let mut r = Reader::new(&mut *s).with_limit(Duration::from_secs(10));
        let a = r.answer(false).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (a.status, a.text().as_str()),
            (200, "v3"),
            "{}",
            r.received()
        );
    }
    gw.wait_metric(due, |v| v == 0.0).await;
    gw.wait_metric(HELD, |v| v == 0.0).await;
}
