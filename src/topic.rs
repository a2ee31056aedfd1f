//! Topic names: client input that the gateway turns into upstream paths and queries.
//!
//! A topic arrives percent-encoded in one path segment of a poll request and leaves again in
//! the subscription's WebSocket path, the `auth_request` query and (through the fallback) the
//! backend's own routing. A backend that decodes and normalises paths (nginx does) would follow
//! a topic of `..%2F..%2Fadmin` out of the subscription path, with the gateway's own
//! `subscribe.headers` credentials, and the answer would be cached for anonymous pollers. So a
//! topic is refused when any of its segments is a dot segment, whichever separator or encoding
//! hides it, and every upstream path or query built from a topic goes through [`encode`].

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use std::borrow::Cow;

/// Longest topic, in bytes after decoding.
pub const MAX_TOPIC_BYTES: usize = 256;

/// Why a topic was refused (the text goes into the `400` answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("empty topic")]
    Empty,
    #[error("topic longer than 256 bytes")]
    TooLong,
    #[error("bad percent-encoding in topic")]
    Encoding,
    #[error("topic is not valid UTF-8")]
    Utf8,
    #[error("topic contains control characters")]
    Control,
    #[error("topic contains a `.` or `..` path segment")]
    DotSegment,
}

/// Everything but RFC 3986's unreserved characters is encoded, in paths and queries alike:
/// sub-delimiters such as `;` mean path parameters to some servers, `/` and `\` separators.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A topic as one percent-encoded path segment or query value: the only way a topic reaches an
/// upstream request.
pub fn encode(topic: &str) -> impl std::fmt::Display + '_ {
    utf8_percent_encode(topic, COMPONENT)
}

/// Decodes and checks a raw (still percent-encoded) path segment. Borrows when there is nothing
/// to decode, the common case on the cache-hit path.
pub fn decode(raw: &str) -> Result<Cow<'_, str>, TopicError> {
    if raw.is_empty() {
        return Err(TopicError::Empty);
    }
    let topic = if raw.contains('%') {
        strict_decode(raw)?
    } else {
        Cow::Borrowed(raw)
    };
    check(&topic)?;
    // A backend that decodes twice would see what a second decoding yields: `%252e%252e`.
    if topic.contains('%') {
        if let Ok(twice) = strict_decode(&topic) {
            if has_dot_segment(&twice) {
                return Err(TopicError::DotSegment);
            }
        }
    }
    Ok(topic)
}

/// Percent-decoding that refuses a `%` not followed by two hex digits (which a lenient decoder
/// would pass through) and bytes that are not UTF-8.
pub fn strict_decode(raw: &str) -> Result<Cow<'_, str>, TopicError> {
    let bytes = raw.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(TopicError::Encoding)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return Err(TopicError::Encoding);
            }
        }
    }
    percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| TopicError::Utf8)
}

fn check(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.len() > MAX_TOPIC_BYTES {
        return Err(TopicError::TooLong);
    }
    if topic.chars().any(char::is_control) {
        return Err(TopicError::Control);
    }
    if has_dot_segment(topic) {
        return Err(TopicError::DotSegment);
    }
    Ok(())
}

/// Whether some segment, split at `/` or `\` and read up to a `;` parameter (`..;x` is `..`
/// to servlet containers), is `.` or `..`.
fn has_dot_segment(topic: &str) -> bool {
    topic.split(['/', '\\']).any(|seg| {
        let seg = seg.split(';').next().unwrap_or(seg);
        seg == "." || seg == ".."
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_decode_and_are_bounded() {
        assert_eq!(decode("btc-usd").unwrap(), "btc-usd");
        assert_eq!(decode("a%20b").unwrap(), "a b");
        assert_eq!(decode("%C3%BC").unwrap(), "ü");
        assert_eq!(decode("a%2Fb").unwrap(), "a/b");
        assert_eq!(decode("..a").unwrap(), "..a");
        assert_eq!(decode("a.b").unwrap(), "a.b");
        assert_eq!(decode("%ff"), Err(TopicError::Utf8));
        assert_eq!(decode("%zz"), Err(TopicError::Encoding));
        assert_eq!(decode("%2"), Err(TopicError::Encoding));
        assert_eq!(decode(""), Err(TopicError::Empty));
        assert_eq!(decode(&"a".repeat(257)), Err(TopicError::TooLong));
        assert!(decode(&"a".repeat(256)).is_ok());
        assert_eq!(decode("%00"), Err(TopicError::Control));
    }

    #[test]
    fn dot_segments_are_refused_however_they_are_spelt() {
        for raw in [
            ".",
            "..",
            "%2e",
            "%2E%2e",
            ".%2E",
            "..%2F..%2Fadmin%2Fkeys",
            "a%2F..%2Fb",
            "a%2F.",
            "..%5Cadmin",
            "a%5C..",
            "..;x",
            "..%3Bjsessionid",
            "%252e%252e",
            "a%252F..",
        ] {
            assert_eq!(decode(raw), Err(TopicError::DotSegment), "{raw}");
        }
    }

    #[test]
    fn one_encoder_for_paths_and_queries() {
        assert_eq!(encode("a b/ü").to_string(), "a%20b%2F%C3%BC");
        assert_eq!(encode("x;y=z&w\\").to_string(), "x%3By%3Dz%26w%5C");
        assert_eq!(encode("btc-usd_1.0~").to_string(), "btc-usd_1.0~");
    }
}
