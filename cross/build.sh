#!/usr/bin/env bash
# Builds a release `raft3d` for a Raspberry Pi without Docker or the `cross` tool: rustup's
# standard library for the target plus Debian's cross linker (set in .cargo/config.toml).
#
#   cross/build.sh aarch64-unknown-linux-gnu        # 64-bit Raspberry Pi OS (Pi 3, 4, 5, Zero 2)
#   cross/build.sh armv7-unknown-linux-gnueabihf    # 32-bit Raspberry Pi OS (Pi 2, 3, 4)
#   cross/build.sh --install-deps TARGET            # also apt-get install the linker (root)
#
# Builds with the workspace's `pi` profile (release + fat LTO, one codegen unit, stripped,
# panic=abort); PROFILE=release picks the plain release profile instead. Prints the path of the
# stripped binary. Honours CARGO_TARGET_DIR and CARGO_BUILD_JOBS.
# The dependency tree is pure Rust (no TLS, no C libraries), so no target sysroot packages
# beyond the cross gcc's own libc are needed.
set -euo pipefail

usage() {
  echo "usage: $0 [--install-deps] aarch64-unknown-linux-gnu|armv7-unknown-linux-gnueabihf" >&2
  exit 2
}

install_deps=false
if [[ "${1:-}" == "--install-deps" ]]; then
  install_deps=true
  shift
fi
[[ $# -eq 1 ]] || usage
target="$1"

case "$target" in
  aarch64-unknown-linux-gnu)
    linker=aarch64-linux-gnu-gcc
    packages=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
    ;;
  armv7-unknown-linux-gnueabihf)
    linker=arm-linux-gnueabihf-gcc
    packages=(gcc-arm-linux-gnueabihf libc6-dev-armhf-cross)
    ;;
  *)
    echo "$0: unsupported target '$target'" >&2
    usage
    ;;
esac

cd "$(dirname "$0")/.."

if ! command -v "$linker" >/dev/null 2>&1; then
  if $install_deps; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
  else
    echo "$0: the linker $linker is missing; install it with:" >&2
    echo "  sudo apt-get install ${packages[*]}" >&2
    echo "or run $0 --install-deps $target as root" >&2
    exit 1
  fi
fi

if command -v rustup >/dev/null 2>&1; then
  if ! rustup target list --installed | grep -qx "$target"; then
    rustup target add "$target"
  fi
else
  echo "$0: rustup not found; make sure the standard library for $target is installed" >&2
fi

profile=${PROFILE:-pi}
cargo build --locked --profile "$profile" --target "$target" -p raft3d >&2

target_dir="${CARGO_TARGET_DIR:-target}"
bin="$target_dir/$target/$profile/raft3d"
if [[ ! -x "$bin" ]]; then
  echo "$0: build finished but $bin is missing" >&2
  exit 1
fi
size=$(stat -c %s "$bin")
echo "built $bin ($size bytes, stripped, profile $profile)" >&2
echo "$bin"
