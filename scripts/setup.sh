#!/usr/bin/env bash
# Installs the system packages skygit builds against (Debian or Ubuntu).
# RocksDB comes from Debian's librocksdb-dev (linked through
# ROCKSDB_LIB_DIR in .cargo/config.toml) instead of a 25 CPU-minute source
# build; bindgen needs libclang. iproute2 (`ip netns`) lets the partition
# test put node processes in separate network namespaces. chromium and
# chromium-driver run the web UI tests in a real headless browser.
set -euo pipefail

packages=(librocksdb-dev libclang-dev clang pkg-config libssl-dev zlib1g-dev git iproute2 chromium chromium-driver)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
    if [[ $(id -u) -eq 0 ]]; then sudo=(); else sudo=(sudo); fi
    echo "installing: ${missing[*]}"
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}"
fi

if ! command -v cargo >/dev/null; then
    echo "cargo not found: install the Rust toolchain (https://rustup.rs) first" >&2
    exit 1
fi
