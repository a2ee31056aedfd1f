//! Every pollgate config shipped under deploy/ (the Docker image's, the systemd unit's, the
//! Kubernetes ConfigMap's) passes `pollgate -t`, and the same check refuses a broken one.

mod common;

use common::deploy::{assert_config_valid, at, configmap_config, root};
use common::{check_config, scratch_dir};

#[test]
fn shipped_deployment_configs_validate() {
    for rel in [
        "deploy/pollgate.docker.yaml",
        "deploy/systemd/pollgate.yaml",
    ] {
        assert_config_valid(&root().join(rel), rel);
    }
    let path = scratch_dir().join("configmap-pollgate.yaml");
    std::fs::write(&path, configmap_config()).unwrap();
    assert_config_valid(&path, "the ConfigMap's pollgate.yaml");
}

#[test]
fn an_invalid_config_fails_the_same_check() {
    // The checks above can fail: a DNS name that does not resolve is refused by -t.
    let text = configmap_config();
    let addr = at(
        &serde_yaml::from_str(&text).unwrap(),
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
