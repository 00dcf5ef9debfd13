"""The one table of hook points: names a researcher uses (``resid_post``, ``z``...), where they live.

Each hook point is one kind of activation per block. Its *components* are the last dimension(s) of
that activation: residual-stream dimensions for ``resid_*``, ``attn_out`` and ``mlp_out``; head x
head-dimension for ``z`` (one attention head's output before ``W_O``); neurons for ``mlp_post``.

Per hook point the table says:

- ``template``: its TransformerLens name (the bridge's hook point), with ``{layer}``;
- ``module`` and ``reads``: where the plain Hugging Face forward pass finds it, a module path of
  the causal-LM model (standard pre-norm decoders: Llama, Mistral, Qwen2/3) and whether the
  activation is that module's ``output`` or its first ``input``;
- ``unit``: what one component is (``dim``, ``head_dim``, ``neuron``);
- ``heads``: the per-head view, the last dimension split into ``[head, d_head]`` (``z``: the input
  of ``o_proj`` is the heads' outputs side by side); statistics add one unit per head for it;
- ``settable``: whether a plain-tree hook may replace it (``resid_mid`` may not: the layer keeps
  its own reference to the residual, so a replaced norm input would not reach the stream);
- ``inner``: it lives inside the attention or MLP that ``torch.compile`` fuses;
- ``patch``: the activation-patching cells it offers (``pos``: one position; ``head``: one head
  at every position; ``head_pos``: one head at one position).

Reading and setting follow from ``reads`` and ``heads`` (``interp.backends.hf`` does both). Adding
a hook point is one entry here (``CONTRIBUTING.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import ConfigError


@dataclass(frozen=True)
class HookPoint:
    point: str  # short name, e.g. "resid_post"
    template: str  # TransformerLens name with {layer}
    unit: str  # what one component is: "dim", "head_dim", "neuron"
    module: str = ""  # Hugging Face module path with {layer}
    reads: str = "output"  # "output" of the module, or its first "input"
    heads: bool = False  # per-head view: the last dimension as [head, d_head]
    settable: bool = True  # a plain-tree hook may replace the activation
    inner: bool = False  # inside the compiled attention or MLP
    patch: tuple[str, ...] = ()  # activation-patching cells: "pos", "head", "head_pos"

    def name(self, layer: int) -> str:
        return self.template.format(layer=layer)

    def module_path(self, layer: int) -> str:
        return self.module.format(layer=layer)

    @property
    def suffix(self) -> str:
        """The TransformerLens name after ``blocks.{layer}.`` (``attn.hook_z``)."""
        return self.template.split("{layer}.", 1)[-1]


_LAYER = "model.layers.{layer}"
HOOK_POINTS: dict[str, HookPoint] = {
    "resid_pre": HookPoint("resid_pre", "blocks.{layer}.hook_resid_pre", "dim", _LAYER, "input", patch=("pos",)),
    "resid_mid": HookPoint("resid_mid", "blocks.{layer}.hook_resid_mid", "dim", _LAYER + ".post_attention_layernorm",
                           "input", settable=False, patch=("pos",)),
    "resid_post": HookPoint("resid_post", "blocks.{layer}.hook_resid_post", "dim", _LAYER, "output", patch=("pos",)),
    "attn_out": HookPoint("attn_out", "blocks.{layer}.hook_attn_out", "dim", _LAYER + ".self_attn", "output",
                          patch=("pos",)),
    "mlp_out": HookPoint("mlp_out", "blocks.{layer}.hook_mlp_out", "dim", _LAYER + ".mlp", "output", patch=("pos",)),
    "z": HookPoint("z", "blocks.{layer}.attn.hook_z", "head_dim", _LAYER + ".self_attn.o_proj", "input", heads=True,
                   inner=True, patch=("head", "head_pos")),
    "mlp_post": HookPoint("mlp_post", "blocks.{layer}.mlp.hook_post", "neuron", _LAYER + ".mlp.down_proj", "input",
                          inner=True),
}
PATTERN = HookPoint("pattern", "blocks.{layer}.attn.hook_pattern", "head")  # the bridge's eager attention only
# not a component hook point: the final norm's output, which the log-probabilities are computed from
LN_FINAL = HookPoint("ln_final", "ln_final.hook_out", "dim", "model.norm", "output")


@dataclass(frozen=True)
class HookSite:
    """One hook point at one layer."""

    point: str
    layer: int
    name: str
    unit: str


def resolve(points: list[str], n_layers: int, layers: list[int] | None = None) -> list[HookSite]:
    """Every (point, layer) to hook, in layer order. Unknown point names raise with the valid ones."""
    unknown = [p for p in points if p not in HOOK_POINTS]
    if unknown:
        raise ConfigError(f"unknown hook point(s) {unknown}; known: {sorted(HOOK_POINTS)}")
    layers = list(range(n_layers)) if layers is None else list(layers)
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise ConfigError(f"layers {bad} out of range for a model with {n_layers} layers")
    return [HookSite(p, layer, HOOK_POINTS[p].name(layer), HOOK_POINTS[p].unit)
            for layer in layers for p in points]


def parse_name(name: str) -> tuple[str, int]:
    """``blocks.3.hook_resid_post`` -> (``resid_post``, 3)."""
    for hp in HOOK_POINTS.values():
        prefix, suffix = hp.template.split("{layer}")
        if name.startswith(prefix) and name.endswith(suffix):
            mid = name[len(prefix):len(name) - len(suffix)]
            if mid.isdigit():
                return hp.point, int(mid)
    raise ValueError(f"not a known hook name: {name}")


def head_summary(point: str) -> str:
    """The hook the statistics write a per-head point's one-unit-per-head rows under (``z``: ``z_head``)."""
    return f"{point}_head"


def head_points() -> list[str]:
    """The points with a per-head view (``z``), in table order: head heatmaps and the head page."""
    return [p for p, hp in HOOK_POINTS.items() if hp.heads]


def neuron_points() -> list[str]:
    """The points whose components are MLP neurons (``mlp_post``), in table order: block heatmaps and
    the neuron page."""
    return [p for p, hp in HOOK_POINTS.items() if hp.unit == "neuron"]


# The order figures and the viewer list hook points in: the residual stream through a block, each
# sublayer beside its inner point. Points of the table missing here follow in table order.
DISPLAY_ORDER = ("resid_pre", "attn_out", "z", "resid_mid", "mlp_post", "mlp_out", "resid_post")


def display_order() -> list[str]:
    """Every hook name a run's tables can hold, in display order: the points of ``DISPLAY_ORDER``, the
    table's other points, each per-head point followed by its summary (``z``, ``z_head``)."""
    out = []
    for p in [*DISPLAY_ORDER, *(p for p in HOOK_POINTS if p not in DISPLAY_ORDER)]:
        out.append(p)
        if HOOK_POINTS[p].heads:
            out.append(head_summary(p))
    return out
