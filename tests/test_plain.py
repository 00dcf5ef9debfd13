"""The plain forward pass (interp.backends.hf): the Hugging Face module tree as loaded, sharing the
weights, with PyTorch hooks at TransformerLens hook names, must see what the bridge sees."""

from __future__ import annotations

import contextlib
import pandas as pd
import pytest
import torch

from interp import kernels
from interp.backends import analysis_model
from interp.backends.base import Forward
from interp.backends.hf import PlainModel, UnsupportedHook, supported, twin
from interp.engine import make_batches
from interp.hooks import HOOK_POINTS
from interp.kernels import attention
from interp.pairs import load_pairs, validate_pairs
from interp.run import run
from tests.conftest import make_cfg, tokenizer_overrides


def _batch(lm, pairs_file, size=8):
    kept, _ = validate_pairs(load_pairs(make_cfg("pairs=file", f"pairs.path={pairs_file}").pairs).pairs, lm.tokenizer)
    return make_batches([tp for _, tp in kept], [0] * len(kept), lm.bos_token_id, lm.pad_token_id, size)[0]


def _all_names(lm) -> list[str]:
    L = lm.info["n_layers"]
    return [hp.name(layer) for layer in range(L) for hp in HOOK_POINTS.values()] + ["ln_final.hook_out"]


def _grab(model, batch, names, hooks=()):
    got = {}

    def keep(name):
        def hook(x, hook):
            assert hook.name == name
            got[name] = x.clone()
        return hook

    with torch.no_grad(), model.hooks(fwd_hooks=[*hooks, *((n, keep(n)) for n in names)]):
        logits = model(batch.tokens, attention_mask=batch.mask.long(), return_type="logits")
    return got, logits


def test_the_plain_tree_shares_every_weight_and_is_untouched_by_the_bridge(tiny_lm):
    plain = tiny_lm.plain.original_model
    assert type(plain.model.layers[0]).__module__.startswith("transformers.")
    assert type(tiny_lm.hf_model.model.layers[0]).__module__.startswith("transformer_lens.")
    bridge_ptrs = {p.data_ptr() for p in tiny_lm.hf_model.parameters()}
    assert all(p.data_ptr() in bridge_ptrs for p in plain.parameters())  # no copy of any weight
    assert plain.lm_head.weight is plain.model.embed_tokens.weight  # tied weights stay tied
    assert not any(t.is_meta for t in [*plain.parameters(), *plain.buffers()])
    assert tiny_lm.plain_reason is None and tiny_lm.hf_model.config._attn_implementation == "eager"


@pytest.mark.parametrize("attn, tol", [("eager", 0.0), ("sdpa", 1e-4)])  # eager: bit for bit
def test_every_hook_point_equals_the_bridges_activation(tiny_lm, pairs_file, attn, tol):
    b = _batch(tiny_lm, pairs_file)
    names = _all_names(tiny_lm)
    _, cache = tiny_lm.bridge.run_with_cache(b.tokens, attention_mask=b.mask.long(), names_filter=lambda n: n in names)
    got, logits = _grab(PlainModel(twin(tiny_lm.plain.original_model), attn), b, names)
    m = b.mask
    for n in names:
        assert got[n].shape == cache[n].shape, n
        torch.testing.assert_close(got[n][m], cache[n][m], rtol=tol, atol=tol, msg=n)
    torch.testing.assert_close(logits[m], cache["ln_final.hook_out"][m] @ tiny_lm.hf_model.lm_head.weight.T,
                               rtol=1e-5, atol=1e-5)


