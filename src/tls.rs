//! The TLS listener's certificate: read and checked from PEM files, and handed to each
//! handshake from a slot that a reload swaps.
//!
//! pingora builds a listener's `SslAcceptor` once, when the service starts, and never again; a
//! certificate set on it could only change with a restart. So the acceptor carries none:
//! pingora pauses every handshake at the moment OpenSSL needs a certificate and asks
//! [`Certificates`] (its `TlsAccept` callback), which gives the one in force. A reload replaces
//! that one; handshakes already done keep theirs, so no connection is dropped.

use async_trait::async_trait;
use parking_lot::RwLock;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::listeners::TlsAccept;
use pingora_core::protocols::tls::TlsRef;
use pingora_core::tls::ext;
use pingora_core::tls::pkey::{PKey, Private};
use pingora_core::tls::x509::X509;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

/// A certificate chain (leaf first) and its private key, known to match.
pub struct Identity {
    chain: Vec<X509>,
    key: PKey<Private>,
}

/// Which of the two files a problem is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Cert,
    Key,
}

impl Identity {
    /// Reads `cert` (PEM: the leaf, then any intermediates) and `key` (PEM), and checks that
    /// the key is the certificate's.
    pub fn load(cert: &Path, key: &Path) -> Result<Identity, Vec<(Part, String)>> {
        let mut problems = Vec::new();
        let chain = match std::fs::read(cert) {
            Err(e) => {
                problems.push((Part::Cert, format!("cannot read {}: {e}", cert.display())));
                None
            }
            Ok(pem) => match X509::stack_from_pem(&pem) {
                Ok(chain) if !chain.is_empty() => Some(chain),
                Ok(_) => {
                    problems.push((
                        Part::Cert,
                        format!("{} holds no PEM certificate", cert.display()),
                    ));
                    None
                }
                Err(e) => {
                    problems.push((
                        Part::Cert,
                        format!("{} is not a PEM certificate chain: {e}", cert.display()),
                    ));
                    None
                }
            },
        };
        let private = match std::fs::read(key) {
            Err(e) => {
                problems.push((Part::Key, format!("cannot read {}: {e}", key.display())));
                None
            }
            Ok(pem) => match PKey::private_key_from_pem(&pem) {
                Ok(k) => Some(k),
                Err(e) => {
                    problems.push((
                        Part::Key,
                        format!("{} is not a PEM private key: {e}", key.display()),
                    ));
                    None
                }
            },
        };
        let (Some(chain), Some(private)) = (chain, private) else {
            return Err(problems);
        };
        let matches = chain[0]
            .public_key()
            .map(|public| public.public_eq(&private))
            .unwrap_or(false);
        if !matches {
            return Err(vec![(
                Part::Key,
                format!(
                    "{} is not the private key of the certificate in {}",
                    key.display(),
                    cert.display()
                ),
            )]);
        }
        Ok(Identity {
            chain,
            key: private,
        })
    }

    /// The leaf's serial number in hex, for logs.
    pub fn serial(&self) -> String {
        self.chain[0]
            .serial_number()
            .to_bn()
            .ok()
            .and_then(|b| b.to_hex_str().ok())
            .map(|s| s.to_string())
            .unwrap_or_default()
    }

    /// Gives this identity to one handshake.
    fn install(&self, ssl: &mut TlsRef) -> Result<(), pingora_core::tls::error::ErrorStack> {
        ext::ssl_use_certificate(ssl, &self.chain[0])?;
        for intermediate in &self.chain[1..] {
            ext::ssl_add_chain_cert(ssl, intermediate)?;
        }
        ext::ssl_use_private_key(ssl, &self.key)
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("serial", &self.serial())
            .field("chain", &self.chain.len())
            .finish()
    }
}

/// The identity every new handshake is given; a reload swaps it.
#[derive(Clone)]
pub struct Certificates(Arc<RwLock<Arc<Identity>>>);

impl Certificates {
    pub fn new(identity: Arc<Identity>) -> Certificates {
        Certificates(Arc::new(RwLock::new(identity)))
    }

    /// From the next handshake on, `identity` is served.
    pub fn replace(&self, identity: Arc<Identity>) {
        *self.0.write() = identity;
    }

    pub fn current(&self) -> Arc<Identity> {
        self.0.read().clone()
    }

    /// pingora's settings for the TLS listener: Mozilla's intermediate profile, the
    /// certificate from this slot at each handshake, ALPN `h2` preferred to `http/1.1`, and
    /// read-ahead.
    pub fn settings(&self) -> pingora_core::Result<TlsSettings> {
        let mut settings = TlsSettings::with_callbacks(Box::new(self.clone()))?;
        settings.enable_h2();
        // Without read-ahead OpenSSL reads each record in two `recv`s (its 5-byte header, then
        // the rest): a third more system calls per request than cleartext. nginx sets it too.
        settings.set_read_ahead(true);
        Ok(settings)
    }
}

#[async_trait]
impl TlsAccept for Certificates {
    async fn certificate_callback(&self, ssl: &mut TlsRef) {
        // Without a certificate OpenSSL fails this handshake, which is all that can be done.
        if let Err(e) = self.current().install(ssl) {
            tracing::error!(error = %e, "cannot give the TLS certificate to a handshake");
        }
    }
}
