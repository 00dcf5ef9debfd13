"""The batch loop of a run (``interp.run.pipeline.BatchPipeline``): one batch in flight changes nothing, and one
bad pair (a forward pass that raises, a non-finite log-probability) costs that pair only."""

import pandas as pd
import pytest
import torch

import interp.run.pipeline as runner
from interp.engine import make_batches
from interp.hooks import resolve
from interp.run.pipeline import BatchPipeline
from tests.test_engine import _kept
from tests.conftest import make_cfg


def _setup(tiny_lm, pairs_file, drop: str | None = None):
    kept = _kept(tiny_lm, pairs_file)
    groups = sorted({p.category for p, _ in kept})
    keep = [i for i, (p, _) in enumerate(kept) if p.pair_id != drop]
    cfg = make_cfg("model=tiny", "device=cpu", "analysis.controls.n=2")
    from interp import controls as C

    controls = C.build_controls(cfg, tiny_lm.tokenizer, C.input_embedding(tiny_lm), kept, keep).ids
    batches = make_batches([kept[i][1] for i in keep], [groups.index(kept[i][0].category) for i in keep],
                           tiny_lm.bos_token_id, tiny_lm.pad_token_id, 3, controls=controls)
    for b in batches:  # batch positions -> kept indices
        b.index = torch.tensor([keep[j] for j in b.index.tolist()])
    stats = runner.new_stats(cfg, resolve(["resid_post", "mlp_out"], tiny_lm.info["n_layers"]), groups, "cpu")
    return kept, batches, stats


def _run(tiny_lm, kept, batches, stats, pipelined: bool):
    failed: list[dict] = []
    pipe = BatchPipeline(tiny_lm, stats, kept, failed, pipelined=pipelined)
    rows = [r for b in batches for r in pipe.submit(b)] + pipe.flush()
    return pd.DataFrame(rows).sort_values("pair_index").reset_index(drop=True), failed


def _same_stats(a, b, tol=1e-9, rtol=1e-6):
    ta, tb = a.table(), b.table()
    assert len(ta) == len(tb) > 0
    for col in ("n_pairs", "mean_diff", "std_abs_diff", "spread", "ratio_pair_mean", "t_stat"):
        pd.testing.assert_series_equal(ta[col], tb[col], check_dtype=False, atol=tol, rtol=rtol, obj=col)


def test_one_batch_in_flight_gives_the_same_rows_and_statistics(tiny_lm, pairs_file):
    kept, batches, plain = _setup(tiny_lm, pairs_file)
    rows_a, failed_a = _run(tiny_lm, kept, batches, plain, pipelined=False)
    _, _, ahead = _setup(tiny_lm, pairs_file)
    rows_b, failed_b = _run(tiny_lm, kept, batches, ahead, pipelined=True)
    assert not failed_a and not failed_b and len(rows_a) == len(kept)
    pd.testing.assert_frame_equal(rows_a, rows_b)
    _same_stats(plain, ahead, tol=0)


@pytest.mark.parametrize("how", ["raises", "nan"])
@pytest.mark.parametrize("pipelined", [False, True])
def test_a_bad_pair_is_recorded_and_costs_only_itself(tiny_lm, pairs_file, monkeypatch, how, pipelined):
    kept, batches, stats = _setup(tiny_lm, pairs_file)
    bad = kept[4][0]
    bad_ids = torch.tensor([tiny_lm.bos_token_id] + kept[4][1].ids_a)

    def has_bad(tokens):  # rows of the batch that are the bad pair's sentence a
        T = min(tokens.shape[1], len(bad_ids))
        return (tokens[:, :T] == bad_ids[:T]).all(1) & (T == len(bad_ids))

    real_lp = runner.pair_logprobs

    def pair_logprobs(model, batch, hooks=None, **kw):
        if how == "raises" and has_bad(batch.tokens).any():
            raise RuntimeError("CUDA error: an illegal memory access was encountered (simulated)")
        lp = real_lp(model, batch, hooks, **kw)
        return torch.where(has_bad(batch.tokens[:len(lp)]), float("nan"), lp) if how != "raises" else lp
    monkeypatch.setattr(runner, "pair_logprobs", pair_logprobs)

    rows, failed = _run(tiny_lm, kept, batches, stats, pipelined)
    # the failed batch gave its activation buffers back before it was split: no extra set
    assert len(stats._arena.sets) == (2 if pipelined else 1) and all(o is None for o, _ in stats._arena.sets)
    assert [f["pair_id"] for f in failed] == [bad.pair_id]
    assert failed[0]["reason"] == "forward_failed"
    assert set(rows["pair_id"]) == {p.pair_id for p, _ in kept} - {bad.pair_id}

    monkeypatch.setattr(runner, "pair_logprobs", real_lp)
    kept2, batches2, without = _setup(tiny_lm, pairs_file, drop=bad.pair_id)
    rows2, _ = _run(tiny_lm, kept2, batches2, without, pipelined=False)
    pd.testing.assert_series_equal(rows["margin"], rows2["margin"], atol=1e-5, rtol=1e-5)
    _same_stats(stats, without, tol=1e-5, rtol=1e-4)  # other batches, other padding: float noise only


