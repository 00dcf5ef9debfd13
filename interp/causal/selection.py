"""Which run, components and pairs the causal checks use: the run dir checked, candidates ranked by a run's stability
table, the stable / random / least-stable selections, the pairs re-tokenized as in the run, and
reference means for mean ablation."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from .. import rundir as R

log = logging.getLogger(__name__)

SELECTION_KINDS = ("stable", "random", "least_stable")


class RunDirError(ValueError):
    """The run directory is missing, incomplete or lacks a table the causal tests need."""


def check_run_dir(run) -> Path:
    if run is None or str(run) in ("", "???"):
        raise RunDirError("no run directory given: python -m interp.patch run=RUN_DIR (a directory "
                          "written by python -m interp.run)")
    run_dir = Path(str(run))
    if not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} does not exist; give run=DIR of a finished "
                          "`python -m interp.run` (it holds manifest.json, pairs.parquet, stability.parquet)")
    if not (run_dir / R.MANIFEST).exists():
        raise RunDirError(f"{run_dir} holds no {R.MANIFEST}: not a run directory of python -m interp.run, "
                          "or that run has not finished")
    if not R.is_complete(run_dir):
        raise RunDirError(f"{run_dir}: the run is not complete (manifest status != complete)")
    try:
        R.read_manifest(run_dir)
    except R.SchemaVersionError as err:  # a run newer than this code
        raise RunDirError(str(err)) from None
    missing = [f for f in (R.PAIRS, R.STABILITY) if not (run_dir / f).exists()]
    if missing:
        raise RunDirError(f"{run_dir} lacks {missing}")
    return run_dir


def rank_column(stab: pd.DataFrame, cfg_rank_by, run_cfg: dict) -> str:
    """Which column orders components when they are selected on the run's own table (``ablation.split``
    null): rank_by (patch config, else the run's analysis.rank_by), else ``ratio_hi`` (the upper
    bound of the clustered ratio interval: the equivalence rule's statistic) when present, else
    ``rank_calibrated``, else ``rank``."""
    rank_by = cfg_rank_by or (run_cfg.get("analysis") or {}).get("rank_by")
    if rank_by:
        if rank_by not in stab.columns:
            raise RunDirError(f"rank_by={rank_by!r} is not a column of stability.parquet "
                              f"({sorted(stab.columns)})")
        return str(rank_by)
    for col in ("ratio_hi", "rank_calibrated"):
        if col in stab.columns:
            return col
    return "rank"


def candidates(stab: pd.DataFrame, position: str, rank_col: str, hooks=None, layers=None,
               dedupe: bool = True) -> pd.DataFrame:
    """Rows of the stability table that may be selected: one position mode, ranked components, none
    flagged constant, offset or massive (``interp.rules.flagged``: a large constant offset or a
    massive activation would dominate any ablation; ``attrs["flagged_excluded"]`` counts them;
    ``dedupe``: without the resid_pre rows that repeat the previous layer's resid_post)."""
    from ..rules import flagged

    if position not in set(stab["position"]):
        raise RunDirError(f"position={position!r} is not in stability.parquet (has {sorted(set(stab['position']))})")
    d = stab[(stab["position"] == position) & stab[rank_col].notna()]
    bad = flagged(d)
    n_flagged = int(bad.sum())
    d = d[~bad]
    if dedupe:
        # blocks.{l}.hook_resid_pre is blocks.{l-1}.hook_resid_post: keep one name per activation
        post_layers = set(d.loc[d["hook"] == "resid_post", "layer"])
        d = d[~((d["hook"] == "resid_pre") & (d["layer"] - 1).isin(post_layers))]
    if hooks:
        d = d[d["hook"].isin(list(hooks))]
    if layers is not None:
        d = d[d["layer"].isin(list(layers))]
    if d.empty:
        raise RunDirError("no ranked component is left after the hooks/layers filters")
    d = d.copy()
    d["_rank"] = d[rank_col].astype("float64")
    out = d.sort_values(["_rank", "hook_name", "component"], kind="stable").reset_index(drop=True)
    out.attrs["flagged_excluded"] = n_flagged
    return out


def select_components(cands: pd.DataFrame, selection: str, k: int, seed: int = 0) -> pd.DataFrame:
    """k components: the most stable, the least stable, or random ones from the same hook points and
    layers as the k most stable (as many per (hook, layer) as there, not among them when possible)."""
    k = min(int(k), len(cands))
    if selection == "stable":
        return cands.head(k)
    if selection == "least_stable":
        return cands.tail(k).iloc[::-1].copy()
    if selection != "random":
        raise ValueError(f"selection={selection!r} is not one of {SELECTION_KINDS}")
    rng = np.random.default_rng([int(seed), k])
    top = cands.head(k)
    parts = []
    for (hook_name, _layer), n in top.groupby(["hook_name", "layer"], sort=False).size().items():
        site = cands[cands["hook_name"] == hook_name]
        pool = site[~site["component"].isin(top.loc[top["hook_name"] == hook_name, "component"])]
        if len(pool) < n:
            pool = site
        parts.append(pool.iloc[np.sort(rng.choice(len(pool), size=n, replace=False))])
    return pd.concat(parts)


def filter_pairs(pairs: pd.DataFrame, types, categories, limit) -> pd.DataFrame:
    d = pairs
    if types:
        d = d[d["type"].isin(list(types))]
    if categories:
        d = d[d["category"].isin(list(categories))]
    if limit is not None:
        d = d.groupby("category", sort=False).head(int(limit))
    return d.reset_index(drop=True)


def tokenize_pairs(pairs: pd.DataFrame, tokenizer) -> tuple[pd.DataFrame, list]:
    """Re-tokenize the run's pairs; keep those whose edit position matches the run's."""
    from ..pairs.validate import check_pair

    keep, tps = [], []
    for i, r in enumerate(pairs.itertuples()):
        v = check_pair(tokenizer, r.a, r.b)
        if v.ok and v.tokens.edit_pos == int(r.edit_pos):
            keep.append(i)
            tps.append(v.tokens)
        else:
            log.warning("pair %s is skipped: it does not re-tokenize as in the run", r.pair_id)
    return pairs.iloc[keep].reset_index(drop=True), tps


def read_sentences(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"ablation.mean_from: no file {path}")
    if path.suffix == ".jsonl":
        out = []
        for line in path.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                out += [rec[k] for k in ("text", "a", "b") if rec.get(k)]
        return out
    return [s.strip() for s in path.read_text().splitlines() if s.strip()]


def reference_means(lm, sentences: list[str], hook_names: set[str], batch_size: int) -> dict:
    """Mean of every component of ``hook_names`` over all tokens of ``sentences`` (BOS excluded)."""
    import torch

    from ..pairs.validate import encode

    sums: dict[str, torch.Tensor] = {}
    count = 0
    ids = [encode(lm.tokenizer, s) for s in sentences]
    ids = [x for x in ids if x]
    if not ids:
        raise ValueError("ablation.mean_from: no reference sentence")
    for start in range(0, len(ids), batch_size):
        chunk = ids[start:start + batch_size]
        T = 1 + max(len(x) for x in chunk)
        tokens = torch.full((len(chunk), T), lm.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), T), dtype=torch.bool)
        for r, x in enumerate(chunk):
            tokens[r, 0] = lm.bos_token_id
            tokens[r, 1:1 + len(x)] = torch.tensor(x)
            mask[r, :1 + len(x)] = True
        sent = mask.clone()
        sent[:, 0] = False
        sent = sent.to(lm.device)

        def make(name):
            def hook(act, hook=None):
                flat = act.detach().reshape(act.shape[0], act.shape[1], -1).double()
                s = flat[sent].sum(0)
                sums[name] = sums[name] + s if name in sums else s
            return hook

        with torch.inference_mode(), lm.bridge.hooks(fwd_hooks=[(n, make(n)) for n in hook_names]):
            lm.bridge(tokens.to(lm.device), attention_mask=mask.long().to(lm.device), return_type="logits")
        count += int(sent.sum())
    return {n: (s / count).float() for n, s in sums.items()}