def test_a_hook_that_returns_a_tensor_replaces_the_activation_as_in_the_bridge(tiny_lm, pairs_file):
    b = _batch(tiny_lm, pairs_file)
    plain = PlainModel(twin(tiny_lm.plain.original_model), "eager")
    edits = {
        "blocks.0.hook_resid_pre": lambda x, hook: x * 0.5,
        "blocks.0.hook_attn_out": lambda x, hook: x + 1.0,
        "blocks.1.attn.hook_z": lambda z, hook: torch.cat([z[:, :, :1] * 0, z[:, :, 1:]], dim=2),
        "blocks.1.mlp.hook_post": lambda x, hook: x.flip(-1),
        "blocks.0.hook_mlp_out": lambda x, hook: -x,
        "blocks.1.hook_resid_post": lambda x, hook: x * 2,
    }
    for name, fn in edits.items():
        with torch.no_grad(), tiny_lm.bridge.hooks(fwd_hooks=[(name, fn)]):
            want = tiny_lm.bridge(b.tokens, attention_mask=b.mask.long(), return_type="logits")
        _, got = _grab(plain, b, [], hooks=[(name, fn)])
        _, clean = _grab(plain, b, [])
        assert not torch.allclose(got, clean), name  # the edit changed something
        torch.testing.assert_close(got[b.mask], want[b.mask], rtol=0, atol=1e-5, msg=name)


def test_what_the_plain_tree_cannot_do_is_refused_with_a_reason(tiny_lm, pairs_file):
    b = _batch(tiny_lm, pairs_file)
    plain = PlainModel(twin(tiny_lm.plain.original_model), "eager")
    assert supported("blocks.0.hook_resid_post") and not supported("blocks.0.attn.hook_pattern")
    with pytest.raises(UnsupportedHook, match="hook_pattern"):
        _grab(plain, b, ["blocks.0.attn.hook_pattern"])
    with pytest.raises(UnsupportedHook, match="read but not replaced"):
        _grab(plain, b, [], hooks=[("blocks.0.hook_resid_mid", lambda x, hook: x * 2)])
    with pytest.raises(ValueError, match="not one of"):
        plain.set_attention("fast")
    # a hook that fails leaves no hook behind
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in plain.original_model.modules())


def test_the_backend_choice(tiny_lm, pairs_file):
    acfg = make_cfg().analysis
    names = ["blocks.0.hook_resid_post", "blocks.1.attn.hook_z"]
    model, facts = analysis_model(tiny_lm, acfg, names)
    assert model is tiny_lm.plain and facts == {"backend": "hf", "layout": "llama", "attention": "eager", "compiled": False}  # CPU
    with tiny_lm.bridge.hooks(fwd_hooks=[("blocks.0.hook_resid_post", lambda x, hook: None)]):
        model, facts = analysis_model(tiny_lm, acfg, names)  # the caller's hooks only run in the bridge
    assert model is tiny_lm.bridge and facts["why_bridge"].startswith("hooks are attached to the bridge")
    assert isinstance(tiny_lm.plain, Forward) and isinstance(model, Forward)  # what the batch loop runs
    model, facts = analysis_model(tiny_lm, acfg, ["blocks.0.attn.hook_pattern"])
    assert model is tiny_lm.bridge and "needs the bridge" in facts["why_bridge"]
    _, facts = analysis_model(tiny_lm, acfg, names[:1], n_pairs=5000)  # a large CPU run compiles
    assert facts["compiled"] is True and tiny_lm.plain.compiled
    _, facts = analysis_model(tiny_lm, acfg, names[:1], n_pairs=4999)
    assert facts["compiled"] is False and not tiny_lm.plain.compiled
    hf = make_cfg("analysis.backend=hf").analysis
    with pytest.raises(ValueError, match="analysis.backend=hf is not possible here: hook blocks.0.attn.hook_pattern"):
        analysis_model(tiny_lm, hf, ["blocks.0.attn.hook_pattern"])
    with pytest.raises(ValueError, match="analysis.backend='fast' is not one of"):
        analysis_model(tiny_lm, make_cfg("analysis.backend=fast").analysis, names)
    # the fused MLP is the compiled tree's: an uncompiled tree says it was not used
    _, facts = analysis_model(tiny_lm, make_cfg("analysis.mlp=fused").analysis, names[:1], n_pairs=4)
    assert facts["mlp_skipped"].startswith("analysis.mlp=fused is the compiled tree's MLP") and not facts["compiled"]
    with pytest.raises(ValueError, match="analysis.compile='sometimes' is not one of auto, true, false"):
        analysis_model(tiny_lm, make_cfg("analysis.compile=sometimes").analysis, names)
    with pytest.raises(ValueError, match="attention kernel 'fast' is not one of"):
        analysis_model(tiny_lm, make_cfg("analysis.attn=fast").analysis, names)
    # short on the CPU runs under Triton's interpreter (how the tests run without a GPU), else eager is said
    expect = "short" if kernels.available(tiny_lm.device) else "eager"
    assert analysis_model(tiny_lm, make_cfg("analysis.attn=short").analysis, names[:1])[1]["attention"] == expect
    tiny_lm.plain.set_attention("eager")


