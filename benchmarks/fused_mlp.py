"""What fusing SiLU x up into the gate and up products would win: the first half of one MLP layer.

    python -m benchmarks.fused_mlp [--tokens 5760] [--d-model 4096] [--d-mlp 14336] [--reps 20] [--autotune]
                                   [--cutlass]

The compiled decoder runs a Llama MLP as two cuBLAS products (gate and up), one elementwise kernel
(``silu(gate) * up``, which reads both products' outputs and writes theirs) and the down product. At
the 8B shape and a batch of 128 bank pairs (5,760 token rows) the elementwise kernel is 4.4 of the
decoder's 109 ms of kernels (``benchmarks.phases``). A product kernel that computes both products'
tiles from the same input tile and applies ``silu(g) * u`` before it writes would remove that kernel
and the two outputs' round trip through memory, but only pays if its products run as fast as
cuBLAS's. On random bf16 matrices this times:

- ``cublas``: ``x @ Wg.T`` and ``x @ Wu.T`` (cuBLAS), then ``silu(g) * u`` compiled by
  ``torch.compile``: what the compiled tree runs;
- ``cublas_one_product``: ``x @ [Wg; Wu].T`` as one product, then the same elementwise kernel;
- ``triton_dual`` at several tile shapes: one Triton kernel, both products from each ``x`` tile,
  ``silu(g) * u`` in float32 before the one rounding to bf16 (the compiled tree rounds g and u first);
- ``triton_dual_tma``: the toolkit's kernel (``interp.kernels.mlp.gated_up``, ``analysis.mlp=fused``):
  the same products with their tiles moved by the Hopper tensor-memory accelerator, at several tile
  shapes, its default first. (A persistent variant, one program per SM walking the tiles, measured
  0.42-0.84x on one H100 and was dropped.)

With ``--autotune`` it also compiles the first half (``inductor_max_autotune``) and the whole MLP
(``whole_mlp``: default compile against max-autotune) with ``mode="max-autotune-no-cudagraphs"``:
inductor benchmarks its Triton product templates against cuBLAS at compile time and keeps the
faster (a template can take the elementwise work as its epilogue; cuBLAS cannot).

With ``--cutlass`` (a Hopper GPU, and ``nvcc`` with CUTLASS's headers, or a built library:
``benchmarks/cutlass_build.py``) it also times ``cutlass_gated_up``: the gate product by cuBLAS,
then the up product as a CUTLASS kernel whose epilogue reads the gate's output and writes
``silu(g) * acc`` (``benchmarks/gated_up.cu``: no elementwise kernel, no round trip of ``u``), at three
tile shapes and schedules; and, as ``up_product``, the up product alone by cuBLAS and by the same
CUTLASS kernels without the activation (what the epilogue costs, and how CUTLASS's product compares).

It reports ms, TFLOP/s (the two products' FLOP) and the largest difference from float32 arithmetic
rounded once, relative to the largest output, and ``speedup`` against ``cublas``. One JSON line;
CUDA only (the pointer-load kernel here is used by no toolkit code).
"""

from __future__ import annotations

import argparse
import json
from functools import partial

import torch
import triton
import triton.language as tl

from interp.kernels.mlp import gated_up

from .stat_kernels import timed


