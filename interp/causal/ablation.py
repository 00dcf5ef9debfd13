"""Ablation: chosen components replaced by a value that carries no information about the
sentence, in both sentences of every pair, and how the error-detection margin moves.

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

``run_ablation`` runs the selections of ``interp.causal.selection`` (stable, random, least
stable) at every k, mode and place, and ``summarize_ablation`` averages over seeds.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from omegaconf import DictConfig
from torch import Tensor

from .. import rundir as R
from ..engine import Batch, HookFn, forward, make_batches, sentence_logprobs
from .atp import _model
from .metrics import pair_metrics, stacked_metrics
from .selection import SELECTION_KINDS, matched_random, read_sentences, reference_means, select_components

MODES = ("mean", "resample", "zero")
WHERE = ("edit", "after", "all")


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


# ===================================================================== batched conditions

METRICS = ("post_edit_margin", "margin", "downstream_divergence")
ABLATION_COLUMNS = ["selection", "k", "seed", "mode", "where", "category", "margin_change", "accuracy",
                    "accuracy_change", "n_pairs", "n_components", "margin", "baseline_margin",
                    "baseline_accuracy", "margin_change_se",
                    # the part of the margin an intervention at or after the edit can move: the tokens
                    # after the edit (interp.causal.metrics.post_edit_margin)
                    "post_edit_margin_change", "post_edit_margin_change_se", "baseline_post_edit_margin",
                    # how far a's and b's next-token distributions after the edit are apart
                    # (interp.causal.metrics.downstream_divergence)
                    "downstream_divergence_change", "downstream_divergence_change_se",
                    "baseline_downstream_divergence"]
VS_RANDOM_COLUMNS = ["selection", "k", "mode", "where", "category", "metric", "change", "change_lo",
                     "change_hi", "random_mean", "random_sd", "random_min", "random_max", "diff_vs_random",
                     "diff_se", "diff_lo", "diff_hi", "n_clusters", "p_perm", "share_random_below",
                     "beyond_all_random", "n_seeds", "n_pairs", "pairs"]


@dataclass
class Condition:
    """One ablation: a set of components (per hook), a replacement mode, the positions, and
    ``draw``: the seed of its resample donors and the seed its rows are labelled with (a random
    selection's own seed; for the stable and least-stable selections the resample draw, else the
    base seed)."""

    selection: str
    k: int
    seed: int
    mode: str
    where: str
    draw: int
    sites: list[SiteAblation]


def condition_hooks(conds: Sequence[Condition], batch: Batch, *, clean: Mapping[str, Tensor] | None = None,
                    batch_seed: int = 0, dtype: torch.dtype | None = None) -> list[tuple[str, HookFn]]:
    """Hooks for one forward pass over ``len(conds)`` stacked copies of the batch's a and b rows
    (condition ``c`` = rows ``c * 2B .. (c + 1) * 2B - 1``), all of one ``mode`` and ``where``: each
    copy has its own components replaced, exactly as ``ablation_hooks`` would for that condition
    alone. ``clean[hook_name]``: the unablated [2B, T, C] activations (``resample``). ``dtype``: the
    activations' dtype (the values written are made in it before the pass; default: ``clean``'s,
    else float32; a hook meeting another dtype casts them).

    Everything but the write is prepared here, once per pass: per hook the selected (condition,
    component) pairs ``N`` and the positions ``M`` (the ``where`` mask's (row, position) pairs, the
    same in every copy) as index vectors, and the ``[M, N]`` values (a scalar for ``zero``, the
    components' means for ``mean``, the donors' clean values for ``resample``). The hook writes those
    elements of the activation in place (one ``index_put_``) and hands it back: nothing else of the
    ``[C, 2B, T, d]`` activation is read or copied. The values are those the ``torch.where`` over the
    whole activation wrote (``tests/test_ablation.py`` compares both)."""
    modes, wheres = {c.mode for c in conds}, {c.where for c in conds}
    if len(modes) != 1 or len(wheres) != 1:
        raise ValueError("the conditions of one pass must share mode and where")
    mode, where = modes.pop(), wheres.pop()
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not one of {MODES}")
    if mode == "resample" and clean is None:
        raise ValueError("resample ablation needs the clean activations")
    C, B2 = len(conds), 2 * batch.size
    device = batch.tokens.device
    if not any(c.sites for c in conds):
        return []
    if dtype is None:
        dtype = next(iter(clean.values())).dtype if clean else torch.float32
    r_idx, t_idx = where_mask(batch, where)[:B2].nonzero(as_tuple=True)  # the M positions, row-major
    by_hook: dict[str, list[tuple[int, SiteAblation]]] = {}
    for ci, cond in enumerate(conds):
        for site in cond.sites:
            by_hook.setdefault(site.hook_name, []).append((ci, site))
    # per hook: condition and component of each selected element, its mean; one transfer for all hooks
    names = list(by_hook)
    c_all = torch.cat([torch.full((len(s.index),), ci, dtype=torch.long, device=s.index.device)
                       for n in names for ci, s in by_hook[n]]).to(device)
    j_all = torch.cat([s.index.long() for n in names for _, s in by_hook[n]]).to(device)
    mean_all = torch.cat([s.mean for n in names for _, s in by_hook[n]]).to(device, dtype)
    sizes = [sum(len(s.index) for _, s in by_hook[n]) for n in names]
    if mode == "resample":
        donors = torch.stack([draw_donors(batch, c.draw * 1_000_003 + batch_seed)[:B2] for c in conds])
        d_pos = donors[:, r_idx, t_idx]  # [C, M]: each copy's donor row at each position
    T = batch.seq_len
    plans = []
    for name, c_idx, j_idx, mean in zip(names, c_all.split(sizes), j_all.split(sizes), mean_all.split(sizes)):
        if mode == "zero":
            value = torch.zeros((), dtype=dtype, device=device)
        elif mode == "mean":
            value = mean[None, :]  # [1, N]
        else:
            src = clean[name].reshape(B2, T, -1).to(device, dtype)
            d = d_pos[c_idx].T  # [M, N]
            value = torch.where(d >= 0, src[d.clamp(min=0), t_idx[:, None], j_idx[None, :]], mean[None, :])
        plans.append((name, (c_idx[None, :], r_idx[:, None], t_idx[:, None], j_idx[None, :]), value))

    def make(index: tuple[Tensor, ...], value: Tensor) -> HookFn:
        def hook(act: Tensor, hook=None) -> Tensor:
            shape = act.shape
            flat = act.reshape(C, B2, shape[1], -1)  # a view of act where act is contiguous
            flat.index_put_(index, value if value.dtype == flat.dtype else value.to(flat.dtype))
            return flat.reshape(shape)
        return hook

    return [(name, make(index, value)) for name, index, value in plans]


def _act_dtype(model) -> torch.dtype | None:
    """The dtype of the model's activations (its weights' dtype), or None when it does not say."""
    hf = getattr(model, "original_model", None)
    return getattr(hf, "dtype", None)


def run_conditions(model, batch: Batch, conds: Sequence[Condition], *, clean=None, batch_seed: int = 0,
                   base: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Metrics of every pair of ``batch`` under each condition: one forward pass over the stacked
    copies. Returns ``{metric: [len(conds), B]}`` (``interp.causal.metrics.pair_metrics``).

    Only the predictions the metrics read are unembedded (``interp.causal.metrics.stacked_metrics``).
    With ``base`` (the batch's unablated metrics) and ``where`` ``edit`` or ``after``, only those
    after the edit are: nothing at or after the edit changes a prediction before it, so
    ``margin`` = the unablated ``margin - post_edit_margin`` (the prefix's part) + the ablated
    ``post_edit_margin``."""
    C = len(conds)
    after_only = base is not None and conds[0].where != "all"
    hooks = condition_hooks(conds, batch, clean=clean, batch_seed=batch_seed, dtype=_act_dtype(model))
    out = stacked_metrics(model, batch, C, hooks, after_only=after_only)
    if after_only:
        out["margin"] = (np.asarray(base["margin"]) - np.asarray(base["post_edit_margin"]))[None, :] \
            + out["post_edit_margin"]
    return {m: out[m] for m in METRICS}


