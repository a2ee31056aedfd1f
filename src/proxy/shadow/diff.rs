//! Comparing the cache's answer with the backend's: status, the headers the route names, and
//! the body (as JSON when both sides are JSON, so key order and whitespace, which no JSON client
//! sees, are not differences; as bytes otherwise). A difference is described for a human: a few
//! JSON pointers with both values, or the first differing byte with an excerpt of each side.

use serde_json::{json, Value};

/// JSON pointers (or header lines) described per mismatch; the rest are only counted. An
/// operator needs the first few to see what is wrong, and a bounded record per mismatch keeps
/// the mismatch log small whatever the bodies are.
const MAX_DIFFERENCES: usize = 5;

/// A value shown in a difference is cut to this many characters.
const MAX_VALUE: usize = 80;

/// Bytes shown before and after the first differing byte of a text body.
const EXCERPT_BEFORE: usize = 16;
const EXCERPT_AFTER: usize = 48;

/// One side of a comparison.
pub struct Seen<'a> {
    pub status: u16,
    /// The values of each compared header, in the order of the compared names.
    pub headers: Vec<Vec<&'a [u8]>>,
    pub body: &'a [u8],
}

/// One way the two answers differ. `None`: absent on that side.
#[derive(Debug, Clone, PartialEq)]
pub enum Difference {
    Status {
        cache: u16,
        backend: u16,
    },
    Header {
        name: String,
        cache: Option<String>,
        backend: Option<String>,
    },
    /// Both bodies are JSON and differ at `pointer` (RFC 6901; `""` is the whole document).
    Json {
        pointer: String,
        cache: Option<String>,
        backend: Option<String>,
    },
    /// The bodies (not both JSON) first differ at byte `offset`.
    Text {
        offset: usize,
        cache: String,
        backend: String,
        cache_len: usize,
        backend_len: usize,
    },
}

/// What differs, the first [`MAX_DIFFERENCES`] described and the rest counted.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Differences {
    pub shown: Vec<Difference>,
    pub more: usize,
}

impl Differences {
    pub fn is_empty(&self) -> bool {
        self.shown.is_empty() && self.more == 0
    }

    fn push(&mut self, d: Difference) {
        if self.shown.len() < MAX_DIFFERENCES {
            self.shown.push(d);
        } else {
            self.more += 1;
        }
    }
}

/// Compares two answers; `names` are the compared headers (lowercase), in the order of
/// [`Seen::headers`]. Empty: they agree.
pub fn compare(names: &[String], cache: &Seen, backend: &Seen) -> Differences {
    let mut out = Differences::default();
    if cache.status != backend.status {
        out.push(Difference::Status {
            cache: cache.status,
            backend: backend.status,
        });
    }
    for (i, name) in names.iter().enumerate() {
        let (c, b) = (values(&cache.headers, i), values(&backend.headers, i));
        // Values are compared exactly, line by line: a header is part of the contract with
        // clients, so `no-cache` and `No-Cache` are reported.
        if c != b {
            out.push(Difference::Header {
                name: name.clone(),
                cache: joined(c),
                backend: joined(b),
            });
        }
    }
    body(cache.body, backend.body, &mut out);
    out
}

fn values<'s, 'a>(headers: &'s [Vec<&'a [u8]>], i: usize) -> &'s [&'a [u8]] {
    headers.get(i).map(Vec::as_slice).unwrap_or_default()
}

fn joined(values: &[&[u8]]) -> Option<String> {
    if values.is_empty() {
        return None;
    }
    let all: Vec<String> = values
        .iter()
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    Some(cut(&all.join(", ")))
}

fn body(cache: &[u8], backend: &[u8], out: &mut Differences) {
    if cache == backend {
        return;
    }
    let parse = |b: &[u8]| serde_json::from_slice::<Value>(b).ok();
    match (parse(cache), parse(backend)) {
        (Some(c), Some(b)) => json_diff(&c, &b, &mut String::new(), out),
        _ => out.push(text_diff(cache, backend)),
    }
}

/// Walks both documents in step and records every leaf (or type change) that differs.
fn json_diff(cache: &Value, backend: &Value, pointer: &mut String, out: &mut Differences) {
    if cache == backend {
        return;
    }
    match (cache, backend) {
        (Value::Object(c), Value::Object(b)) => {
            // Sorted keys, so the report does not depend on either side's key order.
            let mut keys: Vec<&String> = c.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let len = pointer.len();
                pointer.push('/');
                pointer.push_str(&k.replace('~', "~0").replace('/', "~1"));
                match (c.get(k), b.get(k)) {
                    (Some(x), Some(y)) => json_diff(x, y, pointer, out),
                    (x, y) => out.push(json_leaf(pointer, x, y)),
                }
                pointer.truncate(len);
            }
        }
        (Value::Array(c), Value::Array(b)) => {
            for i in 0..c.len().max(b.len()) {
                let len = pointer.len();
                pointer.push('/');
                pointer.push_str(&i.to_string());
                match (c.get(i), b.get(i)) {
                    (Some(x), Some(y)) => json_diff(x, y, pointer, out),
                    (x, y) => out.push(json_leaf(pointer, x, y)),
                }
                pointer.truncate(len);
            }
        }
        (c, b) => out.push(json_leaf(pointer, Some(c), Some(b))),
    }
}

fn json_leaf(pointer: &str, cache: Option<&Value>, backend: Option<&Value>) -> Difference {
    let show = |v: Option<&Value>| v.map(|v| cut(&v.to_string()));
    Difference::Json {
        pointer: pointer.to_string(),
        cache: show(cache),
        backend: show(backend),
    }
}

