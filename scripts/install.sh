#!/usr/bin/env bash
# Installs mirrord (core + the four first-party plugins) into ./.venv, idempotently.
# Usage: scripts/install.sh [--with-tests]
set -euo pipefail
cd "$(dirname "$0")/.."

with_tests=0
[[ "${1:-}" == "--with-tests" ]] && with_tests=1

as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

# System packages: the Python venv module, and what the sandbox pods and later features use.
packages=(python3 python3-venv python3-pip iproute2 busybox-static dnsmasq-base nftables fuse3
          util-linux procps curl)
if ((with_tests)); then
    # Real programs the interception tests run: a static Go binary they build, Node, and the
    # kernel headers they check the syscall tables against.
    packages+=(golang-go linux-libc-dev)
    command -v node >/dev/null || packages+=(nodejs)
fi
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
    echo "installing system packages: ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
    "$python" -m venv .venv
fi
# pip's and setuptools' chatter goes to a log, shown only when something fails.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
pip_install() {
    if ! .venv/bin/python -m pip install -q --disable-pip-version-check "$@" >"$log" 2>&1; then
        cat "$log" >&2
        exit 1
    fi
}
pip_install --upgrade pip setuptools
# `sandbox`: the emulated Kubernetes API of `mirrord sandbox up`.
extras="[sandbox]"
((with_tests)) && extras="[sandbox,test]"
pip_install -e ".${extras}" -e plugins/fs -e plugins/env -e plugins/network -e plugins/target
echo "mirrord installed in $(pwd)/.venv (run: .venv/bin/mirrord --help)"
