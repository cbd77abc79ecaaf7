#!/usr/bin/env bash
# Memory and start-up figures of one node: start-up time (spawn to the first 200 from /healthz),
# idle VmRSS of a fresh single-node cluster, and VmRSS once it holds N jobs (default 10,000).
# Runs the given binary natively, or under qemu-user when it is an ARM ELF (as qemu-smoke.sh).
#
#   cross/memory-figures.sh target/release/raft3d
#   cross/memory-figures.sh target/aarch64-unknown-linux-gnu/pi/raft3d [JOBS]
#
# Needs curl. Loopback only; every wait is bounded; the node and its temp dir are removed on exit.
set -euo pipefail
bin=${1:?usage: $0 RAFT3D_BINARY [JOBS]}
jobs=${2:-10000}
runner=()
case "$(head -c 20 "$bin" | od -An -tx1 | tr -d ' \n' | cut -c37-40)" in
  b700) runner=(qemu-aarch64 -L /usr/aarch64-linux-gnu) ;; # EM_AARCH64
  2800) runner=(qemu-arm -L /usr/arm-linux-gnueabihf) ;;   # EM_ARM
esac
dir=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
http=$(free_port)
raft=$(free_port)
base="http://127.0.0.1:$http"
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$pid/status"; }

started=$(date +%s%N)
"${runner[@]}" "$bin" -id m1 -http "127.0.0.1:$http" -raft "127.0.0.1:$raft" -data "$dir" -bootstrap \
  --log-level warn 2>"$dir/node.log" &
pid=$!
for _ in $(seq 1 600); do
  curl -sf "$base/healthz" >/dev/null 2>&1 && break
  sleep 0.02
done
echo "start-up, spawn to /healthz 200: $((($(date +%s%N) - started) / 1000000)) ms"
for _ in $(seq 1 300); do
  curl -sf "$base/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
sleep 2
echo "idle VmRSS, fresh single-node cluster: $(rss_kb) kB"

post() { curl -sf -o /dev/null -XPOST -H 'content-type: application/json' "$base$1" -d "$2"; }
post /api/v1/printers '{"id": "p1", "company": "Prusa", "model": "MK4"}'
post /api/v1/filaments '{"id": "f1", "type": "PLA", "color": "grey", "total_weight_in_grams": 1000000}'
loaded=$(date +%s)
seq 1 "$jobs" | xargs -P 8 -I{} curl -sf -o /dev/null -XPOST -H 'content-type: application/json' \
  "$base/api/v1/print_jobs" \
  -d '{"id": "job-{}", "printer_id": "p1", "filament_id": "f1", "filepath": "/prints/cube.gcode", "print_weight_in_grams": 5.02}'
count=$(curl -sf "$base/api/v1/print_jobs?consistency=stale" | grep -o '"id":"job-' | wc -l)
[ "$count" -eq "$jobs" ] || { echo "only $count of $jobs jobs stored" >&2; exit 1; }
sleep 2
echo "VmRSS holding $jobs jobs: $(rss_kb) kB (loaded in $(($(date +%s) - loaded)) s)"
