//! The admin status page (`/` on the admin listener) in a real browser: headless Chromium driven
//! over the Chrome DevTools Protocol. The page must render one row per topic, update live from
//! `/topics` without a reload, and load nothing from anywhere but the admin listener.
//!
//! Needs `/usr/bin/chromium` (see `common::chromium`): skipped without it, except under `CI`.
//! `POLLGATE_UPDATE_SCREENSHOT=1` rewrites `docs/status-page.png` from the captured page.

mod common;

use base64::Engine;
use common::chromium::{chromium_or_skip, Cdp, Chromium};
use common::*;
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

const TOPIC_PATH: &str = "/ws/prices/btc";

fn config(up: &Upstream) -> String {
    format!(
        r#"{HEAD}upstreams:
  backend:
    address: "{}"
    read_timeout: 5s
routes:
  - name: prices
    path: "/api/prices/{{topic}}"
    upstream: backend
    access: public
    subscribe:
      path: "/ws/prices/{{topic}}"
    mode: latest
    content_type: application/json
    first_message_wait: 2s
  - name: default
    prefix: "/"
    upstream: backend
"#,
        up.addr
    )
}

/// The btc row as the page shows it: `{subscription, messages}` (read through the column
/// headers, not positions), or null while the row is absent.
const ROW: &str = r#"(() => {
  const tr = document.querySelector('tr[data-topic="btc"]');
  if (!tr) return null;
  const heads = [...tr.closest('table').querySelectorAll('th')].map(th => th.textContent);
  const sub = tr.children[heads.indexOf('subscription')];
  const msgs = tr.querySelector('td.messages');
  return {
    subscription: sub ? sub.textContent : null,
    subscription_class: sub ? sub.className : null,
    messages: msgs ? msgs.textContent : null,
    messages_header: msgs ? heads[[...tr.children].indexOf(msgs)] : null,
    marker: window.__pollgateMarker || null,
  };
})()"#;

/// Polls the page (bounded) until `pred` holds for the btc row; returns that row.
async fn wait_row(cdp: &mut Cdp, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    cdp.wait_for(
        &format!("the btc row with {what}"),
        Duration::from_secs(10),
        ROW,
        pred,
    )
    .await
}

#[tokio::test]
async fn status_page_renders_topics_and_updates_live_in_a_browser() {
    let Some(bin) = chromium_or_skip("the status page browser test") else {
        return;
    };
    let started = Instant::now();

    // 1. A gateway with one latest-mode poll route, and a topic it has subscribed to.
    let up = Upstream::start().await;
    up.publish(TOPIC_PATH, r#"{"price": 101}"#);
    let gw = Gateway::start(&config(&up)).await;
    let r = client()
        .get(gw.url("/api/prices/btc"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), r#"{"price": 101}"#);

    // 2. The browser, a page target and the status page.
    let scratch = scratch_dir();
    let browser = Chromium::launch(&bin, scratch.join("chromium-profile"));
    let mut cdp = browser.page().await;
    cdp.call("Network.enable", json!({})).await;
    cdp.call("Page.enable", json!({})).await;
    cdp.call(
        "Emulation.setDeviceMetricsOverride",
        // A short viewport, so that `scrollHeight` below is the content's height.
        json!({ "width": 1000, "height": 120, "deviceScaleFactor": 1, "mobile": false }),
    )
    .await;
    let origin = format!("http://{}", gw.admin);
    let nav = cdp
        .call("Page.navigate", json!({ "url": format!("{origin}/") }))
        .await;
    assert!(nav.get("errorText").is_none(), "navigation failed: {nav}");

    let first = wait_row(&mut cdp, "btc live with a message count", |row| {
        row["subscription"] == "live" && row["messages"].as_str().is_some_and(|m| !m.is_empty())
    })
    .await;
    assert_eq!(first["subscription_class"], "live", "{first}");
    assert_eq!(first["messages_header"], "messages", "{first}");
    let count: u64 = first["messages"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("messages is not a number: {first}"));
    assert!(count >= 1, "{first}");
    assert_eq!(cdp.eval("document.title").await, "pollgate status");

    // 3. A new upstream message shows up in the same page instance: no reload, no navigation.
    cdp.eval("window.__pollgateMarker = 'same-page'; true")
        .await;
    up.publish(TOPIC_PATH, r#"{"price": 102}"#);
    let want = (count + 1).to_string();
    let second = wait_row(&mut cdp, &format!("messages = {want}"), |row| {
        row["messages"].as_str().and_then(|m| m.parse::<u64>().ok()) >= Some(count + 1)
    })
    .await;
    assert_eq!(second["messages"], want.as_str(), "one message published");
    assert_eq!(second["subscription"], "live", "{second}");
    assert_eq!(second["marker"], "same-page", "the page was reloaded");

    // 4. Everything the page loaded came from the admin listener.
    let resources = cdp
        .eval("performance.getEntriesByType('resource').map(e => e.name)")
        .await;
    let resources: Vec<String> = serde_json::from_value(resources).unwrap();
    assert!(
        resources
            .iter()
            .any(|u| u.starts_with(&format!("{origin}/topics"))),
        "the page never fetched /topics: {resources:?}"
    );
    let requested = cdp.requested_urls();
    let external: Vec<&String> = resources
        .iter()
        .chain(requested.iter())
        .filter(|u| !u.starts_with(&format!("{origin}/")))
        .collect();
    assert!(external.is_empty(), "external assets loaded: {external:?}");

    // 5. A screenshot of exactly the page content.
    let height = cdp
        .eval("Math.ceil(document.documentElement.scrollHeight)")
        .await
        .as_f64()
        .unwrap_or(300.0);
    let shot = cdp
        .call(
            "Page.captureScreenshot",
            json!({
                "format": "png",
                "captureBeyondViewport": true,
                "clip": { "x": 0, "y": 0, "width": 1000, "height": height, "scale": 1 },
            }),
        )
        .await;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().expect("screenshot data"))
        .expect("screenshot is base64");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    std::fs::write(scratch.join("status-page.png"), &png).unwrap();
    if std::env::var("POLLGATE_UPDATE_SCREENSHOT").as_deref() == Ok("1") {
        let dest = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/status-page.png");
        std::fs::write(&dest, &png).unwrap();
        eprintln!("wrote {}", dest.display());
    }

    // 6. Chromium is killed by its guard (also on every panic above).
    drop(cdp);
    drop(browser);
    eprintln!(
        "status page test took {:?}; screenshot in {}",
        started.elapsed(),
        scratch.join("status-page.png").display()
    );
}

/// The eth mismatch as the page shows it (cells read through the column headers), or null.
const MISMATCH: &str = r#"(() => {
  const tr = document.querySelector('tr[data-mismatch="eth"]');
  if (!tr) return null;
  const heads = [...tr.closest('table').querySelectorAll('th')].map(th => th.textContent);
  const at = h => heads.includes(h) ? tr.children[heads.indexOf(h)].textContent : null;
  const counts = document.querySelector('.shadow-mismatch');
  return {
    topic: at('topic'),
    target: at('target'),
    status: at('status (cache / backend)'),
    differences: at('differences'),
    counts: counts ? counts.textContent : null,
    counts_class: counts ? counts.className : null,
    topic_row: document.querySelector('tr[data-topic="eth"]') !== null,
  };
})()"#;

