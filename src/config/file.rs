//! The serde mirror of the YAML file: field names here are the config contract.
//!
//! Nothing in here is trusted: `validate.rs` turns it into the typed [`super::Config`].
//! Every struct denies unknown keys so a typo is an error, not a silently ignored setting.

use super::duration::ConfDuration;
use serde::Deserialize;
use std::collections::BTreeMap;

/// One value or a list of them (`listen: "a"` or `listen: ["a", "b"]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: OneOrMany,
    pub metrics_listen: Option<String>,
    pub threads: Option<usize>,
    pub daemon: Option<bool>,
    pub pid_file: Option<String>,
    pub upgrade_sock: Option<String>,
    pub error_log: Option<String>,
    pub grace_period_seconds: Option<u64>,
    pub graceful_shutdown_timeout_seconds: Option<u64>,
    pub work_stealing: Option<bool>,
    pub max_topics: Option<usize>,
    pub max_held_polls: Option<usize>,
    pub access_log: Option<bool>,
    pub max_connections: Option<usize>,
    pub max_websockets: Option<usize>,
    pub max_request_header_bytes: Option<usize>,
    pub max_request_line_bytes: Option<usize>,
    pub keepalive_timeout: Option<ConfDuration>,
    pub header_read_timeout: Option<ConfDuration>,
    pub upstreams: BTreeMap<String, FileUpstream>,
    pub routes: Vec<FileRoute>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileUpstream {
    pub address: String,
    /// Host header sent upstream; by default the client's Host is kept.
    pub host: Option<String>,
    pub connect_timeout: Option<ConfDuration>,
    pub read_timeout: Option<ConfDuration>,
    pub write_timeout: Option<ConfDuration>,
    pub idle_timeout: Option<ConfDuration>,
    pub websocket_idle_timeout: Option<ConfDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRoute {
    pub name: String,
    pub prefix: Option<String>,
    pub path: Option<String>,
    pub upstream: String,
    pub max_websockets: Option<usize>,
    pub access: Option<FileAccess>,
    pub subscribe: Option<FileSubscribe>,
    pub mode: Option<String>,
    pub content_type: Option<String>,
    pub history: Option<usize>,
    pub id_pointer: Option<String>,
    pub cursor_param: Option<String>,
    pub long_poll: Option<ConfDuration>,
    pub max_wait: Option<ConfDuration>,
    pub first_message_wait: Option<ConfDuration>,
    pub idle_unsubscribe: Option<ConfDuration>,
    pub max_topics: Option<usize>,
    pub max_held_polls: Option<usize>,
    pub max_message_bytes: Option<usize>,
    pub max_stale: Option<ConfDuration>,
    pub ping_interval: Option<ConfDuration>,
    pub reconnect: Option<FileReconnect>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileReconnect {
    pub min: Option<ConfDuration>,
    pub max: Option<ConfDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum FileAccess {
    Keyword(String),
    Auth(FileAuth),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAuth {
    pub auth_request: String,
    pub cache_for: Option<ConfDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSubscribe {
    pub path: String,
    pub send: Option<String>,
    pub unsend: Option<String>,
    pub topic_pointer: Option<String>,
    pub payload_pointer: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}
