//! The one request-head validator. Every request head is read and judged here, in the
//! connection loop, before any path answers it: pollgate's own writers and pingora's proxy only
//! ever see heads this module accepted, so no request can be judged one way on one path and
//! another way on the other.
//!
//! It holds every check either path used to make, and pingora's own (pingora-core's HTTP/1
//! server session: userinfo in `Host`, the `Content-Length`/`Transfer-Encoding` rules), plus
//! the size limits. Being stricter than pingora is deliberate: what pingora would have
//! "repaired" (an unescaped space in a target, say) is refused with a `400` here.

use super::headers::PROTECTED;
use crate::config::Limits;

/// Header lines accepted in one request head; more is `431`.
pub const MAX_HEADERS: usize = 128;
/// Header lines parsed in place without an allocation: a poller's head has a handful (curl,
/// `requests`, `ab`: 3-5; a browser's `fetch`: 12-18). Each slot is 32 bytes of every held
/// poll's memory, so a larger head pays a heap vector sized to its lines instead.
const INLINE_HEADERS: usize = 16;

/// Room for a request head's header lines (see [`super::slots`]).
pub type Slots<'b> = super::slots::Slots<'b, INLINE_HEADERS>;

const TOO_MANY: Refusal = refuse(431, "too many request headers");
/// `Connection` options accepted (pingora's proxy refuses ten or more).
const MAX_NOMINATIONS: usize = 10;

/// A request refused before any path saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: &'static str,
}

const fn refuse(status: u16, reason: &'static str) -> Refusal {
    Refusal { status, reason }
}

/// How the request's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    None,
    /// `Content-Length: n` with n above zero.
    Length(u64),
    Chunked,
}

/// A validated request head; it borrows the connection's read buffer.
#[derive(Debug)]
pub struct RequestHead<'b> {
    /// Bytes of the head in the buffer, leading empty lines included.
    pub len: usize,
    /// The head's bytes (`&buf[..len]`): the method, target and header names and values are
    /// slices of it.
    pub raw: &'b [u8],
    pub method: &'b str,
    /// The request target as sent (origin-form: path and query).
    pub target: &'b str,
    pub path: &'b str,
    pub query: Option<&'b str>,
    pub http10: bool,
    pub headers: &'b [httparse::Header<'b>],
    pub body: Body,
    /// The client lets the connection stay open after the answer (HTTP/1.1 unless
    /// `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`).
    pub keep_alive: bool,
    /// The head carries an `Upgrade` header or a `Sec-WebSocket-Key` (a handshake, genuine or
    /// not: `handshake.rs` tells).
    pub upgrade: bool,
}

impl RequestHead<'_> {
    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }

    pub fn has_body(&self) -> bool {
        self.body != Body::None
    }

    /// How many bytes of `buffered` belong to this request (head and body): what pingora may
    /// read of them. A chunked body's end is pingora's to find, so it gets every byte (and closes
    /// the connection after a request with bytes behind it).
    pub fn extent(&self, buffered: usize) -> usize {
        match self.body {
            Body::None => self.len,
            Body::Length(n) => self.len.saturating_add(n.min(usize::MAX as u64) as usize),
            Body::Chunked => buffered,
        }
        .min(buffered)
    }

    /// How many more bytes of this request pingora may read from the socket once it has the
    /// first `extent` bytes (see [`Self::extent`]): the rest of a `Content-Length` body, none for
    /// a bodiless request, no bound (`None`) for a chunked body or a handshake whose tunnel
    /// follows.
    pub fn socket_budget(&self, extent: usize) -> Option<u64> {
        match self.body {
            Body::Chunked => None,
            Body::None if self.upgrade => None,
            Body::None => Some(0),
            Body::Length(n) => Some(n.saturating_sub(extent.saturating_sub(self.len) as u64)),
        }
    }

    /// Values of every header named `name` (case-insensitive), in order.
    pub fn values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s [u8]> + 's {
        self.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }
}

/// Header values by name, from whichever parser read the request.
pub trait HeaderSource {
    /// Every value of the header `name` (lowercase), in order.
    fn values<'s>(&'s self, name: &'static str) -> impl Iterator<Item = &'s [u8]> + 's;
    /// Every header line, names in the client's casing, in order.
    fn all<'s>(&'s self) -> impl Iterator<Item = (&'s str, &'s [u8])> + 's;
}

impl HeaderSource for RequestHead<'_> {
    fn values<'s>(&'s self, name: &'static str) -> impl Iterator<Item = &'s [u8]> + 's {
        RequestHead::values(self, name)
    }

    fn all<'s>(&'s self) -> impl Iterator<Item = (&'s str, &'s [u8])> + 's {
        self.headers.iter().map(|h| (h.name, h.value))
    }
}

