//! File types to typed config: every problem is collected, each with its key path.

use super::answering;
use super::file::{
    FileAccess, FileConfig, FileReconnect, FileRoute, FileSubscribe, FileTls, FileUpstream,
    FileUpstreamTls, FileUpstreamTlsSettings,
};
use super::locate::Seg;
use super::problems::{key, with, Problem, Problems};
use super::types::*;
use crate::tls::{Identity, Part};
use pingora_core::tls::x509::X509;
use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Validates a parsed file; `env` resolves `${VAR}` in subscription headers.
pub fn validate(
    file: FileConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, Vec<Problem>> {
    let mut p = Problems::default();

    let listen_given = file.listen.is_some();
    let listen = file.listen.map(|l| l.into_vec()).unwrap_or_default();
    if listen.is_empty() && (listen_given || file.tls.is_none()) {
        p.add(
            &[key("listen")],
            if listen_given {
                "at least one address is required"
            } else {
                "a `listen` address or a `tls` listener is required"
            },
        );
    }
    for (i, addr) in listen.iter().enumerate() {
        let path = if listen.len() == 1 {
            vec![key("listen")]
        } else {
            vec![key("listen"), Seg::Index(i)]
        };
        if addr.parse::<SocketAddr>().is_err() {
            p.add(&path, format!("`{addr}` is not an ip:port address"));
        }
    }
    if let Some(m) = &file.metrics_listen {
        match m.parse::<SocketAddr>() {
            Err(_) => p.add(
                &[key("metrics_listen")],
                format!("`{m}` is not an ip:port address"),
            ),
            // Port 0 twice is two different ports, each picked by the kernel.
            Ok(a) if a.port() != 0 && listen.contains(m) => p.add(
                &[key("metrics_listen")],
                "must differ from every `listen` address (admin endpoints are never public)",
            ),
            Ok(_) => {}
        }
    }
    let tls = file
        .tls
        .and_then(|t| tls_listener(t, &listen, &file.metrics_listen, &mut p));
    let threads = file.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    if !(1..=256).contains(&threads) {
        p.add(&[key("threads")], "must be between 1 and 256");
    }
    let max_topics = file.max_topics.unwrap_or(DEFAULT_MAX_TOPICS);
    if max_topics == 0 {
        p.add(&[key("max_topics")], "must be at least 1");
    }
    let max_held_polls = file.max_held_polls.unwrap_or(DEFAULT_MAX_HELD_POLLS);
    let max_sse_streams = file.max_sse_streams.unwrap_or(DEFAULT_MAX_SSE_STREAMS);
    for (k, v, lo, hi) in [
        ("max_connections", file.max_connections, 1, 10_000_000),
        ("max_websockets", file.max_websockets, 0, 10_000_000),
        (
            "max_request_header_bytes",
            file.max_request_header_bytes,
            256,
            1 << 20,
        ),
        (
            "max_request_line_bytes",
            file.max_request_line_bytes,
            64,
            1 << 20,
        ),
        (
            "client_read_buffer_bytes",
            file.client_read_buffer_bytes,
            0,
            1 << 20,
        ),
    ] {
        if let Some(v) = v {
            if !(lo..=hi).contains(&v) {
                p.add(&[key(k)], format!("must be between {lo} and {hi}"));
            }
        }
    }
    for (k, v) in [
        ("keepalive_timeout", file.keepalive_timeout),
        ("header_read_timeout", file.header_read_timeout),
    ] {
        if v.is_some_and(|d| d.0 < Duration::from_millis(100)) {
            p.add(&[key(k)], "must be at least 100ms");
        }
    }

    let mut upstreams = Vec::new();
    for (name, u) in file.upstreams {
        let path = vec![key("upstreams"), key(&name)];
        if let Some(up) = upstream(&name, u, &path, &mut p) {
            upstreams.push(Arc::new(up));
        }
    }

    let default_cors = file.cors.map(|c| {
        Arc::new(answering::cors(
            c,
            &answering::POLL_REQUEST_HEADERS,
            &[],
            &mut p,
        ))
    });
    let mut routes = Vec::new();
    let mut names = HashSet::new();
    if file.routes.is_empty() {
        p.add(&[key("routes")], "at least one route is required");
    }
    for (i, r) in file.routes.into_iter().enumerate() {
        let path = vec![key("routes"), Seg::Index(i)];
        if !names.insert(r.name.clone()) {
            p.add(
                &with(&path, key("name")),
                format!("duplicate route name \"{}\"", r.name),
            );
        }
        if let Some(route) = route(r, &path, &upstreams, default_cors.as_ref(), env, &mut p) {
            routes.push(route);
        }
    }

    if !p.0.is_empty() {
        return Err(p.0);
    }
    Ok(Config {
        listen,
        tls,
        h2c: file.h2c.unwrap_or(false),
        metrics_listen: file.metrics_listen,
        server: ServerOptions {
            threads,
            daemon: file.daemon.unwrap_or(false),
            pid_file: file.pid_file,
            upgrade_sock: file.upgrade_sock,
            error_log: file.error_log,
            grace_period_seconds: file
                .grace_period_seconds
                .unwrap_or(DEFAULT_GRACE_PERIOD_SECONDS),
            graceful_shutdown_timeout_seconds: file
                .graceful_shutdown_timeout_seconds
                .unwrap_or(DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS),
            // One thread has nobody to steal from; its single-threaded runtime runs
            // a fan-out in wake order and costs less per answer (benchmarks.md, 3b).
            work_stealing: file.work_stealing.unwrap_or(threads > 1),
        },
        max_topics,
        max_held_polls,
        max_sse_streams,
        access_log: file.access_log.unwrap_or(true),
        fast_paths: file.fast_paths.unwrap_or(true),
        // With one thread the tasks would write the answers one after another anyway, and the
        // pass spares each its wake-up first; with more, the tasks write on every worker at
        // once, which one pass cannot (benchmarks.md, 3b).
        fanout_pass: file.fanout_pass.unwrap_or(threads == 1),
        limits: Limits {
            max_connections: file.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS),
            max_websockets: file.max_websockets.unwrap_or(DEFAULT_MAX_WEBSOCKETS),
            max_request_header_bytes: file
                .max_request_header_bytes
                .unwrap_or(DEFAULT_MAX_REQUEST_HEADER_BYTES),
            max_request_line_bytes: file
                .max_request_line_bytes
                .unwrap_or(DEFAULT_MAX_REQUEST_LINE_BYTES),
            keepalive_timeout: file
                .keepalive_timeout
                .map(|d| d.0)
                .unwrap_or(DEFAULT_KEEPALIVE_TIMEOUT),
            header_read_timeout: file
                .header_read_timeout
                .map(|d| d.0)
                .unwrap_or(DEFAULT_HEADER_READ_TIMEOUT),
            client_read_buffer_bytes: file
                .client_read_buffer_bytes
                .unwrap_or(DEFAULT_CLIENT_READ_BUFFER_BYTES),
        },
        upstreams,
        routes,
    })
}

