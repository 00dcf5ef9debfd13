"""The causal checks of a run as one call: ``run_causal(cfg)`` (what ``python -m interp.patch``
runs) checks the run dir and settings, loads the run's model, ablates and patches, and writes
``RUN_DIR/causal/`` (tables, figures, ``manifest.json`` last); ``summary_text`` says what it found."""

from __future__ import annotations

import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .. import rundir as R
from .ablation import run_ablation
from .patching import run_patching
from .selection import (SELECTION_KINDS, RunDirError, candidates, check_run_dir, filter_pairs, rank_column,
                        tokenize_pairs)

CAUSAL = "causal"
ABLATION = "ablation.parquet"
ABLATION_SUMMARY = "ablation_summary.parquet"
ABLATION_PAIRS = "ablation_pairs.parquet"
ABLATION_VS_RANDOM = "ablation_vs_random.parquet"
SELECTIONS = "selections.parquet"
PATCHING = "patching.parquet"
ATP = "atp.parquet"
ATP_VALIDATION = "atp_validation.parquet"
# stability columns shown beside each component's attribution in atp.parquet
ATP_STABILITY_COLUMNS = ("normalized", "ratio", "ratio_lo", "ratio_hi", "adj_coef", "q_cluster", "stable",
                         "constant", "offset_dim", "massive")


def check_config(cfg: DictConfig) -> Path:
    """Check the settings that need no model (run dir, modes, positions, sizes) and return the run
    dir; raise ``RunDirError`` or ``ConfigError`` (one line) at the first problem."""
    from . import ablation as P
    from ..config import POSITION_MODES, ConfigError

    run_dir = check_run_dir(None if OmegaConf.is_missing(cfg, "run") else cfg.run)
    a, p = cfg.ablation, cfg.patching
    checks = [
        ("position", [cfg.position], POSITION_MODES), ("ablation.modes", a.modes, P.MODES),
        ("ablation.where", a.where, P.WHERE), ("ablation.selections", a.selections, SELECTION_KINDS),
        ("patching.resid", [p.resid], ("resid_pre", "resid_post")),
        ("patching.directions", p.directions, ("denoising", "noising")),
        ("patching.metrics", p.metrics, ("margin", "logprob")),
        ("patching.positions", [p.get("positions", "modes")], ("modes", "each")),
    ]
    for key, values, allowed in checks:
        bad = [v for v in values if v not in allowed]
        if bad:
            raise ConfigError(f"{key}: {bad[0]!r} is not one of {', '.join(allowed)}")
    if a.get("random", "matched") not in ("matched", "site"):
        raise ConfigError(f"ablation.random: {a.random!r} is not one of matched, site")
    split = a.get("split")
    if split is not None and not (isinstance(split, (int, float)) and 0 < float(split) < 1):
        raise ConfigError(f"ablation.split={split!r} must be a share in (0, 1) of the pairs that select, "
                          "or null (select and test on the same pairs)")
    for key, value in (("ablation.match_pool", a.get("match_pool", 10)),
                       ("ablation.resample_draws", a.get("resample_draws", 5)),
                       ("ablation.rows_per_pass", a.get("rows_per_pass", 256))):
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key}={value!r} must be a whole number >= 1")
    for key, value in (("k", min(cfg.k, default=1)), ("batch_size", cfg.batch_size), ("ablation.seeds", a.seeds),
                       ("patching.n_pairs", p.n_pairs), ("patching.rows_per_pass", p.rows_per_pass)):
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key}={value!r} must be a whole number >= 1")
    return run_dir


