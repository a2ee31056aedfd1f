//! `fanout_pass`: a publish writes the answers of the held polls parked on its topic itself.
//! The suite runs `threads: 1`, where the pass is on by default; these tests compare it with
//! the same gateway whose polls' tasks write their own answers (`fanout_pass: false`), and
//! follow a parked connection past its answer.

mod common;

use common::routes::{behind, latest_long};
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
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    gw.wait_metric(HELD, |v| v == held_before + 1.0).await;
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
    let mut socks = Vec::new();
    for (n, ask) in asks.iter().enumerate() {
        for gw in [&with, &without] {
            socks.push(held(gw, ask, n as f64).await);
        }
    }
    up.publish("/ws/prices/btc", "v2");
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
            s.write_all(b"GET /api/prices/btc HTTP/1.1\r\nHost: t\r\n\r\n")
                .await
                .unwrap();
            let next = Reader::new(&mut *s)
                .with_limit(Duration::from_secs(10))
                .answer(false)
                .await
                .unwrap_or_else(|e| panic!("{ask:?}, the next request: {e}"));
            assert_eq!((next.status, next.text().as_str()), (200, "v2"), "{ask:?}");
        }
        answers.push(a);
    }
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
    }
    assert_eq!(answers[0].text(), "v2");
    // Both counted their answers alike, and neither holds a poll any more.
    for gw in [&with, &without] {
        gw.wait_metric(SERVED, |v| v == asks.len() as f64).await;
        gw.wait_metric(HELD, |v| v == 0.0).await;
    }
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
