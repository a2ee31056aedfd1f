//! Proxy header hygiene, for both request paths: hop-by-hop headers (RFC 9110 section 7.6.1)
//! never cross the gateway, the upstream learns who the client was from `X-Forwarded-*` and
//! `Via`, and the client gets the upstream's answer with the same rules applied back.
//!
//! pingora's proxy applies its own request sanitising before `upstream_request_filter` (the
//! same standard list, minus what it rewrites for WebSocket handshakes); [`upstream_request`]
//! applies the full list itself, so pollgate's forward path and pingora's send the same bytes.

use crate::config::Upstream;
use bytes::Bytes;
use http::HeaderValue;
use pingora_http::{RequestHeader, ResponseHeader};

/// Hop-by-hop headers removed in both directions (besides `Connection` and the names it lists,
/// and `Upgrade` outside a WebSocket handshake). `Transfer-Encoding` is framing: each writer
/// sets its own (requests that carry it go through pingora, which reframes them).
pub const HOP_BY_HOP: [&str; 7] = [
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "proxy-authenticate",
    "proxy-authorization",
    "http2-settings",
];

/// Headers a client's `Connection` may not nominate for removal (pingora's proxy refuses such
/// requests; the validator in `request.rs` refuses them first).
pub const PROTECTED: [&str; 4] = [
    "host",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
];

pub const VIA: &str = "1.1 pollgate";

/// A header value as text, by `HeaderValue::to_str`'s rule (visible ASCII, spaces and tabs):
/// what can be read as a string, and written back into a head as is.
pub fn header_text(v: &[u8]) -> Option<&str> {
    if v.iter().all(|&b| b == b'\t' || (b' '..=b'~').contains(&b)) {
        std::str::from_utf8(v).ok()
    } else {
        None
    }
}

/// Longest upstream response head relayed to a client; past it the answer is a `502`.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Whether an upstream response head is over [`MAX_RESPONSE_HEAD`] (measured as it goes on
/// the wire: `Name: value\r\n` per line).
pub fn response_too_large(resp: &ResponseHeader) -> bool {
    resp.headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
        > MAX_RESPONSE_HEAD
}

/// Applies the upstream request rule to the client's header lines, in their order, and emits
/// the lines the upstream gets: hop-by-hop lines (and those `Connection` lists) are left out,
/// `X-Forwarded-For` gets the client's address appended, `X-Forwarded-Host` (the client's
/// `Host`), `X-Forwarded-Proto` (`https` when the client came over TLS) and `Via` are
/// pollgate's own, and the upstream's configured
/// `host` replaces the client's. A client that sent no `Host` (HTTP/1.0) gets the upstream's
/// address, since the upstream hop is HTTP/1.1. `upgrade`: a WebSocket handshake being passed
/// through (its `Upgrade` stays, `Connection: upgrade`); an upstream with `keepalive: false` is
/// told `Connection: close`.
///
/// Every upstream request of either path is built by this one rule (pingora's proxy with its
/// own header policy off), so the same client request sends the same bytes upstream whichever
/// path answered it: see [`upstream_request`] and [`write_upstream_request`].
pub fn upstream_lines<'l, 'c>(
    lines: impl Iterator<Item = (&'l [u8], &'l [u8])>,
    connection: impl Iterator<Item = &'c [u8]>,
    client_ip: Option<&str>,
    https: bool,
    upgrade: bool,
    up: &Upstream,
    mut emit: impl FnMut(&[u8], &[u8]),
) {
    let listed = listed_names(connection);
    let mut forwarded_for: Option<Vec<u8>> = None;
    let mut via: Option<Vec<u8>> = None;
    let mut host: Option<&[u8]> = None;
    for (n, value) in lines {
        let is = |h: &str| n.eq_ignore_ascii_case(h.as_bytes());
        if is("x-forwarded-for") {
            join(&mut forwarded_for, value);
            continue;
        }
        if is("via") {
            join(&mut via, value);
            continue;
        }
        if is("host") {
            host.get_or_insert(value);
            if up.host.is_some() {
                continue;
            }
        }
        let hop = HOP_BY_HOP.iter().any(|h| is(h))
            || is("connection")
            || is("transfer-encoding")
            || (is("upgrade") && !upgrade)
            || listed.iter().any(|l| is(l));
        if hop || is("x-forwarded-host") || is("x-forwarded-proto") {
            continue;
        }
        emit(n, value);
    }
    if let Some(ip) = client_ip {
        let mut v = match forwarded_for.take().filter(|p| !p.trim_ascii().is_empty()) {
            Some(mut p) => {
                p.extend_from_slice(b", ");
                p
            }
            None => Vec::new(),
        };
        v.extend_from_slice(ip.as_bytes());
        forwarded_for = Some(v);
    }
    if let Some(v) = &forwarded_for {
        emit(b"X-Forwarded-For", v);
    }
    if let Some(h) = host {
        emit(b"X-Forwarded-Host", h);
    }
    emit(
        b"X-Forwarded-Proto",
        if https { b"https".as_slice() } else { b"http" },
    );
    match via {
        Some(mut prev) => {
            prev.extend_from_slice(b", ");
            prev.extend_from_slice(VIA.as_bytes());
            emit(b"Via", &prev);
        }
        None => emit(b"Via", VIA.as_bytes()),
    }
    match (&up.host, host) {
        (Some(configured), _) => emit(b"Host", configured.as_bytes()),
        (None, None) => emit(b"Host", up.address.as_bytes()),
        (None, Some(_)) => {}
    }
    if upgrade {
        emit(b"Connection", b"upgrade");
    } else if !up.keepalive {
        emit(b"Connection", b"close");
    }
}

