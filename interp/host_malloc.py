"""Host memory allocation for CPU runs: glibc's malloc set to keep freed memory for reuse.

The analysis keeps every hooked activation of a batch until its statistics are taken (90 tensors,
about 330 MB per batch of 32 pairs of SmolLM2-135M), then frees them all. With glibc's defaults
the freed top of the heap goes back to the operating system (it exceeds the trim threshold, at
most 64 MiB), so the next batch's forward pass gets fresh memory whose every page faults on first
touch: about 90,000 page faults per batch on the benchmark machine, against 8,000 with the
settings below, and the analysis loop 5-10% slower (``benchmarks/README.md``). PyTorch's CPU
performance guide suggests preloading jemalloc or tcmalloc for this; ``keep_freed_memory`` gets
the effect from glibc itself through ``mallopt``, with nothing to install:

- ``M_TRIM_THRESHOLD`` 1 GiB and ``M_TOP_PAD`` 64 MiB: freed heap memory stays in the process for
  the next allocation;
- ``M_MMAP_THRESHOLD`` 32 MiB (glibc's maximum): blocks up to that size come from that heap, not
  from their own mappings, which are unmapped (and re-faulted) on every free.

The process keeps its peak heap (resident memory does not shrink between batches); the peak itself
does not change. The setting is process-wide and holds from the call on. ``analysis.malloc``
(``tuned``, the default, or ``default``) chooses on the CPU; the run's manifest records the outcome
(``forward.host_malloc``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
SETTINGS = {M_TRIM_THRESHOLD: 2 ** 30, M_TOP_PAD: 64 * 2 ** 20, M_MMAP_THRESHOLD: 32 * 2 ** 20}
_applied: str | None = None  # what this process was given: "tuned", or why not


def keep_freed_memory() -> str:
    """Apply ``SETTINGS`` (once per process). Returns ``"tuned"``, or why it could not be done
    (not Linux with glibc, or glibc refused a value); the run goes on either way."""
    global _applied
    if _applied is not None:
        return _applied
    if not sys.platform.startswith("linux"):
        _applied = f"default (no glibc on {sys.platform})"
        return _applied
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
    except (OSError, AttributeError) as err:
        _applied = f"default (no glibc mallopt: {err})"
        return _applied
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    refused = [k for k, v in SETTINGS.items() if mallopt(k, v) != 1]
    _applied = f"default (glibc refused mallopt parameters {refused})" if refused else "tuned"
    return _applied


def apply(setting) -> str:
    """``analysis.malloc``: ``tuned`` (``keep_freed_memory``) or ``default`` (malloc left alone,
    unless this process was tuned already)."""
    if str(setting) not in ("tuned", "default"):
        raise ValueError(f"analysis.malloc={setting!r}: use tuned or default")
    if str(setting) == "default":
        return _applied or "default"
    return keep_freed_memory()
