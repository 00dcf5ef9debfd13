"""What an intervention on a one-token minimal pair is measured by, per pair.

- ``margin``: log P(a) - log P(b) over the whole sentences (``interp.engine.sentence_logprobs``).
  Its edited-token term depends on the prefix only, so no intervention at or after the edit moves
  it; it is kept as an option.
- ``post_edit_margin``: the same sum over the tokens after the edit only (``interp.causal.atp``):
  what an intervention at or after the edit can move.
- ``downstream_divergence``: how far a's and b's next-token distributions are apart after the edit,
  the mean over the predictions made at positions edit .. last - 1 (those of the tokens after the
  edit) of KL(p_a || p_b) in nats. 0 = the rest of the sentence is predicted exactly alike; NaN
  when the edit is the last token (nothing follows it).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from ..engine import Batch, Unembedding
from .atp import after_slots, one_token

METRICS = ("margin", "post_edit_margin", "downstream_divergence")


def _kl_after(la: Tensor, lb: Tensor, batch: Batch) -> Float[Tensor, "B"]:
    """Mean over the predictions at edit .. last - 1 of KL(p_a || p_b), from log-softmaxes [B, T-1, V]."""
    slots = after_slots(batch.edit, batch.last, la.shape[1])  # [B, T-1]
    kl = (la.exp() * (la - lb)).sum(-1).double()
    n = slots.sum(-1)
    out = (kl * slots).sum(-1) / n.clamp(min=1)
    return torch.where(n > 0, out, torch.full_like(out, float("nan")))


def downstream_divergence(logits: Float[Tensor, "VB T vocab"], batch: Batch) -> Float[Tensor, "B"]:
    """Mean KL(p_a || p_b) of the next-token distributions at positions edit .. last - 1 (float64)."""
    one_token(batch)
    B = batch.size
    return _kl_after(logits[:B, :-1].float().log_softmax(-1), logits[B:2 * B, :-1].float().log_softmax(-1), batch)


def pair_metrics(logits: Float[Tensor, "VB T vocab"], batch: Batch) -> dict[str, np.ndarray]:
    """``margin``, ``post_edit_margin`` and ``downstream_divergence`` of every pair of ``batch``
    from the logits of its a rows then b rows (float64 numpy arrays of length B); one log-softmax
    serves all three (``interp.engine.sentence_logprobs``, ``interp.causal.atp.post_edit_logprobs``
    and ``downstream_divergence`` give the same numbers, tested)."""
    one_token(batch)
    B = batch.size
    tokens, mask = batch.tokens[:2 * B], batch.mask[:2 * B]
    lsm = logits[:2 * B, :-1].float().log_softmax(-1)  # [2B, T-1, V]
    lp = lsm.gather(-1, tokens[:, 1:, None])[..., 0].double()  # [2B, T-1]: log p(token_t+1)
    whole = (lp * mask[:, 1:]).sum(-1)
    post = (lp * after_slots(batch.edit.repeat(2), batch.last.repeat(2), lp.shape[1])).sum(-1)
    return {"margin": (whole[:B] - whole[B:]).cpu().numpy(), "post_edit_margin": (post[:B] - post[B:]).cpu().numpy(),
            "downstream_divergence": _kl_after(lsm[:B], lsm[B:], batch).cpu().numpy()}


def metric_slots(batch: Batch, after_only: bool = False) -> Bool[Tensor, "2B T-1"]:
    """The predictions (slot ``t`` predicts token ``t + 1``) of the a and b rows that ``pair_metrics``
    reads: every real token's, or with ``after_only`` those of the tokens after the edit (edit ..
    last - 1: all that ``post_edit_margin`` and ``downstream_divergence`` read)."""
    one_token(batch)
    B, T = batch.size, batch.seq_len
    if after_only:
        return after_slots(batch.edit.repeat(2), batch.last.repeat(2), T - 1)
    return batch.mask[:2 * B, 1:]


def stacked_metrics(model, batch: Batch, copies: int = 1, fwd_hooks: Sequence = (),
                    after_only: bool = False) -> dict[str, np.ndarray]:
    """``pair_metrics`` of each of ``copies`` stacked copies of the batch's a and b rows (copy ``c`` =
    rows ``c * 2B .. (c + 1) * 2B - 1``), run in one forward pass with ``fwd_hooks``: ``{metric:
    [copies, B]}`` (float64). Only the predictions of ``metric_slots`` are unembedded, from the final
    norm's output (``ln_final.hook_out``), one copy at a time: no ``[rows, T, vocab]`` logits are
    made. ``after_only``: only the slots after the edit, so ``margin`` is left out (its prefix part
    comes from elsewhere, ``interp.causal.ablation.run_conditions``). The same numbers as
    ``pair_metrics`` of the full logits up to float rounding (tested)."""
    one_token(batch)
    B, B2, T = batch.size, 2 * batch.size, batch.seq_len
    slots = metric_slots(batch, after_only)  # [2B, T-1]; a row's slots are its b row's
    r, t = slots.nonzero(as_tuple=True)  # row-major: every a row's slots, then the b rows' in the same order
    S = int(r.shape[0])
    flat = (torch.arange(copies, device=r.device)[:, None] * (B2 * T) + (r * T + t)[None, :]).flatten()
    kept: dict[str, Tensor] = {}

    def keep_final(x: Tensor, hook=None) -> None:
        kept["h"] = x.flatten(0, 1).index_select(0, flat)

    tokens, mask = batch.tokens[:B2].repeat(copies, 1), batch.mask[:B2].repeat(copies, 1)
    target = batch.tokens[:B2, 1:][r, t][:, None]  # [S, 1]
    pair = r % B
    after = after_slots(batch.edit[pair], batch.last[pair], T - 1)[torch.arange(S, device=r.device), t]  # [S]
    a_half = S // 2
    n_after = torch.zeros(B, dtype=torch.float64, device=r.device).index_add_(
        0, pair[:a_half], after[:a_half].double())
    sign = torch.where(r < B, 1.0, -1.0).double()
    with torch.inference_mode():
        with model.hooks(fwd_hooks=list(fwd_hooks) + [("ln_final.hook_out", keep_final)]):
            model(tokens, attention_mask=mask.long(), return_type=None, logits_to_keep=1)
        h = kept.pop("h").view(copies, S, -1)
        unembed = Unembedding(model.original_model)
        out = {m: torch.empty((copies, B), dtype=torch.float64, device=r.device) for m in METRICS}
        for c in range(copies):
            lsm = unembed(h[c]).float().log_softmax(-1)  # [S, V]
            lp = lsm.gather(-1, target)[:, 0].double()  # log p(token_t+1)
            out["margin"][c] = torch.zeros(B, dtype=torch.float64, device=r.device).index_add_(0, pair, lp * sign)
            out["post_edit_margin"][c] = torch.zeros(B, dtype=torch.float64, device=r.device).index_add_(
                0, pair, lp * sign * after)
            la, lb = lsm[:a_half], lsm[a_half:]
            kl = (la.exp() * (la - lb)).sum(-1).double() * after[:a_half]
            div = torch.zeros(B, dtype=torch.float64, device=r.device).index_add_(0, pair[:a_half], kl)
            out["downstream_divergence"][c] = torch.where(n_after > 0, div / n_after.clamp(min=1),
                                                          torch.full_like(div, float("nan")))
    res = {m: v.cpu().numpy() for m, v in out.items()}
    if after_only:
        del res["margin"]
    return res
