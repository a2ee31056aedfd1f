//! The gateway's shared state: the routing table (swapped whole on reload), the topic store,
//! the limits, the open connection and tunnel counts, and the upstream client. A cheap-clone
//! handle over `Arc`s, held by every connection, the admin service and the housekeeper.

use super::router::Router;
use super::upstream::UpstreamClient;
use crate::cache::Store;
use crate::config::{Config, Limits};
use crate::tls::Certificates;
use parking_lot::RwLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Clone)]
pub struct GatewayState {
    // RwLock around an Arc: readers clone the Arc and release the lock at once, so a reload
    // never waits on a held poll and a request sees one consistent table throughout.
    router: Arc<RwLock<Arc<Router>>>,
    pub store: Store,
    access_log: Arc<AtomicBool>,
    fast_paths: Arc<AtomicBool>,
    fanout_pass: Arc<AtomicBool>,
    limits: Arc<RwLock<Limits>>,
    /// Open client connections.
    pub(super) connections: Arc<AtomicUsize>,
    /// WebSocket tunnels across all routes.
    pub(super) websockets: Arc<AtomicUsize>,
    pub client: Arc<UpstreamClient>,
    /// The TLS listener's certificate (`None` without a `tls` listener).
    certificates: Option<Certificates>,
}

impl GatewayState {
    pub fn new(config: &Config) -> GatewayState {
        let store = Store::new(
            config.max_topics,
            config.max_held_polls,
            config.max_sse_streams,
        );
        let router = Router::build(config, &store, None);
        GatewayState {
            router: Arc::new(RwLock::new(Arc::new(router))),
            store,
            access_log: Arc::new(config.access_log.into()),
            fast_paths: Arc::new(config.fast_paths.into()),
            fanout_pass: Arc::new(config.fanout_pass.into()),
            limits: Arc::new(RwLock::new(config.limits)),
            connections: Arc::new(AtomicUsize::new(0)),
            websockets: Arc::new(AtomicUsize::new(0)),
            client: Arc::new(UpstreamClient::default()),
            certificates: config
                .tls
                .as_ref()
                .map(|t| Certificates::new(t.identity.clone())),
        }
    }

    pub fn router(&self) -> Arc<Router> {
        self.router.read().clone()
    }

    pub fn certificates(&self) -> Option<&Certificates> {
        self.certificates.as_ref()
    }

    pub fn limits(&self) -> Limits {
        *self.limits.read()
    }

    pub fn access_log(&self) -> bool {
        self.access_log.load(Ordering::Relaxed)
    }

    /// Whether pollgate's own connection loop answers what it can (`fast_paths`), or hands
    /// every request to pingora's proxy.
    pub fn fast_paths(&self) -> bool {
        self.fast_paths.load(Ordering::Relaxed)
    }

    /// Whether a held poll on pollgate's own connection parks it on its topic, for the publish
    /// to write its answer (`fanout_pass`).
    pub fn fanout_pass(&self) -> bool {
        self.fanout_pass.load(Ordering::Relaxed)
    }

    /// Installs a new config atomically; unchanged poll routes keep their hubs.
    pub fn apply(&self, config: &Config) {
        let old = self.router();
        let next = Arc::new(Router::build(config, &self.store, Some(&old)));
        for hub in old.retired_hubs(&next) {
            hub.close();
        }
        self.store.set_limits(
            config.max_topics,
            config.max_held_polls,
            config.max_sse_streams,
        );
        self.access_log.store(config.access_log, Ordering::Relaxed);
        self.fast_paths.store(config.fast_paths, Ordering::Relaxed);
        self.fanout_pass
            .store(config.fanout_pass, Ordering::Relaxed);
        *self.limits.write() = config.limits;
        *self.router.write() = next;
        match (&self.certificates, &config.tls) {
            (Some(certs), Some(tls)) => {
                certs.replace(tls.identity.clone());
                tracing::info!(serial = %tls.identity.serial(), cert = %tls.cert.display(), "TLS certificate loaded");
            }
            (None, Some(_)) => {
                tracing::warn!("a `tls` listener added by a reload starts only with a restart")
            }
            (Some(_), None) => tracing::warn!(
                "the `tls` listener removed by a reload keeps serving until a restart"
            ),
            (None, None) => {}
        }
    }
}
