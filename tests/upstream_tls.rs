//! TLS to the backend (`upstreams.NAME.tls`): subscriptions over `wss://` feed polls, and
//! fallbacks and proxied requests go over `https://`, all verified against the configured CA.

mod common;

use common::tls::{TestCa, TlsUpstream};
use common::*;
use std::path::Path;

fn config(up: &TlsUpstream, tls: &str) -> String {
    format!(
        r#"{HEAD}upstreams:
  backend:
    address: "{}"
    read_timeout: 5s
    tls: {tls}
routes:
  - name: prices
    path: "/api/prices/{{topic}}"
    upstream: backend
    access: public
    subscribe:
      path: "/ws/prices/{{topic}}"
    mode: latest
    long_poll: 20s
    hold_on: [prefer, if-none-match]
    first_message_wait: 300ms
  - name: default
    prefix: "/"
    upstream: backend
"#,
        up.addr
    )
}

/// A TLS backend with a certificate for `localhost` from a fresh CA, whose PEM is in `dir`.
async fn backend() -> (TlsUpstream, TestCa, std::path::PathBuf) {
    let ca = TestCa::new();
    let up = TlsUpstream::start(&ca.server(7), &ca).await;
    let dir = scratch_dir();
    std::fs::write(dir.join("ca.pem"), &ca.pem).unwrap();
    (up, ca, dir)
}

fn verified(dir: &Path) -> String {
    format!(
        "{{ sni: localhost, ca: \"{}\" }}",
        dir.join("ca.pem").display()
    )
}

#[tokio::test]
async fn a_wss_subscription_feeds_short_and_held_polls() {
    let (up, _ca, dir) = backend().await;
    up.publish("/ws/prices/btc", "v1");
    let gw = Gateway::start(&config(&up, &verified(&dir))).await;

    let r = get_with(gw.addr, "/api/prices/btc", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "v1"), "{}", gw.log());
    assert!(up.http_paths().is_empty(), "{:?}", up.http_paths());
    let etag = r.header("etag").unwrap();

    let addr = gw.addr;
    let held = tokio::spawn(async move {
        get_with(addr, "/api/prices/btc", &[("If-None-Match", &etag)]).await
    });
    gw.wait_metric(r#"pollgate_long_polls_held{route="prices"}"#, |v| v == 1.0)
        .await;
    up.publish("/ws/prices/btc", "v2");
    let r = held.await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "v2"), "{}", r.head);
    assert_eq!(
        gw.metric(r#"pollgate_upstream_connected{route="prices"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn fallbacks_and_proxied_requests_go_over_https() {
    let (up, _ca, dir) = backend().await;
    let gw = Gateway::start(&config(&up, &verified(&dir))).await;

    // Proxied by the connection loop's forward path.
    let r = get_with(gw.addr, "/hello", &[]).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "https:/hello"),
        "{}",
        r.head
    );

    // A cold topic that gets no message within first_message_wait: answered by the fallback.
    let r = get_with(gw.addr, "/api/prices/quiet", &[]).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "https:/api/prices/quiet"),
        "{}\n{}",
        r.head,
        gw.log()
    );
    assert_eq!(
        up.http_paths(),
        vec!["/hello".to_string(), "/api/prices/quiet".to_string()]
    );

    // With pingora's proxy (fast_paths: false) the same request goes over https too.
    gw.set_fast_paths(false).await;
    let r = get_with(gw.addr, "/again", &[]).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "https:/again"),
        "{}",
        r.head
    );
}

#[tokio::test]
async fn a_certificate_the_roots_do_not_trust_is_refused() {
    // Without `ca`: the system's roots, which do not include the test CA (the name matches,
    // so only the roots refuse it). `tls: true` is the same with the address's host as name.
    let (up, _ca, _dir) = backend().await;
    for tls in ["{ sni: localhost }", "true"] {
        let gw = Gateway::start(&config(&up, tls)).await;
        let r = get_with(gw.addr, "/hello", &[]).await;
        assert_eq!(r.status, 502, "tls: {tls}\n{}", r.head);
        assert!(up.http_paths().is_empty(), "{:?}", up.http_paths());
        assert!(up.handshakes() == 0, "tls: {tls}");
    }
    let gw = Gateway::start(&config(&up, "true")).await;
    assert!(
        !gw.log().contains("TLS VERIFICATION IS OFF"),
        "{}",
        gw.log()
    );
}

#[tokio::test]
async fn verify_false_connects_and_warns_at_start_up() {
    let (up, _ca, _dir) = backend().await;
    let gw = Gateway::start(&config(&up, "{ verify: false }")).await;
    let r = get_with(gw.addr, "/hello", &[]).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "https:/hello"),
        "{}",
        r.head
    );
    let log = gw.log();
    assert!(
        log.contains("WARN") && log.contains("TLS VERIFICATION IS OFF"),
        "{log}"
    );
}

#[test]
fn check_mode_refuses_a_missing_ca_file() {
    let dir = scratch_dir();
    let path = dir.join("pollgate.yaml");
    std::fs::write(
        &path,
        r#"listen: "127.0.0.1:0"
upstreams:
  backend:
    address: "127.0.0.1:9"
    tls: { ca: /nonexistent/ca.pem }
routes:
  - name: default
    prefix: "/"
    upstream: backend
"#,
    )
    .unwrap();
    let out = check_config(&path);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("upstreams.backend.tls.ca: cannot read /nonexistent/ca.pem"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn https_connections_to_the_backend_are_reused() {
    let (up, _ca, dir) = backend().await;
    let gw = Gateway::start(&config(&up, &verified(&dir))).await;
    for i in 0..5 {
        let r = get_with(gw.addr, &format!("/r{i}"), &[]).await;
        assert_eq!(r.status, 200, "{}", r.head);
    }
    // One handshake for the five requests (the pool keeps the TLS connection between them).
    assert_eq!(up.http_paths().len(), 5);
    assert_eq!(up.handshakes(), 1);
}