def run_causal(cfg: DictConfig) -> dict:
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

    from ..run import get_model
    from ..run.manifest import versions

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
        abl, facts = _ablation(cfg, lm, run_dir, rcfg, stab, pairs_all, rank_col)
        R.write_parquet(out_dir / ABLATION, abl["table"])
        R.write_parquet(out_dir / ABLATION_SUMMARY, abl["summary"])
        R.write_parquet(out_dir / ABLATION_PAIRS, abl["pairs"])
        R.write_parquet(out_dir / ABLATION_VS_RANDOM, abl["vs_random"])
        R.write_parquet(out_dir / SELECTIONS, abl["selections"])
        written += [ABLATION, ABLATION_SUMMARY, ABLATION_PAIRS, ABLATION_VS_RANDOM, SELECTIONS]
        result.update(ablation=abl["table"], ablation_summary=abl["summary"], selections=abl["selections"],
                      ablation_vs_random=abl["vs_random"], ablation_facts=facts)
        counts.update(ablation_pairs=len(abl["pairs"]["pair_id"].unique()), ablation_runs=abl["n_runs"],
                      ablation_forward_passes=abl["n_forward_passes"], ablation_batches=abl["n_batches"],
                      ablation_rows=abl["n_rows"], candidates=facts["candidates"],
                      candidates_flagged_excluded=facts["candidates_flagged_excluded"])
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
        result["patching_facts"] = {"backend": pt.attrs.get("backend")}  # hf: the plain tree; bridge
        counts["patched_pairs"] = int(pt.loc[pt["level"] == "pair", "pair_id"].nunique()) if not pt.empty else 0
        timings["patching_s"] = time.time() - t

    atp_facts = None
    if cfg.get("atp") is not None and cfg.atp.enabled:
        t = time.time()
        table, atp_facts = _attribution(cfg, lm, man, stab, pairs_all)
        R.write_parquet(out_dir / ATP, table)
        written.append(ATP)
        if atp_facts.get("components") is not None:
            R.write_parquet(out_dir / ATP_VALIDATION, atp_facts.pop("components"))
            written.append(ATP_VALIDATION)
        result["atp"], result["atp_facts"] = table, atp_facts
        counts["atp_pairs"] = atp_facts["n_pairs"]
        timings["atp_s"] = time.time() - t

    figure_info: dict = {}
    if cfg.figures.enabled:
        t = time.time()
        from ..figures.causal import write_causal_figures

        figure_info = write_causal_figures(out_dir, result.get("ablation"), result.get("patching"),
                                           n_pair_figures=int(cfg.figures.n_pairs), png=bool(cfg.figures.png),
                                           read_tables=False, vs_random=result.get("ablation_vs_random"))
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
            "ablation": "components replaced in both sentences of every pair; margin = log P(a) - log P(b); "
                        "post_edit_margin = the same over the tokens after the edit only (what an intervention "
                        "at or after the edit can move)",
            "mean_source": mean_source,
            "random_control": "matched (ablation.random=matched): per component of the k most stable, one of the "
                              "ablation.match_pool components of its hook point and layer nearest in log spread, "
                              "never a stable one, seeded; site: any components of those sites; "
                              "ablation.seeds draws",
            "selection": "ablation.split of the run's pairs (whole clusters of analysis.cluster, per category) "
                         "rank the candidates by the clustered ratio_hi recomputed on them from "
                         "pair_values.parquet; the other pairs are ablated (split=null: the run's ranking "
                         "column, same pairs)",
            "vs_random": "ablation_vs_random.parquet: diff_vs_random = mean over pairs of the selection's change "
                         "minus the random selections' mean change on that pair, cluster-robust t interval; "
                         "p_perm = the selection's place among the random draws (two-sided Monte Carlo)",
            "resample": "per (row, position) a donor row of another pair of the batch with a real token "
                        "there, from the clean pass; seeded by seed and batch; mean where none",
            "where": {"edit": "the edited token", "after": "tokens after the edit",
                      "all": "every sentence token (BOS never ablated)"},
            "patching": "normalized = (metric(patched) - metric(base)) / (metric(source) - metric(base)); "
                        "denoising: base b (wrong), source a (correct); noising: base a, source b; "
                        "|denominator| = |post_edit_margin|; category rows: ratio of means over pairs with "
                        "|denominator| >= patching.min_denominator (the rest counted in n_excluded), pairs oriented "
                        "by the sign of their denominator, percentile bootstrap CI over pairs "
                        "(normalized_lo/normalized_hi); positions=modes: per layer the edit token and the tokens "
                        "after it as one block",
            "atp": "attribution patching (interp.causal.atp): per pair, (act_a - act_b) . d/dact of b's summed "
                   "log-probability of the tokens after the edit (post_edit_margin's b term), on b's run; "
                   "atp_mean > 0: patching the component from a into b raises b's post-edit log-probability, "
                   "lowering post_edit_margin by as much; edit = the edited token, after = summed over the "
                   "tokens after it; validated against real patching on a sample (atp.pearson, atp.spearman)",
            "transformer_lens_patching": "transformer_lens.patching works with TransformerBridge (TL "
                                         "4.3); tests/test_patching.py checks interp.causal.patching.generic_patch "
                                         "against it",
        },
        "atp": atp_facts,
        "ablation": result.get("ablation_facts"),
        "patching": result.get("patching_facts"),
        "files": written,  # tables written by this invocation (a disabled part leaves older files alone)
        "figures": figure_info,
        "timings": timings,
    }
    R.write_json(out_dir / "manifest.json", manifest)
    result["manifest"] = manifest
    return result


