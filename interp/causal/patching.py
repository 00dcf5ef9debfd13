"""Activation patching between the two sentences of a pair: how far overwriting one activation
with its value from the other sentence moves the output.

    Run one sentence of a pair (the *base* run) and overwrite one activation with its value from
    the other sentence (the *source* run), then measure how far the output moves towards the source
    run. Both sentences have the same length and the same tokens except at the edit, so positions
    align. Directions: ``denoising`` = base is the wrong sentence (b), source the correct one (a);
    ``noising`` = base a, source b. The normalized effect of a pair is

        (metric(patched) - metric(base)) / (metric(source) - metric(base))

    0 = no effect, 1 = the patched run scores like the source run. Metrics are TransformerLens style
    callables from logits to a value per row; ``logprob`` scores the base sentence's tokens, and
    ``margin`` is the pair's margin with the base sentence's log-prob taken from the patched run.
    The two differ only by sign and a constant, so their normalized values coincide; the raw
    values (``patched``, ``base``, ``source``) are in each metric's own units. Positions before
    the edit carry identical activations in both runs, so patching there changes nothing, and the
    edit token's own probability depends only on the prefix: what patching can move is the
    log-probability of the tokens after the edit.

    The denominator. ``denominator = metric(source) - metric(base)``: the source run scores the
    base sentence's tokens with the source sentence's context, so the prefix and the edited token's
    own log-prob cancel and only the tokens after the edit remain. With ``post_edit_margin`` =
    sum over t > edit of log p_a(token_t) - log p_b(token_t) (``interp.causal.atp``):
    ``margin`` (both directions): denominator = -post_edit_margin; ``logprob``: denominator =
    +post_edit_margin (denoising) and -post_edit_margin (noising). So ``|denominator| =
    |post_edit_margin|`` for every metric and direction (tested to float error): a pair whose
    tokens after the edit barely care which sentence came first has nothing to recover, and its
    ratio is noise. Such pairs (``|denominator| < patching.min_denominator`` nats) stay in the
    per-pair rows but are left out of the category rows (``n_excluded``).

    Cells. ``positions=each``: every (layer, position) separately. ``positions=modes``: per layer
    two cells, the edit token alone (``edit``) and every token after it at once (``after``, one
    block). Head kinds (``hook_z`` per head) patch every position (``positions`` = ``all``).

    Category rows (``category_rows``) are a ratio of means over the category's pairs with a large
    enough denominator, ``mean(patched - base) / mean(source - base)`` (not a mean of ratios,
    which small denominators blow up), each pair oriented so that its denominator is positive
    (pairs whose post-edit margins have opposite signs would otherwise cancel in the denominator),
    with a percentile bootstrap CI over pairs (one resample
    matrix per category, applied to every cell at once; the excluded pairs are resampled too,
    so the CI covers which pairs pass the threshold). ``all`` pools every category.

    ``generic_patch`` mirrors ``transformer_lens.patching.generic_activation_patch`` (one generic
    function + small setters ``(activation, index, source_activation) -> activation``), but runs
    many cells (e.g. every (layer, position)) in one forward pass by stacking copies of the base
    input, and passes an attention mask. ``tests/test_patching.py`` checks that it gives the same
    numbers as ``transformer_lens.patching`` (which works with a ``TransformerBridge`` in TL 4.3).
    ``patch_group`` patches several pairs of the same length and both directions in the same
    passes (rows stacked along the batch), ``patch_pair`` is one pair.

    The metric from the scored slots. ``patch_group`` scores a cell by ``LogprobDelta``, the change
    of each base row's sentence log-prob, which ``generic_patch`` reads without making the pass's
    ``[rows, T, vocab]`` logits (as ``interp.causal.metrics.stacked_metrics`` does for the
    ablation): the pass runs with ``return_type=None``, a hook keeps the final norm's output
    (``ln_final.hook_out``) at the slots the metric reads, and only those are unembedded and
    log-softmaxed (float32). A cell's patch cannot move a prediction made before the first position
    where it changes the base run's activation (causal attention; found by comparing the patched
    base cache with the base cache, per row), so only the slots from there on are read: the others
    keep the base run's log-probs and add 0 to the change. The same values as the full logits' up to
    float32 rounding (``tests/test_patching_metric.py``).
"""


from __future__ import annotations

import itertools
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from omegaconf import DictConfig
from torch import Tensor

from ..engine import HookFn, sentence_logprobs, slot_logprobs
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


