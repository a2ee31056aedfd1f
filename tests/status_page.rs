//! The admin status page (`/` on the admin listener) in a real browser: headless Chromium driven
//! over the Chrome DevTools Protocol. The page must render one row per topic, update live from
//! `/topics` without a reload, and load nothing from anywhere but the admin listener.
//!
//! Needs `/usr/bin/chromium` (Debian package `chromium`; override the path with
//! `POLLGATE_CHROMIUM`). Without it the test is skipped, except under `CI`, where it fails.
//! `POLLGATE_UPDATE_SCREENSHOT=1` rewrites `docs/status-page.png` from the captured page.

mod common;

use base64::Engine;
use common::*;
use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

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

/// A running Chromium in its own process group; the whole group is killed on drop, so no
/// renderer or zygote outlives the test whichever way it ends.
struct Chromium {
    child: Child,
    profile: PathBuf,
    stderr: Arc<Mutex<Vec<String>>>,
    /// `127.0.0.1:PORT` of the DevTools HTTP/WebSocket endpoint.
    devtools: String,
}

impl Chromium {
    fn launch(bin: &Path, profile: PathBuf) -> Chromium {
        std::fs::create_dir_all(&profile).unwrap();
        let mut child = Command::new(bin)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-quic",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(["--remote-debugging-port=0", "about:blank"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let pipe = child.stderr.take().unwrap();
        let lines = stderr.clone();
        // Keep draining stderr for the browser's whole life so it never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("DevTools listening on ws://").nth(1) {
                    let _ = tx.send(rest.split('/').next().unwrap_or_default().to_string());
                }
                lines.lock().push(line);
            }
        });
        let mut browser = Chromium {
            child,
            profile,
            stderr,
            devtools: String::new(),
        };
        match rx.recv_timeout(Duration::from_secs(15)) {
            Ok(addr) => browser.devtools = addr,
            Err(_) => panic!(
                "chromium did not print its DevTools address within 15 s\n{}",
                browser.stderr_text()
            ),
        }
        browser
    }

    fn stderr_text(&self) -> String {
        self.stderr.lock().join("\n")
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        // The group id is the child's pid (process_group(0)); `kill -KILL -PGID` ends the
        // browser and every helper process it forked.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// A minimal CDP client on one page target: request/response by id, events collected.
struct Cdp {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    /// Every URL the page asked the network for (`Network.requestWillBeSent`).
    requests: Vec<String>,
}

impl Cdp {
    async fn connect(url: &str) -> Cdp {
        let (ws, _) = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_tungstenite::connect_async(url),
        )
        .await
        .expect("CDP connect timed out")
        .expect("CDP connect");
        Cdp {
            ws,
            next_id: 0,
            requests: Vec::new(),
        }
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({ "id": id, "method": method, "params": params });
        self.ws
            .send(Message::text(msg.to_string()))
            .await
            .expect("CDP send");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("CDP {method}: no answer within 10 s"));
            let text = match frame {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(_)) => continue,
                other => panic!("CDP {method}: socket ended: {other:?}"),
            };
            let v: Value = serde_json::from_str(&text).expect("CDP frame is JSON");
            if v["method"] == "Network.requestWillBeSent" {
                if let Some(u) = v["params"]["request"]["url"].as_str() {
                    self.requests.push(u.to_string());
                }
            }
            if v["id"] == id {
                if let Some(e) = v.get("error") {
                    panic!("CDP {method} failed: {e}");
                }
                return v["result"].clone();
            }
        }
    }

    /// Evaluates `expr` in the page and returns its value (JSON-serialisable results only).
    async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expr, "returnByValue": true, "awaitPromise": true }),
            )
            .await;
        if let Some(ex) = r.get("exceptionDetails") {
            panic!("page threw evaluating {expr}: {ex}");
        }
        r["result"]["value"].clone()
    }
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
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let row = cdp.eval(ROW).await;
        if pred(&row) {
            return row;
        }
        if Instant::now() > deadline {
            let body = cdp.eval("document.body.innerText").await;
            panic!("status page never showed {what}; last row {row}\npage text:\n{body}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn chromium_path() -> PathBuf {
    PathBuf::from(
        std::env::var_os("POLLGATE_CHROMIUM").unwrap_or_else(|| "/usr/bin/chromium".into()),
    )
}

/// The browser to test with; `None` (the test is skipped) when it is not installed, except
/// under `CI`, where that fails.
fn chromium_or_skip() -> Option<PathBuf> {
    let bin = chromium_path();
    if !bin.exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{} not found: CI must have chromium installed (apt-get install -y chromium)",
            bin.display()
        );
        eprintln!(
            "note: {} not found; skipping the status page browser test",
            bin.display()
        );
        return None;
    }
    Some(bin)
}

/// The browser's page target, connected, with the status page of `admin` loaded in a
/// 1000 x 120 viewport.
async fn open_status_page(browser: &Chromium, admin: std::net::SocketAddr) -> Cdp {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let list_url = format!("http://{}/json/list", browser.devtools);
    let deadline = Instant::now() + Duration::from_secs(10);
    let page_ws = loop {
        let targets: Value = match http.get(&list_url).send().await {
            Ok(r) => serde_json::from_str(&r.text().await.unwrap_or_default()).unwrap_or_default(),
            Err(_) => Value::Null,
        };
        let found = targets.as_array().and_then(|ts| {
            ts.iter()
                .find(|t| t["type"] == "page")
                .and_then(|t| t["webSocketDebuggerUrl"].as_str())
                .map(str::to_string)
        });
        if let Some(u) = found {
            break u;
        }
        assert!(
            Instant::now() < deadline,
            "no page target in {list_url}: {targets}\n{}",
            browser.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut cdp = Cdp::connect(&page_ws).await;
    cdp.call("Network.enable", json!({})).await;
    cdp.call("Page.enable", json!({})).await;
    cdp.call(
        "Emulation.setDeviceMetricsOverride",
        // A short viewport, so that `scrollHeight` below is the content's height.
        json!({ "width": 1000, "height": 120, "deviceScaleFactor": 1, "mobile": false }),
    )
    .await;
    let nav = cdp
        .call(
            "Page.navigate",
            json!({ "url": format!("http://{admin}/") }),
        )
        .await;
    assert!(nav.get("errorText").is_none(), "navigation failed: {nav}");
    cdp
}

#[tokio::test]
async fn status_page_renders_topics_and_updates_live_in_a_browser() {
    let Some(bin) = chromium_or_skip() else {
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
    let mut cdp = open_status_page(&browser, gw.admin).await;
    let origin = format!("http://{}", gw.admin);

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
    let external: Vec<&String> = resources
        .iter()
        .chain(cdp.requests.iter())
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
    let Some(bin) = chromium_or_skip() else {
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
    let mut cdp = open_status_page(&browser, gw.admin).await;
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
    let external: Vec<&String> = cdp
        .requests
        .iter()
        .filter(|u| !u.starts_with(&origin))
        .collect();
    assert!(external.is_empty(), "external assets loaded: {external:?}");
    drop(cdp);
    drop(browser);
}
