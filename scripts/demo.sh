#!/usr/bin/env bash
# The README's first command: install everything, then use a sandbox pod through mirrord.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh

as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }
mirrord=(as_root "$(pwd)/.venv/bin/mirrord")
show() { echo; echo "\$ mirrord ${*}"; "${mirrord[@]}" "$@"; }

show verify-config examples/mirrord.toml

# Sandbox pods need root (network namespaces); they are removed whatever happens next.
trap '"${mirrord[@]}" sandbox down --name demo >/dev/null 2>&1 || true' EXIT
show sandbox up --name demo
pid=$("${mirrord[@]}" sandbox status | awk -F'│' '$2 ~ /^ web / {gsub(/ /, "", $5); print $5}')

show env -t "pid/$pid" -x 'HOSTNAME'
show fs ls -t "pid/$pid" /app
show fs cat -t "pid/$pid" /app/config.yaml
show net resolve -t "pid/$pid" api
show net get -t "pid/$pid" http://api.default.svc.cluster.local:8080/
show sandbox down --name demo
