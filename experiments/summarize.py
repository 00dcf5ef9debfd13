"""Numbers and figures of the study in experiments/README.md.

    python experiments/summarize.py tables  [OUT]   # run dirs under OUT -> OUT/summary/ (JSON + small tables)
    python experiments/summarize.py figures [OUT]   # OUT/summary/ -> experiments/figures/*.png (needs kaleido)
    python experiments/summarize.py all     [OUT]

OUT defaults to outputs/experiments. ``tables`` reads the run dirs the run_*.sh scripts write
(``e1_matched``, ``e1_nearest``, ``e2_blimp``, ``e4_random``, their ``causal*`` folders and
``e4_compare``) and writes ``summary.json`` (every number quoted in the README) and the small tables
the figures are drawn from, so the figures can be redrawn on a machine without the run dirs.
Missing run dirs are skipped with a note.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
FIG = Path(os.environ.get("FIG_DIR", REPO / "experiments" / "figures"))
HOOKS = ("resid_post", "attn_out", "mlp_out")


def _flagged(d: pd.DataFrame) -> pd.Series:
    from interp.rules import flagged

    return flagged(d)


def _r(x, n: int = 4):
    return None if x is None or (isinstance(x, float) and not np.isfinite(x)) else round(float(x), n)


# ============================================================================ tables

def stability_counts(stab: pd.DataFrame, position: str = "edit") -> list[dict]:
    """Per hook at one position: components (flagged ones apart), stable under the equivalence rule
    (the run's ``stable``: ratio_hi < 0.5), the regression-adjusted effect below zero, the old
    significance rule, medians."""
    d = stab[stab["position"] == position]
    rows = []
    for hook, g in list(d.groupby("hook")) + [("all", d)]:
        ok = ~_flagged(g)
        h = g[ok]
        rows.append({
            "hook": hook, "n": int(len(g)), "n_flagged": int((~ok).sum()),
            "n_stable": int(h["stable"].sum()), "share_stable": _r(h["stable"].mean()),
            # the adjusted effect needs per-pair values (analysis.pair_values): None where a run kept none
            "n_adj_less": int((h["adj_hi"] < 0).sum()) if h["adj_hi"].notna().any() else None,
            "n_adj_more": int((h["adj_lo"] > 0).sum()) if h["adj_hi"].notna().any() else None,
            "n_stable_and_adj_less": int((h["stable"] & (h["adj_hi"] < 0)).sum()),
            "n_old_significance": int(((h["q_value"] < 0.05) & (h["t_stat"] < 0)).sum()),
            "median_ratio": _r(h["ratio"].median()), "median_ratio_hi": _r(h["ratio_hi"].median()),
            "median_adj_normalized": _r(h["adj_normalized"].median()),
            "n_clusters": int(h["n_clusters"].max()) if h["n_clusters"].notna().any() else None})
    return rows


def by_layer(stab: pd.DataFrame, run: str, position: str = "edit") -> pd.DataFrame:
    d = stab[(stab["position"] == position)]
    d = d[~_flagged(d)]
    return (d.groupby(["hook", "layer"]).agg(share_stable=("stable", "mean"), median_ratio=("ratio", "median"),
                                             median_ratio_hi=("ratio_hi", "median"),
                                             share_adj_less=("adj_hi", lambda x: float((x < 0).mean())
                                                             if x.notna().any() else np.nan))
            .reset_index().assign(run=run))


def categories(run_dir: Path, position: str = "edit") -> dict:
    """Per category: pairs, clusters, components stable on that category's pairs alone; the overlap
    of the grammar categories' stable sets (Jaccard) and the components stable in all of them."""
    b = pd.read_parquet(run_dir / "stability_by_category.parquet")
    pairs = pd.read_parquet(run_dir / "pairs.parquet")
    types = pairs.groupby("category")["type"].first().to_dict()
    b = b[(b["position"] == position) & ~_flagged(b)]
    key = list(zip(b["hook"], b["layer"], b["component"]))
    b = b.assign(key=key)
    per, sets = [], {}
    for cat, g in b.groupby("category"):
        s = set(g.loc[g["stable"], "key"])
        sets[cat] = s
        per.append({"category": cat, "type": types.get(cat), "n_pairs": int(g["n_pairs"].max()),
                    "n_clusters": int(g["n_clusters"].max()) if g["n_clusters"].notna().any() else None,
                    "n_stable": len(s), "share_stable": _r(len(s) / len(g)),
                    "median_ratio": _r(g["ratio"].median()), "median_ratio_hi": _r(g["ratio_hi"].median())})
    gram = sorted(c for c in sets if types.get(c) == "grammar")
    jac = {f"{x}|{y}": _r(len(sets[x] & sets[y]) / max(1, len(sets[x] | sets[y])), 3)
           for i, x in enumerate(gram) for y in gram[i + 1:]}
    every = set.intersection(*(sets[c] for c in gram)) if gram else set()
    counts = pd.Series([k for c in gram for k in sets[c]]).value_counts() if gram else pd.Series(dtype=int)
    return {"per_category": per, "grammar_jaccard": jac,
            "median_grammar_jaccard": _r(np.median(list(jac.values()))) if jac else None,
            "stable_in_every_grammar_category": len(every),
            "stable_in_at_least_half": int((counts >= max(1, len(gram) / 2)).sum()) if len(counts) else 0,
            "stable_in_any_grammar_category": int(len(counts))}


def read_manifest(d: Path) -> dict:
    """A run dir's (or causal folder's) manifest; a run newer than this interp is refused."""
    from interp.rundir import read_manifest as read

    return read(d)


def causal(cdir: Path) -> tuple[dict, pd.DataFrame]:
    """The fair ablation and AtP of one causal folder: every vs-random row, the per-seed random means
    (for the figure), the AtP of stable vs other components."""
    man = read_manifest(cdir)
    out: dict = {"ablation_facts": man.get("ablation"), "counts": man.get("counts"), "atp": None}
    seeds = pd.DataFrame()
    if (cdir / "ablation_vs_random.parquet").exists():
        vs = pd.read_parquet(cdir / "ablation_vs_random.parquet")
        cols = ["selection", "k", "mode", "where", "category", "metric", "change", "change_lo", "change_hi",
                "random_mean", "random_sd", "random_min", "random_max", "diff_vs_random", "diff_lo", "diff_hi",
                "n_clusters", "p_perm", "beyond_all_random", "n_seeds", "n_pairs", "pairs"]
        out["vs_random"] = vs[cols].round(4).to_dict("records")
        abl = pd.read_parquet(cdir / "ablation.parquet")
        seeds = abl[(abl["category"] == "all")][["selection", "k", "seed", "mode", "where", "post_edit_margin_change",
                                                 "downstream_divergence_change", "margin_change"]]
        summ = abl[abl["category"] == "all"].groupby(["selection", "k", "mode", "where"])
        out["baseline"] = {"post_edit_margin": _r(abl["baseline_post_edit_margin"].iloc[0]),
                           "margin": _r(abl["baseline_margin"].iloc[0]),
                           "downstream_divergence": _r(abl["baseline_downstream_divergence"].iloc[0]),
                           "accuracy": _r(abl["baseline_accuracy"].iloc[0])}
        out["accuracy_change"] = {f"{s}/k={k}/{m}/{w}": _r(g["accuracy_change"].mean())
                                  for (s, k, m, w), g in summ}
    if (cdir / "atp.parquet").exists():
        from scipy import stats

        atp = pd.read_parquet(cdir / "atp.parquet")
        a = atp[atp["hook"].isin(HOOKS)]
        st = a["stable"].fillna(False).astype(bool)
        res = {}
        for pos, g in a.groupby("position"):
            s = st.loc[g.index]
            mass = g["atp_mean"].abs()
            rho = stats.spearmanr(g["ratio"], mass, nan_policy="omit")
            res[pos] = {"n_stable": int(s.sum()), "n_other": int((~s).sum()),
                        "mean_abs_atp_stable": _r(mass[s].mean(), 6), "mean_abs_atp_other": _r(mass[~s].mean(), 6),
                        "share_of_components_stable": _r(s.mean()),
                        "share_of_abs_atp_on_stable": _r(mass[s].sum() / mass.sum()),
                        "spearman_ratio_vs_abs_atp": _r(rho.statistic), "n": int(len(g))}
        out["atp"] = {"by_position": res, "validation": {k: man["atp"].get(k) for k in
                                                          ("pearson", "spearman", "validated_components",
                                                           "validated_pairs", "n_pairs")}}
    return out, seeds


def patching(cdir: Path) -> tuple[dict, pd.DataFrame]:
    pt = pd.read_parquet(cdir / "patching.parquet")
    cat = pt[(pt["level"] == "category") & (pt["metric"] == "margin")]
    keep = ["category", "kind", "layer", "positions", "direction", "normalized", "normalized_lo", "normalized_hi",
            "n_pairs", "n_excluded"]
    cat = cat[[c for c in keep if c in cat]].reset_index(drop=True)
    allc = cat[(cat["category"] == "all") & (cat["kind"] == "resid_pre")]
    pairs = pt[pt["level"] == "pair"]
    res = {"n_pairs": int(pairs["pair_id"].nunique()),
           "per_category_pairs": pairs.groupby("category")["pair_id"].nunique().to_dict(),
           "all": allc.round(3).to_dict("records")}
    return res, cat


def e2_tables(d: Path) -> tuple[dict, pd.DataFrame]:
    par = pd.read_parquet(d / "blimp_paradigms.parquet")
    phe = pd.read_parquet(d / "blimp_phenomena.parquet")
    man = read_manifest(d)
    res = {"counts": man["counts"], "controls": man.get("controls")}
    res["phenomena"] = phe[["linguistics_term", "n_paradigms", "n_total", "n_kept", "accuracy", "gpt2", "txl",
                            "lstm", "ngram", "human"]].round(4).to_dict("records")
    term = par.set_index("UID")["linguistics_term"].to_dict()
    b = pd.read_parquet(d / "stability_by_category.parquet")
    b = b[(b["position"] == "edit") & ~_flagged(b)].assign(term=lambda x: x["category"].map(term))
    res["stability_per_phenomenon"] = (b.groupby("term").agg(share_stable=("stable", "mean"),
                                                            median_ratio=("ratio", "median"),
                                                            median_ratio_hi=("ratio_hi", "median"))
                                       .round(4).reset_index().to_dict("records"))
    res["stability_all_pairs"] = stability_counts(pd.read_parquet(d / "stability.parquet"))
    return res, phe


def tables(out: Path) -> dict:
    S = out / "summary"
    S.mkdir(parents=True, exist_ok=True)
    res: dict = {}
    layers, seeds = [], []
    for name in ("e1_matched", "e1_nearest", "e4_random"):
        d = out / name
        if not (d / "stability.parquet").exists():
            res[name] = "missing"
            continue
        man = read_manifest(d)
        stab = pd.read_parquet(d / "stability.parquet")
        r = {"model": man.get("model", {}).get("name"), "counts": {k: man["counts"].get(k) for k in
                                                                  ("kept", "rejected", "read")},
             "accuracy": man.get("accuracy"), "controls": man.get("controls"),
             "rule": {k: man["config"]["analysis"].get(k) for k in ("rule", "stable_ratio", "ci", "cluster")},
             "stability_edit": stability_counts(stab)}
        layers.append(by_layer(stab, name))
        if (d / "stability_by_category.parquet").exists() and name != "e1_nearest":
            r["categories"] = categories(d)
        for sub in ("causal",):
            if (d / sub / "manifest.json").exists():
                r[sub], sd = causal(d / sub)
                seeds.append(sd.assign(run=name))
        if (d / "causal_patching" / "patching.parquet").exists():
            r["patching"], pc = patching(d / "causal_patching")
            pc.assign(run=name).to_parquet(S / f"{name}_patching.parquet")
        res[name] = r
    if layers:
        pd.concat(layers).to_parquet(S / "layers.parquet")
    if seeds:
        pd.concat(seeds).to_parquet(S / "ablation_seeds.parquet")
    if (out / "e2_blimp" / "blimp_phenomena.parquet").exists():
        res["e2_blimp"], phe = e2_tables(out / "e2_blimp")
        phe.to_parquet(S / "blimp_phenomena.parquet")
    if (out / "e4_compare" / "compare.json").exists():
        res["e4_compare"] = json.loads((out / "e4_compare" / "compare.json").read_text())
        for f in ("compare.parquet", "compare_divergence.parquet"):
            if (out / "e4_compare" / f).exists():
                pd.read_parquet(out / "e4_compare" / f).to_parquet(S / f)
    (S / "summary.json").write_text(json.dumps(res, indent=1, default=str))
    print(f"wrote {S}/summary.json")
    return res


# ============================================================================ figures

def png(fig, name: str, width: int = 1000, height: int = 450) -> None:
    from interp.figures import write_pngs

    FIG.mkdir(parents=True, exist_ok=True)
    fig.update_layout(height=height, template="plotly_white")
    write_pngs([fig], [FIG / f"{name}.png"], width=width)
    print(f"figure {FIG / name}.png")


def figures(out: Path) -> None:
    import plotly.express as px
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    S = out / "summary"
    if (S / "layers.parquet").exists():
        L = pd.read_parquet(S / "layers.parquet")
        fig = make_subplots(rows=1, cols=2, subplot_titles=(
            "share stable (ratio_hi < 0.5, clustered 95% CI)", "share with adjusted effect < 0 (adj_hi < 0)"))
        dash = {"e1_matched": "solid", "e1_nearest": "dot", "e4_random": "dash"}
        color = dict(zip(HOOKS, px.colors.qualitative.D3))
        for (run, hook), g in L.groupby(["run", "hook"]):
            for col, y in ((1, "share_stable"), (2, "share_adj_less")):
                if g[y].isna().all():
                    continue
                fig.add_trace(go.Scatter(x=g["layer"], y=g[y], name=f"{run} {hook}", legendgroup=f"{run}{hook}",
                                         showlegend=col == 1, line={"dash": dash.get(run, "solid"),
                                                                    "color": color.get(hook)}), 1, col)
        fig.update_xaxes(title_text="layer")
        fig.update_layout(title="Components at the edited token, per layer (e1_matched: matched null; e1_nearest: "
                                "nearest-neighbour null; e4_random: random weights, matched null)")
        png(fig, "e1_stable_by_layer", 1200, 460)
    if (S / "ablation_seeds.parquet").exists():
        A = pd.read_parquet(S / "ablation_seeds.parquet")
        for run, g in A.groupby("run"):
            combos = sorted(set(zip(g["where"], g["k"])))
            fig = make_subplots(rows=1, cols=len(combos), subplot_titles=[f"at '{w}', k={k}" for w, k in combos])
            for i, (w, k) in enumerate(combos, start=1):
                d = g[(g["where"] == w) & (g["k"] == k) & (g["mode"] == "mean")]
                r = d[d["selection"] == "random"]
                fig.add_trace(go.Box(y=r["post_edit_margin_change"], name="random", marker_color="#7f7f7f",
                                     boxpoints="all", jitter=0.4, showlegend=i == 1), 1, i)
                for sel, c in (("stable", "#1f77b4"), ("least_stable", "#d62728")):
                    s = d[d["selection"] == sel]
                    fig.add_trace(go.Scatter(x=[sel], y=[s["post_edit_margin_change"].mean()], mode="markers",
                                             marker={"size": 14, "color": c, "symbol": "diamond"}, name=sel,
                                             showlegend=i == 1), 1, i)
            fig.update_yaxes(title_text="change of post_edit_margin (nats)", row=1, col=1)
            fig.update_layout(title=f"{run}: mean ablation of the components most / least stable on the selecting half, "
                                    "tested on the held-out half, against matched random selections (one dot per seed)")
            png(fig, f"{run}_ablation_vs_random", 1200, 460)
    for f in sorted(S.glob("*_patching.parquet")):
        P = pd.read_parquet(f)
        run = f.name.replace("_patching.parquet", "")
        d = P[(P["category"] == "all") & (P["kind"] == "resid_pre")]
        fig = make_subplots(rows=1, cols=2, subplot_titles=("denoising (a into b)", "noising (b into a)"))
        for i, direction in enumerate(("denoising", "noising"), start=1):
            for pos, c in (("edit", "#1f77b4"), ("after", "#ff7f0e")):
                g = d[(d["direction"] == direction) & (d["positions"] == pos)].sort_values("layer")
                fig.add_trace(go.Scatter(x=g["layer"], y=g["normalized"], name=pos, showlegend=i == 1,
                                         line={"color": c},
                                         error_y={"type": "data", "array": g["normalized_hi"] - g["normalized"],
                                                  "arrayminus": g["normalized"] - g["normalized_lo"]}), 1, i)
        fig.update_xaxes(title_text="layer (resid_pre)")
        fig.update_yaxes(title_text="normalized effect (ratio of means, 95% bootstrap CI)", row=1, col=1)
        fig.update_layout(title=f"{run}: activation patching of the residual stream, all grammar pairs")
        png(fig, f"{run}_patching", 1200, 450)
    if (S / "blimp_phenomena.parquet").exists():
        ph = pd.read_parquet(S / "blimp_phenomena.parquet")
        ph = ph[ph["n_kept"] > 0]
        long = ph.melt(id_vars=["linguistics_term", "n_kept"], value_vars=["accuracy", "gpt2", "txl", "lstm", "ngram"],
                       var_name="model", value_name="acc")
        long["model"] = long["model"].replace({"accuracy": "SmolLM2-135M (one-token subset)"})
        fig = px.bar(long, x="linguistics_term", y="acc", color="model", barmode="group", hover_data=["n_kept"],
                     title="BLiMP accuracy per phenomenon: ours on the one-token-edit subset; published on all pairs")
        fig.update_yaxes(range=[0, 1])
        png(fig, "e2_blimp_phenomena", 1100, 480)
    if (S / "compare.parquet").exists():
        C = pd.read_parquet(S / "compare.parquet")
        fig = px.line(C, x="bin", y="share_stable", color="hook", line_dash="run", markers=True,
                      title="Share stable per relative-depth bin: trained vs random weights (matched null)")
        png(fig, "e4_compare_share_stable", 1000, 430)


def main() -> None:
    which = sys.argv[1] if len(sys.argv) > 1 else "all"
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else REPO / "outputs" / "experiments"
    if which in ("tables", "all"):
        tables(out)
    if which in ("figures", "all"):
        figures(out)


if __name__ == "__main__":
    main()