fn text_diff(cache: &[u8], backend: &[u8]) -> Difference {
    let offset = cache
        .iter()
        .zip(backend)
        .take_while(|(a, b)| a == b)
        .count();
    let excerpt = |b: &[u8]| {
        let start = offset.saturating_sub(EXCERPT_BEFORE);
        let end = (offset + EXCERPT_AFTER).min(b.len());
        String::from_utf8_lossy(&b[start.min(end)..end]).into_owned()
    };
    Difference::Text {
        offset,
        cache: excerpt(cache),
        backend: excerpt(backend),
        cache_len: cache.len(),
        backend_len: backend.len(),
    }
}

/// At most [`MAX_VALUE`] characters, an ellipsis marking the cut.
fn cut(s: &str) -> String {
    match s.char_indices().nth(MAX_VALUE) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_string(),
    }
}

impl Difference {
    /// The difference as `/topics` shows it: `what` says which fields follow.
    pub fn to_json(&self) -> Value {
        match self {
            Difference::Status { cache, backend } => {
                json!({ "what": "status", "cache": cache, "backend": backend })
            }
            Difference::Header {
                name,
                cache,
                backend,
            } => json!({ "what": "header", "name": name, "cache": cache, "backend": backend }),
            Difference::Json {
                pointer,
                cache,
                backend,
            } => json!({ "what": "json", "pointer": pointer, "cache": cache, "backend": backend }),
            Difference::Text {
                offset,
                cache,
                backend,
                cache_len,
                backend_len,
            } => json!({
                "what": "text",
                "offset": offset,
                "cache": cache,
                "backend": backend,
                "cache_length": cache_len,
                "backend_length": backend_len,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(status: u16, body: &str) -> Seen<'_> {
        Seen {
            status,
            headers: Vec::new(),
            body: body.as_bytes(),
        }
    }

    #[test]
    fn json_ignores_key_order_and_whitespace() {
        let d = compare(
            &[],
            &seen(200, r#"{"a":1,"b":[1,2,{"c":null}]}"#),
            &seen(200, "{ \"b\": [1, 2, {\"c\": null}],\n  \"a\": 1 }"),
        );
        assert!(d.is_empty(), "{d:?}");
    }

    #[test]
    fn json_differences_are_pointers_with_both_values() {
        let d = compare(
            &[],
            &seen(
                200,
                r#"{"price":101,"a/b":{"x~":true},"list":[1,2],"gone":1}"#,
            ),
            &seen(
                200,
                r#"{"price":100,"a/b":{"x~":false},"list":[1],"new":"v"}"#,
            ),
        );
        let want = |p: &str, c: Option<&str>, b: Option<&str>| Difference::Json {
            pointer: p.into(),
            cache: c.map(Into::into),
            backend: b.map(Into::into),
        };
        assert_eq!(
            d.shown,
            vec![
                want("/a~1b/x~0", Some("true"), Some("false")),
                want("/gone", Some("1"), None),
                want("/list/1", Some("2"), None),
                want("/new", None, Some("\"v\"")),
                want("/price", Some("101"), Some("100")),
            ]
        );
        assert_eq!(d.more, 0);
    }

    #[test]
    fn only_a_few_differences_are_described() {
        let c: Vec<u32> = (0..20).collect();
        let b: Vec<u32> = (100..120).collect();
        let d = compare(
            &[],
            &seen(200, &serde_json::to_string(&c).unwrap()),
            &seen(200, &serde_json::to_string(&b).unwrap()),
        );
        assert_eq!(d.shown.len(), MAX_DIFFERENCES);
        assert_eq!(d.more, 20 - MAX_DIFFERENCES);
    }

    #[test]
    fn text_differences_name_the_first_differing_byte() {
        let d = compare(
            &[],
            &seen(200, "hello world, and a long tail after it"),
            &seen(200, "hello there"),
        );
        assert_eq!(
            d.shown,
            vec![Difference::Text {
                offset: 6,
                cache: "hello world, and a long tail after it".into(),
                backend: "hello there".into(),
                cache_len: 37,
                backend_len: 11,
            }]
        );
        // A prefix: the difference is where the shorter one ends.
        let d = compare(&[], &seen(200, "abc"), &seen(200, "abcdef"));
        match &d.shown[..] {
            [Difference::Text {
                offset: 3, cache, ..
            }] => assert_eq!(cache, "abc"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn json_on_one_side_only_is_compared_as_text() {
        let d = compare(&[], &seen(200, "{}"), &seen(200, "<html>"));
        assert!(matches!(d.shown[..], [Difference::Text { offset: 0, .. }]));
    }

    #[test]
    fn status_and_named_headers_are_compared_exactly() {
        let names = vec!["cache-control".to_string(), "x-v".to_string()];
        let cache = Seen {
            status: 200,
            headers: vec![vec![b"no-cache".as_slice()], vec![b"1".as_slice()]],
            body: b"{}",
        };
        let backend = Seen {
            status: 404,
            headers: vec![vec![b"No-Cache".as_slice()], vec![b"1".as_slice()]],
            body: b"{ }",
        };
        let d = compare(&names, &cache, &backend);
        assert_eq!(
            d.shown,
            vec![
                Difference::Status {
                    cache: 200,
                    backend: 404
                },
                Difference::Header {
                    name: "cache-control".into(),
                    cache: Some("no-cache".into()),
                    backend: Some("No-Cache".into()),
                },
            ]
        );
    }

    #[test]
    fn long_values_are_cut() {
        let long = "x".repeat(500);
        let d = compare(
            &[],
            &seen(200, &format!(r#"{{"v":"{long}"}}"#)),
            &seen(200, r#"{"v":1}"#),
        );
        match &d.shown[..] {
            [Difference::Json { cache: Some(c), .. }] => {
                assert_eq!(c.chars().count(), MAX_VALUE + 1, "{c}")
            }
            other => panic!("{other:?}"),
        }
    }
}