/// [`upstream_lines`] as a pingora `RequestHeader` (pingora's proxy path, and pollgate's own
/// requests through pingora's client).
#[allow(clippy::too_many_arguments)]
pub fn upstream_request<'l, 'c>(
    method: &str,
    target: &[u8],
    lines: impl Iterator<Item = (&'l [u8], &'l [u8])>,
    connection: impl Iterator<Item = &'c [u8]>,
    client_ip: Option<&str>,
    https: bool,
    upgrade: bool,
    up: &Upstream,
) -> Option<RequestHeader> {
    let mut req = RequestHeader::build(method, target, Some(16)).ok()?;
    let mut ok = true;
    upstream_lines(lines, connection, client_ip, https, upgrade, up, |n, v| {
        let value = HeaderValue::from_bytes(v);
        ok &= match value {
            Ok(v) => req.append_header(Bytes::copy_from_slice(n), v).is_ok(),
            Err(_) => false,
        };
    });
    req.set_version(http::Version::HTTP_11);
    ok.then_some(req)
}

/// [`upstream_lines`] as the bytes pingora's client would write for the same request
/// (`METHOD TARGET HTTP/1.1`, the lines, the blank line): pollgate's forward path and its
/// tunnels (`upgrade`) write them themselves.
#[allow(clippy::too_many_arguments)]
pub fn write_upstream_request<'l, 'c>(
    out: &mut Vec<u8>,
    method: &str,
    target: &[u8],
    lines: impl Iterator<Item = (&'l [u8], &'l [u8])>,
    connection: impl Iterator<Item = &'c [u8]>,
    client_ip: Option<&str>,
    https: bool,
    upgrade: bool,
    up: &Upstream,
) {
    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    upstream_lines(lines, connection, client_ip, https, upgrade, up, |n, v| {
        out.extend_from_slice(n);
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    });
    out.extend_from_slice(b"\r\n");
}

/// Joins repeated header lines into one list value.
fn join(acc: &mut Option<Vec<u8>>, value: &[u8]) {
    match acc {
        None => *acc = Some(value.to_vec()),
        Some(v) => {
            v.extend_from_slice(b", ");
            v.extend_from_slice(value);
        }
    }
}

/// The header lines of a pingora `RequestHeader`, in order and casing.
pub fn lines_of(req: &RequestHeader) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
    req.case_header_iter()
        .map(|(n, v)| (n.as_slice(), v.as_bytes()))
}

