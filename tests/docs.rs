//! The documentation matches the code: the JSON Schema is the one the binary prints, every
//! config key is documented, the README starts with its two commands.

mod common;

use common::{repo_file, BIN};
use std::collections::BTreeSet;
use std::process::Command;

fn schema_from_binary() -> String {
    let out = Command::new(BIN).arg("schema").output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_published_schema_is_current() {
    let fresh = schema_from_binary();
    let published = repo_file("docs/pollgate.schema.json");
    assert!(
        fresh == published,
        "docs/pollgate.schema.json is stale: regenerate with `cargo run -- schema > docs/pollgate.schema.json`"
    );
}

fn collect_keys(v: &serde_json::Value, out: &mut BTreeSet<String>) {
    match v {
        serde_json::Value::Object(map) => {
            if let Some(serde_json::Value::Object(props)) = map.get("properties") {
                for (k, sub) in props {
                    out.insert(k.clone());
                    collect_keys(sub, out);
                }
            }
            for (k, sub) in map {
                if k != "properties" {
                    collect_keys(sub, out);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| collect_keys(i, out)),
        _ => {}
    }
}

#[test]
fn every_config_key_is_documented() {
    let schema: serde_json::Value = serde_json::from_str(&schema_from_binary()).unwrap();
    let mut keys = BTreeSet::new();
    collect_keys(&schema, &mut keys);
    assert!(keys.len() > 40, "schema walk found only {keys:?}");
    let doc = repo_file("docs/configuration.md");
    let missing: Vec<_> = keys
        .iter()
        .filter(|k| !doc.contains(&format!("`{k}`")) && !doc.contains(&format!(".{k}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "keys missing from docs/configuration.md: {missing:?}"
    );
    // And the other way: every key the doc tables name exists.
    for line in doc.lines().filter(|l| l.starts_with("| `")) {
        let key = line.split('`').nth(1).unwrap();
        let leaf = key.rsplit('.').next().unwrap();
        if line.contains("--") || leaf.starts_with('-') {
            continue;
        }
        assert!(
            keys.contains(leaf) || ["demo", "sample-backend", "schema"].contains(&leaf),
            "docs/configuration.md documents unknown key `{key}`"
        );
    }
}

#[test]
fn the_example_config_uses_every_documented_poll_feature() {
    let example = repo_file("config/example.yaml");
    for k in [
        "subscribe:",
        "mode: since",
        "id_pointer:",
        "long_poll:",
        "topic_pointer:",
        "access: public",
    ] {
        assert!(example.contains(k), "config/example.yaml lacks {k}");
    }
}

#[test]
fn the_readme_opens_with_the_demo_and_test_commands() {
    let readme = repo_file("README.md");
    let block: Vec<&str> = readme
        .lines()
        .skip_while(|l| !l.starts_with("```sh"))
        .skip(1)
        .take_while(|l| !l.starts_with("```"))
        .collect();
    assert_eq!(block.len(), 2, "{block:?}");
    assert!(
        block[0].ends_with("cargo run --release -- demo"),
        "{}",
        block[0]
    );
    assert!(block[1].contains("cargo test"), "{}", block[1]);
    assert!(
        readme.lines().take(6).any(|l| l.starts_with("```sh")),
        "the commands are not in the first lines"
    );
    let ci = repo_file(".ci/run");
    assert!(
        ci.contains("README.md"),
        ".ci/run does not run the README's test command"
    );
}

#[test]
fn polling_docs_have_curl_examples_against_the_demo() {
    let doc = repo_file("docs/polling.md");
    assert!(doc.matches("curl ").count() >= 6);
    for route in ["/api/prices/btc", "/api/news/btc?since="] {
        assert!(doc.contains(route), "docs/polling.md lacks {route}");
    }
    // The EventSource section's examples, against the demo's since-mode route.
    for example in [
        "curl -N -H 'Accept: text/event-stream' http://127.0.0.1:8080/api/news/btc",
        "new EventSource('/api/news/btc')",
    ] {
        assert!(doc.contains(example), "docs/polling.md lacks {example}");
    }
    let demo = repo_file("config/demo.yaml");
    assert!(demo.contains("/api/prices/{topic}") && demo.contains("/api/news/{topic}"));
}
