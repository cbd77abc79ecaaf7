#!/usr/bin/env bash
# Checks systemd/raft3d.service and systemd/raft3d-ready without installing anything:
#   1. `systemd-analyze verify` on a copy of the unit whose /usr/local paths point at a temp
#      dir holding BINARY and the readiness script (verify insists that commands exist);
#   2. `systemd-analyze security --offline` must stay at or below MAX_EXPOSURE (default 2.0);
#   3. raft3d-ready against a node started from a config file, as the unit starts it: it
#      must succeed while the node serves and fail (exit 1, within its limit) when nothing
#      listens.
#
#   systemd/check.sh target/aarch64-unknown-linux-gnu/pi/raft3d   # foreign: under qemu
#   systemd/check.sh target/release/raft3d
#
# Needs systemd (for systemd-analyze) and, for a foreign BINARY, qemu-user.
set -euo pipefail

if [[ $# -ne 1 || ! -f "$1" ]]; then
  echo "usage: $0 PATH/TO/raft3d" >&2
  exit 2
fi
bin=$(realpath "$1")
here=$(cd "$(dirname "$0")" && pwd)
max_exposure=${MAX_EXPOSURE:-2.0}

work=$(mktemp -d "${TMPDIR:-/tmp}/raft3d-unit.XXXXXX")
node_pid=""
cleanup() {
  local rc=$?
  trap - EXIT
  if [[ -n "$node_pid" ]]; then
    kill -TERM "$node_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$node_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$node_pid" 2>/dev/null || true
    wait "$node_pid" 2>/dev/null || true
  fi
  if [[ $rc -ne 0 && -f "$work/node.log" ]]; then
    tail -n 20 "$work/node.log" >&2
  fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
fail() {
  echo "FAIL: $*" >&2
  exit 1
}

# --- 1. verify, with the unit's commands substituted by files that exist here
mkdir -p "$work/bin"
cp "$bin" "$work/bin/raft3d"
cp "$here/raft3d-ready" "$work/bin/raft3d-ready"
chmod +x "$work/bin/raft3d" "$work/bin/raft3d-ready"
sed -e "s|/usr/local/bin/raft3d|$work/bin/raft3d|g" \
  -e "s|/usr/local/libexec/raft3d-ready|$work/bin/raft3d-ready|g" \
  "$here/raft3d.service" >"$work/raft3d.service"
grep -q "/usr/local" "$work/raft3d.service" && fail "the unit names a /usr/local path this check does not substitute"
if ! systemd-analyze verify "$work/raft3d.service" >"$work/verify.out" 2>&1 || [[ -s "$work/verify.out" ]]; then
  cat "$work/verify.out" >&2
  fail "systemd-analyze verify reported problems"
fi
echo "ok   systemd-analyze verify: no warnings"

# --- 2. security exposure
systemd-analyze security --offline=true "$work/raft3d.service" >"$work/security.out" 2>&1 || true
exposure=$(sed -n 's/.*Overall exposure level for raft3d.service: \([0-9.]*\).*/\1/p' "$work/security.out")
[[ -n "$exposure" ]] || { cat "$work/security.out" >&2; fail "no exposure level in systemd-analyze security output"; }
awk -v e="$exposure" -v m="$max_exposure" 'BEGIN { exit !(e <= m) }' ||
  fail "exposure level $exposure is above $max_exposure"
echo "ok   systemd-analyze security: exposure level $exposure (limit $max_exposure)"

# --- 3. the readiness check against a node started the unit's way (--config FILE)
machine=$(od -An -tx1 -j18 -N2 "$bin" | tr -d ' \n')
runner=()
case "$machine:$(uname -m)" in
  b700:aarch64 | 2800:arm* | 3e00:x86_64) ;;
  b700:*) runner=(qemu-aarch64 -L /usr/aarch64-linux-gnu) ;;
  2800:*) runner=(qemu-arm -L /usr/arm-linux-gnueabihf) ;;
  *) fail "cannot run this binary (ELF machine $machine) here" ;;
esac
port() { # a loopback port below the ephemeral range that nobody listens on
  local p
  for _ in $(seq 100); do
    p=$((10000 + RANDOM % 20000))
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return 0; }
  done
  fail "no free port"
}
http_port=$(port)
raft_port=$(port)
while [[ "$raft_port" == "$http_port" ]]; do raft_port=$(port); done
cat >"$work/raft3d.toml" <<EOF
id = "unit-check"
http = ":$http_port"
raft = "127.0.0.1:$raft_port"
data = "$work/data"
bootstrap = true
cluster_secret = "unit-check-secret"
EOF
"${runner[@]}" "$bin" check-config "$work/raft3d.toml" >/dev/null || fail "check-config refused the test config"
"${runner[@]}" "$bin" --config "$work/raft3d.toml" </dev/null >"$work/node.log" 2>&1 &
node_pid=$!
"$work/bin/raft3d-ready" "$work/raft3d.toml" 60 >/dev/null || fail "raft3d-ready did not see the node serve"
echo "ok   raft3d-ready: succeeds once the node serves"

kill -TERM "$node_pid"
for _ in $(seq 100); do kill -0 "$node_pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$node_pid" 2>/dev/null && fail "the node did not stop within 10 s of SIGTERM"
wait "$node_pid" || fail "the node exited with status $? after SIGTERM"
node_pid=""
echo "ok   SIGTERM: the node stopped cleanly (exit status 0)"

start=$SECONDS
status=0
"$work/bin/raft3d-ready" "$work/raft3d.toml" 2 >/dev/null 2>&1 || status=$?
[[ $status == 1 ]] || fail "raft3d-ready should exit 1 when nothing listens, got $status"
((SECONDS - start <= 8)) || fail "raft3d-ready overran its 2 s limit ($((SECONDS - start)) s)"
echo "ok   raft3d-ready: exits 1 within its limit when nothing serves"
echo "unit checks passed"