@pytest.mark.parametrize("pipelined", [False, True])
def test_the_cpu_arena_changes_no_statistic_and_never_overwrites_an_unconsumed_batch(tiny_lm, pairs_file, pipelined):
    """On the CPU the hooks copy activations into buffers reused from batch to batch; with one
    batch in flight two captures are alive at once and must not share buffers."""
    kept, batches, arena = _setup(tiny_lm, pairs_file)
    _, _, refs = _setup(tiny_lm, pairs_file)
    assert arena.arena and len(batches) >= 3
    refs.arena = False  # the hooks keep references to the model's own tensors
    rows_a, _ = _run(tiny_lm, kept, batches, arena, pipelined)
    rows_r, _ = _run(tiny_lm, kept, batches, refs, pipelined)
    pd.testing.assert_frame_equal(rows_a, rows_r)
    _same_stats(arena, refs, tol=0)
    assert len(arena._arena.sets) == (2 if pipelined else 1) and not refs._arena.sets
    assert all(owner is None for owner, _ in arena._arena.sets)  # every capture consumed and released


def test_a_capture_that_is_never_consumed_gives_its_buffers_back(tiny_lm, pairs_file):
    import gc

    from interp.engine import pair_logprobs

    kept, batches, stats = _setup(tiny_lm, pairs_file)
    hooks, captured = stats.capture(batches[0])
    pair_logprobs(tiny_lm.plain, batches[0], hooks)
    bufs = stats._arena.sets[0][1]
    act = captured[1]["resid_post"][0]
    assert any(act.data_ptr() == b.data_ptr() for b in bufs.values())  # a view of an arena buffer
    del hooks, captured, act  # a failed batch: dropped without consume()
    gc.collect()
    hooks, captured = stats.capture(batches[1])
    assert len(stats._arena.sets) == 1  # the dropped capture's set is claimed again
    pair_logprobs(tiny_lm.plain, batches[1], hooks)
    stats.consume(captured)
    assert stats._arena.sets[0][0] is None


@pytest.mark.parametrize("mode", ["inference", "no_grad", "grad"])
def test_arena_buffers_work_whatever_mode_the_forward_pass_runs_in(tiny_lm, pairs_file, mode):
    """A buffer made during an inference-mode pass is written again in a plain no_grad pass and the
    reverse; the kept activations never carry autograd history."""
    kept, batches, stats = _setup(tiny_lm, pairs_file)
    ctx = {"inference": torch.inference_mode, "no_grad": torch.no_grad, "grad": torch.enable_grad}
    for first, then in ((mode, "no_grad"), ("inference", mode)):
        for m in (first, then):
            hooks, captured = stats.capture(batches[0])
            with ctx[m](), tiny_lm.plain.hooks(hooks):
                tiny_lm.plain(batches[0].tokens, attention_mask=batches[0].mask.long(), return_type=None)
            act = captured[1]["resid_post"][0]
            assert not act.requires_grad and not act.is_inference() and act.grad_fn is None
            stats.consume(captured)


@pytest.mark.parametrize("fused", [False, True])
def test_the_log_probabilities_follow_analysis_fused(tiny_lm, pairs_file, monkeypatch, fused):
    """``analysis.fused`` (the statistics' ``fused``) also picks the log-probabilities' path: the
    Triton log-softmax at the targets, or PyTorch's. The pair rows agree to float32 rounding."""
    from interp import kernels

    if fused and not kernels.available("cpu"):
        pytest.skip("the kernel runs on the CPU only under Triton's interpreter")
    kept, batches, stats = _setup(tiny_lm, pairs_file)
    stats.fused = fused
    seen = []
    real_lp = runner.pair_logprobs
    monkeypatch.setattr(runner, "pair_logprobs", lambda *a, **kw: seen.append(kw.get("fused")) or real_lp(*a, **kw))
    calls = []
    if kernels.have_triton():
        from interp.kernels import logprobs as klp

        real_k = klp.target_logprobs
        monkeypatch.setattr(klp, "target_logprobs", lambda *a, **kw: calls.append(1) or real_k(*a, **kw))
    rows, failed = _run(tiny_lm, kept, batches, stats, pipelined=False)
    assert not failed and seen == [fused] * len(batches)
    assert (len(calls) >= len(batches)) if fused else not calls
    if fused:
        _, _, plain = _setup(tiny_lm, pairs_file)
        plain.fused = False
        monkeypatch.setattr(runner, "pair_logprobs", real_lp)
        ref, _ = _run(tiny_lm, kept, batches, plain, pipelined=False)
        for col in ("logprob_a", "logprob_b", "margin"):
            pd.testing.assert_series_equal(rows[col], ref[col], atol=1e-5, rtol=1e-6)
