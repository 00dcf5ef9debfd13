"""The statistics of a batch on the GPU in four Triton kernels, reading each activation once.

1. ``pair_values``: for every pair ``i`` and component ``c`` of up to eight hook sites per launch
   (activations ``X[V*B, T, C]``, rows variant-major as ``engine.Batch`` lays them out) the kernel
   walks the pair's tokens once and writes, in float32:

   - ``vals[i, s, ch, m, c]``: channel ``ch`` (``diff`` = a - b, ``abs`` = |a - b|, and with K
     controls ``ctrl`` = mean_k |a - c_k|, ``delta`` = abs - ctrl, ``ratio`` = abs / ctrl) at
     position mode ``m`` (edit, last, after = mean over the tokens after the edit span). The
     channel axis is ``interp.stats.registry``'s: its size and each channel's slot come from
     there, and the kernel writes one line per channel;
   - ``prof[i, s, o, c]``: |a - b| at offset ``o`` from the edit;
   - NaN where the pair has no value (no token after the edit, a control that did not move the
     component, an offset past the last token);
   - ``spread[s, i, 0 | 1, c]``: the sum and the sum of squares of ``x - ref[s, c]`` over the
     pair's distinct sentence tokens (a's tokens, and b's own tokens from the edit on: the shared
     prefix counted once), about the running state's shift so that a component with a huge mean
     keeps its spread;
   - ``amax[s, i, c]``: the largest |x| over every real token of a and of b, BOS included (the
     running maximum behind the massive-activation flag; before, a pass of its own per site).

2. ``abs_histogram_``: the per-layer histogram of log10 |activation| over chosen a and b rows
   (the massive flag's median), the binning of ``torch.histc`` on CUDA, counted exactly in int32
   with atomic adds spread over copies of the histogram (before: five elementwise passes over a
   stacked copy of the rows, then one ``histc`` per layer on 2,000 contended bins).

3. ``group_sums_``: the per-pair values folded into the running float64 sums per group
   (``stats.Sums``), in place. Each program owns a block of elements for every group and loops
   over the batch's pairs ordered by group, so there are no atomics and the result is
   deterministic.

4. ``fold_spread_``: the pairs' spread sums and largest |x| folded into the running spread state and
   maximum, in place (one launch per chunk instead of a float64 sum and a dozen small operations).

What every chunk of a batch shares (the pairs ordered by group, b's last tokens, the spread's token
count) is made once per batch: ``BatchPlan``.

``DiffStats``'s PyTorch path computes the same with tensor operations; it remains the reference,
runs on the CPU, and the tests compare the two. This module imports Triton: ``DiffStats`` imports
it only when ``analysis.fused`` is on (``interp.kernels.use_fused``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.language.extra import libdevice

from ..stats import registry as reg

MODES = reg.MODES


MAX_SITES = 8  # sites per launch: their addresses travel as scalar arguments (no pointer table to copy)


@triton.jit
def _put(out, slot, C, cols, e, last, after, cm):
    """Store one channel's values at the three position modes (edit, last, after)."""
    tl.store(out + (slot * 3 + 0) * C + cols, e, mask=cm)
    tl.store(out + (slot * 3 + 1) * C + cols, last, mask=cm)
    tl.store(out + (slot * 3 + 2) * C + cols, after, mask=cm)


@triton.jit
def _ratio(a, c):
    return tl.where(c > 0, tl.math.div_rn(a, tl.maximum(c, 1e-30)), float("nan"))


