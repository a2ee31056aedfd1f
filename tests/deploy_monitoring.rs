//! Monitoring checked against src/metrics.rs: every metric the Prometheus alert and recording
//! rules (deploy/prometheus/rules.yml) and the Grafana dashboard (deploy/grafana/pollgate.json)
//! use is one pollgate registers; every alert is annotated and its runbook is a heading of
//! docs/operations.md; the metrics reference there lists every registered metric.

use serde_yaml::Value;
use std::collections::BTreeSet;

mod common;

use common::deploy::{at, registered_metrics, yaml};
use common::repo_file;

/// Metric names in a PromQL expression: identifiers outside strings, label matchers, ranges
/// and grouping lists that are neither functions nor keywords nor `$variables`.
fn metric_names(expr: &str) -> Vec<String> {
    // Keywords, and aggregation operators (`sum by (x) (...)` has no `(` right after `sum`).
    const KEYWORDS: [&str; 20] = [
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
    ];
    const GROUPING: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let b: Vec<char> = expr.chars().collect();
    let ident_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    // The index after the string literal starting at `i`.
    let skip_string = |mut i: usize| {
        let q = b[i];
        i += 1;
        while i < b.len() && b[i] != q {
            i += if b[i] == '\\' { 2 } else { 1 };
        }
        i + 1
    };
    // The index after the next `close` from `i`, stepping over string literals.
    let skip_to = |mut i: usize, close: char| {
        while i < b.len() && b[i] != close {
            i = if b[i] == '"' || b[i] == '\'' {
                skip_string(i)
            } else {
                i + 1
            };
        }
        i + 1
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == '"' || c == '\'' {
            i = skip_string(i);
        } else if c == '{' {
            i = skip_to(i, '}');
        } else if c == '[' {
            i = skip_to(i, ']');
        } else if ident_start(c) {
            let start = i;
            while i < b.len() && ident(b[i]) {
                i += 1;
            }
            let word: String = b[start..i].iter().collect();
            let prev = if start > 0 { b[start - 1] } else { ' ' };
            let mut j = i;
            while j < b.len() && b[j].is_whitespace() {
                j += 1;
            }
            let call = j < b.len() && b[j] == '(';
            let lower = word.to_ascii_lowercase();
            if GROUPING.contains(&lower.as_str()) {
                if call {
                    i = skip_to(j, ')');
                }
            } else if prev == '$'
                || prev == '.'
                || prev.is_ascii_digit()
                || call
                || KEYWORDS.contains(&lower.as_str())
            {
                // a variable, part of a number, a function, or a keyword
            } else {
                out.push(word);
            }
        } else {
            i += 1;
        }
    }
    out
}

#[test]
fn the_promql_name_scan_finds_metrics_and_only_metrics() {
    assert_eq!(
        metric_names(
            r#"sum by (route, le) (rate(a_total{x="y}",z=~"$job"}[$__rate_interval])) / on (job) group_left (route) b:rec > 0.8 * 1e3 and up offset 5m"#
        ),
        ["a_total", "b:rec", "up"]
    );
    assert_eq!(
        metric_names("histogram_quantile(0.99, sum(rate(h_bucket[5m])) by (le))"),
        ["h_bucket"]
    );
    assert!(metric_names("vector(1)").is_empty());
}

/// Recording rules defined in rules.yml, and (name, expr, annotations) of every rule.
fn rules() -> (BTreeSet<String>, Vec<(String, String, Value)>) {
    let r = yaml("deploy/prometheus/rules.yml");
    let mut recorded = BTreeSet::new();
    let mut all = Vec::new();
    for g in at(&r, &["groups"]).as_sequence().unwrap() {
        for rule in at(g, &["rules"]).as_sequence().unwrap() {
            let name = rule
                .get("alert")
                .or_else(|| rule.get("record"))
                .and_then(|v| v.as_str())
                .expect("a rule has `alert` or `record`")
                .to_string();
            if rule.get("record").is_some() {
                recorded.insert(name.clone());
            }
            let expr = at(rule, &["expr"]).as_str().unwrap().to_string();
            let ann = rule.get("annotations").cloned().unwrap_or(Value::Null);
            all.push((name, expr, ann));
        }
    }
    (recorded, all)
}

