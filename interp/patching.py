"""Causal tests of components: ablation and activation patching on minimal pairs (TransformerLens hooks).

Stability (``interp.stats``) says which components barely change between the two sentences of a
pair. This module asks what those components *do*, by intervening on them during the forward pass.

Ablation
    Replace chosen components (a residual dimension, a head dimension of ``hook_z``, an MLP neuron;
    see ``interp.hooks``) by a value that carries no information about the sentence, in both
    sentences of every pair, and measure how the error-detection margin
    ``log P(correct) - log P(wrong)`` moves. Replacement values (``mode``):

    - ``mean``: the component's mean activation over a reference set (the run's own ``act_mean``:
      every sentence token of the run, BOS excluded; or a mean computed over reference sentences);
    - ``resample``: the component's value in another sentence of the same batch (another pair, either
      sentence) at the same model-input position, taken from the unablated (clean) forward pass. The
      donor is drawn uniformly and seeded, one donor per (row, position) shared by all components, so
      a resampled row is a coherent piece of one other sentence. Where no other pair has a real
      token at that position, the component's mean is used instead;
    - ``zero``: 0.

    Positions (``where``): ``edit`` (the edited token), ``after`` (every token after it), ``all``
    (every sentence token; BOS is never ablated). A batch of pairs is ablated in one forward pass;
    ``resample`` needs one extra clean pass per batch (shared by every ablation of that batch).

Activation patching
    Run one sentence of a pair (the *base* run) and overwrite one activation with its value from
    the other sentence (the *source* run), then measure how far the output moves towards the source
    run. Both sentences have the same length and the same tokens except at the edit, so positions
    align. Directions: ``denoising`` = base is the wrong sentence (b), source the correct one (a);
    ``noising`` = base a, source b. The normalized effect is

        (metric(patched) - metric(base)) / (metric(source) - metric(base))

    0 = no effect, 1 = the patched run scores like the source run. Metrics are TransformerLens style
    callables from logits to a value per row; ``logprob`` scores the base sentence's tokens, and
    ``margin`` is the pair's margin with the base sentence's log-prob taken from the patched run.
    The two differ only by sign and a constant, so their normalized values coincide; the raw
    values (``patched``, ``base``, ``source``) are in each metric's own units. Positions before
    the edit carry identical activations in both runs, so patching there changes nothing, and the
    edit token's own probability depends only on the prefix: what patching can move is the
    log-probability of the tokens after the edit.

    ``generic_patch`` mirrors ``transformer_lens.patching.generic_activation_patch`` (one generic
    function + small setters ``(activation, index, source_activation) -> activation``), but runs
    many cells (e.g. every (layer, position)) in one forward pass by stacking copies of the base
    input, and passes an attention mask. ``tests/test_patching.py`` checks that it gives the same
    numbers as ``transformer_lens.patching`` (which works with a ``TransformerBridge`` in TL 4.3).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from .engine import Batch, forward, sentence_logprobs
from .hooks import HOOK_POINTS

MODES = ("mean", "resample", "zero")
WHERE = ("edit", "after", "all")
DIRECTIONS = ("denoising", "noising")
METRICS = ("margin", "logprob")

Metric = Callable[[Float[Tensor, "batch pos d_vocab"]], Float[Tensor, "batch"]]
Setter = Callable[[Tensor, tuple, Tensor], Tensor]
HookFn = Callable[[Tensor, object], Tensor | None]


# ===================================================================== ablation: values and setters

def where_mask(batch: Batch, where: str) -> Bool[Tensor, "VB T"]:
    """Positions of every row of ``batch`` (all variants) that an ablation ``where`` touches."""
    if where not in WHERE:
        raise ValueError(f"where={where!r} is not one of {WHERE}")
    t = batch.positions()
    if where == "edit":
        m = t == batch.edit[:, None]
    elif where == "after":
        m = batch.after_mask()
    else:
        m = (t >= 1) & (t <= batch.last[:, None])
    return m.repeat(batch.n_variants, 1) & batch.mask


def zero_values(cols: Float[Tensor, "R T n"], **_) -> Float[Tensor, "R T n"]:
    """Zero ablation."""
    return torch.zeros_like(cols)


def mean_values(cols: Float[Tensor, "R T n"], *, mean: Float[Tensor, "n"], **_) -> Float[Tensor, "R T n"]:
    """Mean ablation: the reference mean of each component, everywhere."""
    return mean.to(cols)[None, None, :].expand_as(cols)


def resample_values(cols: Float[Tensor, "R T n"], *, donor: Int[Tensor, "R T"],
                    clean: Float[Tensor, "R T n"], mean: Float[Tensor, "n"], **_) -> Float[Tensor, "R T n"]:
    """Resample ablation: row ``donor[r, t]``'s clean value at position ``t``; -1 = no donor (mean)."""
    R, T = donor.shape
    t = torch.arange(T, device=donor.device)[None, :].expand(R, T)
    vals = clean[donor.clamp(min=0), t]
    return torch.where((donor >= 0)[..., None], vals.to(cols), mean.to(cols)[None, None, :])


