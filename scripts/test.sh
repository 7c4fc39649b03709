#!/usr/bin/env bash
# The README's second command: install everything the tests need, then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh --with-tests
.venv/bin/ruff check .
.venv/bin/ruff format --check .
status=0
.venv/bin/python -m pytest -q "$@" || status=$?
# pytest's 5 means "no tests collected": a selection that matched nothing is not a failure.
if [[ $status -eq 5 ]]; then
    echo "pytest collected no tests"
    status=0
fi
exit $status
