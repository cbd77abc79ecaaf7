#!/usr/bin/env bash
# Smoke test of a built raft3d binary: three nodes on 127.0.0.1 (free ports, temp dir), the
# spec scenario through the HTTP API with curl, and every object read back from every node.
# Foreign binaries run under qemu-user, so an aarch64 build is exercised on an x86 machine.
#
#   cross/qemu-smoke.sh target/aarch64-unknown-linux-gnu/pi/raft3d
#   cross/qemu-smoke.sh target/armv7-unknown-linux-gnueabihf/pi/raft3d
#   RAFT3D_RUNNER= cross/qemu-smoke.sh target/release/raft3d    # native, same checks
#
# The runner is chosen from the binary's ELF header (qemu-aarch64 or qemu-arm with Debian's
# cross sysroot as -L); RAFT3D_RUNNER overrides it. Needs curl and jq (apt-get install
# qemu-user curl jq). Exits non-zero on any mismatch; prints each node's start-up time to a
# healthy /healthz and node1's idle VmRSS. Every wait is bounded, and the nodes are stopped
# (SIGTERM, then SIGKILL) and the temp dir removed on any exit. KEEP=1 keeps the temp dir.
set -euo pipefail

if [[ $# -ne 1 || ! -f "$1" ]]; then
  echo "usage: $0 PATH/TO/raft3d" >&2
  exit 2
fi
bin=$(realpath "$1")
for tool in curl jq; do
  command -v "$tool" >/dev/null || { echo "$0: $tool is required (apt-get install $tool)" >&2; exit 2; }
done

# --- runner: qemu-user for a foreign ELF, nothing for a native one
machine=$(od -An -tx1 -j18 -N2 "$bin" | tr -d ' \n')
case "$machine" in
  b700) arch=aarch64 ;;
  2800) arch=arm ;;
  3e00) arch=x86_64 ;;
  *) arch="unknown ($machine)" ;;
esac
if [[ -n "${RAFT3D_RUNNER+set}" ]]; then
  read -r -a runner <<<"$RAFT3D_RUNNER"
elif [[ "$arch" == "$(uname -m)" ]]; then
  runner=()
elif [[ "$arch" == aarch64 ]]; then
  runner=(qemu-aarch64 -L /usr/aarch64-linux-gnu)
elif [[ "$arch" == arm ]]; then
  runner=(qemu-arm -L /usr/arm-linux-gnueabihf)
else
  echo "$0: cannot run a binary for $arch here; set RAFT3D_RUNNER" >&2
  exit 2