def test_attention_auto_is_the_short_kernel_on_cuda_and_eager_elsewhere(monkeypatch):
    assert attention.resolve("auto", "cpu") == "eager"  # also under the interpreter: it is for tests
    assert attention.resolve("auto", "cuda") == ("short" if kernels.have_triton() else "eager")
    assert attention.resolve("sdpa", "cuda") == "sdpa" and attention.resolve("eager", "cuda") == "eager"
    monkeypatch.setattr(kernels, "available", lambda device: False)  # a CPU without Triton's interpreter
    assert attention.resolve("short", "cpu") == "eager"  # asked for where it cannot run: said, not pretended


def test_short_attention_leaves_what_it_does_not_cover_to_eager_attention():
    from interp.kernels.attention import kernel_applies

    q, k = torch.zeros(2, 8, 9, 128), torch.zeros(2, 2, 9, 128)
    mask = torch.zeros(2, 1, 9, 9)
    applies = kernels.available("cpu")
    assert kernel_applies(q, k, k, mask, False) == applies and kernel_applies(q, k, k, None, False) == applies
    assert not kernel_applies(q, k, k, mask, training=True)
    assert not kernel_applies(q.requires_grad_(), k, k, mask, False)  # the kernel has no backward
    q = q.detach()
    assert not kernel_applies(q, k, k, torch.zeros(2, 8, 9, 9), False)  # a mask per head
    assert not kernel_applies(q, k, k, torch.zeros(2, 1, 9, 9, dtype=torch.bool), False)
    assert not kernel_applies(q, k.half(), k, mask, False)  # q, k and v in one dtype
    assert not kernel_applies(q[..., :96], k[..., :96], k[..., :96], mask, False)  # head size 96
    long_q, long_k = torch.zeros(2, 8, 33, 128), torch.zeros(2, 2, 33, 128)  # 4 heads x 64 rows x 128: too big
    assert not kernel_applies(long_q, long_k, long_k, torch.zeros(2, 1, 33, 33), False)


def test_processed_weights_have_no_plain_tree():
    from interp.model import load_model

    lm = load_model(make_cfg("model=tiny", "model.process_weights=true", *tokenizer_overrides()).model, "cpu", "float32")
    assert lm.plain is None and "process_weights" in lm.plain_reason
    model, facts = analysis_model(lm, make_cfg().analysis, ["blocks.0.hook_resid_post"])
    assert model is lm.bridge and "process_weights" in facts["why_bridge"]


def test_a_run_on_the_plain_tree_with_eager_attention_equals_the_bridge_run(tiny_lm, pairs_file, tmp_path):
    common = ["model=tiny", "device=cpu", "dtype=float32", "pairs=file", f"pairs.path={pairs_file}", "hooks=all",
              "batch_size=3", "analysis.figures=false", "analysis.n_saved_pairs=0"]
    outs = {be: run(make_cfg(*common, f"analysis.backend={be}", "analysis.attn=eager"), tmp_path / be, lm=tiny_lm)
            for be in ("bridge", "hf")}
    outs["sdpa"] = run(make_cfg(*common, "analysis.backend=hf", "analysis.attn=sdpa"), tmp_path / "sdpa", lm=tiny_lm)
    from interp import rundir as R

    assert R.read_manifest(outs["hf"])["forward"] == {"backend": "hf", "layout": "llama", "attention": "eager", "compiled": False}
    assert R.read_manifest(outs["bridge"])["forward"]["backend"] == "bridge"
    for table in ("stability.parquet", "pairs.parquet"):
        ref = pd.read_parquet(outs["bridge"] / table)
        pd.testing.assert_frame_equal(pd.read_parquet(outs["hf"] / table), ref)  # bit for bit
        sd = pd.read_parquet(outs["sdpa"] / table)  # another attention kernel: rounding, and ranks of near-ties
        num = ref.select_dtypes("float").columns
        pd.testing.assert_frame_equal(sd[num], ref[num], rtol=1e-3, atol=1e-5)


