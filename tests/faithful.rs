//! Faithful to the backend: what real clients see through the gateway is the backend's answer,
//! fresher and cheaper, never worse. Holds only when a client asked for one (`hold_on`); cursor
//! answers never replayed for another cursor; `response_headers`; `Date` the message's
//! arrival; CORS configured in YAML; fallbacks collapsed into one backend request.

mod common;

use common::wire::exchange;
use common::*;
use std::time::{Duration, Instant, SystemTime};

fn config(up: &Upstream, top: &str, routes: &str) -> String {
    format!(
        r#"{HEAD}{top}upstreams:
  backend:
    address: "{}"
    read_timeout: 5s
routes:
{routes}
  - name: default
    prefix: "/"
    upstream: backend
"#,
        up.addr
    )
}

fn latest(extra: &str) -> String {
    format!(
        r#"  - name: prices
    path: "/api/prices/{{topic}}"
    upstream: backend
    access: public
    subscribe:
      path: "/ws/prices/{{topic}}"
    mode: latest
    long_poll: 20s
    first_message_wait: 2s
{extra}"#
    )
}

fn since(extra: &str) -> String {
    format!(
        r#"  - name: news
    path: "/api/news/{{topic}}"
    upstream: backend
    access: public
    subscribe:
      path: "/ws/news/{{topic}}"
    mode: since
    long_poll: 20s
    first_message_wait: 2s
{extra}"#
    )
}

fn get(path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.into_bytes()
}

