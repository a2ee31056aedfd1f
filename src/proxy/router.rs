//! First-match-wins routing on the request path. The Host header and absolute-form targets
//! never choose the upstream: only the configured routes do (no open proxy).

use super::access::AccessCache;
use crate::cache::Store;
use crate::config::{Config, Matcher, Route};
use crate::subscription::Hub;
use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

/// A route with its runtime parts.
pub struct RouteEntry {
    pub route: Route,
    /// The cache and subscriptions of a poll route.
    pub hub: Option<Arc<Hub>>,
    /// Cached `auth_request` decisions (poll routes with `access.auth_request`).
    pub access: AccessCache,
    /// WebSocket tunnels open on this route, for its `max_websockets`.
    pub websockets: Arc<AtomicUsize>,
    /// Idle upstream connections of the plain-proxy fast path.
    pub pool: super::forward::Pool,
}

/// The routing table built from one config.
pub struct Router {
    pub entries: Vec<RouteEntry>,
}

/// A matched route and, on template routes, the raw (still percent-encoded) topic segment.
pub struct Match<'a> {
    pub index: usize,
    pub entry: &'a RouteEntry,
    pub topic: Option<&'a str>,
}

impl Router {
    /// Builds the table; `previous` hubs are reused for poll routes whose polling config is
    /// unchanged, so a reload keeps their subscriptions and cache.
    pub fn build(config: &Config, store: &Store, previous: Option<&Router>) -> Router {
        let mut old: HashMap<&str, &Arc<Hub>> = HashMap::new();
        // Open tunnels keep counting against their route's cap across a reload.
        let mut tunnels: HashMap<&str, &Arc<AtomicUsize>> = HashMap::new();
        if let Some(prev) = previous {
            for e in &prev.entries {
                if let Some(h) = &e.hub {
                    old.insert(&e.route.name, h);
                }
                tunnels.insert(&e.route.name, &e.websockets);
            }
        }
        let entries = config
            .routes
            .iter()
            .map(|r| {
                let hub = r.poll.as_ref().map(|poll| match old.get(&*r.name) {
                    Some(h)
                        if same_poll(&h.cache.poll, poll)
                            && h.upstream.socket_addr == r.upstream.socket_addr =>
                    {
                        (*h).clone()
                    }
                    _ => Hub::new(r, poll.clone(), store.clone()),
                });
                RouteEntry {
                    route: r.clone(),
                    hub,
                    access: AccessCache::default(),
                    websockets: tunnels
                        .get(&*r.name)
                        .map(|c| Arc::clone(c))
                        .unwrap_or_default(),
                    pool: Default::default(),
                }
            })
            .collect();
        Router { entries }
    }

    /// Hubs in `self` that `next` no longer uses.
    pub fn retired_hubs(&self, next: &Router) -> Vec<Arc<Hub>> {
        self.entries
            .iter()
            .filter_map(|e| e.hub.clone())
            .filter(|h| {
                !next
                    .entries
                    .iter()
                    .any(|n| n.hub.as_ref().is_some_and(|nh| Arc::ptr_eq(nh, h)))
            })
            .collect()
    }

    pub fn hubs(&self) -> impl Iterator<Item = &Arc<Hub>> {
        self.entries.iter().filter_map(|e| e.hub.as_ref())
    }

    pub fn find<'a>(&'a self, path: &'a str) -> Option<Match<'a>> {
        for (index, entry) in self.entries.iter().enumerate() {
            let topic = match &entry.route.matcher {
                Matcher::Prefix(p) => {
                    if !path.starts_with(p.as_str()) {
                        continue;
                    }
                    None
                }
                Matcher::Exact(p) => {
                    if path != p {
                        continue;
                    }
                    None
                }
                Matcher::Template { prefix, suffix } => {
                    let Some(rest) = path.strip_prefix(prefix.as_str()) else {
                        continue;
                    };
                    let Some(seg) = rest.strip_suffix(suffix.as_str()) else {
                        continue;
                    };
                    if seg.is_empty() || seg.contains('/') {
                        continue;
                    }
                    Some(seg)
                }
            };
            return Some(Match {
                index,
                entry,
                topic,
            });
        }
        None
    }
}

fn same_poll(a: &crate::config::PollRoute, b: &crate::config::PollRoute) -> bool {
    // Compare what shapes the cache and the subscription; timings may change freely.
    a.mode == b.mode
        && a.history == b.history
        && a.id_pointer == b.id_pointer
        && a.subscribe == b.subscribe
        && a.max_message_bytes == b.max_message_bytes
        && a.content_type == b.content_type
        && a.access == b.access
        && a.idle_unsubscribe == b.idle_unsubscribe
        && a.long_poll == b.long_poll
        && a.max_wait == b.max_wait
        && a.first_message_wait == b.first_message_wait
        && a.max_topics == b.max_topics
        && a.max_held_polls == b.max_held_polls
        && a.max_stale == b.max_stale
        && a.ping_interval == b.ping_interval
        && a.reconnect_min == b.reconnect_min
        && a.reconnect_max == b.reconnect_max
        && a.cursor_param == b.cursor_param
}

/// Decodes a raw path segment into a topic: percent-decoded, valid UTF-8, 1 to 256 bytes.
/// Borrows when there is nothing to decode (the common case on the cache-hit path).
pub fn decode_topic(raw: &str) -> Result<std::borrow::Cow<'_, str>, &'static str> {
    if !raw.contains('%') {
        if raw.is_empty() {
            return Err("empty topic");
        }
        if raw.len() > 256 {
            return Err("topic longer than 256 bytes");
        }
        if raw.chars().any(|c| c.is_control()) {
            return Err("topic contains control characters");
        }
        return Ok(std::borrow::Cow::Borrowed(raw));
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .ok_or("bad percent-encoding in topic")?;
            let s = std::str::from_utf8(hex).map_err(|_| "bad percent-encoding in topic")?;
            let v = u8::from_str_radix(s, 16).map_err(|_| "bad percent-encoding in topic")?;
            out.push(v);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    if out.is_empty() {
        return Err("empty topic");
    }
    if out.len() > 256 {
        return Err("topic longer than 256 bytes");
    }
    let s = String::from_utf8(out).map_err(|_| "topic is not valid UTF-8")?;
    if s.chars().any(|c| c.is_control()) {
        return Err("topic contains control characters");
    }
    Ok(std::borrow::Cow::Owned(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_decode_and_are_bounded() {
        assert_eq!(decode_topic("btc-usd").unwrap(), "btc-usd");
        assert_eq!(decode_topic("a%20b").unwrap(), "a b");
        assert_eq!(decode_topic("%C3%BC").unwrap(), "ü");
        assert!(decode_topic("%ff").is_err());
        assert!(decode_topic("%zz").is_err());
        assert!(decode_topic("%2").is_err());
        assert!(decode_topic(&"a".repeat(257)).is_err());
        assert!(decode_topic(&"a".repeat(256)).is_ok());
        assert!(decode_topic("%00").is_err());
    }
}
