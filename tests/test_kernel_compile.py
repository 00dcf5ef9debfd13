"""Every Triton kernel of ``interp.kernels`` compiles for a Hopper GPU (sm_90), on this machine.

The other kernel tests run the kernels through Triton's interpreter on the CPU, which accepts some
code the GPU compiler refuses (a module-level constant read inside a kernel, for one). Here each
kernel's wrapper is called with small CPU tensors while the kernel object is replaced by a recorder
of its launches; every recorded launch (its argument types, constants, the launcher's specialisation
on divisibility by 16, and ``num_warps``) is then compiled ahead of time for
``GPUTarget("cuda", 90, 32)``, down to a cubin, with no GPU present.

The compiler cannot run in a process where the interpreter is on (the CPU test run sets
``TRITON_INTERPRET=1``): there ``test_every_kernel_compiles_for_hopper`` runs this file again in a
process without it.
"""

import os
import sys

import pytest
import torch

from interp import kernels

pytestmark = pytest.mark.skipif(not kernels.have_triton(), reason="needs Triton")
aot = pytest.mark.skipif(kernels.INTERPRET, reason="compiled in a process without the interpreter "
                                                   "(test_every_kernel_compiles_for_hopper)")


@pytest.mark.skipif(not kernels.INTERPRET, reason="the tests below run in this process")
def test_every_kernel_compiles_for_hopper():
    from tests.conftest import REPO, _run

    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1"}
    r = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", __file__], env, 600, REPO)
    import re

    # this test skips itself there
    assert r.returncode == 0 and re.search(r"\b7 passed, 1 skipped\b", r.stdout), r.stdout[-3000:]


class _Recorder:
    """Stands in for a kernel: ``kernel[grid](*args, **kwargs)`` keeps the launch instead of running it."""

    def __init__(self, kernel):
        self.kernel = kernel
        self.launches: list[tuple[tuple, dict]] = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append((args, kwargs))


def _signature(fn, args: tuple, kwargs: dict) -> tuple[dict, dict, dict]:
    """The launch's types, constants and attributes as Triton's own launcher specialises them: an
    integer argument divisible by 16 and a pointer aligned to 16 bytes are compiled as such
    (``tt.divisibility``), an integer 1 as a constant, unless the kernel opts out per argument."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend

    values = dict(zip(fn.arg_names, args))
    values.update({k: v for k, v in kwargs.items() if k in fn.arg_names})
    sig, consts, attrs = {}, {}, {}
    for i, p in enumerate(fn.params):
        v = values[p.name]
        if p.is_constexpr:
            sig[p.name], consts[p.name] = "constexpr", v
            continue
        # the launcher's other cases, which no kernel here uses: annotated types, tuple arguments
        assert not p.annotation_type, (fn.__name__, p.name, "annotated: not reproduced here")
        kind, desc = native_specialize_impl(BaseBackend, v, p.is_const, not p.do_not_specialize,
                                            not p.do_not_specialize_on_alignment)
        assert not isinstance(kind, tuple), (fn.__name__, p.name, "a tuple argument: not reproduced here")
        sig[p.name] = kind
        if kind == "constexpr":
            consts[p.name] = v
        elif isinstance(desc, str):
            attrs[(i,)] = BaseBackend.parse_attr(desc)
    return sig, consts, attrs


def compile_recorded(monkeypatch, module, name: str, call) -> int:
    """Run ``call()`` with ``module.name`` recording its launches, then compile each for sm_90."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    rec = _Recorder(getattr(module, name))
    monkeypatch.setattr(module, name, rec)
    call()
    assert rec.launches, f"{name} was never launched"
    fn = rec.kernel
    for args, kwargs in rec.launches:
        sig, consts, attrs = _signature(fn, args, kwargs)
        options = {k: kwargs[k] for k in ("num_warps", "num_stages") if k in kwargs}
        compiled = triton.compile(ASTSource(fn, sig, consts, attrs), target=GPUTarget("cuda", 90, 32),
                                  options=options)
        assert compiled.asm["cubin"], name
        # an H100's shared memory per block (opt-in): a kernel needing more compiles but cannot launch
        assert compiled.metadata.shared <= 232448, (name, sig, compiled.metadata.shared)
    return len(rec.launches)


def _stat():
    from interp.kernels import statistics

    return statistics


