//! Headless Chromium for browser tests, driven over the Chrome DevTools Protocol (CDP): a
//! launcher that owns the browser's whole process group, and a small client on one page target
//! (calls by id, every event kept, `eval` in the page, bounded waits on page conditions).
//!
//! Needs `/usr/bin/chromium` (Debian package `chromium`; `POLLGATE_CHROMIUM` overrides the
//! path). Without it a browser test is skipped, except under `CI`, where it fails:
//! [`chromium_or_skip`].

use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Where the browser is expected.
pub fn chromium_path() -> PathBuf {
    PathBuf::from(
        std::env::var_os("POLLGATE_CHROMIUM").unwrap_or_else(|| "/usr/bin/chromium".into()),
    )
}

/// The browser's path, or `None` (with a note) when it is missing outside CI: a developer
/// without Chromium still runs the rest of the suite, while CI can never skip silently.
pub fn chromium_or_skip(test: &str) -> Option<PathBuf> {
    let bin = chromium_path();
    if bin.exists() {
        return Some(bin);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{} not found: CI must have chromium installed (apt-get install -y chromium)",
        bin.display()
    );
    eprintln!("note: {} not found; skipping {test}", bin.display());
    None
}

/// A running Chromium in its own process group; the whole group is killed on drop, so no
/// renderer or zygote outlives the test whichever way it ends.
pub struct Chromium {
    child: Child,
    profile: PathBuf,
    stderr: Arc<Mutex<Vec<String>>>,
    /// `127.0.0.1:PORT` of the DevTools HTTP/WebSocket endpoint.
    pub devtools: String,
}

impl Chromium {
    /// Starts the browser with a fresh profile in `profile` (removed on drop). The flags keep
    /// it off the network (this machine has none): no background, component or sync traffic,
    /// no QUIC probing.
    pub fn launch(bin: &Path, profile: PathBuf) -> Chromium {
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

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().join("\n")
    }

