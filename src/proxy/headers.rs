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
use std::net::IpAddr;

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

/// One header line of a request on its way upstream: the name in the client's casing.
pub type Line = (Bytes, HeaderValue);

/// Builds the request for `up` in one pass over the client's header lines, in their order:
/// hop-by-hop lines (and those `Connection` lists) are left out, `X-Forwarded-For` gets the
/// client's address appended, `X-Forwarded-Host` (the client's `Host`), `X-Forwarded-Proto`
/// and `Via` are pollgate's own, and the upstream's configured `host` replaces the client's.
/// A client that sent no `Host` (HTTP/1.0) gets the upstream's address, since the upstream
/// hop is HTTP/1.1. `upgrade`: a WebSocket handshake being passed through (its `Upgrade` stays,
/// `Connection: upgrade`); an upstream with `keepalive: false` is told `Connection: close`.
///
/// Both request paths build upstream requests with it (pingora's proxy with its own header
/// policy off), so the same client request sends the same bytes upstream whichever path
/// answered it.
pub fn upstream_request<'c>(
    method: &str,
    target: &[u8],
    lines: impl Iterator<Item = Line>,
    connection: impl Iterator<Item = &'c [u8]>,
    client_ip: Option<IpAddr>,
    upgrade: bool,
    up: &Upstream,
) -> Option<RequestHeader> {
    let listed = listed_names(connection);
    let mut req = RequestHeader::build(method, target, Some(16)).ok()?;
    let mut forwarded_for: Option<Vec<u8>> = None;
    let mut via: Option<Vec<u8>> = None;
    let mut host: Option<HeaderValue> = None;
    for (name, value) in lines {
        let n = &name[..];
        let is = |h: &str| n.eq_ignore_ascii_case(h.as_bytes());
        if is("x-forwarded-for") {
            join(&mut forwarded_for, value.as_bytes());
            continue;
        }
        if is("via") {
            join(&mut via, value.as_bytes());
            continue;
        }
        if is("host") {
            host.get_or_insert(value.clone());
            if up.host.is_some() {
                continue;
            }
        }
        let hop = HOP_BY_HOP.iter().any(|h| is(h))
            || (is("connection") || is("transfer-encoding"))
            || (is("upgrade") && !upgrade)
            || listed.iter().any(|l| is(l));
        if hop || is("x-forwarded-host") || is("x-forwarded-proto") {
            continue;
        }
        req.append_header(name, value).ok()?;
    }
    if let Some(ip) = client_ip {
        let mut v = forwarded_for
            .take()
            .filter(|p| !p.trim_ascii().is_empty())
            .map_or_else(Vec::new, |mut p| {
                p.extend_from_slice(b", ");
                p
            });
        v.extend_from_slice(ip.to_string().as_bytes());
        forwarded_for = Some(v);
    }
    if let Some(v) = forwarded_for {
        req.append_header("X-Forwarded-For", HeaderValue::from_bytes(&v).ok()?)
            .ok()?;
    }
    if let Some(h) = &host {
        req.append_header("X-Forwarded-Host", h.clone()).ok()?;
    }
    req.append_header("X-Forwarded-Proto", HeaderValue::from_static("http"))
        .ok()?;
    let via = match via {
        Some(mut prev) => {
            prev.extend_from_slice(b", ");
            prev.extend_from_slice(VIA.as_bytes());
            HeaderValue::from_bytes(&prev).ok()?
        }
        None => HeaderValue::from_static(VIA),
    };
    req.append_header("Via", via).ok()?;
    match (&up.host, &host) {
        (Some(configured), _) => req.append_header("Host", configured.as_str()).ok()?,
        (None, None) => req.append_header("Host", up.address.as_str()).ok()?,
        (None, Some(_)) => false,
    };
    if upgrade {
        req.append_header("Connection", HeaderValue::from_static("upgrade"))
            .ok()?;
    } else if !up.keepalive {
        req.append_header("Connection", HeaderValue::from_static("close"))
            .ok()?;
    }
    req.set_version(http::Version::HTTP_11);
    Some(req)
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
pub fn lines_of(req: &RequestHeader) -> impl Iterator<Item = Line> + '_ {
    req.case_header_iter()
        .map(|(n, v)| (Bytes::copy_from_slice(n.as_slice()), v.clone()))
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
        Downstream {
            listed: listed_names(
                resp.headers
                    .get_all(http::header::CONNECTION)
                    .iter()
                    .map(|v| v.as_bytes()),
            ),
            switching: resp.status == http::StatusCode::SWITCHING_PROTOCOLS,
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
    let mut prev: Option<Vec<u8>> = None;
    for v in resp.headers.get_all(http::header::VIA) {
        join(&mut prev, v.as_bytes());
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
        }
    }

    fn lines(pairs: &[(&'static str, &'static str)]) -> Vec<Line> {
        pairs
            .iter()
            .map(|(n, v)| {
                (
                    Bytes::from_static(n.as_bytes()),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
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
        let ip = "127.0.0.1".parse().ok();
        let conn: Vec<&[u8]> = vec![b"keep-alive, X-Secret"];
        let r = upstream_request(
            "GET",
            b"/x",
            l.into_iter(),
            conn.into_iter(),
            ip,
            false,
            &up(),
        )
        .unwrap();
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
        assert_eq!(
            String::from_utf8(wire).unwrap(),
            "Host: example.com\r\nAccept: */*\r\nX-Forwarded-For: 10.0.0.1, 127.0.0.1\r\n\
             X-Forwarded-Host: example.com\r\nX-Forwarded-Proto: http\r\nVia: 1.1 pollgate\r\n"
        );
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
            false,
            &up(),
        )
        .unwrap();
        assert_eq!(r.headers["host"], "up:1");
        assert!(!r.headers.contains_key("x-forwarded-host"));
        assert_eq!(r.version, http::Version::HTTP_11);
    }
}
