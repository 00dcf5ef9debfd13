"""Activation patching between the two sentences of a pair: how far overwriting one activation
with its value from the other sentence moves the output.

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
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from omegaconf import DictConfig
from torch import Tensor

from ..engine import HookFn, sentence_logprobs
from ..hooks import HOOK_POINTS

DIRECTIONS = ("denoising", "noising")
METRICS = ("margin", "logprob")

Metric = Callable[[Float[Tensor, "batch pos d_vocab"]], Float[Tensor, "batch"]]
Setter = Callable[[Tensor, tuple, Tensor], Tensor]


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


def run_patching(cfg: DictConfig, lm, pairs: pd.DataFrame, tps: list) -> pd.DataFrame:
    import torch


    pcfg = cfg.patching
    if pcfg.resid not in ("resid_pre", "resid_post"):
        raise ValueError(f"patching.resid must be resid_pre or resid_post, got {pcfg.resid!r}")
    kinds = [str(pcfg.resid)] + (["z"] if pcfg.heads else [])
    if pcfg.get("pair_ids"):
        want = [str(p) for p in pcfg.pair_ids]
        unknown = sorted(set(want) - set(pairs["pair_id"].astype(str)))
        if unknown:
            raise ValueError(f"patching.pair_ids not among the run's pairs: {unknown}")
        chosen = [i for i, p in enumerate(pairs["pair_id"].astype(str)) if p in want]
    else:
        chosen = list(pairs.groupby("category", sort=False).head(int(pcfg.n_pairs)).index)
    frames = []
    for i in chosen:
        r, tp = pairs.iloc[i], tps[i]
        ta = torch.tensor([lm.bos_token_id] + tp.ids_a, device=lm.device)
        tb = torch.tensor([lm.bos_token_id] + tp.ids_b, device=lm.device)
        df = patch_pair(lm.bridge, ta, tb, tp.edit_pos + 1, kinds=kinds, directions=list(pcfg.directions),
                          metrics=list(pcfg.metrics), rows_per_pass=int(pcfg.rows_per_pass))
        toks = [lm.tokenizer.decode([t]) for t in ta.tolist()]
        toks[tp.edit_pos + 1] = f"{tp.token_a}/{tp.token_b}"
        toks[0] = "<bos>"
        df["token"] = [toks[p] if pd.notna(p) else None for p in df["position"]]
        df.insert(0, "pair_id", r["pair_id"])
        df.insert(1, "category", r["category"])
        frames.append(df)
    if not frames:
        return pd.DataFrame()
    per_pair = pd.concat(frames, ignore_index=True)
    per_pair.insert(0, "level", "pair")
    per_pair["n_pairs"] = 1
    keys = ["category", "hook", "kind", "layer", "offset", "head", "direction", "metric"]
    cat = (per_pair.groupby(keys, dropna=False, sort=False)
           .agg(normalized=("normalized", "mean"), patched=("patched", "mean"), base=("base", "mean"),
                source=("source", "mean"), n_pairs=("normalized", "count"))
           .reset_index())
    cat.insert(0, "level", "category")
    cat["pair_id"] = None
    cat["position"] = pd.array([pd.NA] * len(cat), dtype="Int64")
    cat["token"] = None
    out = pd.concat([per_pair, cat[per_pair.columns]], ignore_index=True)
    for col in ("position", "offset", "head"):
        out[col] = out[col].astype("Int64")
    return out


