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

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from ..engine import Batch
from .atp import after_slots, one_token


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
