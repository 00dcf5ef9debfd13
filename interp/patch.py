"""Entry point: ``python -m interp.patch run=RUN_DIR k=[1,5,10,20]`` (Hydra, ``conf/patch.yaml``).

Causal tests of the components a run ranked (``interp.patching`` explains the methods):

1. **Ablation.** Take the top-k components by stability (rank read at ``position``, default the
   edit token), ablate them in both sentences of every grammar pair (``mean`` / ``resample`` /
   ``zero``, at ``where`` = ``edit`` / ``after`` / ``all``) and measure the change of the
   error-detection margin and accuracy per category. Controls: k random components drawn from the
   same hook points and layers as the stable ones (stratified, ``ablation.seeds`` seeds) and the k
   least stable components. One forward pass per batch of pairs per ablation.
2. **Activation patching** between the two sentences of a few pairs: residual stream per
   layer x position and attention heads (``hook_z``) per layer x head, denoising and noising, with
   the normalized metric; per pair and averaged over each category (positions aligned on the edit:
   ``offset`` = position - edit position).

Writes ``RUN_DIR/causal/``: ``ablation.parquet`` (one row per selection x k x seed x mode x where x
category, plus category ``all``), ``ablation_summary.parquet`` (mean and spread over seeds),
``ablation_pairs.parquet`` (per-pair margins), ``selections.parquet`` (which components each
selection ablated), ``patching.parquet``, ``figures/`` and ``manifest.json`` (written last).
``patch(cfg)`` does the work and returns a dict; tests call it directly.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from . import results as R

log = logging.getLogger(__name__)

CAUSAL = "causal"
ABLATION = "ablation.parquet"
ABLATION_SUMMARY = "ablation_summary.parquet"
ABLATION_PAIRS = "ablation_pairs.parquet"
SELECTIONS = "selections.parquet"
PATCHING = "patching.parquet"
SELECTION_KINDS = ("stable", "random", "least_stable")
ABLATION_COLUMNS = ["selection", "k", "seed", "mode", "where", "category", "margin_change", "accuracy",
                    "accuracy_change", "n_pairs", "n_components", "margin", "baseline_margin",
                    "baseline_accuracy", "margin_change_se"]


class RunDirError(ValueError):
    """The run directory is missing, incomplete or lacks a table the causal tests need."""


# ------------------------------------------------------------------------------------- inputs

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
    missing = [f for f in (R.PAIRS, R.STABILITY) if not (run_dir / f).exists()]
    if missing:
        raise RunDirError(f"{run_dir} lacks {missing}")
    return run_dir


def rank_column(stab: pd.DataFrame, cfg_rank_by, run_cfg: dict) -> str:
    """Which column orders components: rank_by (patch config, else the run's analysis.rank_by), else
    ``rank_calibrated`` when present, else ``rank``."""
    rank_by = cfg_rank_by or (run_cfg.get("analysis") or {}).get("rank_by")
    if rank_by:
        if rank_by not in stab.columns:
            raise RunDirError(f"rank_by={rank_by!r} is not a column of stability.parquet "
                              f"({sorted(stab.columns)})")
        return str(rank_by)
    return "rank_calibrated" if "rank_calibrated" in stab.columns else "rank"


def candidates(stab: pd.DataFrame, position: str, rank_col: str, hooks=None, layers=None,
               dedupe: bool = True) -> pd.DataFrame:
    """Rows of the stability table that may be selected: one position mode, ranked components
    (``dedupe``: without the resid_pre rows that repeat the previous layer's resid_post)."""
    if position not in set(stab["position"]):
        raise RunDirError(f"position={position!r} is not in stability.parquet (has {sorted(set(stab['position']))})")
    d = stab[(stab["position"] == position) & stab[rank_col].notna()]
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
    return d.sort_values(["_rank", "hook_name", "component"], kind="stable").reset_index(drop=True)


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
    from .pairs.validate import check_pair

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

    from .pairs.validate import encode

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


# ------------------------------------------------------------------------------------- ablation

def run_ablation(cfg: DictConfig, lm, pairs: pd.DataFrame, tps: list, cands: pd.DataFrame,
                 run_dir: Path) -> dict:
    import torch
    from tqdm.auto import tqdm

    from . import patching as P
    from .engine import forward, make_batches

    acfg = cfg.ablation
    modes, wheres = list(acfg.modes), list(acfg.where)
    bad = [m for m in modes if m not in P.MODES] + [w for w in wheres if w not in P.WHERE]
    if bad:
        raise ValueError(f"unknown ablation modes/where {bad}; modes: {P.MODES}, where: {P.WHERE}")
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

    sites = {key: P.group_components(d, means, lm.device) for key, d in chosen.items()}
    sel_rows["mean_used"] = (sel_rows["act_mean"] if means is None else
                             [float(means[h][c]) for h, c in zip(sel_rows["hook_name"], sel_rows["component"])])
    union = {n: torch.tensor(sorted(set(sel_rows.loc[sel_rows["hook_name"] == n, "component"])),
                             device=lm.device) for n in hook_names}

    groups = sorted(set(pairs["category"]))
    batches = make_batches(tps, [groups.index(c) for c in pairs["category"]], lm.bos_token_id,
                           lm.pad_token_id, int(cfg.batch_size), lm.device)
    margins = {r: np.full(len(pairs), np.nan) for r in runs}
    baseline = np.full(len(pairs), np.nan)
    bar = tqdm(total=len(batches) * (1 + len(runs)), unit="pass", desc="ablation",
               disable=not cfg.get("progress", True), file=sys.stderr)
    for bi, batch in enumerate(batches):
        idx = batch.index.numpy()
        clean: dict = {}
        need_clean = "resample" in modes
        logits = forward(lm.bridge, batch, P.capture_hooks(hook_names, clean, union) if need_clean else [])
        baseline[idx] = P.pair_margins(logits, batch).cpu().numpy()
        del logits
        bar.update(1)
        masks = {w: P.where_mask(batch, w) for w in wheres}
        donors = {}
        for run in runs:
            sel, k, s, mode, where, rs = run
            donor = None
            if mode == "resample":
                if rs not in donors:
                    donors[rs] = P.draw_donors(batch, rs * 1_000_003 + bi)
                donor = donors[rs]
            hooks = P.ablation_hooks(sites[(sel, k, s)], masks[where], mode, donor=donor, clean=clean)
            logits = forward(lm.bridge, batch, hooks)
            margins[run][idx] = P.pair_margins(logits, batch).cpu().numpy()
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
            "margin_change": m - baseline}))
        for cat in groups + ["all"]:
            sel_mask = np.ones(len(pairs), bool) if cat == "all" else (pairs["category"] == cat).to_numpy()
            d = m[sel_mask] - baseline[sel_mask]
            n = int(sel_mask.sum())
            acc = float((m[sel_mask] > 0).mean())
            base_acc = float(base_correct[sel_mask].mean())
            rows.append({
                "selection": sel, "k": k, "seed": rs, "mode": mode, "where": where, "category": cat,
                "margin_change": float(d.mean()), "accuracy": acc, "accuracy_change": acc - base_acc,
                "n_pairs": n, "n_components": n_comp, "margin": float(m[sel_mask].mean()),
                "baseline_margin": float(baseline[sel_mask].mean()), "baseline_accuracy": base_acc,
                "margin_change_se": float(d.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"),
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
                accuracy_change_std=("accuracy_change", "std"), n_pairs=("n_pairs", "first"),
                n_components=("n_components", "mean")).reset_index()
    return out


# ------------------------------------------------------------------------------------- patching

def run_patching(cfg: DictConfig, lm, pairs: pd.DataFrame, tps: list) -> pd.DataFrame:
    import torch

    from . import patching as P

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
        df = P.patch_pair(lm.bridge, ta, tb, tp.edit_pos + 1, kinds=kinds, directions=list(pcfg.directions),
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


# ------------------------------------------------------------------------------------- main

def check_config(cfg: DictConfig) -> Path:
    """Check the settings that need no model (run dir, modes, positions, sizes) and return the run
    dir; raise ``RunDirError`` or ``ConfigError`` (one line) at the first problem."""
    from . import patching as P
    from .config import POSITION_MODES, ConfigError

    run_dir = check_run_dir(None if OmegaConf.is_missing(cfg, "run") else cfg.run)
    a, p = cfg.ablation, cfg.patching
    checks = [
        ("position", [cfg.position], POSITION_MODES), ("ablation.modes", a.modes, P.MODES),
        ("ablation.where", a.where, P.WHERE), ("ablation.selections", a.selections, SELECTION_KINDS),
        ("patching.resid", [p.resid], ("resid_pre", "resid_post")),
        ("patching.directions", p.directions, ("denoising", "noising")),
        ("patching.metrics", p.metrics, ("margin", "logprob")),
    ]
    for key, values, allowed in checks:
        bad = [v for v in values if v not in allowed]
        if bad:
            raise ConfigError(f"{key}: {bad[0]!r} is not one of {', '.join(allowed)}")
    for key, value in (("k", min(cfg.k, default=1)), ("batch_size", cfg.batch_size), ("ablation.seeds", a.seeds),
                       ("patching.n_pairs", p.n_pairs), ("patching.rows_per_pass", p.rows_per_pass)):
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key}={value!r} must be a whole number >= 1")
    return run_dir


def patch(cfg: DictConfig) -> dict:
    """Run the causal tests of ``cfg.run``; write ``RUN/causal``; return paths and tables."""
    t0 = time.time()
    run_dir = check_config(cfg)
    out_dir = Path(cfg.out) if cfg.get("out") else run_dir / CAUSAL
    man = R.read_manifest(run_dir)
    rcfg = man["config"]
    timings: dict[str, float] = {}
    # a crash leaves "running" here, never an older "complete" beside half-replaced tables
    R.write_json(out_dir / "manifest.json", {"status": "running", "run_dir": str(run_dir.resolve()),
                                             "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})

    from .run import get_model
    from .run.manifest import versions

    mcfg = OmegaConf.create({"model": rcfg["model"], "device": cfg.device or rcfg.get("device", "auto"),
                             "dtype": cfg.dtype or rcfg.get("dtype", "auto")})
    lm = get_model(mcfg)
    timings["load_model_s"] = time.time() - t0
    import torch

    torch.manual_seed(int(cfg.seed))

    stab = R.read_table(run_dir, R.STABILITY)
    pairs_all = R.read_table(run_dir, R.PAIRS)
    rank_col = rank_column(stab, cfg.get("rank_by"), rcfg)
    result: dict = {"dir": out_dir, "rank_column": rank_col}
    counts: dict = {}
    written: list[str] = []
    mean_source = None

    if cfg.ablation.enabled:
        t = time.time()
        cands = candidates(stab, str(cfg.position), rank_col, cfg.get("hook_points"), cfg.get("layers"),
                           dedupe=bool(cfg.get("dedupe", True)))
        pairs = filter_pairs(pairs_all, cfg.ablation.types, cfg.ablation.categories, cfg.ablation.limit)
        pairs, tps = tokenize_pairs(pairs, lm.tokenizer)
        if pairs.empty:
            raise RunDirError(f"{run_dir}: no pair of types {list(cfg.ablation.types or [])} to ablate")
        abl = run_ablation(cfg, lm, pairs, tps, cands, run_dir)
        R.write_parquet(out_dir / ABLATION, abl["table"])
        R.write_parquet(out_dir / ABLATION_SUMMARY, abl["summary"])
        R.write_parquet(out_dir / ABLATION_PAIRS, abl["pairs"])
        R.write_parquet(out_dir / SELECTIONS, abl["selections"])
        written += [ABLATION, ABLATION_SUMMARY, ABLATION_PAIRS, SELECTIONS]
        result.update(ablation=abl["table"], ablation_summary=abl["summary"], selections=abl["selections"])
        counts.update(ablation_pairs=len(pairs), ablation_runs=abl["n_runs"],
                      ablation_forward_passes=abl["n_forward_passes"], ablation_batches=abl["n_batches"],
                      candidates=len(cands))
        mean_source = abl["mean_source"]
        timings["ablation_s"] = time.time() - t

    if cfg.patching.enabled:
        t = time.time()
        pairs = filter_pairs(pairs_all, cfg.patching.types, cfg.patching.categories, None)
        pairs, tps = tokenize_pairs(pairs, lm.tokenizer)
        pt = run_patching(cfg, lm, pairs, tps)
        if not pt.empty:
            R.write_parquet(out_dir / PATCHING, pt)
            written.append(PATCHING)
        result["patching"] = pt
        counts["patched_pairs"] = int(pt.loc[pt["level"] == "pair", "pair_id"].nunique()) if not pt.empty else 0
        timings["patching_s"] = time.time() - t

    figure_info: dict = {}
    if cfg.figures.enabled:
        t = time.time()
        from .figures.causal import write_causal_figures

        figure_info = write_causal_figures(out_dir, result.get("ablation"), result.get("patching"),
                                           n_pair_figures=int(cfg.figures.n_pairs), png=bool(cfg.figures.png),
                                           read_tables=False)
        timings["figures_s"] = time.time() - t
    timings["total_s"] = time.time() - t0

    manifest = {
        "status": "complete",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "run_dir": str(run_dir.resolve()),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "model": man.get("model"),
        "device": str(lm.device), "dtype": str(lm.dtype).replace("torch.", ""),
        "rank_column": rank_col,
        "versions": versions(),
        "counts": counts,
        "method": {
            "ablation": "components replaced in both sentences of every pair; margin = log P(a) - log P(b)",
            "mean_source": mean_source,
            "random_control": "k components drawn from the same (hook, layer) sites as the k most stable, "
                              "excluding them when the site has enough others",
            "resample": "per (row, position) a donor row of another pair of the batch with a real token "
                        "there, from the clean pass; seeded by seed and batch; mean where none",
            "where": {"edit": "the edited token", "after": "tokens after the edit",
                      "all": "every sentence token (BOS never ablated)"},
            "patching": "normalized = (metric(patched) - metric(base)) / (metric(source) - metric(base)); "
                        "denoising: base b (wrong), source a (correct); noising: base a, source b; "
                        "category rows average pairs at the same offset from the edit",
            "transformer_lens_patching": "transformer_lens.patching works with TransformerBridge (TL "
                                         "4.3); tests/test_patching.py checks interp.patching.generic_patch "
                                         "against it",
        },
        "files": written,  # tables written by this invocation (a disabled part leaves older files alone)
        "figures": figure_info,
        "timings": timings,
    }
    R.write_json(out_dir / "manifest.json", manifest)
    result["manifest"] = manifest
    print_summary(result)
    return result


def print_summary(result: dict) -> None:
    lines = [f"causal tests -> {result['dir']} (ranked by {result['rank_column']})"]
    summ = result.get("ablation_summary")
    if summ is not None and not summ.empty:
        d = summ[summ["category"] == "all"]
        lines.append("ablation, all grammar pairs: mean margin change (random: mean +- std over seeds)")
        for r in d.itertuples():
            spread = f" +- {r.margin_change_std:.3f}" if r.n_seeds > 1 else ""
            lines.append(f"  {r.selection:<13} k={r.k:<4} {r.mode:<9} {r.where:<6} "
                         f"margin change {r.margin_change_mean:+.3f}{spread}  accuracy change {r.accuracy_change_mean:+.3f}")
    print("\n".join(lines), flush=True)


def _conf() -> str:
    from .config import conf_dir

    return str(conf_dir())


@hydra.main(config_path=_conf(), config_name="patch", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    from .cli import fail
    from .config import ConfigError
    from .model import ModelLoadError

    try:
        patch(cfg)
    except (RunDirError, ConfigError, ModelLoadError) as err:
        fail("interp.patch", str(err))


def main() -> None:
    """``python -m interp.patch run=RUN_DIR ...`` (console script ``interp-patch``); ``--help`` lists the keys."""
    _hydra_main()


if __name__ == "__main__":
    main()
