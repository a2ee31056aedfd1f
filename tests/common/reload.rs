//! Reloading a running gateway's config (SIGHUP), and switching it between its two request
//! paths: pollgate's own connection loop (`fast_paths: true`, the default) and pingora's proxy
//! (`fast_paths: false`). A reload keeps unchanged poll routes' caches and subscriptions, so
//! the same topics, with the same cursors, can be asked on both paths.

use super::Gateway;

impl Gateway {
    /// Rewrites the config file with `edit`, sends SIGHUP and waits until the reload is counted.
    pub async fn reload_with(&self, edit: impl FnOnce(String) -> String) {
        let series = r#"pollgate_config_reloads_total{result="success"}"#;
        let before = self.metric(series).await;
        let text = std::fs::read_to_string(&self.config_path).unwrap();
        std::fs::write(&self.config_path, edit(text)).unwrap();
        self.signal("HUP");
        self.wait_metric(series, |v| v > before).await;
    }

    /// Sends every request from now on through pollgate's connection loop (`true`) or through
    /// pingora's proxy (`false`).
    pub async fn set_fast_paths(&self, on: bool) {
        self.reload_with(|text| {
            let mut kept: String = text
                .lines()
                .filter(|l| !l.starts_with("fast_paths:"))
                .map(|l| format!("{l}\n"))
                .collect();
            kept.insert_str(0, &format!("fast_paths: {on}\n"));
            kept
        })
        .await;
    }
}
