//! Polling through the gateway as a browser does it, in headless Chromium (see
//! `common::chromium`): its HTTP cache revalidating poll answers, tabs reloading cursor
//! answers, pages on another origin polling across CORS, and `EventSource` streams.
//!
//! The tests take turns with one browser at a time: they measure how long requests take, and
//! two Chromiums on the CI's two cores would measure each other.

mod common;

use common::chromium::{chromium_or_skip, Cdp, Chromium, Seen};
use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const PAGE: &str =
    "<!doctype html><html><head><title>poller</title></head><body>poller</body></html>";

/// Serves [`PAGE`] for `/page.html` (on the backend, through the gateway, or on its own port
/// as another origin) and `other` for `/other`; everything else as the upstream always does.
fn serve_pages(up: &Upstream) {
    up.on_http(|r| match r.target.as_str() {
        "/page.html" => Reply {
            headers: vec![("content-type".into(), "text/html; charset=utf-8".into())],
            ..Reply::ok(PAGE)
        },
        "/other" => Reply::ok("other"),
        t => Reply::ok(&format!("upstream saw {} {t}", r.method)),
    });
}

/// A latest-mode route that holds for 20 s when asked, a since-mode route with a cursor, and
/// everything else proxied to the backend. `cors`: a top-level `cors:` block, or empty.
fn config(up: &Upstream, cors: &str) -> String {
    format!(
        r#"{HEAD}{cors}upstreams:
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
    long_poll: 20s
    max_wait: 20s
    first_message_wait: 2s
  - name: news
    path: "/api/news/{{topic}}"
    upstream: backend
    access: public
    subscribe:
      path: "/ws/news/{{topic}}"
    mode: since
    cursor_param: since
    long_poll: 25s
    first_message_wait: 2s
  - name: default
    prefix: "/"
    upstream: backend
"#,
        up.addr
    )
}

/// A browser with one tab, its `Network` and `Page` events on.
struct Browser {
    cdp: Cdp,
    // Dropped after `cdp`: the browser outlives its DevTools connection.
    _chromium: Chromium,
}

async fn browser(bin: &std::path::Path) -> Browser {
    // The profile is the whole scratch directory: the browser's guard removes it.
    let chromium = Chromium::launch(bin, scratch_dir());
    let mut cdp = chromium.page().await;
    cdp.call("Network.enable", json!({})).await;
    cdp.call("Page.enable", json!({})).await;
    Browser {
        cdp,
        _chromium: chromium,
    }
}

