#!/usr/bin/env bash
# The README's first command: install everything, then use the sandbox cluster through mirrord.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh

# A plain command (no shell function), so that a background mirrord is the process $! names.
if [[ $(id -u) -eq 0 ]]; then as_root=(); else as_root=(sudo); fi
mirrord=("${as_root[@]}" env "KUBECONFIG=${KUBECONFIG:-}" "$(pwd)/.venv/bin/mirrord")
show() { echo; echo "\$ mirrord ${*}"; "${mirrord[@]}" "$@"; }

show verify-config examples/mirrord.toml

# Sandbox pods need root (network namespaces); they, the emulated Kubernetes API and anything
# started below are removed whatever happens next.
workdir=$(mktemp -d)
stealer=""
cleanup() {
    if [[ -n "$stealer" ]]; then
        "${as_root[@]}" kill -TERM "$stealer" 2>/dev/null || true
        wait "$stealer" 2>/dev/null || true
    fi
    "${as_root[@]}" "$(pwd)/.venv/bin/mirrord" sandbox down --name demo >/dev/null 2>&1 || true
    rm -rf "$workdir"
}
trap cleanup EXIT
show sandbox up --name demo
export KUBECONFIG=/run/mirrord-sandbox/demo/kubeconfig
mirrord=("${as_root[@]}" env "KUBECONFIG=$KUBECONFIG" "$(pwd)/.venv/bin/mirrord")
show ls

# The main job: a local shell runs in the context of the web deployment's pod — its
# environment, its files, its DNS and its network (the api pod is reachable only from inside
# the pod network). mirrord starts its agent as a Job next to the pod and port-forwards to it.
script='echo "GREETING=$GREETING"; cat /app/config.yaml; curl -s http://api.default.svc.cluster.local:8080/'
echo; echo "\$ mirrord run -t deployment/web -- sh -c '$script'"
"${mirrord[@]}" run -t deployment/web -- sh -c "$script"

# Incoming traffic: a local server steals the web pod's port 8080 (local port 18080), and a
# request that the api pod sends to the web service is answered on this machine.
mkdir -p "$workdir/site"
echo "answered by the server on your machine" >"$workdir/site/index.html"
echo '{"feature": {"network": {"incoming": {"mode": "steal", "port_mapping": [[18080, 8080]]}}}}' \
    >"$workdir/steal.json"
echo; echo "\$ mirrord run -f steal.json -t deployment/web -- python3 -m http.server 18080 &"
"${mirrord[@]}" run -f "$workdir/steal.json" -t deployment/web -- \
    python3 -m http.server 18080 --directory "$workdir/site" >"$workdir/steal.log" 2>&1 &
stealer=$!
for _ in $(seq 1 60); do grep -q "Serving HTTP" "$workdir/steal.log" && break; sleep 0.5; done
sleep 1
echo "\$ mirrord run -t deployment/api -- curl -s http://web.default.svc.cluster.local:8080/"
"${mirrord[@]}" run -t deployment/api -- curl -s http://web.default.svc.cluster.local:8080/
"${as_root[@]}" kill -TERM "$stealer"; wait "$stealer" || true; stealer=""
echo "(the local server's log:)"; grep -v '^mirrord:' "$workdir/steal.log" | sed 's/^/  /'

show sandbox down --name demo