fn nonzero(d: Option<super::duration::ConfDuration>, default: Duration) -> Duration {
    d.map(|d| d.0).unwrap_or(default)
}

fn upstream(name: &str, u: FileUpstream, path: &[Seg], p: &mut Problems) -> Option<Upstream> {
    let addr_path = with(path, key("address"));
    let socket_addr = match u.address.to_socket_addrs() {
        Ok(mut it) => match it.next() {
            Some(a) => Some(a),
            None => {
                p.add(
                    &addr_path,
                    format!("`{}` resolves to no address", u.address),
                );
                None
            }
        },
        Err(e) => {
            p.add(
                &addr_path,
                format!("`{}` is not a resolvable host:port ({e})", u.address),
            );
            None
        }
    };
    let out = Upstream {
        name: name.to_string(),
        address: u.address,
        socket_addr: socket_addr?,
        host: u.host,
        connect_timeout: nonzero(u.connect_timeout, DEFAULT_CONNECT_TIMEOUT),
        read_timeout: nonzero(u.read_timeout, DEFAULT_READ_TIMEOUT),
        write_timeout: nonzero(u.write_timeout, DEFAULT_WRITE_TIMEOUT),
        idle_timeout: nonzero(u.idle_timeout, DEFAULT_IDLE_TIMEOUT),
        websocket_idle_timeout: nonzero(u.websocket_idle_timeout, DEFAULT_WEBSOCKET_IDLE_TIMEOUT),
        keepalive: u.keepalive.unwrap_or(true),
        tls: None,
    };
    let tls = match u.tls {
        None | Some(FileUpstreamTls::On(false)) => None,
        Some(FileUpstreamTls::On(true)) => Some(FileUpstreamTlsSettings {
            sni: None,
            ca: None,
            verify: None,
        }),
        Some(FileUpstreamTls::Settings(s)) => Some(s),
    };
    let tls = tls.and_then(|t| upstream_tls(t, &out, &with(path, key("tls")), p));
    let out = Upstream { tls, ..out };
    for (k, d) in [
        ("connect_timeout", out.connect_timeout),
        ("read_timeout", out.read_timeout),
        ("write_timeout", out.write_timeout),
        ("websocket_idle_timeout", out.websocket_idle_timeout),
    ] {
        if d.is_zero() {
            p.add(&with(path, key(k)), "must be greater than zero");
        }
    }
    Some(out)
}

