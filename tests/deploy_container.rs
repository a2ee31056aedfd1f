//! deploy/Dockerfile checked against the Docker config and the sources: base images, the
//! binary's and the config's paths, a non-root user, EXPOSE and HEALTHCHECK matching the
//! config's ports, and a build context (COPY, .dockerignore) holding every file the build reads.

use std::path::{Path, PathBuf};

mod common;

use common::deploy::{at, config_ports, root, yaml};
use common::repo_file;

/// One Dockerfile instruction: (INSTRUCTION, arguments).
type Instruction = (String, String);

/// The Dockerfile as (INSTRUCTION, arguments) pairs: continuation lines joined, comments and
/// parser directives dropped.
fn dockerfile() -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in repo_file("deploy/Dockerfile").lines() {
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

/// The instructions split at the last `FROM`: (builder stages, runtime stage).
fn stages(all: &[Instruction]) -> (&[Instruction], &[Instruction]) {
    let last_from = all.iter().rposition(|(i, _)| i == "FROM").expect("FROM");
    all.split_at(last_from)
}

/// The arguments of every `ins` instruction in `stage`.
fn args_of(stage: &[Instruction], ins: &str) -> Vec<String> {
    stage
        .iter()
        .filter(|(i, _)| i == ins)
        .map(|(_, a)| a.clone())
        .collect()
}

fn exec_form(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("not exec (JSON) form: {args}: {e}"))
}

#[test]
fn dockerfile_runs_the_binary_as_non_root_with_a_readiness_health_check() {
    let all = dockerfile();
    let froms = args_of(&all, "FROM");
    assert_eq!(froms.len(), 2, "a builder and a runtime stage: {froms:?}");
    assert!(froms[0].starts_with("rust:1-bookworm"), "{froms:?}");
    assert!(froms[1].starts_with("debian:bookworm-slim"), "{froms:?}");
    let (builder, runtime) = stages(&all);

    let build_runs = args_of(builder, "RUN").join("\n");
    assert!(build_runs.contains("cmake"), "the builder installs cmake");
    assert!(build_runs.contains("cargo build --release --locked"));

    // The binary and the config land where ENTRYPOINT and CMD look for them.
    let copies = args_of(runtime, "COPY");
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
        exec_form(args_of(runtime, "ENTRYPOINT").last().expect("ENTRYPOINT")),
        ["/usr/local/bin/pollgate"]
    );
    assert_eq!(
        exec_form(args_of(runtime, "CMD").last().expect("CMD")),
        ["-c", "/etc/pollgate/pollgate.yaml"]
    );

    // Non-root, and the user the image creates.
    let user = args_of(runtime, "USER").last().cloned().expect("USER");
    let uid = user.split(':').next().unwrap();
    assert!(
        uid != "root" && uid != "0" && !uid.is_empty(),
        "USER {user} must not be root"
    );
    let runtime_runs = args_of(runtime, "RUN").join("\n");
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
    let mut exposed: Vec<u16> = args_of(runtime, "EXPOSE")
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
    let hc = args_of(runtime, "HEALTHCHECK")
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
    let (builder_stage, runtime_stage) = stages(&all);
    // Sources of the COPY instructions that read the build context (not --from=).
    let sources = |stage: &[Instruction]| -> Vec<String> {
        args_of(stage, "COPY")
            .iter()
            .filter(|a| !a.starts_with("--from"))
            .flat_map(|a| {
                let parts: Vec<&str> = a.split_whitespace().collect();
                parts[..parts.len() - 1]
                    .iter()
                    .map(|s| s.trim_end_matches('/').to_string())
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let builder = sources(builder_stage);
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
    let ignore = repo_file("deploy/Dockerfile.dockerignore");
    let allowed: Vec<&str> = ignore
        .lines()
        .filter_map(|l| l.trim().strip_prefix('!'))
        .map(|l| l.trim_end_matches('/'))
        .collect();
    for s in builder.iter().chain(sources(runtime_stage).iter()) {
        assert!(
            allowed
                .iter()
                .any(|a| s == a || s.starts_with(&format!("{a}/"))),
            "deploy/Dockerfile.dockerignore excludes {s}"
        );
    }
}