async fn ask(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> common::wire::Answer {
    exchange(gw.addr, &get(path, headers))
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// Asks and measures how long the answer took.
async fn timed(
    gw: &Gateway,
    path: &str,
    headers: &[(&str, &str)],
) -> (common::wire::Answer, Duration) {
    let t = Instant::now();
    let a = ask(gw, path, headers).await;
    (a, t.elapsed())
}

#[tokio::test]
async fn a_poll_is_held_only_when_it_asked_for_a_hold() {
    let up = Upstream::start().await;
    up.publish("/ws/prices/q", r#"{"p":1}"#);
    let routes = format!(
        "{}{}",
        latest(""),
        latest("    hold_on: [if-none-match, \"query:wait\"]\n")
            .replace("name: prices", "name: legacy")
            .replace("/api/prices/", "/legacy/prices/")
    );
    let gw = Gateway::start(&config(&up, "", &routes)).await;
    let first = ask(&gw, "/api/prices/q", &[]).await;
    assert_eq!(first.status, 200, "{}", first.head);
    let etag = first.header("etag").unwrap();

    // What a browser's cache sends when it revalidates: answered at once, 304.
    let (a, took) = timed(&gw, "/api/prices/q", &[("If-None-Match", &etag)]).await;
    assert_eq!(a.status, 304, "{}", a.head);
    assert!(
        took < Duration::from_secs(3),
        "held {took:?} without asking"
    );
    assert!(a.header("preference-applied").is_none(), "{}", a.head);

    // A poll that asks with `Prefer: wait=1` is held (and told so).
    let (a, took) = timed(
        &gw,
        "/api/prices/q",
        &[("If-None-Match", &etag), ("Prefer", "wait=1")],
    )
    .await;
    assert_eq!(a.status, 304, "{}", a.head);
    assert!(took >= Duration::from_millis(900), "not held: {took:?}");
    assert_eq!(a.header("preference-applied").as_deref(), Some("wait=1"));

    // A route whose legacy clients long-poll with If-None-Match alone opts in; a named query
    // parameter asks for a hold too. Both are answered by the next message.
    for path in ["/legacy/prices/q", "/legacy/prices/q?wait=1"] {
        let etag = ask(&gw, "/legacy/prices/q", &[])
            .await
            .header("etag")
            .unwrap();
        let addr = gw.addr;
        let req = get(path, &[("If-None-Match", etag.as_str())]);
        let held = tokio::spawn(async move { exchange(addr, &req).await });
        gw.wait_metric(r#"pollgate_long_polls_held{route="legacy"}"#, |v| v == 1.0)
            .await;
        up.publish("/ws/prices/q", &format!(r#"{{"p":"{path}"}}"#));
        let a = held.await.unwrap().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.status, 200, "{}", a.head);
        assert_eq!(a.text(), format!(r#"{{"p":"{path}"}}"#));
        gw.wait_metric(r#"pollgate_long_polls_held{route="legacy"}"#, |v| v == 0.0)
            .await;
    }
    // `query:wait` alone (no If-None-Match) also holds on that route... until news.
    let addr = gw.addr;
    let req = get("/legacy/prices/q?wait=1", &[("If-None-Match", "\"nope\"")]);
    let a = exchange(addr, &req).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        a.status, 200,
        "a changed ETag is answered at once: {}",
        a.head
    );
}

#[tokio::test]
async fn cursor_answers_are_never_stored_and_a_load_without_cursor_gets_the_history() {
    let up = Upstream::start().await;
    up.publish("/ws/news/n", "0");
    let gw = Gateway::start(&config(&up, "", &since(""))).await;
    let first = ask(&gw, "/api/news/n", &[]).await;
    assert_eq!(first.text(), "[0]", "{}", first.head);
    assert_eq!(first.header("cache-control").as_deref(), Some("no-store"));
    for i in 1..=2 {
        up.publish_live("/ws/news/n", &i.to_string());
    }
    gw.wait_metric(r#"pollgate_upstream_messages_total{route="news"}"#, |v| {
        v >= 3.0
    })
    .await;
    // A reload without a cursor: the whole history, at once (no hold: no cursor was given).
    let (a, took) = timed(&gw, "/api/news/n", &[]).await;
    assert_eq!(a.text(), "[0,1,2]", "{}", a.head);
    assert!(took < Duration::from_secs(3), "{took:?}");
    // A cursor at the newest message asks for a hold (`cursor` is in the default `hold_on`).
    let cursor = a.header("pollgate-cursor").unwrap();
    let (a, took) = timed(
        &gw,
        &format!("/api/news/n?since={cursor}"),
        &[("Prefer", "wait=1")],
    )
    .await;
    assert_eq!(a.text(), "[]", "{}", a.head);
    assert!(took >= Duration::from_millis(900), "{took:?}");
    assert_eq!(a.header("cache-control").as_deref(), Some("no-store"));
}

#[tokio::test]
async fn response_headers_and_the_arrival_date_are_on_every_cache_answer() {
    let up = Upstream::start().await;
    up.publish("/ws/prices/d", r#"{"p":1}"#);
    let extra = "    response_headers:\n      X-Legacy-Api: \"v1\"\n      X-Frame-Options: DENY\n";
    let gw = Gateway::start(&config(&up, "", &latest(extra))).await;
    let a = ask(&gw, "/api/prices/d", &[]).await;
    assert_eq!(a.status, 200, "{}", a.head);
    assert_eq!(
        a.header("x-legacy-api").as_deref(),
        Some("v1"),
        "{}",
        a.head
    );
    assert_eq!(a.header("x-frame-options").as_deref(), Some("DENY"));
    let date = a.header("date").unwrap();
    let not_modified = ask(
        &gw,
        "/api/prices/d",
        &[("If-None-Match", &a.header("etag").unwrap())],
    )
    .await;
    assert_eq!(not_modified.status, 304);
    assert_eq!(not_modified.header("x-legacy-api").as_deref(), Some("v1"));
    // Errors are the gateway's own: no backend headers on them.
    let bad = ask(&gw, "/api/prices/%2e%2e", &[]).await;
    assert_eq!(bad.status, 400);
    assert!(bad.header("x-legacy-api").is_none(), "{}", bad.head);

    // While the message ages, `Date` stays its arrival and `Age` grows: Date + Age is now.
    let deadline = Instant::now() + Duration::from_secs(10);
    let later = loop {
        let later = ask(&gw, "/api/prices/d", &[]).await;
        let age: u64 = later.header("age").unwrap().parse().unwrap();
        if age >= 2 {
            break later;
        }
        assert!(
            Instant::now() < deadline,
            "Age never reached 2: {}",
            later.head
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(later.header("date").unwrap(), date, "{}", later.head);
    let age: u64 = later.header("age").unwrap().parse().unwrap();
    let parsed = httpdate(&date);
    let now = SystemTime::now();
    let sum = parsed + Duration::from_secs(age);
    let skew = now.duration_since(sum).unwrap_or_else(|e| e.duration());
    assert!(
        skew <= Duration::from_secs(2),
        "Date {date} + Age {age} is {skew:?} from now"
    );
}

/// Parses an IMF-fixdate (`Mon, 30 Nov 2026 12:00:00 GMT`).
fn httpdate(s: &str) -> SystemTime {
    let parts: Vec<&str> = s.split_whitespace().collect();
    let day: u64 = parts[1].parse().unwrap();
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| *m == parts[2])
    .unwrap() as u64
        + 1;
    let year: u64 = parts[3].parse().unwrap();
    let hms: Vec<u64> = parts[4].split(':').map(|x| x.parse().unwrap()).collect();
    // Days from 1970-01-01 (civil calendar).
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    SystemTime::UNIX_EPOCH
        + Duration::from_secs(days * 86400 + hms[0] * 3600 + hms[1] * 60 + hms[2])
}

#[tokio::test]
async fn cors_configured_in_yaml_answers_preflights_and_refuses_other_origins() {
    let up = Upstream::start().await;
    up.publish("/ws/prices/c", r#"{"p":1}"#);
    up.on_http(|r| {
        let mut reply = Reply::ok(&format!("backend {}", r.target));
        reply.headers.push((
            "access-control-allow-origin".into(),
            "https://backend-choice.example".into(),
        ));
        reply
    });
    let top = "cors:\n  allow_origins: [\"https://app.example\"]\n  allow_credentials: true\n  max_age: 1m\n";
    let routes = format!(
        "{}  - name: api\n    prefix: \"/api/open/\"\n    upstream: backend\n    cors:\n      allow_origins: \"*\"\n",
        latest("")
    );
    let gw = Gateway::start(&config(&up, top, &routes)).await;
    let app = [("Origin", "https://app.example")];

    // The preflight a cross-origin `Prefer` poll triggers is answered by the gateway.
    let pre = exchange(
        gw.addr,
        b"OPTIONS /api/prices/c HTTP/1.1\r\nHost: gw.test\r\nOrigin: https://app.example\r\n\
          Access-Control-Request-Method: GET\r\nAccess-Control-Request-Headers: prefer, if-none-match\r\n\
          Connection: close\r\n\r\n",
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(pre.status, 204, "{}", pre.head);
    assert_eq!(
        pre.header("access-control-allow-origin").as_deref(),
        Some("https://app.example")
    );
    assert_eq!(
        pre.header("access-control-allow-credentials").as_deref(),
        Some("true")
    );
    assert_eq!(pre.header("access-control-max-age").as_deref(), Some("60"));
    let allowed = pre.header("access-control-allow-headers").unwrap();
    for h in ["prefer", "if-none-match", "last-event-id", "authorization"] {
        assert!(allowed.contains(h), "{h} not allowed: {allowed}");
    }
    assert_eq!(pre.header("vary").as_deref(), Some("Origin"));
    let before = up.http_requests().len();

    // An allowed origin reads the cache answer and its validators.
    let a = ask(&gw, "/api/prices/c", &app).await;
    assert_eq!(a.status, 200, "{}", a.head);
    assert_eq!(
        a.header("access-control-allow-origin").as_deref(),
        Some("https://app.example")
    );
    let exposed = a.header("access-control-expose-headers").unwrap();
    for h in ["ETag", "Age", "Pollgate-Cursor", "Pollgate-Gap"] {
        assert!(exposed.contains(h), "{h} not exposed: {exposed}");
    }
    assert_eq!(a.header("vary").as_deref(), Some("Origin"));

    // Another origin gets nothing of the route: 403, no data, no CORS grant.
    let evil = ask(&gw, "/api/prices/c", &[("Origin", "https://evil.example")]).await;
    assert_eq!(evil.status, 403, "{}", evil.head);
    assert!(!evil.text().contains("\"p\""), "{}", evil.text());
    assert!(
        evil.header("access-control-allow-origin").is_none(),
        "{}",
        evil.head
    );
    let pre = exchange(
        gw.addr,
        b"OPTIONS /api/prices/c HTTP/1.1\r\nHost: gw.test\r\nOrigin: https://evil.example\r\n\
          Access-Control-Request-Method: GET\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(pre.status, 403, "{}", pre.head);

    // No Origin (same origin, or not a browser): served, and caches told it varies.
    let plain = ask(&gw, "/api/prices/c", &[]).await;
    assert_eq!(plain.status, 200);
    assert!(plain.header("access-control-allow-origin").is_none());
    assert_eq!(plain.header("vary").as_deref(), Some("Origin"));
    // The gateway's own origin is never refused.
    let own = ask(&gw, "/api/prices/c", &[("Origin", "http://gw.test")]).await;
    assert_eq!(own.status, 200, "{}", own.head);

    // A proxy route without `cors` passes the backend's own CORS answer through unchanged.
    let passed = ask(&gw, "/other", &app).await;
    assert_eq!(
        passed.header("access-control-allow-origin").as_deref(),
        Some("https://backend-choice.example"),
        "{}",
        passed.head
    );
    // A proxy route with `cors` replaces it; `"*"` needs no Vary.
    let open = ask(&gw, "/api/open/x", &[("Origin", "https://anyone.example")]).await;
    assert_eq!(
        open.header("access-control-allow-origin").as_deref(),
        Some("*"),
        "{}",
        open.head
    );
    assert_eq!(
        open.headers("access-control-allow-origin").len(),
        1,
        "{}",
        open.head
    );
    assert!(open.header("vary").is_none(), "{}", open.head);
    // Preflights of cors routes never reached the backend; the two proxied GETs did.
    let seen: Vec<String> = up.http_requests()[before..]
        .iter()
        .map(|r| r.target.clone())
        .collect();
    assert_eq!(seen, ["/other", "/api/open/x"]);
}

#[tokio::test]
async fn concurrent_fallbacks_of_a_cold_topic_share_one_backend_request() {
    let up = Upstream::start().await;
    up.refuse_ws("/ws/prices/cold");
    up.on_http(|r| {
        let mut reply = Reply::ok(&format!("legacy {}", r.target));
        reply.headers.push(("etag".into(), "\"legacy-1\"".into()));
        // Slow enough that every poll below arrives while the first request is out.
        reply.delay = Duration::from_millis(500);
        reply
    });
    let gw = Gateway::start(&config(
        &up,
        "",
        &latest("").replace("first_message_wait: 2s", "first_message_wait: 200ms"),
    ))
    .await;
    let mut polls = Vec::new();
    for i in 0..200 {
        let addr = gw.addr;
        let req = if i % 10 == 0 {
            get("/api/prices/cold", &[("If-None-Match", "\"legacy-1\"")])
        } else {
            get("/api/prices/cold", &[])
        };
        polls.push(tokio::spawn(async move { (i, exchange(addr, &req).await) }));
    }
    for p in polls {
        let (i, a) = p.await.unwrap();
        let a = a.unwrap_or_else(|e| panic!("poll {i}: {e}"));
        if i % 10 == 0 {
            assert_eq!(a.status, 304, "poll {i}: {}", a.head);
            assert_eq!(a.header("etag").as_deref(), Some("\"legacy-1\""));
        } else {
            assert_eq!(a.status, 200, "poll {i}: {}", a.head);
            assert_eq!(a.text(), "legacy /api/prices/cold");
        }
    }
    let asked = up.http_requests().len();
    assert!(
        (1..=2).contains(&asked),
        "the backend was asked {asked} times"
    );
    let m = gw.metrics().await;
    let requests = metric_value(&m, r#"pollgate_fallback_requests_total{route="prices"}"#);
    let collapsed = metric_value(&m, r#"pollgate_fallback_collapsed_total{route="prices"}"#);
    assert_eq!(requests, asked as f64, "{m}");
    assert_eq!(requests + collapsed, 200.0, "{m}");
    // The shared request carried no poller's own conditionals.
    assert!(up
        .http_requests()
        .iter()
        .all(|r| r.header("if-none-match").is_none()));
}

#[tokio::test]
async fn a_fallback_with_the_backend_down_too_is_a_retryable_503() {
    let up = Upstream::start().await;
    up.refuse_ws("/ws/prices/gone");
    let addr = up.addr;
    let gw = Gateway::start(&config(
        &up,
        "",
        &latest("").replace("first_message_wait: 2s", "first_message_wait: 200ms"),
    ))
    .await;
    drop(up);
    // Nothing listens on the backend's port any more.
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "the backend port still accepts");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let a = ask(&gw, "/api/prices/gone", &[]).await;
    assert_eq!(a.status, 503, "{}", a.head);
    assert_eq!(a.header("retry-after").as_deref(), Some("1"));
    assert!(a.text().contains("service_unavailable"), "{}", a.text());
}
