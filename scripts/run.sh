#!/usr/bin/env bash
# One command: set up (idempotent), then run the analysis with any Hydra overrides.
#   bash scripts/run.sh pairs=grammar hooks=resid_post
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m interp.run "$@"