/// Every `expr` in the dashboard (panels, nested too) and the metric of each `label_values`.
fn dashboard_exprs(d: &serde_json::Value) -> Vec<(String, String)> {
    fn walk(v: &serde_json::Value, title: &str, out: &mut Vec<(String, String)>) {
        match v {
            serde_json::Value::Object(m) => {
                let title = m.get("title").and_then(|t| t.as_str()).unwrap_or(title);
                if let Some(e) = m.get("expr").and_then(|e| e.as_str()) {
                    out.push((format!("panel {title:?}"), e.to_string()));
                }
                for x in m.values() {
                    walk(x, title, out);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, title, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&d["panels"], "", &mut out);
    for v in d["templating"]["list"].as_array().unwrap() {
        if v["type"] == "query" {
            let q = v["query"]["query"]
                .as_str()
                .or(v["query"].as_str())
                .unwrap();
            let inner = q
                .trim()
                .strip_prefix("label_values(")
                .and_then(|s| s.strip_suffix(')'))
                .and_then(|s| s.rsplit_once(','))
                .map(|(sel, _)| sel)
                .unwrap_or_else(|| panic!("variable {}: unexpected query {q}", v["name"]));
            out.push((format!("variable {}", v["name"]), inner.to_string()));
        }
    }
    out
}

#[test]
fn alert_rules_and_dashboard_use_only_registered_metrics() {
    let known = registered_metrics();
    let (recorded, rules) = rules();
    let builtin = ["up"];
    let mut unknown = Vec::new();
    let mut check = |what: &str, expr: &str| {
        let names = metric_names(expr);
        if names.is_empty() {
            unknown.push(format!("{what}: no metric in {expr}"));
        }
        for n in names {
            if !known.contains(&n) && !recorded.contains(&n) && !builtin.contains(&n.as_str()) {
                unknown.push(format!("{what}: {n}"));
            }
        }
    };
    for (name, expr, _) in &rules {
        check(&format!("rules.yml {name}"), expr);
    }
    let d: serde_json::Value =
        serde_json::from_str(&repo_file("deploy/grafana/pollgate.json")).unwrap();
    let exprs = dashboard_exprs(&d);
    assert!(exprs.len() >= 15, "dashboard queries: {}", exprs.len());
    for (what, expr) in &exprs {
        check(&format!("pollgate.json {what}"), expr);
    }
    assert!(
        unknown.is_empty(),
        "metrics not registered in src/metrics.rs:\n{}",
        unknown.join("\n")
    );

    // The dashboard covers what operators look at first.
    let all: String = exprs.iter().map(|(_, e)| e.as_str()).collect();
    for m in [
        "pollgate_poll_requests_total",
        "pollgate_upstream_requests_saved_total",
        "pollgate_long_polls_held",
        "pollgate_delivery_lag_seconds_bucket",
        "pollgate_upstream_subscriptions",
        "pollgate_upstream_connected",
        "pollgate_upstream_reconnects_total",
        "pollgate_websocket_passthrough_active",
        "pollgate_websocket_passthrough_total",
        "pollgate_proxied_requests_total",
        "pollgate_request_duration_seconds_bucket",
        "pollgate_upstream_errors_total",
    ] {
        assert!(all.contains(m), "the dashboard does not show {m}");
    }
    assert!(d["schemaVersion"].as_u64().unwrap() >= 36);
    assert!(repo_file("deploy/grafana/pollgate.json").contains("${DS_PROMETHEUS}"));
}

/// GitHub's anchor for a Markdown heading.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn every_alert_is_annotated_and_documented() {
    let (_, rules) = rules();
    let docs = repo_file("docs/operations.md");
    let anchors: BTreeSet<String> = docs
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| slug(l.trim_start_matches('#')))
        .collect();
    let mut alerts = BTreeSet::new();
    for (name, _, ann) in rules.iter().filter(|(n, _, _)| !n.contains(':')) {
        alerts.insert(name.as_str());
        for k in ["summary", "description", "runbook_url"] {
            assert!(
                ann.get(k)
                    .and_then(|v| v.as_str())
                    .is_some_and(|s| !s.is_empty()),
                "alert {name} lacks annotation {k}"
            );
        }
        let url = ann["runbook_url"].as_str().unwrap();
        let anchor = url
            .strip_prefix("docs/operations.md#")
            .unwrap_or_else(|| panic!("{name}: runbook_url {url} is not docs/operations.md#..."));
        assert!(
            anchors.contains(anchor),
            "{name}: docs/operations.md has no heading #{anchor}"
        );
    }
    for a in [
        "PollgateUpstreamDisconnected",
        "PollgateServingStale",
        "PollgateRejectingRequests",
        "PollgateHeldPollsNearCap",
        "PollgateHighFallbackRate",
        "PollgateHigh5xxRate",
    ] {
        assert!(alerts.contains(a), "rules.yml lacks alert {a}");
    }
}

#[test]
fn the_metrics_reference_lists_every_registered_metric() {
    let docs = repo_file("docs/operations.md");
    let missing: Vec<String> = registered_metrics()
        .into_iter()
        .filter(|n| !n.ends_with("_bucket") && !n.ends_with("_sum") && !n.ends_with("_count"))
        .filter(|n| !docs.contains(&format!("`{n}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/operations.md does not document: {missing:?}"
    );
    assert!(docs.contains("## Faults, limits and access control"));
}