/// An upstream's TLS: the name to ask for (SNI, and what the certificate must name) and the
/// roots, read now so that `-t` and a reload refuse a CA file that would fail every connect.
fn upstream_tls(
    t: FileUpstreamTlsSettings,
    up: &Upstream,
    path: &[Seg],
    p: &mut Problems,
) -> Option<UpstreamTls> {
    let sni = t
        .sni
        .or_else(|| up.host.clone())
        .unwrap_or_else(|| host_of(&up.address).to_string());
    if sni.is_empty() {
        p.add(&with(path, key("sni")), "must not be empty");
        return None;
    }
    let ca = match t.ca {
        None => None,
        Some(file) => match std::fs::read(&file) {
            Err(e) => {
                p.add(&with(path, key("ca")), format!("cannot read {file}: {e}"));
                return None;
            }
            Ok(pem) => match X509::stack_from_pem(&pem) {
                Ok(certs) if !certs.is_empty() => Some(Arc::new(certs.into_boxed_slice())),
                Ok(_) => {
                    p.add(
                        &with(path, key("ca")),
                        format!("{file} holds no PEM certificate"),
                    );
                    return None;
                }
                Err(e) => {
                    p.add(
                        &with(path, key("ca")),
                        format!("{file} is not a PEM certificate list: {e}"),
                    );
                    return None;
                }
            },
        },
    };
    Some(UpstreamTls {
        sni,
        ca,
        verify: t.verify.unwrap_or(true),
    })
}

/// The host part of `host:port` (`[v6]:port` included).
fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