def block_setter(masks: Bool[Tensor, "block n pos"]) -> Setter:
    """Setters of position blocks: index = (layer, block) writes every position of ``masks[block]``
    (per row: rows may be different pairs with their edit at different positions); index =
    (layer, block, head) writes one head's output (``hook_z``) there. The masks' (row, position)
    pairs are found once here, so a write is an index copy (no mask lookup, no device sync)."""
    where = [m.nonzero(as_tuple=True) for m in masks]

    def setter(act: Tensor, index: tuple, source: Tensor) -> Tensor:
        r, t = (i.to(act.device) for i in where[index[1]])
        if len(index) == 3:
            view, src = act[:, :, index[2]], source[:, :, index[2]]
            view[r, t] = src[r, t]  # a view: writes into act
        else:
            act[r, t] = source[r, t]
        return act
    return setter


def position_blocks(T: int, edit: Int[Tensor, "n"]) -> Bool[Tensor, "block n pos"]:
    """The blocks of ``positions=modes`` per row: ``edit`` (the edit position) and ``after`` (edit+1..T-1)."""
    t = torch.arange(T, device=edit.device)[None, :]
    e = edit[:, None]
    return torch.stack([t == e, t > e])


def all_setter(act: Tensor, index: tuple, source: Tensor) -> Tensor:
    """index = (layer,): the whole activation (every position)."""
    act[:] = source
    return act


def n_layers(model) -> int:
    """Layers of the model patched: the bridge (``cfg.n_layers``) or the plain tree (its layers)."""
    cfg = getattr(model, "cfg", None)
    return int(cfg.n_layers) if cfg is not None else len(model.layers)


def n_heads(model) -> int:
    cfg = getattr(model, "cfg", None)
    return int(cfg.n_heads) if cfg is not None else int(model.n_heads)


def run_hooked(model, tokens: Tensor, fwd_hooks: Sequence, attention_mask: Tensor | None = None) -> Tensor:
    """Logits of one pass with hooks, on the bridge or the plain tree (both have ``run_with_hooks``)."""
    kw = {"attention_mask": attention_mask.long()} if attention_mask is not None else {}
    return model.run_with_hooks(tokens, fwd_hooks=list(fwd_hooks), return_type="logits", **kw)


def patch_model(lm, kinds: Sequence[str]) -> tuple[object, str]:
    """The model patching runs on and its name: the plain Hugging Face tree (``interp.causal.atp._model``,
    the one AtP and the ablation use) where it can read and set every hook point of ``kinds``, else
    the bridge (no plain tree, e.g. processed weights)."""
    from ..backends.hf import PlainModel
    from .atp import _model

    model = _model(lm)
    if isinstance(model, PlainModel) and all(HOOK_POINTS[PATCH_KINDS[k][0]].settable for k in kinds):
        return model, "hf"
    return lm.bridge, "bridge"


def axis_ranges(bridge, tokens: Tensor, axes: Sequence[str], layers: Sequence[int] | None = None,
                axis_values: Mapping[str, Sequence[int]] | None = None) -> list[list[int]]:
    n = {"layer": list(layers) if layers is not None else list(range(n_layers(bridge))),
         "pos": list(range(tokens.shape[-1])), "head": list(range(n_heads(bridge))),
         **{k: list(v) for k, v in (axis_values or {}).items()}}
    unknown = [a for a in axes if a not in n]
    if unknown or not axes or axes[0] != "layer":
        raise ValueError(f"index axes must start with 'layer' and come from {sorted(n)}; got {list(axes)}")
    return [n[a] for a in axes]


class LogprobDelta:
    """A metric ``generic_patch`` reads from the scored slots only: per base row the change of the
    sentence log-prob ``log P(tokens | BOS)`` (``interp.engine.sentence_logprobs``) against the
    unpatched base run, float64. ``base``: the base run's log-prob of ``tokens[:, t + 1]`` at every
    slot ``t`` (``from_logits`` reads it from the base run's logits); ``mask``: the rows' real
    tokens (default all; slot ``t`` counts where ``mask[:, t + 1]``). Called on full logits it is the
    plain metric, ``sentence_logprobs(logits)`` minus the base run's."""

    def __init__(self, tokens: Int[Tensor, "B T"], base: Float[Tensor, "B T-1"],
                 mask: Bool[Tensor, "B T"] | None = None):
        self.tokens = tokens
        self.base = base.to(tokens.device, torch.float64)
        self.mask = torch.ones_like(tokens, dtype=torch.bool) if mask is None else mask.to(tokens.device, torch.bool)
        self.slots_cpu = self.mask[:, 1:].cpu()  # where the index vectors of a pass are made
        self.base_total = (self.base * self.mask[:, 1:]).sum(-1)

    @classmethod
    def from_logits(cls, base_logits: Float[Tensor, "B T d_vocab"], tokens: Int[Tensor, "B T"],
                    mask: Bool[Tensor, "B T"] | None = None) -> "LogprobDelta":
        """The metric against the base run whose logits are ``base_logits`` (the terms of
        ``sentence_logprobs``, by its formula)."""
        lg = base_logits[:, :-1].float()
        return cls(tokens, (lg.gather(-1, tokens[:, 1:, None])[..., 0] - lg.logsumexp(-1)).double(), mask)

    def __call__(self, logits: Float[Tensor, "B T d_vocab"]) -> Float[Tensor, "B"]:
        return sentence_logprobs(logits, self.tokens, self.mask) - self.base_total


