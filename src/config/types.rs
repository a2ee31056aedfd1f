//! Validated, typed configuration: what the rest of pollgate runs on.
//!
//! Built only by [`super::Config::from_yaml`], so every value here has passed validation.

use crate::tls::Identity;
use pingora_core::tls::x509::X509;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Default timeouts, documented in `docs/configuration.md`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_WEBSOCKET_IDLE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
pub const DEFAULT_MAX_TOPICS: usize = 10_000;
pub const DEFAULT_MAX_HELD_POLLS: usize = 10_000;
pub const DEFAULT_MAX_SSE_STREAMS: usize = 10_000;
pub const DEFAULT_SSE_HEARTBEAT: Duration = Duration::from_secs(15);
pub const DEFAULT_SSE_RETRY: Duration = Duration::from_secs(3);
pub const DEFAULT_HISTORY: usize = 64;
pub const DEFAULT_FIRST_MESSAGE_WAIT: Duration = Duration::from_secs(1);
pub const DEFAULT_IDLE_UNSUBSCRIBE: Duration = Duration::from_secs(300);
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1 << 20;
/// The largest `max_message_bytes` a route may set: what one subscription socket may buffer
/// follows from it.
pub const MAX_MESSAGE_BYTES_LIMIT: usize = 64 << 20;
pub const DEFAULT_MAX_STALE: Duration = Duration::from_secs(60);
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(15);
pub const DEFAULT_RECONNECT_MIN: Duration = Duration::from_millis(100);
pub const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_CONNECTIONS: usize = 50_000;
pub const DEFAULT_MAX_WEBSOCKETS: usize = 10_000;
pub const DEFAULT_MAX_REQUEST_HEADER_BYTES: usize = 32 * 1024;
pub const DEFAULT_MAX_REQUEST_LINE_BYTES: usize = 8 * 1024;
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_CLIENT_READ_BUFFER_BYTES: usize = 0;
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_GRACE_PERIOD_SECONDS: u64 = 5;
pub const DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS: u64 = 5;

#[derive(Debug, Clone)]
pub struct Config {
    /// Cleartext listeners (may be empty when `tls` is set).
    pub listen: Vec<String>,
    pub tls: Option<TlsListener>,
    /// Prior-knowledge cleartext HTTP/2 on the `listen` addresses.
    pub h2c: bool,
    pub metrics_listen: Option<String>,
    pub server: ServerOptions,
    pub max_topics: usize,
    pub max_held_polls: usize,
    /// EventSource streams open at once across all poll routes.
    pub max_sse_streams: usize,
    /// One log line per request (target `access`).
    pub access_log: bool,
    /// pollgate's connection loop answers polls and forwards bodiless requests itself; `false`
    /// hands every request to pingora's proxy (slower; for diagnosis and differential tests).
    pub fast_paths: bool,
    /// A publish writes the answers of the held polls parked on its topic, in one pass, before
    /// it wakes their tasks (`proxy/poll/park.rs`).
    pub fanout_pass: bool,
    pub limits: Limits,
    pub upstreams: Vec<Arc<Upstream>>,
    pub routes: Vec<Route>,
}

/// The HTTPS listener.
#[derive(Debug, Clone)]
pub struct TlsListener {
    pub listen: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The files' certificate and key, read and checked at validation.
    pub identity: Arc<Identity>,
}

/// Process-wide caps and request-size limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open client connections (idle keep-alive ones included).
    pub max_connections: usize,
    /// WebSocket tunnels passed through at once.
    pub max_websockets: usize,
    /// Request line plus headers, in bytes, before 431.
    pub max_request_header_bytes: usize,
    /// The request line alone, in bytes, before 431.
    pub max_request_line_bytes: usize,
    /// Idle time allowed between requests on a keep-alive client connection.
    pub keepalive_timeout: Duration,
    /// A request head must arrive in full within this (slowloris defence).
    pub header_read_timeout: Duration,
    /// Read buffer per client connection below the request parsers (0: none). The connection
    /// loop and pingora read into their own buffers, so a second one only costs memory per
    /// connection; pingora's default (64 KiB) would dominate the memory of a held poll.
    pub client_read_buffer_bytes: usize,
}

/// pingora's own process options, settable from the YAML (and some from flags).
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub threads: usize,
    pub daemon: bool,
    pub pid_file: Option<String>,
    pub upgrade_sock: Option<String>,
    pub error_log: Option<String>,
    pub grace_period_seconds: u64,
    pub graceful_shutdown_timeout_seconds: u64,
    pub work_stealing: bool,
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    /// As written (`host:port`), for logs and metrics.
    pub address: String,
    /// Resolved once at load time so the request path never blocks on DNS.
    pub socket_addr: SocketAddr,
    pub host: Option<String>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub idle_timeout: Duration,
    pub websocket_idle_timeout: Duration,
    /// Idle connections to this upstream are pooled and reused (off: one connection per
    /// request, for backends whose framing cannot be trusted across requests).
    pub keepalive: bool,
    /// Reached over TLS (`https://`, `wss://`) when set.
    pub tls: Option<UpstreamTls>,
}