fn describe(seen: &[Seen]) -> String {
    seen.iter()
        .map(|s| {
            format!(
                "{} {} [{}] -> {:?}{} sent={:?} received={:?}",
                s.method,
                s.url,
                s.kind,
                s.status,
                s.failed
                    .as_deref()
                    .map(|f| format!(" FAILED {f}"))
                    .unwrap_or_default(),
                s.sent,
                s.received
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Access-log lines of the gateway for `path`.
fn access_lines(gw: &Gateway, path: &str) -> Vec<String> {
    gw.log()
        .lines()
        .filter(|l| l.contains("access") && l.contains(&format!("path={path} ")))
        .map(str::to_string)
        .collect()
}

/// Every poll answer the route counted (all outcomes) plus the backend requests it saved.
async fn cache_answers(gw: &Gateway, route: &str) -> f64 {
    let text = gw.metrics().await;
    text.lines()
        .filter(|l| {
            (l.starts_with("pollgate_poll_requests_total{")
                || l.starts_with("pollgate_upstream_requests_saved_total{"))
                && l.contains(&format!("route=\"{route}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

const TICKS: usize = 8;

/// Behaviour 1: a browser's own revalidation (`If-None-Match` from its HTTP cache) is not a
/// request to hold; `Prefer: wait=N` still is.
#[tokio::test]
async fn a_plain_fetch_loop_is_never_held_but_prefer_wait_is() {
    let Some(bin) = chromium_or_skip("the browser polling tests") else {
        return;
    };
    let _turn = ONE_BROWSER.lock().await;
    let up = Upstream::start().await;
    serve_pages(&up);
    const QUIET: &str = "/ws/prices/quiet";
    let base = r#"{"price":1}"#;
    up.publish(QUIET, base);
    let gw = Gateway::start(&config(&up, "")).await;
    let poll_url = gw.url("/api/prices/quiet");
    let warm = get_with(gw.addr, "/api/prices/quiet", &[]).await;
    assert_eq!(warm.status, 200, "{}\n{}", warm.head, warm.body);
    assert_eq!(warm.body, base);
    assert_eq!(warm.header("cache-control").as_deref(), Some("no-cache"));
    assert!(
        warm.header("etag").is_some_and(|e| e.starts_with('"')),
        "a strong ETag: {}",
        warm.head
    );

    let mut b = browser(&bin).await;
    let cdp = &mut b.cdp;
    cdp.navigate(&gw.url("/page.html")).await;

    // A 1 s loop of plain fetches (no headers of its own), not waiting for each other, and at
    // 6.5 s, with seven polls sent, an unrelated fetch of the same origin: held polls would
    // be what fills a browser's six connections to an origin. (Chromium queues requests for
    // one URL behind its cache entry instead, so with holds it is the ticks that fail here.)
    let start = format!(
        r#"(() => {{
  window.__ticks = [];
  window.__started = [];
  window.__other = null;
  let n = 0;
  const poll = () => {{
    const i = n++;
    if (n >= {TICKS}) clearInterval(timer);
    const t0 = performance.now();
    window.__started.push({{ i, t0 }});
    fetch('/api/prices/quiet').then(
      async r => window.__ticks.push({{ i, status: r.status, body: await r.text(),
        etag: r.headers.get('etag'), ms: performance.now() - t0 }}),
      e => window.__ticks.push({{ i, error: String(e), ms: performance.now() - t0 }}));
  }};
  const timer = setInterval(poll, 1000);
  poll();
  setTimeout(() => {{
    const t0 = performance.now();
    fetch('/other').then(
      async r => window.__other = {{ status: r.status, body: await r.text(), ms: performance.now() - t0 }},
      e => window.__other = {{ error: String(e), ms: performance.now() - t0 }});
  }}, {other_at});
  return true;
}})()"#,
        other_at = (TICKS as f64 - 1.5) * 1000.0
    );
    assert_eq!(cdp.eval(&start).await, true);
    let state = "({ ticks: window.__ticks, other: window.__other, now: performance.now(), \
                 pending: window.__started.filter(s => !window.__ticks.some(t => t.i === s.i))\
                 .map(s => ({ i: s.i, waiting_ms: performance.now() - s.t0 })) })";
    let seen = cdp
        .settle(Duration::from_secs(TICKS as u64 + 5), state, |v| {
            v["ticks"].as_array().is_some_and(|t| t.len() == TICKS) && !v["other"].is_null()
        })
        .await;
    let network = describe(&cdp.seen(&poll_url));
    let what = format!("the page saw {seen:#}\nnetwork:\n{network}");
    let ticks = seen["ticks"].as_array().cloned().unwrap_or_default();
    assert_eq!(ticks.len(), TICKS, "every tick answered; {what}");
    for t in &ticks {
        assert_eq!(t["status"], 200, "{t}; {what}");
        assert_eq!(t["body"], base, "{t}; {what}");
        let ms = t["ms"].as_f64().unwrap_or(f64::MAX);
        assert!(ms < 1000.0, "a poll took longer than the tick: {t}; {what}");
    }
    let other = &seen["other"];
    assert_eq!(other["status"], 200, "{what}");
    assert_eq!(other["body"], "other", "{what}");
    assert!(
        other["ms"].as_f64().unwrap_or(f64::MAX) < 1000.0,
        "the unrelated fetch waited: {other}; {what}"
    );

    // The browser did revalidate with the ETag it was given (so the gateway could have held
    // it), and the gateway answered those 304 at once.
    let etag = warm.header("etag").unwrap();
    let requests = cdp.seen(&poll_url);
    let revalidations = requests
        .iter()
        .filter(|s| s.sent.get("if-none-match") == Some(&etag))
        .count();
    assert!(
        revalidations >= TICKS - 1,
        "the browser revalidated {revalidations} of {TICKS} polls with If-None-Match {etag}; {what}"
    );
    let not_modified = gw
        .metric(r#"pollgate_poll_requests_total{outcome="not_modified",route="prices"}"#)
        .await;
    assert!(
        not_modified >= (TICKS - 1) as f64,
        "the gateway answered {not_modified} polls 304; {what}\naccess log:\n{}",
        access_lines(&gw, "/api/prices/quiet").join("\n")
    );
    eprintln!(
        "{} of {TICKS} plain polls revalidated with If-None-Match",
        revalidations
    );

    // Asked to wait, the page is held, and gets the next message the moment it is published.
    let long_poll = r#"(() => {
  window.__lp = [];
  (async () => {
    for (let k = 0; k < 20; k++) {
      const t0 = performance.now();
      const r = await fetch('/api/prices/quiet', { headers: { 'Prefer': 'wait=10' } });
      const body = await r.text();
      window.__lp.push({ status: r.status, body, applied: r.headers.get('preference-applied'),
        ms: performance.now() - t0 });
      if (body !== BASE) return;
    }
  })();
  return true;
})()"#
        .replace("BASE", &serde_json::to_string(base).unwrap());
    assert_eq!(cdp.eval(&long_poll).await, true);
    let held_series = r#"pollgate_long_polls_held{route="prices"}"#;
    let deadline = Instant::now() + Duration::from_secs(10);
    while gw.metric(held_series).await < 1.0 {
        if Instant::now() > deadline {
            let lp = cdp.eval("window.__lp").await;
            panic!(
                "the Prefer: wait=10 poll was never held; the page saw {lp}\nnetwork:\n{}",
                describe(&cdp.seen(&poll_url))
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let held_since = Instant::now();
    // Held for a while first, so an answer at publish time cannot be a coincidence.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let fresh = r#"{"price":2}"#;
    up.publish(QUIET, fresh);
    let published = Instant::now();
    let lp = cdp
        .settle(Duration::from_secs(15), "window.__lp", |v| {
            v.as_array()
                .and_then(|a| a.last())
                .is_some_and(|l| l["body"] == fresh)
        })
        .await;
    let delivered = published.elapsed();
    let what = format!(
        "the page saw {lp:#}\nnetwork:\n{}",
        describe(&cdp.seen(&poll_url))
    );
    let last = lp
        .as_array()
        .and_then(|a| a.last())
        .cloned()
        .unwrap_or_default();
    assert_eq!(last["body"], fresh, "{what}");
    assert_eq!(last["status"], 200, "{what}");
    assert!(
        delivered < Duration::from_secs(2),
        "delivered {delivered:?} after the publish; {what}"
    );
    assert!(
        last["ms"].as_f64().unwrap_or(0.0) >= (published - held_since).as_millis() as f64,
        "the answer was not the held poll; {what}"
    );
    assert_eq!(last["applied"], "wait=10", "{what}");
}

/// Behaviour 2: a since-mode answer (`Cache-Control: no-store`) is never replayed or
/// revalidated by the browser, so a reloaded tab gets everything held, at once.
#[tokio::test]
async fn a_reloaded_cursor_poll_shows_the_whole_history_at_once() {
    let Some(bin) = chromium_or_skip("the browser polling tests") else {
        return;
    };
    let _turn = ONE_BROWSER.lock().await;
    let up = Upstream::start().await;
    serve_pages(&up);
    const NEWS: &str = "/ws/news/btc";
    up.publish(NEWS, r#"{"n":1}"#);
    let gw = Gateway::start(&config(&up, "")).await;
    let url = gw.url("/api/news/btc");

    let mut b = browser(&bin).await;
    let cdp = &mut b.cdp;
    cdp.navigate(&url).await;
    let doc = "({ text: (document.querySelector('pre') || document.body).innerText, \
               reloaded: window.__before_reload !== true, state: document.readyState, \
               nav: performance.getEntriesByType('navigation').map(n => ({ \
                 ms: n.responseEnd - n.requestStart, type: n.type }))[0] })";
    let first = cdp
        .settle(Duration::from_secs(5), doc, |v| v["text"] == r#"[{"n":1}]"#)
        .await;
    let what = format!(
        "the tab showed {first:#}\nnetwork:\n{}",
        describe(&cdp.seen(&url))
    );
    assert_eq!(first["text"], r#"[{"n":1}]"#, "{what}");
    let answer = cdp.seen(&url).pop().unwrap_or_default();
    assert_eq!(
        answer.received.get("cache-control").map(String::as_str),
        Some("no-store"),
        "{what}"
    );

    // More news while the tab sits there; the gateway has cached them before the reload.
    up.publish(NEWS, r#"{"n":2}"#);
    up.publish(NEWS, r#"{"n":3}"#);
    gw.wait_metric(r#"pollgate_upstream_messages_total{route="news"}"#, |v| {
        v >= 3.0
    })
    .await;
    let requests_before = cdp.seen(&url).len();
    assert_eq!(cdp.eval("window.__before_reload = true").await, true);
    let reloaded_at = Instant::now();
    cdp.call("Page.reload", json!({})).await;
    let all = r#"[{"n":1},{"n":2},{"n":3}]"#;
    let after = cdp
        .settle(Duration::from_secs(10), doc, |v| {
            v["reloaded"] == true && v["state"] == "complete" && v["text"] == all
        })
        .await;
    let took = reloaded_at.elapsed();
    let reload_requests = cdp.seen(&url).split_off(requests_before);
    let what = format!(
        "after the reload ({took:?}) the tab showed {after:#}\nreload requests:\n{}",
        describe(&reload_requests)
    );
    assert_eq!(after["reloaded"], true, "the tab never reloaded; {what}");
    assert_eq!(after["text"], all, "{what}");
    assert!(took < Duration::from_secs(5), "the reload waited; {what}");
    assert!(
        after["nav"]["ms"].as_f64().unwrap_or(f64::MAX) < 2000.0,
        "{what}"
    );
    // The browser kept nothing to revalidate: the reload asked without a cursor.
    assert_eq!(reload_requests.len(), 1, "{what}");
    assert!(
        !reload_requests[0].sent.contains_key("if-none-match"),
        "{what}"
    );
}

/// Behaviour 3: a page on another origin polls across CORS (preflighted `Prefer: wait=5`
/// polls, `ETag` readable); a page on an origin not in `allow_origins` gets nothing.
#[tokio::test]
async fn another_origin_long_polls_across_cors_and_a_stranger_gets_nothing() {
    let Some(bin) = chromium_or_skip("the browser polling tests") else {
        return;
    };
    let _turn = ONE_BROWSER.lock().await;
    // Two more loopback ports, two more origins: one allowed, one not.
    let app = Upstream::start().await;
    serve_pages(&app);
    let stranger = Upstream::start().await;
    serve_pages(&stranger);
    let app_origin = format!("http://{}", app.addr);
    let stranger_origin = format!("http://{}", stranger.addr);

    let up = Upstream::start().await;
    const ETH: &str = "/ws/prices/eth";
    up.publish(ETH, r#"{"eth":0}"#);
    let cors = format!("cors:\n  allow_origins: [\"{app_origin}\"]\n  max_age: 10m\n");
    let gw = Gateway::start(&config(&up, &cors)).await;
    let poll_url = gw.url("/api/prices/eth");
    let warm = get_with(gw.addr, "/api/prices/eth", &[]).await;
    assert_eq!(warm.status, 200, "{}\n{}", warm.head, warm.body);

    let mut b = browser(&bin).await;
    let cdp = &mut b.cdp;
    cdp.navigate(&format!("{app_origin}/page.html")).await;
    const UPDATES: usize = 8;
    let start = format!(
        r#"((url, want) => {{
  window.__got = [];
  window.__log = [];
  (async () => {{
    let etag = null;
    for (let k = 0; k < 60 && window.__got.length < want; k++) {{
      const headers = {{ 'Prefer': 'wait=5' }};
      const t0 = performance.now();
      try {{
        const r = await fetch(url, {{ headers }});
        const body = await r.text();
        const e = r.headers.get('ETag');
        window.__log.push({{ status: r.status, etag: e, age: r.headers.get('Age'),
          ms: performance.now() - t0 }});
        if (r.status === 200 && e !== etag) {{
          window.__got.push({{ body, etag: e }});
          etag = e;
        }}
      }} catch (err) {{
        window.__log.push({{ error: String(err), ms: performance.now() - t0 }});
        await new Promise(res => setTimeout(res, 200));
      }}
    }}
  }})();
  return true;
}})({url}, {want})"#,
        url = serde_json::to_string(&poll_url).unwrap(),
        want = UPDATES + 1
    );
    assert_eq!(cdp.eval(&start).await, true);
    let held_series = r#"pollgate_long_polls_held{route="prices"}"#;
    let state = "({ got: window.__got, log: window.__log })";
    // Lockstep: each update is published while the page's poll is held for it.
    for k in 1..=UPDATES {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let seen = cdp.eval(state).await;
            let got = seen["got"].as_array().map_or(0, Vec::len);
            if got == k && gw.metric(held_series).await >= 1.0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "waiting to publish update {k}: the page saw {seen:#}\nnetwork:\n{}",
                describe(&cdp.seen(&poll_url))
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        up.publish(ETH, &format!(r#"{{"eth":{k}}}"#));
    }
    let seen = cdp
        .settle(Duration::from_secs(10), state, |v| {
            v["got"].as_array().is_some_and(|g| g.len() == UPDATES + 1)
        })
        .await;
    let requests = cdp.seen(&poll_url);
    let what = format!(
        "the page on {app_origin} saw {seen:#}\nnetwork:\n{}",
        describe(&requests)
    );
    let got = seen["got"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        got.len(),
        UPDATES + 1,
        "the first answer and {UPDATES} updates; {what}"
    );
    let mut etags = Vec::new();
    for (k, g) in got.iter().enumerate() {
        assert_eq!(g["body"], format!(r#"{{"eth":{k}}}"#), "{what}");
        let etag = g["etag"].as_str().unwrap_or_default();
        assert!(etag.starts_with('"'), "ETag readable from JS: {g}; {what}");
        assert!(!etags.contains(&etag), "{what}");
        etags.push(etag);
    }
    for l in seen["log"].as_array().into_iter().flatten() {
        assert!(l["error"].is_null(), "a poll failed: {l}; {what}");
        if l["status"] == 200 {
            assert!(l["age"].is_string(), "Age readable from JS: {l}; {what}");
        }
    }
    // The preflights and the answers, as the browser saw them.
    let preflights: Vec<&Seen> = requests.iter().filter(|s| s.method == "OPTIONS").collect();
    assert!(!preflights.is_empty(), "no preflight seen; {what}");
    for p in &preflights {
        let h = |n: &str| p.received.get(n).cloned().unwrap_or_default();
        assert_eq!(p.status, Some(204), "{what}");
        assert_eq!(h("access-control-allow-origin"), app_origin, "{what}");
        assert!(h("access-control-allow-methods").contains("GET"), "{what}");
        let allowed = h("access-control-allow-headers").to_ascii_lowercase();
        assert!(
            allowed.contains("prefer") && allowed.contains("if-none-match"),
            "{what}"
        );
        assert_eq!(h("access-control-max-age"), "600", "{what}");
        assert_eq!(h("vary"), "Origin", "{what}");
    }
    for g in requests.iter().filter(|s| s.method == "GET") {
        let h = |n: &str| g.received.get(n).cloned().unwrap_or_default();
        assert_eq!(h("access-control-allow-origin"), app_origin, "{what}");
        assert_eq!(h("vary"), "Origin", "{what}");
        for exposed in ["ETag", "Age", "Pollgate-Cursor", "Pollgate-Gap"] {
            assert!(
                h("access-control-expose-headers").contains(exposed),
                "{what}"
            );
        }
    }
    // `Access-Control-Max-Age` is honoured: the browser does not ask before every poll.
    let polls = requests.iter().filter(|s| s.method == "GET").count();
    assert!(
        preflights.len() < polls,
        "{} preflights for {polls} polls; {what}",
        preflights.len()
    );

    // The same page on an origin the config does not list: no data, and no cache answer.
    let answers_before = cache_answers(&gw, "prices").await;
    let requests_before = cdp.seen(&poll_url).len();
    cdp.navigate(&format!("{stranger_origin}/page.html")).await;
    let attempts = format!(
        r#"((url) => {{
  window.__tries = [];
  (async () => {{
    for (const headers of [{{ 'Prefer': 'wait=5' }}, {{}}, {{ 'Prefer': 'wait=5', 'If-None-Match': '"x"' }}]) {{
      const t0 = performance.now();
      try {{
        const r = await fetch(url, {{ headers }});
        window.__tries.push({{ headers, status: r.status, body: await r.text(),
          etag: r.headers.get('ETag') }});
      }} catch (err) {{
        window.__tries.push({{ headers, error: String(err), ms: performance.now() - t0 }});
      }}
    }}
  }})();
  return true;
}})({})"#,
        serde_json::to_string(&poll_url).unwrap()
    );
    assert_eq!(cdp.eval(&attempts).await, true);
    let tries = cdp
        .settle(Duration::from_secs(10), "window.__tries", |v| {
            v.as_array().is_some_and(|a| a.len() == 3)
        })
        .await;
    let stranger_requests = cdp.seen(&poll_url).split_off(requests_before);
    let answers_after = cache_answers(&gw, "prices").await;
    let what = format!(
        "the page on {stranger_origin} saw {tries:#}\nnetwork:\n{}\naccess log:\n{}",
        describe(&stranger_requests),
        access_lines(&gw, "/api/prices/eth").join("\n")
    );
    let tries = tries.as_array().cloned().unwrap_or_default();
    assert_eq!(tries.len(), 3, "{what}");
    for t in &tries {
        assert!(
            t["error"].is_string(),
            "a refused origin's fetch must fail: {t}; {what}"
        );
        assert!(t["body"].is_null(), "{what}");
    }
    assert_eq!(
        answers_after, answers_before,
        "the gateway counted cache answers for a refused origin; {what}"
    );
    // The refusals are the gateway's (403 on the preflights and on the simple GET, which
    // needs none), not only the browser's.
    let answered: Vec<&Seen> = stranger_requests
        .iter()
        .filter(|s| s.status.is_some())
        .collect();
    assert!(
        answered.iter().any(|s| s.method == "OPTIONS")
            && answered.iter().any(|s| s.method == "GET"),
        "{what}"
    );
    for s in answered {
        assert_eq!(s.status, Some(403), "{what}");
        assert!(
            !s.received.contains_key("access-control-allow-origin"),
            "{what}"
        );
    }
}

/// Behaviour 4: a page on another origin reads a since-mode route with `EventSource` across
/// CORS: every message in order with its cursor as `lastEventId`, a multi-line payload as
/// one event; when the stream ends (a reload replaced the route's cache) the browser
/// reconnects by itself after the `retry:` hint, sending `Last-Event-ID`, and the `gap` event
/// tells the page that the new cache does not know it. A stranger's EventSource gets nothing.
#[tokio::test]
async fn an_event_source_on_another_origin_streams_across_cors_and_reconnects() {
    let Some(bin) = chromium_or_skip("the browser polling tests") else {
        return;
    };
    let _turn = ONE_BROWSER.lock().await;
    let app = Upstream::start().await;
    serve_pages(&app);
    let stranger = Upstream::start().await;
    serve_pages(&stranger);
    let app_origin = format!("http://{}", app.addr);
    let stranger_origin = format!("http://{}", stranger.addr);

    let up = Upstream::start().await;
    const NEWS: &str = "/ws/news/btc";
    up.publish(NEWS, "n0");
    let cors = format!("cors:\n  allow_origins: [\"{app_origin}\"]\n");
    let cfg = config(&up, &cors).replace(
        "    long_poll: 25s\n",
        "    long_poll: 25s\n    sse_heartbeat: 200ms\n    sse_retry: 300ms\n",
    );
    let gw = Gateway::start(&cfg).await;
    let url = gw.url("/api/news/btc");
    let warm = get_with(gw.addr, "/api/news/btc", &[]).await;
    assert_eq!(warm.status, 200, "{}\n{}", warm.head, warm.body);

    let mut b = browser(&bin).await;
    let cdp = &mut b.cdp;
    cdp.navigate(&format!("{app_origin}/page.html")).await;
    let start = format!(
        r#"((url) => {{
  window.__ev = [];
  window.__opens = 0;
  window.__errors = 0;
  const es = new EventSource(url);
  window.__es = es;
  const keep = e => window.__ev.push({{ type: e.type, data: e.data, id: e.lastEventId }});
  es.onopen = () => window.__opens++;
  es.onmessage = keep;
  es.addEventListener('gap', keep);
  es.onerror = () => window.__errors++;
  return true;
}})({})"#,
        serde_json::to_string(&url).unwrap()
    );
    assert_eq!(cdp.eval(&start).await, true);
    let state = "({ ev: window.__ev, opens: window.__opens, errors: window.__errors, \
                 ready: window.__es.readyState })";
    let what = |v: &serde_json::Value, cdp: &Cdp| {
        format!(
            "the page saw {v:#}\nnetwork:\n{}",
            describe(&cdp.seen(&url))
        )
    };
    let seen = cdp
        .settle(Duration::from_secs(10), state, |v| {
            v["ev"][0]["data"] == "n0"
        })
        .await;
    assert_eq!(seen["ev"][0]["data"], "n0", "{}", what(&seen, cdp));
    let payloads = ["n1", "two\nlines", "n3", "n4"];
    for p in payloads {
        up.publish(NEWS, p);
    }
    let seen = cdp
        .settle(Duration::from_secs(10), state, |v| {
            v["ev"].as_array().is_some_and(|e| e.len() == 5)
        })
        .await;
    let report = what(&seen, cdp);
    let ev = seen["ev"].as_array().cloned().unwrap_or_default();
    assert_eq!(ev.len(), 5, "{report}");
    let ids: Vec<u64> = ev
        .iter()
        .map(|e| e["id"].as_str().and_then(|i| i.parse().ok()).unwrap_or(0))
        .collect();
    for (k, e) in ev.iter().enumerate() {
        assert_eq!(e["type"], "message", "{report}");
        let want = if k == 0 { "n0" } else { payloads[k - 1] };
        assert_eq!(e["data"], want, "{report}");
        if k > 0 {
            assert_eq!(ids[k], ids[k - 1] + 1, "{report}");
        }
    }
    assert_eq!(seen["opens"], 1, "{report}");
    let stream = cdp.seen(&url);
    let first = stream.first().cloned().unwrap_or_default();
    assert_eq!(first.kind, "EventSource", "{report}");
    let h = |n: &str| first.received.get(n).cloned().unwrap_or_default();
    assert_eq!(h("content-type"), "text/event-stream", "{report}");
    assert_eq!(h("access-control-allow-origin"), app_origin, "{report}");

    // A reload that changes the route gives it a new cache: the stream ends at its next
    // heartbeat, the browser reconnects with the last id it got, which the new cache never
    // issued: `gap`, then what the new cache holds (the backend's retained n4), then news.
    gw.reload_with(|t| t.replace("sse_retry: 300ms", "sse_retry: 400ms"))
        .await;
    let seen = cdp
        .settle(Duration::from_secs(10), state, |v| {
            v["opens"] == 2 && v["ev"].as_array().is_some_and(|e| e.len() >= 7)
        })
        .await;
    assert_eq!(seen["opens"], 2, "reconnected; {}", what(&seen, cdp));
    up.publish(NEWS, "n5");
    let seen = cdp
        .settle(Duration::from_secs(10), state, |v| {
            v["ev"].as_array().is_some_and(|e| e.len() == 8)
        })
        .await;
    let report = what(&seen, cdp);
    let ev = seen["ev"].as_array().cloned().unwrap_or_default();
    assert_eq!(seen["opens"], 2, "{report}");
    assert_eq!(ev.len(), 8, "{report}");
    assert_eq!(ev[5]["type"], "gap", "{report}");
    let gap: serde_json::Value =
        serde_json::from_str(ev[5]["data"].as_str().unwrap_or("")).unwrap();
    assert_eq!(gap["last_event_id"], ids[4].to_string(), "{report}");
    assert_eq!(ev[6]["data"], "n4", "{report}");
    assert_eq!(ev[7]["data"], "n5", "{report}");
    let reconnect = cdp
        .seen(&url)
        .into_iter()
        .filter(|s| s.method == "GET")
        .nth(1);
    let reconnect = reconnect.unwrap_or_default();
    assert_eq!(
        reconnect.sent.get("last-event-id"),
        Some(&ids[4].to_string()),
        "{report}"
    );
    assert_eq!(
        gw.metric(r#"pollgate_sse_streams_active{route="news"}"#)
            .await,
        1.0
    );

    // A page on an origin the config does not list: refused, and EventSource gives up.
    cdp.navigate(&format!("{stranger_origin}/page.html")).await;
    assert_eq!(cdp.eval(&start).await, true);
    let seen = cdp
        .settle(Duration::from_secs(10), state, |v| v["ready"] == 2)
        .await;
    let report = what(&seen, cdp);
    assert_eq!(seen["ready"], 2, "closed for good; {report}");
    assert_eq!(seen["ev"], serde_json::json!([]), "{report}");
    assert_eq!(seen["opens"], 0, "{report}");
    let refused = cdp.seen(&url).pop().unwrap_or_default();
    assert_eq!(refused.status, Some(403), "{report}");
}
