//! `fanout_pass`: a publish writes the answers of the held polls parked on its topic itself.
//! The suite runs `threads: 1`, where the pass is on by default; these tests compare it with
//! the same gateway whose polls' tasks write their own answers (`fanout_pass: false`), and
//! follow a parked connection past its answer.

mod common;

use common::routes::{behind, latest_long, since};
use common::wire::Reader;
use common::*;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const HELD: &str = r#"pollgate_long_polls_held{route="prices"}"#;
const SERVED: &str = r#"pollgate_poll_requests_total{outcome="held_served",route="prices"}"#;

fn config(up: &Upstream, pass: bool) -> String {
    behind(
        up.addr,
        &format!("fanout_pass: {pass}\n"),
        &[&latest_long()],
    )
}

/// A held poll's request on a new connection, once the gateway counts it held.
async fn held(gw: &Gateway, request: &str, held_before: f64) -> TcpStream {
    held_on(gw, HELD, request, held_before).await
}

/// [`held`] on the route whose held-polls gauge is `gauge`.
async fn held_on(gw: &Gateway, gauge: &str, request: &str, held_before: f64) -> TcpStream {
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    gw.wait_metric(gauge, |v| v == held_before + 1.0).await;
    s
}

/// The lines of a head that may differ between two answers to the same message.
fn comparable(head: &str) -> Vec<String> {
    head.lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            !l.starts_with("date:") && !l.starts_with("age:")
        })
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn a_pass_writes_the_answer_the_polls_own_task_writes() {
    let up = Upstream::start().await;
    up.publish("/ws/prices/btc", "v1");
    let with = Gateway::start(&config(&up, true)).await;
    let without = Gateway::start(&config(&up, false)).await;
    let etag = get_with(with.addr, "/api/prices/btc", &[])
        .await
        .header("etag")
        .unwrap();
    assert_eq!(
        get_with(without.addr, "/api/prices/btc", &[])
            .await
            .header("etag"),
        Some(etag.clone())
    );
    // Keep-alive, HEAD, a client that asks to close, a `Prefer: wait` hold, HTTP/1.0.
    let asks = [
        poll_after("btc", &etag),
        format!("HEAD /api/prices/btc HTTP/1.1\r\nHost: t\r\nIf-None-Match: {etag}\r\n\r\n"),
        format!(
            "GET /api/prices/btc HTTP/1.1\r\nHost: t\r\nConnection: close\r\nIf-None-Match: {etag}\r\n\r\n"
        ),
        format!(
            "GET /api/prices/btc HTTP/1.1\r\nHost: t\r\nPrefer: wait=15\r\nIf-None-Match: {etag}\r\n\r\n"
        ),
        format!("GET /api/prices/btc HTTP/1.0\r\nIf-None-Match: {etag}\r\n\r\n"),
    ];
    let on = Metrics {
        held: HELD,
        served: SERVED,
    };
    let next = "GET /api/prices/btc HTTP/1.1\r\nHost: t\r\n\r\n";
    let answers = alike(
        &with,
        &without,
        &asks,
        on,
        || up.publish("/ws/prices/btc", "v2"),
        next,
        "v2",
    )
    .await;
    assert_eq!(answers[0].text(), "v2");
}

/// A route's held-polls gauge and held-and-answered counter.
#[derive(Clone, Copy)]
struct Metrics {
    held: &'static str,
    served: &'static str,
}

