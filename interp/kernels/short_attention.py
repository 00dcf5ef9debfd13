"""The short-sentence attention kernel: one Triton program per (sentence, key-value head).

Imported by ``interp.kernels.attention`` only when ``short`` attention is registered or runs (this
module imports Triton). Importing it registers the custom operation
``torch.ops.interp.short_attention`` (opaque to ``torch.compile``) and its shape function; the
reasoning behind the kernel and its numerics are in ``interp.kernels.attention``'s docstring.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .attention import _pow2, _row_blocks


@triton.jit
def _short_attention_kernel(Q, sq_b, sq_h, sq_t, K, sk_b, sk_h, sk_t, V, sv_b, sv_h, sv_t,
                            MASK, sm_b, sm_t, sm_s, O, so_b, so_t, so_h, T, S, G, scale,
                            HAS_MASK: tl.constexpr, BT: tl.constexpr, BG: tl.constexpr,
                            BS: tl.constexpr, D: tl.constexpr, IEEE: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    hk = tl.program_id(1)
    m = tl.arange(0, BG * BT)            # query rows of the block: (group member, position)
    gi = m // BT
    t = m % BT
    s = tl.arange(0, BS)
    d = tl.arange(0, D)
    h = hk * G + gi                      # the query head
    row_ok = (gi < G) & (t < T)
    q = tl.load(Q + b * sq_b + h[:, None] * sq_h + t[:, None] * sq_t + d[None, :],
                mask=row_ok[:, None], other=0.0)
    k = tl.load(K + b * sk_b + hk * sk_h + s[:, None] * sk_t + d[None, :], mask=(s < S)[:, None], other=0.0)
    if IEEE:
        x = tl.dot(q, tl.trans(k), input_precision="ieee")
    else:
        x = tl.dot(q, tl.trans(k))
    x = x * scale
    if HAS_MASK:
        x += tl.load(MASK + b * sm_b + t[:, None] * sm_t + s[None, :] * sm_s,
                     mask=row_ok[:, None] & (s < S)[None, :], other=0.0).to(tl.float32)
    x = tl.where((s < S)[None, :], x, float("-inf"))
    x = x - tl.max(x, 1)[:, None]
    p = tl.exp(x)
    p = p / tl.sum(p, 1)[:, None]
    v = tl.load(V + b * sv_b + hk * sv_h + s[:, None] * sv_t + d[None, :], mask=(s < S)[:, None], other=0.0)
    if IEEE:
        out = tl.dot(p.to(v.dtype), v, input_precision="ieee")
    else:
        out = tl.dot(p.to(v.dtype), v)
    tl.store(O + b * so_b + t[:, None] * so_t + h[:, None] * so_h + d[None, :],
             out.to(O.dtype.element_ty), mask=row_ok[:, None])


@torch.library.custom_op("interp::short_attention", mutates_args=())
def short_attention(query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, scale: float) -> Tensor:
    """softmax(q k^T * scale + mask) v for query [B, H, T, D], key/value [B, Hkv, S, D] and an
    additive mask broadcasting to [B, 1, T, S]; returns [B, T, H, D] (contiguous)."""
    B, H, T, D = query.shape
    Hkv, S = key.shape[1], key.shape[2]
    G = H // Hkv
    out = torch.empty((B, T, H, D), dtype=query.dtype, device=query.device)
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (query, key, value))
    if mask is not None:
        mask = mask[:, :, :, :S].expand(B, 1, T, S)
    m_args = (mask, mask.stride(0), mask.stride(2), mask.stride(3)) if mask is not None else (q, 0, 0, 0)
    BG, BT = _row_blocks(G, T)
    _short_attention_kernel[(B, Hkv)](
        q, q.stride(0), q.stride(1), q.stride(2), k, k.stride(0), k.stride(1), k.stride(2),
        v, v.stride(0), v.stride(1), v.stride(2), *m_args, out, out.stride(0), out.stride(1), out.stride(2),
        T, S, G, float(scale), HAS_MASK=mask is not None, BT=BT, BG=BG, BS=max(16, _pow2(S)), D=D,
        IEEE=query.dtype == torch.float32)  # Triton's default 4 warps: what was measured up to MAX_BLOCK
    return out


@short_attention.register_fake
def _(query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, scale: float) -> Tensor:
    B, H, T, D = query.shape
    return query.new_empty((B, T, H, D))