def _ablation(cfg: DictConfig, lm, run_dir: Path, rcfg: dict, stab, pairs_all, rank_col: str) -> tuple:
    """Candidates, the held-out split, and the ablation on the test pairs (``interp.causal.ablation``)."""
    import numpy as np

    from ..stats.clustered import cluster_keys
    from .selection import heldout_ranking, split_pairs

    a = cfg.ablation
    cands = candidates(stab, str(cfg.position), rank_col, cfg.get("hook_points"), cfg.get("layers"),
                       dedupe=bool(cfg.get("dedupe", True)))
    cluster = str((rcfg.get("analysis") or {}).get("cluster", "swap"))
    facts = {"candidates_flagged_excluded": int(cands.attrs.get("flagged_excluded", 0)), "cluster": cluster}
    split = a.get("split")
    test = pairs_all
    if split is not None:
        select = split_pairs(pairs_all, cluster, float(split), int(cfg.seed))
        cands, missing = heldout_ranking(run_dir, cands, pairs_all, select, str(cfg.position), cluster,
                                         float(a.get("ci", 0.95)))
        test = pairs_all[~select]
        facts.update(selection="held_out", split=float(split), select_pairs=int(select.sum()),
                     test_pairs=int((~select).sum()), rank_column="ratio_hi (selecting pairs)",
                     hooks_without_values=missing)
    else:
        facts.update(selection="in_sample", rank_column=rank_col)
    facts["candidates"] = len(cands)
    pairs = filter_pairs(test.reset_index(drop=True), a.types, a.categories, a.limit)
    pairs, tps = tokenize_pairs(pairs, lm.tokenizer)
    ones = [i for i, tp in enumerate(tps) if tp.one_token]
    facts["skipped_span_pairs"] = len(tps) - len(ones)
    pairs, tps = pairs.iloc[ones].reset_index(drop=True), [tps[i] for i in ones]
    if pairs.empty:
        raise RunDirError(f"{run_dir}: no one-token pair of types {list(a.types or [])} to ablate"
                          + (" among the held-out pairs" if split is not None else ""))
    abl = run_ablation(cfg, lm, pairs, tps, cands, run_dir, clusters=cluster_keys(pairs, cluster))
    abl["vs_random"]["pairs"] = "held_out" if split is not None else "in_sample"
    facts.update(abl["random_facts"])
    facts["test_pairs_ablated"] = len(pairs)
    return abl, facts


