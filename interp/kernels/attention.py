"""Attention for short sentences: one Triton program per (sentence, key-value head).

Minimal pairs are short: 9 tokens on average with BOS. Eager attention computes the scores and the
weighted values as batched matrix products of ``[T, d_head] x [d_head, T]`` for every row and head;
at 9 tokens these are tiny matrices, and a batched product runs one mostly empty tile per matrix
(on an H200 at a batch of 640 sentences, compiled eager attention takes 0.37 ms per layer, 10.5% of
the layer's matrix products, about ten times what reading q, k and v costs; fused kernels such as
cuDNN's flash attention work on tiles of 128 query rows and are slower still, see
``benchmarks/README.md``).

Here one program takes a sentence and a key-value head: it reads that head's keys and values once,
and the queries of the ``G`` query heads that share them (grouped-query attention) as one block of
``G x T`` rows, computes the scores with one small matrix product, adds the mask, takes the softmax
in float32, and writes the weighted values in the layout Hugging Face's attention functions return
(``[B, T, H, D]``). The whole layer's attention is one launch of ``B x Hkv`` programs.

Numerics: products accumulate in float32 (as the matrix products do); the scores stay in float32
through the scale, mask and softmax (eager rounds them to the model's dtype first); the weights are
rounded to the model's dtype before the weighted sum, as in eager attention. In float32 models the
result equals eager attention up to summation order.

The kernel (``interp.kernels.short_attention``, imported only when ``short`` is registered or runs:
it imports Triton) runs on CUDA (and on CPU tensors under ``TRITON_INTERPRET=1``, how the tests run it).
Anything else (the CPU, sentences longer than ``SHORT_MAX_KEYS``, blocks larger than ``MAX_BLOCK``,
a head size that is not a power of two, gradients, a mask of another shape: ``kernel_applies``)
takes Hugging Face's eager attention. ``PlainModel`` registers it as the
attention implementation ``short``; under ``torch.compile`` it is one opaque operation
(``torch.ops.interp.short_attention``) between the compiled projections.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from .. import kernels

log = logging.getLogger(__name__)

NAME = "short"
SHORT_MAX_KEYS = 64  # longer sentences: eager attention (a program's blocks grow with T^2)


def _pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(0, n - 1).bit_length()


def _row_blocks(G: int, T: int) -> tuple[int, int]:
    """A program's query rows: ``BG`` group members x ``BT`` positions, powers of two, at least 16
    rows (the smallest matrix product Triton takes)."""
    BG, BT = _pow2(G), _pow2(T)
    while BG * BT < 16:
        BT *= 2
    return BG, BT


MAX_BLOCK = 128 * 128  # query rows x head size of one program: the largest measured (4 heads x 32 tokens x 128)


def max_query_tokens(G: int, D: int) -> int:
    """The longest sentence whose block of ``_row_blocks(G, T)`` query rows x head size ``D`` stays
    within ``MAX_BLOCK`` (0: none does). ``kernel_applies`` compares the length with this bound
    instead of computing the block from the length: under ``torch.compile`` a comparison of the
    (symbolic) length with a constant is one range guard, while rounding the length up to a power
    of two would specialize the compiled code on every new length (a recompilation per padded
    length, until ``torch._dynamo`` gives up and runs the layer uncompiled)."""
    best = 0
    for T in (1 << i for i in range(16)):  # BT is a power of two >= T: the bound is the largest that fits
        BG, BT = _row_blocks(G, T)
        if BG * BT * D <= MAX_BLOCK:
            best = T
    return best


def kernel_applies(query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, training: bool) -> bool:
    """Whether ``short_attention`` takes this call (else eager attention does): a device it runs on,
    inference (it has no backward), keys up to ``SHORT_MAX_KEYS``, a power-of-two head size, one
    dtype for q, k and v, whole groups of query heads per key-value head, a block of query rows
    and head size up to ``MAX_BLOCK`` (larger blocks would spill registers: not measured), and no
    mask or an additive one shared by the heads (``[B or 1, 1, T, >= S]``)."""
    B, H, T, D = query.shape
    Hkv, S = key.shape[1], key.shape[2]
    if not kernels.available(query.device) or training or query.requires_grad or S > SHORT_MAX_KEYS:
        return False
    if D < 16 or D & (D - 1) or query.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return False
    if key.dtype != query.dtype or value.dtype != query.dtype or H % Hkv or tuple(value.shape) != tuple(key.shape):
        return False
    if T > max_query_tokens(H // Hkv, D):
        return False
    return mask is None or (mask.dim() == 4 and mask.is_floating_point() and mask.shape[0] in (1, B)
                            and mask.shape[1] == 1 and mask.shape[2] == T and mask.shape[3] >= S)


def short_attention_forward(module: nn.Module, query: Tensor, key: Tensor, value: Tensor,
                            attention_mask: Tensor | None, scaling: float, dropout: float = 0.0, **kwargs):
    """Hugging Face attention-function signature: query [B, H, T, D], key/value [B, Hkv, S, D],
    an additive mask [B, 1, T, S] (or None: nothing masked); returns ([B, T, H, D], None), or
    eager attention's result where the kernel does not apply."""
    # logit soft-capping (Gemma 2) and attention sinks (gpt-oss) are beyond the kernel
    extra = any(kwargs.get(k) is not None for k in ("softcap", "s_aux", "sinks"))
    if extra or not kernel_applies(query, key, value, attention_mask, module.training and bool(dropout)):
        from transformers.models.llama.modeling_llama import eager_attention_forward

        return eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
    from . import short_attention  # noqa: F401  (defines torch.ops.interp.short_attention; imports Triton)

    return torch.ops.interp.short_attention(query, key, value, attention_mask, float(scaling)), None


def resolve(setting, device: torch.device | str) -> str:
    """``analysis.attn``: ``auto`` is ``short`` on CUDA with Triton (the fastest kernel for
    minimal pairs, measured in ``benchmarks/README.md``) and ``eager`` elsewhere; any other value
    names a kernel (``PlainModel.set_attention`` checks it)."""
    setting = str(setting)
    if setting == NAME and not kernels.available(device):
        log.warning("analysis.attn=short needs CUDA and Triton (device %s): eager attention instead", device)
        return "eager"
    if setting != "auto":
        return setting
    return NAME if kernels.have_triton() and torch.device(device).type == "cuda" else "eager"


def register() -> None:
    """Make ``short`` a Hugging Face attention implementation (with eager's additive mask); the
    kernel's operation is defined now, before any ``torch.compile`` traces a call of it."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from . import short_attention  # noqa: F401

    if NAME not in ALL_ATTENTION_FUNCTIONS:
        ALL_ATTENTION_FUNCTIONS.register(NAME, short_attention_forward)
    if NAME not in ALL_MASK_ATTENTION_FUNCTIONS:
        ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, eager_mask)