def test_a_compiled_plain_tree_computes_the_same_activations(tiny_lm, pairs_file):
    b = _batch(tiny_lm, pairs_file)
    names = [n for n in _all_names(tiny_lm) if not n.endswith(("attn.hook_z", "mlp.hook_post"))]
    ref, ref_logits = _grab(PlainModel(twin(tiny_lm.plain.original_model), "sdpa"), b, names)
    compiled = PlainModel(twin(tiny_lm.plain.original_model), "sdpa")
    compiled.compile()
    for bb in (b, b.rows(0, 5), b):  # two shapes (the second compiles a dynamic graph), then reuse
        got, logits = _grab(compiled, bb, names)
    m = b.mask
    for n in names:  # fused kernels round differently: fp32 rounding apart
        torch.testing.assert_close(got[n][m], ref[n][m], rtol=1e-4, atol=1e-4, msg=n)
    torch.testing.assert_close(logits[m], ref_logits[m], rtol=1e-4, atol=1e-4)


_INTERPRETER = pytest.mark.skipif(not kernels.available("cpu"), reason="needs Triton's interpreter (TRITON_INTERPRET=1)")


@_INTERPRETER
def test_a_tree_with_short_attention_computes_eager_attentions_activations(tiny_lm, pairs_file):
    """``short``: the Triton kernel (here through Triton's interpreter), uncompiled and compiled."""
    b = _batch(tiny_lm, pairs_file)
    names = [n for n in _all_names(tiny_lm) if not n.endswith(("attn.hook_z", "mlp.hook_post"))]
    ref, ref_logits = _grab(PlainModel(twin(tiny_lm.plain.original_model), "eager"), b, names)
    short = PlainModel(twin(tiny_lm.plain.original_model), "short")
    assert short.attn == "short"
    calls = []
    with _spy_kernel(calls):
        for compiled in (False, True):
            if compiled:
                short.compile()
            for bb in (b, b.rows(0, 5), b):  # two shapes (the second a dynamic graph when compiled), then reuse
                got, logits = _grab(short, bb, names)
            assert short.compile_error is None
            m = b.mask
            for n in names:  # float32 summation order apart
                torch.testing.assert_close(got[n][m], ref[n][m], rtol=1e-4, atol=1e-4, msg=n)
            torch.testing.assert_close(logits[m], ref_logits[m], rtol=1e-4, atol=1e-4)
    assert len(calls) >= 2 * 3 * tiny_lm.info["n_layers"]  # the kernel ran: every layer, every pass


@contextlib.contextmanager
def _spy_kernel(calls: list):
    """Count launches of the attention kernel (the custom operation's body runs them)."""
    import interp.kernels.short_attention as att

    kernel = att._short_attention_kernel

    class Spy:
        def __getitem__(self, grid):
            calls.append(grid)
            return kernel[grid]
    att._short_attention_kernel = Spy()
    try:
        yield
    finally:
        att._short_attention_kernel = kernel


_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("device, dtype, tol", [  # the CPU: Triton's interpreter, which mishandles bfloat16
    pytest.param("cpu", torch.float32, 1e-5, marks=_INTERPRETER),
    pytest.param("cpu", torch.float16, 2e-3, marks=_INTERPRETER),
    pytest.param("cuda", torch.float32, 1e-5, marks=[_CUDA, pytest.mark.gpu]),
    pytest.param("cuda", torch.bfloat16, 2e-2, marks=[_CUDA, pytest.mark.gpu])])
