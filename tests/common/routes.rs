//! The config the polling, EventSource, TLS and HTTP/2 suites start pollgate with, and the
//! route blocks they share (YAML list items under `routes:`).

use super::HEAD;
use std::fmt::Display;

/// A latest-mode route that holds polls carrying `If-None-Match` alone (Nchan-style legacy
/// clients) as well as `Prefer: wait`.
pub const LATEST_LONG: &str = r#"  - name: prices
    path: "/api/prices/{topic}"
    upstream: backend
    access: public
    subscribe:
      path: "/ws/prices/{topic}"
    mode: latest
    long_poll: 20s
    hold_on: [prefer, if-none-match]
    first_message_wait: 2s
"#;

/// A since-mode route keeping the last 100 messages.
pub const SINCE: &str = r#"  - name: news
    path: "/api/news/{topic}"
    upstream: backend
    access: public
    subscribe:
      path: "/ws/news/{topic}"
    mode: since
    history: 100
    long_poll: 20s
    first_message_wait: 2s
"#;

/// pollgate in front of the test upstream at `addr`: the shared head, `top` (more top-level
/// keys), the backend with a 5 s read timeout, the route `items`, then a prefix route for
/// everything else.
pub fn behind(addr: impl Display, top: &str, items: &[&str]) -> String {
    format!(
        r#"{HEAD}{top}upstreams:
  backend:
    address: "{addr}"
    read_timeout: 5s
routes:
{}  - name: default
    prefix: "/"
    upstream: backend
"#,
        items.concat()
    )
}