#[tokio::test]
async fn status_page_shows_shadow_mismatches_in_a_browser() {
    let Some(bin) = chromium_or_skip("the status page's shadow view") else {
        return;
    };
    // A route whose backend answers its legacy endpoint differently from its feed.
    let up = Upstream::start().await;
    up.publish("/ws/prices/eth", r#"{"price":7}"#);
    up.on_http(|_| Reply {
        status: 200,
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("cache-control".into(), "max-age=5".into()),
        ],
        body: br#"{"price":8}"#.to_vec(),
        delay: Duration::ZERO,
        chunked: false,
    });
    let shadowed = config(&up).replace(
        "    first_message_wait: 2s\n",
        "    first_message_wait: 2s\n    shadow:\n      sample: 1.0\n      headers: [Cache-Control]\n",
    );
    let gw = Gateway::start(&shadowed).await;
    let r = client()
        .get(gw.url("/api/prices/eth"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), r#"{"price":7}"#);
    gw.wait_metric(
        r#"pollgate_shadow_comparisons_total{result="mismatch",route="prices"}"#,
        |v| v == 1.0,
    )
    .await;

    let scratch = scratch_dir();
    let browser = Chromium::launch(&bin, scratch.join("chromium-profile"));
    let mut cdp = browser.page().await;
    cdp.call("Network.enable", json!({})).await;
    cdp.call("Page.enable", json!({})).await;
    cdp.navigate(&format!("http://{}/", gw.admin)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let shown = loop {
        let m = cdp.eval(MISMATCH).await;
        if !m.is_null() {
            break m;
        }
        if Instant::now() > deadline {
            let body = cdp.eval("document.body.innerText").await;
            panic!("the status page never showed the eth mismatch\npage text:\n{body}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(shown["topic"], "eth", "{shown}");
    assert_eq!(shown["target"], "/api/prices/eth", "{shown}");
    assert_eq!(shown["status"], "200 / 200", "{shown}");
    let diffs = shown["differences"].as_str().unwrap_or_default();
    assert!(diffs.contains("body /price: cache 7, backend 8"), "{shown}");
    assert!(
        diffs.contains("header cache-control: cache no-cache, backend max-age=5"),
        "{shown}"
    );
    assert_eq!(shown["counts"], "mismatch 1", "{shown}");
    assert!(
        shown["counts_class"]
            .as_str()
            .is_some_and(|c| c.split(' ').any(|w| w == "bad")),
        "{shown}"
    );
    assert_eq!(
        shown["topic_row"], true,
        "the topics table is still there: {shown}"
    );

    let origin = format!("http://{}/", gw.admin);
    let external: Vec<String> = cdp
        .requested_urls()
        .into_iter()
        .filter(|u| !u.starts_with(&origin))
        .collect();
    assert!(external.is_empty(), "external assets loaded: {external:?}");
    drop(cdp);
    drop(browser);
}
