"""GPU tier: the same invariants on CUDA (skipped without a GPU; run on the device machine).

The tokenizer of the tiny model comes from the embedded model's cache, or from the folder named by
``INTERP_TOKENIZER_DIR`` where the embedded package is not installed (the GPU machine).
"""

import copy

import pandas as pd
import pytest
import torch

from interp.run import run
from tests.conftest import make_cfg, tokenizer_overrides

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _cfg(*extra):
    return make_cfg("model=tiny", *tokenizer_overrides(), "pairs=file", "hooks=all", "analysis.figures=false", *extra)


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


@pytest.mark.parametrize("compiled", [False, True])
def test_the_plain_backend_on_cuda_keeps_the_prefix_invariant_and_agrees_with_the_bridge(pairs_file, tmp_path,
                                                                                       compiled):
    """bf16, sdpa (and torch.compile): before the edited token both sentences are the same tokens, so
    every activation there is identical; the statistics agree with the bridge's to bf16 rounding."""
    from interp.engine import forward, make_batches
    from interp.pairs import load_pairs, validate_pairs
    from interp.backends.hf import PlainModel, twin
    from interp.run import get_model

    cfg = _cfg(f"pairs.path={pairs_file}", "device=cuda", "dtype=bfloat16", "analysis.n_saved_pairs=0")
    lm = get_model(cfg)
    plain = PlainModel(twin(lm.plain.original_model), "sdpa")
    if compiled:
        plain.compile()
    kept, _ = validate_pairs(load_pairs(cfg.pairs).pairs, lm.tokenizer)
    names = [f"blocks.{layer}.hook_{p}" for layer in range(lm.info["n_layers"]) for p in ("resid_post", "mlp_out")]
    for size in (8, 5, 3):  # several shapes (a compiled tree turns dynamic)
        b = make_batches([tp for _, tp in kept], [0] * len(kept), lm.bos_token_id, lm.pad_token_id, size, lm.device)[0]
        got = {}
        forward(plain, b, [(n, (lambda n: lambda x, hook: got.__setitem__(n, x.clone()))(n)) for n in names])
        for n in names:
            for j in range(b.size):
                e = int(b.edit[j])
                assert torch.equal(got[n][j, :e], got[n][b.size + j, :e]), (n, j)
    outs = {be: run(make_cfg(*cfg_overrides(cfg), f"analysis.backend={be}", f"analysis.compile={compiled}"),
                    tmp_path / be) for be in ("bridge", "hf")}
    a, b = (pd.read_parquet(outs[k] / "stability.parquet") for k in ("hf", "bridge"))
    for col in ("mean_abs_diff", "spread"):
        pd.testing.assert_series_equal(a[col], b[col], atol=0.05, rtol=0.05)


def cfg_overrides(cfg) -> list[str]:
    return ["model=tiny", "pairs=file", "hooks=all", "analysis.figures=false", "analysis.n_saved_pairs=0",
            f"pairs.path={cfg.pairs.path}", "device=cuda", "dtype=bfloat16", *tokenizer_overrides()]


def test_compiled_short_attention_on_cuda_compiles_once_for_every_sentence_length(pairs_file):
    """The Triton kernel on CUDA under torch.compile: new padded lengths cost no recompilation and
    every pass runs compiled (tests/test_plain.py runs the same check through the interpreter)."""
    from interp.run import get_model
    from tests.test_plain import check_short_attention_compiles_once

    check_short_attention_compiles_once(get_model(_cfg(f"pairs.path={pairs_file}", "device=cuda", "dtype=float32")))



