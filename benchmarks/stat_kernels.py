"""The GPU statistics kernels alone, at a batch's shapes, against the chip's memory bandwidth.

    python -m benchmarks.stat_kernels [--pairs 128] [--controls 3] [--tokens 10] [--width 4096]
                                      [--sites 16] [--max-offset 15] [--groups 2] [--reps 20]
                                      [--slots 1024] [--vocab 128256]

The three kernels of ``interp.kernels.statistics`` are bandwidth-bound: they read the activations
(``pair_values``, ``abs_histogram_``) or the per-pair values and the float64 state (``group_sums_``)
and do little arithmetic per byte. On random activations laid out as one chunk of a batch (``--sites``
layers of one hook point, sentence a, b and ``--controls`` controls of ``--pairs`` pairs, ``--tokens``
padded tokens, sentences of 6 tokens up to that, bf16), this times each kernel at several launch
shapes (elements per program ``block``, ``num_warps``) and reports, per shape, the time, the bytes it
must move at least, and that rate as a fraction of a device-to-device copy's rate measured in the same
run (``copy_gb_s``). Every shape's output is checked bit for bit against the default shape's (the
kernels compute each element alone, so the launch shape must not change a result). Prints one JSON
line; CUDA only (on the CPU the kernels run in Triton's interpreter, which says nothing of speed).

It also times the log-probabilities' kernel (``interp.kernels.logprobs.target_logprobs``: log p of the
target from one chunk of ``--slots`` scored predictions' bf16 logits over a ``--vocab`` vocabulary)
against the PyTorch operations ``engine.slot_logprobs`` runs without it (a float32 copy, the target's
logit, the maximum, the exponentials in place, their sum and log), in the same run: ms of each, the
kernel's rate against the copy's (it reads the logits once), and the largest difference between the
two results (float32 rounding: the kernel's sum runs in another order).
"""

from __future__ import annotations

import argparse
import json

import torch

from interp.engine import Batch


def bank_batch(B: int, K: int, T: int, G: int, device, seed: int = 0) -> Batch:
    """``B`` pairs of one-token edits, a and b and ``K`` controls each, sentences of 6 to ``T``
    tokens (BOS included), the edit anywhere after BOS, groups 0..G-1 in turn."""
    g = torch.Generator().manual_seed(seed)
    last = torch.randint(min(5, T - 1), T, (B,), generator=g)
    edit = torch.stack([torch.randint(1, int(x) + 1, (1,), generator=g)[0] for x in last])
    V = 2 + K
    mask = (torch.arange(T)[None, :] <= last.repeat(V)[:, None])
    group = torch.arange(B) % G
    return Batch(torch.arange(B), torch.zeros(V * B, T, dtype=torch.long, device=device), mask.to(device),
                 edit.to(device), last.to(device), group.to(device), V, host_group=group)