@triton.jit(do_not_specialize=["B", "T"])
def _pair_values_kernel(X0, X1, X2, X3, X4, X5, X6, X7, stride_row, stride_t,
                        EDIT, EDIT_END, LAST, LAST_B, BIDX, REF,
                        VALS, stride_vb, stride_vs, PROF, stride_pb, stride_ps, SPREAD, AMAX, B, T, C,
                        K: tl.constexpr, O: tl.constexpr, HAS_BIDX: tl.constexpr, DT: tl.constexpr,
                        BLOCK: tl.constexpr, DIFF: tl.constexpr, ABS: tl.constexpr, CTRL: tl.constexpr,
                        DELTA: tl.constexpr, RATIO: tl.constexpr):
    i = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    s = tl.program_id(2)
    addr = tl.where(s == 0, X0, tl.where(s == 1, X1, tl.where(s == 2, X2, tl.where(s == 3, X3, tl.where(
        s == 4, X4, tl.where(s == 5, X5, tl.where(s == 6, X6, X7)))))))
    X = addr.to(tl.pointer_type(DT))
    cm = cols < C
    zi = tl.zeros([BLOCK], tl.int32)
    zero = tl.zeros([BLOCK], tl.float32)
    e = tl.load(EDIT + i).to(tl.int32)
    ee = tl.load(EDIT_END + i).to(tl.int32)
    last = tl.load(LAST + i).to(tl.int32)
    last_b = tl.load(LAST_B + i).to(tl.int32)
    s64 = s.to(tl.int64)
    ref = tl.load(REF + s64 * C + cols, mask=cm, other=0.0)
    i64 = i.to(tl.int64)
    row_a = X + i64 * stride_row
    row_b = X + (B + i64) * stride_row
    prof = PROF + i64 * stride_pb + s64 * stride_ps
    e_d = zero
    e_a = zero
    e_c = zero
    l_d = zero
    l_a = zero
    l_c = zero
    f_d = zero
    f_a = zero
    f_c = zero
    s1 = zero
    s2 = zero
    # |x| over every real token of a and b: BOS here, the rest in the loop (NaN propagates, as in torch.amax)
    mx = tl.maximum(tl.abs(tl.load(row_a + cols, mask=cm, other=0.0).to(tl.float32)),
                    tl.abs(tl.load(row_b + cols, mask=cm, other=0.0).to(tl.float32)), propagate_nan=tl.PropagateNan.ALL)
    for t in range(1, T):
        tt = zi + t
        in_a = tt <= last
        xa = tl.load(row_a + t * stride_t + cols, mask=cm & in_a, other=0.0).to(tl.float32)
        live_b = tt <= last_b  # b's own token t is real
        if HAS_BIDX:
            tb = tl.load(BIDX + i64 * T + t).to(tl.int32)
            xb = tl.load(row_b + tb * stride_t + cols, mask=cm & in_a, other=0.0).to(tl.float32)
            in_b = (tt >= e) & live_b
            xo = tl.load(row_b + t * stride_t + cols, mask=cm & live_b, other=0.0).to(tl.float32)  # b's own token t
        else:  # one-token edits: b's positions are a's
            xb = tl.load(row_b + t * stride_t + cols, mask=cm & (in_a | live_b), other=0.0).to(tl.float32)
            in_b = (tt >= e) & in_a
            xo = xb
        mx = tl.maximum(mx, tl.where(in_a, tl.abs(xa), 0.0), propagate_nan=tl.PropagateNan.ALL)
        mx = tl.maximum(mx, tl.where(live_b, tl.abs(xo), 0.0), propagate_nan=tl.PropagateNan.ALL)
        d = xa - xb
        ad = tl.abs(d)
        c = zero
        for k in tl.static_range(K):
            row_c = X + ((2 + k) * B + i64) * stride_row
            xc = tl.load(row_c + t * stride_t + cols, mask=cm & in_a, other=0.0).to(tl.float32)
            c += tl.abs(xa - xc)
        if K > 0:
            c = tl.math.div_rn(c, zero + K)
        ya = tl.where(in_a, xa - ref, 0.0)
        yb = tl.where(in_b, xo - ref, 0.0)
        s1 += ya + yb
        s2 += ya * ya + yb * yb
        at_e = tt == e
        at_l = tt == last
        e_d = tl.where(at_e, d, e_d)
        e_a = tl.where(at_e, ad, e_a)
        e_c = tl.where(at_e, c, e_c)
        l_d = tl.where(at_l, d, l_d)
        l_a = tl.where(at_l, ad, l_a)
        l_c = tl.where(at_l, c, l_c)
        aft = (tt > ee) & in_a
        f_d += tl.where(aft, d, 0.0)
        f_a += tl.where(aft, ad, 0.0)
        f_c += tl.where(aft, c, 0.0)
        o = tt - e
        tl.store(prof + o * C + cols, ad, mask=cm & in_a & (o >= 0) & (o < O))
    nan = float("nan")
    for o in tl.static_range(O):  # offsets past the pair's last token: no value
        tl.store(prof + o * C + cols, zero + nan, mask=cm & (zi + o > last - e))
    n_aft = zero + tl.maximum(last - ee, 1).to(tl.float32)
    has_aft = last > ee  # an edit at the last token has no "after" value
    f_d = tl.where(has_aft, tl.math.div_rn(f_d, n_aft), nan)
    f_a = tl.where(has_aft, tl.math.div_rn(f_a, n_aft), nan)
    f_c = tl.where(has_aft, tl.math.div_rn(f_c, n_aft), nan)
    # one line per channel of interp.stats.registry, at its slot
    out = VALS + i64 * stride_vb + s64 * stride_vs
    _put(out, DIFF, C, cols, e_d, l_d, f_d, cm)
    _put(out, ABS, C, cols, e_a, l_a, f_a, cm)
    if K > 0:
        _put(out, CTRL, C, cols, e_c, l_c, f_c, cm)
        _put(out, DELTA, C, cols, e_a - e_c, l_a - l_c, f_a - f_c, cm)
        _put(out, RATIO, C, cols, _ratio(e_a, e_c), _ratio(l_a, l_c), _ratio(f_a, f_c), cm)
    sp = SPREAD + (s64 * B + i64) * 2 * C
    tl.store(sp + cols, s1, mask=cm)
    tl.store(sp + C + cols, s2, mask=cm)
    tl.store(AMAX + (s64 * B + i64) * C + cols, mx, mask=cm)