    /// A CDP client on the browser's first page target (the `about:blank` tab it starts with).
    pub async fn page(&self) -> Cdp {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let list_url = format!("http://{}/json/list", self.devtools);
        let deadline = Instant::now() + Duration::from_secs(10);
        let page_ws = loop {
            let targets: Value = match http.get(&list_url).send().await {
                Ok(r) => {
                    serde_json::from_str(&r.text().await.unwrap_or_default()).unwrap_or_default()
                }
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
                self.stderr_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Cdp::connect(&page_ws).await
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

/// One network request as the browser reported it (joined from the `Network` events).
#[derive(Debug, Clone, Default)]
pub struct Seen {
    pub url: String,
    pub method: String,
    /// `Network.requestWillBeSent`'s `type`, e.g. `Fetch`, `Document`, `Preflight`.
    pub kind: String,
    /// The request headers as sent on the wire (`requestWillBeSentExtraInfo`), lowercase
    /// names; empty when the browser reported none (answered from its cache).
    pub sent: HashMap<String, String>,
    pub status: Option<u64>,
    /// The response headers as received (`responseReceivedExtraInfo`, else
    /// `responseReceived`), lowercase names.
    pub received: HashMap<String, String>,
    pub failed: Option<String>,
}

/// A minimal CDP client on one page target: request/response by id, events collected.
pub struct Cdp {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    /// Every event received so far, in order (`{method, params}`). Events are read while a
    /// call waits for its answer; [`Cdp::eval`] in a wait loop keeps them flowing.
    pub events: Vec<Value>,
}

impl Cdp {
    pub async fn connect(url: &str) -> Cdp {
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
            events: Vec::new(),
        }
    }

    pub async fn call(&mut self, method: &str, params: Value) -> Value {
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
            if v["id"] == id {
                if let Some(e) = v.get("error") {
                    panic!("CDP {method} failed: {e}");
                }
                return v["result"].clone();
            }
            if v.get("method").is_some() {
                self.events.push(v);
            }
        }
    }

    /// Evaluates `expr` in the page and returns its value (JSON-serialisable results only;
    /// a promise is awaited, within the call's 10 s).
    pub async fn eval(&mut self, expr: &str) -> Value {
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

    /// Evaluates `expr` every 50 ms until `pred` holds on its value or `limit` passes; returns
    /// the last value either way, so the caller's assertions can print what the page saw.
    pub async fn settle(
        &mut self,
        limit: Duration,
        expr: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let v = self.eval(expr).await;
            if pred(&v) || Instant::now() > deadline {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// [`Cdp::settle`], and on timeout a panic with the last value and the page's text.
    pub async fn wait_for(
        &mut self,
        what: &str,
        limit: Duration,
        expr: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let v = self.settle(limit, expr, &pred).await;
        if !pred(&v) {
            let body = self
                .eval("document.body ? document.body.innerText : '(no body)'")
                .await;
            panic!(
                "the page never showed {what} within {limit:?}; last value {v}\n\
                 page text:\n{body}"
            );
        }
        v
    }

    /// Navigates to `url` and waits (bounded) until that document has loaded.
    pub async fn navigate(&mut self, url: &str) {
        let nav = self.call("Page.navigate", json!({ "url": url })).await;
        assert!(
            nav.get("errorText").is_none(),
            "navigation to {url} failed: {nav}"
        );
        let expr = "({ href: location.href, state: document.readyState })";
        self.wait_for(
            &format!("{url} loaded"),
            Duration::from_secs(10),
            expr,
            |v| v["href"] == url && v["state"] == "complete",
        )
        .await;
    }

    /// Every URL the page asked the network for (`Network.requestWillBeSent`).
    pub fn requested_urls(&self) -> Vec<String> {
        self.events_named("Network.requestWillBeSent")
            .filter_map(|e| e["params"]["request"]["url"].as_str())
            .map(str::to_string)
            .collect()
    }

    pub fn events_named<'a>(&'a self, method: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.events.iter().filter(move |e| e["method"] == method)
    }

    /// The requests whose URL starts with `prefix`, in the order the page made them, joined
    /// from the `Network` events by request id (needs `Network.enable`).
    pub fn seen(&self, prefix: &str) -> Vec<Seen> {
        let mut order: Vec<String> = Vec::new();
        let mut by_id: HashMap<String, Seen> = HashMap::new();
        let headers = |h: &Value| -> HashMap<String, String> {
            h.as_object()
                .map(|o| {
                    o.iter()
                        .map(|(k, v)| {
                            (k.to_ascii_lowercase(), v.as_str().unwrap_or("").to_string())
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        for e in &self.events {
            let p = &e["params"];
            let Some(id) = p["requestId"].as_str() else {
                continue;
            };
            // A redirect or a preflight reuses the id; keep the first request's URL.
            let entry = by_id.entry(id.to_string()).or_insert_with(|| {
                order.push(id.to_string());
                Seen::default()
            });
            match e["method"].as_str().unwrap_or_default() {
                "Network.requestWillBeSent" => {
                    entry.url = p["request"]["url"].as_str().unwrap_or("").to_string();
                    entry.method = p["request"]["method"].as_str().unwrap_or("").to_string();
                    entry.kind = p["type"].as_str().unwrap_or("").to_string();
                }
                "Network.requestWillBeSentExtraInfo" => entry.sent = headers(&p["headers"]),
                "Network.responseReceived" => {
                    entry.status = p["response"]["status"].as_u64();
                    if entry.received.is_empty() {
                        entry.received = headers(&p["response"]["headers"]);
                    }
                }
                "Network.responseReceivedExtraInfo" => {
                    entry.status = entry.status.or(p["statusCode"].as_u64());
                    entry.received = headers(&p["headers"]);
                }
                "Network.loadingFailed" => {
                    entry.failed = Some(p["errorText"].as_str().unwrap_or("").to_string());
                }
                _ => {}
            }
        }
        order
            .into_iter()
            .filter_map(|id| by_id.remove(&id))
            .filter(|s| s.url.starts_with(prefix))
            .collect()
    }
}
