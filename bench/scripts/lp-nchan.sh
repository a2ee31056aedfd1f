#!/usr/bin/env bash
# The Nchan side of lp-pollgate.sh, same client and summary:
#   bench/scripts/lp-nchan.sh WORKERS CLIENTS [longpoll flags...]
# e.g. bench/scripts/lp-nchan.sh 2 5000 --repoll 4 --interval-ms 400 --contract nchan
# WORKERS 1: pinned to CPU 1, clients on CPU 0; 2: unpinned. Env: TOPICS, CURSOR=1 (seeded
# channel, pair with --contract nchan-id), BENCH. Needs nginx and libnginx-mod-nchan (bench/run
# installs them).
set -euo pipefail
workers=$1 clients=$2
shift 2
here=$(cd "$(dirname "$0")" && pwd)
bench=${BENCH:-$here/../../${CARGO_TARGET_DIR:-target}/release/pollgate-bench}
topics=${TOPICS:-1}
ulimit -n 20000
dir=$(mktemp -d /tmp/lp-nchan.XXXX)
mkdir -p "$dir/logs"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
server_pin=() client_pin=(taskset -c 0)
if [[ $workers == 1 ]]; then server_pin=(taskset -c 1); else client_pin=(); fi
user=""
[[ $(id -u) == 0 ]] && user="user root;"
cat >"$dir/nginx.conf" <<CONF
$user
worker_processes $workers;
worker_rlimit_nofile 20000;
error_log $dir/logs/error.log warn;
pid $dir/nginx.pid;
load_module /usr/lib/nginx/modules/ngx_nchan_module.so;
events { worker_connections 20000; }
http {
  access_log off;
  client_body_temp_path $dir/tb; proxy_temp_path $dir/tp; fastcgi_temp_path $dir/tf;
  uwsgi_temp_path $dir/tu; scgi_temp_path $dir/ts;
  keepalive_requests 100000000;
  keepalive_timeout 120s;
  nchan_max_reserved_memory 256M;
  server {
    listen 127.0.0.1:$port;
    location ~ ^/pub/(.+)\$ { nchan_publisher; nchan_channel_id \$1; }
    location ~ ^/sub/(.+)\$ { nchan_subscriber longpoll; nchan_channel_id \$1; }
    location = /nchan_status { nchan_stub_status; }
  }
}
CONF
"${server_pin[@]}" nginx -p "$dir" -c "$dir/nginx.conf" -g 'daemon off;' >"$dir/nginx.log" 2>&1 &
nginx_pid=$!
trap 'kill "$nginx_pid" 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/nchan_status" && break; sleep 0.1; done
pids=()
for _ in $(seq 50); do
  mapfile -t pids < <(pgrep -P "$nginx_pid")
  ((${#pids[@]} >= workers)) && break
  sleep 0.1
done
pid_args=()
for p in "${pids[@]}"; do pid_args+=(--pid "$p"); done
start=--no-etag
[[ -n ${CURSOR:-} ]] && start=--seed
"${client_pin[@]}" "$bench" longpoll --target "127.0.0.1:$port" --path-template '/sub/{topic}' \
  --topics "$topics" --clients "$clients" --topic-prefix "lp${topics}x" \
  --publish "127.0.0.1:$port" --publish-path '/pub/{topic}' --held-nchan "127.0.0.1:$port" \
  "$start" "${pid_args[@]}" "$@" >"$dir/out.json" 2>"$dir/client.log"
python3 "$here/lp-summary.py" "$dir/out.json" "Nchan, $workers worker(s)"
echo "  ($dir)"