impl HeaderSource for pingora_http::RequestHeader {
    fn values<'s>(&'s self, name: &'static str) -> impl Iterator<Item = &'s [u8]> + 's {
        self.headers.get_all(name).into_iter().map(|v| v.as_bytes())
    }

    fn all<'s>(&'s self) -> impl Iterator<Item = (&'s str, &'s [u8])> + 's {
        self.case_header_iter().map(|(n, v)| {
            // Names were parsed as tokens: always ASCII.
            (
                std::str::from_utf8(n.as_slice()).unwrap_or("x-invalid"),
                v.as_bytes(),
            )
        })
    }
}

/// What the bytes read so far are.
#[derive(Debug)]
pub enum Parsed<'b> {
    /// An incomplete head (leading empty lines included): read more.
    Partial,
    Complete(RequestHead<'b>),
    Invalid(Refusal),
}

/// Parses and validates the request head at the start of `buf`.
pub fn parse<'b>(buf: &'b [u8], slots: &'b mut Slots<'b>, limits: &Limits) -> Parsed<'b> {
    slots.parse(
        buf,
        MAX_HEADERS,
        |headers| parse_in(buf, headers, limits),
        |parsed| matches!(parsed, Parsed::Invalid(r) if *r == TOO_MANY),
    )
}

fn parse_in<'b>(
    buf: &'b [u8],
    headers: &'b mut [httparse::Header<'b>],
    limits: &Limits,
) -> Parsed<'b> {
    let mut req = httparse::Request::new(headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > limits.max_request_header_bytes {
                Parsed::Invalid(refuse(431, "request headers too large"))
            } else if request_line_too_long(buf, limits) {
                Parsed::Invalid(refuse(431, "request line too large"))
            } else {
                Parsed::Partial
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Parsed::Invalid(TOO_MANY),
        Err(httparse::Error::Version) => {
            return Parsed::Invalid(refuse(400, "unsupported or malformed HTTP version"))
        }
        Err(_) => return Parsed::Invalid(refuse(400, "malformed request head")),
    };
    match validate(req, &buf[..len], limits) {
        Ok(head) => Parsed::Complete(head),
        Err(r) => Parsed::Invalid(r),
    }
}

/// Whether the (partial) request line already exceeds its limit; leading empty lines, which
/// the parser skips, do not count.
fn request_line_too_long(buf: &[u8], limits: &Limits) -> bool {
    let start = buf
        .iter()
        .position(|b| *b != b'\r' && *b != b'\n')
        .unwrap_or(buf.len());
    let line = &buf[start..];
    let end = line.iter().position(|b| *b == b'\n').unwrap_or(line.len());
    end > limits.max_request_line_bytes
}

fn validate<'b>(
    req: httparse::Request<'b, 'b>,
    raw: &'b [u8],
    limits: &Limits,
) -> Result<RequestHead<'b>, Refusal> {
    let len = raw.len();
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(refuse(400, "malformed request line"));
    };
    let headers: &'b [httparse::Header<'b>] = req.headers;
    // The request line as `check_request_shape` always measured it: method, target, version.
    let line = method.len() + target.len() + 11;
    if line > limits.max_request_line_bytes {
        return Err(refuse(431, "request line too large"));
    }
    if len > limits.max_request_header_bytes {
        return Err(refuse(431, "request headers too large"));
    }
    let http10 = version == 0;

    // A tunnel to anywhere is not a gateway's to open (pingora's proxy refuses it too).
    if method == "CONNECT" {
        return Err(refuse(405, "CONNECT is not supported"));
    }
    // Routing is by path alone: a foreign authority or `*` is refused, never followed (no open
    // proxy).
    if !target.starts_with('/') {
        return Err(if target.contains("://") {
            refuse(400, "absolute-form request targets are not accepted")
        } else {
            refuse(400, "the request target must be a path")
        });
    }
    if target.contains('#')
        || (!target.bytes().all(plain_target_byte)
            && http::uri::PathAndQuery::try_from(target).is_err())
    {
        return Err(refuse(400, "the request target is not a valid URI path"));
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };

    let mut hosts = 0;
    let mut length: Option<u64> = None;
    let mut lengths = 0;
    let mut te: Option<&[u8]> = None;
    let mut te_lines = 0;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut nominations = 0;
    let mut upgrade = false;
    for h in headers {
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
            check_host(h.value)?;
        } else if name.eq_ignore_ascii_case("content-length") {
            lengths += 1;
            let v = h.value.trim_ascii();
            if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
                return Err(refuse(400, "Content-Length is not a number"));
            }
            length = Some(
                std::str::from_utf8(v)
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .ok_or(refuse(400, "Content-Length is too large"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            te_lines += 1;
            te = Some(h.value);
        } else if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                if token.is_empty() {
                    continue;
                }
                nominations += 1;
                check_nomination(token, nominations)?;
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive_token = true;
                }
            }
        } else if name.eq_ignore_ascii_case("upgrade")
            || name.eq_ignore_ascii_case("sec-websocket-key")
        {
            upgrade = true;
        }
    }
    if hosts > 1 {
        return Err(refuse(
            400,
            "HTTP/1.1 requests need exactly one Host header",
        ));
    }
    if hosts == 0 && !http10 {
        return Err(refuse(
            400,
            "HTTP/1.1 requests need exactly one Host header",
        ));
    }
    if lengths > 1 {
        return Err(refuse(400, "more than one Content-Length header"));
    }
    let body = match te {
        Some(_) if lengths > 0 => {
            return Err(refuse(400, "both Content-Length and Transfer-Encoding"));
        }
        Some(_) if http10 => return Err(refuse(400, "Transfer-Encoding needs HTTP/1.1")),
        Some(v) if te_lines == 1 && v.trim_ascii().eq_ignore_ascii_case(b"chunked") => {
            Body::Chunked
        }
        Some(_) => {
            return Err(refuse(
                400,
                "unsupported Transfer-Encoding (only `chunked`)",
            ))
        }
        None => match length {
            Some(n) if n > 0 => Body::Length(n),
            _ => Body::None,
        },
    };
    let keep_alive = keeps_alive(http10, close, keep_alive_token);
    Ok(RequestHead {
        len,
        raw,
        method,
        target,
        path,
        query,
        http10,
        headers,
        body,
        keep_alive,
        upgrade,
    })
}

