"""A gated MLP's first half in one Triton kernel: ``silu(x @ Wg.T) * (x @ Wu.T)``, Hopper TMA tiles.

The compiled tree runs a Llama MLP as two cuBLAS products (gate and up), one elementwise kernel
(``silu(g) * u``: it reads both products' outputs and writes its own) and the down product. This
kernel computes both products' tiles from the same tile of ``x`` (moved by the tensor-memory
accelerator), applies ``silu(g) * u`` to the float32 accumulators and writes the result once:
no elementwise kernel and no round trip of ``g`` and ``u`` through memory. It pays only where its
products run as fast as cuBLAS's, and they do not reliably: ``benchmarks.fused_mlp`` (5,760 token
rows at the 8B shape) measured it at 1.07x cuBLAS plus the compiled elementwise kernel in one run
and at 0.745x and 0.843x in two later runs (other H100 starts), and the whole bank workload ran
9-10% slower with it than without on one H100 (``benchmarks/README.md``, ninth session). Hence
opt-in: run ``benchmarks.fused_mlp`` more than once on a GPU before choosing it there.

Numbers: ``g`` and ``u`` stay float32 until ``silu(g) * u`` is rounded once to the input dtype
(bf16 or fp16), where the compiled tree rounds ``g`` and ``u`` to it first, so the two differ by that
rounding (the kernel is the nearer to float32 arithmetic). Float32 models keep the compiled MLP:
float32 tiles of this shape would need about 393 KB of shared memory, and an H100 has 227 KB a
block. ``PlainModel.set_mlp("fused")`` puts it in each layer's MLP (``analysis.mlp=fused``); the down
product stays cuBLAS.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

BM, BN, BK, STAGES, WARPS, GROUP_M = 128, 128, 64, 4, 8, 8  # the benchmark's fastest shape


@triton.jit
def _gated_up_kernel(x_desc, wg_desc, wu_desc, o_desc, M, N, K, BM: tl.constexpr, BN: tl.constexpr,
                     BK: tl.constexpr, STAGES: tl.constexpr, GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    n_m, n_n = tl.cdiv(M, BM), tl.cdiv(N, BN)
    # programs in groups of GROUP_M row blocks: neighbours share weight tiles in L2
    per_group = GROUP_M * n_n
    first_m = (pid // per_group) * GROUP_M
    size_m = min(n_m - first_m, GROUP_M)
    om = (first_m + (pid % per_group) % size_m) * BM
    on = ((pid % per_group) // size_m) * BN
    acc_g = tl.zeros((BM, BN), tl.float32)
    acc_u = tl.zeros((BM, BN), tl.float32)
    for ki in tl.range(0, tl.cdiv(K, BK), num_stages=STAGES):  # tiles past K are read as zeros
        a = x_desc.load([om, ki * BK])
        acc_g = tl.dot(a, wg_desc.load([on, ki * BK]).T, acc_g)
        acc_u = tl.dot(a, wu_desc.load([on, ki * BK]).T, acc_u)
    h = acc_g * tl.sigmoid(acc_g) * acc_u
    o_desc.store([om, on], h.to(o_desc.dtype))  # rows and columns past M and N are not written


DTYPES = (torch.bfloat16, torch.float16)  # float32 tiles of this shape need twice the shared memory a GPU has


def why_not(x: Tensor, wg: Tensor, wu: Tensor) -> str | None:
    """Why ``gated_up`` cannot take these operands, or None if it can."""
    if x.dim() != 2 or wg.dim() != 2 or wg.shape != wu.shape or x.shape[1] != wg.shape[1]:
        return f"shapes x {list(x.shape)}, gate {list(wg.shape)}, up {list(wu.shape)}"
    if not (x.dtype == wg.dtype == wu.dtype) or x.dtype not in DTYPES:
        return f"dtypes {x.dtype}, {wg.dtype}, {wu.dtype} (the kernel takes one of {DTYPES})"
    N, K = wg.shape
    if N == 0 or K == 0 or (N * x.element_size()) % 16:
        return f"the output's rows of {N} elements are not 16-byte aligned for TMA (or K={K} is 0)"
    for name, t in (("x", x), ("gate", wg), ("up", wu)):
        # a TMA descriptor: unit last stride, rows and base 16-byte aligned
        if t.stride(1) != 1 or (t.stride(0) * t.element_size()) % 16 or t.data_ptr() % 16:
            return f"{name} is not laid out for TMA (strides {t.stride()}, offset {t.data_ptr() % 16})"
    if torch.is_grad_enabled() and (x.requires_grad or wg.requires_grad or wu.requires_grad):
        return "gradients are wanted (the kernel has no backward)"
    return None


def gated_up(x: Tensor, wg: Tensor, wu: Tensor, bm: int = BM, bn: int = BN, bk: int = BK, stages: int = STAGES,
             warps: int = WARPS, group: int = GROUP_M) -> Tensor:
    """``silu(x @ wg.T) * (x @ wu.T)`` for ``x`` [M, K] and ``wg``, ``wu`` [N, K] (one dtype, rows
    16-byte aligned), rounded once to that dtype: [M, N]. The tile shape and pipeline depth are
    ``benchmarks.fused_mlp``'s to vary."""
    reason = why_not(x, wg, wu)
    if reason:
        raise ValueError(f"gated_up: {reason}")
    return _launch(x, wg, wu, bm, bn, bk, stages, warps, group)


