//! The serde mirror of the YAML file: field names here are the config contract.
//!
//! Nothing in here is trusted: `validate.rs` turns it into the typed [`super::Config`].
//! Every struct denies unknown keys so a typo is an error, not a silently ignored setting. The
//! `///` comments become the descriptions of `docs/pollgate.schema.json`.

use super::duration::ConfDuration;
use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::BTreeMap;

/// One value or a list of them (`listen: "a"` or `listen: ["a", "b"]`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// The HTTPS listener: its address and its certificate, reloaded on SIGHUP.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileTls {
    /// Address (`ip:port`) of the HTTPS listener.
    pub listen: String,
    /// PEM file: the server certificate, then any intermediate certificates.
    pub cert: String,
    /// PEM file: the certificate's private key.
    pub key: String,
}

/// pollgate configuration file.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "pollgate configuration")]
pub struct FileConfig {
    /// Client-facing cleartext HTTP listener address (`ip:port`), or a list of them. May be
    /// left out when `tls` is given.
    pub listen: Option<OneOrMany>,
    /// Client-facing HTTPS listener.
    pub tls: Option<FileTls>,
    /// Accept prior-knowledge cleartext HTTP/2 (h2c) on the `listen` addresses beside HTTP/1.1
    /// (default false).
    pub h2c: Option<bool>,
    /// Admin listener: `/metrics`, `/healthz`, `/readyz`, `/topics` and the status page.
    pub metrics_listen: Option<String>,
    /// pingora worker threads (default: the number of CPUs).
    pub threads: Option<usize>,
    /// Run in the background (also `-d`).
    pub daemon: Option<bool>,
    /// pid file written in daemon mode.
    pub pid_file: Option<String>,
    /// Unix socket used to hand listening sockets to a new process on graceful upgrade (`-u`).
    pub upgrade_sock: Option<String>,
    /// File pingora's own error log goes to in daemon mode.
    pub error_log: Option<String>,
    /// After SIGTERM, seconds to keep the process up for in-flight requests (default 5).
    pub grace_period_seconds: Option<u64>,
    /// After the grace period, seconds allowed for the runtimes to stop (default 5).
    pub graceful_shutdown_timeout_seconds: Option<u64>,
    /// Let idle worker threads take tasks from busy ones (default true with 2 threads or more,
    /// false with 1).
    pub work_stealing: Option<bool>,
    /// Topics cached across all poll routes (default 10000).
    pub max_topics: Option<usize>,
    /// Long polls held at once across all poll routes (default 10000).
    pub max_held_polls: Option<usize>,
    /// EventSource (Server-Sent Events) streams open at once across all poll routes (default
    /// 10000).
    pub max_sse_streams: Option<usize>,
    /// One log line per request, target `access` (default true).
    pub access_log: Option<bool>,
    /// Answer polls, forward bodiless requests and relay WebSocket tunnels in pollgate's own
    /// connection loop (default true); false sends every request through pingora's proxy
    /// (slower; for diagnosis).
    pub fast_paths: Option<bool>,
    /// A publish writes the answers of the held polls it answers itself, in one pass, before
    /// their tasks wake (default: true with one thread, false with more).
    pub fanout_pass: Option<bool>,
    /// Open client connections, idle keep-alive ones included (default 50000).
    pub max_connections: Option<usize>,
    /// WebSocket tunnels passed through at once (default 10000).
    pub max_websockets: Option<usize>,
    /// Request line plus headers, in bytes, before 431 (default 32768).
    pub max_request_header_bytes: Option<usize>,
    /// Request line alone, in bytes, before 431 (default 8192).
    pub max_request_line_bytes: Option<usize>,
    /// Idle time allowed between requests on a keep-alive client connection (default 60s).
    pub keepalive_timeout: Option<ConfDuration>,
    /// A request head must arrive in full within this (default 10s; slowloris defence).
    pub header_read_timeout: Option<ConfDuration>,
    /// Extra read buffer per client connection, in bytes, 0-1048576 (default 0: none; the
    /// request parsers read into their own buffers).
    pub client_read_buffer_bytes: Option<usize>,
    /// Cross-origin access (CORS) for every poll route, unless the route sets its own.
    pub cors: Option<FileCors>,
    /// Named backends.
    pub upstreams: BTreeMap<String, FileUpstream>,
    /// Routes, first match wins in file order.
    pub routes: Vec<FileRoute>,
}

