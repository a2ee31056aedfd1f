//! Shadow verification (`shadow` on a poll route): sampled polls are also sent to the backend's
//! own poll endpoint, off the client's path, and its answer is compared with the cache's. The
//! in-test backend answers its legacy HTTP endpoint (`on_http`) independently of what it
//! publishes on its WebSocket feed (`publish`), so agreement and disagreement are both staged.

mod common;

use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

fn config(up: &Upstream, upstream_extra: &str, shadow: &str) -> String {
    format!(
        r#"{HEAD}upstreams:
  backend:
    address: "{}"
    read_timeout: 5s
{upstream_extra}routes:
  - name: prices
    path: "/api/prices/{{topic}}"
    upstream: backend
    access: public
    subscribe:
      path: "/ws/prices/{{topic}}"
    mode: latest
    content_type: application/json
    first_message_wait: 2s
    shadow:
{shadow}  - name: default
    prefix: "/"
    upstream: backend
"#,
        up.addr
    )
}

/// A JSON answer of the backend's legacy endpoint.
fn json_reply(status: u16, body: &str, cache_control: &str) -> Reply {
    Reply {
        status,
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("cache-control".into(), cache_control.into()),
        ],
        body: body.as_bytes().to_vec(),
        delay: Duration::ZERO,
        chunked: false,
    }
}

