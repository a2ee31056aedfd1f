//! Wiring: a validated [`Config`] becomes a pingora `Server` with the proxy service, the admin
//! service and the housekeeper.

use crate::accept::Detached;
use crate::admin::AdminApp;
use crate::background::Housekeeper;
use crate::config::Config;
use crate::listen::Listeners;
use crate::proxy::connection::ConnectionApp;
use crate::proxy::{Gateway, GatewayState};
use pingora_core::apps::http_app::HttpServer;
use pingora_core::apps::HttpServerOptions;
use pingora_core::protocols::http::v2::server::default_h2_options;
use pingora_core::protocols::l4::stream::{L4BufferSettings, DEFAULT_L4_WRITE_BUFFER_SIZE};
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;
use std::path::PathBuf;

/// Process options that come from the command line rather than the file.
#[derive(Debug, Default, Clone)]
pub struct RunOptions {
    /// The file SIGHUP reloads (`None` when the config is embedded, as in the demo).
    pub config_path: Option<PathBuf>,
    /// `-d`: run in the background.
    pub daemon: bool,
    /// `-u`: take the listening sockets over from a running instance (graceful upgrade).
    pub upgrade: bool,
}

/// pingora's own settings from the YAML, flags taking precedence.
pub fn server_conf(config: &Config, opts: &RunOptions) -> ServerConf {
    let s = &config.server;
    let mut conf = ServerConf {
        threads: s.threads,
        daemon: s.daemon || opts.daemon,
        grace_period_seconds: Some(s.grace_period_seconds),
        graceful_shutdown_timeout_seconds: Some(s.graceful_shutdown_timeout_seconds),
        work_stealing: s.work_stealing,
        error_log: s.error_log.clone(),
        ..ServerConf::default()
    };
    if let Some(p) = &s.pid_file {
        conf.pid_file = p.clone();
    }
    if let Some(u) = &s.upgrade_sock {
        conf.upgrade_sock = u.clone();
    }
    conf
}

/// Builds the pingora server; `run_forever` on the result serves until a signal. Fails only
/// when a port cannot be reserved for a `listen`/`metrics_listen` address with port 0.
pub fn build(config: Config, opts: RunOptions) -> std::io::Result<Server> {
    let listeners = Listeners::reserve(&config)?;
    if opts.upgrade && listeners.any_picked() {
        tracing::warn!("port 0 picks a new port: a graceful upgrade (-u) cannot take it over");
    }
    let conf = server_conf(&config, &opts);
    let opt = Opt {
        upgrade: opts.upgrade,
        daemon: conf.daemon,
        nocapture: false,
        test: false,
        conf: None,
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    server.bootstrap();

    crate::connect::warn_unverified(&config.upstreams);
    // Built now, before the first subscription or request needs it: its TLS context reads the
    // system's root store, which should not delay a cold topic's first poll.
    crate::connect::connector();
    let state = GatewayState::new(&config);
    let mut proxy_app =
        pingora_proxy::http_proxy(&server.configuration, Gateway::new(state.clone()));
    // HTTP/2 heads are decoded by pingora's h2 server, not the HTTP/1.1 validator: the same
    // size limit, as a decoded header-list size (pingora's other bounds kept: 100 streams).
    let mut h2 = default_h2_options();
    h2.max_header_list_size(config.limits.max_request_header_bytes as u32);
    proxy_app.h2_options = Some(h2);
    if config.h2c {
        let mut options = HttpServerOptions::default();
        options.h2c = true;
        proxy_app.server_options = Some(options);
    }
    // Each connection in a task of its own, not in pingora's accept task (see `accept.rs`).
    let mut proxy = Service::new(
        "pollgate proxy".to_string(),
        Detached::new(ConnectionApp::new(proxy_app, state.clone(), config.h2c)),
    );
    // No write buffer under client sockets: pollgate builds each answer whole and writes it
    // once, so pingora's 1,460-byte buffer only added a copy of every answer and, on a held
    // poll's first answer, a page fault on memory it had reserved since the accept. pingora's
    // own HTTP/1 sessions get that buffer back from `Passthrough`.
    let buffers = L4BufferSettings::new(config.limits.client_read_buffer_bytes, 0);
    // TLS keeps pingora's buffer: OpenSSL writes a handshake flight record by record, and
    // the buffer sends it in one segment; an answer's record costs one copy next to its
    // encryption.
    let tls_buffers = buffers.write(DEFAULT_L4_WRITE_BUFFER_SIZE);
    for l in &listeners.proxy {
        proxy
            .endpoints()
            .add_listener(l.listener().l4_buffer(buffers));
    }
    // The same application serves both listeners: pingora hands it the stream after the TLS
    // handshake, so every path of the connection loop works over HTTPS unchanged.
    if let (Some(l), Some(certs)) = (&listeners.tls, state.certificates()) {
        let settings = certs
            .settings()
            .map_err(|e| std::io::Error::other(format!("cannot set up the TLS listener: {e}")))?;
        proxy
            .endpoints()
            .add_listener(l.listener().l4_buffer(tls_buffers).tls(settings));
        tracing::info!(serial = %certs.current().serial(), "TLS certificate loaded");
    }
    if let Some(m) = &listeners.admin {
        let mut admin = Service::new(
            "pollgate admin".to_string(),
            HttpServer::new_app(AdminApp {
                state: state.clone(),
                listen: listeners.proxy_addrs(),
            }),
        );
        admin.threads = Some(1);
        admin.add_listener(m.listener());
        server.add_service(admin);
    }
    server.add_service(background_service(
        "pollgate housekeeper",
        Housekeeper {
            state,
            config_path: opts.config_path,
        },
    ));
    server.add_service(proxy);
    listeners.announce();
    Ok(server)
}