/// The header names `Connection` values list, lowercased: hop-by-hop for this message too.
/// Never the framing headers, which say where the message ends (a `Connection:
/// Content-Length` would otherwise leave an answer without its length), nor `close`,
/// `keep-alive`, `upgrade`.
fn listed_names<'c>(values: impl Iterator<Item = &'c [u8]>) -> Vec<String> {
    values
        .flat_map(|v| v.split(|b| *b == b','))
        .map(|t| String::from_utf8_lossy(t.trim_ascii()).to_ascii_lowercase())
        .filter(|t| {
            !t.is_empty()
                && !matches!(
                    t.as_str(),
                    "upgrade" | "close" | "keep-alive" | "content-length" | "transfer-encoding"
                )
        })
        .collect()
}

/// What of an upstream response's head reaches the client: the rule both paths apply.
pub struct Downstream {
    /// Names `Connection` lists (hop-by-hop for this message).
    listed: Vec<String>,
    /// A `101`: its `Connection` and `Upgrade` are the switch itself.
    switching: bool,
}

impl Downstream {
    pub fn of(resp: &ResponseHeader) -> Downstream {
        Downstream::new(
            resp.headers
                .get_all(http::header::CONNECTION)
                .iter()
                .map(|v| v.as_bytes()),
            resp.status == http::StatusCode::SWITCHING_PROTOCOLS,
        )
    }

    /// From a response's `Connection` values; `switching`: its status is `101`.
    pub fn new<'c>(connection: impl Iterator<Item = &'c [u8]>, switching: bool) -> Downstream {
        Downstream {
            listed: listed_names(connection),
            switching,
        }
    }

    /// Whether a header line crosses to the client as it is (`Via` is collected apart).
    pub fn keeps(&self, name: &[u8]) -> bool {
        let is = |h: &str| name.eq_ignore_ascii_case(h.as_bytes());
        !(HOP_BY_HOP.iter().any(|h| is(h))
            || ((is("connection") || is("upgrade")) && !self.switching)
            || is("via")
            || self.listed.iter().any(|l| is(l)))
    }
}

/// `Via` with this hop appended to what the message carried.
pub fn via(resp: &ResponseHeader) -> HeaderValue {
    via_after(
        resp.headers
            .get_all(http::header::VIA)
            .iter()
            .map(|v| v.as_bytes()),
    )
}

/// `Via` with this hop appended to the message's `Via` values.
pub fn via_after<'v>(values: impl Iterator<Item = &'v [u8]>) -> HeaderValue {
    let mut prev: Option<Vec<u8>> = None;
    for v in values {
        join(&mut prev, v);
    }
    match prev {
        Some(mut p) => {
            p.extend_from_slice(b", ");
            p.extend_from_slice(VIA.as_bytes());
            HeaderValue::from_bytes(&p).unwrap_or_else(|_| HeaderValue::from_static(VIA))
        }
        None => HeaderValue::from_static(VIA),
    }
}

