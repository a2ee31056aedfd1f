//! The HTTPS listener (`tls:`): polls over TLS reach the same connection loop as cleartext
//! ones, the certificate is swapped on SIGHUP without dropping connections, a bad file keeps
//! the old certificate, and `-t` checks the files.

mod common;

use common::routes::{behind, latest_long, since};
use common::tls::{peer_serial, request_on, TestCa};
use common::*;
use std::path::Path;

fn config(up: &Upstream, cert: &Path, key: &Path) -> String {
    let top = format!(
        "tls:\n  listen: \"{{tls}}\"\n  cert: \"{}\"\n  key: \"{}\"\n",
        cert.display(),
        key.display()
    );
    behind(up.addr, &top, &[&latest_long(), &since()])
}

/// A gateway with an HTTPS listener whose certificate (serial 1) the returned CA signed.
async fn start(up: &Upstream) -> (Gateway, TestCa, std::path::PathBuf) {
    let ca = TestCa::new();
    let dir = scratch_dir();
    let (cert, key) = ca.server(1).write(&dir, &ca);
    let gw = Gateway::start(&config(up, &cert, &key)).await;
    assert!(
        gw.tls.is_some(),
        "no tls= in the start-up line:\n{}",
        gw.log()
    );
    (gw, ca, dir)
}

fn https(gw: &Gateway, path: &str) -> String {
    format!("https://{}{}", gw.tls.unwrap(), path)
}

#[tokio::test]
async fn short_held_and_cursor_polls_are_answered_over_https() {
    let up = Upstream::start().await;
    up.publish("/ws/prices/btc", "v1");
    up.publish("/ws/news/n", "0");
    let (gw, ca, _dir) = start(&up).await;
    let client = ca.client();

    // Short poll.
    let r = client
        .get(https(&gw, "/api/prices/btc"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    assert_eq!(r.text().await.unwrap(), "v1");

    // Conditional poll, answered 304 at once when asked not to wait.
    let r = client
        .get(https(&gw, "/api/prices/btc"))
        .header("If-None-Match", &etag)
        .header("Prefer", "wait=0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);

    // Held poll: held until the next message.
    let held = {
        let client = client.clone();
        let url = https(&gw, "/api/prices/btc");
        let etag = etag.clone();
        tokio::spawn(async move {
            let r = client
                .get(url)
                .header("If-None-Match", etag)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        })
    };
    gw.wait_metric(r#"pollgate_long_polls_held{route="prices"}"#, |v| v == 1.0)
        .await;
    up.publish_live("/ws/prices/btc", "v2");
    let (status, body) = held.await.unwrap();
    assert_eq!((status, body.as_str()), (200, "v2"));

    // Cursor polls: every message once, in order.
    let r = client.get(https(&gw, "/api/news/n")).send().await.unwrap();
    let mut cursor = r.headers()["pollgate-cursor"].to_str().unwrap().to_string();
    assert_eq!(r.text().await.unwrap(), "[0]");
    let mut seen: Vec<u64> = Vec::new();
    for i in 1..=5 {
        up.publish_live("/ws/news/n", &i.to_string());
    }
    while seen.len() < 5 {
        let r = client
            .get(https(&gw, &format!("/api/news/n?since={cursor}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        cursor = r.headers()["pollgate-cursor"].to_str().unwrap().to_string();
        let items: Vec<u64> = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        seen.extend(items);
    }
    assert_eq!(seen, vec![1, 2, 3, 4, 5]);

    // The cleartext listener still answers beside it.
    let r = get_with(gw.addr, "/api/prices/btc", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "v2"));

    // A client that does not trust the test CA is refused: the listener really is TLS.
    let stranger = reqwest::Client::builder().use_native_tls().build().unwrap();
    assert!(stranger
        .get(https(&gw, "/api/prices/btc"))
        .send()
        .await
        .is_err());
}

#[tokio::test]
async fn sighup_serves_a_new_certificate_and_keeps_open_connections() {
    let up = Upstream::start().await;
    up.publish("/ws/prices/btc", "v1");
    let (gw, ca, dir) = start(&up).await;
    let tls = gw.tls.unwrap();

    let mut old = ca.connect(tls, b"").await;
    assert_eq!(peer_serial(&old), 1);
    let r = request_on(&mut old, "/api/prices/btc", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "v1"), "{}", r.head);

    // A client keeps polling over its own connections throughout the reload.
    let poller = {
        let client = ca.client();
        let url = https(&gw, "/api/prices/btc");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let mut answers = 0;
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                let r = client.get(&url).send().await.expect("polls never fail");
                assert_eq!(r.status(), 200);
                answers += 1;
            }
            answers
        });
        (stop, task)
    };

    ca.server(2).write(&dir, &ca);
    gw.reload_with(|t| t).await;

    let mut new = ca.connect(tls, b"").await;
    assert_eq!(peer_serial(&new), 2, "{}", gw.log());
    let r = request_on(&mut new, "/api/prices/btc", &[]).await;
    assert_eq!(r.status, 200, "{}", r.head);
    // The connection opened before the reload still carries requests.
    let r = request_on(&mut old, "/api/prices/btc", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "v1"), "{}", r.head);

    poller.0.store(true, std::sync::atomic::Ordering::Relaxed);
    let answers = poller.1.await.unwrap();
    assert!(answers > 0);
    let log = gw.log();
    let loaded: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("TLS certificate loaded"))
        .collect();
    assert!(
        loaded.len() == 2 && loaded[0].contains("serial=01") && loaded[1].contains("serial=02"),
        "{log}"
    );
}