/// A backend reached over plain HTTP/1.1 and WebSocket.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileUpstream {
    /// `host:port`, resolved once when the config is loaded.
    pub address: String,
    /// Host header sent upstream; by default the client's Host is kept.
    pub host: Option<String>,
    /// TCP connect timeout (default 5s).
    pub connect_timeout: Option<ConfDuration>,
    /// Longest wait for upstream bytes on a plain request (default 60s).
    pub read_timeout: Option<ConfDuration>,
    /// Longest wait to write to the upstream (default 60s).
    pub write_timeout: Option<ConfDuration>,
    /// Idle upstream keep-alive connections are closed after this (default 60s).
    pub idle_timeout: Option<ConfDuration>,
    /// A passed-through WebSocket tunnel is closed once nothing has crossed it, either way,
    /// for this long (default 15m).
    pub websocket_idle_timeout: Option<ConfDuration>,
    /// Reuse idle connections to this upstream (default true); false opens one connection per
    /// request and asks the upstream to close it.
    pub keepalive: Option<bool>,
    /// Reach this upstream over TLS (`https://`, `wss://`): `true` verifies its certificate
    /// against the system's roots, a map sets the name, the roots and verification.
    pub tls: Option<FileUpstreamTls>,
}

/// An upstream's TLS: `true`/`false`, or the settings.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum FileUpstreamTls {
    On(bool),
    Settings(FileUpstreamTlsSettings),
}

/// TLS settings of an upstream.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileUpstreamTlsSettings {
    /// Server name sent (SNI) and required in the certificate (default: `host`, else the
    /// address's host).
    pub sni: Option<String>,
    /// PEM file of the certificate authorities to trust instead of the system's.
    pub ca: Option<String>,
    /// Verify the upstream's certificate and name (default true). `false` is for tests only.
    pub verify: Option<bool>,
}

/// A route: `prefix` (proxied) or `path` with `{topic}` and `subscribe` (a poll route).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileRoute {
    /// Route name: a metric label, so letters, digits, `_` and `-` only.
    pub name: String,
    /// Path prefix match.
    pub prefix: Option<String>,
    /// Path template with one `{topic}` segment (poll routes), or an exact path.
    pub path: Option<String>,
    /// Name of the upstream requests on this route go to.
    pub upstream: String,
    /// Cap on WebSocket tunnels passed through on this route.
    pub max_websockets: Option<usize>,
    /// Poll routes: `public`, or `{ auth_request: PATH, cache_for: DURATION }`.
    pub access: Option<FileAccess>,
    /// Poll routes: the upstream WebSocket subscription that feeds the cache.
    pub subscribe: Option<FileSubscribe>,
    /// Poll routes: `latest` (newest message) or `since` (every message after a cursor).
    pub mode: Option<String>,
    /// Poll routes: Content-Type of answers (default application/json).
    pub content_type: Option<String>,
    /// Since mode: messages kept per topic (default 64).
    pub history: Option<usize>,
    /// Since mode: JSON pointer to the message id used as the cursor.
    pub id_pointer: Option<String>,
    /// Since mode: query parameter carrying the client's cursor (default `since`).
    pub cursor_param: Option<String>,
    /// Hold polls that have nothing new up to this long (default 0: answer at once).
    pub long_poll: Option<ConfDuration>,
    /// Cap on `Prefer: wait=N` (default `long_poll`, or 30s without it).
    pub max_wait: Option<ConfDuration>,
    /// Cold topic: wait this long for the first upstream message before falling back (default 1s).
    pub first_message_wait: Option<ConfDuration>,
    /// Drop a topic's subscription when no poll asked for it this long (default 5m).
    pub idle_unsubscribe: Option<ConfDuration>,
    /// Topics cached for this route.
    pub max_topics: Option<usize>,
    /// Long polls held at once on this route.
    pub max_held_polls: Option<usize>,
    /// Poll routes: EventSource streams open at once on this route.
    pub max_sse_streams: Option<usize>,
    /// Poll routes: an EventSource stream with nothing to send for this long gets a comment
    /// line, so intermediaries keep it open (default 15s).
    pub sse_heartbeat: Option<ConfDuration>,
    /// Poll routes: the `retry:` reconnection delay an EventSource stream starts with (default
    /// 3s).
    pub sse_retry: Option<ConfDuration>,
    /// Upstream messages larger than this are dropped and counted (default 1 MiB).
    pub max_message_bytes: Option<usize>,
    /// While a subscription is down, serve the last message this long (default 60s).
    pub max_stale: Option<ConfDuration>,
    /// Ping the upstream socket this often; silence for 3 intervals is a stall (default 15s).
    pub ping_interval: Option<ConfDuration>,
    /// Reconnect backoff (exponential, full jitter).
    pub reconnect: Option<FileReconnect>,
    /// Poll routes: what starts a hold: `prefer` (`Prefer: wait=N`), `cursor` (the
    /// `cursor_param` present), `if-none-match`, `query:NAME` (default `[prefer, cursor]`).
    pub hold_on: Option<Vec<String>>,
    /// Poll routes: headers added to every answer from the cache.
    pub response_headers: Option<BTreeMap<String, String>>,
    /// Cross-origin access (CORS): on a poll route it overrides the top-level `cors`; on a
    /// proxy route it replaces the backend's own CORS answers.
    pub cors: Option<FileCors>,
    /// Poll routes: compare sampled answers from the cache with the backend's own.
    pub shadow: Option<FileShadow>,
}