# ---------------------------------------------------------------- held-out selection

def split_pairs(pairs: pd.DataFrame, cluster: str, fraction: float, seed: int) -> np.ndarray:
    """Which pairs of a run's pairs table select components (True) and which test them (False).

    Whole clusters (``interp.stats.clustered.cluster_keys``: with ``swap``, every pair of one token
    swap) go to one side, so no swap is both selected on and tested on; within each category the
    clusters are shuffled (seeded) and each goes to the selecting side when that brings the side's
    count closer to ``fraction`` of the category's pairs (so a category of two equal clusters
    gives one to each side). A cluster that spans categories goes where its first category puts it."""
    from ..stats.clustered import cluster_keys

    if not 0 < fraction < 1:
        raise ValueError(f"ablation.split={fraction!r}: the share of pairs that select must be in (0, 1)")
    g = cluster_keys(pairs, cluster)
    rng = np.random.default_rng([int(seed), 7])
    side: dict[int, bool] = {}
    cats = pairs["category"].to_numpy()
    for cat in sorted(set(cats)):
        in_cat = cats == cat
        cl, sizes = np.unique(g[in_cat], return_counts=True)
        order = rng.permutation(len(cl))
        want, got = fraction * in_cat.sum(), sum(side.get(int(c), False) * s for c, s in zip(cl, sizes))
        for i in order:
            c = int(cl[i])
            if c in side:
                continue
            side[c] = bool(abs(got + sizes[i] - want) < abs(got - want))
            got += sizes[i] * side[c]
    return np.array([side[int(c)] for c in g], dtype=bool)


