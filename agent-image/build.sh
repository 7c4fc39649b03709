#!/usr/bin/env bash
# Builds the agent image under the tag mirrord uses by default (DEFAULT_AGENT_IMAGE), and
# pushes it with --push. Usage: agent-image/build.sh [--push] [extra docker build args]
set -euo pipefail
cd "$(dirname "$0")/.."

push=0
if [[ "${1:-}" == "--push" ]]; then
    push=1
    shift
fi
python=${PYTHON:-.venv/bin/python}
tag=$("$python" -c 'from mirrord_target.agent_image import DEFAULT_AGENT_IMAGE; print(DEFAULT_AGENT_IMAGE)')
docker build -f agent-image/Dockerfile -t "$tag" "$@" .
if ((push)); then
    docker push "$tag"
fi
echo "$tag"
