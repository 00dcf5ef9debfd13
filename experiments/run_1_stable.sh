#!/usr/bin/env bash
# Experiment 1: which components change less than a matched control edit (equivalence rule on the
# clustered ratio interval, regression-adjusted for the substitution's size), per category, and the
# causal test: the most stable components, selected on half of the pairs, ablated on the other half
# against 100 spread-matched random selections; attribution patching of every component.
# Embedded SmolLM2-135M-Instruct. Extra arguments go to `python -m interp.run`, e.g. device=cuda.
# Llama-3-8B:  bash experiments/run_1_stable.sh model=llama3_8b model.path=DIR device=cuda
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-outputs/experiments}
LIMIT=${LIMIT:-null}   # pairs per category (null = the whole bank: 2,076 pairs)
$PY -m interp.run pairs=all pairs.limit=$LIMIT hooks=standard analysis.controls.pool=matched analysis.by_category=true \
    analysis.pair_values.positions=[edit] analysis.pair_values.max_mb=4096 progress=false hydra.run.dir=$OUT/e1_matched overwrite=true "$@"
# the strictest null: the K tokens nearest the original token in the input embedding
$PY -m interp.run pairs=all pairs.limit=$LIMIT hooks=standard analysis.controls.pool=nearest \
    analysis.pair_values.hooks=[] analysis.detail_pairs=0 analysis.figures=false progress=false \
    hydra.run.dir=$OUT/e1_nearest overwrite=true "$@"
$PY -m interp.patch run=$OUT/e1_matched k=[10,100] ablation.limit=${ABL_LIMIT:-null} ablation.seeds=100 \
    ablation.where=[edit,after] patching.enabled=false progress=false out=$OUT/e1_matched/causal
$PY experiments/summarize.py tables $OUT