/// Holds each of `asks` on both gateways (`with` the pass, `without`), runs `publish`, and
/// checks the two answer each alike, with nothing after a closing answer and `next` answered
/// `next_body` on a kept-alive connection; returns the pass's answers.
async fn alike(
    with: &Gateway,
    without: &Gateway,
    asks: &[String],
    on: Metrics,
    publish: impl FnOnce(),
    next: &str,
    next_body: &str,
) -> Vec<common::wire::Answer> {
    let mut socks = Vec::new();
    for (n, ask) in asks.iter().enumerate() {
        for gw in [with, without] {
            socks.push(held_on(gw, on.held, ask, n as f64).await);
        }
    }
    publish();
    let mut answers = Vec::new();
    for (i, s) in socks.iter_mut().enumerate() {
        let ask = &asks[i / 2];
        let mut r = Reader::new(&mut *s).with_limit(Duration::from_secs(10));
        let a = r
            .answer(ask.starts_with("HEAD"))
            .await
            .unwrap_or_else(|e| panic!("{ask:?}: {e}"));
        // Nothing but the answer: a closing one is followed by the close, at once; after a
        // kept-alive one the connection serves the next request.
        if a.closes() {
            let after = r.closed().await.unwrap_or_else(|e| panic!("{ask:?}: {e}"));
            assert!(after.is_empty(), "{ask:?}: {after:?} after the answer");
        } else {
            assert!(r.pending().is_empty(), "{ask:?}: {:?}", r.pending());
            s.write_all(next.as_bytes()).await.unwrap();
            let n = Reader::new(&mut *s)
                .with_limit(Duration::from_secs(10))
                .answer(false)
                .await
                .unwrap_or_else(|e| panic!("{ask:?}, the next request: {e}"));
            assert_eq!((n.status, n.text().as_str()), (200, next_body), "{ask:?}");
        }
        answers.push(a);
    }
    let mut pass_answers = Vec::new();
    for (i, pair) in answers.chunks(2).enumerate() {
        let (pass, task) = (&pair[0], &pair[1]);
        assert_eq!(pass.status, 200, "{:?}: {}", asks[i], pass.head);
        assert_eq!(
            comparable(&pass.head),
            comparable(&task.head),
            "{:?}:\npass:\n{}\ntask:\n{}",
            asks[i],
            pass.head,
            task.head
        );
        assert_eq!(pass.body, task.body, "{:?}", asks[i]);
        pass_answers.push(pass.clone());
    }
    // Both counted their answers alike, and neither holds a poll any more.
    for gw in [with, without] {
        gw.wait_metric(on.served, |v| v == asks.len() as f64).await;
        gw.wait_metric(on.held, |v| v == 0.0).await;
    }
    pass_answers
}