fn route(
    r: FileRoute,
    path: &[Seg],
    upstreams: &[Arc<Upstream>],
    default_cors: Option<&Arc<Cors>>,
    env: &dyn Fn(&str) -> Option<String>,
    p: &mut Problems,
) -> Option<Route> {
    if r.name.is_empty()
        || !r
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        p.add(
            &with(path, key("name")),
            "must be non-empty and use only letters, digits, `_` and `-` (it is a metric label)",
        );
    }
    let upstream = upstreams.iter().find(|u| u.name == r.upstream).cloned();
    if upstream.is_none() {
        p.add(
            &with(path, key("upstream")),
            format!("unknown upstream \"{}\"", r.upstream),
        );
    }
    let matcher = match (&r.prefix, &r.path) {
        (Some(_), Some(_)) => {
            p.add(path, "set either `prefix` or `path`, not both");
            None
        }
        (None, None) => {
            p.add(path, "one of `prefix` or `path` is required");
            None
        }
        (Some(prefix), None) => {
            if !prefix.starts_with('/') {
                p.add(&with(path, key("prefix")), "must start with `/`");
            }
            Some(Matcher::Prefix(prefix.clone()))
        }
        (None, Some(t)) => template(t, &with(path, key("path")), p),
    };

    let is_template = matches!(matcher, Some(Matcher::Template { .. }));
    let is_poll = r.subscribe.is_some();
    let always_allowed: &[&str] = if is_poll {
        &answering::POLL_REQUEST_HEADERS
    } else {
        &[]
    };
    let cors = match r.cors {
        Some(c) => Some(Arc::new(answering::cors(c, always_allowed, path, p))),
        None if is_poll => default_cors.cloned(),
        None => None,
    };
    let poll = match r.subscribe {
        Some(sub) => {
            if !is_template && matcher.is_some() {
                p.add(
                    &with(path, key("path")),
                    "a route with `subscribe` needs `path` with a `{topic}` segment",
                );
            }
            poll_route(
                sub,
                PollKeys {
                    access: r.access,
                    mode: r.mode,
                    content_type: r.content_type,
                    history: r.history,
                    id_pointer: r.id_pointer,
                    cursor_param: r.cursor_param,
                    long_poll: r.long_poll.map(|d| d.0),
                    max_wait: r.max_wait.map(|d| d.0),
                    first_message_wait: r.first_message_wait.map(|d| d.0),
                    idle_unsubscribe: r.idle_unsubscribe.map(|d| d.0),
                    max_topics: r.max_topics,
                    max_held_polls: r.max_held_polls,
                    max_sse_streams: r.max_sse_streams,
                    sse_heartbeat: r.sse_heartbeat.map(|d| d.0),
                    sse_retry: r.sse_retry.map(|d| d.0),
                    max_message_bytes: r.max_message_bytes,
                    max_stale: r.max_stale.map(|d| d.0),
                    ping_interval: r.ping_interval.map(|d| d.0),
                    reconnect: r.reconnect,
                    hold_on: r.hold_on,
                    response_headers: r.response_headers,
                    shadow: r.shadow,
                },
                path,
                env,
                p,
            )
        }
        None => {
            for (k, set) in [
                ("access", r.access.is_some()),
                ("mode", r.mode.is_some()),
                ("content_type", r.content_type.is_some()),
                ("history", r.history.is_some()),
                ("id_pointer", r.id_pointer.is_some()),
                ("cursor_param", r.cursor_param.is_some()),
                ("long_poll", r.long_poll.is_some()),
                ("max_wait", r.max_wait.is_some()),
                ("first_message_wait", r.first_message_wait.is_some()),
                ("idle_unsubscribe", r.idle_unsubscribe.is_some()),
                ("max_topics", r.max_topics.is_some()),
                ("max_held_polls", r.max_held_polls.is_some()),
                ("max_sse_streams", r.max_sse_streams.is_some()),
                ("sse_heartbeat", r.sse_heartbeat.is_some()),
                ("sse_retry", r.sse_retry.is_some()),
                ("max_message_bytes", r.max_message_bytes.is_some()),
                ("max_stale", r.max_stale.is_some()),
                ("ping_interval", r.ping_interval.is_some()),
                ("reconnect", r.reconnect.is_some()),
                ("hold_on", r.hold_on.is_some()),
                ("response_headers", r.response_headers.is_some()),
                ("shadow", r.shadow.is_some()),
            ] {
                if set {
                    p.add(
                        &with(path, key(k)),
                        "only applies to poll routes (add a `subscribe` block)",
                    );
                }
            }
            if is_template {
                p.add(
                    &with(path, key("subscribe")),
                    "a `{topic}` path template is a poll route and needs `subscribe`",
                );
            }
            None
        }
    };
    Some(Route {
        name: Arc::from(r.name.as_str()),
        matcher: matcher?,
        upstream: upstream?,
        max_websockets: r.max_websockets,
        poll: poll.map(Arc::new),
        cors,
    })
}

