"""log p(target) of each row of a block of logits in one pass over them (one Triton kernel).

``engine.slot_logprobs`` unembeds the scored predictions a chunk of slots at a time. In PyTorch its
log-softmax reads and writes the vocabulary-sized logits about five times (a float32 copy, the
maximum, the subtraction and exponential in place, the sum): at the 8B shape, 1,500 scored slots
of a batch of 128 pairs and a vocabulary of 128,256, several GB of traffic per batch. This kernel
reads each logit once, in its own dtype, and keeps a running maximum and a running sum of
exponentials per lane (the online log-sum-exp), all in float32.

The numbers are those of the PyTorch path up to float32 rounding (the sum's order differs); NaN in
a row gives NaN, as there. ``slot_logprobs`` uses the kernel on CUDA tensors when Triton is
installed; on the CPU the PyTorch path stays (the tests run the kernel through Triton's interpreter).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _target_logprob_kernel(LOGITS, stride_row, TARGET, OUT, V, BLOCK: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)
    row = LOGITS + r * stride_row
    m = tl.full([BLOCK], -3.4028234663852886e38, tl.float32)  # float32's lowest finite value
    s = tl.zeros([BLOCK], tl.float32)
    for v0 in range(0, V, BLOCK):
        cols = v0 + tl.arange(0, BLOCK)
        x = tl.load(row + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, x)  # finite while no logit is +inf: exp below never sees inf - inf
        s = s * tl.exp(m - m_new) + tl.exp(x - m_new)  # a NaN logit makes s NaN
        m = m_new
    top = tl.max(m, 0)
    total = tl.sum(s * tl.exp(m - top), 0)
    x_t = tl.load(row + tl.load(TARGET + r)).to(tl.float32)
    tl.store(OUT + r, (x_t - top) - tl.log(total))  # as log_softmax: no rounding at the logits' scale


def target_logprobs(logits: Tensor, target: Tensor, block: int = 4096, num_warps: int = 8) -> Tensor:
    """``log_softmax(logits.float(), -1)`` at ``target`` per row (``logits`` [S, V], rows contiguous
    in their last axis; ``target`` [S] token ids), float32 [S]."""
    if logits.dim() != 2 or target.shape != logits.shape[:1]:
        raise ValueError(f"target_logprobs: logits [S, V] and target [S], got {list(logits.shape)} and "
                         f"{list(target.shape)}")
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    S, V = logits.shape
    out = torch.empty(S, dtype=torch.float32, device=logits.device)
    if S:
        _target_logprob_kernel[(S,)](logits, logits.stride(0), target.contiguous(), out, V, BLOCK=block,
                                     num_warps=num_warps)
    return out
