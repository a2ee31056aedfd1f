#!/usr/bin/env bash
# One scenario-3 style run outside the orchestrator, for side-by-side experiments:
#   bench/scripts/lp-pollgate.sh POLLGATE_BIN THREADS CLIENTS [longpoll flags...]
# e.g. bench/scripts/lp-pollgate.sh target/release/pollgate 2 5000 --repoll 4 --interval-ms 400 --contract etag
# Starts the sample backend and pollgate (THREADS 1: pinned to CPU 1, clients on CPU 0; 2:
# unpinned) on free loopback ports, runs `pollgate-bench longpoll`, stops both and prints one
# summary line (p99 per message too). Env: TOPICS (default 1), CURSOR=1 (since-mode route,
# pair with --contract cursor), WORK_STEALING (default true), NOPIN=1 (THREADS 1 unpinned),
# BENCH (default target/release/pollgate-bench). The JSON stays in the printed directory.
set -euo pipefail
bin=$1 threads=$2 clients=$3
shift 3
here=$(cd "$(dirname "$0")" && pwd)
bench=${BENCH:-$here/../../${CARGO_TARGET_DIR:-target}/release/pollgate-bench}
topics=${TOPICS:-1}
ulimit -n 20000
dir=$(mktemp -d /tmp/lp-pollgate.XXXX)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
backend=127.0.0.1:$(free_port) listen=127.0.0.1:$(free_port) admin=127.0.0.1:$(free_port)
server_pin=() client_pin=(taskset -c 0)
if [[ $threads == 1 && -z ${NOPIN:-} ]]; then server_pin=(taskset -c 1); else client_pin=(); fi
if [[ -n ${CURSOR:-} ]]; then
  path='/api/news/{topic}'
  route="  - name: news
    path: \"$path\"
    upstream: backend
    subscribe: { path: \"/ws/news/{topic}\" }
    mode: since
    history: 64
    id_pointer: /id
    cursor_param: since"
else
  path='/api/prices/{topic}'
  route="  - name: prices
    path: \"$path\"
    upstream: backend
    subscribe: { path: \"/ws/prices/{topic}\" }
    mode: latest
    hold_on: [prefer, if-none-match]"
fi
cat >"$dir/pollgate.yaml" <<YAML
listen: "$listen"
metrics_listen: "$admin"
threads: $threads
work_stealing: ${WORK_STEALING:-true}
access_log: false
grace_period_seconds: 1
graceful_shutdown_timeout_seconds: 1
max_topics: 20000
max_held_polls: 20000
upstreams:
  backend:
    address: "$backend"
routes:
$route
    access: public
    content_type: application/json
    long_poll: 60s
    max_wait: 120s
    first_message_wait: 2s
  - name: default
    prefix: "/"
    upstream: backend
YAML
RUST_LOG=warn "${client_pin[@]}" "$bin" sample-backend --listen "$backend" --period-ms 3600000 >"$dir/backend.log" 2>&1 &
backend_pid=$!
RUST_LOG=warn "${server_pin[@]}" "$bin" -c "$dir/pollgate.yaml" >"$dir/pollgate.log" 2>&1 &
gateway_pid=$!
trap 'kill "$gateway_pid" "$backend_pid" 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf "http://$admin/readyz" >/dev/null && break; sleep 0.1; done
"${client_pin[@]}" "$bench" longpoll --target "$listen" --path-template "$path" --topics "$topics" \
  --clients "$clients" --topic-prefix "lp${topics}x" --publish "$backend" --seed \
  --held-prometheus "$admin" --pid "$gateway_pid" "$@" >"$dir/out.json" 2>"$dir/client.log"
python3 "$here/lp-summary.py" "$dir/out.json" "pollgate, threads $threads"
echo "  ($dir)"