VALUE_FNS = {"zero": zero_values, "mean": mean_values, "resample": resample_values}


def draw_donors(batch: Batch, seed: int) -> Int[Tensor, "VB T"]:
    """For every (row, position): a row of another pair with a real token there (-1: none). Seeded."""
    VB, T = batch.tokens.shape
    pair = torch.arange(VB) % batch.size
    mask = batch.mask.cpu()
    cand = mask[None, :, :] & (pair[None, :, None] != pair[:, None, None])  # [row, donor, T]
    g = torch.Generator().manual_seed(int(seed))
    score = torch.rand((VB, VB, T), generator=g).masked_fill(~cand, -1.0)
    best, donor = score.max(1)
    return torch.where(best >= 0, donor, -1).to(batch.tokens.device)


@dataclass
class SiteAblation:
    """Components of one hook (flat indices into its last dimension(s)) and their reference means."""

    hook_name: str
    index: Int[Tensor, "n"]
    mean: Float[Tensor, "n"]


def group_components(components: pd.DataFrame, means: Mapping[str, Tensor] | None = None,
                     device: torch.device | str = "cpu") -> list[SiteAblation]:
    """Rows ``hook_name, component`` -> one ``SiteAblation`` per hook (means from ``means[hook]``, a
    full [C] vector per hook, else from an ``act_mean`` column, else 0)."""
    out = []
    for name, g in components.groupby("hook_name", sort=False):
        idx = torch.tensor(g["component"].to_numpy(np.int64).copy(), device=device)
        if means is not None and name in means:
            mean = means[name].to(device)[idx].float()
        elif "act_mean" in g:
            mean = torch.tensor(g["act_mean"].to_numpy(np.float64).copy(), dtype=torch.float32, device=device)
        else:
            mean = torch.zeros(len(g), device=device)
        out.append(SiteAblation(str(name), idx, mean))
    return out


