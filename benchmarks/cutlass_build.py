"""Build and call ``benchmarks/gated_up.cu``: a CUTLASS product for Hopper with ``silu(g) * acc`` in its epilogue.

Used by ``python -m benchmarks.fused_mlp --cutlass``. The kernel was tried as the compiled tree's MLP
(``analysis.mlp=cutlass``, commit 14848f9) and measured no faster than cuBLAS plus the compiled
elementwise kernel (benchmarks/README.md, tenth session), so no toolkit code uses it; it is kept
here so that the measurement can be rerun.

``gated_up.cu`` is compiled once with ``nvcc`` against CUTLASS's headers into a shared library,
cached by a hash of its source, flags, header folder and compiler, and called through ``ctypes``
with raw pointers and the current CUDA stream (no PyTorch headers, so one build serves every
PyTorch version). Where the tools come from, first found wins:

- the library itself: ``INTERP_GATED_UP_LIB`` (a path to a built ``.so``: nothing is compiled);
- ``nvcc``: ``$CUDA_HOME/bin/nvcc``, ``nvcc`` on the ``PATH``, or the ``nvidia-cuda-nvcc`` wheel;
- CUTLASS's headers: ``$CUTLASS_PATH/include``, or the ``nvidia-cutlass`` wheel
  (``cutlass_library/source/include``);
- the cache: ``INTERP_KERNEL_CACHE``, else ``~/.cache/interp/kernels``.

A build takes about a minute and a half on 2 cores (all six variants).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.util
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("gated_up.cu")
FLAGS = ["-std=c++17", "-O3", "-DNDEBUG", "--expt-relaxed-constexpr", "-gencode=arch=compute_90a,code=sm_90a",
         "-shared", "-Xcompiler", "-fPIC", "-cudart", "static"]
GATED, PLAIN = 0, 10  # variant numbers of gated_up.cu: the default gated product, and the same without activation
VARIANTS = {0: "128x256x64 tiles, cluster 2x1, cooperative", 1: "128x128x64 tiles, cluster 1x2, ping-pong",
            2: "128x256x64 tiles, cluster 1x2, cooperative"}


class KernelBuildError(RuntimeError):
    """``nvcc`` failed on ``gated_up.cu`` (the message ends with its output)."""


def _wheel_dir(package: str) -> list[Path]:
    spec = importlib.util.find_spec(package)  # finds, does not import
    return [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []


def find_nvcc() -> Path | None:
    """``nvcc``: under ``CUDA_HOME``, on the ``PATH``, or from the ``nvidia-cuda-nvcc`` wheel."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and (Path(home) / "bin" / "nvcc").is_file():
        return Path(home) / "bin" / "nvcc"
    found = shutil.which("nvcc")
    if found:
        return Path(found)
    for root in _wheel_dir("nvidia"):
        for sub in ("cu13", "cu12", "cuda_nvcc"):
            if (root / sub / "bin" / "nvcc").is_file():
                return root / sub / "bin" / "nvcc"
    return None


def find_cutlass() -> Path | None:
    """CUTLASS's ``include`` folder: ``$CUTLASS_PATH/include`` or the ``nvidia-cutlass`` wheel's."""
    env = os.environ.get("CUTLASS_PATH")
    candidates = [Path(env) / "include"] if env else []
    candidates += [root / "source" / "include" for root in _wheel_dir("cutlass_library")]
    return next((c for c in candidates if (c / "cutlass" / "cutlass.h").is_file()), None)


def cache_dir() -> Path:
    return Path(os.environ.get("INTERP_KERNEL_CACHE") or Path.home() / ".cache" / "interp" / "kernels")


def build_command(nvcc: Path, include: Path, out: Path) -> list[str]:
    """The ``nvcc`` command line that builds ``gated_up.cu`` into ``out``."""
    root = nvcc.parent.parent
    util = include.parent / "tools" / "util" / "include"
    return [str(nvcc), *FLAGS, f"-I{include}", f"-I{util}", f"-L{root / 'lib'}", f"-L{root / 'lib64'}",
            "-o", str(out), str(SOURCE)]


def why_not(device: torch.device | str | None = None) -> str | None:
    """Why the kernel cannot run here (on ``device``), or None if it can (built or buildable)."""
    if device is not None:
        device = torch.device(device)
        if device.type != "cuda":
            return f"the kernel runs on a CUDA device (here {device})"
        props = torch.cuda.get_device_properties(device)
        if (props.major, props.minor) != (9, 0):
            return f"the kernel is built for Hopper (sm_90a); {props.name} is sm_{props.major}{props.minor}"
    if os.environ.get("INTERP_GATED_UP_LIB"):
        lib = Path(os.environ["INTERP_GATED_UP_LIB"])
        return None if lib.is_file() else f"INTERP_GATED_UP_LIB={lib} is not a file"
    if find_nvcc() is None:
        return "no nvcc (set CUDA_HOME, put nvcc on the PATH, or pip install nvidia-cuda-nvcc)"
    if find_cutlass() is None:
        return "no CUTLASS headers (set CUTLASS_PATH to a CUTLASS checkout, or pip install nvidia-cutlass)"
    return None


