//! Reading an upstream's HTTP/1 answer on pollgate's forward path: its head (`httparse`) and
//! where its body ends, by the same rules as pingora's client (RFC 9112 section 6.3), strictly.
//!
//! Why not pingora's client here: measured side by side (docs/benchmarks.md, scenario 6) its
//! session and header maps cost a third of plain-proxy throughput. This reader keeps to what a
//! relay needs, parses in place, and refuses what pingora's client refuses (conflicting
//! lengths, malformed chunk lines and trailers) plus what a strict reader should: a chunk line
//! or a trailer that does not end in CRLF, a bare CR. `tests/differential.rs`,
//! `tests/probe_upstream.rs` and `tests/foundation.rs` hold it to pingora's behaviour.

use super::upstream::Failure;

/// Header lines accepted in an upstream's answer.
pub const MAX_HEADERS: usize = 256;
/// Longest chunk-size or trailer line.
const MAX_LINE: usize = 4096;
/// Longest trailer section (pingora's limit).
const MAX_TRAILERS: usize = 64 * 1024;

/// Where the body of an answer ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// No body (HEAD, 1xx, 204, 304).
    None,
    Length(u64),
    Chunked,
    /// Until the upstream closes.
    Close,
}

/// What the relay needs of an answer's head.
#[derive(Debug, Clone, Copy)]
pub struct Head {
    /// Bytes of the head (status line to blank line).
    pub len: usize,
    pub status: u16,
    pub body: Body,
    /// The connection can carry another request after this answer (as far as the head says).
    pub reusable: bool,
    /// The upstream sent `Transfer-Encoding` (a coding other than the final chunked one stays
    /// on the body).
    pub transfer_encoding: bool,
}

/// Room for an answer's header lines (see [`super::slots`]): most answers fit the inline
/// slots.
pub type Slots<'b> = super::slots::Slots<'b, INLINE_HEADERS>;

const INLINE_HEADERS: usize = 32;

/// An answer head as parsed: what the relay writes from.
pub struct Lines<'b> {
    pub reason: Option<&'b str>,
    pub headers: &'b [httparse::Header<'b>],
}

/// One parse into `slots`: the head's length and its parts, `None` while incomplete.
#[allow(clippy::type_complexity)]
fn parse_in<'b>(
    buf: &'b [u8],
    slots: &'b mut [httparse::Header<'b>],
) -> Result<Option<(usize, httparse::Response<'b, 'b>)>, httparse::Error> {
    let mut resp = httparse::Response::new(slots);
    Ok(match resp.parse(buf)? {
        httparse::Status::Complete(n) => Some((n, resp)),
        httparse::Status::Partial => None,
    })
}

/// Parses the answer head at the start of `buf`: `Ok(None)` while incomplete. `head_only`:
/// the request was HEAD.
pub fn head<'b>(
    buf: &'b [u8],
    slots: &'b mut Slots<'b>,
    head_only: bool,
) -> Result<Option<(Head, Lines<'b>)>, Failure> {
    let parsed = slots.parse(
        buf,
        MAX_HEADERS,
        |headers| parse_in(buf, headers),
        |parsed| matches!(parsed, Err(httparse::Error::TooManyHeaders)),
    );
    let Some((len, resp)) = parsed.map_err(|_| Failure::Protocol)? else {
        return Ok(None);
    };
    let status = resp.code.ok_or(Failure::Protocol)?;
    let http10 = resp.version == Some(0);
    let mut length: Option<u64> = None;
    let mut te: Option<&[u8]> = None;
    let (mut close, mut keep_alive) = (false, false);
    for h in resp.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            // Identical duplicates and lists are one length; anything else is no length at all.
            for part in h.value.split(|b| *b == b',') {
                let part = part.trim_ascii();
                if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
                    return Err(Failure::Protocol);
                }
                let n: u64 = std::str::from_utf8(part)
                    .ok()
                    .and_then(|p| p.parse().ok())
                    .ok_or(Failure::Protocol)?;
                if length.is_some_and(|l| l != n) {
                    return Err(Failure::Protocol);
                }
                length = Some(n);
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            te = Some(h.value);
        } else if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
    let body = if head_only || status < 200 || status == 204 || status == 304 {
        Body::None
    } else if let Some(te) = te {
        // Transfer-Encoding overrides Content-Length; only a final chunked coding frames it.
        let last = te.rsplit(|b| *b == b',').next().unwrap_or_default();
        if last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
            Body::Chunked
        } else {
            Body::Close
        }
    } else if let Some(n) = length {
        Body::Length(n)
    } else {
        Body::Close
    };
    // RFC 9112 section 6.1: Transfer-Encoding on an HTTP/1.0 answer: close after it.
    let reusable =
        !close && (!http10 || keep_alive) && body != Body::Close && !(http10 && te.is_some());
    let h = Head {
        len,
        status,
        body,
        reusable,
        transfer_encoding: te.is_some(),
    };
    let lines = Lines {
        reason: resp.reason,
        headers: resp.headers,
    };
    Ok(Some((h, lines)))
}