#[tokio::test]
async fn a_bad_certificate_file_on_reload_keeps_the_old_certificate() {
    let up = Upstream::start().await;
    up.publish("/ws/prices/btc", "v1");
    let (gw, ca, dir) = start(&up).await;
    let tls = gw.tls.unwrap();
    let failed = r#"pollgate_config_reloads_total{result="failure"}"#;
    assert_eq!(gw.metric(failed).await, 0.0);

    std::fs::write(
        dir.join("cert.pem"),
        "-----BEGIN CERTIFICATE-----\nnot one\n",
    )
    .unwrap();
    gw.signal("HUP");
    gw.wait_metric(failed, |v| v == 1.0).await;
    assert!(gw.log().contains("tls.cert"), "{}", gw.log());

    // A certificate whose key is another one's is refused too.
    let other = ca.server(3);
    std::fs::write(dir.join("cert.pem"), format!("{}{}", other.cert, ca.pem)).unwrap();
    gw.signal("HUP");
    gw.wait_metric(failed, |v| v == 2.0).await;

    let mut s = ca.connect(tls, b"").await;
    assert_eq!(peer_serial(&s), 1);
    let r = request_on(&mut s, "/api/prices/btc", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "v1"), "{}", r.head);
}

#[test]
fn check_mode_refuses_a_missing_file_and_a_key_of_another_certificate() {
    let ca = TestCa::new();
    let dir = scratch_dir();
    let (cert, key) = ca.server(1).write(&dir, &ca);
    let file = |cert: &Path, key: &Path| {
        let text = format!(
            r#"listen: "127.0.0.1:0"
tls:
  listen: "127.0.0.1:0"
  cert: "{}"
  key: "{}"
upstreams:
  backend:
    address: "127.0.0.1:9"
routes:
  - name: default
    prefix: "/"
    upstream: backend
"#,
            cert.display(),
            key.display()
        );
        let path = dir.join("pollgate.yaml");
        std::fs::write(&path, text).unwrap();
        check_config(&path)
    };

    let out = file(&cert, &key);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = file(&dir.join("missing.pem"), &key);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("tls.cert: cannot read"), "{err}");
    assert!(err.contains("missing.pem"), "{err}");

    let other = ca.server(2);
    let other_key = dir.join("other-key.pem");
    std::fs::write(&other_key, &other.key).unwrap();
    let out = file(&cert, &other_key);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("tls.key:") && err.contains("is not the private key of the certificate"),
        "{err}"
    );

    std::fs::write(&other_key, "garbage").unwrap();
    let out = file(&cert, &other_key);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tls.key:") && err.contains("is not a PEM private key"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn websocket_tunnels_and_request_bodies_pass_over_https() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let up = Upstream::start().await;
    up.on_http(|r| Reply::ok(&format!("got {} bytes", r.body.len())));
    let (gw, ca, _dir) = start(&up).await;
    let tls = gw.tls.unwrap();

    // A WebSocket upgrade on an HTTP/1.1 TLS connection is tunnelled to the backend.
    let s = ca.connect(tls, b"\x08http/1.1").await;
    let (mut ws, resp) = tokio_tungstenite::client_async("wss://127.0.0.1/echo", s)
        .await
        .unwrap_or_else(|e| panic!("handshake: {e}\n{}", gw.log()));
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("over tls")).await.unwrap();
    let got = tokio::time::timeout(std::time::Duration::from_secs(5), ws.next())
        .await
        .expect("an echo")
        .unwrap()
        .unwrap();
    assert_eq!(got, Message::text("over tls"));

    // A request with a body goes through pingora's proxy, over the same TLS connection kind.
    let r = ca
        .client()
        .post(https(&gw, "/upload"))
        .body("x".repeat(5000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "got 5000 bytes");

    // Forwarded requests say how the client came: https from the TLS listener (the body above
    // through pingora's proxy, a bodiless GET through the connection loop's forward path),
    // http from the cleartext one.
    let r = ca.client().get(https(&gw, "/plain")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(get_with(gw.addr, "/clear", &[]).await.status, 200);
    let proto = |target: &str| {
        up.http_requests()
            .iter()
            .find(|r| r.target == target)
            .and_then(|r| r.header("x-forwarded-proto").map(str::to_string))
    };
    assert_eq!(proto("/upload").as_deref(), Some("https"));
    assert_eq!(proto("/plain").as_deref(), Some("https"));
    assert_eq!(proto("/clear").as_deref(), Some("http"));
}
