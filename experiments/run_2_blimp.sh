#!/usr/bin/env bash
# Experiment 2: BLiMP (one-token-edit subset) on the embedded SmolLM2-135M-Instruct, matched null.
# LIMIT pairs sampled per paradigm before the one-token filter.
# Llama-3-8B:  bash experiments/run_2_blimp.sh model=llama3_8b model.path=DIR device=cuda
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-outputs/experiments}
LIMIT=${LIMIT:-100}
$PY -m interp.run pairs=blimp pairs.limit=$LIMIT hooks=resid_post analysis.controls.pool=matched analysis.by_category=true \
    analysis.contrast=null analysis.detail_pairs=0 progress=false hydra.run.dir=$OUT/e2_blimp overwrite=true "$@"
$PY experiments/summarize.py tables $OUT