_TL_DTYPES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}


def _launches(acts: list[Tensor]):
    """The sites' activations in one layout (copied where a site's differs), their (row, token)
    strides, their Triton dtype, and the kernel launches over them: ``(first site, pointers, sites)``,
    at most ``MAX_SITES`` a launch (the pointers padded with 0)."""
    x0 = acts[0]
    if x0.dtype not in _TL_DTYPES:
        raise TypeError(f"fused statistics: unsupported activation dtype {x0.dtype}")
    acts = [x if x.stride() == x0.stride() and x.stride(-1) == 1 else x.contiguous() for x in acts]
    strides = acts[0].stride()[:2]
    if any(x.stride()[:2] != strides for x in acts):
        raise ValueError("fused statistics: the sites' activations differ in layout")
    launches = []
    for s0 in range(0, len(acts), MAX_SITES):
        part = acts[s0:s0 + MAX_SITES]
        launches.append((s0, [x.data_ptr() for x in part] + [0] * (MAX_SITES - len(part)), len(part)))
    return acts, strides, getattr(tl, _TL_DTYPES[x0.dtype]), launches


def b_last(batch) -> Tensor:
    """[B]: the last real token of each pair's sentence b, at b's own positions."""
    B = batch.size
    return batch.mask[B:2 * B].sum(1) - 1


def distinct_tokens(batch, last_b: Tensor) -> Tensor:
    """The number of tokens the batch's spread sums cover (float64, 0-d): per pair a's sentence
    tokens and b's own tokens from the edit on (the shared prefix counted once)."""
    return (batch.last + (last_b - batch.edit + 1).clamp(min=0)).sum().to(torch.float64)


