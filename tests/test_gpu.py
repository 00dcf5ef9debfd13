"""GPU tier: the same invariants on CUDA (skipped without a GPU; run on the device machine).

The tokenizer of the tiny model comes from the embedded model's cache, or from the folder named by
``INTERP_TOKENIZER_DIR`` where the embedded package is not installed (the GPU machine).
"""

import os

import pandas as pd
import pytest
import torch

from interp.runner import run
from tests.conftest import make_cfg

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _cfg(*extra):
    tok = os.environ.get("INTERP_TOKENIZER_DIR")
    extra_tok = ["model.tokenizer.source=hf", f"+model.tokenizer.path={tok}"] if tok else []
    return make_cfg("model=tiny", *extra_tok, "pairs=file", "hooks=all", "analysis.figures=false", *extra)


def test_cuda_float32_statistics_equal_cpu_statistics(pairs_file, tmp_path):
    gpu = run(_cfg(f"pairs.path={pairs_file}", "device=cuda", "dtype=float32"), tmp_path / "gpu")
    cpu = run(_cfg(f"pairs.path={pairs_file}", "device=cpu", "dtype=float32"), tmp_path / "cpu")
    a, b = pd.read_parquet(gpu / "stability.parquet"), pd.read_parquet(cpu / "stability.parquet")
    for col in ("mean_abs_diff", "spread", "normalized", "control_normalized"):
        pd.testing.assert_series_equal(a[col], b[col], atol=1e-4, rtol=1e-3)
    pa, pb = pd.read_parquet(gpu / "pairs.parquet"), pd.read_parquet(cpu / "pairs.parquet")
    pd.testing.assert_series_equal(pa["margin"], pb["margin"], atol=1e-3, rtol=1e-3)


def test_bfloat16_on_cuda_keeps_the_edit_invariants(pairs_file, tmp_path):
    out = run(_cfg(f"pairs.path={pairs_file}", "device=cuda", "dtype=bfloat16"), tmp_path / "bf16")
    from safetensors.torch import load_file

    acts = load_file(str(out / "activations.safetensors"))
    pairs = pd.read_parquet(out / "pairs.parquet")
    for name, t in acts.items():
        if not name.startswith("blocks."):
            continue
        for j, e in enumerate(pairs["edit_pos"][: t.shape[0]] + 1):
            torch.testing.assert_close(t[j, 0, :e], t[j, 1, :e], rtol=0, atol=1e-3)
    s = pd.read_parquet(out / "stability.parquet")
    assert s["normalized"].notna().all() and (s["n_pairs"] == 8).any()
