//! Probes of the client side: requests that pollgate's own connection loop and pingora's proxy
//! must treat the same way, and the rules every client request is held to whichever path
//! answers it (topic names, head deadlines, auth decisions, doubtful heads, HTTP/1.0).
//!
//! Each test collects every violation it finds and fails once, listing them all with the bytes
//! received, so one run shows the whole extent of a hole.

mod common;

use common::raw_upstream::{target_of, RawUpstream, Script};
use common::wire::{Answer, ReadError, Reader};
use common::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn config(up: SocketAddr, head_extra: &str, routes: &str) -> String {
    format!(
        r#"{HEAD}{head_extra}upstreams:
  backend:
    address: "{up}"
    connect_timeout: 1s
    read_timeout: 5s
routes:
{routes}  - name: default
    prefix: "/"
    upstream: backend
"#
    )
}

/// A latest-mode poll route on one socket per topic.
const LATEST: &str = r#"  - name: quotes
    path: "/api/quotes/{topic}"
    upstream: backend
    access: public
    subscribe:
      path: "/ws/prices/{topic}"
    mode: latest
    long_poll: 10s
    first_message_wait: 300ms
"#;

/// A since-mode poll route over one shared socket.
const SHARED_SINCE: &str = r#"  - name: quotes
    path: "/api/quotes/{topic}"
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
    first_message_wait: 300ms
"#;

fn auth_route() -> String {
    LATEST.replace(
        "    access: public\n",
        "    access: { auth_request: /auth/check, cache_for: 30s }\n",
    )
}

/// An answer, or why none could be read, with every byte received: for failure messages.
fn show(got: &Result<Answer, ReadError>) -> String {
    match got {
        Ok(a) => format!("{:?}", String::from_utf8_lossy(&a.raw)),
        Err(e) => format!("no well-formed answer: {e}"),
    }
}

fn first_line(req: &str) -> &str {
    req.lines().next().unwrap_or("")
}

fn fail_all(problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{} violation(s):\n- {}",
        problems.len(),
        problems.join("\n- ")
    );
}

/// Sends `request` on a new connection; reads one final answer within `limit`.
async fn ask(addr: SocketAddr, request: &str, limit: Duration) -> Result<Answer, ReadError> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut r = Reader::new(s).with_limit(limit);
    r.final_answer(request.starts_with("HEAD "))
        .await
        .map(|(_, a)| a)
}

