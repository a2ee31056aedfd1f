//! Deployment artifacts (deploy/, docs/operations.md) checked against the real binary and
//! src/metrics.rs: the Dockerfile's paths, user, ports and health check; every shipped config
//! through `pollgate -t`; the Kubernetes probes and shutdown timing; the systemd unit against its
//! config, and its reload script doing a real graceful upgrade; every metric the alert rules and
//! the dashboard use being one pollgate registers, and documented.

use serde_yaml::Value;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::{check_config, scratch_dir, BIN};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn yaml(rel: &str) -> Value {
    serde_yaml::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn yaml_docs(rel: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(&read(rel))
        .map(|d| serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{rel}: {e}")))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// `v["a"]["b"]...`, panicking with the path when a key is missing.
fn at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    let mut cur = v;
    for (i, k) in path.iter().enumerate() {
        cur = cur
            .get(*k)
            .unwrap_or_else(|| panic!("missing key {}", path[..=i].join(".")));
    }
    cur
}

fn as_u64(v: &Value) -> u64 {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or_else(|| panic!("not a number: {v:?}"))
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr:?}"))
}

/// `listen` (one address or a list) and `metrics_listen` ports of a pollgate config.
fn config_ports(conf: &Value) -> (Vec<u16>, u16) {
    let listen = match at(conf, &["listen"]) {
        Value::Sequence(s) => s.iter().map(|a| port_of(a.as_str().unwrap())).collect(),
        a => vec![port_of(a.as_str().unwrap())],
    };
    (
        listen,
        port_of(at(conf, &["metrics_listen"]).as_str().unwrap()),
    )
}

/// Runs `pollgate -c FILE -t` and panics with its output unless the file is valid.
fn assert_config_valid(path: &Path, what: &str) {
    let out = check_config(path);
    assert!(
        out.status.success(),
        "{what} fails `pollgate -t`:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration is valid"));
}

// ---- Dockerfile ----------------------------------------------------------------------------

/// The Dockerfile as (INSTRUCTION, arguments) pairs: continuation lines joined, comments and
/// parser directives dropped.
fn dockerfile() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in read("deploy/Dockerfile").lines() {
        let t = line.trim();
        if cur.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        if let Some(part) = t.strip_suffix('\\') {
            cur.push_str(part);
            cur.push(' ');
            continue;
        }
        if !t.starts_with('#') {
            cur.push_str(t);
        }
        let (ins, args) = cur.split_once(char::is_whitespace).unwrap_or((&cur, ""));
        out.push((ins.to_uppercase(), args.trim().to_string()));
        cur.clear();
    }
    assert!(cur.is_empty(), "Dockerfile ends in a continuation line");
    out
}

fn exec_form(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("not exec (JSON) form: {args}: {e}"))
}

