//! pollgate: a pingora gateway that answers legacy HTTP pollers from a per-topic cache kept fresh
//! by the gateway's own upstream WebSocket subscriptions.
//!
//! # Map
//! - [`config`]: the YAML file (`file.rs`, serde mirror) validated into typed config
//!   (`types.rs`); every problem carries its key path and line.
//! - [`server`]: builds the pingora `Server` from a config: proxy service, admin service,
//!   housekeeper.
//! - [`proxy`]: every client connection. [`proxy::connection`] owns it from accept to close
//!   and offers each request to the fast paths first: [`proxy::fast`] answers plain polls
//!   straight from the cache, [`proxy::forward`] relays bodiless GET/HEAD on proxy routes
//!   over pooled upstream connections. Everything else goes to pingora's proxy with the
//!   `ProxyHttp` implementation ([`proxy::Gateway`]): [`proxy::router`] picks the route (first
//!   match wins, by path only), [`proxy::handshake`] tells genuine WebSocket handshakes from
//!   malformed ones, [`proxy::poll`] answers every kind of poll from the cache,
//!   [`proxy::headers`] keeps hop-by-hop headers from crossing and sets `X-Forwarded-*`/`Via`.
//! - [`cache`]: per route, a map of topics; each topic a ring of messages with a change signal.
//! - [`subscription`]: a [`subscription::Hub`] per poll route owns its cache and the upstream
//!   WebSocket clients that feed it (one socket per topic or one shared socket), reconnecting
//!   with jittered backoff.
//! - [`limits`]: counting caps (connections, tunnels, topics, held polls) with RAII slots.
//! - [`background`]: evicts idle topics, reloads on SIGHUP, answers held polls on shutdown.
//! - [`admin`]: `/metrics`, `/healthz`, `/readyz`, `/topics` and a status page on
//!   `metrics_listen`. [`metrics`]: every Prometheus metric.
//! - [`sample_backend`] and [`demo`]: the built-in backend behind `pollgate demo` and benchmarks.
//!
//! # One request
//! ```text
//! client ──► connection (slot, head deadline, keep-alive loop) ──► fast::parse (httparse)
//!   │ plain GET/HEAD, warm topic ──► fast::serve: pre-built head or array (hit/304/held)
//!   │ plain GET/HEAD, proxy route ──► forward::serve ──► pooled upstream connection
//!   │ anything else (bodies, upgrades, auth_request, cold topics, errors):
//!   └─► pingora ──► Gateway::request_filter ──► Router::find(path)
//!               │ no route: 404 JSON          │ malformed WebSocket handshake: 400
//!               │  poll route, GET/HEAD ──► poll::serve ──► Hub::topic (subscribe once)
//!               │        warm: answer from Topic (hit / 304 / held until news / since-array)
//!               │        cold or stale: fall through to the proxy (fallback)
//!               └─► upstream_peer ──► backend (plain HTTP, fallback, or WebSocket tunnel)
//! backend WebSocket ──► subscription ──► Hub::ingest ──► Topic::publish ──► wakes held polls
//! ```

#![forbid(unsafe_code)]

pub mod admin;
pub mod background;
pub mod cache;
pub mod config;
pub mod demo;
pub mod limits;
pub mod listen;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod sample_backend;
pub mod server;
pub mod subscription;
pub mod topic;
