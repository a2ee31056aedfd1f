//! Reading the deployment artifacts for the `deploy_*` tests: repository files, YAML documents,
//! the ports of a pollgate config, `pollgate -t` on a file, and the metric names src/metrics.rs
//! registers.

use super::{check_config, repo_file};
use serde_yaml::Value;
use std::collections::BTreeSet;
use std::path::Path;

pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// One YAML document from a repository file.
pub fn yaml(rel: &str) -> Value {
    serde_yaml::from_str(&repo_file(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Every non-empty document of a multi-document YAML file.
pub fn yaml_docs(rel: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(&repo_file(rel))
        .map(|d| serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{rel}: {e}")))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// `v["a"]["b"]...`, panicking with the path when a key is missing.
pub fn at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    let mut cur = v;
    for (i, k) in path.iter().enumerate() {
        cur = cur
            .get(*k)
            .unwrap_or_else(|| panic!("missing key {}", path[..=i].join(".")));
    }
    cur
}

/// A YAML sequence of strings.
pub fn strs(v: &Value) -> Vec<&str> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("not a sequence: {v:?}"))
        .iter()
        .map(|s| s.as_str().unwrap_or_else(|| panic!("not a string: {s:?}")))
        .collect()
}

/// A number, whether YAML wrote it as one or as a string.
pub fn as_u64(v: &Value) -> u64 {
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
pub fn config_ports(conf: &Value) -> (Vec<u16>, u16) {
    let listen = match at(conf, &["listen"]) {
        Value::Sequence(s) => s.iter().map(|a| port_of(a.as_str().unwrap())).collect(),
        a => vec![port_of(a.as_str().unwrap())],
    };
    (
        listen,
        port_of(at(conf, &["metrics_listen"]).as_str().unwrap()),
    )
}

/// The pollgate config embedded in the Kubernetes ConfigMap, as text.
pub fn configmap_config() -> String {
    let cm = yaml("deploy/kubernetes/configmap.yaml");
    at(&cm, &["data", "pollgate.yaml"])
        .as_str()
        .expect("the ConfigMap's pollgate.yaml is a string")
        .to_string()
}

/// Runs `pollgate -c FILE -t` and panics with its output unless the file is valid.
pub fn assert_config_valid(path: &Path, what: &str) {
    let out = check_config(path);
    assert!(
        out.status.success(),
        "{what} fails `pollgate -t`:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration is valid"));
}

/// Every metric name pollgate registers (histograms also under `_bucket`, `_sum`, `_count`).
pub fn registered_metrics() -> BTreeSet<String> {
    let src = repo_file("src/metrics.rs");
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