def test_short_attention_is_eager_attention_with_grouped_heads_and_padding(device, dtype, tol):
    from transformers.models.llama.modeling_llama import eager_attention_forward

    from benchmarks.attention import _Module, causal_mask
    from interp.kernels.attention import SHORT_MAX_KEYS, short_attention_forward

    g = torch.Generator().manual_seed(0)
    mod = _Module(groups=3).to(device)
    for t, masked in ((1, True), (7, True), (9, False), (17, True), (SHORT_MAX_KEYS + 3, True)):
        q, k, v = (torch.randn(8, h, t, 16, generator=g).to(device, dtype) for h in (6, 2, 2))
        _, mask = causal_mask(8, t, min(2, t - 1), dtype, device)
        mask = mask if masked else None  # None: nothing masked (as Hugging Face passes it)
        want = eager_attention_forward(mod, q.float(), k.float(), v.float(), None if mask is None else mask.float(),
                                       scaling=0.25)[0]
        got, weights = short_attention_forward(mod, q, k, v, mask, scaling=0.25)
        assert got.shape == want.shape == (8, t, 6, 16) and got.dtype == dtype and got.is_contiguous()
        torch.testing.assert_close(got.float(), want, rtol=tol, atol=tol, msg=f"{t} tokens")
        assert got.device == q.device
        if t > SHORT_MAX_KEYS:  # long sentences: eager attention itself (it returns its weights)
            assert weights is not None and torch.equal(got, eager_attention_forward(mod, q, k, v, mask, scaling=0.25)[0])
        else:
            assert weights is None


def test_a_compilation_that_fails_falls_back_to_eager_modules_without_losing_a_pair(tiny_lm, pairs_file, tmp_path):
    def broken_backend(gm, example_inputs):
        raise RuntimeError("no compiler here")

    b = _batch(tiny_lm, pairs_file)
    ref, ref_logits = _grab(PlainModel(twin(tiny_lm.plain.original_model), "sdpa"), b, ["blocks.1.hook_resid_post"])
    plain = PlainModel(twin(tiny_lm.plain.original_model), "sdpa")
    plain.compile(backend=broken_backend)
    got, logits = _grab(plain, b, ["blocks.1.hook_resid_post"])
    assert not plain.compiled and "no compiler here" in plain.compile_error
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=0)
    assert all("forward" not in m.__dict__ for m in plain.original_model.modules())  # own forwards back

    # in a run: every pair analysed, the manifest says what happened
    import interp.backends.hf as P

    real = P.PlainModel.compile
    P.PlainModel.compile = lambda self, **kw: real(self, backend=broken_backend)
    try:
        out = run(make_cfg("model=tiny", "device=cpu", "dtype=float32", "pairs=file", f"pairs.path={pairs_file}",
                           "analysis.figures=false", "analysis.n_saved_pairs=0", "analysis.compile=true"),
                  tmp_path / "run", lm=tiny_lm)
    finally:
        P.PlainModel.compile = real
    from interp import rundir as R

    m = R.read_manifest(out)
    assert m["counts"]["failed_in_forward"] == 0 and m["counts"]["kept"] == 8
    assert m["forward"]["compiled"] is False and "no compiler here" in m["forward"]["compile_error"]
    model, facts = analysis_model(tiny_lm, make_cfg("analysis.compile=false").analysis, ["blocks.0.hook_resid_post"])
    assert tiny_lm.plain.compile_error is None and "compile_error" not in facts  # a later run starts clean


def test_hooks_inside_compiled_code_are_refused_and_runs_that_need_them_are_not_compiled(tiny_lm, pairs_file):
    b = _batch(tiny_lm, pairs_file)
    compiled = PlainModel(twin(tiny_lm.plain.original_model), "eager")
    compiled.compile()
    _grab(compiled, b, ["blocks.0.hook_resid_post"])  # traced without inner hooks
    for name in ("blocks.1.attn.hook_z", "blocks.1.mlp.hook_post"):
        with pytest.raises(UnsupportedHook, match="inside the compiled"):
            _grab(compiled, b, [name])
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in compiled.original_model.modules())
    acfg = make_cfg("analysis.compile=true").analysis
    model, facts = analysis_model(tiny_lm, acfg, ["blocks.1.attn.hook_z", "blocks.0.hook_resid_post"])
    assert facts["compiled"] is False and "blocks.1.attn.hook_z" in facts["compile_skipped"]
    got, _ = _grab(model, b, ["blocks.1.attn.hook_z"])  # and the hook fires
    assert got["blocks.1.attn.hook_z"].shape[-2:] == (4, 16)
    with pytest.raises(UnsupportedHook, match="has 2 layers"):
        _grab(model, b, ["blocks.7.hook_resid_post"])
    with pytest.raises(ValueError, match="return_type"):
        model(b.tokens, attention_mask=b.mask.long(), return_type="loss")