#[tokio::test]
async fn a_pass_writes_the_cursor_polls_answer_its_task_writes() {
    let up = Upstream::start().await;
    up.publish("/ws/news/c", r#"{"id":"a0"}"#);
    // The backend's own ids as cursors, so both gateways take the same ones.
    let route = since().replace(
        "    mode: since\n",
        "    mode: since\n    id_pointer: /id\n",
    );
    let cfg = |pass: bool| behind(up.addr, &format!("fanout_pass: {pass}\n"), &[&route]);
    let with = Gateway::start(&cfg(true)).await;
    let without = Gateway::start(&cfg(false)).await;
    for gw in [&with, &without] {
        let first = get_with(gw.addr, "/api/news/c", &[]).await;
        assert_eq!(
            first.header("pollgate-cursor").as_deref(),
            Some("a0"),
            "{}",
            first.head
        );
    }
    let ask = |extra: &str| format!("GET /api/news/c?since=a0 HTTP/1.1\r\nHost: t\r\n{extra}\r\n");
    let asks = [
        ask(""),
        ask("").replacen("GET", "HEAD", 1),
        ask("Connection: close\r\n"),
        ask("Prefer: wait=15\r\n"),
    ];
    let on = Metrics {
        held: r#"pollgate_long_polls_held{route="news"}"#,
        served: r#"pollgate_poll_requests_total{outcome="held_served",route="news"}"#,
    };
    let news = r#"{"id":"a1"}"#;
    let answers = alike(
        &with,
        &without,
        &asks,
        on,
        || up.publish_live("/ws/news/c", news),
        &ask(""),
        &format!("[{news}]"),
    )
    .await;
    assert_eq!(
        answers[0].text(),
        format!("[{news}]"),
        "{}",
        answers[0].head
    );
    assert_eq!(answers[0].header("pollgate-cursor").as_deref(), Some("a1"));
}

/// A keep-alive poll of `topic` that waits for news after `etag`.
fn poll_after(topic: &str, etag: &str) -> String {
    format!("GET /api/prices/{topic} HTTP/1.1\r\nHost: t\r\nIf-None-Match: {etag}\r\n\r\n")
}

/// An upstream whose `topic` holds `v1`, a gateway with the pass, and one poll parked there.
async fn one_parked(topic: &str) -> (Upstream, Gateway, TcpStream) {
    let up = Upstream::start().await;
    up.publish(&format!("/ws/prices/{topic}"), "v1");
    let gw = Gateway::start(&config(&up, true)).await;
    let path = format!("/api/prices/{topic}");
    let etag = get_with(gw.addr, &path, &[]).await.header("etag").unwrap();
    let s = held(&gw, &poll_after(topic, &etag), 0.0).await;
    (up, gw, s)
}

#[tokio::test]
async fn a_parked_connection_serves_its_next_requests_after_the_pass() {
    let (up, gw, mut s) = one_parked("eth").await;
    for next in ["v2", "v3", "v4"] {
        up.publish("/ws/prices/eth", next);
        let a = Reader::new(&mut s)
            .with_limit(Duration::from_secs(10))
            .answer(false)
            .await
            .unwrap_or_else(|e| panic!("the answer with {next}: {e}"));
        assert_eq!((a.status, a.text().as_str()), (200, next), "{}", a.head);
        // The slot is free once the answer is written, while the connection idles.
        gw.wait_metric(HELD, |v| v == 0.0).await;
        // The next poll on the same connection: read by the parked wait, served after it.
        let etag = a.header("etag").unwrap();
        s.write_all(poll_after("eth", &etag).as_bytes())
            .await
            .unwrap();
        gw.wait_metric(HELD, |v| v == 1.0).await;
    }
    // A client that hangs up while parked frees its slot.
    drop(s);
    gw.wait_metric(HELD, |v| v == 0.0).await;
}

#[tokio::test]
async fn a_message_too_big_for_the_pass_reaches_its_parked_poll_at_once() {
    let (up, gw, mut s) = one_parked("big").await;
    // Larger than one write's copy: the pass leaves it to the poll's task, which it wakes.
    let big = "x".repeat(40 * 1024);
    up.publish("/ws/prices/big", &big);
    // Well inside the route's 20 s hold: only a wake-up answers it this soon.
    let a = Reader::new(&mut s)
        .with_limit(Duration::from_secs(10))
        .answer(false)
        .await
        .unwrap_or_else(|e| panic!("the big answer: {e}"));
    assert_eq!(a.status, 200, "{}", a.head);
    assert_eq!(a.body.len(), big.len(), "{}", a.head);
    assert!(a.body.iter().all(|b| *b == b'x'));
    gw.wait_metric(SERVED, |v| v == 1.0).await;
}

/// Four single-threaded workers, each keeping the connections it accepted: every worker's
/// parked polls are answered by its own pass, through two fan-outs, and a message that is not
/// news to them (the same payload, so the same ETag) leaves them all parked for the next.
#[tokio::test]
async fn workers_that_keep_their_connections_each_answer_their_parked_polls() {
    const N: usize = 24;
    let up = Upstream::start().await;
    up.publish("/ws/prices/sol", "v1");
    let gw = Gateway::start(
        &behind(
            up.addr,
            "work_stealing: false\nfanout_pass: true\n",
            &[&latest_long()],
        )
        .replace("threads: 1\n", "threads: 4\n"),
    )
    .await;
    let etag = get_with(gw.addr, "/api/prices/sol", &[])
        .await
        .header("etag")
        .unwrap();
    let mut socks = Vec::new();
    for i in 0..N {
        socks.push(held(&gw, &poll_after("sol", &etag), i as f64).await);
    }
    let received = r#"pollgate_upstream_messages_total{route="prices"}"#;
    up.publish("/ws/prices/sol", "v1");
    gw.wait_metric(received, |v| v == 2.0).await;
    for (round, next) in ["v2", "v3"].into_iter().enumerate() {
        up.publish("/ws/prices/sol", next);
        for (i, s) in socks.iter_mut().enumerate() {
            // Well inside the route's 20 s hold: only a pass answers it this soon.
            let a = Reader::new(&mut *s)
                .with_limit(Duration::from_secs(10))
                .answer(false)
                .await
                .unwrap_or_else(|e| panic!("poll {i}, {next}: {e}"));
            assert_eq!(
                (a.status, a.text().as_str()),
                (200, next),
                "poll {i}: {}",
                a.head
            );
            s.write_all(poll_after("sol", &a.header("etag").unwrap()).as_bytes())
                .await
                .unwrap();
        }
        gw.wait_metric(SERVED, |v| v == ((round + 1) * N) as f64)
            .await;
        gw.wait_metric(HELD, |v| v == N as f64).await;
    }
    drop(socks);
    gw.wait_metric(HELD, |v| v == 0.0).await;
}
