//! Proxy header hygiene, for both request paths: hop-by-hop headers (RFC 9110 section 7.6.1)
//! never cross the gateway, the upstream learns who the client was from `X-Forwarded-*` and
//! `Via`, and the client gets the upstream's answer with the same rules applied back.
//!
//! pingora's proxy applies its own request sanitising before `upstream_request_filter` (the
//! same standard list, minus what it rewrites for WebSocket handshakes); [`upstream_request`]
//! applies the full list itself, so pollgate's forward path and pingora's send the same bytes.

use crate::config::Upstream;
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

/// Names listed in `Connection`, which are hop-by-hop for this message too; never the framing
/// headers, which say where the message ends (a `Connection: Content-Length` would otherwise
/// leave an answer without its length).
fn connection_listed(headers: &http::HeaderMap) -> Vec<String> {
    if !headers.contains_key(http::header::CONNECTION) {
        return Vec::new();
    }
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
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

/// Removes `Connection`-listed headers and the standard hop-by-hop ones. Most messages carry
/// none of these: look before removing (removal also rewrites pingora's case map).
macro_rules! strip_hop_by_hop {
    ($msg:expr) => {
        for name in connection_listed(&$msg.headers) {
            $msg.remove_header(name.as_str());
        }
        for name in HOP_BY_HOP {
            if $msg.headers.contains_key(name) {
                $msg.remove_header(name);
            }
        }
    };
}

/// Prepares a request for `up`. `upgrade`: a WebSocket handshake being passed through. The
/// upstream's configured `host` replaces the client's; a client that sent none (HTTP/1.0) gets
/// the upstream's address as `Host`, since the upstream hop is HTTP/1.1. An upstream with
/// `keepalive: false` is told `Connection: close`.
pub fn upstream_request(
    req: &mut RequestHeader,
    client_ip: Option<String>,
    upgrade: bool,
    up: &Upstream,
) {
    strip_hop_by_hop!(req);
    if !upgrade {
        for name in [http::header::CONNECTION, http::header::UPGRADE] {
            if req.headers.contains_key(&name) {
                req.remove_header(&name);
            }
        }
        if !up.keepalive {
            let _ = req.insert_header("Connection", "close");
        }
    } else {
        let _ = req.insert_header("Connection", "upgrade");
    }
    if let Some(ip) = client_ip {
        let forwarded = match req
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
        {
            Some(prev) if !prev.trim().is_empty() => format!("{prev}, {ip}"),
            _ => ip,
        };
        let _ = req.insert_header("X-Forwarded-For", forwarded);
    }
    match req.headers.get(http::header::HOST).cloned() {
        Some(h) => {
            let _ = req.insert_header("X-Forwarded-Host", h);
        }
        None => {
            if req.headers.contains_key("x-forwarded-host") {
                req.remove_header("x-forwarded-host");
            }
        }
    }
    let _ = req.insert_header("X-Forwarded-Proto", "http");
    let via = match req.headers.get("via").and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {VIA}"),
        None => VIA.to_string(),
    };
    let _ = req.insert_header("Via", via);
    match &up.host {
        Some(host) => {
            let _ = req.insert_header(http::header::HOST, host.as_str());
        }
        None if !req.headers.contains_key(http::header::HOST) => {
            let _ = req.insert_header(http::header::HOST, up.address.as_str());
        }
        None => {}
    }
    req.set_version(http::Version::HTTP_11);
}

/// Prepares an upstream response for the client (framing headers are the writer's to set).
pub fn downstream_response(resp: &mut ResponseHeader) {
    strip_hop_by_hop!(resp);
    if resp.status != http::StatusCode::SWITCHING_PROTOCOLS {
        for name in [http::header::CONNECTION, http::header::UPGRADE] {
            if resp.headers.contains_key(&name) {
                resp.remove_header(&name);
            }
        }
    }
    // An intermediary speaks its own version (HTTP/1.0 upstreams included).
    resp.set_version(http::Version::HTTP_11);
    let via = match resp.headers.get("via").and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {VIA}"),
        None => VIA.to_string(),
    };
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

    #[test]
    fn strips_hop_by_hop_and_adds_forwarding() {
        let mut r = RequestHeader::build("GET", b"/x", None).unwrap();
        r.insert_header("Connection", "keep-alive, X-Secret")
            .unwrap();
        r.insert_header("X-Secret", "1").unwrap();
        r.insert_header("Keep-Alive", "timeout=5").unwrap();
        r.insert_header("Proxy-Authorization", "Basic x").unwrap();
        r.insert_header("HTTP2-Settings", "x").unwrap();
        r.insert_header("X-Forwarded-For", "10.0.0.1").unwrap();
        r.insert_header("Host", "example.com").unwrap();
        upstream_request(&mut r, Some("127.0.0.1".into()), false, &up());
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
    }

    #[test]
    fn a_request_without_host_gets_the_upstreams() {
        let mut r = RequestHeader::build("GET", b"/x", None).unwrap();
        r.set_version(http::Version::HTTP_10);
        r.insert_header("X-Forwarded-Host", "spoofed").unwrap();
        upstream_request(&mut r, None, false, &up());
        assert_eq!(r.headers["host"], "up:1");
        assert!(!r.headers.contains_key("x-forwarded-host"));
        assert_eq!(r.version, http::Version::HTTP_11);
    }
}
