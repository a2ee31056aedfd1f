//! TLS for tests: a certificate authority made in the test, server certificates it signs
//! (written as PEM files for pollgate), and clients that trust only that authority.

use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use openssl::x509::X509;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use tokio::net::TcpStream;
use tokio_openssl::SslStream;

/// A test certificate authority.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub pem: String,
}

/// A server certificate and key, PEM.
pub struct ServerCert {
    pub cert: String,
    pub key: String,
    pub serial: u64,
}

impl ServerCert {
    /// Writes `cert.pem` (leaf then CA, as a chain) and `key.pem` into `dir`.
    pub fn write(&self, dir: &Path, ca: &TestCa) -> (PathBuf, PathBuf) {
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(&cert, format!("{}{}", self.cert, ca.pem)).unwrap();
        std::fs::write(&key, &self.key).unwrap();
        (cert, key)
    }
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "pollgate test CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for `127.0.0.1` and `localhost` with this serial number.
    pub fn server(&self, serial: u64) -> ServerCert {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        params.serial_number = Some(serial.into());
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        params.use_authority_key_identifier_extension = true;
        params
            .extended_key_usages
            .push(rcgen::ExtendedKeyUsagePurpose::ServerAuth);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        ServerCert {
            cert: cert.pem(),
            key: key.serialize_pem(),
            serial,
        }
    }

    /// A reqwest client that trusts this CA (and no system root).
    pub fn client(&self) -> reqwest::Client {
        self.client_builder().build().unwrap()
    }

    pub fn client_builder(&self) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .use_native_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(self.pem.as_bytes()).unwrap())
            .timeout(std::time::Duration::from_secs(60))
    }

    /// A verified TLS connection to `addr` (name `127.0.0.1`), offering `alpn` (wire format,
    /// empty for none).
    pub async fn connect(&self, addr: SocketAddr, alpn: &[u8]) -> SslStream<TcpStream> {
        let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
        b.cert_store_mut()
            .add_cert(X509::from_pem(self.pem.as_bytes()).unwrap())
            .unwrap();
        b.set_verify(SslVerifyMode::PEER);
        if !alpn.is_empty() {
            b.set_alpn_protos(alpn).unwrap();
        }
        let ssl = b
            .build()
            .configure()
            .unwrap()
            .into_ssl("127.0.0.1")
            .unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut s = SslStream::new(ssl, tcp).unwrap();
        Pin::new(&mut s)
            .connect()
            .await
            .unwrap_or_else(|e| panic!("TLS handshake with {addr}: {e}"));
        s
    }
}

/// The serial number of the certificate the server presented on `s`.
pub fn peer_serial(s: &SslStream<TcpStream>) -> u64 {
    let cert = s.ssl().peer_certificate().expect("a server certificate");
    let hex = cert.serial_number().to_bn().unwrap().to_hex_str().unwrap();
    u64::from_str_radix(&hex, 16).unwrap()
}

/// One request over an open connection, read to the end of its body (`Content-Length`).
pub async fn request_on<S>(s: &mut S, path: &str, headers: &[(&str, &str)]) -> super::Resp
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: test\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(std::time::Duration::from_secs(30), s.read(&mut chunk))
            .await
            .expect("an answer within 30 s")
            .unwrap();
        assert!(
            n > 0,
            "connection closed mid-answer: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = super::header_of(head, "content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if body.len() >= len {
                return super::Resp {
                    status: super::status_of(head),
                    head: head.to_string(),
                    body: body[..len].to_string(),
                };
            }
        }
    }
}

/// A backend reached over TLS only: WebSocket subscriptions (`wss://`) on `/ws/...` paths
/// fed by [`TlsUpstream::publish`], and plain HTTPS answers (`200`, body `https:PATH`) for
/// every other request.
pub struct TlsUpstream {
    pub addr: SocketAddr,
    state: std::sync::Arc<TlsUpstreamState>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct TlsUpstreamState {
    latest: parking_lot::Mutex<std::collections::HashMap<String, String>>,
    news: parking_lot::Mutex<Vec<tokio::sync::mpsc::UnboundedSender<(String, String)>>>,
    /// Paths of the plain HTTPS requests, in order.
    http: parking_lot::Mutex<Vec<String>>,
    /// Handshakes completed.
    handshakes: std::sync::atomic::AtomicUsize,
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsUpstream {
    /// Serves `cert` (PEM chain) with `key` on a port the kernel picks.
    pub async fn start(cert: &ServerCert, ca: &TestCa) -> TlsUpstream {
        use openssl::ssl::{SslAcceptor, SslFiletype};
        let dir = super::scratch_dir();
        let (cert_path, key_path) = cert.write(&dir, ca);
        let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).unwrap();
        b.set_certificate_chain_file(&cert_path).unwrap();
        b.set_private_key_file(&key_path, SslFiletype::PEM).unwrap();
        let acceptor = std::sync::Arc::new(b.build());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = std::sync::Arc::new(TlsUpstreamState::default());
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let state = shared.clone();
                tokio::spawn(async move {
                    let ssl = openssl::ssl::Ssl::new(acceptor.context()).unwrap();
                    let mut s = SslStream::new(ssl, tcp).unwrap();
                    if Pin::new(&mut s).accept().await.is_err() {
                        return;
                    }
                    state
                        .handshakes
                        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    serve_tls_connection(s, state).await;
                });
            }
        });
        TlsUpstream { addr, state, task }
    }

    /// Sends `text` to every subscriber of `path`, and to later ones first.
    pub fn publish(&self, path: &str, text: &str) {
        self.state
            .latest
            .lock()
            .insert(path.to_string(), text.to_string());
        self.state
            .news
            .lock()
            .retain(|tx| tx.send((path.to_string(), text.to_string())).is_ok());
    }

    pub fn http_paths(&self) -> Vec<String> {
        self.state.http.lock().clone()
    }

    pub fn handshakes(&self) -> usize {
        self.state
            .handshakes
            .load(std::sync::atomic::Ordering::SeqCst)
    }
}

async fn serve_tls_connection(
    mut s: SslStream<TcpStream>,
    state: std::sync::Arc<TlsUpstreamState>,
) {
    use futures_util::SinkExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::{handshake::derive_accept_key, protocol::Role, Message};
    loop {
        let mut buf = Vec::new();
        let head = loop {
            let mut chunk = [0u8; 2048];
            let n = match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break String::from_utf8_lossy(&buf[..end]).into_owned();
            }
        };
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
        if let Some(key) = super::header_of(&head, "sec-websocket-key") {
            let resp = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                derive_accept_key(key.as_bytes())
            );
            if s.write_all(resp.as_bytes()).await.is_err() {
                return;
            }
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let first = {
                let mut news = state.news.lock();
                news.push(tx);
                state.latest.lock().get(&path).cloned()
            };
            let mut ws =
                tokio_tungstenite::WebSocketStream::from_raw_socket(s, Role::Server, None).await;
            if let Some(text) = first {
                if ws.send(Message::text(text)).await.is_err() {
                    return;
                }
            }
            while let Some((p, text)) = rx.recv().await {
                if p == path && ws.send(Message::text(text)).await.is_err() {
                    return;
                }
            }
            return;
        }
        state.http.lock().push(path.clone());
        let body = format!("https:{path}");
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if s.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}