def pair_values(acts: list[Tensor], batch, n_controls: int, max_offset: int, ref: Tensor,
                last_b: Tensor | None = None, block: int = 256, num_warps: int = 4
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-pair values of ``S`` sites (``acts[s]``: [V*B, T, C], one hook point's layers).

    Returns ``vals`` [B, S, CH, 3, C] (modes in ``MODES`` order; channels diff, abs, and with
    controls ctrl, delta, ratio) and ``prof`` [B, S, O, C], both NaN where a pair has no value (no
    token after the edit, a control that did not move the component, an offset past the last
    token); ``O`` = the offsets this batch can reach, ``min(max_offset + 1, T - 1)`` (the edit is
    at token 1 or later), as in ``DiffStats._values``: the state's later offsets get nothing from
    it; ``spread`` [S, B, 2, C]: per pair, the sum and sum of squares of ``x - ref`` over its
    distinct tokens (``ref`` [S, C]; how many tokens that is: ``distinct_tokens``), and ``amax``
    [S, B, C]: per pair the largest |x| over every real token of a and b (BOS included).
    ``last_b``: ``b_last(batch)``, when the caller has it (once per batch, not per chunk).
    """
    B, T = batch.size, batch.seq_len
    S, C = len(acts), acts[0].shape[-1]
    K, O = int(n_controls), min(int(max_offset) + 1, T - 1)
    names = reg.channel_names(K)
    CH = len(names)
    # each registered channel's slot, a constant of the kernel (channels a run does not keep: unused)
    slots = {c.name.upper(): names.index(c.name) if c.name in names else 0 for c in reg.CHANNELS}
    dev = acts[0].device
    if last_b is None:
        last_b = b_last(batch)
    vals = torch.empty((B, S, CH, 3, C), dtype=torch.float32, device=dev)
    prof = torch.empty((B, S, O, C), dtype=torch.float32, device=dev)  # the kernel writes every value
    spread = torch.empty((S, B, 2, C), dtype=torch.float32, device=dev)
    amax = torch.empty((S, B, C), dtype=torch.float32, device=dev)
    ref = ref.to(torch.float32).contiguous()
    bidx = batch.b_index if batch.b_index is not None else batch.edit  # unused without b_index
    acts, (stride_row, stride_t), dt, launches = _launches(acts)
    for s0, ptrs, n in launches:
        grid = (B, triton.cdiv(C, block), n)
        _pair_values_kernel[grid](
            *ptrs, stride_row, stride_t, batch.edit, batch.edit_end, batch.last, last_b, bidx, ref[s0:],
            vals[:, s0:], vals.stride(0), vals.stride(1), prof[:, s0:], prof.stride(0), prof.stride(1),
            spread[s0:], amax[s0:], B, T, C, K=K, O=O, HAS_BIDX=batch.b_index is not None, DT=dt, BLOCK=block, **slots,
            num_warps=num_warps)
    return vals, prof, spread, amax


@triton.jit
def _fold_spread_kernel(SPREAD, AMAX, B, C, COUNT, SHIFT, N, S1, S2, ABSMAX, BLOCK: tl.constexpr):
    s = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    cm = cols < C
    at = s * C + cols
    shift = tl.load(SHIFT + at, mask=cm, other=0.0)
    # the pair kernel's sums are about the shift as float32 (its ``ref``): re-expressed about the shift
    delta = shift.to(tl.float32).to(tl.float64) - shift
    a1 = tl.zeros([BLOCK], tl.float64)
    a2 = tl.zeros([BLOCK], tl.float64)
    mx = tl.load(ABSMAX + at, mask=cm, other=0.0)
    for i in range(B):  # pair by pair: a fixed order, deterministic
        row = (s * B + i) * C
        a1 += tl.load(SPREAD + 2 * row + cols, mask=cm, other=0.0).to(tl.float64)
        a2 += tl.load(SPREAD + 2 * row + C + cols, mask=cm, other=0.0).to(tl.float64)
        mx = tl.maximum(mx, tl.load(AMAX + row + cols, mask=cm, other=0.0), propagate_nan=tl.PropagateNan.ALL)
    n = tl.load(COUNT)
    tl.store(N + at, tl.load(N + at, mask=cm, other=0.0) + n, mask=cm)
    tl.store(S1 + at, tl.load(S1 + at, mask=cm, other=0.0) + (a1 + n * delta), mask=cm)
    tl.store(S2 + at, tl.load(S2 + at, mask=cm, other=0.0) + ((a2 + 2.0 * delta * a1) + n * delta * delta), mask=cm)
    tl.store(ABSMAX + at, mx, mask=cm)


def fold_spread_(sums, lo: int, spread: Tensor, count: Tensor, absmax: Tensor, amax: Tensor, block: int = 512) -> None:
    """Fold ``pair_values``' per-pair spread sums [S, B, 2, C] (about the state's shift as float32)
    into layers ``lo:lo + S`` of the spread state ``sums`` ([L, C], float64, exactly as
    ``Sums.add_sums_`` re-expresses sums about another centre), with ``count`` (float64, 0-d) tokens;
    and the pairs' largest |activation| ``amax`` [S, B, C] into the running maximum ``absmax``
    [L, C] (NaN kept). One launch, in place, pairs summed in order (deterministic)."""
    S, B, _, C = spread.shape
    n, s1, s2, shift = sums.n, sums.s1, sums.s2, sums.shift
    for name, t in (("n", n), ("s1", s1), ("s2", s2), ("shift", shift), ("absmax", absmax)):
        if t.shape[-1] != C or not t.is_contiguous():
            raise ValueError(f"fold_spread_: the state's {name} is not a contiguous [L, {C}] tensor")
    spread, amax = spread.contiguous(), amax.contiguous()
    grid = (S, triton.cdiv(C, block))
    _fold_spread_kernel[grid](spread, amax, B, C, count, shift[lo:], n[lo:], s1[lo:], s2[lo:], absmax[lo:], BLOCK=block)
    sums.touched()


class BatchPlan:
    """What every chunk of a batch shares, made once per batch: the pairs ordered by group
    (``segments``), b's last tokens (``b_last``) and the spread's token count (``distinct_tokens``)."""

    def __init__(self, batch, n_groups: int):
        self.seg = segments(batch, n_groups)
        self.last_b = b_last(batch)
        self.count = distinct_tokens(batch, self.last_b)


@triton.jit(do_not_specialize=["T"])
def _abs_hist_kernel(X0, X1, X2, X3, X4, X5, X6, X7, stride_row, stride_t, ROWS, MASK, stride_m,
                     HIST, n_copies, T, C, LO: tl.constexpr, HI: tl.constexpr, NB: tl.constexpr,
                     FLOOR: tl.constexpr, CEIL: tl.constexpr, LIBDEVICE: tl.constexpr, DT: tl.constexpr,
                     BLOCK: tl.constexpr):
    r = tl.program_id(0)
    cb = tl.program_id(1)
    s = tl.program_id(2)
    addr = tl.where(s == 0, X0, tl.where(s == 1, X1, tl.where(s == 2, X2, tl.where(s == 3, X3, tl.where(
        s == 4, X4, tl.where(s == 5, X5, tl.where(s == 6, X6, X7)))))))
    X = addr.to(tl.pointer_type(DT))
    cols = cb * BLOCK + tl.arange(0, BLOCK)
    cm = cols < C
    row = tl.load(ROWS + r).to(tl.int64)
    base = X + row * stride_row
    # this program's copy of the layer's histogram (fewer programs adding to one bin at a time)
    copy = (r * tl.num_programs(1) + cb) % n_copies
    hist = HIST + (s.to(tl.int64) * n_copies + copy) * NB
    for t in range(T):
        if tl.load(MASK + row * stride_m + t) != 0:  # padding is left out (torch: a value below the range)
            x = tl.load(base + t * stride_t + cols, mask=cm, other=1.0).to(tl.float32)
            # as DiffStats._magnitudes: clamp(|x|, min) -> log10 -> clamp(max), NaN kept (and then dropped)
            v = tl.maximum(tl.abs(x), FLOOR, propagate_nan=tl.PropagateNan.ALL)
            if LIBDEVICE:  # CUDA's log10f, as torch.log10 on CUDA
                lg = libdevice.log10(v)
            else:  # Triton's interpreter (tests on the CPU) has no libdevice: nearly always correctly rounded
                lg = (tl.log(v.to(tl.float64)) * 0.43429448190325182765).to(tl.float32)
            lg = tl.minimum(lg, CEIL, propagate_nan=tl.PropagateNan.ALL)
            # torch.histc on CUDA: bin = (int)((v - lo) * nbins / (hi - lo)), the top edge in the last bin,
            # values outside [lo, hi] (and NaN) not counted
            ok = cm & (lg >= LO) & (lg <= HI)
            b = tl.math.div_rn((tl.where(ok, lg, LO) - LO) * NB, HI - LO).to(tl.int32)
            b = tl.where(b == NB, NB - 1, b)
            tl.atomic_add(hist + b, tl.full([BLOCK], 1, tl.int32), mask=ok, sem="relaxed")


HIST_COPIES = 64


def abs_histogram_(hist: Tensor, acts: list[Tensor], rows: Tensor, mask: Tensor, lo: float, hi: float,
                   floor: float, ceil: float, block: int = 1024, num_warps: int = 4) -> None:
    """Add to ``hist`` [S, NB] (any dtype) the histogram of log10 |x| of each site ``acts[s]``
    ([rows, T, C]) over the rows ``rows`` and their real tokens (``mask`` [rows, T]): |x| clamped
    below at ``floor``, its log10 clamped above at ``ceil``, binned as ``torch.histc(v, NB, lo, hi)``
    on CUDA bins it (exact int32 counts)."""
    S, NB = len(acts), hist.shape[-1]
    acts, (stride_row, stride_t), dt, launches = _launches(acts)
    T, C = acts[0].shape[1], acts[0].shape[-1]
    counts = torch.zeros((S, HIST_COPIES, NB), dtype=torch.int32, device=acts[0].device)
    for s0, ptrs, n in launches:
        grid = (len(rows), triton.cdiv(C, block), n)
        _abs_hist_kernel[grid](*ptrs, stride_row, stride_t, rows, mask, mask.stride(0), counts[s0:], HIST_COPIES, T, C,
                               LO=float(lo), HI=float(hi), NB=NB, FLOOR=float(floor), CEIL=float(ceil),
                               LIBDEVICE=acts[0].device.type == "cuda", DT=dt, BLOCK=block, num_warps=num_warps)
    hist += counts.sum(1).to(hist.device, hist.dtype)


@triton.jit
def _add_value(n, s1, s2, x, shift):
    ok = x == x  # NaN: no value (a pair past the segment's end loads NaN)
    y = tl.where(ok, x.to(tl.float64) - shift, 0.0)
    return n + ok.to(tl.float64), s1 + y, s2 + y * y


@triton.jit(do_not_specialize=["n_seg"])
def _group_sums_kernel(X, stride_xb, stride_xs, PERM, SEG, n_seg, SHIFT, stride_shift,
                       N, S1, S2, stride_l, stride_g, R, BLOCK: tl.constexpr):
    s = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    cm = cols < R
    s64 = s.to(tl.int64)
    shift = tl.load(SHIFT + s64 * stride_shift + cols, mask=cm, other=0.0).to(tl.float64)
    xs = X + s64 * stride_xs
    zj = tl.zeros([BLOCK], tl.int64)
    for k in range(n_seg):
        lo = tl.load(SEG + 3 * k)
        hi = tl.load(SEG + 3 * k + 1)
        g = tl.load(SEG + 3 * k + 2)
        n = tl.zeros([BLOCK], tl.float64)
        s1 = tl.zeros([BLOCK], tl.float64)
        s2 = tl.zeros([BLOCK], tl.float64)
        # four pairs a step: their loads are issued together (a pair's row address is itself a load),
        # then added one after another, in the order of one pair a step
        for j in range(lo, hi, 4):
            jj = zj + j  # as a block: the masks below are blocks
            v1, v2, v3 = jj + 1 < hi, jj + 2 < hi, jj + 3 < hi
            p0 = tl.load(PERM + j)
            p1 = tl.load(PERM + tl.minimum(j + 1, hi - 1))  # past the end: a valid address, its value masked
            p2 = tl.load(PERM + tl.minimum(j + 2, hi - 1))
            p3 = tl.load(PERM + tl.minimum(j + 3, hi - 1))
            x0 = tl.load(xs + p0 * stride_xb + cols, mask=cm, other=0.0)
            x1 = tl.load(xs + p1 * stride_xb + cols, mask=cm & v1, other=float("nan"))
            x2 = tl.load(xs + p2 * stride_xb + cols, mask=cm & v2, other=float("nan"))
            x3 = tl.load(xs + p3 * stride_xb + cols, mask=cm & v3, other=float("nan"))
            n, s1, s2 = _add_value(n, s1, s2, x0, shift)
            n, s1, s2 = _add_value(n, s1, s2, x1, shift)
            n, s1, s2 = _add_value(n, s1, s2, x2, shift)
            n, s1, s2 = _add_value(n, s1, s2, x3, shift)
        off = s64 * stride_l + g * stride_g + cols
        tl.store(N + off, tl.load(N + off, mask=cm, other=0.0) + n, mask=cm)
        tl.store(S1 + off, tl.load(S1 + off, mask=cm, other=0.0) + s1, mask=cm)
        tl.store(S2 + off, tl.load(S2 + off, mask=cm, other=0.0) + s2, mask=cm)


def segments(batch, n_groups: int) -> tuple[Tensor, Tensor, int]:
    """The batch's pairs ordered by group (``perm``) and one segment per group present
    (``[lo, hi, group]`` rows into ``perm``), from the host copy of the groups: no device sync."""
    g = batch.host_group if batch.host_group is not None else batch.group.cpu()
    perm = torch.argsort(g, stable=True)
    gs = g[perm]
    lo = torch.nonzero(torch.diff(gs, prepend=gs[:1] - 1))[:, 0]
    hi = torch.cat([lo[1:], torch.tensor([len(gs)])])
    seg = torch.stack([lo, hi, gs[lo]], 1).to(torch.int64).contiguous()
    dev = batch.group.device
    if dev.type == "cuda":  # pinned, asynchronous: the host does not wait for the streams
        perm, seg = perm.pin_memory(), seg.pin_memory()
    return perm.to(dev, non_blocking=True), seg.to(dev, non_blocking=True), len(lo)


def leading_block(x: Tensor, sums) -> bool:
    """Whether per-pair values ``x`` [B, S, *R] fit a grouped state [L, G, *R'] (``sums``) as its
    leading block: the same axes after the first of ``R``, and no more entries on that one (the
    profile's offsets a batch reaches)."""
    full = tuple(sums.n.shape[2:])
    return tuple(x.shape[3:]) == full[1:] and x.shape[2] <= full[0]


def group_sums_(sums, lo: int, x: Tensor, seg: tuple[Tensor, Tensor, int], block: int = 1024,
                num_warps: int = 4) -> None:
    """``Sums.add_grouped_`` through Triton: fold per-pair values ``x`` [B, S, *R] (NaN = no value)
    into layers ``lo:lo + S`` of a grouped state [L, G, *R'], in place; where ``R`` is smaller than
    ``R'`` in its first axis only (the profile's offsets a batch reaches) the values go to the leading
    block, as in ``add_grouped_``. Each program owns a block of elements for every group, so the
    float64 sums are deterministic and need no atomics."""
    perm, seg_t, n_seg = seg
    B, S = x.shape[:2]
    if not leading_block(x, sums):
        raise ValueError(f"group_sums_: values of shape {list(x.shape[2:])} are no leading block "
                         f"of the state's {list(sums.n.shape[2:])}")
    R = x[0, 0].numel()  # the leading R of each layer's and group's R' elements (contiguous)
    x = x.reshape(B, S, R)
    if x.stride(-1) != 1:
        x = x.contiguous()
    G = sums.n.shape[1]
    # views into the state (``view`` fails rather than copy: the kernel writes through them)
    n, s1, s2 = (t[lo:lo + S].view(S, G, -1) for t in (sums.n, sums.s1, sums.s2))
    shift = sums.shift[lo:lo + S].view(S, -1)
    grid = (S, triton.cdiv(R, block))
    _group_sums_kernel[grid](x, x.stride(0), x.stride(1), perm, seg_t, n_seg, shift, shift.stride(0),
                             n, s1, s2, n.stride(0), n.stride(1), R, BLOCK=block, num_warps=num_warps)
    sums.touched()
