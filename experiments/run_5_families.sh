#!/usr/bin/env bash
# Experiment 5, a METHOD CHECK, not a finding: the embedded SmolLM2-135M beside random-weight twins of
# other model families at its size (d_model 576, 30 layers, 9 heads of 64, MLP 1536, its tokenizer),
# compared by relative depth with `interp.compare` (stable share, divergence profile, AtP mass).
# The twins are untrained: they show that every family runs through the same pipeline and that the
# comparison lines different families up; they say nothing about what trained GPT-2, Pythia, Gemma,
# Qwen2 or Mistral models do. SmolLM2's own random twin (smollm2_135m_random) is the untrained
# baseline of the one trained model here.
#
#   bash experiments/run_5_families.sh                  # the twins (CPU: about 20 min at LIMIT=10)
#   CHECKPOINTS=1 bash experiments/run_5_families.sh device=cuda
#       # the real checkpoints instead of the twins, on a machine that has them (hub or cache):
#       # gpt2, EleutherAI/pythia-160m, google/gemma-2b, Qwen/Qwen2-0.5B, mistralai/Mistral-7B-v0.1
# Extra arguments go to every `interp.run`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-outputs/experiments}
LIMIT=${LIMIT:-10}
ATP_LIMIT=${ATP_LIMIT:-5}

run() {  # run NAME MODEL-OVERRIDES...: the analysis, then AtP only (no ablation or patching)
  local name=$1; shift
  $PY -m interp.run pairs=grammar pairs.limit=$LIMIT hooks=standard analysis.controls.pool=matched \
      analysis.figures=false progress=false hydra.run.dir=$OUT/e5_$name overwrite=true "$@" "${EXTRA[@]}"
  $PY -m interp.patch run=$OUT/e5_$name ablation.enabled=false patching.enabled=false atp.limit=$ATP_LIMIT \
      atp.validate=0 figures.enabled=false progress=false
}
EXTRA=("$@")

run smollm2 model=smollm2_135m
names=(e5_smollm2)
if [[ "${CHECKPOINTS:-0}" == 1 ]]; then
  for spec in gpt2:gpt2 pythia:EleutherAI/pythia-160m gemma:google/gemma-2b qwen2:Qwen/Qwen2-0.5B \
              mistral:mistralai/Mistral-7B-v0.1; do
    run "${spec%%:*}" model=hf model.name="${spec#*:}"
    names+=("e5_${spec%%:*}")
  done
else
  run smollm2_random model=smollm2_135m_random
  SMOL="model.config.num_hidden_layers=30 model.config.num_attention_heads=9 model.config.intermediate_size=1536"
  common="model.config.initializer_range=0.02 model.seed=0"
  run gpt2_twin model=tiny_gpt2 model.name=gpt2-twin model.config.n_embd=576 model.config.n_layer=30 \
      model.config.n_head=9 model.config.n_inner=1536 model.config.n_positions=2048 $common
  run pythia_twin model=tiny_pythia model.name=pythia-twin model.config.hidden_size=576 $SMOL \
      model.config.max_position_embeddings=2048 $common
  run gemma_twin model=tiny_gemma model.name=gemma-twin model.config.hidden_size=576 $SMOL \
      model.config.num_key_value_heads=3 model.config.head_dim=64 model.config.max_position_embeddings=2048 $common
  run qwen2_twin model=tiny_qwen2 model.name=qwen2-twin model.config.hidden_size=576 $SMOL \
      model.config.num_key_value_heads=3 model.config.max_position_embeddings=2048 $common
  run mistral_twin model=tiny_mistral model.name=mistral-twin model.config.hidden_size=576 $SMOL \
      model.config.num_key_value_heads=3 model.config.head_dim=64 model.config.max_position_embeddings=2048 \
      model.config.sliding_window=2048 $common
  names+=(e5_smollm2_random e5_gpt2_twin e5_pythia_twin e5_gemma_twin e5_qwen2_twin e5_mistral_twin)
fi
$PY -m interp.compare "${names[@]/#/$OUT/}" --out $OUT/e5_compare --no-png