def heldout_ranking(run_dir: Path, cands: pd.DataFrame, pairs: pd.DataFrame, select: np.ndarray,
                    position: str, cluster: str, level: float = 0.95) -> tuple[pd.DataFrame, list[str]]:
    """Rank the candidates on the selecting pairs only: the clustered ratio interval of mean |a-b| /
    mean control (``interp.stats.clustered.paired``) recomputed from ``pair_values.parquet`` over the
    pairs with ``select``; ``_rank`` = its upper bound ``ratio_hi`` (the equivalence rule's
    statistic: ascending = most confidently stable). Hook points whose per-pair values the run did
    not keep cannot be ranked held-out: their candidates are dropped and the hook points returned."""
    import pyarrow.parquet as pq

    from ..stats.clustered import cluster_keys, paired

    path = run_dir / R.PAIR_VALUES
    kept_hooks = set(pq.read_table(path, columns=["hook"]).column("hook").unique().to_pylist()) if path.exists() else set()
    missing = sorted(set(cands["hook"]) - kept_hooks)
    cands = cands[cands["hook"].isin(kept_hooks)]
    if cands.empty:
        raise RunDirError(f"{run_dir}: no per-pair values ({R.PAIR_VALUES}) for the candidate hook points "
                          f"{missing}: a held-out selection needs them (run with analysis.pair_values.hooks "
                          "covering them), or set ablation.split=null to select and test on the same pairs")
    sel_index = pairs["pair_index"].to_numpy()[select]
    g_all = cluster_keys(pairs, cluster)
    g_of = dict(zip(pairs["pair_index"].to_numpy().tolist(), g_all.tolist()))
    parts = []
    for (hook, layer), site in cands.groupby(["hook", "layer"], sort=False):
        v = pd.read_parquet(path, filters=[("hook", "==", hook), ("layer", "==", int(layer)),
                                           ("position", "==", position)],
                            columns=["pair_index", "component", "abs_diff", "control_diff"])
        v = v[v["pair_index"].isin(sel_index)]
        if v.empty:
            continue
        A = v.pivot(index="pair_index", columns="component", values="abs_diff")
        Rm = v.pivot(index="pair_index", columns="component", values="control_diff").loc[A.index, A.columns]
        st = paired(A.to_numpy(np.float64), Rm.to_numpy(np.float64),
                    np.array([g_of[i] for i in A.index]), level)
        ranks = pd.DataFrame({"component": A.columns.to_numpy(), "_rank": st["ratio_hi"],
                              "select_ratio_hi": st["ratio_hi"], "select_n_pairs": len(A)})
        parts.append(site.drop(columns=["_rank"]).merge(ranks, on="component", how="inner"))
    out = pd.concat(parts, ignore_index=True) if parts else cands.iloc[:0]
    out = out[out["_rank"].notna()]
    out = out.sort_values(["_rank", "hook_name", "component"], kind="stable").reset_index(drop=True)
    out.attrs.update(cands.attrs)
    return out, missing


def matched_random(cands: pd.DataFrame, top: pd.DataFrame, seed: int, pool: int = 10) -> pd.DataFrame:
    """Random components matched to ``top`` one for one: for each component of ``top``, one drawn
    uniformly from the ``pool`` components of the same hook point and layer nearest to it in log
    spread (the component's own standard deviation over sentence tokens), never a component of
    ``top`` and never one drawn twice; the draw is seeded. Where a site has too few others, the
    nearest unused ones are taken."""
    rng = np.random.default_rng([int(seed), len(top), 11])
    out = []
    for (hook_name, layer), want in top.groupby(["hook_name", "layer"], sort=False):
        site = cands[(cands["hook_name"] == hook_name) & (cands["layer"] == layer)]
        site = site[~site["component"].isin(want["component"])]
        if site.empty:
            site = cands[(cands["hook_name"] == hook_name) & (cands["layer"] == layer)]
        logs = np.log(np.maximum(site["spread"].to_numpy(np.float64), 1e-30))
        used = np.zeros(len(site), dtype=bool)
        for s in rng.permutation(np.log(np.maximum(want["spread"].to_numpy(np.float64), 1e-30))):
            free = np.flatnonzero(~used)
            if not len(free):
                break
            near = free[np.argsort(np.abs(logs[free] - s), kind="stable")[:pool]]
            pick = int(rng.choice(near))
            used[pick] = True
        out.append(site.iloc[np.flatnonzero(used)])
    return pd.concat(out) if out else top.iloc[:0]