def ablation_hooks(sites: Sequence[SiteAblation], mask: Bool[Tensor, "R T"], mode: str, *,
                   donor: Int[Tensor, "R T"] | None = None,
                   clean: Mapping[str, Tensor] | None = None) -> list[tuple[str, HookFn]]:
    """Forward hooks that replace the components of ``sites`` at ``mask`` by ``mode`` values.

    ``clean[hook_name]`` ([R, T, C], the unablated activation flattened to C components, or only
    the columns ``site.index``) and ``donor`` are needed for ``resample``.
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not one of {MODES}")
    if mode == "resample" and (donor is None or clean is None):
        raise ValueError("resample ablation needs donor rows and the clean activations")
    value_fn = VALUE_FNS[mode]

    def make(site: SiteAblation) -> HookFn:
        def hook(act: Tensor, hook=None) -> Tensor:
            shape = act.shape
            flat = act.reshape(shape[0], shape[1], -1).clone()
            cols = flat[:, :, site.index]
            kw = {"mean": site.mean}
            if mode == "resample":
                kw.update(donor=donor, clean=clean_columns(clean[site.hook_name], site.index))
            new = value_fn(cols, **kw)
            flat[:, :, site.index] = torch.where(mask[:, :, None], new, cols)
            return flat.view(shape)
        return hook

    return [(s.hook_name, make(s)) for s in sites]


def capture_hooks(names: Iterable[str], store: dict, columns: Mapping[str, Tensor] | None = None
                  ) -> list[tuple[str, HookFn]]:
    """Hooks that keep each activation flattened to [R, T, C] in ``store[name]``; with ``columns``
    only the (sorted) columns ``columns[name]``, stored as ``(columns[name], values [R, T, n])``."""
    def make(name: str) -> HookFn:
        def hook(act: Tensor, hook=None):
            flat = act.detach().reshape(act.shape[0], act.shape[1], -1)
            if columns is None:
                store[name] = flat.clone()
            else:
                idx = columns[name].to(flat.device)
                store[name] = (idx, flat[:, :, idx].clone())
            return None
        return hook
    return [(n, make(n)) for n in names]


def clean_columns(entry, index: Int[Tensor, "n"]) -> Float[Tensor, "R T n"]:
    """Columns ``index`` of a ``capture_hooks`` entry (a full [R, T, C] tensor or (columns, values))."""
    if isinstance(entry, tuple):
        cols, vals = entry
        pos = torch.searchsorted(cols, index.to(cols.device))
        if not torch.equal(cols[pos.clamp(max=len(cols) - 1)], index.to(cols.device)):
            raise KeyError("the clean activations hold no column for some ablated component")
        return vals[:, :, pos]
    return entry[:, :, index.to(entry.device)]


def pair_margins(logits: Float[Tensor, "VB T d_vocab"], batch: Batch) -> Float[Tensor, "B"]:
    """log P(a) - log P(b) of every pair of the batch (float64)."""
    B = batch.size
    lp = sentence_logprobs(logits[:2 * B], batch.tokens[:2 * B], batch.mask[:2 * B])
    return lp[:B] - lp[B:2 * B]


def ablated_margins(bridge, batch: Batch, sites: Sequence[SiteAblation], mode: str, where: str, *,
                    seed: int = 0, clean: Mapping[str, Tensor] | None = None) -> Float[Tensor, "B"]:
    """Margins of a batch of pairs with ``sites`` ablated in both sentences: one forward pass.

    For ``resample`` pass ``clean`` (from ``capture_hooks`` on an unablated pass of the same batch);
    when it is missing, it is computed here with one extra pass.
    """
    mask = where_mask(batch, where)
    donor = None
    if mode == "resample":
        if clean is None:
            clean = {}
            forward(bridge, batch, capture_hooks({s.hook_name for s in sites}, clean))
        donor = draw_donors(batch, seed)
    logits = forward(bridge, batch, ablation_hooks(sites, mask, mode, donor=donor, clean=clean))
    return pair_margins(logits, batch)


# ===================================================================== activation patching

def pos_setter(act: Float[Tensor, "n pos ..."], index: tuple, source: Float[Tensor, "n pos ..."]) -> Tensor:
    """index = (layer, pos): the whole activation at one position."""
    _, pos = index
    act[:, pos] = source[:, pos]
    return act


def head_setter(act: Float[Tensor, "n pos head d_head"], index: tuple,
                source: Float[Tensor, "n pos head d_head"]) -> Tensor:
    """index = (layer, head): one head's output (``hook_z``) at every position."""
    _, head = index
    act[:, :, head] = source[:, :, head]
    return act


def head_pos_setter(act: Float[Tensor, "n pos head d_head"], index: tuple,
                    source: Float[Tensor, "n pos head d_head"]) -> Tensor:
    """index = (layer, pos, head): one head's output at one position."""
    _, pos, head = index
    act[:, pos, head] = source[:, pos, head]
    return act


def all_setter(act: Tensor, index: tuple, source: Tensor) -> Tensor:
    """index = (layer,): the whole activation (every position)."""
    act[:] = source
    return act


def axis_ranges(bridge, tokens: Tensor, axes: Sequence[str], layers: Sequence[int] | None = None) -> list[list[int]]:
    n = {"layer": list(layers) if layers is not None else list(range(bridge.cfg.n_layers)),
         "pos": list(range(tokens.shape[-1])), "head": list(range(bridge.cfg.n_heads))}
    unknown = [a for a in axes if a not in n]
    if unknown or not axes or axes[0] != "layer":
        raise ValueError(f"index axes must start with 'layer' and come from {sorted(n)}; got {list(axes)}")
    return [n[a] for a in axes]