def timed(fn, reps: int, warmup: int = 3) -> float:
    """Seconds per call of ``fn`` on the current CUDA stream over ``reps`` calls (CUDA events), after
    ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / reps


def copy_rate(reps: int) -> float:
    """Bytes per second of a 1 GiB device-to-device copy (read and write counted)."""
    src = torch.empty(2 ** 28, dtype=torch.float32, device="cuda").normal_()
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / timed(lambda: dst.copy_(src), reps)


def sweep(name: str, run, shapes, nbytes: int, reps: int, copy_bps: float) -> list[dict]:
    """``run(block, num_warps)`` at every shape: its outputs equal the first shape's, and its rate."""
    ref = None
    rows = []
    for block, warps in shapes:
        out = run(block, warps)
        if ref is None:
            ref = [t.clone() for t in out]
        same = all(torch.equal(torch.nan_to_num(a, nan=-7.0), torch.nan_to_num(b, nan=-7.0)) for a, b in zip(out, ref))
        if not same:
            raise SystemExit(f"{name}: block={block} num_warps={warps} changed a result")
        s = timed(lambda: run(block, warps), reps)
        rows.append({"block": block, "num_warps": warps, "ms": round(s * 1e3, 3),
                     "gb_s": round(nbytes / s / 1e9, 1), "of_copy": round(nbytes / s / copy_bps, 3)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=128)
    ap.add_argument("--controls", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=10)
    ap.add_argument("--width", type=int, default=4096)
    ap.add_argument("--sites", type=int, default=16)
    ap.add_argument("--max-offset", type=int, default=15)
    ap.add_argument("--groups", type=int, default=2)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--slots", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=128256)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks.stat_kernels needs a CUDA device")
    from interp.kernels import statistics as K
    from interp.stats import Sums
    from interp.stats.diff import HIST_BINS, HIST_HI, HIST_LO, median_rows

    dev = torch.device("cuda")
    B, S, C, T = a.pairs, a.sites, a.width, a.tokens
    batch = bank_batch(B, a.controls, T, a.groups, dev)
    V = batch.n_variants
    g = torch.Generator(device=dev).manual_seed(0)
    acts = [torch.randn(V * B, T, C, generator=g, device=dev, dtype=torch.bfloat16) for _ in range(S)]
    ref = torch.zeros(S, C, device=dev)
    copy_bps = copy_rate(a.reps)
    out: dict = {"device": torch.cuda.get_device_name(dev), "pairs": B, "rows_per_pair": V, "tokens": T,
                 "width": C, "sites": S, "groups": a.groups, "copy_gb_s": round(copy_bps / 1e9, 1)}

    vals, prof, *_ = K.pair_values(acts, batch, a.controls, a.max_offset, ref)
    out["offsets"] = prof.shape[2]  # the offsets these sentences reach (at most max_offset + 1)
    CH = vals.shape[2]
    read = S * V * B * T * C * 2
    written = (vals.numel() + prof.numel() + S * B * 2 * C + S * B * C) * 4
    out["pair_values"] = sweep(
        "pair_values", lambda bl, w: K.pair_values(acts, batch, a.controls, a.max_offset, ref, block=bl, num_warps=w),
        [(256, 4), (128, 2), (128, 4), (256, 2), (256, 8), (512, 4), (512, 8)], read + written, a.reps, copy_bps)

    seg = K.segments(batch, a.groups)
    R = CH * 3 * C

    def folded(block, warps):
        st = Sums.zeros((S, a.groups, CH, 3, C), torch.zeros(S, 1, CH, 3, C, dtype=torch.float64, device=dev))
        K.group_sums_(st, 0, vals, seg, block=block, num_warps=warps)
        return st.n, st.s1, st.s2

    # the values once, the state (n, s1, s2 in float64) read and written once per group
    state = 3 * 2 * S * a.groups * R * 8
    out["group_sums"] = sweep("group_sums", folded, [(1024, 4), (512, 4), (1024, 8), (2048, 8), (256, 2), (512, 2)],
                              vals.numel() * 4 + state, a.reps, copy_bps)
    out["group_sums_state_share"] = round(state / (vals.numel() * 4 + state), 3)

    rows = median_rows(batch).to(dev)

    def hist(block, warps):
        h = torch.zeros(S, HIST_BINS, dtype=torch.float64, device=dev)
        K.abs_histogram_(h, acts, rows, batch.mask, HIST_LO, HIST_HI, 10 ** HIST_LO, HIST_HI - 1e-3,
                         block=block, num_warps=warps)
        return (h,)

    out["abs_histogram"] = sweep("abs_histogram", hist, [(1024, 4), (512, 4), (1024, 8), (2048, 8), (256, 2)],
                                 S * len(rows) * T * C * 2, a.reps, copy_bps)
    out["target_logprobs"] = logprob_rows(a.slots, a.vocab, a.reps, copy_bps, dev)
    print(json.dumps(out), flush=True)


def torch_logprobs(raw: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``engine.slot_logprobs``'s PyTorch operations on one chunk of logits (a float32 copy, then
    ``engine.logsoftmax_at_`` in place on it)."""
    from interp.engine import logsoftmax_at_

    return logsoftmax_at_(raw.float(), target)


def logprob_rows(S: int, V: int, reps: int, copy_bps: float, dev) -> dict:
    """The PyTorch path and the kernel at several launch shapes on one chunk of bf16 logits."""
    from interp.kernels.logprobs import target_logprobs

    g = torch.Generator(device=dev).manual_seed(1)
    raw = (torch.randn(S, V, generator=g, device=dev) * 3).to(torch.bfloat16)
    target = torch.randint(0, V, (S,), generator=g, device=dev)
    ref = torch_logprobs(raw, target)
    base = timed(lambda: torch_logprobs(raw, target), reps)
    rows = [{"variant": "pytorch", "ms": round(base * 1e3, 3)}]
    for block, warps in [(4096, 8), (2048, 4), (8192, 8), (4096, 4), (1024, 4)]:
        got = target_logprobs(raw, target, block=block, num_warps=warps)
        s = timed(lambda: target_logprobs(raw, target, block=block, num_warps=warps), reps)
        rows.append({"variant": "kernel", "block": block, "num_warps": warps, "ms": round(s * 1e3, 3),
                     "speedup": round(base / s, 2), "of_copy": round(raw.numel() * 2 / s / copy_bps, 3),
                     "max_abs_diff": float(f"{float((got - ref).abs().max()):.3g}")})
    return {"slots": S, "vocab": V, "rows": rows}


if __name__ == "__main__":
    main()
