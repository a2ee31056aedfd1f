//! One cached upstream message, with everything a response needs computed once at arrival.

use base64::Engine;
use bytes::Bytes;
use http::HeaderValue;
use sha1::{Digest, Sha1};
use std::sync::OnceLock;
use std::time::Instant;

/// A message as cached: shared by every response that carries it (serialised once, not per poll).
#[derive(Debug)]
pub struct Message {
    /// Gateway sequence number, unique and increasing within a topic.
    pub seq: u64,
    /// The cursor clients see for this message: the `id_pointer` value, or `seq`.
    pub cursor: String,
    /// The payload, byte for byte as received (or the `payload_pointer` part).
    pub payload: Bytes,
    /// Strong validator from the payload's content: every replica computes the same one.
    pub etag: String,
    /// The payload as an element of a since-mode JSON array.
    pub json: Bytes,
    pub received: Instant,
    /// `received` as an HTTP date: the `Date` of every answer carrying this message, so that
    /// `Date` plus `Age` is always now (RFC 9111 section 4.2.3).
    pub date: HeaderValue,
    /// Messages may be missing right before this one (the subscription was interrupted).
    pub gap_before: bool,
    /// Latest mode: the header lines of the `200` and `304` answers for this message, built
    /// once on arrival; each answer adds only its own lines (`Age`, ...).
    pub heads: Option<Box<Heads>>,
    /// The message as one Server-Sent Event (`id:` and `data:` lines), built by the first
    /// EventSource stream that sends it and shared by every other.
    pub sse: OnceLock<Bytes>,
}

/// The fixed header lines of a cached message's answers.
#[derive(Debug)]
pub struct Heads {
    pub ok: HeadTemplate,
    pub not_modified: HeadTemplate,
}

/// Header lines built once: as a list (for a pingora session) and as the same lines in wire
/// form (`Name: value\r\n` each, for pollgate's own connections).
#[derive(Debug)]
pub struct HeadTemplate {
    pub lines: Vec<(&'static str, HeaderValue)>,
    pub wire: Bytes,
}

impl HeadTemplate {
    pub fn new(lines: Vec<(&'static str, HeaderValue)>) -> HeadTemplate {
        let mut wire = Vec::with_capacity(128);
        for (name, value) in &lines {
            wire.extend_from_slice(name.as_bytes());
            wire.extend_from_slice(b": ");
            wire.extend_from_slice(value.as_bytes());
            wire.extend_from_slice(b"\r\n");
        }
        HeadTemplate {
            lines,
            wire: Bytes::from(wire),
        }
    }
}

/// The latest-mode templates for a payload of `len` bytes. `content_type` was validated as a
/// header value with the config.
pub fn latest_heads(content_type: &HeaderValue, len: usize, etag: &str) -> Box<Heads> {
    // An ETag is `"` and hex digits: always a valid header value.
    let tag = HeaderValue::from_str(etag).unwrap_or_else(|_| HeaderValue::from_static("\"\""));
    let no_cache = HeaderValue::from_static("no-cache");
    Box::new(Heads {
        ok: HeadTemplate::new(vec![
            ("Content-Type", content_type.clone()),
            ("Content-Length", HeaderValue::from(len)),
            ("Cache-Control", no_cache.clone()),
            ("ETag", tag.clone()),
        ]),
        not_modified: HeadTemplate::new(vec![("ETag", tag), ("Cache-Control", no_cache)]),
    })
}

/// `"` + 32 hex digits of SHA-1 + `"`: content-derived, so identical across replicas.
pub fn etag_for(payload: &[u8]) -> String {
    let digest = Sha1::digest(payload);
    let mut s = String::with_capacity(34);
    s.push('"');
    for b in &digest[..16] {
        s.push_str(&format!("{b:02x}"));
    }
    s.push('"');
    s
}

/// A payload as a JSON value: itself when it is JSON, else a JSON string (text) or a base64
/// string (binary), so the since-mode array is always valid JSON.
pub fn json_fragment(payload: &[u8], binary: bool) -> Bytes {
    if !binary && serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_ok() {
        return Bytes::copy_from_slice(payload);
    }
    let s = if binary {
        base64::engine::general_purpose::STANDARD.encode(payload)
    } else {
        String::from_utf8_lossy(payload).into_owned()
    };
    Bytes::from(serde_json::to_vec(&s).expect("strings serialise"))
}

/// The value at a JSON pointer rendered as a cursor: strings as-is, numbers and others as JSON.
pub fn pointer_cursor(value: &serde_json::Value, pointer: &str) -> Option<String> {
    match value.pointer(pointer)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Null => None,
        other => Some(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etag_depends_only_on_content() {
        assert_eq!(etag_for(b"abc"), etag_for(b"abc"));
        assert_ne!(etag_for(b"abc"), etag_for(b"abd"));
        assert_eq!(etag_for(b"abc").len(), 34);
    }

    #[test]
    fn fragments_are_json() {
        assert_eq!(&json_fragment(br#"{"a":1}"#, false)[..], br#"{"a":1}"#);
        assert_eq!(&json_fragment(b"hello", false)[..], br#""hello""#);
        assert_eq!(&json_fragment(&[0xff, 0], true)[..], br#""/wA=""#);
    }

    #[test]
    fn cursors_from_pointers() {
        let v: serde_json::Value = serde_json::json!({"id": 7, "s": "x7", "n": null});
        assert_eq!(pointer_cursor(&v, "/id").as_deref(), Some("7"));
        assert_eq!(pointer_cursor(&v, "/s").as_deref(), Some("x7"));
        assert_eq!(pointer_cursor(&v, "/n"), None);
        assert_eq!(pointer_cursor(&v, "/missing"), None);
    }
}

#[cfg(test)]
mod heads_tests {
    use super::*;

    #[test]
    fn templates_are_built_once_in_both_forms() {
        let ct = HeaderValue::from_static("application/json");
        let h = latest_heads(&ct, 10, "\"abc\"");
        assert_eq!(
            &h.ok.wire[..],
            b"Content-Type: application/json\r\nContent-Length: 10\r\n\
              Cache-Control: no-cache\r\nETag: \"abc\"\r\n"
        );
        assert_eq!(h.ok.lines.len(), 4);
        assert_eq!(
            &h.not_modified.wire[..],
            b"ETag: \"abc\"\r\nCache-Control: no-cache\r\n"
        );
    }
}

#[cfg(test)]
impl Message {
    /// A message with only what the cache's own tests read: its seq as cursor and payload.
    pub(crate) fn for_test(seq: u64, gap: bool) -> Message {
        Message {
            seq,
            cursor: seq.to_string(),
            payload: Bytes::from(seq.to_string()),
            etag: String::new(),
            json: Bytes::new(),
            received: std::time::Instant::now(),
            date: http::HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"),
            gap_before: gap,
            heads: None,
            sse: Default::default(),
        }
    }
}
