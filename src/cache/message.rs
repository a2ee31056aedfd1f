//! One cached upstream message, with everything a response needs computed once at arrival.

use base64::Engine;
use bytes::Bytes;
use pingora_http::ResponseHeader;
use sha1::{Digest, Sha1};
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
    /// Messages may be missing right before this one (the subscription was interrupted).
    pub gap_before: bool,
    /// Latest mode: the `200` and `304` heads for this message, built once on arrival; each
    /// answer clones one and adds only `Age`. Header names are written in lowercase, as
    /// HAProxy and Envoy do, which spares a case-preserving map per response.
    pub heads: Option<Box<Heads>>,
}

/// Pre-built response heads for one cached message.
#[derive(Debug)]
pub struct Heads {
    pub ok: ResponseHeader,
    pub not_modified: ResponseHeader,
    /// The same two heads as wire bytes for the fast path (`proxy/fast.rs`): status line and
    /// fixed headers, each line ending in CRLF; the per-answer headers and the blank line
    /// follow.
    pub wire_ok: Bytes,
    pub wire_not_modified: Bytes,
}

/// Builds the latest-mode heads for a payload of `len` bytes.
pub fn latest_heads(content_type: &str, len: usize, etag: &str) -> Option<Box<Heads>> {
    let build = || -> pingora_error::Result<Heads> {
        let ct = http::HeaderValue::from_str(content_type).map_err(|e| {
            pingora_error::Error::because(
                pingora_error::ErrorType::InternalError,
                "content type",
                e,
            )
        })?;
        let tag = http::HeaderValue::from_str(etag).map_err(|e| {
            pingora_error::Error::because(pingora_error::ErrorType::InternalError, "etag", e)
        })?;
        let no_cache = http::HeaderValue::from_static("no-cache");
        // Room for what is added later (Age, Date, Connection, optional Pollgate-Stale) so
        // the map never grows on the hot path.
        let mut ok = ResponseHeader::build_no_case(200, Some(12))?;
        ok.insert_header(http::header::CONTENT_TYPE, ct)?;
        ok.insert_header(http::header::CONTENT_LENGTH, http::HeaderValue::from(len))?;
        ok.insert_header(http::header::CACHE_CONTROL, no_cache.clone())?;
        ok.insert_header(http::header::ETAG, tag.clone())?;
        let mut not_modified = ResponseHeader::build_no_case(304, Some(10))?;
        not_modified.insert_header(http::header::ETAG, tag)?;
        not_modified.insert_header(http::header::CACHE_CONTROL, no_cache)?;
        let wire_ok = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\n\
             Cache-Control: no-cache\r\nETag: {etag}\r\n"
        );
        let wire_not_modified =
            format!("HTTP/1.1 304 Not Modified\r\nETag: {etag}\r\nCache-Control: no-cache\r\n");
        Ok(Heads {
            ok,
            not_modified,
            wire_ok: Bytes::from(wire_ok),
            wire_not_modified: Bytes::from(wire_not_modified),
        })
    };
    build().ok().map(Box::new)
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
    fn latest_heads_are_built() {
        let h = latest_heads("application/json", 10, "\"abc\"").expect("heads");
        assert_eq!(h.ok.status, 200);
        assert_eq!(h.ok.headers["content-length"], "10");
        assert_eq!(h.not_modified.headers["etag"], "\"abc\"");
        assert_eq!(
            &h.wire_ok[..],
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\
              Cache-Control: no-cache\r\nETag: \"abc\"\r\n"
        );
        assert!(h
            .wire_not_modified
            .starts_with(b"HTTP/1.1 304 Not Modified\r\n"));
    }
}