def _conditions(cfg: DictConfig, cands: pd.DataFrame, means, device) -> tuple[list[Condition], pd.DataFrame, dict]:
    """Every ablation of the run: the stable, least-stable and random selections at each k, mode and
    where; the selections table; facts on the random matching."""
    acfg = cfg.ablation
    base_seed = int(cfg.seed)
    seeds = [base_seed + i for i in range(max(1, int(acfg.seeds)))]
    draws = seeds[:max(1, int(acfg.get("resample_draws", 5)))]
    random_kind = str(acfg.get("random", "matched"))
    pool = int(acfg.get("match_pool", 10))
    chosen: dict[tuple, pd.DataFrame] = {}
    for k in sorted({int(k) for k in cfg.k}):
        top = select_components(cands, "stable", k)
        for sel in acfg.selections:
            if sel != "random":
                chosen[(sel, k, base_seed)] = select_components(cands, sel, k)
                continue
            for s in seeds:
                chosen[(sel, k, s)] = (matched_random(cands, top, s, pool) if random_kind == "matched"
                                       else select_components(cands, "random", k, s))
    cols = ["selection", "k", "seed", "hook", "hook_name", "layer", "component", "_rank", "normalized", "act_mean",
            "spread"]
    sel_rows = pd.concat([d.assign(selection=sel, k=k, seed=s)[[c for c in cols + ["head"] if c in d or c in
                                                               ("selection", "k", "seed")]]
                          for (sel, k, s), d in chosen.items()], ignore_index=True)
    sel_rows = sel_rows.rename(columns={"_rank": "rank_value"})
    sites = {key: group_components(d, means, device) for key, d in chosen.items()}
    conds = []
    for (sel, k, s), site in sites.items():
        for mode in acfg.modes:
            for where in acfg.where:
                if sel == "random":
                    conds.append(Condition(sel, k, s, mode, where, s, site))
                else:
                    for d in (draws if mode == "resample" else [base_seed]):
                        conds.append(Condition(sel, k, s, mode, where, d, site))
    facts = {"random": random_kind, "match_pool": pool if random_kind == "matched" else None,
             "seeds": len(seeds), "resample_draws": len(draws)}
    if "spread" in sel_rows:  # how well the random selections match the stable ones in spread
        med = sel_rows.groupby(["selection", "k"])["spread"].median()
        facts["median_spread"] = {f"{sel}/k={k}": float(v) for (sel, k), v in med.items()}
    return conds, sel_rows, facts


