//! The text of a Server-Sent Events stream (WHATWG HTML, "Server-sent events"): message
//! events, the `gap` event, the `retry:` hint and comment heartbeats. Only bytes: when to send
//! them is `stream.rs`'s business, how to frame them on a connection the writers'.

use crate::cache::Message;
use bytes::{BufMut, Bytes, BytesMut};
use std::time::Duration;

/// A comment line and the blank line that ends it: ignored by every EventSource, but bytes on
/// the wire, so proxies and load balancers see an idle stream as alive.
pub const HEARTBEAT: &[u8] = b": heartbeat\n\n";

/// The name of the event sent when messages may be missing before the next one.
pub const GAP: &str = "gap";

/// The message as an event, built once per message and shared by every stream.
pub fn of_message(msg: &Message) -> Bytes {
    msg.sse
        .get_or_init(|| message(id_field(&msg.cursor), &msg.payload))
        .clone()
}

/// `id:` only for a cursor a client can send back as `Last-Event-ID`: a line break would end
/// the field early, and a NUL makes an EventSource ignore it.
fn id_field(cursor: &str) -> Option<&str> {
    (!cursor.contains(['\r', '\n', '\0'])).then_some(cursor)
}

/// `id: ID` (when given), one `data: ` line per line of `payload`, a blank line.
pub fn message(id: Option<&str>, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 32);
    if let Some(id) = id {
        out.put_slice(b"id: ");
        out.put_slice(id.as_bytes());
        out.put_u8(b'\n');
    }
    data_lines(&mut out, payload);
    out.put_u8(b'\n');
    out.freeze()
}

/// The payload as `data: ` lines, split where the spec splits lines: at CRLF, a lone CR or a
/// lone LF. An EventSource joins them with LF, so the payload arrives with its line breaks as
/// LF (a payload without CR arrives byte for byte; an empty one as an empty `data`).
fn data_lines(out: &mut BytesMut, payload: &[u8]) {
    let mut rest = payload;
    loop {
        let end = rest.iter().position(|&b| b == b'\r' || b == b'\n');
        out.put_slice(b"data: ");
        match end {
            None => {
                out.put_slice(rest);
                out.put_u8(b'\n');
                return;
            }
            Some(i) => {
                out.put_slice(&rest[..i]);
                out.put_u8(b'\n');
                let crlf = rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n');
                rest = &rest[i + if crlf { 2 } else { 1 }..];
            }
        }
    }
}

/// `event: gap` with, as data, the cursor the client had (JSON: `{"last_event_id":"7"}`, or
/// `null` when it had none). No `id:`, so the client's last event id stays the one it had
/// until the next message.
pub fn gap(out: &mut BytesMut, had: Option<&str>) {
    let data = serde_json::json!({ "last_event_id": had });
    out.put_slice(b"event: ");
    out.put_slice(GAP.as_bytes());
    out.put_u8(b'\n');
    out.put_slice(b"data: ");
    out.put_slice(data.to_string().as_bytes());
    out.put_slice(b"\n\n");
}

/// `retry: MS`: how long an EventSource waits before it reconnects.
pub fn retry(out: &mut BytesMut, after: Duration) {
    out.put_slice(format!("retry: {}\n\n", after.as_millis()).as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The WHATWG event-stream interpretation, for the fields pollgate writes: what an
    /// EventSource would dispatch (type, data, last event id).
    fn parse(stream: &[u8]) -> Vec<(String, String, String)> {
        let text = String::from_utf8_lossy(stream);
        let mut events = Vec::new();
        let (mut kind, mut data, mut id) = (String::new(), String::new(), String::new());
        let lines = text.split("\r\n").flat_map(|l| l.split(['\r', '\n']));
        for line in lines {
            if line.is_empty() {
                if !data.is_empty() {
                    data.pop();
                    let k = if kind.is_empty() { "message" } else { &kind };
                    events.push((k.to_string(), std::mem::take(&mut data), id.clone()));
                }
                data.clear();
                kind.clear();
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => kind = value.to_string(),
                "data" => {
                    data.push_str(value);
                    data.push('\n');
                }
                "id" => id = value.to_string(),
                _ => {}
            }
        }
        events
    }

    #[test]
    fn payload_lines_split_at_cr_lf_and_crlf() {
        let e = message(Some("7"), b"a\r\nb\rc\nd");
        assert_eq!(&e[..], b"id: 7\ndata: a\ndata: b\ndata: c\ndata: d\n\n");
        assert_eq!(
            parse(&e),
            vec![("message".into(), "a\nb\nc\nd".into(), "7".into())]
        );
    }

    #[test]
    fn payloads_come_back_as_sent_but_for_line_breaks() {
        for (payload, expected) in [
            ("", ""),
            ("x", "x"),
            ("\n", "\n"),
            ("a\n", "a\n"),
            ("\r\n\r\n", "\n\n"),
            (" leading space", " leading space"),
            ("{\"a\":1}", "{\"a\":1}"),
            ("a\r", "a\n"),
            (": not a comment", ": not a comment"),
        ] {
            let e = message(Some("1"), payload.as_bytes());
            let got = parse(&e);
            assert_eq!(got.len(), 1, "{payload:?} -> {e:?}");
            assert_eq!(got[0].1, expected, "{payload:?} -> {e:?}");
        }
    }

    #[test]
    fn ids_that_cannot_come_back_are_left_out() {
        assert_eq!(&message(id_field("a\nb"), b"x")[..], b"data: x\n\n");
        assert_eq!(&message(id_field(" a"), b"x")[..], b"id:  a\ndata: x\n\n");
        assert_eq!(parse(&message(id_field(" a"), b"x"))[0].2, " a");
    }

    #[test]
    fn gap_heartbeat_and_retry_frames() {
        let mut out = BytesMut::new();
        retry(&mut out, Duration::from_secs(3));
        out.put_slice(HEARTBEAT);
        gap(&mut out, Some("5\""));
        out.put_slice(&message(Some("6"), b"m"));
        assert_eq!(
            parse(&out),
            vec![
                ("gap".into(), r#"{"last_event_id":"5\""}"#.into(), "".into()),
                ("message".into(), "m".into(), "6".into()),
            ]
        );
        assert!(out.starts_with(b"retry: 3000\n\n: heartbeat\n\n"));
    }
}