fn template(t: &str, path: &[Seg], p: &mut Problems) -> Option<Matcher> {
    if !t.starts_with('/') {
        p.add(path, "must start with `/`");
        return None;
    }
    match t.matches("{topic}").count() {
        0 => {
            if t.contains('{') || t.contains('}') {
                p.add(path, "the only placeholder allowed is `{topic}`");
                return None;
            }
            Some(Matcher::Exact(t.to_string()))
        }
        1 => {
            let (prefix, suffix) = t.split_once("{topic}").expect("counted once");
            if !prefix.ends_with('/') || !(suffix.is_empty() || suffix.starts_with('/')) {
                p.add(
                    path,
                    "`{topic}` must be a whole path segment, e.g. /api/prices/{topic}",
                );
                return None;
            }
            if prefix.contains(['{', '}']) || suffix.contains(['{', '}']) {
                p.add(path, "the only placeholder allowed is `{topic}`");
                return None;
            }
            Some(Matcher::Template {
                prefix: prefix.to_string(),
                suffix: suffix.to_string(),
            })
        }
        _ => {
            p.add(path, "`{topic}` may appear only once");
            None
        }
    }
}

struct PollKeys {
    access: Option<FileAccess>,
    mode: Option<String>,
    content_type: Option<String>,
    history: Option<usize>,
    id_pointer: Option<String>,
    cursor_param: Option<String>,
    long_poll: Option<Duration>,
    max_wait: Option<Duration>,
    first_message_wait: Option<Duration>,
    idle_unsubscribe: Option<Duration>,
    max_topics: Option<usize>,
    max_held_polls: Option<usize>,
    max_sse_streams: Option<usize>,
    sse_heartbeat: Option<Duration>,
    sse_retry: Option<Duration>,
    max_message_bytes: Option<usize>,
    max_stale: Option<Duration>,
    ping_interval: Option<Duration>,
    reconnect: Option<FileReconnect>,
    hold_on: Option<Vec<String>>,
    response_headers: Option<std::collections::BTreeMap<String, String>>,
    shadow: Option<super::file::FileShadow>,
}

fn pointer_ok(ptr: &str) -> bool {
    ptr.is_empty() || ptr.starts_with('/')
}

