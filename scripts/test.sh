#!/usr/bin/env bash
# The whole test suite: set up (idempotent), then pytest on INTERP_TEST_WORKERS processes (default 2,
# one per core of the CI machine; each test file stays in one worker, so a module's fixtures are built
# once). Extra arguments go to pytest (-n 0: one process).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q -n "${INTERP_TEST_WORKERS:-2}" --dist loadfile "$@"
