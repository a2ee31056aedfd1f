//! Proxy header hygiene: hop-by-hop headers (RFC 9110 section 7.6.1) never cross the gateway,
//! and the upstream learns who the client was from `X-Forwarded-*` and `Via`.

use pingora_http::{RequestHeader, ResponseHeader};

/// Hop-by-hop headers removed in both directions. `Transfer-Encoding` is framing that pingora
/// re-derives itself, and `Upgrade`/`Connection` are kept on WebSocket handshakes.
pub const HOP_BY_HOP: [&str; 6] = [
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "proxy-authenticate",
    "proxy-authorization",
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

/// Names listed in `Connection`, which are hop-by-hop for this message too.
fn connection_listed(headers: &http::HeaderMap) -> Vec<String> {
    if !headers.contains_key(http::header::CONNECTION) {
        return Vec::new();
    }
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty() && t != "upgrade" && t != "close" && t != "keep-alive")
        .collect()
}

/// Prepares a request for the upstream. `upgrade`: a WebSocket handshake being passed through.
pub fn upstream_request(
    req: &mut RequestHeader,
    client_ip: Option<String>,
    upgrade: bool,
    host: Option<&str>,
) {
    for name in connection_listed(&req.headers) {
        req.remove_header(name.as_str());
    }
    // Most requests carry none of these: look before removing (removal also rewrites
    // pingora's case map).
    for name in HOP_BY_HOP {
        if req.headers.contains_key(name) {
            req.remove_header(name);
        }
    }
    if !upgrade {
        for name in [http::header::CONNECTION, http::header::UPGRADE] {
            if req.headers.contains_key(&name) {
                req.remove_header(&name);
            }
        }
    } else {
        let _ = req.insert_header("connection", "upgrade");
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
        let _ = req.insert_header("x-forwarded-for", forwarded);
    }
    if let Some(h) = req.headers.get(http::header::HOST).cloned() {
        let _ = req.insert_header("x-forwarded-host", h);
    }
    let _ = req.insert_header("x-forwarded-proto", "http");
    let via = match req.headers.get("via").and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {VIA}"),
        None => VIA.to_string(),
    };
    let _ = req.insert_header("via", via);
    if let Some(host) = host {
        let _ = req.insert_header(http::header::HOST, host);
    }
}

/// Prepares an upstream response for the client.
pub fn downstream_response(resp: &mut ResponseHeader) {
    for name in connection_listed(&resp.headers) {
        resp.remove_header(name.as_str());
    }
    for name in HOP_BY_HOP {
        if resp.headers.contains_key(name) {
            resp.remove_header(name);
        }
    }
    if resp.status != http::StatusCode::SWITCHING_PROTOCOLS {
        for name in [http::header::CONNECTION, http::header::UPGRADE] {
            if resp.headers.contains_key(&name) {
                resp.remove_header(&name);
            }
        }
    }
    let via = match resp.headers.get("via").and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {VIA}"),
        None => VIA.to_string(),
    };
    let _ = resp.insert_header("via", via);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_adds_forwarding() {
        let mut r = RequestHeader::build("GET", b"/x", None).unwrap();
        r.insert_header("Connection", "keep-alive, X-Secret")
            .unwrap();
        r.insert_header("X-Secret", "1").unwrap();
        r.insert_header("Keep-Alive", "timeout=5").unwrap();
        r.insert_header("Proxy-Authorization", "Basic x").unwrap();
        r.insert_header("X-Forwarded-For", "10.0.0.1").unwrap();
        r.insert_header("Host", "example.com").unwrap();
        upstream_request(&mut r, Some("127.0.0.1".into()), false, None);
        for h in [
            "connection",
            "x-secret",
            "keep-alive",
            "proxy-authorization",
        ] {
            assert!(!r.headers.contains_key(h), "{h} left in");
        }
        assert_eq!(r.headers["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(r.headers["x-forwarded-proto"], "http");
        assert_eq!(r.headers["x-forwarded-host"], "example.com");
        assert_eq!(r.headers["via"], "1.1 pollgate");
    }
}