#[test]
fn dockerfile_runs_the_binary_as_non_root_with_a_readiness_health_check() {
    let all = dockerfile();
    let froms: Vec<&String> = all
        .iter()
        .filter(|(i, _)| i == "FROM")
        .map(|(_, a)| a)
        .collect();
    assert_eq!(froms.len(), 2, "a builder and a runtime stage: {froms:?}");
    assert!(froms[0].starts_with("rust:1-bookworm"), "{froms:?}");
    assert!(froms[1].starts_with("debian:bookworm-slim"), "{froms:?}");
    let last_from = all.iter().rposition(|(i, _)| i == "FROM").unwrap();
    let (builder, runtime) = all.split_at(last_from);
    let get = |stage: &[(String, String)], ins: &str| -> Vec<String> {
        stage
            .iter()
            .filter(|(i, _)| i == ins)
            .map(|(_, a)| a.clone())
            .collect()
    };

    let build_runs = get(builder, "RUN").join("\n");
    assert!(build_runs.contains("cmake"), "the builder installs cmake");
    assert!(build_runs.contains("cargo build --release --locked"));

    // The binary and the config land where ENTRYPOINT and CMD look for them.
    let copies = get(runtime, "COPY");
    assert!(
        copies
            .iter()
            .any(|c| c.starts_with("--from=builder") && c.ends_with(" /usr/local/bin/pollgate")),
        "runtime copies the binary to /usr/local/bin/pollgate: {copies:?}"
    );
    assert!(
        copies
            .iter()
            .any(|c| c == "deploy/pollgate.docker.yaml /etc/pollgate/pollgate.yaml"),
        "runtime ships deploy/pollgate.docker.yaml as the config: {copies:?}"
    );
    assert_eq!(
        exec_form(get(runtime, "ENTRYPOINT").last().expect("ENTRYPOINT")),
        ["/usr/local/bin/pollgate"]
    );
    assert_eq!(
        exec_form(get(runtime, "CMD").last().expect("CMD")),
        ["-c", "/etc/pollgate/pollgate.yaml"]
    );

    // Non-root, and the user the image creates.
    let user = get(runtime, "USER").last().cloned().expect("USER");
    let uid = user.split(':').next().unwrap();
    assert!(
        uid != "root" && uid != "0" && !uid.is_empty(),
        "USER {user} must not be root"
    );
    let runtime_runs = get(runtime, "RUN").join("\n");
    assert!(
        runtime_runs.contains(&format!("--uid {uid}")),
        "USER {uid} is created by useradd in the runtime stage"
    );

    // EXPOSE matches the baked-in config, and the health check asks its admin port's /readyz.
    let conf = yaml("deploy/pollgate.docker.yaml");
    let (listen, metrics) = config_ports(&conf);
    let mut want: Vec<u16> = listen.clone();
    want.push(metrics);
    want.sort_unstable();
    let mut exposed: Vec<u16> = get(runtime, "EXPOSE")
        .iter()
        .flat_map(|e| {
            e.split_whitespace()
                .map(|p| p.split('/').next().unwrap().parse::<u16>().unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    exposed.sort_unstable();
    assert_eq!(
        exposed, want,
        "EXPOSE must be listen + metrics_listen of deploy/pollgate.docker.yaml"
    );
    let hc = get(runtime, "HEALTHCHECK")
        .last()
        .cloned()
        .expect("HEALTHCHECK");
    assert!(
        hc.contains(&format!("http://127.0.0.1:{metrics}/readyz")),
        "HEALTHCHECK must query /readyz on metrics_listen's port {metrics}: {hc}"
    );
    let metrics_addr = at(&conf, &["metrics_listen"]).as_str().unwrap();
    assert!(
        metrics_addr.starts_with("0.0.0.0:"),
        "a container must listen on all interfaces: {metrics_addr}"
    );
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn docker_build_context_holds_every_file_the_build_reads() {
    let all = dockerfile();
    let last_from = all.iter().rposition(|(i, _)| i == "FROM").unwrap();
    // Sources of the COPY instructions that read the build context (not --from=).
    let sources = |stage: &[(String, String)]| -> Vec<String> {
        stage
            .iter()
            .filter(|(i, a)| i == "COPY" && !a.starts_with("--from"))
            .flat_map(|(_, a)| {
                let parts: Vec<&str> = a.split_whitespace().collect();
                parts[..parts.len() - 1]
                    .iter()
                    .map(|s| s.trim_end_matches('/').to_string())
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let builder = sources(&all[..last_from]);
    for need in ["Cargo.toml", "Cargo.lock", "src"] {
        assert!(
            builder.iter().any(|s| s == need),
            "builder lacks COPY {need}: {builder:?}"
        );
    }
    // Files compiled into the binary from outside src/ must be copied too.
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    let root_abs = root().canonicalize().unwrap();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for mac in ["include_str!(\"", "include_bytes!(\""] {
            for (i, _) in text.match_indices(mac) {
                let rel = &text[i + mac.len()..];
                let rel = &rel[..rel.find('"').unwrap()];
                let target = f.parent().unwrap().join(rel).canonicalize().unwrap();
                let inside = target.strip_prefix(&root_abs).unwrap().to_path_buf();
                assert!(
                    builder.iter().any(|s| inside.starts_with(s)),
                    "{} embeds {} but the builder stage does not COPY it: {builder:?}",
                    f.display(),
                    inside.display()
                );
            }
        }
    }
    // The Dockerfile's ignore file lets every copied source through.
    let ignore = read("deploy/Dockerfile.dockerignore");
    let allowed: Vec<&str> = ignore
        .lines()
        .filter_map(|l| l.trim().strip_prefix('!'))
        .map(|l| l.trim_end_matches('/'))
        .collect();
    for s in builder.iter().chain(sources(&all[last_from..]).iter()) {
        assert!(
            allowed
                .iter()
                .any(|a| s == a || s.starts_with(&format!("{a}/"))),
            "deploy/Dockerfile.dockerignore excludes {s}"
        );
    }
}

#[test]
fn shipped_deployment_configs_validate() {
    assert_config_valid(
        &root().join("deploy/pollgate.docker.yaml"),
        "deploy/pollgate.docker.yaml",
    );
    assert_config_valid(
        &root().join("deploy/systemd/pollgate.yaml"),
        "deploy/systemd/pollgate.yaml",
    );
    let cm = yaml("deploy/kubernetes/configmap.yaml");
    let text = at(&cm, &["data", "pollgate.yaml"]).as_str().unwrap();
    let path = scratch_dir().join("configmap-pollgate.yaml");
    std::fs::write(&path, text).unwrap();
    assert_config_valid(&path, "the ConfigMap's pollgate.yaml");
}

#[test]
fn an_invalid_config_fails_the_same_check() {
    // The checks above can fail: a DNS name that does not resolve is refused by -t.
    let cm = yaml("deploy/kubernetes/configmap.yaml");
    let text = at(&cm, &["data", "pollgate.yaml"]).as_str().unwrap();
    let addr = at(
        &serde_yaml::from_str(text).unwrap(),
        &["upstreams", "backend", "address"],
    )
    .as_str()
    .unwrap()
    .to_string();
    let broken = text.replace(&addr, "backend.invalid:9000");
    let path = scratch_dir().join("broken.yaml");
    std::fs::write(&path, broken).unwrap();
    let out = check_config(&path);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("upstreams.backend.address"));
}

// ---- Kubernetes ----------------------------------------------------------------------------

#[test]
fn kubernetes_probes_ports_and_shutdown_timing_match_the_config() {
    let cm = yaml("deploy/kubernetes/configmap.yaml");
    let conf: Value =
        serde_yaml::from_str(at(&cm, &["data", "pollgate.yaml"]).as_str().unwrap()).unwrap();
    let (listen, metrics) = config_ports(&conf);
    let grace = as_u64(at(&conf, &["grace_period_seconds"]));
    let shutdown = as_u64(at(&conf, &["graceful_shutdown_timeout_seconds"]));

    let dep = yaml("deploy/kubernetes/deployment.yaml");
    assert_eq!(at(&dep, &["apiVersion"]).as_str(), Some("apps/v1"));
    let pod = at(&dep, &["spec", "template", "spec"]);
    let c = &at(pod, &["containers"]).as_sequence().unwrap()[0];

    // Named container ports are the config's ports.
    let mut named = std::collections::BTreeMap::new();
    for p in at(c, &["ports"]).as_sequence().unwrap() {
        named.insert(
            at(p, &["name"]).as_str().unwrap().to_string(),
            as_u64(at(p, &["containerPort"])) as u16,
        );
    }
    assert_eq!(named.get("metrics"), Some(&metrics), "{named:?}");
    assert_eq!(named.get("http"), Some(&listen[0]), "{named:?}");
    let probe_port = |probe: &str| -> (String, u16) {
        let g = at(c, &[probe, "httpGet"]);
        let port = match at(g, &["port"]) {
            Value::String(name) => *named
                .get(name)
                .unwrap_or_else(|| panic!("{probe} port {name} is not a container port")),
            n => as_u64(n) as u16,
        };
        (at(g, &["path"]).as_str().unwrap().to_string(), port)
    };
    assert_eq!(probe_port("readinessProbe"), ("/readyz".into(), metrics));
    assert_eq!(probe_port("livenessProbe"), ("/healthz".into(), metrics));

    // preStop sleep, then SIGTERM: grace period, then runtime shutdown; all inside the pod's
    // termination grace period.
    let cmd: Vec<&str> = at(c, &["lifecycle", "preStop", "exec", "command"])
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(cmd[0].ends_with("sleep"), "preStop sleeps: {cmd:?}");
    let pre_stop: u64 = cmd[1].parse().unwrap();
    assert_eq!(
        pre_stop, grace,
        "the preStop sleep matches grace_period_seconds"
    );
    let tgps = as_u64(at(pod, &["terminationGracePeriodSeconds"]));
    assert!(tgps > grace + shutdown, "terminationGracePeriodSeconds {tgps} must exceed grace_period_seconds {grace} + graceful_shutdown_timeout_seconds {shutdown}");
    assert!(
        tgps > pre_stop + grace + shutdown,
        "terminationGracePeriodSeconds {tgps} must exceed preStop {pre_stop} + {grace} + {shutdown}"
    );

    // Security and the config mount.
    assert_eq!(
        at(pod, &["securityContext", "runAsNonRoot"]).as_bool(),
        Some(true)
    );
    assert_eq!(
        at(c, &["securityContext", "readOnlyRootFilesystem"]).as_bool(),
        Some(true)
    );
    let args: Vec<&str> = at(c, &["args"])
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let conf_arg = args[args.iter().position(|a| *a == "-c").unwrap() + 1];
    let mounts = at(c, &["volumeMounts"]).as_sequence().unwrap();
    let cm_volume = at(pod, &["volumes"])
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v.get("configMap").is_some())
        .expect("a ConfigMap volume");
    assert_eq!(
        at(cm_volume, &["configMap", "name"]),
        at(&cm, &["metadata", "name"])
    );
    let mount = mounts
        .iter()
        .find(|m| at(m, &["name"]) == at(cm_volume, &["name"]))
        .expect("the ConfigMap volume is mounted");
    assert_eq!(
        format!(
            "{}/pollgate.yaml",
            at(mount, &["mountPath"]).as_str().unwrap()
        ),
        conf_arg
    );

    // The ServiceMonitor scrapes /metrics on a Service port that targets the metrics port.
    let sm = yaml("deploy/kubernetes/servicemonitor.yaml");
    assert_eq!(
        at(&sm, &["apiVersion"]).as_str(),
        Some("monitoring.coreos.com/v1")
    );
    let ep = &at(&sm, &["spec", "endpoints"]).as_sequence().unwrap()[0];
    assert_eq!(at(ep, &["path"]).as_str(), Some("/metrics"));
    let sel = at(&sm, &["spec", "selector", "matchLabels"])
        .as_mapping()
        .unwrap();
    let svc = yaml_docs("deploy/kubernetes/service.yaml")
        .into_iter()
        .find(|s| {
            sel.iter()
                .all(|(k, v)| s["metadata"]["labels"].get(k.as_str().unwrap()) == Some(v))
        })
        .expect("a Service the ServiceMonitor selects");
    let port = at(&svc, &["spec", "ports"])
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| at(p, &["name"]) == at(ep, &["port"]))
        .expect("the ServiceMonitor's port is a port of that Service");
    assert_eq!(at(port, &["targetPort"]).as_str(), Some("metrics"));

    // kustomization.yaml lists every manifest.
    let k = yaml("deploy/kubernetes/kustomization.yaml");
    let res: BTreeSet<&str> = at(&k, &["resources"])
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for f in [
        "deployment.yaml",
        "service.yaml",
        "hpa.yaml",
        "pdb.yaml",
        "configmap.yaml",
        "servicemonitor.yaml",
    ] {
        assert!(res.contains(f), "kustomization.yaml lacks {f}");
        assert!(root().join("deploy/kubernetes").join(f).exists());
    }
    assert_eq!(
        at(&yaml("deploy/kubernetes/hpa.yaml"), &["apiVersion"]).as_str(),
        Some("autoscaling/v2")
    );
    assert_eq!(
        at(&yaml("deploy/kubernetes/pdb.yaml"), &["apiVersion"]).as_str(),
        Some("policy/v1")
    );
}

// ---- metric names ---------------------------------------------------------------------------

/// Every metric name pollgate registers (histograms also under `_bucket`, `_sum`, `_count`).
fn registered_metrics() -> BTreeSet<String> {
    let src = read("src/metrics.rs");
    let mut names = BTreeSet::new();
    let mut rest = src.as_str();
    while let Some(i) = rest.find("\"pollgate_") {
        let tail = &rest[i + 1..];
        let end = tail.find('"').unwrap();
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    // Histograms: the first name after each `histogram_vec(` call.
    for (i, _) in src.match_indices("histogram_vec(") {
        if src[..i].ends_with("fn ") {
            continue;
        }
        let tail = &src[i..];
        if let Some(j) = tail.find("\"pollgate_") {
            let name = &tail[j + 1..j + 1 + tail[j + 1..].find('"').unwrap()];
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    // The prometheus crate's process collector, registered under the "pollgate" namespace.
    if let Some(i) = src.find("ProcessCollector::new(") {
        if src[i..]
            .chars()
            .take(200)
            .collect::<String>()
            .contains("\"pollgate\"")
        {
            for n in [
                "cpu_seconds_total",
                "open_fds",
                "max_fds",
                "virtual_memory_bytes",
                "resident_memory_bytes",
                "start_time_seconds",
                "threads",
            ] {
                names.insert(format!("pollgate_process_{n}"));
            }
        }
    }
    assert!(
        names.len() >= 20 && names.contains("pollgate_poll_requests_total"),
        "the scan of src/metrics.rs found too little: {names:?}"
    );
    names
}

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
fn dashboard_exprs() -> Vec<(String, String)> {
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
    let d: serde_json::Value = serde_json::from_str(&read("deploy/grafana/pollgate.json")).unwrap();
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
    let exprs = dashboard_exprs();
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
    let d: serde_json::Value = serde_json::from_str(&read("deploy/grafana/pollgate.json")).unwrap();
    assert!(d["schemaVersion"].as_u64().unwrap() >= 36);
    assert!(read("deploy/grafana/pollgate.json").contains("${DS_PROMETHEUS}"));
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
    let docs = read("docs/operations.md");
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
    let docs = read("docs/operations.md");
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

// ---- systemd ---------------------------------------------------------------------------------

fn unit_key<'a>(unit: &'a str, key: &str) -> Option<&'a str> {
    unit.lines()
        .rev()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(str::trim)
}

#[test]
fn systemd_unit_agrees_with_its_config() {
    let unit = read("deploy/systemd/pollgate.service");
    let conf = yaml("deploy/systemd/pollgate.yaml");
    assert_eq!(unit_key(&unit, "Type"), Some("forking"));
    let pid_file = at(&conf, &["pid_file"]).as_str().unwrap();
    assert_eq!(unit_key(&unit, "PIDFile"), Some(pid_file));
    let run_dir = format!("/run/{}/", unit_key(&unit, "RuntimeDirectory").unwrap());
    assert!(pid_file.starts_with(&run_dir));
    assert!(at(&conf, &["upgrade_sock"])
        .as_str()
        .unwrap()
        .starts_with(&run_dir));
    assert!(unit_key(&unit, "ExecStart").unwrap().contains(" -d "));
    assert!(unit_key(&unit, "ExecReload")
        .unwrap()
        .ends_with("/pollgate-reload"));
    let nofile: u64 = unit_key(&unit, "LimitNOFILE").unwrap().parse().unwrap();
    assert!(nofile >= 262_144);
    let stop: u64 = unit_key(&unit, "TimeoutStopSec")
        .unwrap()
        .trim_end_matches('s')
        .parse()
        .unwrap();
    let need = as_u64(at(&conf, &["grace_period_seconds"]))
        + as_u64(at(&conf, &["graceful_shutdown_timeout_seconds"]));
    assert!(
        stop > need,
        "TimeoutStopSec={stop}s must exceed the {need}s pollgate may take"
    );
    for k in [
        "ProtectSystem",
        "ProtectHome",
        "NoNewPrivileges",
        "PrivateTmp",
    ] {
        assert!(unit_key(&unit, k).is_some(), "the unit lacks {k}=");
    }
    assert_eq!(unit_key(&unit, "CapabilityBoundingSet"), Some(""));
}

/// Processes to stop when the test ends, however it ends.
struct Reap {
    children: Vec<Child>,
    pid_file: PathBuf,
    pids: Vec<u32>,
}

impl Drop for Reap {
    fn drop(&mut self) {
        // The scratch directory holds the pid file, sockets, configs and the log.
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let mut pids = self.pids.clone();
        pids.extend(read_pid(&self.pid_file));
        for p in pids {
            let _ = Command::new("bash")
                .args(["-c", &format!("kill -KILL {p}")])
                .stderr(Stdio::null())
                .status();
        }
        if let Some(dir) = self.pid_file.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name; Z is an unreaped zombie.
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One plain HTTP/1.1 GET on a new connection; the status code.
fn get_status(port: u16, path: &str) -> Result<u16, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad response: {text:?}"))
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(target_os = "linux")]
#[test]
fn reload_script_upgrades_without_refusing_a_request() {
    let dir = scratch_dir();
    let (backend, listen, admin) = (free_port(), free_port(), free_port());
    let pid_file = dir.join("pollgate.pid");
    let mut reap = Reap {
        children: Vec::new(),
        pid_file: pid_file.clone(),
        pids: Vec::new(),
    };
    reap.children.push(
        Command::new(BIN)
            .args([
                "sample-backend",
                "--listen",
                &format!("127.0.0.1:{backend}"),
                "--topics",
                "btc",
                "--period-ms",
                "100",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until("the sample backend", Duration::from_secs(10), || {
        TcpStream::connect(("127.0.0.1", backend)).is_ok()
    });

    // The systemd config with this test's ports and paths.
    let conf_text = read("deploy/systemd/pollgate.yaml")
        .replace("0.0.0.0:8080", &format!("127.0.0.1:{listen}"))
        .replace("127.0.0.1:9091", &format!("127.0.0.1:{admin}"))
        .replace("127.0.0.1:9000", &format!("127.0.0.1:{backend}"))
        .replace("/run/pollgate/", &format!("{}/", dir.display()))
        .replace("grace_period_seconds: 5", "grace_period_seconds: 1")
        .replace(
            "graceful_shutdown_timeout_seconds: 5",
            "graceful_shutdown_timeout_seconds: 1",
        );
    assert!(conf_text.contains(&dir.display().to_string()));
    let conf = dir.join("pollgate.yaml");
    std::fs::write(&conf, &conf_text).unwrap();
    let log = std::fs::File::create(dir.join("pollgate.log")).unwrap();

    // As ExecStart= does: -d returns once the daemon is forked.
    let status = Command::new(BIN)
        .arg("-d")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(log.try_clone().unwrap())
        .status()
        .unwrap();
    assert!(status.success());
    wait_until("the pid file", Duration::from_secs(10), || {
        read_pid(&pid_file).is_some_and(alive)
    });
    let old = read_pid(&pid_file).unwrap();
    reap.pids.push(old);
    wait_until("readiness", Duration::from_secs(10), || {
        get_status(admin, "/readyz") == Ok(200)
    });

    let script = root().join("deploy/systemd/pollgate-reload");
    let reload = |conf: &Path| {
        Command::new("bash")
            .arg(&script)
            .env("POLLGATE_BIN", BIN)
            .env("POLLGATE_CONF", conf)
            .env("MAINPID", old.to_string())
            .stdout(Stdio::null())
            .stderr(log.try_clone().unwrap())
            .status()
            .unwrap()
    };

    // A broken file: refused, nothing changes.
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, format!("{conf_text}\nno_such_key: 1\n")).unwrap();
    assert!(
        !reload(&bad).success(),
        "an invalid config must fail the reload"
    );
    assert!(alive(old));
    assert_eq!(read_pid(&pid_file), Some(old));

    // Clients keep polling through the upgrade.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match get_status(listen, "/api/prices/btc") {
                    Ok(200) => ok += 1,
                    other => failed.push(format!("{other:?}")),
                }
            }
            (ok, failed)
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let status = reload(&conf);
    let log_text = || std::fs::read_to_string(dir.join("pollgate.log")).unwrap_or_default();
    assert!(status.success(), "reload failed:\n{}", log_text());
    let new = read_pid(&pid_file).unwrap();
    reap.pids.push(new);
    assert_ne!(new, old, "the pid file names the new process");
    assert!(alive(new));
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = load.join().unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during the upgrade: {:?}\n{}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(5)],
        log_text()
    );
    assert!(ok > 20, "only {ok} requests went through");

    // The old process hands over, drains and leaves; the new one serves alone.
    wait_until("the old process to exit", Duration::from_secs(20), || {
        !alive(old)
    });
    assert_eq!(get_status(listen, "/api/prices/btc"), Ok(200));
    assert_eq!(get_status(admin, "/readyz"), Ok(200));
}