/// Cross-origin access (CORS).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileCors {
    /// `"*"`, or a list of origins (`https://app.example.com`).
    pub allow_origins: OneOrMany,
    /// Request headers a page may send, besides those pollgate always allows.
    pub allow_headers: Option<Vec<String>>,
    /// Response headers a page may read (default `ETag`, `Age`, `Pollgate-Cursor`,
    /// `Pollgate-Gap`).
    pub expose_headers: Option<Vec<String>>,
    /// Allow cookies and `Authorization` (not with `allow_origins: "*"`; default false).
    pub allow_credentials: Option<bool>,
    /// How long a browser may cache a preflight answer (default 10m).
    pub max_age: Option<ConfDuration>,
}

/// Shadow verification of a poll route.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileShadow {
    /// Share of polls also sent to the backend, 0 to 1.
    pub sample: f64,
    /// At most this many backend requests a second (default 10).
    pub max_per_second: Option<u32>,
    /// `cache` (default): answer from the cache, compare with the backend; `backend`: answer
    /// every poll from the backend, the cache only compared.
    pub serve: Option<String>,
    /// Response headers compared besides status and body.
    pub headers: Option<Vec<String>>,
}

/// Reconnect backoff bounds.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileReconnect {
    /// First delay (default 100ms).
    pub min: Option<ConfDuration>,
    /// Largest delay (default 30s).
    pub max: Option<ConfDuration>,
}

/// Who may read a poll route's cache.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum FileAccess {
    /// `public`: anyone.
    Keyword(String),
    /// Ask the backend per credential and topic.
    Auth(FileAuth),
}

/// Access decided by the backend.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileAuth {
    /// Path on the route's upstream asked (GET, with the client's Authorization and Cookie).
    pub auth_request: String,
    /// How long a decision is cached per credential and topic (default 30s).
    pub cache_for: Option<ConfDuration>,
}

/// The upstream WebSocket subscription of a poll route.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSubscribe {
    /// WebSocket path; with `{topic}` one socket per topic, without it one shared socket.
    pub path: String,
    /// Frame sent after connecting (and after each reconnect); `{topic}` is filled in.
    pub send: Option<String>,
    /// Frame sent when a topic is dropped from a shared socket.
    pub unsend: Option<String>,
    /// Shared socket: JSON pointer to the topic of an incoming message.
    pub topic_pointer: Option<String>,
    /// JSON pointer to the part of a message to cache (default: the whole message).
    pub payload_pointer: Option<String>,
    /// Extra handshake headers; `${VAR}` is expanded from the environment.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}