@triton.jit
def _dual_silu_kernel(X, WG, WU, OUT, M, N, K, stride_xm, stride_wn, stride_om,
                      BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    n_m, n_n = tl.cdiv(M, BM), tl.cdiv(N, BN)
    # programs in groups of GROUP_M row blocks: neighbours share weight tiles in L2
    per_group = GROUP_M * n_n
    first_m = (pid // per_group) * GROUP_M
    size_m = min(n_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % size_m
    pid_n = (pid % per_group) // size_m
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    xp = X + rm[:, None].to(tl.int64) * stride_xm + rk[None, :]
    gp = WG + rn[None, :].to(tl.int64) * stride_wn + rk[:, None]
    up = WU + rn[None, :].to(tl.int64) * stride_wn + rk[:, None]
    mm = rm[:, None] < M
    nn = rn[None, :] < N
    acc_g = tl.zeros((BM, BN), tl.float32)
    acc_u = tl.zeros((BM, BN), tl.float32)
    for _ in range(0, tl.cdiv(K, BK)):  # K a multiple of BK (the caller checks)
        a = tl.load(xp, mask=mm, other=0.0)
        acc_g = tl.dot(a, tl.load(gp, mask=nn, other=0.0), acc_g)
        acc_u = tl.dot(a, tl.load(up, mask=nn, other=0.0), acc_u)
        xp += BK
        gp += BK
        up += BK
    h = acc_g * tl.sigmoid(acc_g) * acc_u
    tl.store(OUT + rm[:, None].to(tl.int64) * stride_om + rn[None, :], h.to(OUT.dtype.element_ty), mask=mm & nn)


def dual_silu(x, wg, wu, bm=128, bn=128, bk=64, stages=4, warps=8, group=8):
    """``silu(x @ wg.T) * (x @ wu.T)`` in one kernel (x [M, K], wg and wu [N, K], contiguous)."""
    M, K = x.shape
    N = wg.shape[0]
    if K % bk or not (x.is_contiguous() and wg.is_contiguous() and wu.is_contiguous()):
        raise ValueError("dual_silu: contiguous inputs and K a multiple of the K tile")
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(M, bm) * triton.cdiv(N, bn),)
    _dual_silu_kernel[grid](x, wg, wu, out, M, N, K, x.stride(0), wg.stride(0), out.stride(0),
                            BM=bm, BN=bn, BK=bk, GROUP_M=group, num_stages=stages, num_warps=warps)
    return out


TMA_CONFIGS = [  # (BM, BN, BK, stages, warps, group): interp.kernels.mlp.gated_up's default first
    (128, 128, 64, 4, 8, 8), (128, 128, 64, 3, 8, 8), (128, 128, 32, 5, 8, 8), (128, 128, 32, 6, 8, 8),
    (128, 64, 64, 4, 4, 8), (128, 128, 64, 4, 8, 16),
]

CONFIGS = [  # (BM, BN, BK, stages, warps, group)
    (128, 128, 64, 3, 8, 8), (128, 128, 64, 4, 8, 8), (128, 64, 64, 4, 4, 8), (64, 128, 64, 4, 4, 8),
    (128, 128, 32, 5, 8, 8), (256, 64, 64, 3, 8, 8),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=5760)
    ap.add_argument("--d-model", type=int, default=4096)
    ap.add_argument("--d-mlp", type=int, default=14336)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--autotune", action="store_true",
                    help="also inductor's max-autotune (Triton product templates with the elementwise work "
                         "fused, benchmarked against cuBLAS at compile time): the first half and the whole MLP")
    ap.add_argument("--cutlass", action="store_true",
                    help="also the up product with silu(g) * acc in a CUTLASS epilogue (benchmarks/gated_up.cu)")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks.fused_mlp needs a CUDA device")
    dev, bf = torch.device("cuda"), torch.bfloat16
    M, K, N = a.tokens, a.d_model, a.d_mlp
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(M, K, generator=g, device=dev, dtype=bf)
    wg = (torch.randn(N, K, generator=g, device=dev) / K ** 0.5).to(bf)
    wu = (torch.randn(N, K, generator=g, device=dev) / K ** 0.5).to(bf)
    wgu = torch.cat([wg, wu])
    act = torch.compile(lambda gg, uu: torch.nn.functional.silu(gg) * uu)
    act2 = torch.compile(lambda gu: torch.nn.functional.silu(gu[:, :N]) * gu[:, N:])
    ref32 = torch.nn.functional.silu(x.float() @ wg.float().T) * (x.float() @ wu.float().T)
    scale = float(ref32.abs().max())
    flop = 2 * 2 * M * K * N

    def row(name, fn, **extra):
        try:
            out = fn()
            err = float((out.float() - ref32).abs().max()) / scale
            s = timed(fn, a.reps)
        except Exception as e:  # a tile shape the compiler refuses: say so, keep the others
            return {"variant": name, **extra, "error": f"{type(e).__name__}: {str(e)[:200]}"}
        return {"variant": name, **extra, "ms": round(s * 1e3, 3), "tflops": round(flop / s / 1e12, 1),
                "max_rel_err": float(f"{err:.3g}")}

    rows = [row("cublas", lambda: act(x @ wg.T, x @ wu.T)),
            row("cublas_one_product", lambda: act2(x @ wgu.T)),
            row("cublas_products_only", lambda: (x @ wg.T, x @ wu.T)[1])]
    for bm, bn, bk, st, w, gr in CONFIGS:
        rows.append(row("triton_dual", lambda: dual_silu(x, wg, wu, bm, bn, bk, st, w, gr),
                        tile=[bm, bn, bk], stages=st, warps=w))
    for bm, bn, bk, st, w, gr in TMA_CONFIGS:
        rows.append(row("triton_dual_tma", lambda: gated_up(x, wg, wu, bm, bn, bk, st, w, gr),
                        tile=[bm, bn, bk], stages=st, warps=w, group=gr))
    if a.cutlass:
        from . import cutlass_build as cb

        reason = cb.why_not(dev)
        if reason:
            raise SystemExit(f"benchmarks.fused_mlp --cutlass: {reason}")
        cb.library()  # built (or loaded) once, before the rows: a failed build stops here, with nvcc's output
        for v, what in cb.VARIANTS.items():
            rows.append(row("cutlass_gated_up", lambda: cb.gated_up(x, wu, x @ wg.T, v), kernel=what))
    if a.autotune:
        half = lambda xx: torch.nn.functional.silu(xx @ wg.T) * (xx @ wu.T)  # noqa: E731
        rows.append(row("inductor_max_autotune",
                        partial(torch.compile(half, mode="max-autotune-no-cudagraphs", dynamic=False), x)))
    speedups(rows)
    out = {"device": torch.cuda.get_device_name(dev), "tokens": M, "d_model": K, "d_mlp": N, "rows": rows}
    if a.autotune:  # the whole MLP (the down product too): what inductor's autotuned products would give
        wd = (torch.randn(K, N, generator=g, device=dev) / N ** 0.5).to(bf)
        mlp = lambda xx: (torch.nn.functional.silu(xx @ wg.T) * (xx @ wu.T)) @ wd.T  # noqa: E731
        ref32 = (ref32.to(bf).float() @ wd.float().T)
        scale, flop = float(ref32.abs().max()), flop * 3 // 2
        whole = [row(name, partial(torch.compile(mlp, mode=mode, dynamic=False), x))
                 for name, mode in (("compiled", "default"), ("max_autotune", "max-autotune-no-cudagraphs"))]
        out["whole_mlp"] = speedups(whole)
    if a.cutlass:  # the up product alone: cuBLAS against the CUTLASS kernels without the activation
        ref32, flop = x.float() @ wu.float().T, 2 * M * K * N  # one product (after --autotune's change)
        scale = float(ref32.abs().max())
        out["up_product"] = speedups([row("cublas", lambda: x @ wu.T)] + [
            row("cutlass", lambda: cb.gated_up(x, wu, None, cb.PLAIN + v), kernel=what) for v, what in cb.VARIANTS.items()])
    print(json.dumps(out), flush=True)


def speedups(rows: list[dict]) -> list[dict]:
    """Each row's ``speedup`` against the first row's time."""
    base = rows[0].get("ms")
    for r in rows:
        if base and "ms" in r:
            r["speedup"] = round(base / r["ms"], 3)
    return rows


if __name__ == "__main__":
    main()