@pytest.mark.parametrize("family", ["gpt2", "pythia", "gemma", "qwen2", "mistral", "llama"])
def test_every_family_runs_compiled_with_the_short_kernel_on_cuda_and_equals_the_cpu(family, pairs_file, tmp_path):
    """Each family's plain tree on CUDA, compiled, with the short-attention kernel (float32): the run
    says so in its manifest, nothing fell back to eager modules, and its log-probabilities and
    statistics equal the CPU's eager run."""
    import json

    def cfg(*extra):
        return make_cfg(f"model=tiny_{family}", *tokenizer_overrides(), "pairs=file", f"pairs.path={pairs_file}",
                        "hooks=standard", "analysis.figures=false", "dtype=float32", *extra)

    gpu = run(cfg("device=cuda", "analysis.compile=true", "analysis.attn=short"), tmp_path / "gpu")
    cpu = run(cfg("device=cpu", "analysis.compile=false", "analysis.attn=eager"), tmp_path / "cpu")
    fwd = json.loads((gpu / "manifest.json").read_text())["forward"]
    assert fwd["backend"] == "hf" and fwd["compiled"] and fwd["attention"] == "short", fwd
    assert not fwd.get("compile_error"), fwd
    pa, pb = pd.read_parquet(gpu / "pairs.parquet"), pd.read_parquet(cpu / "pairs.parquet")
    for col in ("logprob_a", "logprob_b", "margin"):
        pd.testing.assert_series_equal(pa[col], pb[col], atol=1e-3, rtol=1e-4)
    a, b = pd.read_parquet(gpu / "stability.parquet"), pd.read_parquet(cpu / "stability.parquet")
    for col in ("mean_abs_diff", "spread", "normalized"):
        pd.testing.assert_series_equal(a[col], b[col], atol=1e-4, rtol=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9,
                    reason="the fused MLP's TMA tiles need a Hopper GPU")
def test_the_fused_mlp_on_cuda_agrees_with_the_compiled_mlp_and_keeps_the_prefix_invariant(pairs_file, tmp_path,
                                                                                          monkeypatch):
    """``analysis.mlp=fused`` in bf16: the gated-up kernel runs in every layer; measured against the
    float32 model, its activations are off by no more than the compiled bf16 tree's (twice, plus a
    little: the kernel rounds silu(g) * u once, the compiled MLP more often); before the edit both
    sentences' activations are identical; and a whole run's statistics agree."""
    from interp.engine import forward, make_batches
    from interp.kernels import mlp as kmlp
    from interp.pairs import load_pairs, validate_pairs
    from interp.backends.hf import PlainModel, twin
    from interp.run import get_model

    cfg = _cfg(f"pairs.path={pairs_file}", "device=cuda", "dtype=bfloat16", "analysis.n_saved_pairs=0")
    lm = get_model(cfg)
    trees = {k: PlainModel(twin(lm.plain.original_model), "sdpa") for k in ("compiled", "fused")}
    exact = PlainModel(twin(copy.deepcopy(lm.plain.original_model).float()), "sdpa")  # the float32 reference
    for k, t in trees.items():
        t.set_mlp(k)
        t.compile()
    kept, _ = validate_pairs(load_pairs(cfg.pairs).pairs, lm.tokenizer)
    names = [f"blocks.{layer}.hook_{p}" for layer in range(lm.info["n_layers"]) for p in ("resid_post", "mlp_out")]
    b = make_batches([tp for _, tp in kept], [0] * len(kept), lm.bos_token_id, lm.pad_token_id, 8, lm.device)[0]
    got = {}
    calls = []
    real = kmlp._launch  # the kernel's launch, after FusedMLP's check
    monkeypatch.setattr(kmlp, "_launch", lambda *a: calls.append(1) or real(*a))
    for k, t in [*trees.items(), ("exact", exact)]:
        got[k] = {}
        forward(t, b, [(n, (lambda d, n: lambda x, hook: d.__setitem__(n, x.clone()))(got[k], n)) for n in names])
    assert len(calls) == lm.info["n_layers"]
    m = b.mask
    for n in names:
        want = got["exact"][n][m]
        err_fused, err_compiled = ((got[k][n][m].float() - want).abs().max().item() for k in ("fused", "compiled"))
        assert err_fused <= 2 * err_compiled + 1e-2, (n, err_fused, err_compiled)
        for j in range(b.size):
            e = int(b.edit[j])
            assert torch.equal(got["fused"][n][j, :e], got["fused"][n][b.size + j, :e]), (n, j)
    outs, runs_calls = {}, {}
    for k in ("compiled", "fused"):
        calls.clear()
        outs[k] = run(make_cfg(*cfg_overrides(cfg), "analysis.compile=true", f"analysis.mlp={k}"), tmp_path / k)
        runs_calls[k] = len(calls)
    # the fused run's MLPs ran the kernel (every layer of every pass), the compiled run's never
    assert runs_calls["compiled"] == 0 and runs_calls["fused"] >= lm.info["n_layers"], runs_calls
    from interp import rundir as R

    assert R.read_manifest(outs["fused"])["forward"]["mlp"] == "fused"
    a, c = (pd.read_parquet(outs[k] / "stability.parquet") for k in ("fused", "compiled"))
    for col in ("mean_abs_diff", "spread"):
        pd.testing.assert_series_equal(a[col], c[col], atol=0.05, rtol=0.05)
