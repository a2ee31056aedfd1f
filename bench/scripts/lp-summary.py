"""One line from a `pollgate-bench longpoll` JSON result: delivered pairs, p50/p99, p99 per
message, server CPU per answer (user/sys) and RSS per held poll."""
import json
import sys

path, name = sys.argv[1], sys.argv[2]
try:
    with open(path) as f:
        v = json.load(f)
except (OSError, ValueError) as e:
    sys.exit(f"{name}: no result in {path}: {e}")
lat = v["latency"]
by_message = [round(m.get("p99_ms", 0)) for m in v.get("latency_by_message", [])]
answers = max(v.get("answers") or 0, 1)
user, sys_ = v.get("server_user_s_during_fanout"), v.get("server_sys_s_during_fanout")
cpu = "-" if user is None else f"{user * 1e6 / answers:.0f}/{sys_ * 1e6 / answers:.0f}"
print(
    f"{name}: delivered {v['delivered']}/{v['expected']} p50 {lat.get('p50_ms')} ms "
    f"p99 {lat.get('p99_ms')} ms, p99 by message {by_message}, fan-out {v['fanout_s']} s, "
    f"user/sys µs per answer {cpu}, RSS per held poll {v.get('rss_per_held_bytes')} B"
    + (f", error: {v['first_error']}" if v.get("first_error") else "")
)
