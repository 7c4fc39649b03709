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

# The main job: a local shell runs in the context of the web pod — its environment, its files,
# its DNS and its network (the api pod is reachable only from inside the pod network).
script='echo "GREETING=$GREETING"; cat /app/config.yaml; curl -s http://api.default.svc.cluster.local:8080/'
echo; echo "\$ mirrord run -t pid/$pid -- sh -c '$script'"
"${mirrord[@]}" run -t "pid/$pid" -- sh -c "$script"
show sandbox down --name demo
