"""Activation patching's metric from the scored slots (``interp.causal.patching.LogprobDelta`` in
``generic_patch``): the same per-row change of the base sentence's log-prob as
``sentence_logprobs`` of the pass's full logits (the former path), for position, block (``modes``)
and head cells, on the bridge and on the plain tree, with and without the base cache (which lets it
read only the slots from each row's first changed position on)."""

from __future__ import annotations

import pytest
import torch

from interp.causal import patching as P
from interp.engine import sentence_logprobs
from tests.test_patching import GRAMMAR, pair_tokens

pytestmark = pytest.mark.usefixtures("one_thread")

ATOL = 1e-4  # nats; float32 log-softmax of the same hidden states either way (bit-identical on the CPU here)


def stacked(lm, model):
    """Two pairs of one length with their edits, both directions stacked as ``patch_group`` does:
    base tokens, source and base caches at resid_pre and z, the base run's logits, the edits."""
    rows = [pair_tokens(lm, a, b) for a, b, _ in GRAMMAR[:2]]
    ta, tb = torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])
    edit = torch.tensor([r[2] for r in rows])
    names = [P.HOOK_POINTS[p].name(layer) for p in ("resid_pre", "z") for layer in range(P.n_layers(model))]
    la, ca = P.run_with_source_cache(model, ta, names)
    lb, cb = P.run_with_source_cache(model, tb, names)
    base = torch.cat([tb, ta])  # denoising (base b, source a), then noising (base a, source b)
    source_cache = {n: torch.cat([ca[n], cb[n]]) for n in names}
    base_cache = {n: torch.cat([cb[n], ca[n]]) for n in names}
    return base, source_cache, base_cache, torch.cat([lb, la]), edit.repeat(2)


CELLS = {  # name: (hook point, axes, setter or None for the blocks' setter, axis_values)
    "position": ("resid_pre", ("layer", "pos"), P.pos_setter, None),
    "block": ("resid_pre", ("layer", "block"), None, {"block": range(len(P.BLOCKS))}),
    "head_block": ("z", ("layer", "block", "head"), None, {"block": range(len(P.BLOCKS))}),
    "head": ("z", ("layer", "head"), P.head_setter, None),
    "head_pos": ("z", ("layer", "pos", "head"), P.head_pos_setter, None),
}


@pytest.mark.parametrize("backend", ["bridge", "plain"])
@pytest.mark.parametrize("cells", list(CELLS))
def test_the_metric_from_the_scored_slots_equals_the_full_logits(tiny_lm, backend, cells, monkeypatch):
    model = tiny_lm.bridge if backend == "bridge" else tiny_lm.plain
    base, source_cache, base_cache, base_logits, edit = stacked(tiny_lm, model)
    point, axes, setter, axis_values = CELLS[cells]
    if setter is None:
        setter = P.block_setter(P.position_blocks(base.shape[1], edit))
    delta = P.LogprobDelta.from_logits(base_logits, base)
    R = base.shape[0]
    ones = torch.ones_like(base, dtype=torch.bool)

    def old(logits):  # the former metric: sentence_logprobs of the full logits minus the base run's
        return sentence_logprobs(logits, base, ones) - sentence_logprobs(base_logits, base, ones)

    kw = dict(rows_per_pass=24, axis_values=axis_values)
    full = P.generic_patch(model, base, source_cache, old, setter, point, axes, **kw)
    full_skip = P.generic_patch(model, base, source_cache, old, setter, point, axes, base_cache=base_cache,
                                base_value=torch.zeros(R), **kw)
    # the slot path makes no logits: it never goes through run_hooked (return_type="logits")
    monkeypatch.setattr(P, "run_hooked", lambda *a, **k: pytest.fail("full logits made"))
    slots = P.generic_patch(model, base, source_cache, delta, setter, point, axes, **kw)
    slots_skip = P.generic_patch(model, base, source_cache, delta, setter, point, axes, base_cache=base_cache,
                                 base_value=torch.zeros(R), **kw)
    assert slots.shape == full.shape and slots.shape[-1] == R
    for got in (slots, slots_skip):
        torch.testing.assert_close(got, full, atol=ATOL, rtol=0)
    torch.testing.assert_close(slots_skip, full_skip, atol=ATOL, rtol=0)
    assert full.abs().max() > 0.1  # the patches do move the log-probs
    # the metric's own call on full logits is the former metric
    torch.testing.assert_close(delta(base_logits), torch.zeros(R, dtype=torch.float64), atol=1e-9, rtol=0)


@pytest.mark.parametrize("backend", ["bridge", "plain"])
def test_the_metric_from_the_scored_slots_counts_real_tokens_only(tiny_lm, backend):
    """Sentences of different lengths, right-padded, with an attention mask: padding is not scored."""
    model = tiny_lm.bridge if backend == "bridge" else tiny_lm.plain
    a, b, _ = pair_tokens(tiny_lm, "He was at home.", "He was in home.")
    c, d, _ = pair_tokens(tiny_lm, "She ate an apple today.", "She ate a apple today.")
    T = max(len(a), len(c))
    pad = tiny_lm.pad_token_id if tiny_lm.pad_token_id is not None else 0

    def padded(*ts):
        out = torch.full((len(ts), T), pad, dtype=torch.long)
        mask = torch.zeros((len(ts), T), dtype=torch.bool)
        for i, t in enumerate(ts):
            out[i, :len(t)], mask[i, :len(t)] = t, True
        return out, mask

    base, mask = padded(b, d)
    source, _ = padded(a, c)
    names = [P.HOOK_POINTS["resid_pre"].name(layer) for layer in range(P.n_layers(model))]
    _, src_cache = P.run_with_source_cache(model, source, names, attention_mask=mask)
    base_logits, base_cache = P.run_with_source_cache(model, base, names, attention_mask=mask)
    delta = P.LogprobDelta.from_logits(base_logits, base, mask)

    def old(logits):
        return sentence_logprobs(logits, base, mask) - sentence_logprobs(base_logits, base, mask)

    kw = dict(attention_mask=mask, rows_per_pass=16)
    full = P.generic_patch(model, base, src_cache, old, P.pos_setter, "resid_pre", **kw)
    slots = P.generic_patch(model, base, src_cache, delta, P.pos_setter, "resid_pre", base_cache=base_cache,
                            base_value=torch.zeros(2), **kw)
    torch.testing.assert_close(slots, full, atol=ATOL, rtol=0)
    assert full.abs().max() > 0.1
