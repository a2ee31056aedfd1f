//! Telling a genuine WebSocket opening handshake (RFC 6455 section 4.2.1) from a malformed one.
//! Malformed handshakes are refused with 400 and never reach the backend.

use super::request::HeaderSource;
use base64::Engine;

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

/// The comma-separated tokens of every `name` header, lowercased.
fn tokens<H: HeaderSource + ?Sized>(headers: &H, name: &'static str) -> Vec<String> {
    headers
        .values(name)
        .flat_map(|v| v.split(|b| *b == b','))
        .map(|t| String::from_utf8_lossy(t.trim_ascii()).to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Classifies a request by its method, version (`http11`) and headers.
pub fn classify<H: HeaderSource + ?Sized>(method: &str, http11: bool, headers: &H) -> Upgrade {
    let has_upgrade = headers.values("upgrade").next().is_some();
    let has_ws_key = headers.values("sec-websocket-key").next().is_some();
    if !has_upgrade && !has_ws_key {
        // The common case, decided without looking at any header value.
        return Upgrade::None;
    }
    let conn_upgrade = tokens(headers, "connection").iter().any(|t| t == "upgrade");
    let wants_ws = tokens(headers, "upgrade").iter().any(|t| t == "websocket");
    if has_upgrade && !wants_ws {
        return Upgrade::Other;
    }
    if !has_upgrade {
        return Upgrade::Invalid("Sec-WebSocket-Key without `Upgrade: websocket`");
    }
    if method != "GET" {
        return Upgrade::Invalid("a WebSocket handshake must use GET");
    }
    if !http11 {
        return Upgrade::Invalid("a WebSocket handshake needs HTTP/1.1");
    }
    if !conn_upgrade {
        return Upgrade::Invalid("`Upgrade: websocket` without `Connection: upgrade`");
    }
    let version: Vec<_> = headers.values("sec-websocket-version").collect();
    if version.len() != 1 || version[0] != b"13" {
        return Upgrade::Invalid("`Sec-WebSocket-Version` must be 13");
    }
    let keys: Vec<_> = headers.values("sec-websocket-key").collect();
    if keys.len() != 1 {
        return Upgrade::Invalid("exactly one `Sec-WebSocket-Key` is required");
    }
    match base64::engine::general_purpose::STANDARD.decode(keys[0]) {
        Ok(raw) if raw.len() == 16 => Upgrade::WebSocket,
        _ => Upgrade::Invalid("`Sec-WebSocket-Key` must be 16 bytes in base64"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use pingora_http::RequestHeader;

    fn check(method: &str, headers: &[(&str, &str)]) -> Upgrade {
        classify(method, true, &req(method, headers))
    }

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
        assert_eq!(check("GET", &GOOD), Upgrade::WebSocket);
        assert_eq!(check("GET", &[]), Upgrade::None);
        assert_eq!(
            check("GET", &[("Connection", "Upgrade"), ("Upgrade", "h2c")]),
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
            check("GET", &without("Sec-WebSocket-Key")),
            Upgrade::Invalid(_)
        ));
        assert!(matches!(
            check("GET", &with("Sec-WebSocket-Key", "short")),
            Upgrade::Invalid(_)
        ));
        assert!(matches!(
            check("GET", &with("Sec-WebSocket-Version", "8")),
            Upgrade::Invalid(_)
        ));
        assert!(matches!(
            check("GET", &without("Connection")),
            Upgrade::Invalid(_)
        ));
        assert!(matches!(check("POST", &GOOD), Upgrade::Invalid(_)));
    }
}
