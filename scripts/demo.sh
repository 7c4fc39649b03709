#!/usr/bin/env bash
# The README's first command: install everything, then run the main job on an example.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
echo
echo "\$ mirrord plugins"
.venv/bin/mirrord plugins
echo
echo "\$ mirrord verify-config --json examples/mirrord.toml"
.venv/bin/mirrord verify-config --json examples/mirrord.toml