def _launch(x: Tensor, wg: Tensor, wu: Tensor, bm: int = BM, bn: int = BN, bk: int = BK, stages: int = STAGES,
            warps: int = WARPS, group: int = GROUP_M) -> Tensor:
    """``gated_up`` on operands ``why_not`` has already accepted."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    M, K = x.shape
    N = wg.shape[0]
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0:
        return out
    grid = (triton.cdiv(M, bm) * triton.cdiv(N, bn),)
    _gated_up_kernel[grid](TensorDescriptor.from_tensor(x, [bm, bk]), TensorDescriptor.from_tensor(wg, [bn, bk]),
                           TensorDescriptor.from_tensor(wu, [bn, bk]), TensorDescriptor.from_tensor(out, [bm, bn]),
                           M, N, K, BM=bm, BN=bn, BK=bk, STAGES=stages, GROUP_M=group, num_warps=warps)
    return out


class FusedMLP:
    """A gated MLP module's forward with ``gated_up`` for its first half (``mlp.down_proj`` after it);
    inputs the kernel cannot take (``why_not``) go to ``fallback``, the module's forward before."""

    def __init__(self, mlp: torch.nn.Module, fallback):
        self.mlp = mlp
        self.fallback = fallback

    def __call__(self, x: Tensor) -> Tensor:
        m = self.mlp
        x2 = x.reshape(-1, x.shape[-1])
        if why_not(x2, m.gate_proj.weight, m.up_proj.weight) is not None:
            return self.fallback(x)
        h = _launch(x2, m.gate_proj.weight, m.up_proj.weight)  # checked just above
        return m.down_proj(h).view(*x.shape[:-1], -1)


def mlp_reason(mlp: torch.nn.Module, config) -> str | None:
    """Why a layer's MLP is not the gated SiLU MLP ``FusedMLP`` computes, or None if it is."""
    for name in ("gate_proj", "up_proj", "down_proj"):
        lin = getattr(mlp, name, None)
        if not isinstance(lin, torch.nn.Linear):
            return f"the MLP has no linear {name}"
        if name != "down_proj" and lin.bias is not None:
            return f"the MLP's {name} has a bias"
    act = getattr(config, "hidden_act", None) or getattr(config, "hidden_activation", None)
    if act != "silu":
        return f"the MLP's activation is {act!r}, not silu"
    return None
