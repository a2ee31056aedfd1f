//! Cross-origin access (CORS), configured per route (`cors`): pollgate answers preflights on
//! the routes it knows, marks its answers for the origins it allows, and refuses other
//! origins before any data is read. On a proxy route with `cors`, the backend's own CORS
//! headers are replaced; without it they pass through untouched.

use super::answer::{name, Answer};
use super::request::HeaderSource;
use crate::config::{Cors, Origins};
use http::HeaderValue;
use pingora_http::ResponseHeader;

/// What the request's `Origin` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginCheck {
    /// No `Origin` (not a cross-origin browser request) or the gateway's own origin.
    SameOrNone,
    /// An allowed origin; the value for `Access-Control-Allow-Origin`.
    Allowed(HeaderValue),
    Refused,
}

/// Judges `origin` (the `Origin` header, if any) against `cors`. `host`: the request's `Host`,
/// so a page served through the gateway itself is never refused.
pub fn check(cors: &Cors, origin: Option<&[u8]>, host: Option<&[u8]>) -> OriginCheck {
    let Some(origin) = origin.map(<[u8]>::trim_ascii) else {
        return OriginCheck::SameOrNone;
    };
    let authority = origin
        .iter()
        .position(|b| *b == b':')
        .filter(|&i| origin[i..].starts_with(b"://"))
        .map(|i| &origin[i + 3..]);
    if authority.is_some() && authority == host.map(<[u8]>::trim_ascii) {
        return OriginCheck::SameOrNone;
    }
    match &cors.origins {
        Origins::Any => OriginCheck::Allowed(HeaderValue::from_static("*")),
        Origins::List(list) => {
            let lower = String::from_utf8_lossy(origin).to_ascii_lowercase();
            match list.iter().find(|o| **o == lower) {
                Some(_) => HeaderValue::from_bytes(origin)
                    .map(OriginCheck::Allowed)
                    .unwrap_or(OriginCheck::Refused),
                None => OriginCheck::Refused,
            }
        }
    }
}

/// [`check`] on a request's own headers.
pub fn check_request<H: HeaderSource + ?Sized>(cors: &Cors, headers: &H) -> OriginCheck {
    check(
        cors,
        headers.values("origin").next(),
        headers.values("host").next(),
    )
}

/// Whether a request's headers make it a CORS preflight (with `method` `OPTIONS`).
pub fn is_preflight<H: HeaderSource + ?Sized>(method: &str, headers: &H) -> bool {
    method == "OPTIONS"
        && headers.values("origin").next().is_some()
        && headers
            .values("access-control-request-method")
            .next()
            .is_some()
}

/// The methods a preflight allows: a poll route serves `GET` and `HEAD`; a proxy route
/// whatever its backend does.
pub fn methods(poll: bool) -> &'static str {
    if poll {
        "GET, HEAD"
    } else {
        "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
    }
}

/// The answer to a request from an origin that is not allowed: nothing of the route's data.
pub fn refused(cors: &Cors) -> Answer {
    let mut a = Answer::error(403, "this origin may not read this route");
    vary(&mut a.headers, cors);
    a
}

