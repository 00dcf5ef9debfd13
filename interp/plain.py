"""The model's forward pass as Hugging Face runs it, with plain PyTorch hooks at the places that
TransformerLens hook names denote.

``TransformerBridge`` replaces the modules of the Hugging Face model it wraps (in place) and runs
attention through its own eager re-implementation, so that attention scores and patterns can be
hooked. That costs time on a GPU (see ``benchmarks/README.md``) and rules out fused attention
kernels. Most hook points need none of it: the residual stream, the attention and MLP outputs, the
MLP neurons and the per-head outputs are inputs or outputs of Hugging Face modules. ``PlainModel``
is a second module tree of the same model class that *shares every weight tensor* with the loaded
model (no copy: built on the meta device, then pointed at the loaded tensors before the bridge
boots), untouched by the bridge, with an attention kernel of choice (``eager``; ``short``, the
short-sentence Triton kernel of ``interp.attention``; ``sdpa``...) and optionally ``torch.compile``.

It offers the part of the bridge's interface that ``interp.engine.forward`` uses: a ``hooks``
context manager taking ``(TransformerLens hook name, fn(act, hook))`` pairs and a call returning
logits. Which hook names map where (standard pre-norm decoders: Llama, Mistral, Qwen2/3):

==========================  =================================================================
``blocks.L.hook_resid_pre``  input of decoder layer L
``blocks.L.hook_resid_mid``  input of layer L's ``post_attention_layernorm`` (read only)
``blocks.L.hook_resid_post`` output of decoder layer L
``blocks.L.hook_attn_out``   output of layer L's ``self_attn`` (after ``o_proj``)
``blocks.L.hook_mlp_out``    output of layer L's ``mlp``
``blocks.L.attn.hook_z``     input of ``o_proj``, viewed as ``[batch, pos, head, d_head]``
``blocks.L.mlp.hook_post``   input of ``mlp.down_proj`` (``act(gate) * up``)
``ln_final.hook_out``        output of the final norm
==========================  =================================================================

A hook may return a tensor to replace the activation, except at ``resid_mid`` (the layer keeps its
own reference to the residual, so a replaced norm input would not reach the residual stream).
Attention patterns and scores are not available here: runs that ask for them use the bridge.
While the tree is compiled, hooks inside the compiled attention and MLP (``attn.hook_z``,
``mlp.hook_post``) are refused: compiled code would not run hooks added after it was traced.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import re
from typing import Callable, Iterable

import torch
from torch import Tensor, nn

from interp import attention

log = logging.getLogger(__name__)


def _compile_error_types() -> tuple[type[BaseException], ...]:
    import torch._dynamo.exc as dx

    types: list[type[BaseException]] = [dx.TorchDynamoException]
    try:
        from torch._inductor.exc import InductorError
        types.append(InductorError)
    except ImportError:
        pass
    return tuple(types)


_COMPILE_ERRORS = _compile_error_types()
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
_NAME = re.compile(r"^blocks\.(\d+)\.(hook_resid_pre|hook_resid_mid|hook_resid_post|hook_attn_out|"
                   r"hook_mlp_out|attn\.hook_z|mlp\.hook_post)$")
INNER = ("attn.hook_z", "mlp.hook_post")  # hooks on modules inside the compiled attention / MLP
ATTENTION_KERNELS = ("eager", "short", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")


class UnsupportedHook(ValueError):
    """A hook name the plain forward pass cannot provide (the bridge can)."""


def supported(name: str) -> bool:
    return name == "ln_final.hook_out" or _NAME.match(name) is not None


def why_not(model: nn.Module) -> str | None:
    """Why a plain module tree cannot be built for this model, or None if it can."""
    mt = getattr(model.config, "model_type", None)
    if mt not in SUPPORTED_MODEL_TYPES:
        return f"model type {mt!r} is not one of {SUPPORTED_MODEL_TYPES}"
    if not hasattr(getattr(model, "model", None), "layers"):
        return "the model has no model.layers"
    if getattr(model, "hf_quantizer", None) is not None or getattr(model.config, "quantization_config", None):
        return "the model is quantized (a plain module tree would not know its packed weights)"
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


class PlainModel:
    """Hugging Face forward pass with plain hooks at TransformerLens hook names (module docstring)."""

    def __init__(self, model: nn.Module, attn: str = "sdpa"):
        reason = why_not(model)
        if reason:
            raise UnsupportedHook(f"no plain forward pass for this model: {reason}")
        self.original_model = model
        self.layers = model.model.layers
        self.n_heads = model.config.num_attention_heads
        self.compiled = False
        self.compile_error: str | None = None  # why compilation was given up, if it was
        self._eager: list[tuple[nn.Module, object]] = []  # (module, its own forward) while compiled
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

    def compile(self, **kwargs) -> None:
        """``torch.compile`` each decoder layer's norms, attention and MLP (the hooked boundaries
        stay outside the compiled code, so hooks cost no recompilation). Sequence lengths are
        dynamic: one compilation serves every batch shape after the first two."""
        if self.compiled:
            return
        self.compile_error = None
        children = [c for layer in self.layers
                    for c in (layer.input_layernorm, layer.self_attn, layer.post_attention_layernorm, layer.mlp)]
        for child in [*children, self.original_model.model.norm]:
            self._eager.append((child, child.__dict__.get("forward")))
            child.forward = torch.compile(child.forward, **kwargs)
        self.compiled = True

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
        if name == "ln_final.hook_out":
            return self.original_model.model.norm.register_forward_hook(_out(fn, name))
        m = _NAME.match(name)
        if m is None:
            raise UnsupportedHook(f"hook {name!r} is not available without the bridge "
                                  "(attention patterns and scores need its eager attention)")
        if int(m.group(1)) >= len(self.layers):
            raise UnsupportedHook(f"hook {name!r}: the model has {len(self.layers)} layers")
        kind = m.group(2)
        if self.compiled and kind in INNER:
            raise UnsupportedHook(f"hook {name!r} is inside the compiled attention or MLP; "
                                  "use an uncompiled tree (analysis.compile=false) for it")
        layer = self.layers[int(m.group(1))]
        if kind == "hook_resid_pre":
            return layer.register_forward_pre_hook(_pre_first(fn, name), with_kwargs=True)
        if kind == "hook_resid_mid":
            return layer.post_attention_layernorm.register_forward_pre_hook(_pre_first(fn, name, readonly=True),
                                                                            with_kwargs=True)
        if kind == "hook_resid_post":
            return layer.register_forward_hook(_out(fn, name))
        if kind == "hook_attn_out":
            return layer.self_attn.register_forward_hook(_out(fn, name))
        if kind == "hook_mlp_out":
            return layer.mlp.register_forward_hook(_out(fn, name))
        if kind == "attn.hook_z":
            return layer.self_attn.o_proj.register_forward_pre_hook(_pre_first(fn, name, heads=self.n_heads),
                                                                    with_kwargs=True)
        return layer.mlp.down_proj.register_forward_pre_hook(_pre_first(fn, name), with_kwargs=True)

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
                self.original_model.model(input_ids=tokens, attention_mask=attention_mask, use_cache=False)
                return None
            out = self.original_model(input_ids=tokens, attention_mask=attention_mask, use_cache=False,
                                      logits_to_keep=logits_to_keep)
        except _COMPILE_ERRORS as err:
            if not self.compiled:
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
