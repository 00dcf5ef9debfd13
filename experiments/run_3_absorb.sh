#!/usr/bin/env bash
# Experiment 3: how the edit is absorbed. Divergence profiles come from the experiment-1 run
# (run it first); this adds activation patching (residual stream per layer x position, heads) on
# one pair per grammar category. Embedded SmolLM2-135M-Instruct on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-outputs/experiments}
N=${N:-1}
$PY -m interp.patch run=$OUT/e1_edits ablation.enabled=false patching.n_pairs=$N \
    progress=false out=$OUT/e1_edits/causal_patching
$PY experiments/summarize.py e3 $OUT