fn series(result: &str) -> String {
    format!(r#"pollgate_shadow_comparisons_total{{result="{result}",route="prices"}}"#)
}

/// The `shadow` section of route `prices` on `/topics`.
async fn shadow_report(gw: &Gateway) -> Value {
    let (status, body) = raw_get(gw.admin, "/topics").await.unwrap();
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let route = v["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == "prices")
        .unwrap_or_else(|| panic!("no route prices in {v}"))
        .clone();
    route["shadow"].clone()
}

/// Waits (bounded) until every comparison spawned so far is done; returns the report.
async fn settled(gw: &Gateway) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = shadow_report(gw).await;
        if s["in_flight"] == 0 {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "comparisons still in flight: {s}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A poll answered 200 with `body`, read by its framing.
async fn poll_ok(gw: &Gateway, path: &str, body: &str) -> Resp {
    let r = get_with(gw.addr, path, &[]).await;
    assert_eq!(r.status, 200, "{path}: {}\n{}", r.head, r.body);
    assert_eq!(r.body, body, "{path}: {}", r.head);
    r
}

fn mismatch_of<'a>(s: &'a Value, topic: &str) -> &'a Value {
    s["mismatches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["topic"] == topic)
        .unwrap_or_else(|| panic!("no mismatch recorded for {topic}: {s}"))
}

#[tokio::test]
async fn agreeing_topics_match_and_differing_ones_are_recorded_with_a_diff() {
    let up = Upstream::start().await;
    up.publish("/ws/prices/btc", r#"{"price":101,"ccy":"usd"}"#);
    up.publish("/ws/prices/eth", r#"{"price":7,"ccy":"usd"}"#);
    up.publish("/ws/prices/txt", "hello world");
    up.publish("/ws/prices/gone", r#"{"v":1}"#);
    up.on_http(|r| match r.target.as_str() {
        "/api/prices/btc" => json_reply(200, r#"{"price":101,"ccy":"usd"}"#, "no-cache"),
        "/api/prices/eth" => json_reply(200, r#"{"price":8,"ccy":"usd"}"#, "max-age=5"),
        "/api/prices/txt" => json_reply(200, "hello there", "no-cache"),
        "/api/prices/gone" => json_reply(404, r#"{"v":1}"#, "no-cache"),
        _ => json_reply(500, r#"{"error":"unexpected request"}"#, "no-store"),
    });
    let gw = Gateway::start(&config(
        &up,
        "",
        "      sample: 1.0\n      headers: [Cache-Control]\n",
    ))
    .await;

    poll_ok(&gw, "/api/prices/btc", r#"{"price":101,"ccy":"usd"}"#).await;
    gw.wait_metric(&series("match"), |v| v == 1.0).await;
    for (topic, body) in [
        ("eth", r#"{"price":7,"ccy":"usd"}"#),
        ("txt", "hello world"),
        ("gone", r#"{"v":1}"#),
    ] {
        poll_ok(&gw, &format!("/api/prices/{topic}"), body).await;
    }
    let s = settled(&gw).await;
    assert_eq!(gw.metric(&series("match")).await, 1.0, "{s}");
    assert_eq!(gw.metric(&series("mismatch")).await, 3.0, "{s}");
    assert_eq!(gw.metric(&series("error")).await, 0.0, "{s}");
    assert_eq!(
        (&s["match"], &s["mismatch"], &s["error"]),
        (&1.into(), &3.into(), &0.into()),
        "{s}"
    );
    assert_eq!(s["serve"], "cache", "{s}");
    assert_eq!(s["headers"], serde_json::json!(["cache-control"]), "{s}");

    // JSON: the pointer that differs, with both values; the named header, with both values.
    let eth = mismatch_of(&s, "eth");
    assert_eq!(eth["target"], "/api/prices/eth", "{eth}");
    assert_eq!(
        (&eth["cache_status"], &eth["backend_status"]),
        (&200.into(), &200.into()),
        "{eth}"
    );
    let diffs = eth["differences"].as_array().unwrap();
    assert!(
        diffs.contains(&serde_json::json!({
            "what": "header", "name": "cache-control", "cache": "no-cache", "backend": "max-age=5"
        })),
        "{eth}"
    );
    assert!(
        diffs.contains(&serde_json::json!({
            "what": "json", "pointer": "/price", "cache": "7", "backend": "8"
        })),
        "{eth}"
    );
    assert_eq!(diffs.len(), 2, "only what differs: {eth}");
    assert!(
        eth["time"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{eth}"
    );

    // Text: the first differing byte, with an excerpt of each side.
    let txt = mismatch_of(&s, "txt");
    let d = &txt["differences"][0];
    assert_eq!(
        (&d["what"], &d["offset"], &d["cache"], &d["backend"]),
        (
            &"text".into(),
            &6.into(),
            &"hello world".into(),
            &"hello there".into()
        ),
        "{txt}"
    );

    // Status.
    let gone = mismatch_of(&s, "gone");
    assert_eq!(gone["backend_status"], 404, "{gone}");
    assert_eq!(
        gone["differences"][0],
        serde_json::json!({"what": "status", "cache": 200, "backend": 404}),
        "{gone}"
    );
    assert_eq!(
        gone["differences"].as_array().unwrap().len(),
        1,
        "same body: {gone}"
    );

    // Newest first; the agreeing topic is not in the list.
    let topics: Vec<&str> = s["mismatches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["topic"].as_str().unwrap())
        .collect();
    assert_eq!(topics.len(), 3, "{s}");
    assert!(!topics.contains(&"btc"), "{s}");

    // The backend was asked the poll's GET on its own endpoint.
    let asked: Vec<String> = up
        .http_requests()
        .iter()
        .map(|r| r.target.clone())
        .collect();
    for t in ["btc", "eth", "txt", "gone"] {
        assert!(
            asked.contains(&format!("/api/prices/{t}")),
            "{t} not asked: {asked:?}"
        );
    }
}

#[tokio::test]
async fn json_key_order_and_whitespace_are_not_differences() {
    let up = Upstream::start().await;
    up.publish(
        "/ws/prices/btc",
        r#"{"price":101,"book":{"bid":[1,2],"ask":null},"ccy":"usd"}"#,
    );
    up.on_http(|_| {
        json_reply(
            200,
            "{\n  \"ccy\": \"usd\",\n  \"book\": { \"ask\": null, \"bid\": [ 1, 2 ] },\n  \"price\": 101\n}\n",
            "no-cache",
        )
    });
    let gw = Gateway::start(&config(&up, "", "      sample: 1.0\n")).await;
    for _ in 0..3 {
        poll_ok(
            &gw,
            "/api/prices/btc",
            r#"{"price":101,"book":{"bid":[1,2],"ask":null},"ccy":"usd"}"#,
        )
        .await;
    }
    let s = settled(&gw).await;
    assert_eq!(s["match"], 3, "{s}");
    assert_eq!(s["mismatch"], 0, "{s}");
    assert_eq!(gw.metric(&series("match")).await, 3.0, "{s}");
    assert_eq!(gw.metric(&series("mismatch")).await, 0.0, "{s}");
}

#[tokio::test]
async fn an_unreachable_or_timed_out_backend_counts_error() {
    let up = Upstream::start().await;
    up.publish("/ws/prices/btc", r#"{"price":101}"#);
    up.publish("/ws/prices/slow", r#"{"price":1}"#);
    up.on_http(|r| {
        let mut reply = json_reply(200, r#"{"price":101}"#, "no-cache");
        if r.target == "/api/prices/slow" {
            reply.delay = Duration::from_secs(3);
        }
        reply
    });
    // No pooled connections: once the backend is gone, every shadow request must connect.
    let gw = Gateway::start(&config(&up, "", "      sample: 1.0\n").replace(
        "read_timeout: 5s\n",
        "read_timeout: 1s\n    keepalive: false\n",
    ))
    .await;
    poll_ok(&gw, "/api/prices/btc", r#"{"price":101}"#).await;
    let s = settled(&gw).await;
    assert_eq!((&s["match"], &s["error"]), (&1.into(), &0.into()), "{s}");

    // A backend slower than read_timeout.
    poll_ok(&gw, "/api/prices/slow", r#"{"price":1}"#).await;
    let s = settled(&gw).await;
    assert_eq!(s["error"], 1, "{s}");
    assert_eq!(s["last_error"]["error"], "read_timeout", "{s}");
    assert_eq!(s["last_error"]["topic"], "slow", "{s}");

    // The backend gone: the cache still answers (stale, within max_stale), the comparison
    // cannot be made.
    drop(up);
    let r = get_with(gw.addr, "/api/prices/btc", &[]).await;
    assert_eq!(r.status, 200, "{}\n{}", r.head, r.body);
    assert_eq!(r.body, r#"{"price":101}"#, "{}", r.head);
    let s = settled(&gw).await;
    assert_eq!(s["error"], 2, "{s}");
    assert_eq!(s["last_error"]["error"], "connect_refused", "{s}");
    assert_eq!(s["last_error"]["topic"], "btc", "{s}");
    assert_eq!(s["mismatch"], 0, "an error is not a mismatch: {s}");
    assert_eq!(gw.metric(&series("error")).await, 2.0, "{s}");
    assert_eq!(gw.metric(&series("match")).await, 1.0, "{s}");
}

#[tokio::test]
async fn max_per_second_bounds_the_comparisons() {
    const RATE: f64 = 2.0;
    const POLLS: usize = 40;
    let up = Upstream::start().await;
    up.publish("/ws/prices/btc", r#"{"price":101}"#);
    up.on_http(|_| json_reply(200, r#"{"price":101}"#, "no-cache"));
    let gw = Gateway::start(&config(
        &up,
        "",
        "      sample: 1.0\n      max_per_second: 2\n",
    ))
    .await;
    let start = Instant::now();
    for _ in 0..POLLS {
        poll_ok(&gw, "/api/prices/btc", r#"{"price":101}"#).await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let s = settled(&gw).await;
    let compared = s["match"].as_u64().unwrap()
        + s["mismatch"].as_u64().unwrap()
        + s["error"].as_u64().unwrap()
        + s["skipped"].as_u64().unwrap();
    // A full bucket (one second's worth), then RATE a second; one token of slack for rounding.
    let allowance = RATE + RATE * elapsed + 1.0;
    assert!(
        compared as f64 <= allowance,
        "{compared} comparisons for {POLLS} polls in {elapsed:.2} s (allowance {allowance:.1}): {s}"
    );
    assert!(compared >= RATE as u64, "the first burst is allowed: {s}");
    assert!(
        (compared as usize) < POLLS,
        "the polls came faster than {RATE}/s ({elapsed:.2} s), so some must be left out: {s}"
    );
    assert_eq!(s["match"].as_u64().unwrap(), compared, "{s}");
    assert_eq!(
        up.http_requests().len() as u64,
        compared,
        "one backend request per comparison"
    );
}

#[tokio::test]
async fn serve_backend_answers_from_the_backend_and_still_compares() {
    let up = Upstream::start().await;
    up.publish("/ws/prices/eth", r#"{"price":7}"#);
    up.publish("/ws/prices/btc", r#"{"price":101}"#);
    up.on_http(|r| match r.target.as_str() {
        "/api/prices/eth" => json_reply(200, r#"{"price":8}"#, "no-cache"),
        _ => json_reply(200, r#"{"price":101}"#, "no-cache"),
    });
    let gw = Gateway::start(&config(
        &up,
        "",
        "      sample: 1.0\n      serve: backend\n",
    ))
    .await;

    // The client gets the backend's answer, not the cache's.
    let r = poll_ok(&gw, "/api/prices/eth", r#"{"price":8}"#).await;
    assert_eq!(
        r.header("cache-control").as_deref(),
        Some("no-cache"),
        "{}",
        r.head
    );
    poll_ok(&gw, "/api/prices/btc", r#"{"price":101}"#).await;
    let s = settled(&gw).await;
    assert_eq!(s["serve"], "backend", "{s}");
    assert_eq!((&s["match"], &s["mismatch"]), (&1.into(), &1.into()), "{s}");
    let eth = mismatch_of(&s, "eth");
    assert_eq!(
        eth["differences"][0],
        serde_json::json!({"what": "json", "pointer": "/price", "cache": "7", "backend": "8"}),
        "{eth}"
    );
    // The topics are subscribed all the same: that is what the comparison reads.
    let (_, topics) = raw_get(gw.admin, "/topics").await.unwrap();
    let v: Value = serde_json::from_str(&topics).unwrap();
    let names: Vec<&str> = v["routes"][0]["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["topic"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["btc", "eth"], "{v}");
    // Each poll went to the backend twice: forwarded, and the shadow request.
    let asked = up
        .http_requests()
        .iter()
        .filter(|r| r.target == "/api/prices/eth")
        .count();
    assert_eq!(asked, 2, "{:?}", up.http_requests());
    assert_eq!(
        gw.metric(r#"pollgate_upstream_requests_saved_total{route="prices"}"#)
            .await,
        0.0,
        "nothing was answered from the cache"
    );

    // The same through pingora's proxy.
    gw.set_fast_paths(false).await;
    poll_ok(&gw, "/api/prices/eth", r#"{"price":8}"#).await;
    let s = settled(&gw).await;
    assert_eq!((&s["match"], &s["mismatch"]), (&1.into(), &2.into()), "{s}");
}

#[tokio::test]
async fn a_slow_backend_does_not_delay_the_poll() {
    const BACKEND_DELAY: Duration = Duration::from_secs(3);
    let up = Upstream::start().await;
    up.publish("/ws/prices/btc", r#"{"price":101}"#);
    up.on_http(|_| {
        let mut r = json_reply(200, r#"{"price":101}"#, "no-cache");
        r.delay = BACKEND_DELAY;
        r
    });
    let gw = Gateway::start(&config(&up, "", "      sample: 1.0\n")).await;
    // The first poll subscribes the topic (and starts a comparison of its own).
    poll_ok(&gw, "/api/prices/btc", r#"{"price":101}"#).await;
    up.wait_for("the first shadow request", |u| {
        !u.http_requests().is_empty()
    })
    .await;

    let start = Instant::now();
    poll_ok(&gw, "/api/prices/btc", r#"{"price":101}"#).await;
    let took = start.elapsed();
    // Generous, and still well under the backend's delay.
    assert!(
        took < Duration::from_millis(1500),
        "a cached poll took {took:?} with a {BACKEND_DELAY:?} shadow request"
    );
    // Both comparisons were still waiting on the backend when this answer came (the first
    // one's request reached the backend less than the delay ago).
    let s = shadow_report(&gw).await;
    assert_eq!(s["in_flight"], 2, "{s}");
    assert_eq!(s["match"], 0, "{s}");
    up.wait_for("the second shadow request", |u| {
        u.http_requests().len() >= 2
    })
    .await;
    let s = settled(&gw).await;
    assert_eq!((&s["match"], &s["error"]), (&2.into(), &0.into()), "{s}");
}

#[tokio::test]
async fn a_message_arriving_while_the_backend_answers_is_not_a_mismatch() {
    let up = Upstream::start().await;
    up.publish("/ws/prices/btc", r#"{"v":1}"#);
    // What the legacy endpoint answers, slowly enough for the feed to move meanwhile.
    let answer = std::sync::Arc::new(std::sync::Mutex::new(r#"{"v":2}"#.to_string()));
    let a = answer.clone();
    up.on_http(move |_| {
        let mut r = json_reply(200, &a.lock().unwrap(), "no-cache");
        r.delay = Duration::from_secs(1);
        r
    });
    let gw = Gateway::start(&config(&up, "", "      sample: 1.0\n")).await;

    // The backend already has v2 when the cache still has v1; v2 reaches the cache while the
    // backend answers: the backend agrees with the cache read after its answer.
    poll_ok(&gw, "/api/prices/btc", r#"{"v":1}"#).await;
    up.wait_for("shadow request 1", |u| u.http_requests().len() == 1)
        .await;
    up.publish("/ws/prices/btc", r#"{"v":2}"#);
    let s = settled(&gw).await;
    assert_eq!((&s["match"], &s["mismatch"]), (&1.into(), &0.into()), "{s}");

    // The backend still answers v2 while v3 reaches the cache: it agrees with the cache read
    // before its answer.
    poll_ok(&gw, "/api/prices/btc", r#"{"v":2}"#).await;
    up.wait_for("shadow request 2", |u| u.http_requests().len() == 2)
        .await;
    up.publish("/ws/prices/btc", r#"{"v":3}"#);
    let s = settled(&gw).await;
    assert_eq!((&s["match"], &s["mismatch"]), (&2.into(), &0.into()), "{s}");

    // Agreeing with neither is a mismatch, reported against the newer cache.
    *answer.lock().unwrap() = r#"{"v":9}"#.to_string();
    poll_ok(&gw, "/api/prices/btc", r#"{"v":3}"#).await;
    up.wait_for("shadow request 3", |u| u.http_requests().len() == 3)
        .await;
    up.publish("/ws/prices/btc", r#"{"v":4}"#);
    let s = settled(&gw).await;
    assert_eq!((&s["match"], &s["mismatch"]), (&2.into(), &1.into()), "{s}");
    let m = mismatch_of(&s, "btc");
    assert_eq!(m["cache_changed"], true, "{m}");
    assert_eq!(
        m["differences"][0],
        serde_json::json!({"what": "json", "pointer": "/v", "cache": "4", "backend": "9"}),
        "{m}"
    );
}

#[tokio::test]
async fn switching_serve_by_reload_keeps_the_cache_and_the_record() {
    let up = Upstream::start().await;
    up.publish("/ws/prices/eth", r#"{"price":7}"#);
    up.on_http(|_| json_reply(200, r#"{"price":8}"#, "no-cache"));
    let gw = Gateway::start(&config(
        &up,
        "",
        "      sample: 1.0\n      serve: backend\n",
    ))
    .await;
    poll_ok(&gw, "/api/prices/eth", r#"{"price":8}"#).await;
    let s = settled(&gw).await;
    assert_eq!(s["mismatch"], 1, "{s}");
    assert_eq!(up.ws_connects("/ws/prices/eth"), 1);

    // The rollout's next step: answer from the cache.
    gw.reload_with(|c| c.replace("      serve: backend\n", "      serve: cache\n"))
        .await;
    poll_ok(&gw, "/api/prices/eth", r#"{"price":7}"#).await;
    let s = settled(&gw).await;
    assert_eq!(s["serve"], "cache", "{s}");
    assert_eq!(s["mismatch"], 2, "the record carried on: {s}");
    assert_eq!(s["mismatches"].as_array().unwrap().len(), 2, "{s}");
    assert_eq!(
        up.ws_connects("/ws/prices/eth"),
        1,
        "the subscription (and its cache) was kept"
    );
    assert_eq!(gw.metric(&series("mismatch")).await, 2.0, "{s}");
}
