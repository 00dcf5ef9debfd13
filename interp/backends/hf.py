"""The ``hf`` backend: the model's forward pass as Hugging Face runs it, with plain PyTorch hooks at
the places that TransformerLens hook names denote.

``TransformerBridge`` replaces the modules of the Hugging Face model it wraps (in place) and runs
attention through its own eager re-implementation, so that attention scores and patterns can be
hooked. That costs time on a GPU (see ``benchmarks/README.md``) and rules out fused attention
kernels. Most hook points need none of it: the residual stream, the attention and MLP outputs, the
MLP neurons and the per-head outputs are inputs or outputs of Hugging Face modules, at places that
``interp.hooks.LAYOUTS`` names per family of module trees (Llama-like, GPT-2, GPT-NeoX). ``PlainModel``
is a second module tree of the same model class that *shares every weight tensor* with the loaded
model (no copy: built on the meta device, then pointed at the loaded tensors before the bridge
boots), untouched by the bridge, with an attention kernel of choice (``eager``; ``short``, the
short-sentence Triton kernel of ``interp.kernels.attention``; ``sdpa``...) and optionally
``torch.compile``.

It offers the ``interp.backends.base.Forward`` interface (the part of the bridge's interface that
``interp.engine`` uses): a ``hooks`` context manager taking ``(TransformerLens hook name,
fn(act, hook))`` pairs and a call returning logits. Where each hook name lives (the module, its
output or its first input) is read from the model's ``interp.hooks.Layout``, the per-head view of
``z`` from ``interp.hooks.HOOK_POINTS``; ``ln_final.hook_out`` is the layout's final norm's output.

A hook may return a tensor to replace the activation, except where the table says it is not
``settable`` (``resid_mid``). Attention patterns and scores are not available here: runs that ask
for them use the bridge. While the tree is compiled, hooks inside the compiled attention and MLP
(the table's ``inner`` points: ``attn.hook_z``, ``mlp.hook_post``) are refused: compiled code
would not run hooks added after it was traced.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from typing import Callable, Iterable

import torch
from torch import Tensor, nn

from ..hooks import HOOK_POINTS, LN_FINAL, HookPoint, Layout, layout_for, parse_name, plain_model_types
from ..kernels import attention

log = logging.getLogger(__name__)


def _compile_error_types() -> tuple[type[BaseException], ...]:
    """The errors of a failed compilation (imported when a compiled pass failed: ``torch._dynamo``
    is heavy and loads Triton)."""
    import torch._dynamo.exc as dx

    types: list[type[BaseException]] = [dx.TorchDynamoException]
    try:
        from torch._inductor.exc import InductorError
        types.append(InductorError)
    except ImportError:
        pass
    return tuple(types)


SUPPORTED_MODEL_TYPES = tuple(plain_model_types())
INNER = tuple(hp.suffix for hp in HOOK_POINTS.values() if hp.inner)  # inside the compiled attention / MLP
from ..config import ATTENTION_KERNELS, MLP_KERNELS, ConfigError  # noqa: E402  (the one list of each)


class UnsupportedHook(ValueError):
    """A hook name the plain forward pass cannot provide (the bridge can)."""


def lookup(name: str) -> tuple[HookPoint, int | None] | None:
    """The table entry and layer of a hook name (layer None for ``ln_final.hook_out``), or None."""
    if name == LN_FINAL.template:
        return LN_FINAL, None
    try:
        point, layer = parse_name(name)
    except ValueError:
        return None
    return HOOK_POINTS[point], layer


def supported(name: str) -> bool:
    return lookup(name) is not None


def why_not(model: nn.Module) -> str | None:
    """Why a plain module tree cannot be built for this model, or None if it can."""
    mt = getattr(model.config, "model_type", None)
    layout = layout_for(model.config)
    if layout is None:
        return (f"no module layout of interp.hooks.LAYOUTS describes model type {mt!r} "
                f"(the plain tree knows {', '.join(SUPPORTED_MODEL_TYPES)})")
    missing = [path for path in (layout.layers, layout.final_norm) if _submodule(model, path) is None]
    if missing:
        return f"the {mt} model has no {missing[0]} (its module tree is not the {layout.family} layout)"
    if getattr(model, "hf_quantizer", None) is not None or getattr(model.config, "quantization_config", None):
        return "the model is quantized (a plain module tree would not know its packed weights)"
    return None


def _submodule(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def twin(model: nn.Module) -> nn.Module:
    """A second module tree of ``model``'s class whose parameters and buffers are ``model``'s own
    tensors (shared storage, no copy), with its own config. Call it before anything replaces the
    modules of ``model``."""
    config = copy.deepcopy(model.config)
    with torch.device("meta"):
        tree = type(model)._from_config(config, dtype=model.dtype)
    for attr, named in (("_parameters", model.named_parameters), ("_buffers", model.named_buffers)):
        for name, t in named(remove_duplicate=False):
            mod_name, _, leaf = name.rpartition(".")
            getattr(tree.get_submodule(mod_name), attr)[leaf] = t
    left = [n for n, t in [*tree.named_parameters(), *tree.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"the plain module tree has tensors with no counterpart in the model: {left[:5]}")
    tree.eval()
    return tree


class CompileCounts:
    """What ``torch.compile`` did for a ``PlainModel``: ``graphs`` compiled (the first shapes, then
    one more per recompilation) and ``graph_calls``, the calls of compiled graphs so far. A pass
    that ran compiled calls one graph per compiled module (more where a module's code breaks into
    several graphs); a module that ``torch._dynamo`` gave up on (a recompilation limit hit) runs its
    own forward and calls none, so the calls per pass show whether a pass ran compiled."""

    def __init__(self):
        self.graphs = 0
        self.graph_calls = 0

    def counting(self, backend):
        """``backend`` (a ``torch.compile`` backend: a name or a callable) counting what it does."""
        from torch._dynamo import lookup_backend

        inner = lookup_backend(backend) if isinstance(backend, str) else backend

        def compile_graph(gm, example_inputs):
            compiled = inner(gm, example_inputs)
            self.graphs += 1

            def call(*args):
                self.graph_calls += 1
                return compiled(*args)

            if getattr(compiled, "_boxed_call", False):  # called with one list of inputs: passed on as is
                call._boxed_call = True
            return call

        return compile_graph


class PlainModel:
    """Hugging Face forward pass with plain hooks at TransformerLens hook names (module docstring)."""

    name = "hf"
    private_unembedding = True  # no hook sees its unembedding's output: it may be overwritten in place

    def __init__(self, model: nn.Module, attn: str = "sdpa"):
        reason = why_not(model)
        if reason:
            raise UnsupportedHook(f"no plain forward pass for this model: {reason}")
        self.original_model = model
        self.layout: Layout = layout_for(model.config)
        self.layers = model.get_submodule(self.layout.layers)
        self.n_heads = model.config.num_attention_heads
        self.compiled = False
        self.compile_error: str | None = None  # why compilation was given up, if it was
        self._eager: list[tuple[nn.Module, object]] = []  # (module, its own forward) while compiled
        self.counts = CompileCounts()
        self.mlp = "compiled"  # what ``compile`` puts in each layer's MLP (``set_mlp``)
        self.set_attention(attn)

    def set_attention(self, attn: str) -> None:
        if attn not in ATTENTION_KERNELS:
            raise ValueError(f"attention kernel {attn!r} is not one of {ATTENTION_KERNELS}")
        m = self.original_model
        if attn == attention.NAME:
            attention.register()
        if hasattr(m, "set_attn_implementation"):
            m.set_attn_implementation(attn)  # checks that the kernel is installed and supported
        else:
            m.config._attn_implementation = attn
        self.attn = m.config._attn_implementation

    def why_no_fused_mlp(self) -> str | None:
        """Why ``set_mlp("fused")`` cannot serve this model here, or None if it can."""
        from .. import kernels

        if self.layout.family != "llama":
            return f"the {self.layout.family} MLP is not a gated MLP"
        weight = self.original_model.get_output_embeddings().weight
        dev = weight.device
        if not kernels.available(dev):
            return f"the kernel needs Triton on a CUDA device (here {dev})"
        if dev.type == "cuda":
            props = torch.cuda.get_device_properties(dev)
            if props.major < 9 or props.shared_memory_per_block_optin < 200 * 1024:
                return (f"the kernel's TMA tiles need a Hopper-class GPU (compute capability 9 or more and "
                        f"200 KB of shared memory a block; {props.name} has {props.major}.{props.minor} and "
                        f"{props.shared_memory_per_block_optin // 1024} KB)")
        from ..kernels.mlp import DTYPES, mlp_reason  # imports Triton (installed: checked above)

        if weight.dtype not in DTYPES:
            return f"the model is {weight.dtype}; the kernel takes {' and '.join(map(str, DTYPES))}"
        return mlp_reason(self.layers[0].get_submodule("mlp"), self.original_model.config)

    def set_mlp(self, kind: str) -> None:
        """What ``compile`` puts in each layer's MLP: ``compiled`` (``torch.compile``) or ``fused``
        (``interp.kernels.mlp.FusedMLP``: gate and up with ``silu(g) * u`` in one kernel, then the
        down product; inputs the kernel cannot take run the compiled MLP). A tree compiled with the
        other kind goes back to eager modules first."""
        if kind not in MLP_KERNELS:
            raise ValueError(f"MLP kernel {kind!r} is not one of {MLP_KERNELS}")
        if kind == self.mlp:
            return
        if kind == "fused":
            reason = self.why_no_fused_mlp()
            if reason:
                raise ConfigError(f"analysis.mlp=fused: {reason}; use analysis.mlp=compiled")
        self.uncompile()
        self.mlp = kind

    def compile(self, **kwargs) -> None:
        """``torch.compile`` each decoder layer's norms, attention and MLP (the hooked boundaries
        stay outside the compiled code, so hooks cost no recompilation). Sequence lengths are
        dynamic: one compilation serves every batch shape after the first two. With ``set_mlp("fused")``
        each MLP runs ``interp.kernels.mlp.FusedMLP`` instead, its compiled forward the fallback."""
        if self.compiled:
            return
        self.compile_error = None
        kwargs["backend"] = self.counts.counting(kwargs.get("backend", "inductor"))
        children = [(layer, c) for layer in self.layers for c in self.layout.compiled]
        final = self.original_model.get_submodule(self.layout.final_norm)
        for child in [*(layer.get_submodule(c) for layer, c in children), final]:
            self._eager.append((child, child.__dict__.get("forward")))
            child.forward = torch.compile(child.forward, **kwargs)
        if self.mlp == "fused":
            from ..kernels.mlp import FusedMLP

            for layer, c in children:
                if c == "mlp":
                    mlp = layer.get_submodule(c)
                    mlp.forward = FusedMLP(mlp, mlp.forward)
        self.compiled = True

    @property
    def n_compiled(self) -> int:
        """How many compiled modules a pass runs (0 uncompiled): a pass that ran compiled calls at
        least this many compiled graphs (``counts``). A fused MLP calls its compiled forward only
        for inputs its kernel cannot take."""
        fused = len(self.layers) if self.compiled and self.mlp == "fused" else 0
        return len(self._eager) - fused

    def uncompile(self) -> None:
        """Back to the modules' own forward methods (and no compilation error on record)."""
        self.compile_error = None
        for child, own in self._eager:
            if own is None:
                del child.forward
            else:
                child.forward = own
        self._eager, self.compiled = [], False

    # ------------------------------------------------------------ hooks
    def _register(self, name: str, fn: Callable) -> torch.utils.hooks.RemovableHandle:
        """A PyTorch hook where the hook-point table puts ``name``: on the module's output, or on
        its first input (per head where the table has a per-head view)."""
        found = lookup(name)
        if found is None:
            raise UnsupportedHook(f"hook {name!r} is not available without the bridge "
                                  "(attention patterns and scores need its eager attention)")
        hp, layer = found
        if layer is None:  # ln_final.hook_out
            return self.original_model.get_submodule(self.layout.final_norm).register_forward_hook(_out(fn, name))
        if hp.point not in self.layout.where:
            raise UnsupportedHook(f"hook {name!r}: the {self.layout.family} module tree has no {hp.point} "
                                  f"(its hook points: {', '.join(self.layout.points())})")
        if layer >= len(self.layers):
            raise UnsupportedHook(f"hook {name!r}: the model has {len(self.layers)} layers")
        if self.compiled and hp.inner:
            raise UnsupportedHook(f"hook {name!r} is inside the compiled attention or MLP; "
                                  "use an uncompiled tree (analysis.compile=false) for it")
        module = self.original_model.get_submodule(self.layout.module_path(hp.point, layer))
        if self.layout.reads(hp.point) == "output":
            return module.register_forward_hook(_out(fn, name))
        heads = self.n_heads if hp.heads else None
        return module.register_forward_pre_hook(_pre_first(fn, name, heads=heads, readonly=not hp.settable),
                                                with_kwargs=True)

    @contextlib.contextmanager
    def hooks(self, fwd_hooks: Iterable[tuple[str, Callable]] = ()):
        """Hooks attached for the duration of the block (the bridge's ``hooks`` signature)."""
        handles = []
        try:
            for name, fn in fwd_hooks:
                handles.append(self._register(name, fn))
            yield self
        finally:
            for h in handles:
                h.remove()

    def run_with_hooks(self, tokens: Tensor, fwd_hooks: Iterable[tuple[str, Callable]] = (),
                       return_type: str = "logits", attention_mask: Tensor | None = None) -> Tensor | None:
        """One pass with hooks attached for its duration (the bridge's ``run_with_hooks``)."""
        with self.hooks(fwd_hooks=fwd_hooks):
            return self(tokens, attention_mask=attention_mask, return_type=return_type)

    def __call__(self, tokens: Tensor, attention_mask: Tensor | None = None, return_type: str = "logits",
                 logits_to_keep: int = 0) -> Tensor | None:
        """Logits of a forward pass (``return_type=None``: the decoder alone, its final norm included,
        and no unembedding; hooks fire all the same). If compilation fails (no compiler, an unsupported operation),
        that is no fault of the input: the tree goes back to eager modules for good, the reason is
        kept in ``compile_error`` and logged, and the pass is run again (hooks fire again too)."""
        if return_type not in ("logits", None):
            raise ValueError(f"return_type={return_type!r}: the plain forward pass returns logits or None")
        try:
            if return_type is None:
                self.original_model.base_model(input_ids=tokens, attention_mask=attention_mask, use_cache=False)
                return None
            out = self.original_model(input_ids=tokens, attention_mask=attention_mask, use_cache=False,
                                      logits_to_keep=logits_to_keep)
        except Exception as err:
            if not self.compiled or not isinstance(err, _compile_error_types()):
                raise
            self.uncompile()
            self.compile_error = f"{type(err).__name__}: {err}"[:500]
            log.warning("torch.compile failed; the analysis continues with eager modules: %s", self.compile_error)
            return self(tokens, attention_mask, return_type, logits_to_keep)
        return out.logits


