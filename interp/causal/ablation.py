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
from .selection import SELECTION_KINDS, read_sentences, reference_means, select_components

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


ABLATION_COLUMNS = ["selection", "k", "seed", "mode", "where", "category", "margin_change", "accuracy",
                    "accuracy_change", "n_pairs", "n_components", "margin", "baseline_margin",
                    "baseline_accuracy", "margin_change_se",
                    # the part of the margin an intervention at or after the edit can move: the tokens
                    # after the edit (interp.causal.atp.post_edit_margin)
                    "post_edit_margin_change", "post_edit_margin_change_se", "baseline_post_edit_margin"]


def both_margins(logits: Float[Tensor, "VB T d_vocab"], batch: Batch) -> tuple[np.ndarray, np.ndarray]:
    """(whole-sentence margin, post_edit_margin) of every pair of the batch."""
    from .atp import post_edit_margin

    return pair_margins(logits, batch).cpu().numpy(), post_edit_margin(logits, batch).cpu().numpy()


def run_ablation(cfg: DictConfig, lm, pairs: pd.DataFrame, tps: list, cands: pd.DataFrame,
                 run_dir: Path) -> dict:
    import torch
    from tqdm.auto import tqdm


    acfg = cfg.ablation
    modes, wheres = list(acfg.modes), list(acfg.where)
    bad = [m for m in modes if m not in MODES] + [w for w in wheres if w not in WHERE]
    if bad:
        raise ValueError(f"unknown ablation modes/where {bad}; modes: {MODES}, where: {WHERE}")
    sels = list(acfg.selections)
    if any(s not in SELECTION_KINDS for s in sels):
        raise ValueError(f"ablation.selections must come from {SELECTION_KINDS}, got {sels}")
    base_seed = int(cfg.seed)
    seeds = [base_seed + i for i in range(max(1, int(acfg.seeds)))]
    ks = sorted({int(k) for k in cfg.k})
    if not ks or min(ks) < 1:
        raise ValueError(f"k must be a list of positive integers, got {list(cfg.k)}")

    # which components each (selection, k, seed) ablates
    chosen: dict[tuple, pd.DataFrame] = {}
    for k in ks:
        for sel in sels:
            for s in (seeds if sel == "random" else [base_seed]):
                chosen[(sel, k, s)] = select_components(cands, sel, k, s)
    sel_rows = pd.concat([d.assign(selection=sel, k=k, seed=s)[
        ["selection", "k", "seed", "hook", "hook_name", "layer", "component", "_rank", "normalized", "act_mean"]
        + (["head"] if "head" in d else [])] for (sel, k, s), d in chosen.items()], ignore_index=True)
    sel_rows = sel_rows.rename(columns={"_rank": "rank_value"})

    # the runs: (selection, k, selection seed, mode, where, resample seed)
    runs = []
    for (sel, k, s), _ in chosen.items():
        for mode in modes:
            for where in wheres:
                if sel == "random":
                    runs.append((sel, k, s, mode, where, s))
                elif mode == "resample":
                    runs += [(sel, k, s, mode, where, rs) for rs in seeds]
                else:
                    runs.append((sel, k, s, mode, where, base_seed))

    hook_names = sorted(set(sel_rows["hook_name"]))
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

    sites = {key: group_components(d, means, lm.device) for key, d in chosen.items()}
    sel_rows["mean_used"] = (sel_rows["act_mean"] if means is None else
                             [float(means[h][c]) for h, c in zip(sel_rows["hook_name"], sel_rows["component"])])
    union = {n: torch.tensor(sorted(set(sel_rows.loc[sel_rows["hook_name"] == n, "component"])),
                             device=lm.device) for n in hook_names}

    groups = sorted(set(pairs["category"]))
    batches = make_batches(tps, [groups.index(c) for c in pairs["category"]], lm.bos_token_id,
                           lm.pad_token_id, int(cfg.batch_size), lm.device)
    margins = {r: np.full(len(pairs), np.nan) for r in runs}
    post = {r: np.full(len(pairs), np.nan) for r in runs}
    baseline = np.full(len(pairs), np.nan)
    baseline_post = np.full(len(pairs), np.nan)
    bar = tqdm(total=len(batches) * (1 + len(runs)), unit="pass", desc="ablation",
               disable=not cfg.get("progress", True), file=sys.stderr)
    for bi, batch in enumerate(batches):
        idx = batch.index.numpy()
        clean: dict = {}
        need_clean = "resample" in modes
        logits = forward(lm.bridge, batch, capture_hooks(hook_names, clean, union) if need_clean else [])
        baseline[idx], baseline_post[idx] = both_margins(logits, batch)
        del logits
        bar.update(1)
        masks = {w: where_mask(batch, w) for w in wheres}
        donors = {}
        for run in runs:
            sel, k, s, mode, where, rs = run
            donor = None
            if mode == "resample":
                if rs not in donors:
                    donors[rs] = draw_donors(batch, rs * 1_000_003 + bi)
                donor = donors[rs]
            hooks = ablation_hooks(sites[(sel, k, s)], masks[where], mode, donor=donor, clean=clean)
            logits = forward(lm.bridge, batch, hooks)
            margins[run][idx], post[run][idx] = both_margins(logits, batch)
            del logits
            bar.update(1)
    bar.close()

    # tables
    cats = list(pairs["category"])
    pair_frames, rows = [], []
    base_correct = baseline > 0
    for run in runs:
        sel, k, s, mode, where, rs = run
        m = margins[run]
        n_comp = len(chosen[(sel, k, s)])
        pair_frames.append(pd.DataFrame({
            "selection": sel, "k": k, "seed": rs, "mode": mode, "where": where,
            "pair_id": pairs["pair_id"], "category": cats, "baseline_margin": baseline, "margin": m,
            "margin_change": m - baseline, "baseline_post_edit_margin": baseline_post,
            "post_edit_margin_change": post[run] - baseline_post}))
        for cat in groups + ["all"]:
            sel_mask = np.ones(len(pairs), bool) if cat == "all" else (pairs["category"] == cat).to_numpy()
            d = m[sel_mask] - baseline[sel_mask]
            dp = post[run][sel_mask] - baseline_post[sel_mask]
            n = int(sel_mask.sum())
            acc = float((m[sel_mask] > 0).mean())
            base_acc = float(base_correct[sel_mask].mean())
            rows.append({
                "selection": sel, "k": k, "seed": rs, "mode": mode, "where": where, "category": cat,
                "margin_change": float(d.mean()), "accuracy": acc, "accuracy_change": acc - base_acc,
                "n_pairs": n, "n_components": n_comp, "margin": float(m[sel_mask].mean()),
                "baseline_margin": float(baseline[sel_mask].mean()), "baseline_accuracy": base_acc,
                "margin_change_se": float(d.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"),
                "post_edit_margin_change": float(dp.mean()),
                "post_edit_margin_change_se": float(dp.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"),
                "baseline_post_edit_margin": float(baseline_post[sel_mask].mean()),
            })
    table = pd.DataFrame(rows, columns=ABLATION_COLUMNS)
    return {"table": table, "summary": summarize_ablation(table), "pairs": pd.concat(pair_frames, ignore_index=True),
            "selections": sel_rows, "mean_source": mean_source, "n_runs": len(runs),
            "n_forward_passes": len(batches) * (1 + len(runs)), "n_batches": len(batches)}


def summarize_ablation(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and spread over seeds of each selection x k x mode x where x category."""
    keys = ["selection", "k", "mode", "where", "category"]
    g = table.groupby(keys, sort=False)
    out = g.agg(n_seeds=("seed", "nunique"), margin_change_mean=("margin_change", "mean"),
                margin_change_std=("margin_change", "std"), margin_change_min=("margin_change", "min"),
                margin_change_max=("margin_change", "max"), accuracy_change_mean=("accuracy_change", "mean"),
                accuracy_change_std=("accuracy_change", "std"),
                post_edit_margin_change_mean=("post_edit_margin_change", "mean"),
                post_edit_margin_change_std=("post_edit_margin_change", "std"), n_pairs=("n_pairs", "first"),
                n_components=("n_components", "mean")).reset_index()
    return out


