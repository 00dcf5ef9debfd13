#!/usr/bin/env bash
# Experiment 4: learned or architectural? The SmolLM2-135M architecture with random weights
# (conf/model/smollm2_135m_random.yaml), same pairs and settings as e1_edits, compared by relative depth.
# Needs experiment 1's e1_edits run. For Llama-3-8B:
#   OUT=outputs/experiments_8b MODEL=llama3_8b_shape bash experiments/run_4_random.sh device=cuda
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-outputs/experiments}
LIMIT=${LIMIT:-40}
MODEL=${MODEL:-smollm2_135m_random}
$PY -m interp.run model=$MODEL pairs=all pairs.limit=$LIMIT hooks=standard \
    analysis.controls.pool=edits analysis.detail_pairs=0 analysis.figures=false \
    progress=false hydra.run.dir=$OUT/e4_random "$@"
$PY -m interp.compare $OUT/e1_edits $OUT/e4_random --out $OUT/e4_compare
$PY experiments/summarize.py e4 $OUT
