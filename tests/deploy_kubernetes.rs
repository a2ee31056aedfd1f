//! deploy/kubernetes/ checked against the ConfigMap's pollgate config: container ports and
//! probes on the config's ports, preStop and termination timing against its grace periods, a
//! non-root pod with the ConfigMap mounted where `-c` points, the ServiceMonitor reaching the
//! metrics port through the Service, and kustomization.yaml listing every manifest.

use serde_yaml::Value;
use std::collections::BTreeSet;

mod common;

use common::deploy::{as_u64, at, config_ports, configmap_config, root, strs, yaml, yaml_docs};

#[test]
fn kubernetes_probes_ports_and_shutdown_timing_match_the_config() {
    let cm = yaml("deploy/kubernetes/configmap.yaml");
    let conf: Value = serde_yaml::from_str(&configmap_config()).unwrap();
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
    let cmd = strs(at(c, &["lifecycle", "preStop", "exec", "command"]));
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
    let args = strs(at(c, &["args"]));
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
    let res: BTreeSet<&str> = strs(at(&k, &["resources"])).into_iter().collect();
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