def generic_patch(bridge, base_tokens: Int[Tensor, "batch pos"], source_cache: Mapping[str, Tensor],
                  metric: Metric, setter: Setter, hook_point: str,
                  index_axis_names: Sequence[str] = ("layer", "pos"), *,
                  attention_mask: Bool[Tensor, "batch pos"] | None = None,
                  layers: Sequence[int] | None = None, rows_per_pass: int = 64,
                  base_cache: Mapping[str, Tensor] | None = None, base_value: Tensor | None = None,
                  ) -> Float[Tensor, "..."]:
    """Patch every cell of ``index_axis_names`` (one at a time) from ``source_cache`` into the base run.

    ``hook_point`` is a short name from ``interp.hooks.HOOK_POINTS`` (``resid_pre``, ``z``, ...);
    ``source_cache[name]`` holds the source run's activation at each hooked layer ([batch, pos, ...]);
    ``metric(logits)`` maps one cell's logits [batch, pos, d_vocab] to a [batch] tensor (or a
    scalar). Cells are stacked along the batch dimension, ``rows_per_pass`` rows per forward pass.
    Returns the metric per cell, shaped [*axis sizes, batch] (or [*axis sizes] for a scalar metric).

    With ``base_cache`` (the base run's own activations) and ``base_value`` (the metric of the
    unpatched base run), cells where the patch would write the values already there (e.g. positions
    before the edit of a minimal pair) are not run: their value is ``base_value``, exactly what the
    forward pass would give.
    """
    hp = HOOK_POINTS[hook_point]
    ranges = axis_ranges(bridge, base_tokens, index_axis_names, layers)
    cells = list(itertools.product(*ranges))
    B = base_tokens.shape[0]
    per = max(1, rows_per_pass // B)
    todo_cells = cells
    if base_cache is not None:
        if base_value is None:
            raise ValueError("base_cache needs base_value (the metric of the unpatched base run)")
        todo_cells = []
        for cell in cells:
            name = hp.name(int(cell[0]))
            own = base_cache[name]
            if not torch.equal(setter(own.clone(), cell, source_cache[name].to(own)), own):
                todo_cells.append(cell)
    computed: dict[tuple, Tensor] = {}
    for start in range(0, len(todo_cells), per):
        chunk = todo_cells[start:start + per]
        n = len(chunk)
        tokens = base_tokens.repeat(n, 1)
        mask = attention_mask.repeat(n, 1) if attention_mask is not None else None
        by_layer: dict[int, list[tuple[int, tuple]]] = {}
        for c, cell in enumerate(chunk):
            by_layer.setdefault(int(cell[0]), []).append((c, cell))

        def make(layer: int, todo: list[tuple[int, tuple]]) -> HookFn:
            src = source_cache[hp.name(layer)]

            def hook(act: Tensor, hook=None) -> Tensor:
                act = act.clone()
                for c, cell in todo:
                    rows = act[c * B:(c + 1) * B]  # a view: the setter writes into act
                    setter(rows, cell, src.to(act))
                return act
            return hook

        hooks = [(hp.name(layer), make(layer, todo)) for layer, todo in by_layer.items()]
        with torch.inference_mode():
            kw = {"attention_mask": mask.long()} if mask is not None else {}
            logits = bridge.run_with_hooks(tokens, fwd_hooks=hooks, return_type="logits", **kw)
        for c, cell in enumerate(chunk):
            computed[cell] = torch.as_tensor(metric(logits[c * B:(c + 1) * B])).detach().float().cpu()
    fill = torch.as_tensor(base_value).detach().float().cpu() if base_value is not None else None
    out = torch.stack([computed[cell] if cell in computed else fill for cell in cells])
    return out.reshape(*[len(r) for r in ranges], *out.shape[1:])


def run_with_source_cache(bridge, tokens: Int[Tensor, "batch pos"], names: Iterable[str],
                          attention_mask: Bool[Tensor, "batch pos"] | None = None
                          ) -> tuple[Float[Tensor, "batch pos d_vocab"], dict[str, Tensor]]:
    """Logits and the activations at ``names`` of an unpatched run."""
    store: dict[str, Tensor] = {}
    hooks = []
    for name in names:
        def hook(act, hook=None, _n=name):
            store[_n] = act.detach().clone()
        hooks.append((name, hook))
    with torch.inference_mode():
        kw = {"attention_mask": attention_mask.long()} if attention_mask is not None else {}
        logits = bridge.run_with_hooks(tokens, fwd_hooks=hooks, return_type="logits", **kw)
    return logits, store


def logprob_metric(tokens: Int[Tensor, "pos"]) -> Metric:
    """log P(tokens | BOS) read from the logits of a run (the sentence given as ``tokens``, BOS first)."""
    def metric(logits: Float[Tensor, "batch pos d_vocab"]) -> Float[Tensor, "batch"]:
        n = logits.shape[0]
        t = tokens.to(logits.device)[None, :].expand(n, -1)
        return sentence_logprobs(logits, t, torch.ones_like(t, dtype=torch.bool))
    return metric


def margin_metric(tokens: Int[Tensor, "pos"], other_logprob: float, base_is_correct: bool) -> Metric:
    """The pair's margin log P(a) - log P(b), with the base sentence's log-prob from the patched run
    and the other sentence's (``other_logprob``) from its own unpatched run."""
    lp = logprob_metric(tokens)

    def metric(logits: Float[Tensor, "batch pos d_vocab"]) -> Float[Tensor, "batch"]:
        v = lp(logits)
        return v - other_logprob if base_is_correct else other_logprob - v
    return metric


def normalized_effect(patched: Tensor, base: Tensor | float, source: Tensor | float, eps: float = 1e-6) -> Tensor:
    """(patched - base) / (source - base); NaN where source and base coincide (nothing to recover)."""
    patched = torch.as_tensor(patched, dtype=torch.float64)
    den = torch.as_tensor(source, dtype=torch.float64) - torch.as_tensor(base, dtype=torch.float64)
    out = (patched - torch.as_tensor(base, dtype=torch.float64)) / den
    return torch.where(den.abs() > eps, out, torch.full_like(out, float("nan")))


# the cells each kind of patching cell writes: (kind name from the hook point's name, axes, setter)
CELLS = {"pos": ("{point}", ("layer", "pos"), pos_setter),
         "head": ("{point}", ("layer", "head"), head_setter),
         "head_pos": ("{point}_pos", ("layer", "pos", "head"), head_pos_setter)}
# name: (hook point, axes, setter), from the ``patch`` cells of the hook-point table
PATCH_KINDS = {CELLS[c][0].format(point=hp.point): (hp.point, CELLS[c][1], CELLS[c][2])
               for hp in HOOK_POINTS.values() for c in hp.patch}


def patch_pair(bridge, tokens_a: Int[Tensor, "pos"], tokens_b: Int[Tensor, "pos"], edit: int, *,
               kinds: Sequence[str] = ("resid_pre", "z"), directions: Sequence[str] = DIRECTIONS,
               metrics: Sequence[str] = ("margin",), rows_per_pass: int = 64) -> pd.DataFrame:
    """Activation patching between the two sentences of one pair (BOS first, same length).

    ``edit`` is the model-input position of the edited token. One row per (kind, direction, metric,
    cell): ``hook, layer, position, offset (position - edit), head, direction, metric, patched,
    base, source, normalized``.
    """
    if tokens_a.shape != tokens_b.shape:
        raise ValueError("the two sentences of a pair must have the same number of tokens")
    bad = [k for k in kinds if k not in PATCH_KINDS]
    if bad:
        raise ValueError(f"unknown patching kinds {bad}; known: {sorted(PATCH_KINDS)}")
    n_layers = bridge.cfg.n_layers
    names = sorted({HOOK_POINTS[PATCH_KINDS[k][0]].name(layer) for k in kinds for layer in range(n_layers)})
    tok = {"a": tokens_a[None, :], "b": tokens_b[None, :]}
    runs = {s: run_with_source_cache(bridge, tok[s], names) for s in ("a", "b")}
    lp = {s: float(logprob_metric(tok[s][0])(runs[s][0])[0]) for s in ("a", "b")}
    frames = []
    for direction in directions:
        if direction not in DIRECTIONS:
            raise ValueError(f"direction={direction!r} is not one of {DIRECTIONS}")
        base, source = ("b", "a") if direction == "denoising" else ("a", "b")
        for metric_name in metrics:
            if metric_name == "logprob":
                metric = logprob_metric(tok[base][0])
            elif metric_name == "margin":
                metric = margin_metric(tok[base][0], lp[source], base_is_correct=base == "a")
            else:
                raise ValueError(f"metric={metric_name!r} is not one of {METRICS}")
            m_base = float(metric(runs[base][0])[0])
            m_source = float(metric(runs[source][0])[0])
            for kind in kinds:
                point, axes, setter = PATCH_KINDS[kind]
                vals = generic_patch(bridge, tok[base], runs[source][1], metric, setter, point, axes,
                                     rows_per_pass=rows_per_pass, base_cache=runs[base][1],
                                     base_value=metric(runs[base][0]))[..., 0]
                grid = np.array(list(itertools.product(*[range(s) for s in vals.shape])), dtype=np.int64)
                df = pd.DataFrame({a: grid[:, i] for i, a in enumerate(axes)})
                df = df.rename(columns={"pos": "position"})
                df["patched"] = vals.reshape(-1).double().numpy()
                df.insert(0, "hook", point)
                df.insert(1, "kind", kind)
                df["direction"], df["metric"] = direction, metric_name
                df["base"], df["source"] = m_base, m_source
                df["normalized"] = normalized_effect(torch.tensor(df["patched"].to_numpy()), m_base, m_source).numpy()
                frames.append(df)
    out = pd.concat(frames, ignore_index=True)
    for col in ("position", "head"):
        if col not in out:
            out[col] = pd.NA
        out[col] = out[col].astype("Int64")
    out["offset"] = (out["position"] - edit).astype("Int64")
    cols = ["hook", "kind", "layer", "position", "offset", "head", "direction", "metric",
            "patched", "base", "source", "normalized"]
    return out[cols]