/// A strict decoder of a chunked body, fed the bytes as they arrive.
#[derive(Debug, Default)]
pub struct Chunks {
    state: State,
    /// Bytes of the current line seen (size or trailer), bounded.
    line: usize,
    trailers: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In a chunk-size line: digits seen so far, value.
    #[default]
    SizeStart,
    Size(u64),
    /// After `;`: extensions, up to the CR.
    Ext(u64),
    /// After the size line's CR: its LF.
    SizeLf(u64),
    /// Chunk data left.
    Data(u64),
    /// After data: its CR, then its LF.
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    /// In a trailer line: whether a colon was seen, whether the name had a byte.
    Trailer {
        colon: bool,
        named: bool,
    },
    /// After a trailer line's CR.
    TrailerLf,
    /// After the final empty line's CR.
    EndLf,
    Done,
}

/// What one call to [`Chunks::feed`] found.
#[derive(Debug, PartialEq, Eq)]
pub struct Fed {
    /// `(start, end)` ranges of `buf` that are body data, in order.
    pub data: Vec<(usize, usize)>,
    /// Bytes of `buf` consumed.
    pub used: usize,
    pub done: bool,
}

impl Chunks {
    /// Decodes what `buf` holds; keeps its place across calls (feed the rest after `used`).
    pub fn feed(&mut self, buf: &[u8]) -> Result<Fed, Failure> {
        let bad = Err(Failure::Protocol);
        let mut data = Vec::new();
        let mut i = 0;
        while i < buf.len() {
            let b = buf[i];
            match self.state {
                State::Done => break,
                State::Data(left) => {
                    let take = ((buf.len() - i) as u64).min(left) as usize;
                    data.push((i, i + take));
                    i += take;
                    self.state = if left == take as u64 {
                        State::DataCr
                    } else {
                        State::Data(left - take as u64)
                    };
                    continue;
                }
                State::SizeStart | State::Size(_) => {
                    let v = match self.state {
                        State::Size(v) => Some(v),
                        _ => None,
                    };
                    match (b, v) {
                        (b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F', _) => {
                            let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                            let v = v.unwrap_or(0).checked_mul(16).ok_or(Failure::Protocol)? + d;
                            self.state = State::Size(v);
                        }
                        (b';' | b' ' | b'\t', Some(v)) => self.state = State::Ext(v),
                        (b'\r', Some(v)) => self.state = State::SizeLf(v),
                        _ => return bad,
                    }
                }
                State::Ext(v) => match b {
                    b'\r' => self.state = State::SizeLf(v),
                    b'\n' | 0 => return bad,
                    _ => {}
                },
                State::SizeLf(v) => {
                    if b != b'\n' {
                        return bad;
                    }
                    self.line = 0;
                    self.state = if v == 0 {
                        State::TrailerStart
                    } else {
                        State::Data(v)
                    };
                    i += 1;
                    continue;
                }
                State::DataCr => {
                    if b != b'\r' {
                        return bad;
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return bad;
                    }
                    self.line = 0;
                    self.state = State::SizeStart;
                    i += 1;
                    continue;
                }
                State::TrailerStart => match b {
                    b'\r' => self.state = State::EndLf,
                    b':' | b'\n' | b' ' | b'\t' => return bad,
                    _ => {
                        self.state = State::Trailer {
                            colon: false,
                            named: true,
                        }
                    }
                },
                State::Trailer { colon, named } => match b {
                    b'\r' if colon => self.state = State::TrailerLf,
                    b':' if !colon && named => self.state = State::Trailer { colon: true, named },
                    b'\r' | b'\n' | 0 => return bad,
                    // A trailer name is a token.
                    b if !colon && !is_token(b) => return bad,
                    _ => {}
                },
                State::TrailerLf => {
                    if b != b'\n' {
                        return bad;
                    }
                    self.line = 0;
                    self.state = State::TrailerStart;
                    i += 1;
                    self.trailers += 1;
                    continue;
                }
                State::EndLf => {
                    if b != b'\n' {
                        return bad;
                    }
                    self.state = State::Done;
                    i += 1;
                    break;
                }
            }
            self.line += 1;
            if matches!(self.state, State::Trailer { .. }) {
                self.trailers += 1;
            }
            if self.line > MAX_LINE || self.trailers > MAX_TRAILERS {
                return bad;
            }
            i += 1;
        }
        Ok(Fed {
            data,
            used: i,
            done: self.state == State::Done,
        })
    }
}

