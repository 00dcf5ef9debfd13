#!/usr/bin/env bash
# Experiment 4: learned or architectural? The SmolLM2-135M architecture with random weights
# (conf/model/smollm2_135m_random.yaml), the same pairs, null and causal test as e1_matched,
# compared by relative depth. Needs experiment 1's e1_matched run. For Llama-3-8B's shape:
#   OUT=outputs/experiments_8b MODEL=llama3_8b_shape bash experiments/run_4_random.sh device=cuda
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-outputs/experiments}
LIMIT=${LIMIT:-null}
MODEL=${MODEL:-smollm2_135m_random}
$PY -m interp.run model=$MODEL pairs=all pairs.limit=$LIMIT hooks=standard analysis.controls.pool=matched analysis.by_category=true \
    analysis.pair_values.positions=[edit] analysis.pair_values.max_mb=4096 analysis.detail_pairs=0 analysis.figures=false \
    progress=false hydra.run.dir=$OUT/e4_random overwrite=true "$@"
$PY -m interp.patch run=$OUT/e4_random k=[10,100] ablation.limit=${ABL_LIMIT:-null} ablation.seeds=100 \
    ablation.where=[edit,after] patching.enabled=false progress=false out=$OUT/e4_random/causal
$PY -m interp.compare $OUT/e1_matched $OUT/e4_random --out $OUT/e4_compare --no-png
$PY experiments/summarize.py tables $OUT
