#!/usr/bin/env bash
# Experiment 1: stable components, grammar vs semantic, two control pools, causal check (ablation).
# Embedded SmolLM2-135M-Instruct on CPU (~25 min on 2 shared cores).
# Llama-3-8B:  bash experiments/run_1_stable.sh model=llama3_8b model.path=DIR device=cuda
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-outputs/experiments}
LIMIT=${LIMIT:-40}
for POOL in common edits; do
  $PY -m interp.run pairs=all pairs.limit=$LIMIT hooks=standard analysis.controls.pool=$POOL \
      progress=false hydra.run.dir=$OUT/e1_${POOL} "$@"
done
# Causal check on the stricter-null run: ablate the k most stable components (edit token, mean
# ablation) vs k random ones from the same hook points/layers vs the k least stable.
$PY -m interp.patch run=$OUT/e1_edits k=[10,100] ablation.limit=5 ablation.seeds=2 \
    ablation.modes=[mean] patching.enabled=false progress=false out=$OUT/e1_edits/causal_ablation
$PY experiments/summarize.py e1 $OUT
