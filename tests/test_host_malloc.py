"""interp.host_malloc: glibc keeps the memory a batch frees, so the next batch does not fault it in."""

import subprocess
import sys

import pytest

from interp import host_malloc

PROBE = r"""
import resource, sys, torch
from interp import host_malloc
print(host_malloc.apply(sys.argv[1]))
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def batch():  # activations kept until the statistics are taken, then freed together
    kept = [torch.ones(2 ** 20) for _ in range(40)]  # 40 x 4 MiB
    del kept
batch()
f0 = faults()
for _ in range(5):
    batch()
print((faults() - f0) / (5 * 40 * 1024))  # page faults per 4 KiB page kept
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_tuned_malloc_reuses_a_batchs_freed_memory_instead_of_faulting_in_fresh_pages():
    out = {}
    for mode in ("default", "tuned"):
        r = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
        state, per_page = r.stdout.split()[-2:]
        out[mode] = (state, float(per_page))
    assert out["default"][0] == "default" and out["tuned"][0] == "tuned", out
    assert out["tuned"][1] < 0.1 and out["tuned"][1] < out["default"][1] / 3, out


def test_the_setting_is_checked_and_applied_once():
    with pytest.raises(ValueError, match="analysis.malloc"):
        host_malloc.apply("jemalloc")
    state = host_malloc.apply("tuned")
    assert state == "tuned" or state.startswith("default (")
    assert host_malloc.apply("tuned") == state and host_malloc.apply("default") == state  # once per process
