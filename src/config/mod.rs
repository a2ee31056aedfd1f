//! Configuration: the YAML file (`file.rs`), validated into typed config (`types.rs`).
//!
//! `Config::load` is the only way in: it parses, validates, and reports every problem with its
//! key path and line, so `pollgate -t` can show an operator everything wrong in one run.

mod answering;
mod duration;
mod file;
mod locate;
mod types;
mod validate;

pub use answering::{DEFAULT_CORS_MAX_AGE, DEFAULT_EXPOSE, POLL_REQUEST_HEADERS};
pub use duration::parse_duration;
pub use locate::{render as render_path, Seg};
pub use types::*;
pub use validate::{expand_env, Problem};

use std::fmt;
use std::path::Path;

/// Why a config file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(ProblemList),
}

/// Every problem found, printed one per line as `key.path: message (line N)`.
#[derive(Debug)]
pub struct ProblemList(pub Vec<String>);

impl fmt::Display for ProblemList {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    /// The individual problems (one for an I/O error).
    pub fn problems(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid(list) => list.0.clone(),
            other => vec![other.to_string()],
        }
    }
}

/// The JSON Schema of the config file, for editor validation (`pollgate schema`).
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(file::FileConfig);
    serde_json::to_string_pretty(&schema).expect("schemas serialise") + "\n"
}

