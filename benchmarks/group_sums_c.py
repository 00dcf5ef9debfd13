"""What a compiled loop would win for the CPU's per-group sums (``Sums.add_grouped_``).

    python -m benchmarks.group_sums_c [--groups 12] [--pairs 32] [--reps 200]

The CPU path folds each site's per-pair values into the float64 state with PyTorch operations
(about ten passes). This compiles the same fold as one C loop (``cc -O3 -ffp-contract=off``, called
through ``ctypes``; each group's batch sums taken in the order ``index_add_`` takes them, then added
into the state), checks that its state is bit-identical to ``add_grouped_``'s on values with NaNs,
and times both at the embedded model's shapes: the channels (pairs x 5 channels x 3 modes x 576)
and the profile (pairs x 9 offsets x 576 into a state of 16). Prints one JSON line. Needs a C
compiler; nothing of the toolkit uses this code.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from interp.stats import Sums

BLOCK = 256
SOURCE = r"""
#include <stdint.h>
#include <string.h>
#define BLK %d
/* x [B, S, R] float32 (strides xs_b, xs_s; R contiguous); shift of layer s at shift + s * sh_s;
   state n, s1, s2: layer s, group g at base + s * st_s + g * st_g (R contiguous);
   work: 3 * G * BLK doubles */
void group_sums(const float *x, int64_t B, int64_t S, int64_t R, int64_t xs_b, int64_t xs_s,
                const int64_t *group, int64_t G, const double *shift, int64_t sh_s,
                double *n, double *s1, double *s2, int64_t st_s, int64_t st_g, double *work) {
  for (int64_t s = 0; s < S; s++) {
    for (int64_t j0 = 0; j0 < R; j0 += BLK) {
      int64_t m = R - j0 < BLK ? R - j0 : BLK;
      double *a1 = work, *a2 = work + G * BLK;
      float *an = (float *)(work + 2 * G * BLK);
      memset(work, 0, sizeof(double) * 3 * G * BLK);
      const double *sh = shift + s * sh_s + j0;
      for (int64_t b = 0; b < B; b++) {
        const float *xb = x + b * xs_b + s * xs_s + j0;
        int64_t g = group[b];
        double *p1 = a1 + g * BLK, *p2 = a2 + g * BLK;
        float *pn = an + g * BLK;
        for (int64_t j = 0; j < m; j++) {
          float v = xb[j];
          int ok = v == v;
          double y = ok ? (double)v - sh[j] : 0.0;
          pn[j] += ok ? 1.0f : 0.0f;
          p1[j] += y;
          p2[j] += y * y;
        }
      }
      for (int64_t g = 0; g < G; g++) {
        int64_t o = s * st_s + g * st_g + j0;
        for (int64_t j = 0; j < m; j++) {
          n[o + j] += an[g * BLK + j];
          s1[o + j] += a1[g * BLK + j];
          s2[o + j] += a2[g * BLK + j];
        }
      }
    }
  }
}
""" % BLOCK


def build(dest: Path):
    src, lib = dest / "group_sums.c", dest / "group_sums.so"
    src.write_text(SOURCE)
    subprocess.run(["cc", "-O3", "-ffp-contract=off", "-shared", "-fPIC", str(src), "-o", str(lib)], check=True)
    so = ctypes.CDLL(str(lib))
    P, I = ctypes.c_void_p, ctypes.c_int64
    so.group_sums.argtypes = [P, I, I, I, I, I, P, I, P, I, P, P, P, I, I, P]
    return so


def c_add_grouped_(so, st: Sums, lo: int, x: torch.Tensor, group: torch.Tensor, n_groups: int) -> None:
    """``st.add_grouped_(lo, x, group, n_groups)`` through the C loop (a leading block of the
    state's first value axis, as the profile's offsets, is contiguous and supported)."""
    B, S = x.shape[:2]
    x = x.reshape(B, S, -1).contiguous()
    work = torch.empty(3 * n_groups * BLOCK, dtype=torch.float64)
    so.group_sums(x.data_ptr(), B, S, x.shape[2], x.stride(0), x.stride(1), group.data_ptr(), n_groups,
                  st.shift[lo].data_ptr(), st.shift.stride(0), st.n[lo].data_ptr(), st.s1[lo].data_ptr(),
                  st.s2[lo].data_ptr(), st.s1.stride(0), st.s1.stride(1), work.data_ptr())
    st.touched()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--groups", type=int, default=12)
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--reps", type=int, default=200)
    args = ap.parse_args()
    torch.manual_seed(0)
    B, G, L = args.pairs, args.groups, 30
    out = {"groups": G, "pairs": B, "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as d:
        so = build(Path(d))
        for name, shape, full in (("channels", (5, 3, 576), (5, 3, 576)), ("profile", (9, 576), (16, 576))):
            x = torch.randn(B, 1, *shape) * 3
            x[torch.rand_like(x) < 0.2] = float("nan")
            g = torch.randint(0, G, (B,))
            shift = torch.randn(L, 1, *full, dtype=torch.float64)
            ref, new = Sums.zeros((L, G, *full), shift.clone()), Sums.zeros((L, G, *full), shift.clone())
            for lo in (3, 3, 7):
                ref.add_grouped_(lo, x, g, G)
                c_add_grouped_(so, new, lo, x, g, G)
            same = all(torch.equal(a, b) for a, b in ((ref.n, new.n), (ref.s1, new.s1), (ref.s2, new.s2)))
            t = time.perf_counter()
            for _ in range(args.reps):
                ref.add_grouped_(3, x, g, G)
            t1 = time.perf_counter()
            for _ in range(args.reps):
                c_add_grouped_(so, new, 3, x, g, G)
            t2 = time.perf_counter()
            out[name] = {"bit_identical": same, "torch_ms": round((t1 - t) / args.reps * 1e3, 3),
                         "c_ms": round((t2 - t1) / args.reps * 1e3, 3),
                         "state_mb_per_site": round(3 * G * x[0, 0].numel() * 8 / 2 ** 20, 2)}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
