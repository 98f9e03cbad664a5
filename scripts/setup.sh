#!/usr/bin/env bash
# Installs the system packages skygit builds against (Debian or Ubuntu).
# RocksDB comes from Debian's librocksdb-dev (linked through
# ROCKSDB_LIB_DIR in .cargo/config.toml) instead of a 25 CPU-minute source
# build; bindgen needs libclang. iproute2 (`ip netns`) lets the partition
# test put node processes in separate network namespaces; iptables (NAT
# routers), procps (sysctl) and coturn (a TURN server) make the NAT tests
# (nodes/tests/nat.rs). chromium and
# chromium-driver run the web UI tests in a real headless browser.
# openssh-client (ssh-keygen) and jq check identities and signed history
# lines as a reader would (scripts/verify-line.sh, nodes/tests/identity.rs).
# schemathesis (from PyPI, pinned, in its own virtual environment) fuzzes
# a live node's API from its OpenAPI description (nodes/tests/fuzz_api.rs).
# git-lfs is the real LFS client the attachment tests check the repository
# with; giftless (a Git LFS server) and moto (an S3-compatible server),
# from PyPI, pinned, in their own virtual environment, are what the room
# stores its files in during those tests (nodes/tests/attachments.rs).
set -euo pipefail

packages=(librocksdb-dev libclang-dev clang pkg-config libssl-dev zlib1g-dev git openssh-client jq iproute2 iptables procps coturn chromium chromium-driver python3 python3-venv git-lfs)

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

# The API fuzzer. The test finds it through SKYGIT_SCHEMATHESIS or here.
SCHEMATHESIS_VERSION=4.32.5
st_env="${SKYGIT_TOOLS_DIR:-$HOME/.cache/skygit}/schemathesis-$SCHEMATHESIS_VERSION"
if [[ ! -x "$st_env/bin/st" ]]; then
    echo "installing schemathesis $SCHEMATHESIS_VERSION into $st_env"
    python3 -m venv "$st_env"
    "$st_env/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION"
fi
"$st_env/bin/st" --version

# The attachment stores. giftless 0.6.2's wheel declares no dependencies:
# they are listed here (PyJWT before 2.10, which refuses giftless's own
# tokens).
MEDIA_ENV_VERSION=1
media_env="${SKYGIT_TOOLS_DIR:-$HOME/.cache/skygit}/media-servers-$MEDIA_ENV_VERSION"
if [[ ! -x "$media_env/bin/moto_server" || ! -x "$media_env/bin/gunicorn" ]]; then
    echo "installing giftless and moto into $media_env"
    python3 -m venv "$media_env"
    "$media_env/bin/pip" install -q 'giftless==0.6.2' 'flask==2.3.3' 'werkzeug==3.1.3' \
        'figcan==0.0.4' 'flask-marshmallow==0.15.0' 'marshmallow==3.26.1' 'webargs==8.7.0' \
        'pyyaml==6.0.2' 'PyJWT==2.8.0' 'python-dotenv==1.1.0' 'python-dateutil==2.9.0.post0' \
        'typing-extensions==4.14.0' 'flask-classful==0.16.0' 'cachetools==5.5.2' \
        'importlib-metadata==8.7.0' 'gunicorn==23.0.0' 'moto[s3]==5.1.6' 'flask-cors==6.0.1'
fi
"$media_env/bin/python" -c 'import giftless, moto; print("giftless and moto", moto.__version__)'
