//! The config the polling, EventSource, TLS and HTTP/2 suites start pollgate with, the route
//! blocks they share (YAML list items under `routes:`), and the one way a suite writes a poll
//! route on the test upstream (`poll_route`, or `poll_route_fed_by` for another subscription
//! path; also used by the resilience and subscription suites).

use super::HEAD;
use std::fmt::Display;

/// A poll route named `name` on the test upstream: `/api/{name}/{topic}`, fed by the upstream's
/// `/ws/{name}/{topic}`, then the route's own `keys` (YAML lines indented as route keys).
pub fn poll_route(name: &str, keys: &str) -> String {
    poll_route_fed_by(name, &format!("/ws/{name}/{{topic}}"), keys)
}

/// [`poll_route`] subscribed at `ws_path`; `keys` follow the subscription's `path`, so they may
/// begin with more `subscribe:` keys (indented six spaces) before the route's own.
pub fn poll_route_fed_by(name: &str, ws_path: &str, keys: &str) -> String {
    format!(
        r#"  - name: {name}
    path: "/api/{name}/{{topic}}"
    upstream: backend
    access: public
    subscribe:
      path: "{ws_path}"
{keys}"#
    )
}

/// A latest-mode route that holds polls carrying `If-None-Match` alone (Nchan-style legacy
/// clients) as well as `Prefer: wait`.
pub fn latest_long() -> String {
    poll_route(
        "prices",
        r#"    mode: latest
    long_poll: 20s
    hold_on: [prefer, if-none-match]
    first_message_wait: 2s
"#,
    )
}

/// A since-mode route keeping the last 100 messages.
pub fn since() -> String {
    poll_route(
        "news",
        r#"    mode: since
    history: 100
    long_poll: 20s
    first_message_wait: 2s
"#,
    )
}

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
