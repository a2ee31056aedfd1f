//! Configuration: the YAML file (`file.rs`), validated into typed config (`types.rs`).
//!
//! `Config::load` is the only way in: it parses, validates, and reports every problem with its
//! key path and line, so `pollgate -t` can show an operator everything wrong in one run. serde
//! stops at its first error, so a file that does not parse is first walked against the schema
//! (`shape.rs`) for every unknown key and mistyped value; the semantic checks (`validate.rs`) then
//! run on what is left whenever it can be typed.

mod answering;
mod duration;
mod file;
mod locate;
mod problems;
mod shape;
mod types;
mod validate;

pub use answering::{DEFAULT_CORS_MAX_AGE, DEFAULT_EXPOSE, POLL_REQUEST_HEADERS};
pub use duration::parse_duration;
pub use locate::{render as render_path, Seg};
pub use problems::Problem;
pub use types::*;
pub use validate::expand_env;

use std::fmt;
use std::path::Path;
use std::sync::OnceLock;

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

/// Every problem found, printed one per line as `key.path: message (line N)`, or
/// `(line N, column M)` where the YAML parser knew the column.
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

/// The schema as a value: also what `shape.rs` walks a file against.
fn schema() -> &'static serde_json::Value {
    static SCHEMA: OnceLock<serde_json::Value> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let schema = schemars::schema_for!(file::FileConfig);
        serde_json::to_value(&schema).expect("schemas serialise")
    })
}

/// One problem, rendered; `line` orders the list.
struct Report {
    line: Option<usize>,
    text: String,
}

impl Report {
    /// A problem found at a key path: `path: message (line N)`, the line being that of `at`.
    fn at(src: &str, path: &[Seg], at: &[Seg], message: &str) -> Report {
        let line = locate::line_of(src, at);
        let path = locate::render(path);
        let mut text = if path.is_empty() {
            message.to_string()
        } else {
            format!("{path}: {message}")
        };
        if let Some(line) = line {
            text.push_str(&format!(" (line {line})"));
        }
        Report { line, text }
    }

    /// An error of serde_yaml, which already leads with the key path, in the same style.
    fn serde(e: &serde_yaml::Error) -> Report {
        Report {
            line: e.location().map(|l| l.line()),
            text: unify_locations(&e.to_string()),
        }
    }

    /// A file that is not YAML (or has a key twice, which the YAML parser refuses).
    fn not_yaml(src: &str, e: &serde_yaml::Error) -> Report {
        // A duplicate top-level key is placed at the start of the document by serde_yaml; the
        // second occurrence is the one to point at.
        let text = e.to_string();
        let dup = text
            .strip_prefix("duplicate entry with key \"")
            .and_then(|rest| rest.split_once('"'))
            .and_then(|(k, _)| Some((k, locate::second_top_level(src, k)?)));
        match dup {
            Some((key, line)) => Report {
                line: Some(line),
                text: format!("duplicate entry with key \"{key}\" (line {line})"),
            },
            None => Report::serde(e),
        }
    }
}

