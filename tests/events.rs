//! EventSource (Server-Sent Events) streams from a poll route's cache: one event per message
//! with its cursor as `id:`, multi-line payloads, resuming from `Last-Event-ID` (and the `gap`
//! event), latest mode, heartbeats, the caps, hang-ups, shutdown, HTTP/1.0, and both request
//! paths (pollgate's connection loop and pingora's proxy with `fast_paths: false`).

mod common;

use common::routes::{behind, poll_route, since};
use common::sse::{request, Event, EventStream, Item, Parser};
use common::*;
use futures_util::StreamExt;
use std::time::Duration;

fn config(up: &Upstream, top: &str, routes: &str) -> String {
    behind(up.addr, top, &[routes])
}

fn latest() -> String {
    poll_route(
        "prices",
        r#"    mode: latest
    first_message_wait: 2s
"#,
    )
}

const ACTIVE: &str = r#"pollgate_sse_streams_active{route="news"}"#;
const EVENTS: &str = r#"pollgate_sse_events_total{route="news"}"#;

/// A since-mode poll of `topic` that subscribes (waiting for the backend's retained message)
/// and gives its newest cursor.
async fn warm(gw: &Gateway, path: &str) -> u64 {
    let r = get_with(gw.addr, path, &[]).await;
    assert_eq!(r.status, 200, "{}\n{}", r.head, r.body);
    r.header("pollgate-cursor")
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no cursor: {}", r.head))
}