class _Hook:
    """What a TransformerLens hook function receives as its second argument (``hook.name``)."""

    def __init__(self, name: str):
        self.name = name


def _out(fn: Callable, name: str):
    """Forward hook: the module's output (the first element of a tuple output)."""
    h = _Hook(name)

    def hook(module, args, output):
        act = output[0] if isinstance(output, tuple) else output
        new = fn(act, h)
        if new is None:
            return None
        return (new, *output[1:]) if isinstance(output, tuple) else new
    return hook


def _pre_first(fn: Callable, name: str, heads: int | None = None, readonly: bool = False):
    """Forward pre-hook on the module's first input (positional or ``hidden_states=``); with
    ``heads`` the input is shown as ``[..., head, d_head]``."""
    h = _Hook(name)

    def hook(module, args, kwargs):
        positional = len(args) > 0
        act = args[0] if positional else kwargs["hidden_states"]
        shown = act.unflatten(-1, (heads, -1)) if heads else act
        new = fn(shown, h)
        if new is None:
            return None
        if readonly:
            raise UnsupportedHook(f"{name} can be read but not replaced without the bridge")
        if heads:
            new = new.flatten(-2)
        if positional:
            return (new, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": new}
    return hook


def compile_wanted(acfg, device: torch.device, n_pairs: int) -> bool:
    """``analysis.compile`` resolved: ``auto`` compiles on CUDA, and on the CPU for runs of at least
    ``analysis.compile_cpu_min_pairs`` pairs."""
    comp = acfg.compile
    if comp not in ("auto", True, False):
        raise ValueError(f"analysis.compile={comp!r} is not one of auto, true, false")
    if comp != "auto":
        return comp
    return device.type == "cuda" or n_pairs >= int(acfg.compile_cpu_min_pairs)


class HFBackend:
    """The plain tree (``LoadedModel.plain``) as a ``Backend``: attention kernel ``analysis.attn``
    (``auto``: ``short`` on CUDA, eager elsewhere), ``torch.compile``d where ``analysis.compile``
    says, never with hooks inside the compiled attention or MLP."""

    name = "hf"

    def why_not(self, lm, hook_names: list[str]) -> str | None:
        if lm.plain_reason is not None:
            return lm.plain_reason
        bad = [n for n in hook_names if not supported(n)]
        if bad:
            return f"hook {bad[0]} needs the bridge"
        layout = lm.plain.layout
        absent = [n for n in hook_names if (f := lookup(n)) and f[1] is not None and f[0].point not in layout.where]
        return f"hook {absent[0]} has no place in the {layout.family} module tree" if absent else None

    def prepare(self, lm, acfg, hook_names: list[str], n_pairs: int = 0):
        facts: dict = {"backend": "hf", "layout": lm.plain.layout.family}
        lm.plain.set_attention(attention.resolve(acfg.attn, lm.device))
        want = compile_wanted(acfg, lm.device, n_pairs)
        inner = [n for n in hook_names if n.endswith(INNER)]
        if want and inner:
            facts["compile_skipped"] = f"hook {inner[0]} is inside the attention or MLP that compilation fuses"
        mlp = acfg.get("mlp", "compiled")
        if mlp != "compiled" and not (want and not inner):
            facts["mlp_skipped"] = f"analysis.mlp={mlp} is the compiled tree's MLP, and this tree is not compiled"
        if want and not inner:
            lm.plain.set_mlp(mlp)  # refused with the reason where the kernel cannot run
            lm.plain.compile()  # kept as it is when already compiled
        else:
            lm.plain.uncompile()
        facts = {**facts, "attention": lm.plain.attn, "compiled": lm.plain.compiled}
        if lm.plain.compiled and lm.plain.mlp != "compiled":
            facts["mlp"] = lm.plain.mlp
        return lm.plain, facts