@aot
@pytest.mark.parametrize("K,span,dtype", [(3, False, torch.bfloat16), (0, True, torch.float32)])
def test_the_pair_kernel_compiles_for_hopper(monkeypatch, K, span, dtype):
    from tests.test_fused import activations, make_batch

    b = make_batch(6, 7, K, span, "cpu")
    acts = [activations(b, 32, seed=s, dtype=dtype) for s in range(9)]  # two launches: 8 sites, then 1
    n = compile_recorded(monkeypatch, _stat(), "_pair_values_kernel",
                         lambda: _stat().pair_values(acts, b, K, 15, torch.zeros(9, 32)))
    assert n == 2


@aot
def test_the_histogram_group_sums_and_spread_kernels_compile_for_hopper(monkeypatch):
    from interp.stats import Sums
    from tests.test_fused import activations, make_batch

    K = _stat()
    b = make_batch(6, 7, 2, False, "cpu")
    acts = [activations(b, 32, seed=s, dtype=torch.bfloat16) for s in range(3)]
    compile_recorded(monkeypatch, K, "_abs_hist_kernel", lambda: K.abs_histogram_(
        torch.zeros(3, 2000, dtype=torch.float64), acts, torch.tensor([0, 7]), b.mask, -12.0, 8.0, 1e-12, 7.999))
    st = Sums.zeros((4, 3, 5, 3, 32), torch.zeros(4, 1, 5, 3, 32, dtype=torch.float64))
    x = torch.randn(6, 2, 5, 3, 32)
    compile_recorded(monkeypatch, K, "_group_sums_kernel", lambda: K.group_sums_(st, 1, x, K.segments(b, 3)))
    spread_state = Sums.zeros((4, 32), torch.zeros(4, 32, dtype=torch.float64))
    compile_recorded(monkeypatch, K, "_fold_spread_kernel", lambda: K.fold_spread_(
        spread_state, 1, torch.randn(2, 6, 2, 32), torch.tensor(40.0, dtype=torch.float64), torch.zeros(4, 32),
        torch.rand(2, 6, 32)))


@aot
def test_the_log_probability_and_attention_kernels_compile_for_hopper(monkeypatch):
    from interp.kernels import logprobs, short_attention

    # a vocabulary not divisible by 16, and one that is (as real ones are: 49,152, 128,256)
    n = compile_recorded(monkeypatch, logprobs, "_target_logprob_kernel", lambda: [logprobs.target_logprobs(
        torch.randn(5, V, dtype=torch.bfloat16), torch.randint(0, V, (5,))) for V in (1000, 1024)])
    assert n == 2
    q, k, v = torch.randn(2, 8, 9, 64, dtype=torch.bfloat16), *torch.randn(2, 2, 2, 9, 64, dtype=torch.bfloat16)
    mask = torch.zeros(2, 1, 9, 9, dtype=torch.bfloat16)
    compile_recorded(monkeypatch, short_attention, "_short_attention_kernel",
                     lambda: short_attention.short_attention(q, k, v, mask, 0.125))


@aot
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_gated_mlp_kernel_compiles_for_hopper(monkeypatch, dtype):
    from interp.kernels import mlp

    x, wg, wu = torch.randn(300, 256, dtype=dtype), *torch.randn(2, 512, 256, dtype=dtype)
    compile_recorded(monkeypatch, mlp, "_gated_up_kernel", lambda: mlp.gated_up(x, wg, wu))


@aot
def test_the_recorder_catches_what_only_the_gpu_compiler_refuses(monkeypatch, tmp_path):
    """A kernel that reads a plain module constant runs under the interpreter but fails to compile
    for the GPU: the harness above reports it."""
    import importlib.util

    from triton.compiler.errors import CompilationError

    path = tmp_path / "bad_kernel.py"
    path.write_text("import triton\nimport triton.language as tl\nLOWEST = -1.0e30\n\n"
                    "@triton.jit\ndef bad(X, BLOCK: tl.constexpr):\n"
                    "    tl.store(X + tl.arange(0, BLOCK), tl.full([BLOCK], LOWEST, tl.float32))\n\n"
                    "def launch(x):\n    bad[(1,)](x, BLOCK=16)\n")
    spec = importlib.util.spec_from_file_location("bad_kernel", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with pytest.raises(CompilationError, match="global variable LOWEST"):
        compile_recorded(monkeypatch, mod, "bad", lambda: mod.launch(torch.zeros(16)))