/// serde_yaml says `at line L column C` (once or more: a syntax error names where the enclosing
/// block began too); pollgate says `(line L, column C)`.
fn unify_locations(text: &str) -> String {
    const AT: &str = " at line ";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(AT) {
        let after = &rest[i + AT.len()..];
        let line_len = after.chars().take_while(char::is_ascii_digit).count();
        let col_part = after[line_len..].strip_prefix(" column ");
        let col_len = col_part.map_or(0, |c| c.chars().take_while(char::is_ascii_digit).count());
        match col_part {
            Some(c) if line_len > 0 && col_len > 0 => {
                out.push_str(&rest[..i]);
                out.push_str(&format!(
                    " (line {}, column {})",
                    &after[..line_len],
                    &c[..col_len]
                ));
                rest = &c[col_len..];
            }
            _ => {
                out.push_str(&rest[..i + AT.len()]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Whether a semantic problem only follows from a value the shape walk already reported and
/// removed: it is at or under that key, at an enclosing block (`one of prefix or path is
/// required`), or beside it naming it (`only applies to poll routes (add a `subscribe` block)`).
fn is_consequence(p: &Problem, removed: &[Vec<Seg>]) -> bool {
    removed.iter().any(|r| {
        if p.path.starts_with(r) || r.starts_with(&p.path) {
            return true;
        }
        let (Some((Seg::Key(name), r_parent)), Some((_, p_parent))) =
            (r.split_last(), p.path.split_last())
        else {
            return false;
        };
        r_parent == p_parent && mentions(&p.message, name)
    })
}

fn mentions(message: &str, word: &str) -> bool {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    message.match_indices(word).any(|(i, _)| {
        let before = message[..i].chars().next_back();
        let after = message[i + word.len()..].chars().next();
        !before.is_some_and(ident) && !after.is_some_and(ident)
    })
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
        let invalid = |mut reports: Vec<Report>| {
            // File order, so the list reads alongside the file; unplaced ones last.
            reports.sort_by_key(|r| r.line.unwrap_or(usize::MAX));
            ConfigError::Invalid(ProblemList(reports.into_iter().map(|r| r.text).collect()))
        };
        let mut value: serde_yaml::Value = match serde_yaml::from_str(text) {
            Ok(v) => v,
            Err(e) => return Err(invalid(vec![Report::not_yaml(text, &e)])),
        };
        if value.is_null() {
            // One clear line instead of a "missing field" for each required key.
            let text = "the file is empty; expected a map of settings".to_string();
            return Err(invalid(vec![Report { line: None, text }]));
        }
        let (file, mut reports, removed) = match serde_yaml::from_str::<file::FileConfig>(text) {
            Ok(file) => (Some(file), Vec::new(), Vec::new()),
            Err(first) => {
                let shape = shape::check(schema(), &mut value);
                let mut reports: Vec<Report> = shape
                    .found
                    .iter()
                    .map(|f| Report::at(text, &f.path, &f.at, &f.message))
                    .collect();
                // serde's own error is normally one the walk found too. It is added when the walk
                // found nothing, when what the walk left still fails to type, or, when the walk
                // itself left the file untypable, if no walk problem is on serde's line.
                let first = Report::serde(&first);
                let file = if shape.blocked {
                    if !reports
                        .iter()
                        .any(|r| r.line.is_some() && r.line == first.line)
                    {
                        reports.push(first);
                    }
                    None
                } else {
                    let file = serde_yaml::from_value(value).ok();
                    if reports.is_empty() || file.is_none() {
                        reports.push(first);
                    }
                    file
                };
                (file, reports, shape.removed)
            }
        };
        if let Some(file) = file {
            match validate::validate(file, env) {
                Ok(config) if reports.is_empty() => return Ok(config),
                Ok(_) => {}
                Err(problems) => reports.extend(
                    problems
                        .iter()
                        .filter(|p| !is_consequence(p, &removed))
                        .map(|p| Report::at(text, &p.path, &p.path, &p.message)),
                ),
            }
        }
        Err(invalid(reports))
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
    fn work_stealing_defaults_to_whether_there_is_a_second_thread() {
        let with = |threads: &str, key: &str| {
            let y = BASE.replace("threads: 2\n", &format!("threads: {threads}\n{key}"));
            Config::from_yaml(&y, &no_env).unwrap().server.work_stealing
        };
        assert!(with("2", ""));
        assert!(!with("1", ""));
        assert!(with("1", "work_stealing: true\n"));
        assert!(!with("2", "work_stealing: false\n"));
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
    fn unknown_keys_are_errors_with_the_nearest_key() {
        let y = BASE.replace("    prefix: \"/api/\"", "    prefx: \"/api/\"");
        let err = Config::from_yaml(&y, &no_env).unwrap_err().problems();
        // Only the typo: not also "one of `prefix` or `path` is required", which it set off.
        assert_eq!(
            err,
            vec!["routes[0]: unknown field `prefx`, did you mean `prefix`? (line 10)"]
        );
        let y = BASE.replace("threads: 2", "threads: 2\nlisten_typo: 1");
        let err = Config::from_yaml(&y, &no_env).unwrap_err().problems();
        assert_eq!(err, vec!["unknown field `listen_typo` (line 5)"]);
    }

    #[test]
    fn independent_mistakes_are_all_reported_in_one_run() {
        let y = r#"
listen: "127.0.0.1:8080"
threads: two
upstreams:
  backend:
    address: "127.0.0.1:9000"
    connect_timeout: 5x
routes:
  - name: api
    prefix: "/api/"
    upstream: bakend
  - name: prices
    path: "/api/prices/{topic}"
    upstream: backend
    access: public
    subscribe:
      path: "/ws/{topic}"
    long_pol: 25s
"#;
        let err = Config::from_yaml(y, &no_env).unwrap_err().problems();
        assert_eq!(
            err,
            vec![
                "threads: expected a whole number (0 or more), found the string \"two\" (line 3)",
                "upstreams.backend.connect_timeout: unknown unit `x` in `5x` (expected ms, s, m or h) (line 7)",
                "routes[0].upstream: unknown upstream \"bakend\" (line 11)",
                "routes[1]: unknown field `long_pol`, did you mean `long_poll`? (line 18)",
            ],
            "{err:#?}"
        );
    }

    #[test]
    fn a_removed_value_does_not_set_off_checks_that_repeat_it() {
        // A `subscribe` that is not a map would otherwise make every poll key "only apply to
        // poll routes", and `mode: 5` would make `id_pointer` "only apply to `mode: since`".
        let y = POLL
            .replace("    subscribe:\n", "    subscribe: yes\n    x_subscribe:\n")
            .replace("mode: since", "mode: [since]");
        let err = Config::from_yaml(&y, &no_env).unwrap_err().problems();
        assert_eq!(
            err,
            vec![
                "routes[0].subscribe: expected a map, found the string \"yes\" (line 10)",
                "routes[0]: unknown field `x_subscribe`, did you mean `subscribe`? (line 11)",
                "routes[0].mode: expected a string, found a list (line 16)",
            ],
            "{err:#?}"
        );
    }

    #[test]
    fn a_typo_of_a_block_is_one_problem() {
        let y = POLL.replace("    subscribe:\n", "    subscrbe:\n");
        let env = |_: &str| Some("t".to_string());
        let err = Config::from_yaml(&y, &env).unwrap_err().problems();
        assert_eq!(
            err,
            vec!["routes[0]: unknown field `subscrbe`, did you mean `subscribe`? (line 10)"]
        );
    }

    #[test]
    fn the_shape_walk_accepts_every_shipped_config() {
        // The walk runs only on files serde refused, so a key it wrongly refuses would show only
        // beside a real mistake: check it against every valid file there is.
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut seen = 0;
        let mut files: Vec<_> = std::fs::read_dir(root.join("config"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        files.push(root.join("deploy/systemd/pollgate.yaml"));
        files.push(root.join("deploy/pollgate.docker.yaml"));
        let mut texts: Vec<(String, String)> = files
            .iter()
            .map(|p| (p.display().to_string(), std::fs::read_to_string(p).unwrap()))
            .collect();
        texts.push(("BASE".into(), BASE.into()));
        texts.push(("POLL".into(), POLL.into()));
        for (name, text) in texts {
            let mut value: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
            let shape = shape::check(schema(), &mut value);
            assert!(
                shape.found.is_empty() && !shape.blocked && shape.removed.is_empty(),
                "{name}: {:#?}",
                shape.found
            );
            seen += 1;
        }
        assert!(seen >= 6, "only {seen} configs checked");
    }

    #[test]
    fn untagged_values_say_what_they_accept() {
        let y = BASE
            .replace("listen: \"127.0.0.1:8080\"", "listen: 8080")
            .replace("threads: 2", "threads: -2");
        let err = Config::from_yaml(&y, &no_env).unwrap_err().problems();
        assert_eq!(
            err,
            vec![
                "listen: expected a string or a list of strings, found `8080` (line 2)",
                "threads: expected a whole number (0 or more), found `-2` (line 4)",
            ]
        );
        let y = POLL.replace(
            "access: public",
            "access: { auth_request: \"/auth\", cache_fr: 5s }",
        );
        let env = |_: &str| Some("t".to_string());
        let err = Config::from_yaml(&y, &env).unwrap_err().problems();
        assert_eq!(
            err,
            vec!["routes[0].access: unknown field `cache_fr`, did you mean `cache_for`? (line 9)"]
        );
    }

    #[test]
    fn a_missing_required_key_is_named() {
        let y = BASE.replace(
            "    address: \"127.0.0.1:9000\"\n",
            "    adress: \"127.0.0.1:9000\"\n",
        );
        let err = Config::from_yaml(&y, &no_env).unwrap_err().problems();
        assert_eq!(
            err,
            vec![
                "upstreams.backend: missing field `address` (line 6)",
                "upstreams.backend: unknown field `adress`, did you mean `address`? (line 7)",
            ],
            "{err:#?}"
        );
    }

    #[test]
    fn parser_errors_use_the_same_line_style() {
        let err = Config::from_yaml("listen: [\"a\"\nthreads: 2\n", &no_env)
            .unwrap_err()
            .problems();
        assert_eq!(err.len(), 1, "{err:#?}");
        assert!(
            err[0].contains("(line ")
                && err[0].contains(", column ")
                && !err[0].contains(" at line "),
            "{err:#?}"
        );
        let err = Config::from_yaml(&format!("{BASE}threads: 3\n"), &no_env)
            .unwrap_err()
            .problems();
        assert_eq!(
            err,
            vec!["duplicate entry with key \"threads\" (line 15)"],
            "{err:#?}"
        );
        let err = Config::from_yaml("# nothing yet\n", &no_env)
            .unwrap_err()
            .problems();
        assert_eq!(err, vec!["the file is empty; expected a map of settings"]);
    }

    #[test]
    fn line_styles_are_unified() {
        assert_eq!(
            unify_locations("a: bad at line 3 column 5, while parsing at line 2 column 1"),
            "a: bad (line 3, column 5), while parsing (line 2, column 1)"
        );
        assert_eq!(unify_locations("look at line four"), "look at line four");
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

    #[test]
    fn a_listener_is_required_and_tls_files_are_checked() {
        let y = r#"
upstreams:
  b: { address: "127.0.0.1:1" }
routes:
  - { name: d, prefix: "/", upstream: b }
"#;
        let err = Config::from_yaml(y, &no_env).unwrap_err().problems();
        assert_eq!(
            err,
            vec!["listen: a `listen` address or a `tls` listener is required"]
        );
        let with_tls = format!(
            "tls: {{ listen: \"127.0.0.1:8080\", cert: /nonexistent/c.pem, key: /nonexistent/k.pem }}{y}"
        );
        let err = Config::from_yaml(&with_tls, &no_env)
            .unwrap_err()
            .problems();
        assert_eq!(err.len(), 2, "{err:#?}");
        assert!(
            err[0].starts_with("tls.cert: cannot read /nonexistent/c.pem"),
            "{err:#?}"
        );
        assert!(
            err[1].starts_with("tls.key: cannot read /nonexistent/k.pem"),
            "{err:#?}"
        );
        let clash = with_tls.replace("tls: {", "listen: \"127.0.0.1:8080\"\ntls: {");
        let err = Config::from_yaml(&clash, &no_env).unwrap_err().problems();
        assert!(err[0].starts_with("tls.listen: must differ"), "{err:#?}");
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
    fn event_stream_keys_have_defaults_bounds_and_key_paths() {
        let env = |_: &str| Some("t".to_string());
        let c = Config::from_yaml(POLL, &env).unwrap();
        let poll = c.routes[0].poll.as_ref().unwrap();
        assert_eq!(poll.sse_heartbeat, DEFAULT_SSE_HEARTBEAT);
        assert_eq!(poll.sse_retry, DEFAULT_SSE_RETRY);
        assert_eq!(poll.max_sse_streams, None);
        assert_eq!(c.max_sse_streams, DEFAULT_MAX_SSE_STREAMS);
        let y = format!("max_sse_streams: 7\n{POLL}    sse_heartbeat: 200ms\n    sse_retry: 10s\n    max_sse_streams: 2\n");
        let c = Config::from_yaml(&y, &env).unwrap();
        let poll = c.routes[0].poll.as_ref().unwrap();
        assert_eq!(poll.sse_heartbeat, Duration::from_millis(200));
        assert_eq!(poll.sse_retry, Duration::from_secs(10));
        assert_eq!(poll.max_sse_streams, Some(2));
        assert_eq!(c.max_sse_streams, 7);
        let y = format!("{POLL}    sse_heartbeat: 10ms\n    sse_retry: 2h\n");
        let err = Config::from_yaml(&y, &env).unwrap_err().problems();
        assert_eq!(
            err,
            vec![
                "routes[0].sse_heartbeat: must be between 100ms and 1h (line 19)",
                "routes[0].sse_retry: must be between 100ms and 1h (line 20)",
            ],
            "{err:#?}"
        );
        let y = BASE.replace(
            "    prefix: \"/api/\"",
            "    prefix: \"/api/\"\n    sse_heartbeat: 5s",
        );
        let err = Config::from_yaml(&y, &no_env).unwrap_err().problems();
        assert_eq!(
            err,
            vec!["routes[0].sse_heartbeat: only applies to poll routes (add a `subscribe` block) (line 11)"]
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