async fn ok_text(addr: SocketAddr, path: &str) -> Answer {
    let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let got = ask(addr, &req, Duration::from_secs(10)).await;
    match got {
        Ok(a) if a.status == 200 => a,
        other => panic!("premise: GET {path} must be 200: {}", show(&other)),
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Topics must never walk onto other backend paths.

/// Topic segments that are, or decode to, dot segments (also behind `/`, `\` or a `;`
/// parameter, as servers such as Tomcat read them).
const DOT_TOPICS: [&str; 9] = [
    "..",
    ".",
    "%2e%2e",
    ".%2E",
    "%2E",
    "..%2F..%2Fadmin%2Fkeys",
    "a%2F..%2Fb",
    "..%5Cadmin",
    "..;x",
];

fn json_400_problem(what: &str, got: &Result<Answer, ReadError>) -> Option<String> {
    match got {
        Ok(a) if a.status == 400 => {
            let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap_or_default();
            (v["error"] != "bad_request")
                .then(|| format!("{what}: 400 without a JSON bad_request body: {}", show(got)))
        }
        _ => Some(format!("{what}: expected 400, got {}", show(got))),
    }
}

/// Polls every dot-segment topic over HTTP/1.1 and HTTP/1.0; what was not a JSON 400.
async fn poll_dot_topics(addr: SocketAddr) -> Vec<String> {
    let mut problems = Vec::new();
    for topic in DOT_TOPICS {
        for req in [
            format!("GET /api/quotes/{topic} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"),
            format!("GET /api/quotes/{topic} HTTP/1.0\r\n\r\n"),
        ] {
            let got = ask(addr, &req, Duration::from_secs(10)).await;
            problems.extend(json_400_problem(first_line(&req), &got));
        }
    }
    problems
}

/// Everything the backend received that is not about the topic `a/b` (raw `a%2Fb`): every
/// request (WebSocket handshakes, fallbacks, auth checks) and every shared-socket frame.
fn backend_saw_other_topics(up: &Upstream) -> Vec<String> {
    let mut problems = Vec::new();
    for r in up.requests() {
        if r.target != "/ws" && !r.target.contains("a%2Fb") {
            problems.push(format!(
                "the backend received {} {} (X-Original-URI {:?})",
                r.method,
                r.target,
                r.header("x-original-uri")
            ));
        }
    }
    for f in up.shared_frames() {
        if !f.contains(r#""topic":"a/b""#) {
            problems.push(format!("the shared socket received {f}"));
        }
    }
    problems
}

async fn topics_cached_is_one(gw: &Gateway) -> Option<String> {
    let n = gw.metric(r#"pollgate_topics_cached{route="quotes"}"#).await;
    (n != 1.0).then(|| format!("{n} topics cached on the route; only `a/b` is a topic"))
}

#[tokio::test]
async fn dot_segment_topics_are_refused_before_subscribing_on_latest_routes() {
    let up = Upstream::start().await;
    up.publish("/ws/prices/a%2Fb", "slash topic");
    let gw = Gateway::start(&config(up.addr, "", LATEST)).await;
    let mut problems = poll_dot_topics(gw.addr).await;
    // An encoded slash without a dot segment is an ordinary topic: one encoded segment upstream.
    let got = ask(
        gw.addr,
        "GET /api/quotes/a%2Fb HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    )
    .await;
    if !matches!(&got, Ok(a) if a.status == 200 && a.text() == "slash topic") {
        problems.push(format!(
            "a%2Fb not served from its subscription: {}",
            show(&got)
        ));
    }
    if up.ws_connects("/ws/prices/a%2Fb") != 1 {
        problems.push(format!(
            "no subscription on /ws/prices/a%2Fb; handshakes: {:?}",
            up.requests().iter().map(|r| &r.target).collect::<Vec<_>>()
        ));
    }
    if up.ws_connects_total() != 1 {
        problems.push(format!(
            "{} WebSocket subscriptions, expected only /ws/prices/a%2Fb",
            up.ws_connects_total()
        ));
    }
    problems.extend(backend_saw_other_topics(&up));
    problems.extend(topics_cached_is_one(&gw).await);
    fail_all(&problems);
}

#[tokio::test]
async fn dot_segment_topics_are_refused_before_subscribing_on_shared_socket_since_routes() {
    let up = Upstream::start().await;
    up.publish_shared("a/b", r#"{"topic":"a/b","id":"s1","data":"slash topic"}"#);
    let gw = Gateway::start(&config(up.addr, "", SHARED_SINCE)).await;
    let mut problems = poll_dot_topics(gw.addr).await;
    let got = ask(
        gw.addr,
        "GET /api/quotes/a%2Fb HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    )
    .await;
    if !matches!(&got, Ok(a) if a.status == 200 && a.text() == r#"["slash topic"]"#) {
        problems.push(format!(
            "a%2Fb not served from the shared socket: {}",
            show(&got)
        ));
    }
    if !up
        .shared_frames()
        .contains(&r#"{"op":"subscribe","topic":"a/b"}"#.to_string())
    {
        problems.push(format!(
            "no subscribe frame for a/b: {:?}",
            up.shared_frames()
        ));
    }
    problems.extend(backend_saw_other_topics(&up));
    problems.extend(topics_cached_is_one(&gw).await);
    fail_all(&problems);
}

#[tokio::test]
async fn dot_segment_topics_are_refused_before_asking_the_auth_service() {
    let up = Upstream::start().await;
    // The auth service allows everyone: only the gateway's own refusal keeps these out.
    up.on_http(|r| {
        if r.target.starts_with("/auth/check") {
            Reply::ok("")
        } else {
            Reply::ok(&format!("upstream saw {} {}", r.method, r.target))
        }
    });
    up.publish("/ws/prices/a%2Fb", "slash topic");
    let gw = Gateway::start(&config(up.addr, "", &auth_route())).await;
    let mut problems = poll_dot_topics(gw.addr).await;
    let got = ask(
        gw.addr,
        "GET /api/quotes/a%2Fb HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    )
    .await;
    if !matches!(&got, Ok(a) if a.status == 200 && a.text() == "slash topic") {
        problems.push(format!(
            "a%2Fb not served after its auth check: {}",
            show(&got)
        ));
    }
    if up.ws_connects("/ws/prices/a%2Fb") != 1 {
        problems.push("no subscription on /ws/prices/a%2Fb".to_string());
    }
    problems.extend(backend_saw_other_topics(&up));
    problems.extend(topics_cached_is_one(&gw).await);
    fail_all(&problems);
}

// ---------------------------------------------------------------------------------------------
// 2. Empty lines never stop the head deadline.

const DEADLINES: &str = "header_read_timeout: 1s\nkeepalive_timeout: 60s\nmax_connections: 8\n";

/// Waits (up to `limit`) for the gateway to close `r`; what arrived before the close, or why
/// it did not close. A `408` before the close is allowed, nothing else.
async fn closed_within(r: &mut Reader<TcpStream>, limit: Duration) -> Result<(), String> {
    let start = Instant::now();
    r.limit = limit;
    let got = r.closed().await;
    let took = start.elapsed();
    match got {
        Err(e) => Err(format!("still open after {took:?}: {e}")),
        Ok(_) if took >= limit => Err(format!("closed only after {took:?}")),
        Ok(b)
            if b.is_empty() || b.starts_with(b"HTTP/1.1 408") || b.starts_with(b"HTTP/1.0 408") =>
        {
            Ok(())
        }
        Ok(b) => Err(format!(
            "answered before closing: {:?}",
            String::from_utf8_lossy(&b)
        )),
    }
}

#[tokio::test]
async fn empty_lines_alone_are_cut_at_the_head_deadline_and_free_their_slots() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&config(up.addr, DEADLINES, "")).await;
    let mut waits = Vec::new();
    for i in 0..8 {
        let addr = gw.addr;
        waits.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"\r\n\r\n").await.unwrap();
            let mut r = Reader::new(s);
            closed_within(&mut r, Duration::from_secs(5))
                .await
                .map_err(|e| format!("socket {i} sent only CRLFs: {e}"))
        }));
    }
    let mut problems = Vec::new();
    for w in waits {
        if let Err(e) = w.await.unwrap() {
            problems.push(e);
        }
    }
    // A slot may be given back a moment after its socket closes: a 503 is retried briefly.
    let retry_until = Instant::now() + Duration::from_secs(2);
    let got = loop {
        let got = ask(
            gw.addr,
            "GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            Duration::from_secs(10),
        )
        .await;
        if matches!(&got, Ok(a) if a.status == 503) && Instant::now() < retry_until {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        break got;
    };
    if !matches!(&got, Ok(a) if a.status == 200 && a.text() == "upstream saw GET /x") {
        problems.push(format!(
            "a new client after the CRLF-only sockets: {}",
            show(&got)
        ));
    }
    fail_all(&problems);
}

#[tokio::test]
async fn a_head_trickled_after_empty_lines_is_cut_at_the_head_deadline() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&config(up.addr, DEADLINES, "")).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let start = Instant::now();
    s.write_all(b"\r\n\r\n").await.unwrap();
    let head = b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n";
    let mut received = Vec::new();
    let mut closed = false;
    let mut head_complete = false;
    for (i, b) in head.iter().enumerate() {
        if s.write_all(&[*b]).await.is_err() {
            closed = true;
            break;
        }
        // The pause between bytes doubles as the wait for the gateway's close.
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await {
            Err(_) => head_complete = i + 1 == head.len(),
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => {
                received.extend_from_slice(&buf[..n]);
                head_complete = i + 1 == head.len();
                // A 408 and the close, or the answer to the completed head: read what follows.
                let mut rest = Vec::new();
                let _ =
                    tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut rest)).await;
                received.extend_from_slice(&rest);
                closed = true;
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&received);
    assert!(
        closed && !head_complete && (received.is_empty() || text.starts_with("HTTP/1.1 408")),
        "the head was not cut at the deadline: after {:?} (header_read_timeout 1s) the head was {} \
         and the connection {}; received {text:?}",
        start.elapsed(),
        if head_complete { "complete" } else { "incomplete" },
        if closed { "closed" } else { "still open" }
    );
    assert!(
        up.http_requests().is_empty(),
        "the trickled request reached the upstream"
    );
}

#[tokio::test]
async fn empty_lines_after_a_keepalive_request_are_cut_at_the_head_deadline() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&config(up.addr, DEADLINES, "")).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut r = Reader::new(s).with_limit(Duration::from_secs(10));
    let a = r.answer(false).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(a.status, 200, "{}", r.received());
    r.stream.write_all(b"\r\n\r\n").await.unwrap();
    if let Err(e) = closed_within(&mut r, Duration::from_secs(5)).await {
        panic!(
            "CRLFs after a keep-alive answer (header_read_timeout 1s, keepalive_timeout 60s): {e}; \
             received on the connection: {:?}",
            r.received()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 3. An auth decision is reused only for identical auth inputs.

#[tokio::test]
async fn auth_decisions_are_not_reused_across_different_query_tokens() {
    let up = Upstream::start().await;
    up.on_http(|r| {
        if r.target.starts_with("/auth/check") {
            let allowed = r
                .header("x-original-uri")
                .is_some_and(|u| u.contains("access_token=good"));
            let mut reply = Reply::ok(if allowed { "" } else { r#"{"error":"denied"}"# });
            if !allowed {
                reply.status = 401;
            }
            return reply;
        }
        Reply::ok("fallback")
    });
    up.publish("/ws/prices/tok", "token payload");
    let gw = Gateway::start(&config(up.addr, "", &auth_route())).await;
    let a = ok_text(gw.addr, "/api/quotes/tok?access_token=good").await;
    assert_eq!(a.text(), "token payload", "premise: served from the cache");
    let got = ask(
        gw.addr,
        "GET /api/quotes/tok HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    )
    .await;
    assert!(
        matches!(&got, Ok(a) if (a.status == 401 || a.status == 403) && !a.text().contains("token payload")),
        "an anonymous poll after an allowed `?access_token=good` poll must get the auth service's \
         denial; got {}",
        show(&got)
    );
}

#[tokio::test]
async fn auth_decisions_are_not_reused_across_client_addresses() {
    let up = Upstream::start().await;
    up.on_http(|r| {
        if r.target.starts_with("/auth/check") {
            let allowed = r.header("x-forwarded-for") == Some("127.0.0.1");
            let mut reply = Reply::ok(if allowed { "" } else { r#"{"error":"denied"}"# });
            if !allowed {
                reply.status = 403;
            }
            return reply;
        }
        Reply::ok("fallback")
    });
    up.publish("/ws/prices/ip", "address payload");
    let gw = Gateway::start(&config(up.addr, "", &auth_route())).await;
    let a = ok_text(gw.addr, "/api/quotes/ip").await;
    assert_eq!(
        a.text(),
        "address payload",
        "premise: served from the cache"
    );
    // Linux routes all of 127/8 to loopback: a second client address on the same machine.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut s = sock.connect(gw.addr).await.unwrap();
    s.write_all(b"GET /api/quotes/ip HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let got = Reader::new(s)
        .with_limit(Duration::from_secs(10))
        .answer(false)
        .await;
    assert!(
        matches!(&got, Ok(a) if (a.status == 401 || a.status == 403) && !a.text().contains("address payload")),
        "a poll from 127.0.0.2 after an allowed poll from 127.0.0.1 must get the auth service's \
         denial; got {}",
        show(&got)
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Both paths agree on doubtful requests.

async fn warm_gateway(up: &Upstream, head_extra: &str) -> Gateway {
    up.publish("/ws/prices/w", "warm");
    let gw = Gateway::start(&config(up.addr, head_extra, LATEST)).await;
    assert_eq!(ok_text(gw.addr, "/api/quotes/w").await.text(), "warm");
    gw
}

#[tokio::test]
async fn userinfo_in_host_is_refused_on_every_path() {
    let up = Upstream::start().await;
    let gw = warm_gateway(&up, "").await;
    let mut problems = Vec::new();
    for req in [
        "GET /x HTTP/1.1\r\nHost: attacker@evil.example\r\n\r\n",
        "GET /api/quotes/w HTTP/1.1\r\nHost: attacker@evil.example\r\n\r\n",
        "GET /x HTTP/1.0\r\nHost: attacker@evil.example\r\n\r\n",
        "GET /api/quotes/w HTTP/1.0\r\nHost: attacker@evil.example\r\n\r\n",
        "POST /x HTTP/1.1\r\nHost: attacker@evil.example\r\nContent-Length: 3\r\n\r\nabc",
    ] {
        let got = ask(gw.addr, req, Duration::from_secs(10)).await;
        if !matches!(&got, Ok(a) if a.status == 400) {
            problems.push(format!(
                "{}: expected 400, got {}",
                first_line(req),
                show(&got)
            ));
        }
    }
    for r in up.http_requests() {
        if r.header("host").is_some_and(|h| h.contains('@'))
            || r.header("x-forwarded-host")
                .is_some_and(|h| h.contains('@'))
        {
            problems.push(format!(
                "the upstream received {} {} with {:?}",
                r.method, r.target, r.headers
            ));
        }
    }
    fail_all(&problems);
}

#[tokio::test]
async fn bare_lf_requests_on_one_connection_are_all_answered() {
    let up = Upstream::start().await;
    let gw = warm_gateway(&up, "header_read_timeout: 1s\n").await;
    let mut problems = Vec::new();
    for (path, body) in [("/x", "upstream saw GET /x"), ("/api/quotes/w", "warm")] {
        let one = format!("GET {path} HTTP/1.1\nHost: t\n\n");
        // Both in one write.
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(format!("{one}{one}").as_bytes()).await.unwrap();
        let mut r = Reader::new(s).with_limit(Duration::from_secs(5));
        for n in 1..=2 {
            match r.answer(false).await {
                Ok(a) if a.status == 200 && a.text() == body => {}
                other => {
                    problems.push(format!(
                        "{path}, two bare-LF requests in one write: answer {n}: {}",
                        show(&other)
                    ));
                    break;
                }
            }
        }
        // The second after the first answer, past header_read_timeout of keep-alive idling
        // (the idle gap is the condition under test, as any keep-alive client may leave it).
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(one.as_bytes()).await.unwrap();
        let mut r = Reader::new(s).with_limit(Duration::from_secs(5));
        match r.answer(false).await {
            Ok(a) if a.status == 200 && a.text() == body => {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                let sent = r.stream.write_all(one.as_bytes()).await;
                match r.answer(false).await {
                    Ok(a) if a.status == 200 && a.text() == body => {}
                    other => problems.push(format!(
                        "{path}, a bare-LF request 1.5 s after the first answer (write {sent:?}): {}",
                        show(&other)
                    )),
                }
            }
            other => problems.push(format!("{path}, one bare-LF request: {}", show(&other))),
        }
    }
    fail_all(&problems);
}

#[tokio::test]
async fn bare_lf_held_polls_are_answered_not_dropped_at_the_head_deadline() {
    let up = Upstream::start().await;
    let gw = warm_gateway(&up, "header_read_timeout: 1s\n").await;
    let etag = ok_text(gw.addr, "/api/quotes/w")
        .await
        .header("etag")
        .expect("an ETag");
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let start = Instant::now();
    s.write_all(
        format!("GET /api/quotes/w HTTP/1.1\nHost: t\nIf-None-Match: {etag}\nPrefer: wait=3\n\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let got = Reader::new(s)
        .with_limit(Duration::from_secs(10))
        .answer(false)
        .await;
    let took = start.elapsed();
    assert!(
        matches!(&got, Ok(a) if a.status == 304)
            && took >= Duration::from_millis(2500)
            && took < Duration::from_secs(8),
        "a held bare-LF poll (Prefer: wait=3, header_read_timeout 1s) must be answered 304 after \
         about 3 s; after {took:?}: {}",
        show(&got)
    );
}

// ---------------------------------------------------------------------------------------------
// 5. HTTP/1.0 without keep-alive is closed after its answer.

#[tokio::test]
async fn http10_without_keepalive_is_closed_right_after_its_answer() {
    let up = Upstream::start().await;
    let gw = warm_gateway(&up, "keepalive_timeout: 60s\n").await;
    let mut problems = Vec::new();
    for (path, body) in [("/api/quotes/w", "warm"), ("/x", "upstream saw GET /x")] {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut r = Reader::new(s).with_limit(Duration::from_secs(10));
        let got = r.answer(false).await;
        match &got {
            Ok(a) if a.status == 200 && a.text() == body => {
                if a.header("connection")
                    .is_some_and(|c| c.to_ascii_lowercase().contains("keep-alive"))
                {
                    problems.push(format!(
                        "GET {path} HTTP/1.0: the answer says keep-alive: {}",
                        show(&got)
                    ));
                }
                r.limit = Duration::from_secs(3);
                if let Err(e) = r.closed().await {
                    problems.push(format!(
                        "GET {path} HTTP/1.0: not closed within 3 s of its answer \
                         (keepalive_timeout 60s): {e}"
                    ));
                }
            }
            _ => problems.push(format!("GET {path} HTTP/1.0: {}", show(&got))),
        }
    }
    fail_all(&problems);
}

#[tokio::test]
async fn http10_with_keepalive_stays_open_for_a_second_request() {
    let up = Upstream::start().await;
    let gw = warm_gateway(&up, "keepalive_timeout: 60s\n").await;
    let mut problems = Vec::new();
    for (path, body) in [("/api/quotes/w", "warm"), ("/x", "upstream saw GET /x")] {
        let req = format!("GET {path} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        let s = TcpStream::connect(gw.addr).await.unwrap();
        let mut r = Reader::new(s).with_limit(Duration::from_secs(5));
        for n in 1..=2 {
            let sent = r.stream.write_all(req.as_bytes()).await;
            match r.answer(false).await {
                Ok(a) if a.status == 200 && a.text() == body => {}
                other => {
                    problems.push(format!(
                        "GET {path} HTTP/1.0 + keep-alive, request {n} (write {sent:?}): {}",
                        show(&other)
                    ));
                    break;
                }
            }
        }
    }
    fail_all(&problems);
}

/// `ab` (ApacheBench) speaks HTTP/1.0 without keep-alive and reads every answer to the close.
#[tokio::test]
async fn apachebench_completes_every_http10_request() {
    let Some(ab) = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("ab"))
            .find(|f| f.is_file())
    }) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "ab not found: CI must have ApacheBench installed (apt-get install -y apache2-utils)"
        );
        eprintln!("note: ab not found; skipping the ApacheBench test");
        return;
    };
    let up = Upstream::start().await;
    let gw = warm_gateway(&up, "keepalive_timeout: 60s\n").await;
    let mut problems = Vec::new();
    for path in ["/api/quotes/w", "/x"] {
        let mut child = tokio::process::Command::new(&ab)
            .args(["-n", "20", "-c", "2"])
            .arg(gw.url(path))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run ab");
        let mut out = String::new();
        let mut err = String::new();
        let mut stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let run = async {
            let (a, b) = tokio::join!(
                stdout.read_to_string(&mut out),
                stderr.read_to_string(&mut err)
            );
            a.and(b).and(child.wait().await)
        };
        let limit = Duration::from_secs(20);
        let status = tokio::time::timeout(limit, run).await;
        let field = |name: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
        };
        match status {
            Err(_) => problems.push(format!(
                "ab on {path} did not finish within {limit:?}; output so far: {out}{err}"
            )),
            Ok(Err(e)) => problems.push(format!("ab on {path}: {e}")),
            Ok(Ok(s)) => {
                let complete = field("Complete requests:");
                let failed = field("Failed requests:");
                if !s.success()
                    || complete.as_deref() != Some("20")
                    || failed.as_deref() != Some("0")
                {
                    problems.push(format!(
                        "ab on {path}: {s}, complete {complete:?}, failed {failed:?}\n{out}{err}"
                    ));
                }
            }
        }
    }
    fail_all(&problems);
}

#[tokio::test]
async fn an_http10_upstream_answer_reaches_the_client_as_http11() {
    let up = RawUpstream::start(|head| {
        let body = format!("answer to {}", target_of(head));
        Script::AnswerAndClose(
            format!(
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        )
    })
    .await;
    let gw = Gateway::start(&config(up.addr, "", "")).await;
    let mut problems = Vec::new();
    for req in [
        "GET /v10/get HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        "POST /v10/post HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 3\r\n\r\nabc",
    ] {
        let got = ask(gw.addr, req, Duration::from_secs(10)).await;
        let path = first_line(req).split(' ').nth(1).unwrap_or("");
        match &got {
            Ok(a)
                if a.head.starts_with("HTTP/1.1 200 OK")
                    && a.text() == format!("answer to {path}") => {}
            _ => problems.push(format!(
                "{}: expected `HTTP/1.1 200 OK`, got {}",
                first_line(req),
                show(&got)
            )),
        }
    }
    fail_all(&problems);
}
