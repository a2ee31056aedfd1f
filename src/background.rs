//! The gateway's background service: evicts idle topics, reloads the config on SIGHUP, and on
//! shutdown answers every held poll before pingora stops the listeners' runtimes.

use crate::config::Config;
use crate::metrics::METRICS;
use crate::proxy::GatewayState;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::path::PathBuf;
use std::time::Duration;

pub struct Housekeeper {
    pub state: GatewayState,
    /// The file SIGHUP re-reads; `None` for an embedded config (the demo).
    pub config_path: Option<PathBuf>,
}

impl Housekeeper {
    /// Re-reads the config; the old one stays in force when the new one is invalid.
    pub fn reload(&self) -> Result<(), String> {
        let Some(path) = &self.config_path else {
            return Err("no config file to reload".into());
        };
        match Config::load(path) {
            Ok(config) => {
                crate::connect::warn_unverified(&config.upstreams);
                self.state.apply(&config);
                METRICS.config_reloads.with_label_values(&["success"]).inc();
                tracing::info!(path = %path.display(), "configuration reloaded");
                Ok(())
            }
            Err(e) => {
                METRICS.config_reloads.with_label_values(&["failure"]).inc();
                for p in e.problems() {
                    tracing::error!(path = %path.display(), problem = %p, "reload refused; old configuration stays in force");
                }
                Err(e.to_string())
            }
        }
    }
}

#[async_trait]
impl BackgroundService for Housekeeper {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            #[cfg(unix)]
            let hangup = async {
                match hup.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            #[cfg(not(unix))]
            let hangup = std::future::pending::<()>();
            tokio::select! {
                _ = tick.tick() => {
                    for hub in self.state.router().hubs() {
                        let n = hub.evict_idle();
                        if n > 0 {
                            tracing::debug!(route = %hub.cache.name, evicted = n, "idle topics unsubscribed");
                        }
                    }
                }
                _ = hangup => {
                    let _ = self.reload();
                }
                _ = shutdown.changed() => {
                    tracing::info!(held = self.state.store.held_count(), "shutting down: answering held polls");
                    self.state.store.begin_shutdown();
                    return;
                }
            }
        }
    }
}
