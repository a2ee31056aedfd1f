//! Where the listeners bind, and the one start-up line that says so.
//!
//! A port of 0 in `listen` or `metrics_listen` lets the kernel pick the port, so tests and tools
//! can run a gateway without racing for a free port. pingora binds its listeners itself, deep in
//! each service, and tells no one the port it got; so for port 0 the port is chosen here first:
//! a socket with `SO_REUSEPORT` is bound to `ip:0` (never `listen()`ed, so the kernel never hands
//! it a connection) and kept open for the life of the process, and pingora is given `ip:PORT`
//! with `SO_REUSEPORT` so that it may bind the same port beside it. While the reservation lives,
//! no other socket can be given that port by the kernel, and only a socket of the same user that
//! also asks for `SO_REUSEPORT` can bind it explicitly.
//!
//! Fixed ports are handed to pingora exactly as written, without `SO_REUSEPORT`.

use crate::config::Config;
use pingora_core::listeners::{ListenerConfig, TcpSocketOptions};
use std::net::SocketAddr;
use std::sync::Mutex;

/// Dropped before pingora has bound its listener, a reservation would reopen the very race it
/// closes, and pingora tells no one when it has bound: so they live as long as the process.
static RESERVED: Mutex<Vec<tokio::net::TcpSocket>> = Mutex::new(Vec::new());

/// One configured listener address.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The address as written in the config.
    pub configured: String,
    /// The address the listener binds: the configured one, or `ip:PORT` with the reserved port.
    pub addr: SocketAddr,
    /// The port was picked by the kernel (the config said port 0).
    pub picked: bool,
}

impl Endpoint {
    /// Resolves one configured address, reserving a port when it says port 0.
    pub fn resolve(configured: &str) -> std::io::Result<Endpoint> {
        let addr: SocketAddr = configured.parse().map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("`{configured}` is not an ip:port address"),
            )
        })?;
        if addr.port() != 0 {
            return Ok(Endpoint {
                configured: configured.to_string(),
                addr,
                picked: false,
            });
        }
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.set_reuseport(true)?;
        socket.bind(addr)?;
        let bound = socket.local_addr()?;
        RESERVED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(socket);
        Ok(Endpoint {
            configured: configured.to_string(),
            addr: bound,
            picked: true,
        })
    }

    /// What pingora binds for this address.
    pub fn listener(&self) -> ListenerConfig {
        if !self.picked {
            return ListenerConfig::tcp(self.configured.as_str());
        }
        let mut options = TcpSocketOptions::default();
        options.so_reuseport = Some(true);
        ListenerConfig::tcp(self.addr.to_string()).tcp_socket_options(options)
    }
}

/// Every listener of the gateway.
#[derive(Debug, Clone)]
pub struct Listeners {
    /// `listen`, in config order.
    pub proxy: Vec<Endpoint>,
    /// `tls.listen`.
    pub tls: Option<Endpoint>,
    /// `metrics_listen`.
    pub admin: Option<Endpoint>,
}

impl Listeners {
    /// Resolves every address of `config`, reserving the ports of those that say port 0.
    pub fn reserve(config: &Config) -> std::io::Result<Listeners> {
        let name = |what: &str, e: std::io::Error| {
            std::io::Error::new(e.kind(), format!("cannot reserve a port for {what}: {e}"))
        };
        let proxy = config
            .listen
            .iter()
            .map(|l| Endpoint::resolve(l).map_err(|e| name(l, e)))
            .collect::<Result<Vec<_>, _>>()?;
        let tls = config
            .tls
            .as_ref()
            .map(|t| Endpoint::resolve(&t.listen).map_err(|e| name(&t.listen, e)))
            .transpose()?;
        let admin = config
            .metrics_listen
            .as_deref()
            .map(|m| Endpoint::resolve(m).map_err(|e| name(m, e)))
            .transpose()?;
        Ok(Listeners { proxy, tls, admin })
    }

    /// The addresses the public listeners bind, the TLS one last.
    pub fn proxy_addrs(&self) -> Vec<SocketAddr> {
        self.proxy.iter().chain(&self.tls).map(|e| e.addr).collect()
    }

    /// Whether any port was picked by the kernel.
    pub fn any_picked(&self) -> bool {
        self.proxy
            .iter()
            .chain(&self.tls)
            .chain(&self.admin)
            .any(|e| e.picked)
    }

    /// The start-up line tools read the addresses from (documented in docs/operations.md; its
    /// wording is a contract): `listening proxy=ADDR[,ADDR...] [admin=ADDR] [tls=ADDR]`, with
    /// `proxy=` left out when there is no cleartext listener.
    pub fn announce(&self) {
        let proxy = self
            .proxy
            .iter()
            .map(|e| e.addr.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let proxy = (!proxy.is_empty()).then_some(proxy);
        let admin = self.admin.as_ref().map(|e| e.addr.to_string());
        let tls = self.tls.as_ref().map(|e| e.addr.to_string());
        // tracing prints a field only when present, in the order written here.
        fn show(v: &Option<String>) -> Option<tracing::field::DisplayValue<&str>> {
            v.as_deref().map(tracing::field::display)
        }
        tracing::info!(
            proxy = show(&proxy),
            admin = show(&admin),
            tls = show(&tls),
            "listening"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fixed_port_is_passed_through_as_written() {
        let e = Endpoint::resolve("127.0.0.1:8080").unwrap();
        assert!(!e.picked);
        assert_eq!(e.addr, "127.0.0.1:8080".parse().unwrap());
    }

    #[test]
    fn port_zero_reserves_a_port_that_a_plain_bind_cannot_take() {
        let a = Endpoint::resolve("127.0.0.1:0").unwrap();
        let b = Endpoint::resolve("127.0.0.1:0").unwrap();
        assert!(a.picked && a.addr.port() != 0, "{a:?}");
        assert_ne!(a.addr, b.addr);
        // A listener without SO_REUSEPORT (anyone else) is refused the port...
        let err = std::net::TcpListener::bind(a.addr).expect_err("port must be held");
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "{err}");
        // ...while one with it (pingora, told so) binds and listens beside the reservation.
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.set_reuseport(true).unwrap();
        s.bind(a.addr).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let l = s.listen(16).unwrap();
            // Every connection reaches the listener: the reservation is never listening, so
            // the kernel has no one else to hand a connection to.
            for _ in 0..20 {
                let c = tokio::net::TcpStream::connect(a.addr).await.unwrap();
                let (s, _) = tokio::time::timeout(std::time::Duration::from_secs(5), l.accept())
                    .await
                    .expect("the listener got the connection")
                    .unwrap();
                assert_eq!(s.peer_addr().unwrap(), c.local_addr().unwrap());
            }
        });
    }
}