/// How an upstream's TLS is set up.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamTls {
    /// Sent as SNI and checked against the certificate.
    pub sni: String,
    /// Roots to trust instead of the system's (read from `ca` at load time).
    pub ca: Option<Arc<Box<[X509]>>>,
    pub verify: bool,
}

#[derive(Debug, Clone)]
pub struct Route {
    pub name: Arc<str>,
    pub matcher: Matcher,
    pub upstream: Arc<Upstream>,
    /// Per-route cap on WebSocket tunnels.
    pub max_websockets: Option<usize>,
    /// Present on `path:` routes with a `subscribe:` block.
    pub poll: Option<Arc<PollRoute>>,
    /// Cross-origin rules: a poll route's own or the top-level default; a proxy route's own.
    pub cors: Option<Arc<Cors>>,
}

/// Cross-origin access rules (CORS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cors {
    pub origins: Origins,
    /// Request headers allowed in a preflight, lowercase, pollgate's own included.
    pub allow_headers: Vec<String>,
    /// Response headers a page may read.
    pub expose_headers: Vec<String>,
    pub allow_credentials: bool,
    pub max_age: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origins {
    /// `"*"`: any origin, no credentials.
    Any,
    /// Exact origins (`scheme://host[:port]`, lowercase).
    List(Vec<String>),
}

/// What starts a hold on a poll route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldOn {
    /// `Prefer: wait=N`.
    pub prefer: bool,
    /// The route's `cursor_param` in the query.
    pub cursor: bool,
    /// Any `If-None-Match` (what legacy long-pollers and browsers' caches both send).
    pub if_none_match: bool,
    /// These query parameters, present with any value.
    pub query: Vec<String>,
}

impl Default for HoldOn {
    fn default() -> HoldOn {
        HoldOn {
            prefer: true,
            cursor: true,
            if_none_match: false,
            query: Vec::new(),
        }
    }
}

/// Shadow verification of a poll route.
#[derive(Debug, Clone, PartialEq)]
pub struct Shadow {
    pub sample: f64,
    pub max_per_second: u32,
    /// Every poll is answered by the backend; the cache is only compared.
    pub serve_backend: bool,
    /// Response headers compared besides status and body (lowercase).
    pub headers: Vec<String>,
}

/// How a route matches a request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Matcher {
    /// `prefix: "/api/"`.
    Prefix(String),
    /// `path: "/api/prices/{topic}"`: literal `prefix`, one segment, literal `suffix`.
    Template { prefix: String, suffix: String },
    /// `path: "/exact"` with no `{topic}`.
    Exact(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Latest,
    Since,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    Public,
    AuthRequest { path: String, cache_for: Duration },
}

#[derive(Debug, Clone)]
pub struct PollRoute {
    pub mode: Mode,
    pub content_type: String,
    pub history: usize,
    pub id_pointer: Option<String>,
    pub cursor_param: String,
    pub long_poll: Duration,
    pub max_wait: Duration,
    pub first_message_wait: Duration,
    pub idle_unsubscribe: Duration,
    pub max_topics: Option<usize>,
    pub max_held_polls: Option<usize>,
    /// EventSource streams open at once on this route (the global cap also applies).
    pub max_sse_streams: Option<usize>,
    /// Silence on an EventSource stream after which a comment line is sent.
    pub sse_heartbeat: Duration,
    /// The `retry:` hint at the start of an EventSource stream.
    pub sse_retry: Duration,
    pub access: Access,
    pub subscribe: Subscribe,
    pub max_message_bytes: usize,
    pub max_stale: Duration,
    pub ping_interval: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub hold_on: HoldOn,
    /// Added to every answer from the cache, in file order.
    pub response_headers: Arc<[(String, http::HeaderValue)]>,
    pub shadow: Option<Shadow>,
}

impl PollRoute {
    /// Whether incoming messages must be parsed as JSON (to cut a payload or read an id).
    pub fn payload_pointer_or_id(&self) -> bool {
        self.subscribe.payload_pointer.is_some()
            || (self.mode == Mode::Since && self.id_pointer.is_some())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Upstream WebSocket path; `{topic}` is replaced per topic.
    pub path: String,
    pub send: Option<String>,
    pub unsend: Option<String>,
    pub topic_pointer: Option<String>,
    pub payload_pointer: Option<String>,
    /// Header values with `${ENV}` already expanded.
    pub headers: Vec<(String, String)>,
}

impl Subscribe {
    /// One shared socket for all topics (the path has no `{topic}`).
    pub fn multiplexed(&self) -> bool {
        !self.path.contains("{topic}")
    }
}

impl Config {
    pub fn upstream(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.upstreams.iter().find(|u| u.name == name)
    }
}