def _attribution(cfg: DictConfig, lm, man: dict, stab, pairs_all) -> tuple:
    """Attribution patching for every component of the run's hook points (``interp.causal.atp``),
    with the stability columns beside it and its validation against real patching."""
    from ..config import ConfigError
    from .atp import atp_table, validate

    a = cfg.atp
    points = list(cfg.get("hook_points") or dict.fromkeys(s["point"] for s in man["hooks"]))
    points = [p for p in points if p != "resid_mid"]  # no plain-tree hook may replace it
    if not points:
        raise ConfigError("atp: no hook point of the run can be patched (resid_mid cannot)")
    pairs = filter_pairs(pairs_all, a.types, a.categories, a.limit)
    pairs, tps = tokenize_pairs(pairs, lm.tokenizer)
    if pairs.empty:
        raise RunDirError(f"no pair of types {list(a.types or [])} for attribution patching")
    table = atp_table(lm, tps, points, int(cfg.batch_size), list(a.modes), cfg.get("layers"))
    attrs = dict(table.attrs)  # before the merge, which need not carry them
    keys = ["hook", "layer", "component", "position"]
    cols = [c for c in ATP_STABILITY_COLUMNS if c in stab]
    table = table.merge(stab[keys + cols], on=keys, how="left")
    facts = {"n_pairs": int(attrs["n_pairs"]), "skipped_span_pairs": int(attrs["skipped_span_pairs"]),
             "metric": "post_edit_margin", "modes": list(a.modes), "hook_points": points,
             "non_finite": int(attrs.get("non_finite", 0))}
    if int(a.validate):
        v = validate(lm, tps, table, n=int(a.validate), seed=int(cfg.seed), batch_size=int(cfg.batch_size))
        facts.update(pearson=v["pearson"], spearman=v["spearman"], validated_components=v["n_components"],
                     validated_pairs=v["n_pairs"], components=v["components"])
    if "stable" in table:  # do the stable components matter? mean |AtP| of stable vs the others
        by = table.groupby(["position", table["stable"].fillna(False).astype(bool)])["atp_abs_mean"].mean()
        facts["mean_abs_atp"] = {f"{pos}/{'stable' if st else 'other'}": float(v) for (pos, st), v in by.items()}
    return table, facts


def summary_text(result: dict) -> str:
    """What ``python -m interp.patch`` prints: where the results are, the mean margin change per selection."""
    lines = [f"causal tests -> {result['dir']} (ranked by {result['rank_column']})"]
    summ = result.get("ablation_summary")
    if summ is not None and not summ.empty:
        d = summ[summ["category"] == "all"]
        lines.append("ablation, all grammar pairs: mean change of the margin and of post_edit_margin (the tokens "
                     "after the edit; random: mean +- std over seeds)")
        for r in d.itertuples():
            spread = f" +- {r.margin_change_std:.3f}" if r.n_seeds > 1 else ""
            pspread = f" +- {r.post_edit_margin_change_std:.3f}" if r.n_seeds > 1 else ""
            lines.append(f"  {r.selection:<13} k={r.k:<4} {r.mode:<9} {r.where:<6} "
                         f"margin change {r.margin_change_mean:+.3f}{spread}  post-edit {r.post_edit_margin_change_mean:+.3f}"
                         f"{pspread}  accuracy change {r.accuracy_change_mean:+.3f}")
    vs = result.get("ablation_vs_random")
    if vs is not None and not vs.empty:
        facts = result.get("ablation_facts") or {}
        d = vs[(vs["category"] == "all") & (vs["metric"].isin(["post_edit_margin", "downstream_divergence"]))]
        lines.append(f"against matched random selections ({facts.get('seeds')} seeds, {facts.get('random')}; "
                     f"{'held-out' if facts.get('selection') == 'held_out' else 'IN-SAMPLE'} pairs, "
                     f"{facts.get('test_pairs_ablated')} ablated): diff_vs_random [CI] and permutation p")
        for r in d.itertuples():
            lines.append(f"  {r.selection:<13} k={r.k:<4} {r.mode:<9} {r.where:<6} {r.metric:<22} "
                         f"change {r.change:+.3f}  random {r.random_mean:+.3f} (sd {r.random_sd:.3f})  "
                         f"diff {r.diff_vs_random:+.3f} [{r.diff_lo:+.3f}, {r.diff_hi:+.3f}]  p_perm {r.p_perm:.3f}")
    f = result.get("atp_facts")
    if f:
        line = f"attribution patching (post_edit_margin) over {f['n_pairs']} pairs -> atp.parquet"
        if f.get("non_finite"):
            line += f"; {f['non_finite']} scores not finite (the backward pass overflowed): NaN, unranked"
        if "pearson" in f:
            line += (f"; against real patching on {f['validated_components']} components: "
                     f"r = {f['pearson']:.2f} (Spearman {f['spearman']:.2f})")
        lines.append(line)
        for k, v in sorted((f.get("mean_abs_atp") or {}).items()):
            lines.append(f"  mean |AtP| {k:<16} {v:.4g}")
    return "\n".join(lines)


