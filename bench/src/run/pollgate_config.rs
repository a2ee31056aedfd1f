//! The pollgate config every scenario starts pollgate with.

const PG_CONFIG: &str = r#"listen: "@LISTEN@"
metrics_listen: "@ADMIN@"
threads: 1
access_log: false
grace_period_seconds: 1
graceful_shutdown_timeout_seconds: 1
max_topics: 20000
max_held_polls: 20000
upstreams:
  backend:
    address: "@BACKEND@"
routes:
@POLL_ROUTE@  - name: default
    prefix: "/"
    upstream: backend
"#;

const PG_POLL_ROUTE: &str = r#"  - name: prices
    path: "/api/prices/{topic}"
    upstream: backend
    access: public
    subscribe:
      path: "/ws/prices/{topic}"
    mode: latest
    content_type: application/json
    long_poll: @LONG_POLL@
    hold_on: [prefer, if-none-match]
    max_wait: 120s
    first_message_wait: 2s
"#;

/// Scenario 3's cursor clients: since mode on the sample backend's per-topic socket, the
/// backend's own message ids as cursors (as a legacy client keeps them).
const PG_CURSOR_ROUTE: &str = r#"  - name: news
    path: "/api/news/{topic}"
    upstream: backend
    access: public
    subscribe:
      path: "/ws/news/{topic}"
    mode: since
    history: 64
    id_pointer: "/id"
    cursor_param: since
    content_type: application/json
    long_poll: @LONG_POLL@
    max_wait: 120s
    first_message_wait: 2s
"#;

/// A pollgate config: the latest-mode poll route (held for `long_poll`, `None`: no poll route)
/// in front of the sample backend, plus a prefix route for everything else.
pub(super) fn pollgate_config(backend: &str, long_poll: Option<&str>) -> String {
    let route = long_poll
        .map(|l| PG_POLL_ROUTE.replace("@LONG_POLL@", l))
        .unwrap_or_default();
    PG_CONFIG
        .replace("@BACKEND@", backend)
        .replace("@POLL_ROUTE@", &route)
}

/// [`pollgate_config`] with the latest-mode route and, at `/api/news/{topic}`, a since-mode
/// (cursor) route, both held for `long_poll`.
pub(super) fn pollgate_cursor_config(backend: &str, long_poll: &str) -> String {
    let routes = format!("{PG_POLL_ROUTE}{PG_CURSOR_ROUTE}").replace("@LONG_POLL@", long_poll);
    PG_CONFIG
        .replace("@BACKEND@", backend)
        .replace("@POLL_ROUTE@", &routes)
}

/// `config` with `settings` (`run --pollgate-set`) as top-level lines: appended at column 0, so
/// each is a top-level key whatever block the config ends in, and a key the config already sets
/// is a duplicate, which pollgate refuses at start rather than reading one of the two.
pub(super) fn with_settings(config: &str, settings: &[String]) -> String {
    let mut text = config.trim_end().to_string();
    text.push('\n');
    for line in settings {
        text.push_str(line.trim());
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_render() {
        let c = pollgate_config("127.0.0.1:9", Some("60s"));
        assert!(c.contains("long_poll: 60s") && c.contains("address: \"127.0.0.1:9\""));
        assert!(!pollgate_config("127.0.0.1:9", None).contains("prices"));
        let c = pollgate_cursor_config("127.0.0.1:9", "60s");
        assert!(
            c.contains("mode: since") && c.contains("mode: latest"),
            "{c}"
        );
        assert!(
            !c.contains("@LONG_POLL@") && !c.contains("@POLL_ROUTE@"),
            "{c}"
        );
    }

    #[test]
    fn settings_are_top_level_lines_after_the_routes() {
        let c = pollgate_config("127.0.0.1:9", Some("60s"));
        assert_eq!(with_settings(&c, &[]), format!("{}\n", c.trim_end()));
        let set = [
            "work_stealing: true".to_string(),
            "  threads: 2 ".to_string(),
        ];
        let s = with_settings(&c, &set);
        assert!(s.starts_with(c.trim_end()), "{s}");
        assert!(s.ends_with("\nwork_stealing: true\nthreads: 2\n"), "{s}");
    }
}
