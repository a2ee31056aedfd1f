//! Telling a genuine WebSocket opening handshake (RFC 6455 section 4.2.1) from a malformed one.
//! Malformed handshakes are refused with 400 and never reach the backend.

use base64::Engine;
use pingora_http::RequestHeader;

/// What kind of upgrade, if any, a request asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Upgrade {
    None,
    /// A valid WebSocket handshake: pass it through.
    WebSocket,
    /// An upgrade to something else (h2c, ...): ignore it and serve as plain HTTP.
    Other,
    /// Looks like a WebSocket handshake but is malformed: the reason goes in the 400.
    Invalid(&'static str),
}

fn tokens<'a>(req: &'a RequestHeader, name: &str) -> impl Iterator<Item = String> + 'a {
    req.headers
        .get_all(name)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .into_iter()
}

pub fn classify(req: &RequestHeader) -> Upgrade {
    let has_upgrade = req.headers.contains_key(http::header::UPGRADE);
    let has_ws_key = req.headers.contains_key("sec-websocket-key");
    if !has_upgrade && !has_ws_key {
        // The common case, decided without looking at any header value.
        return Upgrade::None;
    }
    let conn_upgrade = tokens(req, "connection").any(|t| t == "upgrade");
    let wants_ws = tokens(req, "upgrade").any(|t| t == "websocket");
    if has_upgrade && !wants_ws {
        return Upgrade::Other;
    }
    if !has_upgrade {
        return Upgrade::Invalid("Sec-WebSocket-Key without `Upgrade: websocket`");
    }
    if req.method != http::Method::GET {
        return Upgrade::Invalid("a WebSocket handshake must use GET");
    }
    if req.version != http::Version::HTTP_11 {
        return Upgrade::Invalid("a WebSocket handshake needs HTTP/1.1");
    }
    if !conn_upgrade {
        return Upgrade::Invalid("`Upgrade: websocket` without `Connection: upgrade`");
    }
    let version: Vec<_> = req
        .headers
        .get_all("sec-websocket-version")
        .iter()
        .collect();
    if version.len() != 1 || version[0].as_bytes() != b"13" {
        return Upgrade::Invalid("`Sec-WebSocket-Version` must be 13");
    }
    let keys: Vec<_> = req.headers.get_all("sec-websocket-key").iter().collect();
    if keys.len() != 1 {
        return Upgrade::Invalid("exactly one `Sec-WebSocket-Key` is required");
    }
    let key = keys[0].as_bytes();
    match base64::engine::general_purpose::STANDARD.decode(key) {
        Ok(raw) if raw.len() == 16 => Upgrade::WebSocket,
        _ => Upgrade::Invalid("`Sec-WebSocket-Key` must be 16 bytes in base64"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build(method, b"/ws", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    const GOOD: [(&str, &str); 4] = [
        ("Connection", "keep-alive, Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    #[test]
    fn accepts_a_genuine_handshake() {
        assert_eq!(classify(&req("GET", &GOOD)), Upgrade::WebSocket);
        assert_eq!(classify(&req("GET", &[])), Upgrade::None);
        assert_eq!(
            classify(&req(
                "GET",
                &[("Connection", "Upgrade"), ("Upgrade", "h2c")]
            )),
            Upgrade::Other
        );
    }

    #[test]
    fn refuses_malformed_handshakes() {
        let without = |name: &str| {
            GOOD.iter()
                .copied()
                .filter(|(k, _)| *k != name)
                .collect::<Vec<_>>()
        };
        let with = |name: &str, value: &'static str| {
            let mut h = without(name);
            h.push((
                match name {
                    "Connection" => "Connection",
                    "Sec-WebSocket-Version" => "Sec-WebSocket-Version",
                    _ => "Sec-WebSocket-Key",
                },
                value,
            ));
            h
        };
        assert!(matches!(
            classify(&req("GET", &without("Sec-WebSocket-Key"))),
            Upgrade::Invalid(_)
        ));
        assert!(matches!(
            classify(&req("GET", &with("Sec-WebSocket-Key", "short"))),
            Upgrade::Invalid(_)
        ));
        assert!(matches!(
            classify(&req("GET", &with("Sec-WebSocket-Version", "8"))),
            Upgrade::Invalid(_)
        ));
        assert!(matches!(
            classify(&req("GET", &without("Connection"))),
            Upgrade::Invalid(_)
        ));
        assert!(matches!(classify(&req("POST", &GOOD)), Upgrade::Invalid(_)));
    }
}
