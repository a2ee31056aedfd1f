//! `pollgate demo`: the gateway in front of the built-in sample backend, ready for curl.

use crate::config::Config;
use crate::sample_backend::SampleBackend;
use std::time::Duration;

pub const DEMO_CONFIG: &str = include_str!("../config/demo.yaml");

/// Demo addresses, overridable from the command line.
#[derive(Debug, Clone)]
pub struct DemoAddrs {
    pub listen: String,
    pub metrics_listen: String,
    pub backend_listen: String,
}

/// The demo config with the chosen addresses.
pub fn demo_config(addrs: &DemoAddrs) -> Result<Config, crate::config::ConfigError> {
    let text = DEMO_CONFIG
        .replace("127.0.0.1:8080", &addrs.listen)
        .replace("127.0.0.1:9091", &addrs.metrics_listen)
        .replace("127.0.0.1:9000", &addrs.backend_listen);
    Config::from_yaml(&text, &|k| std::env::var(k).ok())
}

/// Starts the sample backend on its own thread and runtime; returns once it is listening, with
/// the address it got (port 0 lets the kernel pick).
pub fn start_backend(
    addr: &str,
    topics: &[&str],
    period: Duration,
) -> std::io::Result<(SampleBackend, std::net::SocketAddr)> {
    let listener = std::net::TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let backend = SampleBackend::new();
    let b = backend.clone();
    let topics: Vec<String> = topics.iter().map(|s| s.to_string()).collect();
    std::thread::Builder::new()
        .name("sample-backend".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                if !topics.is_empty() {
                    b.spawn_ticker(topics, period);
                }
                b.serve(listener).await;
            });
        })?;
    Ok((backend, bound))
}

/// Why the demo cannot listen on `addr`, naming what it was for and the flag that moves it.
pub fn bind_failure(addr: &str, flag: &str, what: &str, e: &std::io::Error) -> String {
    let advice = if e.kind() == std::io::ErrorKind::AddrInUse {
        format!("stop what is listening there, or choose another address with {flag} IP:PORT")
    } else {
        format!("choose another address with {flag} IP:PORT")
    };
    format!("pollgate demo: cannot listen on {addr} for {what} ({flag}): {e}; {advice}")
}

pub fn banner(addrs: &DemoAddrs) -> String {
    let g = &addrs.listen;
    let b = &addrs.backend_listen;
    let m = &addrs.metrics_listen;
    format!(
        r#"
pollgate demo: gateway http://{g}  ->  sample backend http://{b} (publishes btc, eth, sol every second)

  before pollgate (every poll costs the backend a request):
    curl -s http://{b}/api/prices/btc
  after pollgate (answered from cache, the backend sees one WebSocket subscription):
    curl -si http://{g}/api/prices/btc
  long poll until the next tick (send the ETag you were given):
    curl -si -H 'If-None-Match: "<etag>"' -H 'Prefer: wait=10' http://{g}/api/prices/btc
  cursor poll: the first poll subscribes and gives the newest id (Pollgate-Cursor: N); then
  every message after N, held until there is one (an older id gets Pollgate-Gap: true):
    curl -si http://{g}/api/news/btc
    curl -si 'http://{g}/api/news/btc?since=N'
  the same as a stream of events (what a browser's EventSource reads; reconnect with
  -H 'Last-Event-ID: N' to get every message after N):
    curl -N -H 'Accept: text/event-stream' http://{g}/api/news/btc
  publish your own message:
    curl -s -X POST -d '{{"headline":"hello"}}' http://{g}/publish/btc
  backend counters / metrics / live status page:
    curl -s http://{b}/stats ; curl -s http://{m}/metrics ; open http://{m}/
"#
    )
}