/// Whether the client lets the connection stay open after the answer, from every
/// `Connection` line: HTTP/1.1 unless `close`, HTTP/1.0 only with `keep-alive`.
pub fn keeps_alive(http10: bool, close: bool, keep_alive_token: bool) -> bool {
    !close && (!http10 || keep_alive_token)
}

/// [`keeps_alive`] from `Connection` header values.
pub fn keeps_alive_by<'a>(http10: bool, connection: impl Iterator<Item = &'a [u8]>) -> bool {
    let (mut close, mut keep) = (false, false);
    for token in connection
        .flat_map(|v| v.split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
    {
        close |= token.eq_ignore_ascii_case(b"close");
        keep |= token.eq_ignore_ascii_case(b"keep-alive");
    }
    keeps_alive(http10, close, keep)
}

/// `Connection` names headers the next hop must drop: a bounded number of plain tokens, never a
/// header the gateway itself vouches for (pingora's proxy holds the same rules).
fn check_nomination(token: &[u8], count: usize) -> Result<(), Refusal> {
    if count >= MAX_NOMINATIONS {
        return Err(refuse(400, "too many Connection header options"));
    }
    if !token.iter().all(|b| is_tchar(*b)) {
        return Err(refuse(400, "malformed Connection header option"));
    }
    if PROTECTED
        .iter()
        .any(|p| token.eq_ignore_ascii_case(p.as_bytes()))
    {
        return Err(refuse(
            400,
            "the Connection header may not nominate this header",
        ));
    }
    Ok(())
}

/// Bytes every URI path and query may hold (the `http` crate, and so pingora, accepts any
/// target made of them); a target with others is checked by the `http` crate itself. Saves the
/// common case an allocation.
fn plain_target_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/%?".contains(&b)
}

/// A `Host` of a name or IPv4 address and an optional port, which the `http` crate accepts as
/// an authority; anything else is checked by the crate itself.
fn plain_host(v: &[u8]) -> bool {
    let (host, port) = match v.iter().rposition(|b| *b == b':') {
        Some(i) => (&v[..i], Some(&v[i + 1..])),
        None => (v, None),
    };
    let port_ok = port.is_none_or(|p| {
        std::str::from_utf8(p)
            .ok()
            .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|p| p.parse::<u16>().ok())
            .is_some()
    });
    !host.is_empty()
        && host
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'.' || *b == b'-')
        && port_ok
}