/// Waits until the gateway cached `n` messages on `route` (so a publish is in its ring).
async fn cached(gw: &Gateway, route: &str, n: f64) {
    gw.wait_metric(
        &format!(r#"pollgate_upstream_messages_total{{route="{route}"}}"#),
        |v| v >= n,
    )
    .await;
}

fn datas(events: &[Event]) -> Vec<&str> {
    events.iter().map(|e| e.data.as_str()).collect()
}

/// The header lines of a head but `Date`, for comparing the two paths.
fn lines_but_date(head: &str) -> Vec<String> {
    head.lines()
        .filter(|l| !l.to_ascii_lowercase().starts_with("date:"))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn streams_send_each_message_in_order_with_its_cursor_as_id_on_both_paths() {
    let up = Upstream::start().await;
    const WS: &str = "/ws/news/btc";
    up.publish(WS, "m0");
    let gw = Gateway::start(&config(&up, "", &since())).await;
    let c0 = warm(&gw, "/api/news/btc").await;
    let mut heads = Vec::new();
    let mut published = 1;
    for fast in [true, false] {
        gw.set_fast_paths(fast).await;
        let path = if fast { "fast" } else { "pingora" };
        let mut s = EventStream::open(gw.addr, "/api/news/btc", &[]).await;
        assert_eq!(
            s.header("content-type").as_deref(),
            Some("text/event-stream"),
            "{path}: {}",
            s.head
        );
        assert_eq!(s.header("cache-control").as_deref(), Some("no-cache"));
        assert_eq!(s.header("transfer-encoding").as_deref(), Some("chunked"));
        assert_eq!(s.header("content-length"), None, "{path}: {}", s.head);
        // The retry hint first, then the newest message: no Last-Event-ID, no cursor.
        assert_eq!(s.item().await, Some(Item::Retry(3000)), "{}", s.text());
        let first = s.event().await;
        assert_eq!(first.kind, "message");
        let newest = c0 + published - 1;
        assert_eq!(first.id, newest.to_string(), "{path}: {}", s.text());
        gw.wait_metric(ACTIVE, |v| v == 1.0).await;
        for k in 0..5 {
            up.publish(WS, &format!("{path}-{k}"));
        }
        published += 5;
        let events = s.events(5).await;
        let want: Vec<String> = (0..5).map(|k| format!("{path}-{k}")).collect();
        assert_eq!(datas(&events), want, "{path}: {}", s.text());
        for (k, e) in events.iter().enumerate() {
            assert_eq!(e.id, (newest + 1 + k as u64).to_string(), "{}", s.text());
        }
        // The ids are the cursors of cursor polls: a poll after the third gets the last two.
        let r = get_with(
            gw.addr,
            &format!("/api/news/btc?since={}", events[2].id),
            &[],
        )
        .await;
        assert_eq!(
            r.body,
            format!(r#"["{path}-3","{path}-4"]"#),
            "{path}: {}",
            r.head
        );
        heads.push(lines_but_date(&s.head));
        drop(s);
        gw.wait_metric(ACTIVE, |v| v == 0.0).await;
    }
    assert_eq!(heads[0], heads[1], "the two paths' heads differ");
    // Six events a stream, no heartbeat among them (the default is 15 s).
    assert_eq!(gw.metric(EVENTS).await, 12.0);
}

#[tokio::test]
async fn multi_line_payloads_become_several_data_lines() {
    let up = Upstream::start().await;
    const WS: &str = "/ws/prices/lines";
    up.publish(WS, "first");
    let gw = Gateway::start(&config(&up, "", &latest())).await;
    assert_eq!(
        get_with(gw.addr, "/api/prices/lines", &[]).await.status,
        200
    );
    let mut s = EventStream::open(gw.addr, "/api/prices/lines", &[]).await;
    assert_eq!(s.event().await.data, "first");
    let payloads = [
        ("a\nb\nc", "a\nb\nc"),
        ("crlf\r\nline", "crlf\nline"),
        ("lone\rcr", "lone\ncr"),
        ("trailing\n", "trailing\n"),
        ("\n\nblank lines\n\n", "\n\nblank lines\n\n"),
        (" leading space", " leading space"),
        (": not a comment", ": not a comment"),
        ("", ""),
    ];
    for (i, (payload, want)) in payloads.iter().enumerate() {
        up.publish(WS, payload);
        let e = s.event().await;
        assert_eq!(e.data, *want, "payload {i} {payload:?}:\n{}", s.text());
    }
    let text = String::from_utf8_lossy(&s.received).into_owned();
    for lines in [
        "data: a\ndata: b\ndata: c\n\n",
        "data: crlf\ndata: line\n\n",
        "data: lone\ndata: cr\n\n",
        "data: trailing\ndata: \n\n",
        "data: : not a comment\n\n",
    ] {
        assert!(text.contains(lines), "{lines:?} not in:\n{text}");
    }
}

/// An EventSource client on `reqwest`: a GET with `Accept: text/event-stream` and, once it
/// has one, the last event id it got as `Last-Event-ID`, as a browser reconnects.
struct Client {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    parser: Parser,
    raw: Vec<u8>,
    pending: std::collections::VecDeque<Event>,
}

impl Client {
    async fn connect(http: &reqwest::Client, url: &str, last_id: Option<&str>) -> Client {
        let mut req = http.get(url).header("accept", "text/event-stream");
        if let Some(id) = last_id {
            req = req.header("last-event-id", id);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        Client {
            body: Box::pin(resp.bytes_stream()),
            parser: Parser::default(),
            raw: Vec::new(),
            pending: Default::default(),
        }
    }

    async fn next(&mut self, n: usize) -> Vec<Event> {
        while self.pending.len() < n {
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.body.next())
                .await
                .unwrap_or_else(|_| panic!("stuck; received {:?}", self.text()))
                .unwrap_or_else(|| panic!("ended; received {:?}", self.text()))
                .unwrap();
            self.raw.extend_from_slice(&chunk);
            for item in self.parser.feed(&chunk) {
                if let Item::Event(e) = item {
                    self.pending.push_back(e);
                }
            }
        }
        self.pending.drain(..n).collect()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }
}

#[tokio::test]
async fn a_reconnecting_client_resumes_from_last_event_id_without_loss() {
    let up = Upstream::start().await;
    const WS: &str = "/ws/news/eth";
    up.publish(WS, "n0");
    let gw = Gateway::start(&config(&up, "", &since())).await;
    warm(&gw, "/api/news/eth").await;
    let http = client();
    let url = gw.url("/api/news/eth");
    let mut got: Vec<Event> = Vec::new();
    let mut next = 1;
    for round in 0..4 {
        let last_id = got.last().map(|e| e.id.clone());
        let missed = if round == 0 {
            1
        } else {
            // Published while the client is away: the gateway has them before it returns.
            for _ in 0..3 {
                up.publish(WS, &format!("n{next}"));
                next += 1;
            }
            cached(&gw, "news", next as f64).await;
            3
        };
        let mut c = Client::connect(&http, &url, last_id.as_deref()).await;
        got.extend(c.next(missed).await);
        // Then a live one on the same connection: nothing came between.
        up.publish(WS, &format!("n{next}"));
        next += 1;
        got.extend(c.next(1).await);
        drop(c);
        gw.wait_metric(ACTIVE, |v| v == 0.0).await;
    }
    // Every message exactly once, in order, whatever happened while the client was away.
    let want: Vec<String> = (0..next).map(|k| format!("n{k}")).collect();
    assert_eq!(datas(&got), want, "{got:#?}");
    assert!(got.iter().all(|e| e.kind == "message"), "{got:#?}");
    let ids: Vec<u64> = got.iter().map(|e| e.id.parse().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");
}

#[tokio::test]
async fn a_cursor_out_of_history_gets_a_gap_event_then_everything_held() {
    let up = Upstream::start().await;
    let routes = since().replace("history: 100", "history: 3");
    let gw = Gateway::start(&config(&up, "", &routes)).await;
    let mut published = 0.0;
    for fast in [true, false] {
        gw.set_fast_paths(fast).await;
        // A topic of its own per path: h0 to h5, of which the last three are held.
        let ws = format!("/ws/news/sol-{fast}");
        let path = format!("/api/news/sol-{fast}");
        up.publish(&ws, "h0");
        let c0 = warm(&gw, &path).await;
        for k in 1..=5 {
            up.publish(&ws, &format!("h{k}"));
        }
        published += 6.0;
        cached(&gw, "news", published).await;
        // h0 (c0) fell out of history: a gap, then h3, h4, h5.
        let id = c0.to_string();
        let mut s = EventStream::open(gw.addr, &path, &[("Last-Event-ID", &id)]).await;
        let events = s.events(4).await;
        assert_eq!(events[0].kind, "gap", "{}", s.text());
        assert_eq!(
            events[0].data,
            format!(r#"{{"last_event_id":"{id}"}}"#),
            "{}",
            s.text()
        );
        assert_eq!(datas(&events[1..]), ["h3", "h4", "h5"], "{}", s.text());
        assert_eq!(events[3].id, (c0 + 5).to_string());
        // A cursor this process never issued (or no number at all) is out of history too.
        let mut s2 = EventStream::open(gw.addr, &path, &[("Last-Event-ID", "x7")]).await;
        assert_eq!(s2.event().await.kind, "gap", "{}", s2.text());
        assert_eq!(datas(&s2.events(3).await), ["h3", "h4", "h5"]);
        // A cursor inside history: only what came after it, no gap.
        let inside = (c0 + 4).to_string();
        let mut s3 = EventStream::open(gw.addr, &path, &[("Last-Event-ID", &inside)]).await;
        let e = s3.event().await;
        assert_eq!((e.kind.as_str(), e.data.as_str()), ("message", "h5"));
        // The route's cursor parameter, for a first connection (a browser's EventSource cannot
        // send Last-Event-ID itself): the same, and `?since=` with no value is everything held.
        let q = format!("{path}?since={inside}");
        let mut s4 = EventStream::open(gw.addr, &q, &[]).await;
        assert_eq!(s4.event().await.data, "h5", "{}", s4.text());
        let mut s5 = EventStream::open(gw.addr, &format!("{path}?since="), &[]).await;
        assert_eq!(datas(&s5.events(3).await), ["h3", "h4", "h5"]);
        // Last-Event-ID wins over the query: it is where the client really is.
        let h3 = (c0 + 3).to_string();
        let mut s6 = EventStream::open(gw.addr, &q, &[("Last-Event-ID", &h3)]).await;
        assert_eq!(datas(&s6.events(2).await), ["h4", "h5"]);
        // Every one of them continues live, with nothing in between.
        up.publish(&ws, "live");
        published += 1.0;
        for s in [&mut s, &mut s2, &mut s3, &mut s4, &mut s5, &mut s6] {
            let e = s.event().await;
            assert_eq!(e.data, "live", "{}", s.text());
            assert_eq!(e.id, (c0 + 6).to_string(), "{}", s.text());
        }
    }
    // A cursor parameter that is not a cursor is refused, as on a poll.
    let r = get_with(
        gw.addr,
        "/api/news/sol-true?since=abc",
        &[("Accept", "text/event-stream")],
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.head);
}

#[tokio::test]
async fn latest_streams_send_the_current_message_then_each_new_one() {
    let up = Upstream::start().await;
    const WS: &str = "/ws/prices/btc";
    up.publish(WS, r#"{"p":1}"#);
    let gw = Gateway::start(&config(&up, "", &latest())).await;
    let warm = get_with(gw.addr, "/api/prices/btc", &[]).await;
    assert_eq!(warm.status, 200);
    let mut first = EventStream::open(gw.addr, "/api/prices/btc", &[]).await;
    let e = first.event().await;
    assert_eq!(e.data, r#"{"p":1}"#);
    // Resuming changes nothing in latest mode: the current message, then each new one.
    let mut resumed =
        EventStream::open(gw.addr, "/api/prices/btc", &[("Last-Event-ID", &e.id)]).await;
    assert_eq!(resumed.event().await, e, "{}", resumed.text());
    for k in 2..=4 {
        up.publish(WS, &format!(r#"{{"p":{k}}}"#));
        for s in [&mut first, &mut resumed] {
            let got = s.event().await;
            assert_eq!(got.data, format!(r#"{{"p":{k}}}"#), "{}", s.text());
            assert!(got.id.parse::<u64>().unwrap() > e.id.parse::<u64>().unwrap());
        }
    }
}

#[tokio::test]
async fn idle_and_cold_streams_get_heartbeats_and_keep_their_topic() {
    let up = Upstream::start().await;
    let routes = since().replace(
        "    history: 100\n",
        "    history: 100\n    sse_heartbeat: 200ms\n    idle_unsubscribe: 1s\n",
    );
    let gw = Gateway::start(&config(&up, "", &routes)).await;
    // Nothing was ever published on `cold`: the stream opens at once and waits, without
    // asking the backend (a poll would fall back to it after first_message_wait).
    let mut cold = EventStream::open(gw.addr, "/api/news/cold", &[]).await;
    for _ in 0..3 {
        assert!(cold.comment().await.is_empty(), "{}", cold.text());
    }
    assert!(up.http_requests().is_empty(), "{:?}", up.http_requests());
    up.publish("/ws/news/cold", "at last");
    let events = cold.comment().await;
    let events = if events.is_empty() {
        vec![cold.event().await]
    } else {
        events
    };
    assert_eq!(datas(&events), ["at last"], "{}", cold.text());
    // Heartbeats are not events.
    assert_eq!(gw.metric(EVENTS).await, 1.0);
    assert!(cold.text().contains("\n: heartbeat\n\n"), "{}", cold.text());

    // A topic nobody streams is evicted after idle_unsubscribe; the streamed one stays, and
    // its stream keeps getting messages.
    up.publish("/ws/news/other", "o");
    warm(&gw, "/api/news/other").await;
    gw.wait_metric(r#"pollgate_topics_cached{route="news"}"#, |v| v == 1.0)
        .await;
    let (_, topics) = raw_get(gw.admin, "/topics").await.unwrap();
    let topics: serde_json::Value = serde_json::from_str(&topics).unwrap();
    let cached = &topics["routes"][0]["topics"];
    assert_eq!(cached[0]["topic"], "cold", "{topics:#}");
    assert_eq!(cached[0]["sse_streams"], 1, "{topics:#}");
    assert_eq!(topics["sse_streams_total"], 1, "{topics:#}");
    up.publish("/ws/news/cold", "still here");
    let e = cold.event().await;
    assert_eq!(e.data, "still here", "{}", cold.text());
}

#[tokio::test]
async fn streams_beyond_their_caps_are_refused_with_503() {
    let up = Upstream::start().await;
    up.publish("/ws/news/a", "a");
    up.publish("/ws/prices/b", "b");
    let routes = format!(
        "{}{}",
        since().replace(
            "    history: 100\n",
            "    history: 100\n    max_sse_streams: 1\n"
        ),
        &latest()
    );
    let gw = Gateway::start(&config(&up, "max_sse_streams: 2\n", &routes)).await;
    let sse = [("Accept", "text/event-stream")];
    let _a = EventStream::open(gw.addr, "/api/news/a", &[]).await;
    // The route's cap.
    let r = get_with(gw.addr, "/api/news/a", &sse).await;
    assert_eq!(r.status, 503, "{}\n{}", r.head, r.body);
    assert_eq!(r.header("retry-after").as_deref(), Some("1"));
    // The gateway's: one more on another route, then none.
    let _b = EventStream::open(gw.addr, "/api/prices/b", &[]).await;
    let r = get_with(gw.addr, "/api/prices/b", &sse).await;
    assert_eq!(r.status, 503, "{}\n{}", r.head, r.body);
    // Polls are not streams: they are answered as ever.
    assert_eq!(get_with(gw.addr, "/api/news/a", &[]).await.status, 200);
    let m = gw.metrics().await;
    for (route, v) in [("news", 1.0), ("prices", 1.0)] {
        let series =
            format!(r#"pollgate_rejected_total{{reason="max_sse_streams",route="{route}"}}"#);
        assert_eq!(metric_value(&m, &series), v, "{series}");
        let active = format!(r#"pollgate_sse_streams_active{{route="{route}"}}"#);
        assert_eq!(metric_value(&m, &active), 1.0, "{active}");
    }
}

#[tokio::test]
async fn a_client_that_hangs_up_frees_its_stream_at_once_on_both_paths() {
    let up = Upstream::start().await;
    up.publish("/ws/news/h", "v");
    let routes = since().replace(
        "    history: 100\n",
        "    history: 100\n    max_sse_streams: 5\n",
    );
    let gw = Gateway::start(&config(&up, "", &routes)).await;
    warm(&gw, "/api/news/h").await;
    for fast in [true, false] {
        gw.set_fast_paths(fast).await;
        let mut streams = Vec::new();
        for _ in 0..5 {
            streams.push(EventStream::open(gw.addr, "/api/news/h", &[]).await);
        }
        gw.wait_metric(ACTIVE, |v| v == 5.0).await;
        drop(streams);
        // Freed without waiting for a heartbeat (15 s) to find the socket closed.
        gw.wait_metric(ACTIVE, |v| v == 0.0).await;
        let again = EventStream::open(gw.addr, "/api/news/h", &[]).await;
        gw.wait_metric(ACTIVE, |v| v == 1.0).await;
        drop(again);
        gw.wait_metric(ACTIVE, |v| v == 0.0).await;
    }
}

#[tokio::test]
async fn shutdown_ends_every_stream_after_its_last_event() {
    for fast in [true, false] {
        let up = Upstream::start().await;
        const WS: &str = "/ws/news/s";
        up.publish(WS, "s0");
        let top = format!("fast_paths: {fast}\n");
        let mut gw = Gateway::start(&config(&up, &top, &since())).await;
        warm(&gw, "/api/news/s").await;
        let mut chunked = EventStream::open(gw.addr, "/api/news/s", &[]).await;
        let old = request("/api/news/s", "1.0", &[]);
        let mut close_delimited = EventStream::open_raw(gw.addr, &old).await;
        for s in [&mut chunked, &mut close_delimited] {
            assert_eq!(s.event().await.data, "s0");
        }
        gw.wait_metric(ACTIVE, |v| v == 2.0).await;
        up.publish(WS, "last");
        cached(&gw, "news", 2.0).await;
        gw.signal("TERM");
        for s in [&mut chunked, &mut close_delimited] {
            let rest = s.rest().await;
            assert_eq!(datas(&rest), ["last"], "fast_paths {fast}:\n{}", s.text());
            s.wait_closed().await;
        }
        assert!(chunked.ended, "no last chunk:\n{}", chunked.text());
        let code = tokio::task::spawn_blocking(move || gw.wait_exit(Duration::from_secs(15)))
            .await
            .unwrap();
        assert_eq!(code, Some(0));
    }
}

#[tokio::test]
async fn http10_clients_get_a_close_delimited_stream_on_both_paths() {
    let up = Upstream::start().await;
    const WS: &str = "/ws/news/old";
    up.publish(WS, "o0");
    let gw = Gateway::start(&config(&up, "", &since())).await;
    warm(&gw, "/api/news/old").await;
    for fast in [true, false] {
        gw.set_fast_paths(fast).await;
        let mut s = EventStream::open_raw(gw.addr, &request("/api/news/old", "1.0", &[])).await;
        assert!(s.head.starts_with("HTTP/1.1 200 OK"), "{}", s.head);
        assert_eq!(s.header("transfer-encoding"), None, "{}", s.head);
        assert_eq!(s.header("content-length"), None, "{}", s.head);
        assert_eq!(s.header("connection").as_deref(), Some("close"));
        assert!(s.event().await.data.starts_with('o'));
        up.publish(WS, &format!("o-{fast}"));
        assert_eq!(s.event().await.data, format!("o-{fast}"), "{}", s.text());
        drop(s);
        gw.wait_metric(ACTIVE, |v| v == 0.0).await;
    }
}

#[tokio::test]
async fn other_requests_keep_their_answers() {
    let up = Upstream::start().await;
    up.publish("/ws/prices/btc", "p");
    let cors = "cors:\n  allow_origins: [\"https://app.example\"]\n";
    let gw = Gateway::start(&config(&up, cors, &latest())).await;
    let sse = ("Accept", "text/event-stream");
    for fast in [true, false] {
        gw.set_fast_paths(fast).await;
        // HEAD is a poll's HEAD.
        let r = wire::exchange(
            gw.addr,
            b"HEAD /api/prices/btc HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.head);
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("application/json")
        );
        // Accept without event streams, or refusing them (`q=0`): a poll.
        let r = get_with(
            gw.addr,
            "/api/prices/btc",
            &[("Accept", "text/event-stream;q=0, */*")],
        )
        .await;
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("application/json")
        );
        // A proxy route leaves it to the backend, which sees what the client asked.
        let r = get_with(gw.addr, "/feed", &[sse]).await;
        assert_eq!(r.body, "upstream saw GET /feed");
        let seen = up.http_requests().pop().unwrap();
        assert_eq!(seen.header("accept"), Some("text/event-stream"));
        // Other methods on a poll path go to the backend.
        let r = wire::exchange(
            gw.addr,
            b"DELETE /api/prices/btc HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        assert_eq!(r.text(), "upstream saw DELETE /api/prices/btc");
        // CORS as for polls: an allowed origin's stream says so, another origin gets 403.
        let s = EventStream::open(
            gw.addr,
            "/api/prices/btc",
            &[("Origin", "https://app.example")],
        )
        .await;
        assert_eq!(
            s.header("access-control-allow-origin").as_deref(),
            Some("https://app.example"),
            "{}",
            s.head
        );
        assert_eq!(s.header("vary").as_deref(), Some("Origin"));
        drop(s);
        let r = get_with(
            gw.addr,
            "/api/prices/btc",
            &[sse, ("Origin", "https://evil.example")],
        )
        .await;
        assert_eq!(r.status, 403, "{}", r.head);
    }
}
