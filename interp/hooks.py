"""Hook points: names a researcher uses (``resid_post``, ``z``...) -> TransformerLens hook names.

Each hook point is one kind of activation per block. Its *components* are the last dimension(s) of
that activation: residual-stream dimensions for ``resid_*``, ``attn_out`` and ``mlp_out``; head x
head-dimension for ``z`` (one attention head's output before ``W_O``); neurons for ``mlp_post``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HookPoint:
    point: str  # short name, e.g. "resid_post"
    template: str  # TransformerLens name with {layer}
    unit: str  # what one component is: "dim", "head_dim", "neuron"

    def name(self, layer: int) -> str:
        return self.template.format(layer=layer)


HOOK_POINTS: dict[str, HookPoint] = {
    "resid_pre": HookPoint("resid_pre", "blocks.{layer}.hook_resid_pre", "dim"),
    "resid_mid": HookPoint("resid_mid", "blocks.{layer}.hook_resid_mid", "dim"),
    "resid_post": HookPoint("resid_post", "blocks.{layer}.hook_resid_post", "dim"),
    "attn_out": HookPoint("attn_out", "blocks.{layer}.hook_attn_out", "dim"),
    "mlp_out": HookPoint("mlp_out", "blocks.{layer}.hook_mlp_out", "dim"),
    "z": HookPoint("z", "blocks.{layer}.attn.hook_z", "head_dim"),
    "mlp_post": HookPoint("mlp_post", "blocks.{layer}.mlp.hook_post", "neuron"),
}
PATTERN = HookPoint("pattern", "blocks.{layer}.attn.hook_pattern", "head")


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
        raise ValueError(f"unknown hook point(s) {unknown}; known: {sorted(HOOK_POINTS)}")
    layers = list(range(n_layers)) if layers is None else list(layers)
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise ValueError(f"layers {bad} out of range for a model with {n_layers} layers")
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