impl Config {
    /// Reads and validates a config file, expanding `${VAR}` from the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_yaml(&text, &|k| std::env::var(k).ok())
    }

    /// Parses and validates YAML text; `env` resolves `${VAR}` references.
    pub fn from_yaml(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let parsed: file::FileConfig = serde_yaml::from_str(text).map_err(|e| {
            // serde_yaml already prefixes the key path and appends "at line L column C".
            ConfigError::Invalid(ProblemList(vec![e.to_string()]))
        })?;
        validate::validate(parsed, env).map_err(|problems| {
            ConfigError::Invalid(ProblemList(
                problems
                    .iter()
                    .map(|p| {
                        let at = locate::render(&p.path);
                        match locate::line_of(text, &p.path) {
                            Some(line) => format!("{at}: {} (line {line})", p.message),
                            None => format!("{at}: {}", p.message),
                        }
                    })
                    .collect(),
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    const BASE: &str = r#"
listen: "127.0.0.1:8080"
metrics_listen: "127.0.0.1:9091"
threads: 2
upstreams:
  backend:
    address: "127.0.0.1:9000"
routes:
  - name: api
    prefix: "/api/"
    upstream: backend
  - name: default
    prefix: "/"
    upstream: backend
"#;

    #[test]
    fn contract_example_parses_with_defaults() {
        let c = Config::from_yaml(BASE, &no_env).unwrap();
        assert_eq!(c.listen, vec!["127.0.0.1:8080"]);
        assert_eq!(c.server.threads, 2);
        assert_eq!(c.routes.len(), 2);
        let up = &c.upstreams[0];
        assert_eq!(up.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert!(up.websocket_idle_timeout >= Duration::from_secs(600));
        assert_eq!(c.max_topics, 10_000);
    }

    #[test]
    fn listen_may_be_a_list() {
        let y = BASE.replace(
            "listen: \"127.0.0.1:8080\"",
            "listen: [\"127.0.0.1:8080\", \"127.0.0.1:8081\"]",
        );
        let c = Config::from_yaml(&y, &no_env).unwrap();
        assert_eq!(c.listen.len(), 2);
    }

    #[test]
    fn port_zero_may_be_on_both_listeners_but_a_fixed_port_may_not() {
        let zero = BASE
            .replace("127.0.0.1:8080", "127.0.0.1:0")
            .replace("127.0.0.1:9091", "127.0.0.1:0");
        Config::from_yaml(&zero, &no_env).unwrap();
        let same = BASE.replace("127.0.0.1:9091", "127.0.0.1:8080");
        let err = Config::from_yaml(&same, &no_env).unwrap_err().problems();
        assert!(
            err[0].starts_with("metrics_listen: must differ"),
            "{err:#?}"
        );
    }

    #[test]
    fn unknown_upstream_names_path_and_line() {
        let y = BASE.replace(
            "upstream: backend\n  - name: default",
            "upstream: bakend\n  - name: default",
        );
        let err = Config::from_yaml(&y, &no_env).unwrap_err().problems();
        assert_eq!(
            err,
            vec!["routes[0].upstream: unknown upstream \"bakend\" (line 11)"]
        );
    }

    #[test]
    fn unknown_keys_are_errors() {
        let y = BASE.replace("    prefix: \"/api/\"", "    prefx: \"/api/\"");
        let err = Config::from_yaml(&y, &no_env).unwrap_err().to_string();
        assert!(err.contains("unknown field `prefx`"), "{err}");
        assert!(err.contains("line 10"), "{err}");
    }

    #[test]
    fn reports_every_problem_at_once() {
        let y = r#"
listen: "nowhere"
upstreams:
  b:
    address: "127.0.0.1:1"
    connect_timeout: 0s
routes:
  - name: "bad name"
    prefix: "x"
    upstream: c
"#;
        let err = Config::from_yaml(y, &no_env).unwrap_err().problems();
        assert_eq!(err.len(), 5, "{err:#?}");
        assert!(err[0].starts_with("listen: `nowhere` is not an ip:port address (line 2)"));
    }

    const POLL: &str = r#"
listen: "127.0.0.1:8080"
upstreams:
  backend: { address: "127.0.0.1:9000" }
routes:
  - name: prices
    path: "/api/prices/{topic}"
    upstream: backend
    access: public
    subscribe:
      path: "/ws"
      send: '{"op":"subscribe","topic":"{topic}"}'
      topic_pointer: "/topic"
      headers: { Authorization: "Bearer ${BACKEND_TOKEN}" }
    mode: since
    history: 16
    id_pointer: "/id"
    long_poll: 25s
"#;

    #[test]
    fn poll_route_parses_and_expands_env() {
        let env = |k: &str| (k == "BACKEND_TOKEN").then(|| "s3cret".to_string());
        let c = Config::from_yaml(POLL, &env).unwrap();
        let poll = c.routes[0].poll.as_ref().unwrap();
        assert_eq!(poll.mode, Mode::Since);
        assert_eq!(poll.long_poll, Duration::from_secs(25));
        assert_eq!(poll.max_wait, Duration::from_secs(25));
        assert!(poll.subscribe.multiplexed());
        assert_eq!(
            poll.subscribe.headers,
            vec![("Authorization".to_string(), "Bearer s3cret".to_string())]
        );
        assert_eq!(
            c.routes[0].matcher,
            Matcher::Template {
                prefix: "/api/prices/".into(),
                suffix: "".into()
            }
        );
    }

    #[test]
    fn missing_env_and_access_are_errors() {
        let y = POLL.replace("    access: public\n", "");
        let err = Config::from_yaml(&y, &no_env).unwrap_err().problems();
        assert!(
            err.iter()
                .any(|e| e.starts_with("routes[0].access: required")),
            "{err:#?}"
        );
        assert!(
            err.iter().any(|e| e.contains(
                "subscribe.headers.Authorization: environment variable `BACKEND_TOKEN` is not set"
            )),
            "{err:#?}"
        );
    }

    #[test]
    fn poll_keys_need_subscribe() {
        let y = BASE.replace(
            "    prefix: \"/api/\"",
            "    prefix: \"/api/\"\n    long_poll: 5s",
        );
        let err = Config::from_yaml(&y, &no_env).unwrap_err().problems();
        assert_eq!(
            err,
            vec!["routes[0].long_poll: only applies to poll routes (add a `subscribe` block) (line 11)"]
        );
    }
}
