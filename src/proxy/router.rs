//! First-match-wins routing on the request path. The Host header and absolute-form targets
//! never choose the upstream: only the configured routes do (no open proxy).

use super::access::AccessCache;
use super::handshake::Upgrade;
use super::shadow::ShadowLog;
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
    /// Fallbacks to the backend under way, collapsed (poll routes).
    pub flights: super::fallback::Flights,
    /// Shadow comparisons of this route (`shadow`).
    pub shadow: Arc<ShadowLog>,
    /// WebSocket tunnels open on this route, for its `max_websockets`.
    pub websockets: Arc<AtomicUsize>,
}

/// The routing table built from one config.
pub struct Router {
    pub entries: Vec<RouteEntry>,
}

/// What to do with a request, decided by its route and its kind.
pub enum Dispatch<'a> {
    /// No route matches: `404`.
    NotFound,
    /// A malformed WebSocket handshake: `400` with the reason; it never reaches the backend.
    BadHandshake(Match<'a>, &'static str),
    /// A genuine WebSocket handshake: passed through to the backend (pollgate's relay,
    /// `tunnel.rs`; pingora's tunnel with `fast_paths: false`).
    Tunnel(Match<'a>),
    /// A CORS preflight on a route with `cors`: answered by the gateway.
    Preflight(Match<'a>),
    /// A GET or HEAD on a poll route: route index, its hub, the raw topic segment.
    Poll(usize, &'a Arc<Hub>, &'a str),
    /// Everything else: proxied to the route's upstream.
    Proxy(Match<'a>),
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
        // A route's shadow record (counts, recent mismatches, rate budget) survives a reload:
        // the rollout's steps are reloads, and its evidence must stay.
        let mut shadows: HashMap<&str, &ShadowLog> = HashMap::new();
        if let Some(prev) = previous {
            for e in &prev.entries {
                if let Some(h) = &e.hub {
                    old.insert(&e.route.name, h);
                }
                tunnels.insert(&e.route.name, &e.websockets);
                shadows.insert(&e.route.name, &e.shadow);
            }
        }
        let entries = config
            .routes
            .iter()
            .map(|r| {
                let hub = r.poll.as_ref().map(|poll| match old.get(&*r.name) {
                    Some(h)
                        if same_poll(&h.cache.poll, poll)
                            && h.upstream.socket_addr == r.upstream.socket_addr
                            && h.upstream.tls == r.upstream.tls =>
                    {
                        (*h).clone()
                    }
                    _ => Hub::new(r, poll.clone(), store.clone()),
                });
                let shadow = Arc::new(ShadowLog::new(
                    &r.name,
                    r.poll.as_ref().and_then(|p| p.shadow.clone()),
                    shadows.get(&*r.name).copied(),
                ));
                RouteEntry {
                    route: r.clone(),
                    hub,
                    access: AccessCache::default(),
                    flights: Default::default(),
                    shadow,
                    websockets: tunnels
                        .get(&*r.name)
                        .map(|c| Arc::clone(c))
                        .unwrap_or_default(),
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

    /// What a validated request is, by its route: the one decision both request paths act on.
    /// `preflight`: the request is a CORS preflight (`OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method`), answered by the gateway on routes with `cors`.
    pub fn dispatch<'a>(
        &'a self,
        method: &str,
        path: &'a str,
        upgrade: Upgrade,
        preflight: bool,
    ) -> Dispatch<'a> {
        let Some(m) = self.find(path) else {
            return Dispatch::NotFound;
        };
        if preflight && m.entry.route.cors.is_some() {
            return Dispatch::Preflight(m);
        }
        match upgrade {
            Upgrade::Invalid(reason) => return Dispatch::BadHandshake(m, reason),
            Upgrade::WebSocket => return Dispatch::Tunnel(m),
            Upgrade::Other | Upgrade::None => {}
        }
        match (&m.entry.hub, m.topic) {
            (Some(hub), Some(topic)) if method == "GET" || method == "HEAD" => {
                Dispatch::Poll(m.index, hub, topic)
            }
            _ => Dispatch::Proxy(m),
        }
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
        && a.max_sse_streams == b.max_sse_streams
        && a.sse_heartbeat == b.sse_heartbeat
        && a.sse_retry == b.sse_retry
        && a.max_stale == b.max_stale
        && a.ping_interval == b.ping_interval
        && a.reconnect_min == b.reconnect_min
        && a.reconnect_max == b.reconnect_max
        && a.cursor_param == b.cursor_param
        && a.hold_on == b.hold_on
        && a.response_headers == b.response_headers
    // `shadow` is left out: it shapes neither the cache nor the subscription, and it is read
    // from the route's `ShadowLog`, rebuilt with every config. Switching `serve` to `cache`
    // must not empty the cache it is about to serve from.
}