fn poll_route(
    sub: FileSubscribe,
    k: PollKeys,
    path: &[Seg],
    env: &dyn Fn(&str) -> Option<String>,
    p: &mut Problems,
) -> Option<PollRoute> {
    let access = match k.access {
        None => {
            p.add(
                &with(path, key("access")),
                "required on poll routes: `public` or `{ auth_request: PATH, cache_for: DURATION }`",
            );
            None
        }
        Some(FileAccess::Keyword(w)) if w == "public" => Some(Access::Public),
        Some(FileAccess::Keyword(w)) => {
            p.add(
                &with(path, key("access")),
                format!("expected `public` or a map with `auth_request`, found `{w}`"),
            );
            None
        }
        Some(FileAccess::Auth(a)) => {
            if !a.auth_request.starts_with('/') {
                p.add(
                    &with(&with(path, key("access")), key("auth_request")),
                    "must be a path starting with `/`",
                );
            }
            Some(Access::AuthRequest {
                path: a.auth_request,
                cache_for: a.cache_for.map(|d| d.0).unwrap_or(Duration::from_secs(30)),
            })
        }
    };
    let mode = match k.mode.as_deref() {
        None | Some("latest") => Mode::Latest,
        Some("since") => Mode::Since,
        Some(other) => {
            p.add(
                &with(path, key("mode")),
                format!("expected `latest` or `since`, found `{other}`"),
            );
            Mode::Latest
        }
    };
    let content_type = k
        .content_type
        .unwrap_or_else(|| "application/json".to_string());
    if http::HeaderValue::from_str(&content_type).is_err() {
        p.add(&with(path, key("content_type")), "not a valid header value");
    }
    let history = k.history.unwrap_or(DEFAULT_HISTORY);
    if !(1..=100_000).contains(&history) {
        p.add(&with(path, key("history")), "must be between 1 and 100000");
    }
    for (name, ptr) in [("id_pointer", &k.id_pointer)] {
        if let Some(ptr) = ptr {
            if !pointer_ok(ptr) {
                p.add(
                    &with(path, key(name)),
                    "a JSON pointer must be empty or start with `/`",
                );
            }
        }
    }
    if k.id_pointer.is_some() && mode == Mode::Latest {
        p.add(
            &with(path, key("id_pointer")),
            "only applies to `mode: since`",
        );
    }
    let cursor_param = k.cursor_param.unwrap_or_else(|| "since".to_string());
    if cursor_param.is_empty() || cursor_param.contains(['&', '=', '#', ' ']) {
        p.add(
            &with(path, key("cursor_param")),
            "not a valid query parameter name",
        );
    }
    let long_poll = k.long_poll.unwrap_or(Duration::ZERO);
    let max_wait = k.max_wait.unwrap_or(if long_poll.is_zero() {
        DEFAULT_MAX_WAIT
    } else {
        long_poll
    });
    if long_poll > Duration::from_secs(3600) || max_wait > Duration::from_secs(3600) {
        p.add(
            &with(path, key("long_poll")),
            "hold times above 1h are not supported",
        );
    }

    let max_message_bytes = k.max_message_bytes.unwrap_or(DEFAULT_MAX_MESSAGE_BYTES);
    if !(1..=MAX_MESSAGE_BYTES_LIMIT).contains(&max_message_bytes) {
        p.add(
            &with(path, key("max_message_bytes")),
            format!(
                "must be between 1 and {} MiB",
                MAX_MESSAGE_BYTES_LIMIT >> 20
            ),
        );
    }
    // Both bound how often every open stream writes: below 100ms a heartbeat or a reconnect
    // storm costs more than it protects.
    let sse_heartbeat = k.sse_heartbeat.unwrap_or(DEFAULT_SSE_HEARTBEAT);
    let sse_retry = k.sse_retry.unwrap_or(DEFAULT_SSE_RETRY);
    for (name, d) in [("sse_heartbeat", sse_heartbeat), ("sse_retry", sse_retry)] {
        if !(Duration::from_millis(100)..=Duration::from_secs(3600)).contains(&d) {
            p.add(&with(path, key(name)), "must be between 100ms and 1h");
        }
    }
    let ping_interval = k.ping_interval.unwrap_or(DEFAULT_PING_INTERVAL);
    if ping_interval < Duration::from_millis(10) {
        p.add(&with(path, key("ping_interval")), "must be at least 10ms");
    }
    let (reconnect_min, reconnect_max) = match k.reconnect {
        Some(r) => (
            r.min.map(|d| d.0).unwrap_or(DEFAULT_RECONNECT_MIN),
            r.max.map(|d| d.0).unwrap_or(DEFAULT_RECONNECT_MAX),
        ),
        None => (DEFAULT_RECONNECT_MIN, DEFAULT_RECONNECT_MAX),
    };
    if reconnect_min.is_zero() || reconnect_max < reconnect_min {
        p.add(
            &with(path, key("reconnect")),
            "`min` must be above zero and `max` at least `min`",
        );
    }

    let spath = with(path, key("subscribe"));
    if !sub.path.starts_with('/') {
        p.add(&with(&spath, key("path")), "must start with `/`");
    }
    let multiplexed = !sub.path.contains("{topic}");
    if multiplexed {
        if sub.topic_pointer.is_none() {
            p.add(
                &with(&spath, key("topic_pointer")),
                "required on a shared socket (a `subscribe.path` without `{topic}`)",
            );
        }
        if sub.send.as_deref().is_none_or(|s| !s.contains("{topic}")) {
            p.add(
                &with(&spath, key("send")),
                "required on a shared socket, and must contain `{topic}`",
            );
        }
    }
    for (name, ptr) in [
        ("topic_pointer", &sub.topic_pointer),
        ("payload_pointer", &sub.payload_pointer),
    ] {
        if let Some(ptr) = ptr {
            if !pointer_ok(ptr) {
                p.add(
                    &with(&spath, key(name)),
                    "a JSON pointer must be empty or start with `/`",
                );
            }
        }
    }
    let mut headers = Vec::new();
    for (hk, hv) in sub.headers {
        let hpath = with(&with(&spath, key("headers")), key(&hk));
        match expand_env(&hv, env) {
            Ok(v) => {
                if http::HeaderName::from_bytes(hk.as_bytes()).is_err() {
                    p.add(&hpath, "not a valid header name");
                } else if http::HeaderValue::from_str(&v).is_err() {
                    p.add(&hpath, "not a valid header value after `${...}` expansion");
                } else {
                    headers.push((hk, v));
                }
            }
            Err(e) => p.add(&hpath, e),
        }
    }
    let hold_on = answering::hold_on(k.hold_on, mode, path, p);
    let response_headers = answering::response_headers(k.response_headers, path, p).into();
    let shadow = k.shadow.map(|s| answering::shadow(s, path, p));
    Some(PollRoute {
        hold_on,
        response_headers,
        shadow,
        mode,
        content_type,
        history,
        id_pointer: k.id_pointer,
        cursor_param,
        long_poll,
        max_wait,
        first_message_wait: k.first_message_wait.unwrap_or(DEFAULT_FIRST_MESSAGE_WAIT),
        idle_unsubscribe: k.idle_unsubscribe.unwrap_or(DEFAULT_IDLE_UNSUBSCRIBE),
        max_topics: k.max_topics,
        max_held_polls: k.max_held_polls,
        max_sse_streams: k.max_sse_streams,
        sse_heartbeat,
        sse_retry,
        access: access?,
        subscribe: Subscribe {
            path: sub.path,
            send: sub.send,
            unsend: sub.unsend,
            topic_pointer: sub.topic_pointer,
            payload_pointer: sub.payload_pointer,
            headers,
        },
        max_message_bytes,
        max_stale: k.max_stale.unwrap_or(DEFAULT_MAX_STALE),
        ping_interval,
        reconnect_min,
        reconnect_max,
    })
}

