#!/usr/bin/env bash
# Experiment 3: where the edit is carried. Activation patching of the residual stream per layer, at
# the edited token and at the tokens after it, 50 grammar pairs per category (all when fewer), both
# directions, ratio of means with bootstrap CIs. Needs experiment 1's e1_matched run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-outputs/experiments}
$PY -m interp.patch run=$OUT/e1_matched ablation.enabled=false atp.enabled=false patching.n_pairs=${N:-50} \
    progress=false out=$OUT/e1_matched/causal_patching
$PY experiments/summarize.py tables $OUT