def library_path(nvcc: Path, include: Path) -> Path:
    """Where the library built with ``nvcc`` and the CUTLASS headers in ``include`` goes: the cache,
    named by a hash of the source, the flags, the header folder and the compiler's version."""
    version = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), *FLAGS, str(include), version]).encode()).hexdigest()[:16]
    return cache_dir() / f"gated_up-{key}.so"


def build(out: Path, nvcc: Path, include: Path) -> Path:
    """Compile ``gated_up.cu`` into ``out`` (written under a temporary name, then moved into place,
    so that a crash or a second process never leaves half a library there)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        part = Path(tmp) / out.name
        done = subprocess.run(build_command(nvcc, include, part), capture_output=True, text=True)
        if done.returncode != 0:
            raise KernelBuildError(f"nvcc failed on {SOURCE} (exit {done.returncode}):\n"
                                   + (done.stderr or done.stdout)[-3000:])
        os.replace(part, out)
    return out


@functools.lru_cache(maxsize=None)
def library() -> ctypes.CDLL:
    """The kernel, loaded: ``INTERP_GATED_UP_LIB`` as it is, else the cache's build (built first if
    the cache has none)."""
    reason = why_not()
    if reason:
        raise KernelBuildError(f"cannot build benchmarks/gated_up.cu: {reason}")
    path = os.environ.get("INTERP_GATED_UP_LIB")
    if path is None:
        nvcc, include = find_nvcc(), find_cutlass()  # both found: why_not says so
        path = library_path(nvcc, include)
        if not path.is_file():
            build(path, nvcc, include)
    lib = ctypes.CDLL(str(path))
    fn = lib.interp_gated_up
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                   ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p,
                   ctypes.c_int]
    return lib


def operands_reason(x: Tensor, w: Tensor, g: Tensor | None) -> str | None:
    """Why the kernel cannot take these operands (it reads them through raw pointers), or None."""
    if x.dim() != 2 or w.dim() != 2 or x.shape[1] != w.shape[1]:
        return f"shapes x {list(x.shape)}, w {list(w.shape)}"
    if g is not None and tuple(g.shape) != (x.shape[0], w.shape[0]):
        return f"g has shape {list(g.shape)}, not {[x.shape[0], w.shape[0]]}"
    for name, t in (("x", x), ("w", w), ("g", g)):
        if t is not None and (t.dtype != torch.bfloat16 or not t.is_cuda or not t.is_contiguous() or t.data_ptr() % 16):
            return f"{name} must be a contiguous, 16-byte aligned bfloat16 CUDA tensor"
    M, K = x.shape
    if M == 0 or K % 8 or w.shape[0] % 8 or max(M, K, w.shape[0]) >= 2 ** 31:
        return f"M={M}, N={w.shape[0]}, K={K}: rows must be 16-byte multiples and sizes below 2^31"
    return None


def gated_up(x: Tensor, w: Tensor, g: Tensor | None, variant: int = GATED) -> Tensor:
    """``silu(g) * (x @ w.T)`` (``variant`` < 10), or ``x @ w.T`` (``variant`` >= 10, ``g`` None): [M, N]
    for ``x`` [M, K], ``w`` [N, K], all contiguous bfloat16 CUDA tensors."""
    reason = operands_reason(x, w, g)
    if reason:
        raise ValueError(f"gated_up: {reason}")
    if (g is None) != (variant >= 10):
        raise ValueError(f"gated_up: variant {variant} {'takes no' if variant >= 10 else 'needs'} g")
    M, K = x.shape
    N = w.shape[0]
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    err = ctypes.create_string_buffer(512)
    sms = torch.cuda.get_device_properties(x.device).multi_processor_count
    with torch.cuda.device(x.device):
        rc = library().interp_gated_up(variant, x.data_ptr(), w.data_ptr(), None if g is None else g.data_ptr(),
                                       out.data_ptr(), M, N, K, sms, torch.cuda.current_stream().cuda_stream,
                                       err, len(err))
    if rc:
        raise RuntimeError(f"gated_up (variant {variant}): {err.value.decode(errors='replace')}")
    return out