/// Expands `${NAME}` from the environment; an unset variable is an error, never an empty string,
/// so a missing secret fails loudly at start instead of sending `Bearer ` upstream.
pub fn expand_env(value: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "unterminated `${` in value".to_string())?;
        let name = &after[..end];
        if name.is_empty() {
            return Err("empty variable name in `${}`".into());
        }
        let v = env(name).ok_or_else(|| format!("environment variable `{name}` is not set"))?;
        out.push_str(&v);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The HTTPS listener: its address, and its certificate and key, which are read here so that
/// `-t` and a reload refuse files that would fail every handshake.
fn tls_listener(
    t: FileTls,
    listen: &[String],
    metrics_listen: &Option<String>,
    p: &mut Problems,
) -> Option<TlsListener> {
    let at = |k: &str| vec![key("tls"), key(k)];
    let before = p.0.len();
    match t.listen.parse::<SocketAddr>() {
        Err(_) => p.add(
            &at("listen"),
            format!("`{}` is not an ip:port address", t.listen),
        ),
        Ok(a) if a.port() != 0 && listen.contains(&t.listen) => p.add(
            &at("listen"),
            "must differ from every `listen` address (one port speaks one protocol)",
        ),
        Ok(a) if a.port() != 0 && metrics_listen.as_ref() == Some(&t.listen) => p.add(
            &at("listen"),
            "must differ from `metrics_listen` (admin endpoints are never public)",
        ),
        Ok(_) => {}
    }
    let cert = PathBuf::from(&t.cert);
    let key_path = PathBuf::from(&t.key);
    let identity = match Identity::load(&cert, &key_path) {
        Ok(identity) => Some(Arc::new(identity)),
        Err(problems) => {
            for (part, message) in problems {
                let k = match part {
                    Part::Cert => "cert",
                    Part::Key => "key",
                };
                p.add(&at(k), message);
            }
            None
        }
    };
    if p.0.len() > before {
        return None;
    }
    Some(TlsListener {
        listen: t.listen,
        cert,
        key: key_path,
        identity: identity?,
    })
}