/// Prepares an upstream response for the client in place (pingora's path; pollgate's writes
/// the same lines straight to the wire, `forward.rs`).
pub fn downstream_response(resp: &mut ResponseHeader) {
    let rule = Downstream::of(resp);
    let via = via(resp);
    let dropped: Vec<String> = resp
        .headers
        .keys()
        .filter(|k| !rule.keeps(k.as_str().as_bytes()))
        .map(|k| k.as_str().to_string())
        .collect();
    for name in dropped {
        resp.remove_header(name.as_str());
    }
    // An intermediary speaks its own version (HTTP/1.0 upstreams included).
    resp.set_version(http::Version::HTTP_11);
    let _ = resp.insert_header("Via", via);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up() -> Upstream {
        Upstream {
            name: "b".into(),
            address: "up:1".into(),
            socket_addr: "127.0.0.1:1".parse().unwrap(),
            host: None,
            connect_timeout: crate::config::DEFAULT_CONNECT_TIMEOUT,
            read_timeout: crate::config::DEFAULT_READ_TIMEOUT,
            write_timeout: crate::config::DEFAULT_WRITE_TIMEOUT,
            idle_timeout: crate::config::DEFAULT_IDLE_TIMEOUT,
            websocket_idle_timeout: crate::config::DEFAULT_WEBSOCKET_IDLE_TIMEOUT,
            keepalive: true,
            tls: None,
        }
    }

    fn lines(pairs: &[(&'static str, &'static str)]) -> Vec<(&'static [u8], &'static [u8])> {
        pairs
            .iter()
            .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
            .collect()
    }

    /// A GET built both ways, as pingora's `RequestHeader` and as the bytes pollgate writes
    /// itself; checks that pingora's client would write exactly those bytes.
    fn both_paths(
        target: &[u8],
        l: &[(&'static [u8], &'static [u8])],
        conn: &[&[u8]],
        ip: Option<&str>,
        upgrade: bool,
    ) -> (RequestHeader, Vec<u8>) {
        let r = upstream_request(
            "GET",
            target,
            l.iter().copied(),
            conn.iter().copied(),
            ip,
            false,
            upgrade,
            &up(),
        )
        .unwrap();
        let mut direct = Vec::new();
        write_upstream_request(
            &mut direct,
            "GET",
            target,
            l.iter().copied(),
            conn.iter().copied(),
            ip,
            false,
            upgrade,
            &up(),
        );
        let wire = pingora_core::protocols::http::v1::client::http_req_header_to_wire(&r).unwrap();
        assert_eq!(direct, wire.to_vec());
        (r, direct)
    }

    #[test]
    fn strips_hop_by_hop_and_adds_forwarding() {
        let l = lines(&[
            ("Connection", "keep-alive, X-Secret"),
            ("X-Secret", "1"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Authorization", "Basic x"),
            ("HTTP2-Settings", "x"),
            ("X-Forwarded-For", "10.0.0.1"),
            ("Host", "example.com"),
            ("Accept", "*/*"),
        ]);
        let ip = Some("127.0.0.1");
        let conn: Vec<&[u8]> = vec![b"keep-alive, X-Secret"];
        // The bytes pollgate writes itself are the bytes pingora's client writes.
        let (r, _) = both_paths(b"/x", &l, &conn, ip, false);
        for h in [
            "connection",
            "x-secret",
            "keep-alive",
            "proxy-authorization",
            "http2-settings",
        ] {
            assert!(!r.headers.contains_key(h), "{h} left in");
        }
        assert_eq!(r.headers["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(r.headers["x-forwarded-proto"], "http");
        assert_eq!(r.headers["x-forwarded-host"], "example.com");
        assert_eq!(r.headers["via"], "1.1 pollgate");
        assert_eq!(r.headers["host"], "example.com");
        let mut wire = Vec::new();
        r.header_to_h1_wire(&mut wire);
        let expected =
            "Host: example.com\r\nAccept: */*\r\nX-Forwarded-For: 10.0.0.1, 127.0.0.1\r\n\
             X-Forwarded-Host: example.com\r\nX-Forwarded-Proto: http\r\nVia: 1.1 pollgate\r\n";
        assert_eq!(String::from_utf8(wire).unwrap(), expected);
    }

    #[test]
    fn a_handshake_sends_the_same_bytes_on_both_paths() {
        let l = lines(&[
            ("Host", "example.com"),
            ("Connection", "keep-alive, Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Keep-Alive", "timeout=5"),
        ]);
        let conn: Vec<&[u8]> = vec![b"keep-alive, Upgrade"];
        let (_, direct) = both_paths(b"/ws?a=1", &l, &conn, Some("127.0.0.1"), true);
        let text = String::from_utf8(direct).unwrap();
        assert!(text.contains("\r\nUpgrade: websocket\r\n"), "{text}");
        assert!(text.ends_with("\r\nConnection: upgrade\r\n\r\n"), "{text}");
        assert!(!text.contains("Keep-Alive"), "{text}");
    }

    #[test]
    fn a_request_without_host_gets_the_upstreams() {
        let l = lines(&[("X-Forwarded-Host", "spoofed")]);
        let r = upstream_request(
            "GET",
            b"/x",
            l.into_iter(),
            std::iter::empty(),
            None,
            true,
            false,
            &up(),
        )
        .unwrap();
        assert_eq!(r.headers["host"], "up:1");
        assert_eq!(r.headers["x-forwarded-proto"], "https");
        assert!(!r.headers.contains_key("x-forwarded-host"));
        assert_eq!(r.version, http::Version::HTTP_11);
    }
}