def _first_changed(setter: Setter, cells: Sequence[tuple], hp, source_cache: Mapping[str, Tensor],
                   base_cache: Mapping[str, Tensor]) -> Int[Tensor, "cells B"]:
    """Per cell and base row the first position where the cell's patch writes a value other than the
    base run's own (T where it writes none), on the CPU (one transfer for every cell)."""
    changed = []
    for cell in cells:
        name = hp.name(int(cell[0]))
        own = base_cache[name]
        diff = setter(own.clone(), cell, source_cache[name].to(own)) != own
        changed.append(diff.flatten(2).any(-1) if diff.ndim > 2 else diff)  # [B, T]
    changed = torch.stack(changed).cpu()
    T = changed.shape[-1]
    return torch.where(changed.any(-1), changed.int().argmax(-1), T)  # argmax: the first True


def generic_patch(bridge, base_tokens: Int[Tensor, "batch pos"], source_cache: Mapping[str, Tensor],
                  metric: Metric | LogprobDelta, setter: Setter, hook_point: str,
                  index_axis_names: Sequence[str] = ("layer", "pos"), *,
                  attention_mask: Bool[Tensor, "batch pos"] | None = None,
                  layers: Sequence[int] | None = None, rows_per_pass: int = 64,
                  base_cache: Mapping[str, Tensor] | None = None, base_value: Tensor | None = None,
                  axis_values: Mapping[str, Sequence[int]] | None = None) -> Float[Tensor, "..."]:
    """Patch every cell of ``index_axis_names`` (one at a time) from ``source_cache`` into the base run.

    ``hook_point`` is a short name from ``interp.hooks.HOOK_POINTS`` (``resid_pre``, ``z``, ...);
    ``source_cache[name]`` holds the source run's activation at each hooked layer ([batch, pos, ...]);
    ``metric(logits)`` maps one cell's logits [batch, pos, d_vocab] to a [batch] tensor (or a
    scalar). Cells are stacked along the batch dimension, ``rows_per_pass`` rows per forward pass.
    Returns the metric per cell, shaped [*axis sizes, batch] (or [*axis sizes] for a scalar metric).
    The hooks write the patched values into the activation in place (into a copy at hook points
    that are not ``settable``: ``resid_mid``, whose tensor the layer also keeps as its residual).

    With ``base_cache`` (the base run's own activations) and ``base_value`` (the metric of the
    unpatched base run), cells where the patch would write the values already there (e.g. positions
    before the edit of a minimal pair) are not run: their value is ``base_value``, exactly what the
    forward pass would give. ``axis_values`` names further axes (or overrides one), e.g.
    ``{"block": [0, 1]}`` for the setters of ``block_setter``.

    A ``LogprobDelta`` metric is read from the scored slots (module docstring): no logits are made,
    and with ``base_cache`` only the slots from each row's first changed position on are read (a cell
    whose changes leave no slot to read is 0 without a pass; ``base_value`` should be 0 then too).
    """
    hp = HOOK_POINTS[hook_point]
    ranges = axis_ranges(bridge, base_tokens, index_axis_names, layers, axis_values)
    cells = list(itertools.product(*ranges))
    B, T = base_tokens.shape
    per = max(1, rows_per_pass // B)
    slotted = isinstance(metric, LogprobDelta)
    todo_cells = cells
    first: dict[tuple, Tensor] = {}  # per cell, per row: the first position its patch changes
    if base_cache is not None:
        if base_value is None:
            raise ValueError("base_cache needs base_value (the metric of the unpatched base run)")
        starts = _first_changed(setter, cells, hp, source_cache, base_cache) if cells else torch.zeros(0, B)
        first = {cell: st for cell, st in zip(cells, starts)}
        todo_cells = [cell for cell, st in zip(cells, starts) if bool((st < T).any())]
    computed: dict[tuple, Tensor] = {}
    if slotted:
        t_all = torch.arange(T - 1)
        zero = torch.zeros(B, dtype=torch.long)
        reads = {cell: (t_all[None, :] >= first.get(cell, zero)[:, None]) & metric.slots_cpu for cell in todo_cells}
        for cell in todo_cells:
            if not bool(reads[cell].any()):  # nothing it changes is read: exactly no change
                computed[cell] = torch.zeros(B)
        todo_cells = [cell for cell in todo_cells if cell not in computed]
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
                if not hp.settable:  # resid_mid: the layer keeps the residual itself, do not write into it
                    act = act.clone()
                for c, cell in todo:
                    rows = act[c * B:(c + 1) * B]  # a view: the setter writes into act
                    setter(rows, cell, src.to(act))
                return act
            return hook

        hooks = [(hp.name(layer), make(layer, todo)) for layer, todo in by_layer.items()]
        if not slotted:
            with torch.inference_mode():
                logits = run_hooked(bridge, tokens, hooks, mask)
            for c, cell in enumerate(chunk):
                computed[cell] = torch.as_tensor(metric(logits[c * B:(c + 1) * B])).detach().float().cpu()
            continue
        # the slots read: (cell c, row r, slot t), one transfer of the index vectors per pass
        c_i, r_i, t_i = torch.stack([reads[cell] for cell in chunk]).nonzero(as_tuple=True)
        row = c_i * B + r_i
        idx = torch.stack([row * T + t_i, row, r_i, t_i]).to(base_tokens.device)
        flat, row, r_i, t_i = idx
        kept: dict[str, Tensor] = {}

        def keep_final(x: Tensor, hook=None) -> None:
            kept["h"] = x.flatten(0, 1).index_select(0, flat)

        with torch.inference_mode():
            with bridge.hooks(fwd_hooks=hooks + [("ln_final.hook_out", keep_final)]):
                # no logits from the pass: the plain tree runs its decoder alone; the bridge runs the
                # Hugging Face model, which computes the last position's only
                bridge(tokens, attention_mask=mask.long() if mask is not None else None, return_type=None,
                       logits_to_keep=1)
            lp = slot_logprobs(bridge, kept.pop("h"), metric.tokens[r_i, t_i + 1])
            vals = torch.zeros(n * B, dtype=torch.float64, device=lp.device).index_add_(
                0, row, lp - metric.base[r_i, t_i])
        for cell, v in zip(chunk, vals.view(n, B).float().cpu()):
            computed[cell] = v
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
        logits = run_hooked(bridge, tokens, hooks, attention_mask)
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

POSITIONS = ("modes", "each")  # patching.positions
BLOCKS = ("edit", "after")  # the cells of positions=modes per layer
# the columns of patch_pair / patch_group (patch_group adds ``pair`` first) and of patching.parquet
PAIR_COLUMNS = ["hook", "kind", "layer", "positions", "position", "offset", "head", "direction", "metric",
                "patched", "base", "source", "denominator", "normalized", "post_edit_margin"]
COLUMNS = ["level", "pair_id", "category", "hook", "kind", "layer", "positions", "position", "offset", "head",
           "direction", "metric", "patched", "base", "source", "denominator", "normalized", "normalized_lo",
           "normalized_hi", "post_edit_margin", "n_pairs", "n_excluded", "token"]
# a category row per (category, cell); the cell of a row
CELL_KEYS = ["hook", "kind", "layer", "positions", "offset", "head", "direction", "metric"]


def _check(kinds: Sequence[str], directions: Sequence[str], metrics: Sequence[str], positions: str) -> None:
    for what, values, known in (("patching kinds", kinds, sorted(PATCH_KINDS)), ("direction", directions, DIRECTIONS),
                                ("metric", metrics, METRICS), ("positions", [positions], POSITIONS)):
        bad = [v for v in values if v not in known]
        if bad:
            raise ValueError(f"unknown {what} {bad}; known: {list(known)}")


def patch_group(bridge, tokens_a: Int[Tensor, "G pos"], tokens_b: Int[Tensor, "G pos"], edit: Int[Tensor, "G"], *,
                kinds: Sequence[str] = ("resid_pre",), directions: Sequence[str] = DIRECTIONS,
                metrics: Sequence[str] = ("margin",), positions: str = "modes",
                rows_per_pass: int = 64) -> pd.DataFrame:
    """Activation patching of ``G`` pairs of the same length (BOS first), every direction in the same
    forward passes: the base rows of all directions and pairs are stacked along the batch and every
    cell patches all of them at once (``generic_patch``). ``edit`` is each pair's model-input position
    of the edited token. Returns one row per (pair, direction, metric, kind, cell) with the columns
    ``pair`` (0..G-1) and ``PAIR_COLUMNS``.

    One forward pass per cell gives the change of the base sentence's log-prob; both metrics come
    from it (``margin`` = the other sentence's unpatched log-prob minus it, or it minus that)."""
    _check(kinds, directions, metrics, positions)
    if tokens_a.shape != tokens_b.shape or tokens_a.ndim != 2:
        raise ValueError("the two sentences of a pair must have the same number of tokens")
    G, T = tokens_a.shape
    edit = torch.as_tensor(edit, dtype=torch.long, device=tokens_a.device).reshape(G)
    names = sorted({HOOK_POINTS[PATCH_KINDS[k][0]].name(layer) for k in kinds for layer in range(n_layers(bridge))})
    tok = {"a": tokens_a, "b": tokens_b}
    runs = {s: run_with_source_cache(bridge, tok[s], names) for s in ("a", "b")}
    # log p of each sentence's tokens per slot in each run (float32 log-softmax, one per run; float64),
    # (run, sentence): the terms of sentence_logprobs and post_edit_logprobs
    slot_lp = {}
    for r in ("a", "b"):
        lg = runs[r][0][:, :-1].float()
        lse = lg.logsumexp(-1)
        for s in ("a", "b"):
            slot_lp[r, s] = (lg.gather(-1, tok[s][:, 1:, None])[..., 0] - lse).double()
        del lg, lse
    own = {s: slot_lp[s, s].sum(-1).cpu() for s in ("a", "b")}  # log P(sentence's tokens), float64
    cross = {("a", "b"): slot_lp["a", "b"].sum(-1).cpu(), ("b", "a"): slot_lp["b", "a"].sum(-1).cpu()}
    from .atp import after_slots

    after = after_slots(edit, torch.full_like(edit, T - 1), T - 1)
    pem = ((slot_lp["a", "a"] * after).sum(-1) - (slot_lp["b", "b"] * after).sum(-1)).cpu().numpy()
    sides = [("b", "a") if d == "denoising" else ("a", "b") for d in directions]  # (base, source)
    base_tokens = torch.cat([tok[b] for b, _ in sides])
    source_cache = {n: torch.cat([runs[s][1][n] for _, s in sides]) for n in names}
    base_cache = {n: torch.cat([runs[b][1][n] for b, _ in sides]) for n in names}
    R = len(sides) * G
    # change of the base sentence's log-prob, read from the slots each cell can move
    delta = LogprobDelta(base_tokens, torch.cat([slot_lp[b, b] for b, _ in sides]))
    del runs

    masks = position_blocks(T, edit.repeat(len(sides)))  # on the model's device, where the setters use them
    grids = {}
    for kind in kinds:
        point, axes, setter = PATCH_KINDS[kind]
        axis_values = None
        if positions == "modes" and "pos" in axes:
            axes = tuple("block" if a == "pos" else a for a in axes)
            setter, axis_values = block_setter(masks), {"block": range(len(BLOCKS))}
        vals = generic_patch(bridge, base_tokens, source_cache, delta, setter, point, axes,
                             rows_per_pass=rows_per_pass, base_cache=base_cache,
                             base_value=torch.zeros(R), axis_values=axis_values)
        cells = np.array(list(itertools.product(*[range(s) for s in vals.shape[:-1]])), dtype=np.int64)
        grids[kind] = (point, axes, cells, vals.reshape(len(cells), R).double().numpy())

    cols: dict[str, list] = {c: [] for c in ["pair"] + PAIR_COLUMNS}
    edit_np = edit.cpu().numpy()
    for g in range(G):
        for di, (direction, (b, s)) in enumerate(zip(directions, sides)):
            r = di * G + g
            x = float(cross[s, b][g])  # the base sentence's tokens scored in the source run
            for metric_name in metrics:
                if metric_name == "logprob":
                    m_base, m_source, sign = float(own[b][g]), x, 1.0
                elif b == "a":  # margin, noising: log P(a | patched) - log P(b)
                    m_base, m_source, sign = float(own["a"][g] - own["b"][g]), x - float(own["b"][g]), 1.0
                else:  # margin, denoising: log P(a) - log P(b | patched)
                    m_base, m_source, sign = float(own["a"][g] - own["b"][g]), float(own["a"][g]) - x, -1.0
                for kind in kinds:
                    point, axes, cells, vals = grids[kind]
                    n = len(cells)
                    ax = {a: cells[:, i] for i, a in enumerate(axes)}
                    patched = m_base + sign * vals[:, r]
                    if "pos" in ax:
                        position = ax["pos"].astype(object)
                        offset = (ax["pos"] - edit_np[g]).astype(object)
                        pos_label = np.full(n, "each", dtype=object)
                    elif "block" in ax:
                        position = np.full(n, None, dtype=object)
                        offset = np.where(ax["block"] == 0, 0, None).astype(object)
                        pos_label = np.array(BLOCKS, dtype=object)[ax["block"]]
                    else:
                        position = offset = np.full(n, None, dtype=object)
                        pos_label = np.full(n, "all", dtype=object)
                    den = m_source - m_base
                    norm = normalized_effect(torch.from_numpy(patched), m_base, m_source).numpy() + 0.0
                    for c, v in (("pair", g), ("hook", point), ("kind", kind), ("layer", ax["layer"]),
                                 ("positions", pos_label), ("position", position), ("offset", offset),
                                 ("head", ax["head"].astype(object) if "head" in ax else np.full(n, None, dtype=object)),
                                 ("direction", direction), ("metric", metric_name), ("patched", patched),
                                 ("base", m_base), ("source", m_source), ("denominator", den),
                                 ("normalized", norm), ("post_edit_margin", float(pem[g]))):
                        cols[c].append(np.broadcast_to(np.asarray(v, dtype=object if isinstance(v, str) else None), (n,)))
    out = pd.DataFrame({c: np.concatenate(v) for c, v in cols.items()})
    for c in ("position", "offset", "head"):
        out[c] = pd.array(out[c].tolist(), dtype="Int64")
    for c in ("pair", "layer"):
        out[c] = out[c].astype(np.int64)
    for c in ("patched", "base", "source", "denominator", "normalized", "post_edit_margin"):
        out[c] = out[c].astype(np.float64)
    return out


def patch_pair(bridge, tokens_a: Int[Tensor, "pos"], tokens_b: Int[Tensor, "pos"], edit: int, *,
               kinds: Sequence[str] = ("resid_pre", "z"), directions: Sequence[str] = DIRECTIONS,
               metrics: Sequence[str] = ("margin",), rows_per_pass: int = 64,
               positions: str = "each") -> pd.DataFrame:
    """Activation patching between the two sentences of one pair (BOS first, same length).

    ``edit`` is the model-input position of the edited token. One row per (direction, metric, kind,
    cell) with ``PAIR_COLUMNS``: ``hook, kind, layer, positions, position, offset (position - edit),
    head, direction, metric, patched, base, source, denominator (source - base), normalized,
    post_edit_margin``. ``positions="each"``: position cells (``positions`` = ``each``);
    ``"modes"``: the ``edit`` / ``after`` blocks (position NA, offset 0 for edit and NA for after).
    """
    if tokens_a.shape != tokens_b.shape:
        raise ValueError("the two sentences of a pair must have the same number of tokens")
    out = patch_group(bridge, tokens_a[None], tokens_b[None], torch.tensor([int(edit)]), kinds=kinds,
                      directions=directions, metrics=metrics, positions=positions, rows_per_pass=rows_per_pass)
    return out[PAIR_COLUMNS]


# ---------------------------------------------------------------- category rows

def bootstrap_counts(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """[n_boot, n] how often each of ``n`` items is drawn in each resample (with replacement)."""
    idx = rng.integers(0, n, size=(n_boot, n))
    counts = np.zeros((n_boot, n), dtype=np.float64)
    np.add.at(counts, (np.arange(n_boot)[:, None], idx), 1.0)
    return counts


def _category_cells(g: pd.DataFrame, category: str, min_denominator: float, n_boot: int, ci: float,
                    seed: int) -> pd.DataFrame:
    """The category rows of one category's pair rows ``g``: per cell, a ratio of means over the
    pairs with ``|denominator| >= min_denominator`` (each pair oriented by the sign of its
    denominator), a percentile bootstrap CI over pairs."""
    import zlib

    cell = g.groupby(CELL_KEYS, dropna=False, sort=False).ngroup().to_numpy()
    pair, pair_ids = pd.factorize(g["pair_id"].astype(str))
    C, P = int(cell.max()) + 1, len(pair_ids)

    def mat(values, fill=0.0) -> np.ndarray:
        m = np.full((C, P), fill)
        m[cell, pair] = values
        return m

    present = mat(1.0) > 0
    den = mat(g["denominator"].to_numpy(float))
    used = present & (np.abs(den) >= min_denominator) & np.isfinite(den)
    w = used.astype(float)
    sign = np.sign(den)  # each pair oriented so that its denominator is positive
    num = np.where(used, sign * mat((g["patched"] - g["base"]).to_numpy(float)), 0.0)
    den0 = np.where(used, np.abs(den), 0.0)
    n_used = w.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        def mean(col):
            return np.where(used, mat(g[col].to_numpy(float)), 0.0).sum(1) / n_used

        normalized = num.sum(1) / den0.sum(1) + 0.0
        lo = hi = np.full(C, np.nan)
        if n_boot > 0 and P > 0:
            rng = np.random.default_rng([int(seed), zlib.crc32(str(category).encode())])
            W = bootstrap_counts(P, int(n_boot), rng)
            boot = (W @ num.T) / (W @ den0.T)  # [n_boot, C]
            boot[~np.isfinite(boot)] = np.nan
            q = 100 * (1 - float(ci)) / 2
            ok = np.isfinite(boot).any(0)
            lo, hi = np.full(C, np.nan), np.full(C, np.nan)
            if ok.any():
                lo[ok], hi[ok] = np.nanpercentile(boot[:, ok], [q, 100 - q], axis=0)
        first = g.groupby(cell, sort=True)[CELL_KEYS].first()
        out = first.reset_index(drop=True)
        out["patched"], out["base"], out["source"] = mean("patched"), mean("base"), mean("source")
        out["denominator"], out["post_edit_margin"] = den0.sum(1) / n_used, mean("post_edit_margin")
    none = n_used == 0
    normalized[none] = np.nan
    lo[none] = hi[none] = np.nan
    out["normalized"], out["normalized_lo"], out["normalized_hi"] = normalized, lo, hi
    out["n_pairs"] = n_used.astype(np.int64)
    out["n_excluded"] = (present & ~used).sum(1).astype(np.int64)
    out.insert(0, "category", category)
    return out


def category_rows(pair_rows: pd.DataFrame, min_denominator: float = 0.5, n_boot: int = 1000, ci: float = 0.95,
                  seed: int = 0, pooled: str | None = "all") -> pd.DataFrame:
    """Category rows (level ``category``) of per-pair patching rows (columns ``pair_id``, ``category``,
    ``CELL_KEYS``, ``patched``, ``base``, ``source``, ``denominator``, ``post_edit_margin``): per
    category and cell, over the pairs with ``|denominator| >= min_denominator`` (``n_pairs``; the
    others are counted in ``n_excluded``; NaN when none is left),

        normalized = mean(s * (patched - base)) / mean(|source - base|),  s = sign(source - base)

    i.e. ``mean(patched - base) / mean(source - base)`` with every pair oriented so that its
    denominator is positive (the two coincide when the denominators share a sign; with mixed signs
    the plain ratio would let pairs cancel in the denominator). Equivalently a mean of the pairs'
    ratios weighted by ``|denominator|``. ``normalized_lo`` / ``normalized_hi``: percentile
    bootstrap interval (``n_boot`` resamples of the category's pairs, seeded by ``seed`` and the
    category's name, level ``ci``). ``patched``, ``base``, ``source``, ``post_edit_margin``: means
    over the pairs used; ``denominator``: the mean of ``|source - base|`` over them.
    ``pooled`` names one more category pooling every pair."""
    if pair_rows.empty:
        return pd.DataFrame()
    groups = [(str(c), d) for c, d in pair_rows.groupby("category", sort=False)]
    if pooled is not None:
        groups.append((pooled, pair_rows))
    out = pd.concat([_category_cells(d, c, float(min_denominator), int(n_boot), float(ci), int(seed))
                     for c, d in groups], ignore_index=True)
    out.insert(0, "level", "category")
    out["pair_id"], out["position"], out["token"] = None, pd.array([pd.NA] * len(out), dtype="Int64"), None
    for c in ("offset", "head"):
        out[c] = out[c].astype("Int64")
    return out


# ---------------------------------------------------------------- the run's patching table

def group_size(n_layers: int, n_positions: int, n_directions: int, positions: str, rows_per_pass: int) -> int:
    """How many pairs of one length are patched together: enough that one pass is full (a pair alone
    fills ``n_directions`` x its cells rows), never more."""
    cells = n_layers * (len(BLOCKS) if positions == "modes" else n_positions)
    return max(1, -(-int(rows_per_pass) // max(1, n_directions * cells)))


def pair_groups(tps: Sequence, chosen: Iterable[int], bos: int, device, n_layers: int, n_directions: int,
                positions: str, rows_per_pass: int) -> Iterator[tuple[list[int], Tensor, Tensor, Tensor]]:
    """The pairs ``chosen`` (indices into the tokenized pairs ``tps``) in the groups ``run_patching``
    patches together (one ``patch_group`` call each): pairs of one length, the lengths in the order
    they first appear and the pairs in the order given, ``group_size`` of them at a time. Yields
    ``(indices, tokens_a, tokens_b, edit)``: the group's indices, its sentences BOS first [G, T] and
    each pair's model-input position of the edit [G], on ``device``."""
    by_length: dict[int, list[int]] = {}
    for i in chosen:
        by_length.setdefault(len(tps[i].ids_a), []).append(i)
    for length, members in by_length.items():
        size = group_size(n_layers, length + 1, n_directions, positions, rows_per_pass)
        for start in range(0, len(members), size):
            group = members[start:start + size]
            yield (group, torch.tensor([[bos] + tps[i].ids_a for i in group], device=device),
                   torch.tensor([[bos] + tps[i].ids_b for i in group], device=device),
                   torch.tensor([tps[i].edit_pos + 1 for i in group], device=device))


def run_patching(cfg: DictConfig, lm, pairs: pd.DataFrame, tps: list) -> pd.DataFrame:
    """``patching.parquet``: per-pair rows (level ``pair``) of the first ``patching.n_pairs`` pairs of
    each category (or ``patching.pair_ids``) and the category rows (``category_rows``); columns
    ``COLUMNS``. Pairs of the same length are patched together (``patch_group``)."""
    pcfg = cfg.patching
    if pcfg.resid not in ("resid_pre", "resid_post"):
        raise ValueError(f"patching.resid must be resid_pre or resid_post, got {pcfg.resid!r}")
    positions = str(pcfg.get("positions", "modes"))
    if positions not in POSITIONS:
        raise ValueError(f"patching.positions must be one of {', '.join(POSITIONS)}, got {positions!r}")
    kinds = [str(pcfg.resid)] + (["z"] if pcfg.get("heads", False) else [])
    directions, metrics = list(pcfg.directions), list(pcfg.metrics)
    _check(kinds, directions, metrics, positions)
    if pcfg.get("pair_ids"):
        want = [str(p) for p in pcfg.pair_ids]
        unknown = sorted(set(want) - set(pairs["pair_id"].astype(str)))
        if unknown:
            raise ValueError(f"patching.pair_ids not among the run's pairs: {unknown}")
        chosen = [i for i, p in enumerate(pairs["pair_id"].astype(str)) if p in want]
    else:
        chosen = [pairs.index.get_loc(i) for i in pairs.groupby("category", sort=False).head(int(pcfg.n_pairs)).index]
    rows_per_pass = int(pcfg.rows_per_pass)
    order = {i: k for k, i in enumerate(chosen)}
    model, backend = patch_model(lm, kinds)
    frames = []
    for group, ta, tb, edit in pair_groups(tps, chosen, lm.bos_token_id, lm.device, n_layers(model),
                                           len(directions), positions, rows_per_pass):
        df = patch_group(model, ta, tb, edit, kinds=kinds, directions=directions, metrics=metrics,
                         positions=positions, rows_per_pass=rows_per_pass)
        labels = []
        for g, i in enumerate(group):
            tp = tps[i]
            toks = ["<bos>"] + [lm.tokenizer.decode([t]) for t in tp.ids_a]
            toks[tp.edit_pos + 1] = f"{tp.token_a}/{tp.token_b}"
            labels.append({"each": toks, "edit": toks[tp.edit_pos + 1], "after": "".join(toks[tp.edit_pos + 2:])})
        df["token"] = [labels[g]["each"][p] if pd.notna(p) else labels[g].get(m)
                       for g, p, m in zip(df["pair"], df["position"], df["positions"])]
        df.insert(0, "order", [order[group[g]] for g in df["pair"]])
        rows = np.asarray(group)[df["pair"].to_numpy()]
        df.insert(1, "pair_id", pairs["pair_id"].to_numpy()[rows])
        df.insert(2, "category", pairs["category"].to_numpy()[rows])
        frames.append(df.drop(columns="pair"))
    if not frames:
        out = pd.DataFrame(columns=COLUMNS)
        out.attrs["backend"] = backend
        return out
    per_pair = pd.concat(frames, ignore_index=True).sort_values("order", kind="stable").drop(columns="order")
    per_pair = per_pair.reset_index(drop=True)
    min_den = float(pcfg.get("min_denominator", 0.5))
    per_pair.insert(0, "level", "pair")
    used = per_pair["denominator"].abs() >= min_den
    per_pair["n_pairs"], per_pair["n_excluded"] = used.astype(np.int64), (~used).astype(np.int64)
    per_pair["normalized_lo"] = per_pair["normalized_hi"] = np.nan
    cat = category_rows(per_pair, min_den, int(pcfg.get("n_boot", 1000)), float(pcfg.get("ci", 0.95)),
                        int(cfg.get("seed", 0)))
    out = pd.concat([per_pair[COLUMNS], cat[COLUMNS]], ignore_index=True)
    for col in ("position", "offset", "head"):
        out[col] = out[col].astype("Int64")
    out.attrs["backend"] = backend  # the model the passes ran on: hf (the plain tree) or bridge
    return out