/// RFC 9110 section 5.6.2's `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A `Host` value must be an authority (`host[:port]`) without userinfo: `attacker@evil` is
/// refused by pingora's own session, so it is refused on every path. An empty value is allowed
/// (RFC 9112 section 3.2).
fn check_host(value: &[u8]) -> Result<(), Refusal> {
    let v = value.trim_ascii();
    if v.contains(&b'@') {
        return Err(refuse(400, "userinfo in Host header"));
    }
    if !v.is_empty() && !plain_host(v) && http::uri::Authority::try_from(v).is_err() {
        return Err(refuse(400, "malformed Host header"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn limits() -> Limits {
        Config::from_yaml(
            "listen: \"127.0.0.1:1\"\nupstreams:\n  b:\n    address: \"127.0.0.1:2\"\nroutes:\n  - name: d\n    prefix: \"/\"\n    upstream: b\n",
            &|_| None,
        )
        .expect("config")
        .limits
    }

    fn judge(raw: &[u8]) -> Result<(usize, Body, bool), Option<Refusal>> {
        let mut h = Slots::new();
        match parse(raw, &mut h, &limits()) {
            Parsed::Partial => Err(None),
            Parsed::Invalid(r) => Err(Some(r)),
            Parsed::Complete(head) => Ok((head.len, head.body, head.keep_alive)),
        }
    }

    fn status(raw: &[u8]) -> u16 {
        match judge(raw) {
            Ok(_) => 200,
            Err(None) => 0,
            Err(Some(r)) => r.status,
        }
    }

    #[test]
    fn plain_requests_pass_with_their_framing() {
        // What the `http` crate accepts in a path, pingora accepts too.
        assert!(judge(b"GET /a{b}|c HTTP/1.1\r\nHost: x\r\n\r\n").is_ok());
        let get = b"GET /a?x=1 HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(judge(get), Ok((get.len(), Body::None, true)));
        let post = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc";
        assert_eq!(judge(post), Ok((post.len() - 3, Body::Length(3), true)));
        let chunked = b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(judge(chunked).unwrap().1, Body::Chunked);
        let zero = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(judge(zero).unwrap().1, Body::None);
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection() {
        assert!(judge(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap().2);
        assert!(
            !judge(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap()
                .2
        );
        assert!(!judge(b"GET / HTTP/1.0\r\n\r\n").unwrap().2);
        assert!(
            judge(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
                .unwrap()
                .2
        );
    }

    #[test]
    fn empty_lines_and_bare_lf_are_one_head() {
        // Leading empty lines are skipped but stay part of the head's bytes.
        let raw = b"\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(judge(raw).unwrap().0, raw.len());
        assert_eq!(judge(b"\r\n\r\n"), Err(None));
        assert_eq!(judge(b"\r\n"), Err(None));
        let lf = b"GET / HTTP/1.1\nHost: x\n\nGET /b HTTP/1.1\n";
        assert_eq!(judge(lf).unwrap().0, 24);
    }

    #[test]
    fn doubtful_heads_are_refused() {
        for (raw, want) in [
            (&b"GET / HTTP/1.1\r\n\r\n"[..], 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: attacker@evil.example\r\n\r\n", 400),
            (b"GET / HTTP/1.0\r\nHost: u:p@evil\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
            (b"GET http://x/a HTTP/1.1\r\nHost: x\r\n\r\n", 400),
            (b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n", 405),
            (b"CONNECT /p/x HTTP/1.1\r\nHost: x\r\n\r\n", 405),
            (b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", 400),
            (b"GET /a#f HTTP/1.1\r\nHost: x\r\n\r\n", 400),
            (b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n", 400),
            (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400),
            (b"GET / HTTP/1.1\rHost: x\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (b"\x16\x03\x01garbage\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Host\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: x-forwarded-for\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: \"x\"\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: :authority\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: a,b,c,d,e\r\nConnection: f,g,h,i,j\r\n\r\n", 400),
        ] {
            assert_eq!(status(raw), want, "{}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn sizes_are_limited() {
        let l = limits();
        let long_line = format!(
            "GET /{} HTTP/1.1\r\nHost: x\r\n\r\n",
            "a".repeat(l.max_request_line_bytes)
        );
        assert_eq!(status(long_line.as_bytes()), 431);
        let partial_line = format!("GET /{}", "a".repeat(l.max_request_line_bytes + 1));
        assert_eq!(status(partial_line.as_bytes()), 431);
        let big = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n",
            "a".repeat(l.max_request_header_bytes)
        );
        assert_eq!(status(big.as_bytes()), 431);
        let partial_big = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX: {}",
            "a".repeat(l.max_request_header_bytes)
        );
        assert_eq!(status(partial_big.as_bytes()), 431);
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("X-{i}: 1\r\n"))
            .collect();
        let many = format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n");
        assert_eq!(status(many.as_bytes()), 431);
        // More than fit inline, fewer than the limit: parsed on the heap.
        let some: String = (0..INLINE_HEADERS + 5)
            .map(|i| format!("X-{i}: 1\r\n"))
            .collect();
        let some = format!("GET / HTTP/1.1\r\nHost: x\r\n{some}\r\n");
        assert_eq!(status(some.as_bytes()), 200);
        // Endless empty lines are bounded too.
        assert_eq!(
            status("\r\n".repeat(l.max_request_header_bytes).as_bytes()),
            431
        );
    }

    #[test]
    fn extents_end_after_the_body() {
        let mut h = Slots::new();
        let raw = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /b";
        let Parsed::Complete(head) = parse(raw, &mut h, &limits()) else {
            panic!("complete")
        };
        assert_eq!(head.extent(raw.len()), raw.len() - 6);
        assert_eq!(head.extent(head.len + 1), head.len + 1);
    }
}