def test_hooks_a_caller_put_on_the_rewired_model_send_the_run_to_the_bridge(tiny_lm):
    acfg = make_cfg().analysis
    h = tiny_lm.hf_model.model.layers[0].register_forward_hook(lambda m, a, o: None)
    try:
        model, facts = analysis_model(tiny_lm, acfg, ["blocks.0.hook_resid_post"])
        assert model is tiny_lm.bridge and "hooks are attached to the bridge" in facts["why_bridge"]
        model, facts = analysis_model(tiny_lm, make_cfg("analysis.backend=hf").analysis, ["blocks.0.hook_resid_post"])
        assert model is tiny_lm.plain and "hooks are attached" in facts["ignored"]
    finally:
        h.remove()
    # hooks TransformerLens installs itself (run_with_cache wires some for good) do not count
    tiny_lm.bridge.run_with_cache(torch.tensor([[1, 2, 3]]))
    assert analysis_model(tiny_lm, acfg, ["blocks.0.hook_resid_post"])[0] is tiny_lm.plain


def test_the_first_input_as_a_keyword_is_hooked_too(tiny_lm):
    plain = PlainModel(twin(tiny_lm.plain.original_model), "eager")
    layer = plain.layers[0]
    x = torch.randn(1, 3, tiny_lm.info["d_model"])
    seen = {}
    with plain.hooks([("blocks.0.hook_resid_pre", lambda a, hook: seen.setdefault("x", a) * 0)]):
        pos = torch.zeros(1, 3, dtype=torch.long)
        emb = plain.original_model.model.rotary_emb(x, pos)
        out = layer(hidden_states=x, position_embeddings=emb, attention_mask=None)
    assert torch.equal(seen["x"], x)
    ref = layer(hidden_states=torch.zeros_like(x), position_embeddings=emb, attention_mask=None)
    torch.testing.assert_close(out[0] if isinstance(out, tuple) else out, ref[0] if isinstance(ref, tuple) else ref)


