#!/usr/bin/env bash
# Experiment 2: BLiMP (one-token-edit subset) on the embedded SmolLM2-135M-Instruct.
# LIMIT pairs sampled per paradigm before the one-token filter; 1 control per pair from the edits pool.
# Llama-3-8B:  bash experiments/run_2_blimp.sh model=llama3_8b model.path=DIR device=cuda
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-outputs/experiments}
LIMIT=${LIMIT:-60}
$PY -m interp.run pairs=blimp pairs.limit=$LIMIT hooks=resid_post analysis.controls.n=1 \
    analysis.controls.pool=edits analysis.contrast=null analysis.detail_pairs=0 progress=false hydra.run.dir=$OUT/e2_blimp "$@"
$PY experiments/summarize.py e2 $OUT
