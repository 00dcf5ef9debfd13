"""The one table of hook points: names a researcher uses (``resid_post``, ``z``...), where they live.

Each hook point is one kind of activation per block. Its *components* are the last dimension(s) of
that activation: residual-stream dimensions for ``resid_*``, ``attn_out`` and ``mlp_out``; head x
head-dimension for ``z`` (one attention head's output before ``W_O``); neurons for ``mlp_post``.

Per hook point the table says:

- ``template``: its TransformerLens name (the bridge's hook point), with ``{layer}``;
- ``unit``: what one component is (``dim``, ``head_dim``, ``neuron``);
- ``heads``: the per-head view, the last dimension split into ``[head, d_head]`` (``z``: the input
  of the output projection is the heads' outputs side by side); statistics add one unit per head;
- ``settable``: whether a plain-tree hook may replace it (``resid_mid`` may not: the layer keeps
  its own reference to the residual, so a replaced norm input would not reach the stream);
- ``inner``: it lives inside the attention or MLP that ``torch.compile`` fuses;
- ``patch``: the activation-patching cells it offers (``pos``: one position; ``head``: one head
  at every position; ``head_pos``: one head at one position).

Where the plain Hugging Face forward pass finds each hook point depends on the model family's
module tree: ``LAYOUTS`` holds one ``Layout`` per family (Llama-like decoders, GPT-2, GPT-NeoX),
each naming, per hook point, a module path of the causal-LM model and whether the activation is
that module's ``output`` or its first ``input``; ``layout_for(model)`` picks a model's. A family
whose tree no layout describes runs on the bridge (``interp.backends``). ``FAMILIES`` states what
differs between the families (norm, positions, parallel attention and MLP, MLP kind, BOS) and what
each hook point means in each; ``README.md`` lists them. Adding a hook point is one entry in
``HOOK_POINTS`` plus its place in each layout; adding a family is one ``Layout`` and one
``Family`` (``CONTRIBUTING.md``: "Add a model family").
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .config import ConfigError


@dataclass(frozen=True)
class HookPoint:
    point: str  # short name, e.g. "resid_post"
    template: str  # TransformerLens name with {layer}
    unit: str  # what one component is: "dim", "head_dim", "neuron"
    heads: bool = False  # per-head view: the last dimension as [head, d_head]
    settable: bool = True  # a plain-tree hook may replace the activation
    inner: bool = False  # inside the compiled attention or MLP
    patch: tuple[str, ...] = ()  # activation-patching cells: "pos", "head", "head_pos"

    def name(self, layer: int) -> str:
        return self.template.format(layer=layer)

    @property
    def suffix(self) -> str:
        """The TransformerLens name after ``blocks.{layer}.`` (``attn.hook_z``)."""
        return self.template.split("{layer}.", 1)[-1]


HOOK_POINTS: dict[str, HookPoint] = {
    "resid_pre": HookPoint("resid_pre", "blocks.{layer}.hook_resid_pre", "dim", patch=("pos",)),
    "resid_mid": HookPoint("resid_mid", "blocks.{layer}.hook_resid_mid", "dim", settable=False, patch=("pos",)),
    "resid_post": HookPoint("resid_post", "blocks.{layer}.hook_resid_post", "dim", patch=("pos",)),
    "attn_out": HookPoint("attn_out", "blocks.{layer}.hook_attn_out", "dim", patch=("pos",)),
    "mlp_out": HookPoint("mlp_out", "blocks.{layer}.hook_mlp_out", "dim", patch=("pos",)),
    "z": HookPoint("z", "blocks.{layer}.attn.hook_z", "head_dim", heads=True, inner=True, patch=("head", "head_pos")),
    "mlp_post": HookPoint("mlp_post", "blocks.{layer}.mlp.hook_post", "neuron", inner=True),
}
PATTERN = HookPoint("pattern", "blocks.{layer}.attn.hook_pattern", "head")  # the bridge's eager attention only
# not a component hook point: the final norm's output, which the log-probabilities are computed from
LN_FINAL = HookPoint("ln_final", "ln_final.hook_out", "dim")


# ---------------------------------------------------------------- module layouts of the plain tree

@dataclass(frozen=True)
class Layout:
    """Where one family's Hugging Face module tree keeps each hook point.

    ``layers``: the path of the decoder layers (``model.layers``); ``final_norm``: the final norm
    (its output is ``ln_final.hook_out``); ``where``: per hook point, ``(module under the layer,
    "output" | "input")`` ("" = the layer itself); a point missing here does not exist in the family
    (GPT-NeoX's parallel attention and MLP have no ``resid_mid``); ``compiled``: the children of a
    layer that ``torch.compile`` wraps (the hooked boundaries stay outside compiled code)."""

    family: str
    model_types: tuple[str, ...]
    layers: str
    final_norm: str
    where: dict[str, tuple[str, str]]
    compiled: tuple[str, ...]

    def points(self) -> list[str]:
        return [p for p in HOOK_POINTS if p in self.where]

    def module_path(self, point: str, layer: int) -> str:
        sub, _ = self.where[point]
        return f"{self.layers}.{layer}" + (f".{sub}" if sub else "")

    def reads(self, point: str) -> str:
        return self.where[point][1]


def _where(attn: str, mlp: str, o_proj: str, down: str, mid_norm: str | None) -> dict[str, tuple[str, str]]:
    out = {"resid_pre": ("", "input"), "resid_post": ("", "output"), "attn_out": (attn, "output"),
           "mlp_out": (mlp, "output"), "z": (f"{attn}.{o_proj}", "input"), "mlp_post": (f"{mlp}.{down}", "input")}
    if mid_norm:
        out["resid_mid"] = (mid_norm, "input")
    return dict(sorted(out.items(), key=lambda kv: list(HOOK_POINTS).index(kv[0])))


LAYOUTS: dict[str, Layout] = {
    "llama": Layout("llama", ("llama", "mistral", "qwen2", "qwen3", "gemma"), "model.layers", "model.norm",
                    _where("self_attn", "mlp", "o_proj", "down_proj", "post_attention_layernorm"),
                    ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")),
    "gpt2": Layout("gpt2", ("gpt2",), "transformer.h", "transformer.ln_f",
                   _where("attn", "mlp", "c_proj", "c_proj", "ln_2"), ("ln_1", "attn", "ln_2", "mlp")),
    "gpt_neox": Layout("gpt_neox", ("gpt_neox",), "gpt_neox.layers", "gpt_neox.final_layer_norm",
                       _where("attention", "mlp", "dense", "dense_4h_to_h", "post_attention_layernorm"),
                       ("input_layernorm", "attention", "post_attention_layernorm", "mlp")),
}
# GPT-NeoX with parallel attention and MLP (Pythia): both read the block's input; there is no
# residual stream between them, so no resid_mid.
_NEOX_PARALLEL = replace(LAYOUTS["gpt_neox"], where=_where("attention", "mlp", "dense", "dense_4h_to_h", None))


def layout_for(config) -> Layout | None:
    """The layout of a Hugging Face model config's module tree (``model.config``), or None where no
    layout describes it."""
    mt = getattr(config, "model_type", None)
    for layout in LAYOUTS.values():
        if mt in layout.model_types:
            if layout.family == "gpt_neox" and getattr(config, "use_parallel_residual", True):
                return _NEOX_PARALLEL
            return layout
    return None


def plain_model_types() -> list[str]:
    """Every ``model_type`` a layout describes (the plain backend's families)."""
    return [mt for layout in LAYOUTS.values() for mt in layout.model_types]


@dataclass(frozen=True)
class HookSite:
    """One hook point at one layer."""

    point: str
    layer: int
    name: str
    unit: str


def resolve(points: list[str], n_layers: int, layers: list[int] | None = None,
            present: list[str] | None = None) -> list[HookSite]:
    """Every (point, layer) to hook, in layer order. Unknown point names raise with the valid ones;
    so do points the model lacks (``present``: the model's points, ``LoadedModel.hook_points``)."""
    unknown = [p for p in points if p not in HOOK_POINTS]
    if unknown:
        raise ConfigError(f"unknown hook point(s) {unknown}; known: {sorted(HOOK_POINTS)}")
    absent = [p for p in points if present is not None and p not in present]
    if absent:
        raise ConfigError(f"hook point(s) {absent} do not exist in this model (it has {present}; GPT-NeoX-style "
                          "blocks with parallel attention and MLP have no resid_mid)")
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