def run_ablation(cfg: DictConfig, lm, pairs: pd.DataFrame, tps: list, cands: pd.DataFrame,
                 run_dir: Path, clusters: np.ndarray | None = None) -> dict:
    """Ablate every condition (``_conditions``) on ``pairs`` (the test pairs), many conditions per
    forward pass (``ablation.rows_per_pass`` rows); tables per pair, per category and seed, over seeds,
    and against the matched random selections (``vs_random``)."""
    from tqdm.auto import tqdm

    acfg = cfg.ablation
    modes, wheres = list(acfg.modes), list(acfg.where)
    bad = [m for m in modes if m not in MODES] + [w for w in wheres if w not in WHERE]
    if bad:
        raise ValueError(f"unknown ablation modes/where {bad}; modes: {MODES}, where: {WHERE}")
    sels = list(acfg.selections)
    if any(s not in SELECTION_KINDS for s in sels):
        raise ValueError(f"ablation.selections must come from {SELECTION_KINDS}, got {sels}")
    ks = sorted({int(k) for k in cfg.k})
    if not ks or min(ks) < 1:
        raise ValueError(f"k must be a list of positive integers, got {list(cfg.k)}")

    hook_names = sorted(set(cands["hook_name"]))
    if str(acfg.mean_from) == "run":
        means = None  # act_mean of the stability table, carried by the selected rows
        mean_source = "run act_mean (all sentence tokens of the run, BOS excluded)"
    else:
        if str(acfg.mean_from) == "pairs":
            all_pairs = R.read_table(run_dir, R.PAIRS)
            sentences = list(all_pairs["a"]) + list(all_pairs["b"])
            mean_source = "computed over both sentences of every pair of the run"
        else:
            sentences = read_sentences(acfg.mean_from)
            mean_source = f"computed over the sentences of {acfg.mean_from}"
        means = reference_means(lm, sentences, set(hook_names), int(cfg.batch_size))
    conds, sel_rows, facts = _conditions(cfg, cands, means, lm.device)
    sel_rows["mean_used"] = (sel_rows["act_mean"] if means is None else
                             [float(means[h][c]) for h, c in zip(sel_rows["hook_name"], sel_rows["component"])])
    used_hooks = sorted(set(sel_rows["hook_name"]))

    model = _model(lm)
    groups = sorted(set(pairs["category"]))
    batches = make_batches(tps, [groups.index(c) for c in pairs["category"]], lm.bos_token_id,
                           lm.pad_token_id, int(cfg.batch_size), lm.device)
    N = len(pairs)
    vals = {m: np.full((len(conds), N), np.nan) for m in METRICS}
    base = {m: np.full(N, np.nan) for m in METRICS}
    # conditions of one mode and where share a pass; as many as fit ablation.rows_per_pass
    by_pass: dict[tuple[str, str], list[int]] = {}
    for i, c in enumerate(conds):
        by_pass.setdefault((c.mode, c.where), []).append(i)
    passes = list(by_pass.values())
    rows_per_pass = int(acfg.get("rows_per_pass", 256))
    n_forward = 0
    bar = tqdm(total=len(batches), unit="batch", desc="ablation", disable=not cfg.get("progress", True),
               file=sys.stderr)
    for bi, batch in enumerate(batches):
        idx = batch.index.numpy()
        per = max(1, rows_per_pass // (2 * batch.size))
        clean: dict = {}
        got = stacked_metrics(model, batch, 1, capture_hooks(used_hooks, clean) if "resample" in modes else [])
        for m, v in got.items():
            base[m][idx] = v[0]
        n_forward += 1
        for group in passes:
            for start in range(0, len(group), per):
                chunk = group[start:start + per]
                got = run_conditions(model, batch, [conds[i] for i in chunk], clean=clean, batch_seed=bi,
                                     base={m: base[m][idx] for m in METRICS})
                for m, v in got.items():
                    vals[m][np.array(chunk)[:, None], idx[None, :]] = v
                n_forward += 1
        bar.update(1)
    bar.close()

    g = clusters if clusters is not None else np.arange(N)
    pair_table = ablation_pairs(conds, pairs, vals, base)
    table = category_table(conds, pairs, vals, base)
    vs = vs_random(conds, pairs, vals, base, g, level=float(acfg.get("ci", 0.95)))
    rows = sum(2 * b.size * (1 + len(conds)) for b in batches)
    return {"table": table, "summary": summarize_ablation(table), "pairs": pair_table, "vs_random": vs,
            "selections": sel_rows, "mean_source": mean_source, "n_runs": len(conds),
            "n_forward_passes": n_forward, "n_batches": len(batches), "n_rows": rows, "random_facts": facts}


def _change(vals, base, m, ci=None):
    v = vals[m] if ci is None else vals[m][ci]
    return v - base[m]


def ablation_pairs(conds, pairs: pd.DataFrame, vals, base) -> pd.DataFrame:
    """One row per condition x pair."""
    frames = []
    for ci, c in enumerate(conds):
        frames.append(pd.DataFrame({
            "selection": c.selection, "k": c.k, "seed": c.draw,
            "mode": c.mode, "where": c.where, "pair_id": pairs["pair_id"].to_numpy(),
            "category": pairs["category"].to_numpy(), "baseline_margin": base["margin"],
            "margin": vals["margin"][ci], "margin_change": _change(vals, base, "margin", ci),
            "baseline_post_edit_margin": base["post_edit_margin"],
            "post_edit_margin_change": _change(vals, base, "post_edit_margin", ci),
            "baseline_downstream_divergence": base["downstream_divergence"],
            "downstream_divergence_change": _change(vals, base, "downstream_divergence", ci)}))
    return pd.concat(frames, ignore_index=True)


def _mean_se(x: np.ndarray) -> tuple[float, float]:
    x = x[np.isfinite(x)]
    n = len(x)
    return (float(x.mean()) if n else float("nan"),
            float(x.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"))


def category_table(conds, pairs: pd.DataFrame, vals, base) -> pd.DataFrame:
    """One row per condition x category (and ``all``): mean changes with their iid SE over pairs."""
    cats = pairs["category"].to_numpy()
    groups = sorted(set(cats))
    base_correct = base["margin"] > 0
    rows = []
    for ci, c in enumerate(conds):
        m = vals["margin"][ci]
        for cat in groups + ["all"]:
            sel = np.ones(len(cats), bool) if cat == "all" else cats == cat
            n = int(sel.sum())
            acc, base_acc = float((m[sel] > 0).mean()), float(base_correct[sel].mean())
            row = {"selection": c.selection, "k": c.k, "seed": c.draw,
                   "mode": c.mode, "where": c.where, "category": cat, "accuracy": acc,
                   "accuracy_change": acc - base_acc, "n_pairs": n,
                   "n_components": int(sum(len(s.index) for s in c.sites)), "margin": float(m[sel].mean()),
                   "baseline_accuracy": base_acc}
            for metric in METRICS:
                mean, se = _mean_se(_change(vals, base, metric, ci)[sel])
                row[f"{metric}_change"], row[f"{metric}_change_se"] = mean, se
                row[f"baseline_{metric}"] = _mean_se(base[metric][sel])[0]
            rows.append(row)
    return pd.DataFrame(rows, columns=ABLATION_COLUMNS)


def vs_random(conds, pairs: pd.DataFrame, vals, base, clusters: np.ndarray, level: float = 0.95) -> pd.DataFrame:
    """The stable selection against the random selections matched to it, per k x mode x where x
    category x metric, on the same pairs (the least-stable selection is not compared: the random
    draws are matched to the stable components' sites and spreads, not to its):

    - ``change`` (with its clustered CI ``change_lo``/``change_hi``): the selection's mean change
      (over resample draws first);
    - ``random_mean``/``_sd``/``_min``/``_max``: over the random seeds' mean changes;
    - ``diff_vs_random``: the mean over pairs of (the selection's change - the mean change of the
      random selections on that pair), its cluster-robust SE and t interval (``diff_lo``/``diff_hi``,
      clusters of the run's ``analysis.cluster``);
    - ``p_perm``: the Monte Carlo permutation p-value of the selection among its random draws,
      ``(1 + #{seeds whose mean change lies at least as far from the random mean}) / (seeds + 1)``,
      two-sided; ``share_random_below``: the share of seeds with a smaller mean change;
      ``beyond_all_random``: the selection's change lies outside every seed's.
    """
    from ..stats.clustered import mean_ci

    cats = pairs["category"].to_numpy()
    keyed: dict[tuple, list[int]] = {}
    for ci, c in enumerate(conds):
        keyed.setdefault((c.selection, c.k, c.mode, c.where), []).append(ci)
    rows = []
    for (sel, k, mode, where), cis in keyed.items():
        if sel != "stable" or ("random", k, mode, where) not in keyed:
            continue  # the random draws are matched to the stable selection only
        rnd = keyed[("random", k, mode, where)]
        for metric in METRICS:
            change = _change(vals, base, metric)  # [conditions, N]
            s_all = change[cis].mean(0)  # [N]: over resample draws
            r_all = change[rnd]  # [S, N]
            for cat in sorted(set(cats)) + ["all"]:
                m = np.ones(len(cats), bool) if cat == "all" else cats == cat
                m &= np.isfinite(s_all) & np.isfinite(r_all).all(0)
                s, r = s_all[m], r_all[:, m]
                if not m.any():
                    continue
                sbar, rbar = float(s.mean()), r.mean(1)
                centre = float(rbar.mean())
                ch = mean_ci(s, clusters[m], level)
                d = mean_ci(s - r.mean(0), clusters[m], level)
                far = np.abs(rbar - centre) >= abs(sbar - centre) - 1e-12
                rows.append({"selection": sel, "k": k, "mode": mode, "where": where, "category": cat,
                             "metric": metric, "change": sbar, "change_lo": float(ch["lo"]),
                             "change_hi": float(ch["hi"]), "random_mean": centre,
                             "random_sd": float(rbar.std(ddof=1)) if len(rbar) > 1 else float("nan"),
                             "random_min": float(rbar.min()), "random_max": float(rbar.max()),
                             "diff_vs_random": float(d["mean"]), "diff_se": float(d["se"]),
                             "diff_lo": float(d["lo"]), "diff_hi": float(d["hi"]),
                             "n_clusters": int(d["n_clusters"]),
                             "p_perm": float((1 + far.sum()) / (len(rbar) + 1)),
                             "share_random_below": float((rbar < sbar).mean()),
                             "beyond_all_random": bool(sbar < rbar.min() or sbar > rbar.max()),
                             "n_seeds": len(rbar), "n_pairs": int(m.sum()), "pairs": ""})
    return pd.DataFrame(rows, columns=VS_RANDOM_COLUMNS)


def summarize_ablation(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and spread over seeds of each selection x k x mode x where x category."""
    keys = ["selection", "k", "mode", "where", "category"]
    g = table.groupby(keys, sort=False)
    out = g.agg(n_seeds=("seed", "nunique"), margin_change_mean=("margin_change", "mean"),
                margin_change_std=("margin_change", "std"), margin_change_min=("margin_change", "min"),
                margin_change_max=("margin_change", "max"), accuracy_change_mean=("accuracy_change", "mean"),
                accuracy_change_std=("accuracy_change", "std"),
                post_edit_margin_change_mean=("post_edit_margin_change", "mean"),
                post_edit_margin_change_std=("post_edit_margin_change", "std"),
                downstream_divergence_change_mean=("downstream_divergence_change", "mean"),
                downstream_divergence_change_std=("downstream_divergence_change", "std"),
                n_pairs=("n_pairs", "first"), n_components=("n_components", "mean")).reset_index()
    return out
