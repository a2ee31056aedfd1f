//! What a poll asks, read the same way from either path's request: the headers through
//! [`HeaderSource`], the rest as plain fields.

use super::BadPoll;
use crate::cache::CursorArg;
use crate::config::PollRoute;
use crate::proxy::headers::header_text;
use crate::proxy::request::HeaderSource;
use std::net::IpAddr;
use std::time::Duration;

/// One poll request, as the poll core needs it.
pub struct PollRequest<'a, H: HeaderSource + ?Sized> {
    pub head_only: bool,
    pub has_body: bool,
    /// The topic's path segment, still percent-encoded.
    pub raw_topic: &'a str,
    /// The request target as the client sent it (path and query).
    pub target: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a H,
    pub client_ip: Option<IpAddr>,
    /// The client came over TLS (`X-Forwarded-Proto: https` on fallbacks).
    pub https: bool,
    /// The route's cross-origin rules.
    pub cors: Option<&'a crate::config::Cors>,
}

impl<H: HeaderSource + ?Sized> PollRequest<'_, H> {
    /// The `If-None-Match` values; several header lines are one list (RFC 9110 section 5.3).
    pub fn if_none_match(&self) -> Result<Option<String>, BadPoll> {
        let mut out: Option<String> = None;
        for v in self.headers.values("if-none-match") {
            let v = header_text(v).ok_or(BadPoll::IfNoneMatch)?.trim();
            match &mut out {
                None => out = Some(v.to_string()),
                Some(list) => {
                    list.push_str(", ");
                    list.push_str(v);
                }
            }
        }
        Ok(out)
    }
}

/// Whether `etag` is among the tags of an `If-None-Match` list (weak comparison).
pub fn etag_matches(if_none_match: &str, etag: &str) -> bool {
    if_none_match.trim() == "*"
        || if_none_match
            .split(',')
            .any(|t| t.trim().trim_start_matches("W/") == etag)
}

/// A since-mode poll's cursor: the `cursor_param` query parameter, else the ETag the client was
/// last given (`If-None-Match`); none (or empty) asks for everything cached.
pub fn cursor_of(
    query: Option<&str>,
    if_none_match: Option<&str>,
    poll: &PollRoute,
) -> Result<Option<CursorArg>, BadPoll> {
    let mut text = None;
    if let Some(q) = query {
        for pair in q.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if k == poll.cursor_param {
                text = Some(v);
            }
        }
    }
    let text = text.or_else(|| if_none_match.map(|s| s.trim_start_matches("W/").trim_matches('"')));
    let Some(t) = text.filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let bad = || BadPoll::Cursor(t.to_string());
    let decoded = crate::topic::strict_decode(t).map_err(|_| bad())?;
    if decoded.chars().any(char::is_control) {
        return Err(bad());
    }
    Ok(Some(if poll.id_pointer.is_some() {
        CursorArg::Id(decoded.into_owned())
    } else {
        CursorArg::Seq(decoded.parse().map_err(|_| bad())?)
    }))
}

/// `Prefer: wait=N` from any of the `Prefer` header values (the last `wait` wins), in seconds.
pub fn prefer_wait<'a>(values: impl Iterator<Item = &'a [u8]>) -> Result<Option<u64>, BadPoll> {
    let mut wait = None;
    for v in values {
        let v = header_text(v).ok_or_else(|| BadPoll::Prefer("not ASCII".into()))?;
        for pref in v.split([',', ';']) {
            let pref = pref.trim();
            if let Some(n) = pref
                .strip_prefix("wait=")
                .or_else(|| pref.strip_prefix("wait ="))
            {
                let secs: u64 = n.trim().parse().map_err(|_| {
                    BadPoll::Prefer(format!("`{n}` is not a whole number of seconds"))
                })?;
                wait = Some(secs);
            } else if pref.eq_ignore_ascii_case("wait") {
                return Err(BadPoll::Prefer("`wait` needs a value".into()));
            }
        }
    }
    Ok(wait)
}

/// Whether the query has the parameter `name` (with any value).
pub fn has_param(query: Option<&str>, name: &str) -> bool {
    query.is_some_and(|q| {
        q.split('&')
            .any(|pair| pair.split_once('=').map_or(pair, |(k, _)| k) == name)
    })
}

/// How long a poll may be held, and the `Preference-Applied` value. A poll is held only when
/// it asked for a hold by one of the route's `hold_on` signals: `Prefer: wait=N` (capped by
/// `max_wait`), else the route's cursor parameter, `If-None-Match` or a named query
/// parameter (for `long_poll`). A browser revalidating its cache (`If-None-Match` alone) is
/// answered at once by default.
pub fn hold_for<H: HeaderSource + ?Sized>(
    req: &PollRequest<'_, H>,
    if_none_match: bool,
    poll: &PollRoute,
) -> Result<(Duration, Option<u64>), BadPoll> {
    let hold = &poll.hold_on;
    if hold.prefer {
        if let Some(secs) = prefer_wait(req.headers.values("prefer"))? {
            let w = Duration::from_secs(secs).min(poll.max_wait);
            return Ok((w, Some(w.as_secs())));
        }
    }
    let asked = (hold.cursor && has_param(req.query, &poll.cursor_param))
        || (hold.if_none_match && if_none_match)
        || hold.query.iter().any(|q| has_param(req.query, q));
    Ok((
        if asked {
            poll.long_poll
        } else {
            Duration::ZERO
        },
        None,
    ))
}

#[cfg(test)]
mod tests {
    use super::etag_matches;

    #[test]
    fn if_none_match_lists_and_weak_tags() {
        assert!(etag_matches("\"a\"", "\"a\""));
        assert!(etag_matches("\"x\", W/\"a\"", "\"a\""));
        assert!(etag_matches("*", "\"a\""));
        assert!(!etag_matches("\"b\"", "\"a\""));
    }
}