/// Whether `b` may appear in a token (RFC 9110 section 5.6.2).
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(parts: &[&[u8]]) -> Result<(Vec<u8>, bool, usize), Failure> {
        let mut c = Chunks::default();
        let mut out = Vec::new();
        let mut used_total = 0;
        for p in parts {
            let fed = c.feed(p)?;
            for (a, b) in fed.data {
                out.extend_from_slice(&p[a..b]);
            }
            used_total += fed.used;
            if fed.done {
                return Ok((out, true, used_total));
            }
        }
        Ok((out, false, used_total))
    }

    #[test]
    fn chunked_bodies_decode_at_every_split() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let (data, done, used) = decode(&[body]).unwrap();
        assert_eq!(data, b"hello world");
        assert!(done);
        assert_eq!(used, body.len() - 4);
        for cut in 1..body.len() - 4 {
            let (data, done, used) = decode(&[&body[..cut], &body[cut..]]).unwrap();
            assert_eq!(data, b"hello world", "cut {cut}");
            assert!(done, "cut {cut}");
            assert_eq!(used, body.len() - 4, "cut {cut}");
        }
    }

    #[test]
    fn malformed_chunking_is_refused() {
        for bad in [
            &b"5\nhello\n0\n\n"[..],
            b"5\r\r\nhello\r\n0\r\n\r\n",
            b"zz\r\n",
            b"5\r\nhelloX\r\n",
            b"5\r\nhello\r\n0\r\nX-T: a\rSet-Cookie: evil=1\r\n\r\n",
            b"5\r\nhello\r\n0\r\nHTTP/1.1 200 OK\r\n\r\n",
            b"5\r\nhello\r\n0\r\n: no name\r\n\r\n",
            b"ffffffffffffffffff\r\n",
        ] {
            assert!(decode(&[bad]).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    fn framing(raw: &[u8], head_only: bool) -> (Body, bool) {
        let mut slots = Slots::new();
        let (h, _) = head(raw, &mut slots, head_only).unwrap().unwrap();
        (h.body, h.reusable)
    }

    #[test]
    fn framing_follows_rfc_9112() {
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false),
            (Body::Length(5), true)
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
                false
            ),
            (Body::Length(5), true)
        );
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true),
            (Body::None, true)
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 9\r\n\r\n",
                false
            ),
            (Body::Chunked, true)
        );
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false),
            (Body::Close, false)
        );
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\n\r\n", false),
            (Body::Close, false)
        );
        assert_eq!(
            framing(
                b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n",
                false
            ),
            (Body::Chunked, false)
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 304 Not Modified\r\nConnection: close\r\n\r\n",
                false
            ),
            (Body::None, false)
        );
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n",
        ] {
            let mut slots = Slots::new();
            assert!(
                head(bad, &mut slots, false).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    fn with_lines(n: usize) -> Vec<u8> {
        let mut raw = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..n {
            raw.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        raw.extend_from_slice(b"Content-Length: 0\r\n\r\n");
        raw
    }

    #[test]
    fn heads_past_the_inline_slots_parse_up_to_the_limit() {
        let raw = with_lines(100);
        let mut slots = Slots::new();
        let (h, lines) = head(&raw, &mut slots, false).unwrap().unwrap();
        assert_eq!((h.len, h.body), (raw.len(), Body::Length(0)));
        assert_eq!(lines.headers.len(), 101);
        let raw = with_lines(MAX_HEADERS);
        let mut slots = Slots::new();
        assert!(head(&raw, &mut slots, false).is_err());
    }
}