fi
if [[ ${#runner[@]} -gt 0 ]] && ! command -v "${runner[0]}" >/dev/null; then
  echo "$0: ${runner[0]} is required (apt-get install qemu-user)" >&2
  exit 2
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/raft3d-smoke.XXXXXX")
secret="smoke-test-secret-$$"
nodes=(1 2 3)
declare -a pids=() http_port=() raft_port=() started_ns=() ready_ms=()

stop_nodes() {
  local pid alive
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 100); do # at most 10 s for a clean stop
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [[ $alive == 0 ]] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}

cleanup() {
  local rc=$?
  trap - EXIT
  stop_nodes
  if [[ $rc -ne 0 ]]; then
    for i in "${nodes[@]}"; do
      if [[ -f "$work/node$i.log" ]]; then
        echo "----- node$i log (last 30 lines) -----" >&2
        tail -n 30 "$work/node$i.log" >&2
      fi
    done
  fi
  if [[ "${KEEP:-0}" == 1 ]]; then
    echo "kept $work" >&2
  else
    rm -rf "$work"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

# Picks a loopback port nobody listens on (and that this script has not handed out), below
# the kernel's ephemeral range so that no outgoing connection can take it before the node binds.
low=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
((low > 12000)) || low=32768
taken=" "
pick_port() {
  local p
  for _ in $(seq 200); do
    p=$((10000 + RANDOM % (low - 10000)))
    [[ "$taken" == *" $p "* ]] && continue
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      taken+="$p "
      printf -v "$1" '%s' "$p"
      return 0
    fi
  done
  fail "no free loopback port found"
}

url() { echo "http://127.0.0.1:${http_port[$1]}$2"; }

# http METHOD NODE PATH [JSON]: sets $code and $body.
http() {
  local args=(-sS --noproxy '*' --max-time 20 -o "$work/response" -w '%{http_code}' -X "$1")
  if [[ $# -ge 4 ]]; then
    args+=(-H 'content-type: application/json' --data "$4")
  fi
  code=$(curl "${args[@]}" "$(url "$2" "$3")" 2>"$work/curl.err") || code=000
  body=$(cat "$work/response" 2>/dev/null || true)
}

# expect WHAT STATUS [JQ_CONDITION]: the last response had STATUS and satisfies the condition.
expect() {
  [[ "$code" == "$2" ]] || fail "$1: expected HTTP $2, got $code: $body $(cat "$work/curl.err")"
  if [[ $# -ge 3 ]]; then
    jq -e "$3" >/dev/null 2>&1 <<<"$body" || fail "$1: expected $3 in $body"
  fi
  echo "ok   $1"
}

all_alive() {
  local i
  for i in "${!pids[@]}"; do
    kill -0 "${pids[$i]}" 2>/dev/null || fail "node$i exited early"
  done
}

# wait_until SECONDS WHAT COMMAND...: polls every $poll seconds; fails when time runs out.
poll=0.1
wait_until() {
  local limit=$1 what=$2
  shift 2
  local deadline=$((SECONDS + limit))
  until "$@"; do
    all_alive
    ((SECONDS < deadline)) || fail "timed out after ${limit}s waiting for $what"
    sleep "$poll"
  done
}

healthy() {
  [[ "$(curl -s --noproxy '*' --max-time 2 -o /dev/null -w '%{http_code}' "$(url "$1" /healthz)")" == 200 ]]
}

status_is() { # NODE JQ_CONDITION
  curl -s --noproxy '*' --max-time 5 "$(url "$1" /cluster/status)" 2>/dev/null | jq -e "$2" >/dev/null 2>&1
}

now_ms() { echo $(($(date +%s%N) / 1000000)); }

start_node() { # NODE extra flags...
  local i=$1
  shift
  started_ns[$i]=$(date +%s%N)
  "${runner[@]}" "$bin" -id "node$i" -http "127.0.0.1:${http_port[$i]}" \
    -raft "127.0.0.1:${raft_port[$i]}" -data "$work/data" --cluster-secret "$secret" "$@" \
    </dev/null >"$work/node$i.log" 2>&1 &
  pids[$i]=$!
  local poll=0.02 # finer polling here: the start-up time is one of the reported figures
  wait_until 60 "node$i to answer /healthz" healthy "$i"
  ready_ms[$i]=$((($(date +%s%N) - started_ns[$i]) / 1000000))
}

echo "binary: $bin ($arch, $(stat -c %s "$bin") bytes)"
echo "runner: ${runner[*]:-native}"
"${runner[@]}" "$bin" --version

for i in "${nodes[@]}"; do
  pick_port "http_port[$i]"
  pick_port "raft_port[$i]"
done

# --- a 3-node cluster: node1 bootstraps, node2 and node3 join through it
start_node 1 -bootstrap
wait_until 60 "node1 to lead" status_is 1 '.is_leader == true'
start_node 2 -join "127.0.0.1:${http_port[1]}"
start_node 3 -join "127.0.0.1:${http_port[1]},127.0.0.1:${http_port[2]}"
three_voters='([.members[] | select(.role == "voter")] | length) == 3 and .leader != null'
for i in "${nodes[@]}"; do
  wait_until 90 "node$i to see 3 voters" status_is "$i" "$three_voters"
done
echo "ok   3 voters, leader known on every node"

# --- the spec scenario, writes spread over the nodes (followers forward to the leader)
http POST 2 /api/v1/printers '{"id": "mk4-1", "company": "Prusa", "model": "MK4"}'
expect "printer created through node2" 201 '.id == "mk4-1"'
http POST 3 /api/v1/filaments '{"id": "f1", "type": "pla", "color": "red", "total_weight_in_grams": 10}'
expect "filament created through node3" 201 '.type == "PLA" and .remaining_weight_in_grams == 10'
http POST 2 /api/v1/print_jobs '{"id": "j1", "printer_id": "mk4-1", "filament_id": "f1", "filepath": "/prints/cube.gcode", "print_weight_in_grams": 5.02}'
expect "job created through node2" 201 '.status == "Queued"'
http POST 3 /api/v1/print_jobs '{"id": "big", "printer_id": "mk4-1", "filament_id": "f1", "filepath": "/prints/big.gcode", "print_weight_in_grams": 4.99}'
expect "reservation refused (4.98 g left after reservations)" 422 '.error.code == "insufficient_filament"'
http POST 3 /api/v1/print_jobs/j1/status '{"status": "running"}'
expect "job running through node3" 200 '.status == "Running"'
http POST 1 /api/v1/print_jobs/j1/status '{"status": "done"}'
expect "job done through node1" 200 '.status == "Done"'

replica_deducted() { # NODE: its own replica (no ReadIndex) shows the deduction
  http GET "$1" '/api/v1/filaments/f1?consistency=stale'
  [[ "$code" == 200 ]] && jq -e '.remaining_weight_in_grams == 4.98' >/dev/null <<<"$body"
}

# --- every node answers the same (linearizable reads), and each local replica applied it
for i in "${nodes[@]}"; do
  http GET "$i" /api/v1/printers/mk4-1
  expect "node$i: printer" 200 '.company == "Prusa" and .model == "MK4"'
  http GET "$i" /api/v1/filaments/f1
  expect "node$i: filament deducted" 200 '.remaining_weight_in_grams == 4.98'
  http GET "$i" /api/v1/print_jobs/j1
  expect "node$i: job done" 200 '.status == "Done" and .filament_id == "f1"'
  http GET "$i" /api/v1/print_jobs
  expect "node$i: exactly one job stored" 200 'length == 1'
  wait_until 30 "node$i's own replica to apply the deduction" replica_deducted "$i"
  echo "ok   node$i: local replica deducted"
done

# --- figures: start-up time to a healthy /healthz, and idle memory of node1
sleep 2
rss=$(awk '/^VmRSS/ {print $2 " " $3}' "/proc/${pids[1]}/status")
for i in "${nodes[@]}"; do
  echo "node$i: spawn to healthy /healthz: ${ready_ms[$i]} ms"
done
echo "node1: idle VmRSS ${rss} (process ${pids[1]}: ${runner[0]:-raft3d})"
echo "smoke test passed"
