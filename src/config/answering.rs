//! Validation of the keys that shape what clients get back: `hold_on` (when a poll may be
//! held), `response_headers`, `cors` and `shadow`.

use super::file::{FileCors, FileShadow, OneOrMany};
use super::locate::Seg;
use super::problems::{key, with, Problems};
use super::types::{Cors, HoldOn, Mode, Origins, Shadow};
use std::time::Duration;

/// The default preflight cache time.
pub const DEFAULT_CORS_MAX_AGE: Duration = Duration::from_secs(600);

/// Request headers every poll route's preflight allows: what pollgate's own polls use.
pub const POLL_REQUEST_HEADERS: [&str; 3] = ["prefer", "if-none-match", "last-event-id"];

/// Response headers a page may read by default.
pub const DEFAULT_EXPOSE: [&str; 4] = ["ETag", "Age", "Pollgate-Cursor", "Pollgate-Gap"];

/// Headers pollgate sets itself on cache answers: `response_headers` may not set them.
const MANAGED: [&str; 16] = [
    "content-type",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "date",
    "age",
    "etag",
    "cache-control",
    "vary",
    "preference-applied",
    "trailer",
    "te",
    "proxy-connection",
    "http2-settings",
];

pub fn hold_on(list: Option<Vec<String>>, mode: Mode, path: &[Seg], p: &mut Problems) -> HoldOn {
    let Some(list) = list else {
        return HoldOn::default();
    };
    let path = with(path, key("hold_on"));
    let mut h = HoldOn {
        prefer: false,
        cursor: false,
        if_none_match: false,
        query: Vec::new(),
    };
    for (i, item) in list.iter().enumerate() {
        let at = with(&path, Seg::Index(i));
        match item.as_str() {
            "prefer" => h.prefer = true,
            "cursor" if mode == Mode::Latest => {
                p.add(&at, "`cursor` only applies to `mode: since`");
            }
            "cursor" => h.cursor = true,
            "if-none-match" => h.if_none_match = true,
            other => match other.strip_prefix("query:") {
                Some(name) if !name.is_empty() && !name.contains(['&', '=', '#', ' ', '?']) => {
                    h.query.push(name.to_string());
                }
                Some(_) => p.add(&at, "`query:` needs a query parameter name"),
                None => p.add(
                    &at,
                    format!(
                        "expected `prefer`, `cursor`, `if-none-match` or `query:NAME`, found `{other}`"
                    ),
                ),
            },
        }
    }
    h
}

pub fn response_headers(
    map: Option<std::collections::BTreeMap<String, String>>,
    path: &[Seg],
    p: &mut Problems,
) -> Vec<(String, http::HeaderValue)> {
    let mut out = Vec::new();
    for (name, value) in map.unwrap_or_default() {
        let at = with(&with(path, key("response_headers")), key(&name));
        let lower = name.to_ascii_lowercase();
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            p.add(&at, "not a valid header name");
        } else if MANAGED.contains(&lower.as_str())
            || lower.starts_with("access-control-")
            || lower.starts_with("pollgate-")
        {
            p.add(
                &at,
                "pollgate sets this header itself (use `content_type`, `cors`, or leave it out)",
            );
        } else {
            match http::HeaderValue::from_str(&value) {
                Ok(v) => out.push((name, v)),
                Err(_) => p.add(&at, "not a valid header value"),
            }
        }
    }
    out
}

/// `always_allowed`: request headers this route's preflights allow whatever the list says.
pub fn cors(c: FileCors, always_allowed: &[&str], path: &[Seg], p: &mut Problems) -> Cors {
    let path = with(path, key("cors"));
    let origins = match c.allow_origins {
        OneOrMany::One(s) if s == "*" => Origins::Any,
        other => {
            let list = other.into_vec();
            let mut out = Vec::new();
            for (i, o) in list.iter().enumerate() {
                let at = with(&with(&path, key("allow_origins")), Seg::Index(i));
                if o == "*" {
                    p.add(&at, "`*` stands alone: `allow_origins: \"*\"`");
                } else if origin_ok(o) {
                    out.push(o.trim_end_matches('/').to_ascii_lowercase());
                } else {
                    p.add(
                        &at,
                        format!("`{o}` is not an origin (`https://host` or `https://host:port`)"),
                    );
                }
            }
            if out.is_empty() && list.is_empty() {
                p.add(
                    &with(&path, key("allow_origins")),
                    "list at least one origin, or \"*\"",
                );
            }
            Origins::List(out)
        }
    };
    let allow_credentials = c.allow_credentials.unwrap_or(false);
    if allow_credentials && origins == Origins::Any {
        p.add(
            &with(&path, key("allow_credentials")),
            "browsers refuse credentials with `allow_origins: \"*\"`: list the origins",
        );
    }
    let mut allow_headers: Vec<String> = always_allowed.iter().map(|h| h.to_string()).collect();
    if allow_credentials {
        allow_headers.push("authorization".into());
    }
    for (i, h) in c.allow_headers.unwrap_or_default().iter().enumerate() {
        if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
            let at = with(&with(&path, key("allow_headers")), Seg::Index(i));
            p.add(&at, "not a valid header name");
        } else if !allow_headers.contains(&h.to_ascii_lowercase()) {
            allow_headers.push(h.to_ascii_lowercase());
        }
    }
    let expose = c
        .expose_headers
        .unwrap_or_else(|| DEFAULT_EXPOSE.iter().map(|h| h.to_string()).collect());
    for (i, h) in expose.iter().enumerate() {
        if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
            let at = with(&with(&path, key("expose_headers")), Seg::Index(i));
            p.add(&at, "not a valid header name");
        }
    }
    Cors {
        origins,
        allow_headers,
        expose_headers: expose,
        allow_credentials,
        max_age: c.max_age.map(|d| d.0).unwrap_or(DEFAULT_CORS_MAX_AGE),
    }
}

/// `scheme://host[:port]`, nothing after.
fn origin_ok(o: &str) -> bool {
    let Some((scheme, rest)) = o.split_once("://") else {
        return false;
    };
    let rest = rest.trim_end_matches('/');
    !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        && !rest.is_empty()
        && !rest.contains(['/', '?', '#', '@', ' '])
        && http::uri::Authority::try_from(rest).is_ok()
}

pub fn shadow(s: FileShadow, path: &[Seg], p: &mut Problems) -> Shadow {
    let path = with(path, key("shadow"));
    if !(0.0..=1.0).contains(&s.sample) || s.sample.is_nan() {
        p.add(&with(&path, key("sample")), "must be between 0 and 1");
    }
    let max_per_second = s.max_per_second.unwrap_or(10);
    if max_per_second == 0 {
        p.add(&with(&path, key("max_per_second")), "must be at least 1");
    }
    let serve_backend = match s.serve.as_deref() {
        None | Some("cache") => false,
        Some("backend") => true,
        Some(other) => {
            p.add(
                &with(&path, key("serve")),
                format!("expected `cache` or `backend`, found `{other}`"),
            );
            false
        }
    };
    let mut headers = Vec::new();
    for (i, h) in s.headers.unwrap_or_default().iter().enumerate() {
        if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
            p.add(
                &with(&with(&path, key("headers")), Seg::Index(i)),
                "not a valid header name",
            );
        } else {
            headers.push(h.to_ascii_lowercase());
        }
    }
    Shadow {
        sample: s.sample,
        max_per_second,
        serve_backend,
        headers,
    }
}