fn vary(headers: &mut Vec<(&'static str, HeaderValue)>, cors: &Cors) {
    if cors.origins != Origins::Any {
        headers.push(("Vary", HeaderValue::from_static("Origin")));
    }
}

/// The CORS lines of an answer to an allowed (or same-origin) request.
pub fn lines(cors: &Cors, check: &OriginCheck) -> Vec<(&'static str, HeaderValue)> {
    let mut out = Vec::with_capacity(4);
    if let OriginCheck::Allowed(origin) = check {
        out.push(("Access-Control-Allow-Origin", origin.clone()));
        if cors.allow_credentials {
            out.push((
                "Access-Control-Allow-Credentials",
                HeaderValue::from_static("true"),
            ));
        }
        if !cors.expose_headers.is_empty() {
            if let Ok(v) = HeaderValue::from_str(&cors.expose_headers.join(", ")) {
                out.push(("Access-Control-Expose-Headers", v));
            }
        }
    }
    vary(&mut out, cors);
    out
}

/// Marks an answer the gateway gives itself.
pub fn decorate(a: &mut Answer, cors: &Cors, check: &OriginCheck) {
    a.headers.extend(lines(cors, check));
}

/// Replaces the backend's CORS headers on a relayed answer (a proxy route with `cors`).
pub fn relayed(resp: &mut ResponseHeader, cors: &Cors, check: &OriginCheck) {
    let names: Vec<String> = resp
        .headers
        .keys()
        .map(|k| k.as_str())
        .filter(|k| k.starts_with("access-control-"))
        .map(str::to_string)
        .collect();
    for n in names {
        resp.remove_header(n.as_str());
    }
    for (name, value) in lines(cors, check) {
        if name == "Vary" {
            let merged = match resp.headers.get(http::header::VARY) {
                Some(v) if !v.as_bytes().eq_ignore_ascii_case(b"origin") => {
                    format!("{}, Origin", String::from_utf8_lossy(v.as_bytes()))
                }
                Some(_) => continue,
                None => "Origin".to_string(),
            };
            let _ = resp.insert_header("Vary", merged);
        } else {
            let _ = resp.insert_header(name, value);
        }
    }
}

/// The answer to a preflight. `methods`: what the route serves (`GET, HEAD` on poll routes).
pub fn preflight(cors: &Cors, check: &OriginCheck, methods: &'static str) -> Answer {
    if *check == OriginCheck::Refused {
        return refused(cors);
    }
    let mut a = Answer::new(204);
    a.headers.extend(lines(cors, check));
    a.push(
        "Access-Control-Allow-Methods",
        HeaderValue::from_static(methods),
    );
    if let Ok(v) = HeaderValue::from_str(&cors.allow_headers.join(", ")) {
        a.push("Access-Control-Allow-Headers", v);
    }
    a.push(
        "Access-Control-Max-Age",
        HeaderValue::from(cors.max_age.as_secs()),
    );
    a.push(name::CONTENT_LENGTH, HeaderValue::from_static("0"));
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cors(origins: Origins, credentials: bool) -> Cors {
        Cors {
            origins,
            allow_headers: vec!["prefer".into(), "if-none-match".into()],
            expose_headers: vec!["ETag".into(), "Age".into()],
            allow_credentials: credentials,
            max_age: Duration::from_secs(600),
        }
    }

    #[test]
    fn origins_are_judged_by_the_list() {
        let c = cors(Origins::List(vec!["https://app.example".into()]), true);
        let allowed = check(&c, Some(b"https://app.example"), Some(b"gw"));
        assert_eq!(
            allowed,
            OriginCheck::Allowed(HeaderValue::from_static("https://app.example"))
        );
        assert_eq!(
            check(&c, Some(b"https://evil.example"), Some(b"gw")),
            OriginCheck::Refused
        );
        assert_eq!(check(&c, None, Some(b"gw")), OriginCheck::SameOrNone);
        // The gateway's own origin.
        assert_eq!(
            check(&c, Some(b"http://gw:8080"), Some(b"gw:8080")),
            OriginCheck::SameOrNone
        );
        let any = cors(Origins::Any, false);
        assert_eq!(
            check(&any, Some(b"https://x"), None),
            OriginCheck::Allowed(HeaderValue::from_static("*"))
        );
    }

    #[test]
    fn preflights_allow_what_polls_use() {
        let c = cors(Origins::List(vec!["https://app.example".into()]), true);
        let ok = check(&c, Some(b"https://app.example"), None);
        let a = preflight(&c, &ok, "GET, HEAD");
        assert_eq!(a.status, 204);
        let names: Vec<_> = a.headers.iter().map(|(n, _)| *n).collect();
        assert!(names.contains(&"Access-Control-Allow-Credentials"));
        assert!(names.contains(&"Vary"));
        let refused = preflight(&c, &OriginCheck::Refused, "GET, HEAD");
        assert_eq!(refused.status, 403);
        assert!(refused
            .headers
            .iter()
            .all(|(n, _)| !n.starts_with("Access-Control")));
    }
}
