//! The baseline for the cache-hit scenario: pingora itself with nothing in front of the
//! response. `request_filter` writes a 200 with a fixed body and the same headers pollgate's
//! cache hit carries (`content-type`, `content-length`, `cache-control`, `etag`, `age`), and
//! returns `Ok(true)`; nothing is ever proxied.

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::listeners::ListenerConfig;
use pingora_core::protocols::l4::stream::L4BufferSettings;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::ResponseHeader;
use pingora_proxy::{ProxyHttp, Session};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct BareArgs {
    #[arg(long)]
    listen: String,
    /// The body to answer with, byte for byte.
    #[arg(long)]
    body_file: PathBuf,
    #[arg(long, default_value = "application/json")]
    content_type: String,
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Per-connection L4 read buffer in bytes (pingora's default is 64 KiB).
    #[arg(long)]
    l4_read_buffer: Option<usize>,
}

struct Bare {
    body: Bytes,
    content_type: String,
    etag: String,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn request_filter(
        &self,
        session: &mut Session,
        _ctx: &mut (),
    ) -> pingora_error::Result<bool> {
        let mut h = ResponseHeader::build(200, Some(5))?;
        h.insert_header(http::header::CONTENT_TYPE, self.content_type.as_str())?;
        h.insert_header(http::header::CONTENT_LENGTH, self.body.len().to_string())?;
        h.insert_header(http::header::CACHE_CONTROL, "no-cache")?;
        h.insert_header(http::header::ETAG, self.etag.as_str())?;
        h.insert_header(http::header::AGE, "0")?;
        let head = session.req_header().method == http::Method::HEAD;
        session.write_response_header(Box::new(h), head).await?;
        if !head {
            session
                .write_response_body(Some(self.body.clone()), true)
                .await?;
        }
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora_error::Result<Box<HttpPeer>> {
        pingora_error::Error::e_explain(
            pingora_error::ErrorType::InternalError,
            "bare-pingora never proxies",
        )
    }
}

/// A 34-byte strong validator, the size of pollgate's, so the header bytes match too.
fn etag_of(body: &[u8]) -> String {
    // FNV-1a twice (different seeds), printed as 32 hex digits.
    let fnv = |seed: u64| {
        body.iter().fold(seed, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
        })
    };
    format!(
        "\"{:016x}{:016x}\"",
        fnv(0xcbf2_9ce4_8422_2325),
        fnv(0x8422_2325_cbf2_9ce4)
    )
}

pub fn main(a: BareArgs) -> ExitCode {
    let body = match std::fs::read(&a.body_file) {
        Ok(b) => Bytes::from(b),
        Err(e) => {
            eprintln!("{}: {e}", a.body_file.display());
            return ExitCode::from(2);
        }
    };
    let conf = ServerConf {
        threads: a.threads.max(1),
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(0),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: false,
        daemon: false,
        nocapture: false,
        test: false,
        conf: None,
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    server.bootstrap();
    let etag = etag_of(&body);
    let mut svc = pingora_proxy::http_proxy_service(
        &server.configuration,
        Bare {
            body,
            content_type: a.content_type,
            etag,
        },
    );
    match a.l4_read_buffer {
        Some(n) => svc.add_listener(
            ListenerConfig::tcp(a.listen.clone()).l4_buffer(L4BufferSettings::default().read(n)),
        ),
        None => svc.add_tcp(&a.listen),
    }
    server.add_service(svc);
    eprintln!("bare pingora listening on {}", a.listen);
    server.run_forever()
}