def test_the_statistics_on_the_cpu_never_import_triton():
    """Importing interp (the run, the backends, patching) and taking the statistics of a batch on the
    CPU (no fused statistics) leaves Triton unloaded: only the kernels import it. (A Hugging Face
    model class loads it through ``torch._dynamo``; that is PyTorch's doing, not ours.)"""
    import os
    import subprocess
    import sys

    script = """
import sys, torch
import interp, interp.stats, interp.backends, interp.causal, interp.run
from interp import kernels
from interp.hooks import resolve
from interp.kernels import attention
from interp.stats import DiffStats
from tests.test_fused import activations, consume, make_batch
assert attention.resolve("auto", "cpu") == "eager" and not kernels.use_fused("auto", "cpu")
sites = resolve(["resid_post", "mlp_out"], 2)
stats = DiffStats(sites, ["g0", "g1", "g2"], n_controls=1, fused=False)
batch = make_batch(5, 7, 1, False, "cpu")
consume(stats, batch, {s.name: activations(batch, 16, seed=i) for i, s in enumerate(sites)})
assert len(stats.table())
print("triton" in sys.modules)
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"


@_INTERPRETER
def test_a_compiled_tree_with_short_attention_compiles_once_for_every_sentence_length(tiny_lm):
    """Lengths are dynamic: a new padded length costs no recompilation, so no batch falls back to
    uncompiled modules (``torch._dynamo``'s recompilation limit is 8 per function). The kernel's
    own size limits are range guards: one more compilation where sentences pass ``SHORT_MAX_KEYS``."""
    check_short_attention_compiles_once(tiny_lm)


def check_short_attention_compiles_once(lm):
    """The test above on ``lm``'s device (``tests/test_gpu.py`` runs it on CUDA)."""
    import torch._dynamo

    from interp.kernels.attention import SHORT_MAX_KEYS

    short = PlainModel(twin(lm.plain.original_model), "short")
    eager = PlainModel(twin(lm.plain.original_model), "eager")
    short.compile()
    per_pass = 4 * lm.info["n_layers"] + 1  # norms, attention and MLP per layer, the final norm
    lengths = [9, 10, *range(11, 12 + torch._dynamo.config.recompile_limit), 25, 40, SHORT_MAX_KEYS + 3, 12]
    gen = torch.Generator().manual_seed(0)
    graphs = {}
    for T in lengths:
        tokens = torch.randint(0, 1000, (3, T), generator=gen).to(lm.device)
        mask = torch.ones(3, T, dtype=torch.long, device=lm.device)
        mask[0, -2:] = 0  # a padded row
        before = short.counts.graph_calls
        with torch.inference_mode():
            got, ref = short(tokens, mask), eager(tokens, mask)
        assert short.counts.graph_calls - before == per_pass, f"length {T} ran modules uncompiled"
        m = mask.bool()
        tol = 1e-4 if got.dtype == torch.float32 else 5e-2
        torch.testing.assert_close(got[m].float(), ref[m].float(), rtol=tol, atol=tol)
        graphs[T] = short.counts.graphs
    assert short.compile_error is None
    assert graphs[lengths[-4]] == graphs[10]  # every length up to 40 after the first two: no recompilation
    assert graphs[lengths[-1]] <= graphs[10] + 2  # past the kernel's key limit: eager attention, compiled once


@_INTERPRETER
def test_the_gated_up_kernel_equals_silu_gate_times_up():
    """``kernels.mlp.gated_up`` in float16 (under the interpreter; bf16 descriptors read wrongly there,
    tests/test_gpu.py covers bf16) against float32 arithmetic rounded once: rows, columns and a
    contraction that are no multiples of its tiles; operands it cannot take are refused with the
    reason (float32, whose tiles would not fit a GPU's shared memory; rows or an output not 16-byte
    aligned; gradients)."""
    from interp.kernels.mlp import gated_up

    dtype = torch.float16
    g = torch.Generator().manual_seed(0)
    x = torch.randn(150, 96, generator=g).to(dtype)
    wg, wu = ((torch.randn(200, 96, generator=g) / 10).to(dtype) for _ in range(2))
    ref = (torch.nn.functional.silu(x.float() @ wg.float().T) * (x.float() @ wu.float().T)).to(dtype)
    got = gated_up(x, wg, wu)
    assert got.shape == (150, 200) and got.dtype == dtype
    torch.testing.assert_close(got.float(), ref.float(), rtol=2e-3, atol=2e-3)
    assert gated_up(x[:0], wg, wu).shape == (0, 200)
    with pytest.raises(ValueError, match="dtypes"):
        gated_up(x.float(), wg.float(), wu.float())
    with pytest.raises(ValueError, match="not laid out for TMA"):
        gated_up(torch.randn(150, 97, generator=g).to(dtype)[:, :96], wg, wu)  # rows of 97 elements
    with pytest.raises(ValueError, match="output's rows of 36 elements"):
        gated_up(x, wg[:36], wu[:36])
    with pytest.raises(ValueError, match="shapes"):
        gated_up(x, wg[:, :64], wu)
    with pytest.raises(ValueError, match="gradients"):
        gated_up(x.requires_grad_(), wg, wu)


@_INTERPRETER
def test_a_compiled_tree_with_the_fused_mlp_computes_the_same_activations(tiny_lm, pairs_file, monkeypatch):
    """``set_mlp("fused")``: each layer's MLP runs the gated-up kernel and the down product, the
    activations and logits equal the compiled tree's to float32 rounding; a pass calls the compiled
    graphs of every other module (``n_compiled``); ``set_mlp("compiled")`` returns to eager modules."""
    from interp.kernels import mlp as kmlp

    import copy

    b = _batch(tiny_lm, pairs_file)
    names = [n for n in _all_names(tiny_lm) if not n.endswith(("attn.hook_z", "mlp.hook_post"))]
    model16 = copy.deepcopy(tiny_lm.plain.original_model).half()  # the kernel takes fp16 and bf16
    assert "float32; the kernel takes" in PlainModel(twin(tiny_lm.plain.original_model), "eager").why_no_fused_mlp()
    ref, ref_logits = _grab(PlainModel(twin(model16), "eager"), b, names)
    fused = PlainModel(twin(model16), "eager")
    assert fused.why_no_fused_mlp() is None
    fused.set_mlp("fused")
    fused.compile(backend="eager")
    calls = []
    real = kmlp._launch  # the kernel's launch, after FusedMLP's check
    monkeypatch.setattr(kmlp, "_launch", lambda *a: calls.append(a[0].shape) or real(*a))
    before = fused.counts.graph_calls
    got, logits = _grab(fused, b, names)
    L = tiny_lm.info["n_layers"]
    assert len(calls) == L and calls[0] == (b.tokens.numel(), tiny_lm.info["d_model"])
    assert fused.n_compiled == 3 * L + 1 and fused.counts.graph_calls - before >= fused.n_compiled
    m = b.mask
    # fp16: the kernel rounds silu(g) * u once, the eager MLP three times; both are measured against the
    # float32 model, and the fused tree may be off by no more than the eager fp16 tree (twice, plus a little)
    exact, exact_logits = _grab(PlainModel(twin(tiny_lm.plain.original_model), "eager"), b, names)
    for n, (x, y) in [*((n, (got[n], ref[n])) for n in names), ("logits", (logits, ref_logits))]:
        want = (exact_logits if n == "logits" else exact[n])[m]
        err_fused, err_eager = ((v[m].float() - want).abs().max().item() for v in (x, y))
        assert err_fused <= 2 * err_eager + 1e-3, (n, err_fused, err_eager)
    with pytest.raises(UnsupportedHook, match="inside the compiled"):
        _grab(fused, b, ["blocks.0.mlp.hook_post"])
    mlp = fused.layers[0].mlp
    x = torch.randn(2, 3, tiny_lm.info["d_model"], dtype=torch.float32)  # not the weights' dtype: the fallback
    assert kmlp.FusedMLP(mlp, lambda h: ("fallback", h.shape))(x) == ("fallback", x.shape)
    fused.set_mlp("compiled")
    assert not fused.compiled and fused.mlp == "compiled"
    assert "forward" not in vars(fused.layers[0].mlp)  # its own forward again
    with pytest.raises(ValueError, match="MLP kernel"):
        fused.set_mlp("triton")


def test_the_fused_mlp_is_refused_with_the_reason_where_it_cannot_run(tiny_lm):
    """Without Triton on a CUDA device (or the interpreter) ``analysis.mlp=fused`` says why; an MLP
    with another activation is refused too; and the setting is checked with the config."""
    from interp.config import ConfigError
    from interp.kernels import available
    from tests.conftest import make_cfg as mk

    import copy

    plain = PlainModel(twin(tiny_lm.plain.original_model), "eager")
    if not available("cpu"):
        with pytest.raises(ConfigError, match="analysis.mlp=fused: the kernel needs Triton on a CUDA device"):
            plain.set_mlp("fused")
    else:
        with pytest.raises(ConfigError, match="the model is torch.float32; the kernel takes"):
            plain.set_mlp("fused")
        half = PlainModel(twin(copy.deepcopy(tiny_lm.plain.original_model).half()), "eager")
        half.original_model.config.hidden_act = "gelu"  # the twin's own config
        assert "not silu" in half.why_no_fused_mlp()
        with pytest.raises(ConfigError, match="activation is 'gelu'"):
            half.set_mlp("fused")
    assert plain.mlp == "compiled"
    with pytest.raises(ConfigError, match="analysis.mlp"):
        from interp.config import validate

        validate(mk("analysis.mlp=triton"))
