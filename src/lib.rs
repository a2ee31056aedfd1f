//! pollgate: a pingora gateway that answers legacy HTTP pollers from a per-topic cache kept fresh
//! by the gateway's own upstream WebSocket subscriptions.
//!
//! # Map
//! - [`config`]: the YAML file (`file.rs`, serde mirror) validated into typed config
//!   (`types.rs`); every problem carries its key path and line.
//! - [`server`]: builds the pingora `Server` from a config: proxy service, admin service,
//!   housekeeper; [`accept`] moves each accepted connection into a task of its own; [`listen`] reserves port-0 listeners and announces the bound addresses;
//!   [`tls`] gives the HTTPS listener's handshakes the certificate a reload last installed.
//! - [`proxy`]: every client request. [`proxy::connection`] owns each connection; every head is
//!   judged by the one validator, [`proxy::request`]; [`proxy::router`] decides what the
//!   request is ([`proxy::router::Dispatch`]); [`proxy::poll`] decides every poll's answer
//!   ([`proxy::answer::Answer`]), or for `Accept: text/event-stream` each step of an
//!   EventSource stream ([`proxy::poll::stream`]), written by [`proxy::wire`] (pollgate's
//!   connections) or [`proxy::session`] (pingora's). Bodiless requests are forwarded by [`proxy::forward`]
//!   (answers read by [`proxy::response`]) over connections from [`proxy::upstream`], which
//!   also gives poll fallbacks and [`proxy::access`] (`auth_request`) pingora's HTTP/1
//!   client; a WebSocket handshake is forwarded the same way and, after its `101`, relayed
//!   both ways by [`proxy::tunnel`]; bodies go to pingora's proxy with [`proxy::Gateway`]. [`proxy::headers`]: one set of hop-by-hop and
//!   `X-Forwarded-*` rules for both. [`proxy::shadow`]: sampled polls also asked of the backend,
//!   off the client's path, and compared with the cache (`shadow` on a poll route).
//! - [`topic`]: topic names (dot segments refused) and the one encoder for upstream paths.
//! - [`cache`]: per route, a map of topics; each topic a ring of messages with a change signal;
//!   the ledger of answers a publish made due (`due.rs`), so a fan-out's answers go out before
//!   the next steps (hang-ups, re-polls) of the clients answered first; the held polls parked
//!   on a topic (`parked.rs`), whose answers a publish writes in one pass (`fanout_pass`).
//! - [`subscription`]: a [`subscription::Hub`] per poll route owns its cache and the upstream
//!   WebSocket clients that feed it (one socket per topic or one shared socket), reconnecting
//!   with jittered backoff.
//! - [`connect`]: every connection to a backend (pingora's connector; TLS with OpenSSL when an
//!   upstream has `tls`), for the proxy paths and the subscriptions (`wss://`) alike.
//! - [`limits`]: counting caps (connections, tunnels, topics, held polls) with RAII slots.
//! - [`background`]: evicts idle topics, reloads on SIGHUP, answers held polls on shutdown.
//! - [`admin`]: `/metrics`, `/healthz`, `/readyz`, `/topics` and a status page on
//!   `metrics_listen`. [`metrics`]: every Prometheus metric.
//! - [`sample_backend`] and [`demo`]: the built-in backend behind `pollgate demo` and benchmarks.
//!
//! # One request
//! ```text
//! client ──► connection (slot, head deadline) ──► request::parse ── refused: 400/431/408
//!   │ Router::dispatch ── not found: 404 ── malformed handshake: 400
//!   │ poll (GET/HEAD) ──► poll::serve ──► Answer ──► wire (or session) ──► client
//!   │     Accept: text/event-stream ──► EventStream: head, then each Step as it comes
//!   │     Hub::topic (subscribe once) ── warm: hit / 304 / held until news / since-array
//!   │     cold or too stale ──► fallback ──┐
//!   │ proxy, no body ──► forward ──────────┴──► upstream (pingora's connector, pooled) ──► backend
//!   │ WebSocket handshake ──► forward ──► 101 ──► tunnel (both sockets relayed) ◄──► backend
//!   └ body (or fast_paths: false) ──► pingora ──► Gateway
//!         (the same dispatch, poll core and header rules) ──► backend / pingora's tunnel
//! backend WebSocket ──► subscription ──► Hub::ingest ──► Topic::publish ──► writes parked polls'
//!                                        answers (poll::park), then wakes held polls and streams
//! ```

#![forbid(unsafe_code)]

pub mod accept;
pub mod admin;
pub mod background;
pub mod cache;
pub mod config;
pub mod connect;
pub mod demo;
pub mod limits;
pub mod listen;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod sample_backend;
pub mod server;
pub mod subscription;
pub mod tls;
pub mod topic;
