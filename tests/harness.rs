//! The test harness's own checks: the framing reader must find where each answer ends, and
//! refuse what is not well-formed, or every test built on it could pass for the wrong reason.

mod common;

use common::wire::Reader;
use std::time::Duration;

async fn read_all(bytes: &[u8], head_only: bool) -> Vec<Result<common::wire::Answer, String>> {
    let (mut a, b) = tokio::io::duplex(1 << 16);
    let bytes = bytes.to_vec();
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        // Trickled, so every split point inside heads and chunks is crossed.
        for piece in bytes.chunks(3) {
            a.write_all(piece).await.unwrap();
            tokio::task::yield_now().await;
        }
    });
    let mut r = Reader::new(b).with_limit(Duration::from_secs(5));
    let mut out = Vec::new();
    loop {
        match r.answer(head_only).await {
            Ok(ans) => out.push(Ok(ans)),
            Err(e) if e.reason.contains("closed before an answer") => return out,
            Err(e) => {
                out.push(Err(e.reason));
                return out;
            }
        }
    }
}

#[tokio::test]
async fn the_reader_splits_answers_by_their_framing() {
    let wire = b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n\
HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello\
HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=1\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n\
HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n\
HTTP/1.0 200 OK\r\n\r\nuntil the close";
    let got = read_all(wire, false).await;
    let got: Vec<_> = got.into_iter().map(|a| a.unwrap()).collect();
    assert_eq!(got.len(), 5, "{got:#?}");
    assert_eq!(got[0].status, 103);
    assert_eq!(got[1].text(), "hello");
    assert_eq!(got[2].text(), "abcde");
    assert!(got[2].chunked);
    assert_eq!(got[2].trailers, vec!["X-T: 1".to_string()]);
    assert_eq!(got[3].status, 304);
    assert!(got[3].body.is_empty());
    assert_eq!(got[4].text(), "until the close");
}

#[tokio::test]
async fn the_reader_refuses_malformed_framing() {
    for (wire, why) in [
        (&b"HTTP/1.1 200 OK\nContent-Length: 1\n\nx"[..], "CRLF"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n",
            "CRLF",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            "chunk size",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            "closed after 5 of 10",
        ),
        (b"garbage\r\n\r\n", "not a status line"),
        (
            b"HTTP/1.1 200 OK\r\nX-T: a\rSet-Cookie: evil=1\r\nContent-Length: 0\r\n\r\n",
            "bare CR",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\r\nhello\r\n0\r\n\r\n",
            "bare CR",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n 5\r\nhello\r\n0\r\n\r\n",
            "chunk size",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nHTTP/1.1 200 OK\r\n\r\n",
            "trailer field line",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n folded\r\n\r\n",
            "header field line",
        ),
    ] {
        let got = read_all(wire, false).await;
        let last = got.last().expect("something read");
        let err = last.as_ref().expect_err("must be refused");
        assert!(err.contains(why), "{why}: {err}");
    }
}

#[tokio::test]
async fn head_answers_have_no_body_whatever_their_headers_say() {
    let wire =
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n";
    let got = read_all(wire, true).await;
    assert_eq!(got.len(), 2, "{got:#?}");
}
