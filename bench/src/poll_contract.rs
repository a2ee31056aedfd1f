//! How a long-poll client carries one answer into its next poll: each server's own contract for
//! "give me what comes after this", so a re-polling client neither misses nor repeats a message
//! when the server keeps its promise.

use crate::client::Resp;

/// A server's re-poll contract.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contract {
    /// `If-None-Match` with the answer's `ETag` (pollgate, latest mode, `hold_on: if-none-match`).
    Etag,
    /// Nchan's long-poll subscriber: `If-Modified-Since` from `Last-Modified` and
    /// `If-None-Match` from `Etag`, which together name the message answered.
    Nchan,
    /// pollgate's cursor poll (since mode): `?<cursor-param>=<Pollgate-Cursor>`.
    Cursor,
    /// Nchan's message id as a cursor: `?last_event_id=<time>:<tag>`, the time being the
    /// answer's `Last-Modified` in Unix seconds and the tag its `Etag` (Nchan reads
    /// `last_event_id` when the conditional headers are absent).
    NchanId,
}

/// What a poll sends to say which answer it already has.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Validators {
    /// `name=value` appended to the path's query.
    pub query: Option<String>,
    pub headers: Vec<(String, String)>,
}

impl Contract {
    /// The validators an answer hands the next poll; `Ok(None)` when the answer carries none
    /// (the next poll then repeats the previous ones).
    pub fn next_validators(
        self,
        r: &Resp,
        cursor_param: &str,
    ) -> Result<Option<Validators>, String> {
        let h = |name: &str| r.header(name).map(|v| v.trim().to_string());
        Ok(match self {
            Contract::Etag => h("etag").map(|e| Validators {
                query: None,
                headers: vec![("If-None-Match".into(), e)],
            }),
            Contract::Nchan => match (h("last-modified"), h("etag")) {
                (Some(lm), Some(tag)) => Some(Validators {
                    query: None,
                    headers: vec![
                        ("If-Modified-Since".into(), lm),
                        ("If-None-Match".into(), tag),
                    ],
                }),
                _ => None,
            },
            Contract::Cursor => h("pollgate-cursor").map(|c| Validators {
                query: Some(format!("{cursor_param}={c}")),
                headers: Vec::new(),
            }),
            Contract::NchanId => match (h("last-modified"), h("etag")) {
                (Some(lm), Some(tag)) => {
                    let at = httpdate::parse_http_date(&lm)
                        .map_err(|e| format!("Last-Modified `{lm}`: {e}"))?;
                    let secs = at
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_err(|e| format!("Last-Modified `{lm}`: {e}"))?
                        .as_secs();
                    Some(Validators {
                        query: Some(format!("last_event_id={secs}:{tag}")),
                        headers: Vec::new(),
                    })
                }
                _ => None,
            },
        })
    }
}

impl Validators {
    /// `path` with the validators' query appended.
    pub fn path(&self, path: &str) -> String {
        match &self.query {
            None => path.to_string(),
            Some(q) if path.contains('?') => format!("{path}&{q}"),
            Some(q) => format!("{path}?{q}"),
        }
    }
}

/// The sequence numbers of every message of one topic in an answer: the body carries each
/// message's `<marker>#<seq>` whatever wraps it (the bare message, pollgate's envelope, or a
/// since-mode array of envelopes).
pub fn seqs_in(body: &str, marker: &str) -> Vec<u32> {
    let needle = format!("{marker}#");
    let mut out = Vec::new();
    let mut rest = body;
    while let Some(i) = rest.find(&needle) {
        rest = &rest[i + needle.len()..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if let Ok(n) = rest[..digits].parse() {
            out.push(n);
        }
        rest = &rest[digits..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn resp(headers: &[(&str, &str)]) -> Resp {
        Resp {
            status: 200,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: Bytes::new(),
            wire_len: 0,
        }
    }

    #[test]
    fn each_contract_reads_its_own_headers() {
        let r = resp(&[
            ("ETag", "\"abc\""),
            ("Last-Modified", "Mon, 30 Nov 2026 17:47:20 GMT"),
            ("Pollgate-Cursor", "12"),
        ]);
        let v = Contract::Etag
            .next_validators(&r, "since")
            .unwrap()
            .unwrap();
        assert_eq!(v.headers, vec![("If-None-Match".into(), "\"abc\"".into())]);
        assert_eq!(v.path("/p"), "/p");
        let v = Contract::Nchan
            .next_validators(&r, "since")
            .unwrap()
            .unwrap();
        assert_eq!(v.headers.len(), 2, "{v:?}");
        assert_eq!(v.headers[0].1, "Mon, 30 Nov 2026 17:47:20 GMT");
        let v = Contract::Cursor
            .next_validators(&r, "since")
            .unwrap()
            .unwrap();
        assert_eq!(v.path("/api/news/t"), "/api/news/t?since=12");
        assert_eq!(v.path("/api/news/t?x=1"), "/api/news/t?x=1&since=12");
        let v = Contract::NchanId
            .next_validators(&r, "since")
            .unwrap()
            .unwrap();
        // `date -u -d 'Mon, 30 Nov 2026 17:47:20 GMT' +%s`
        assert_eq!(v.path("/sub/t"), "/sub/t?last_event_id=1796060840:\"abc\"");
        assert_eq!(Contract::Cursor.next_validators(&resp(&[]), "s"), Ok(None));
        assert_eq!(
            Contract::Nchan.next_validators(&resp(&[("Etag", "0")]), "s"),
            Ok(None)
        );
        assert!(Contract::NchanId
            .next_validators(&resp(&[("Etag", "0"), ("Last-Modified", "soon")]), "s")
            .is_err());
    }

    #[test]
    fn sequence_numbers_are_found_in_any_wrapping() {
        let m = "lp0000abcd-lp1x0";
        assert_eq!(seqs_in(&format!(r#"{{"bench":"{m}#3"}}"#), m), vec![3]);
        let arr = format!(
            r#"[{{"id":4,"data":{{"bench":"{m}#1"}}}},{{"id":5,"data":{{"bench":"{m}#2"}}}}]"#
        );
        assert_eq!(seqs_in(&arr, m), vec![1, 2]);
        // Another topic whose name starts with this one's is not this topic's message.
        assert!(seqs_in(r#"{"bench":"lp0000abcd-lp1x01#7"}"#, m).is_empty());
        assert!(seqs_in(r#"{"seed":true}"#, m).is_empty());
    }
}
