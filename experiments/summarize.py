"""Headline numbers and README figures of the experiments: ``python experiments/summarize.py e1|e2|e3|e4 [OUT]``.

Reads the run dirs under OUT (default outputs/experiments), prints the numbers quoted in
experiments/README.md, writes them to OUT/summary_<e>.json and the PNG figures to experiments/figures/.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots

REPO = Path(__file__).resolve().parents[1]
FIG = Path(os.environ.get("FIG_DIR", REPO / "experiments" / "figures"))
ALPHA = 0.05


def png(fig: go.Figure, name: str, width: int = 900, height: int | None = None) -> None:
    from interp.figures import write_pngs

    FIG.mkdir(parents=True, exist_ok=True)
    fig.update_layout(height=height or fig.layout.height or 450, template="plotly_white")
    write_pngs([fig], [FIG / f"{name}.png"], width=width)
    print(f"figure {FIG / name}.png ({(FIG / f'{name}.png').stat().st_size // 1024} KB)")


def offset_flag(d: pd.DataFrame) -> pd.Series:
    """The large-offset flag these numbers were computed with: ``offset_dim`` (tables written before
    it existed call it ``massive``; ``massive`` now flags massive activations, Sun et al. 2024)."""
    return d["offset_dim" if "offset_dim" in d else "massive"].astype(bool)


def stable(d: pd.DataFrame, alpha: float = ALPHA) -> pd.Series:
    """The rule the experiments were summarized with (the significance rule, offset dims excluded)."""
    return (d["q_value"] < alpha) & (d["t_stat"] < 0) & ~offset_flag(d)


def share_table(stab: pd.DataFrame) -> pd.DataFrame:
    stab = stab.assign(n_offset=offset_flag(stab))
    s = stab.assign(stable=stable(stab), changes_more=(stab["q_value"] < ALPHA) & (stab["t_stat"] > 0))
    return (s.groupby(["hook", "position"]).agg(n=("stable", "size"), n_stable=("stable", "sum"),
                                                 share_stable=("stable", "mean"),
                                                 n_sig_more_than_control=("changes_more", "sum"),
                                                 median_ratio=("ratio", "median"),
                                                 n_massive=("n_offset", "sum")).reset_index())  # offset dims


def e1(out: Path) -> dict:
    res: dict = {}
    shares = {}
    for pool in ("common", "edits"):
        d = out / f"e1_{pool}"
        if not (d / "manifest.json").exists():
            continue
        stab = pd.read_parquet(d / "stability.parquet")
        pairs = pd.read_parquet(d / "pairs.parquet")
        t = share_table(stab)
        shares[pool] = t.assign(pool=pool)
        by_cat = pd.read_parquet(d / "stability_by_category.parquet")
        e = by_cat[by_cat["position"] == "edit"]
        cat = e.assign(stable=stable(e)).groupby("category")["stable"].mean()
        res[pool] = {
            "n_pairs": int(len(pairs)), "by_type": pairs.groupby("type").size().to_dict(),
            "accuracy": {c: float((g["margin"] > 0).mean()) for c, g in pairs[pairs.type == "grammar"].groupby("category")},
            "shares": t.to_dict("records"),
            "share_stable_at_edit_per_category": cat.round(4).to_dict(),
            "overall_share_stable": float(stable(stab).mean()),
            "n_rows": int(len(stab)),
        }
        if (d / "contrast.parquet").exists():
            c = pd.read_parquet(d / "contrast.parquet")
            sig = c[c["q_value"] < ALPHA]
            res[pool]["contrast"] = {
                "n_rows": int(len(c)), "n_sig": int(len(sig)),
                "by_hook_position": sig.groupby(["hook", "position"]).size().to_dict(),
                "n_sig_grammar_more_stable": int((sig["effect"] < 0).sum()),
                "n_sig_semantic_more_stable": int((sig["effect"] > 0).sum()),
                "median_abs_effect_sig": float(sig["effect"].abs().median()) if len(sig) else None,
                "by_layer_edit": sig[sig.position == "edit"].groupby(["hook", "layer"]).size().to_dict(),
            }
            res[pool]["contrast"] = {k: ({str(kk): vv for kk, vv in v.items()} if isinstance(v, dict) else v)
                                     for k, v in res[pool]["contrast"].items()}
        res[pool]["shares"] = [{k: (float(v) if isinstance(v, (np.floating, np.integer)) else v) for k, v in r.items()}
                               for r in res[pool]["shares"]]
    # stricter views of "stable": in every category separately (each 40 pairs, BH within the
    # category's table), and a large effect (ratio < 0.5 or < 0.3) on top of q < alpha
    for pool in [p for p in ("common", "edits") if p in res]:
        d = out / f"e1_{pool}"
        b = pd.read_parquet(d / "stability_by_category.parquet")
        b = b[b.position == "edit"].assign(st=lambda x: stable(x))
        types = pd.read_parquet(d / "pairs.parquet").groupby("category")["type"].first()
        b["type"] = b["category"].map(types)
        key = ["hook", "layer", "component"]
        all_c = b.groupby(key).st.all()
        gr = b[b.type == "grammar"].groupby(key).st.all()
        se = b[b.type == "semantic"].groupby(key).st.all()
        s = pd.read_parquet(d / "stability.parquet")
        s = s[s.position == "edit"]
        st = stable(s)
        res[pool]["strict_edit"] = {
            "n_components": int(len(all_c)),
            "stable_in_every_category": int(all_c.sum()),
            "stable_in_every_category_by_hook": all_c.groupby(level=0).sum().astype(int).to_dict(),
            "stable_in_no_category": int((~b.groupby(key).st.any()).sum()),
            "every_grammar_not_every_semantic": int((gr & ~se).sum()),
            "every_semantic_not_every_grammar": int((se & ~gr).sum()),
            "stable_and_ratio_below_0.5": int((st & (s.ratio < 0.5)).sum()),
            "stable_and_ratio_below_0.3": int((st & (s.ratio < 0.3)).sum()),
            "stable_and_ratio_below_0.2": int((st & (s.ratio < 0.2)).sum()),
        }
    if "edits" in res and "common" in res:
        a = pd.read_parquet(out / "e1_common" / "stability.parquet")
        b = pd.read_parquet(out / "e1_edits" / "stability.parquet")
        key = ["hook", "layer", "component", "position"]
        m = a[key].assign(sa=stable(a).values).merge(b[key].assign(sb=stable(b).values), on=key)
        res["overlap"] = {"stable_common": int(m.sa.sum()), "stable_edits": int(m.sb.sum()),
                          "stable_both": int((m.sa & m.sb).sum()),
                          "stable_edits_not_common": int((~m.sa & m.sb).sum())}
        st = pd.concat(shares.values())
        fig = px.bar(st, x="hook", y="share_stable", color="pool", barmode="group", facet_col="position",
                     title=f"share of components stable (q<{ALPHA}, t<0, not massive), SmolLM2-135M, 480 pairs")
        png(fig, "e1_share_stable_by_pool", height=380)
        be = b[b.position == "edit"].assign(stable=stable(b[b.position == "edit"]))
        per_layer = be.groupby(["hook", "layer"]).agg(share=("stable", "mean"), median_ratio=("ratio", "median")).reset_index()
        fig = make_subplots(rows=1, cols=2, subplot_titles=["share stable (edits pool, edit token)",
                                                            "median ratio |a-b| / |a-control| (edits pool)"])
        for hook, color in zip(sorted(per_layer.hook.unique()), ["#1f77b4", "#ff7f0e", "#2ca02c"]):
            g = per_layer[per_layer.hook == hook]
            fig.add_trace(go.Scatter(x=g.layer, y=g.share, name=hook, line={"color": color}), 1, 1)
            fig.add_trace(go.Scatter(x=g.layer, y=g.median_ratio, name=hook, line={"color": color},
                                     showlegend=False), 1, 2)
        fig.update_xaxes(title_text="layer")
        png(fig, "e1_edits_pool_by_layer", height=380)
        res["edits_by_layer_edit"] = per_layer.round(4).to_dict("records")
    abl = out / "e1_edits" / "causal_ablation" / "ablation_summary.parquet"
    if abl.exists():
        s = pd.read_parquet(abl)
        sa = s[s.category == "all"]
        res["ablation"] = sa[["selection", "k", "mode", "where", "n_seeds", "n_pairs", "margin_change_mean",
                              "margin_change_std", "accuracy_change_mean"]].round(4).to_dict("records")
        full = pd.read_parquet(abl.parent / "ablation.parquet")
        res["ablation_baseline"] = {"margin": float(full[full.category == "all"]["baseline_margin"].iloc[0]),
                                    "accuracy": float(full[full.category == "all"]["baseline_accuracy"].iloc[0])}
        sel = pd.read_parquet(abl.parent / "selections.parquet")
        res["ablation_selected_hooks"] = {str(k): int(v) for k, v in
                                          sel.groupby(["selection", "k", "hook"]).size().items()
                                          } if "hook" in sel.columns else {}
        fig = px.bar(sa, x="k", y="margin_change_mean", color="selection", barmode="group",
                     error_y="margin_change_std", facet_col="mode",
                     title="mean-ablation at the edit token: change of the margin log P(a) - log P(b)")
        fig.update_xaxes(type="category")
        png(fig, "e1_ablation", height=380, width=800)
    return res


def e2(out: Path) -> dict:
    d = out / "e2_blimp"
    par = pd.read_parquet(d / "blimp_paradigms.parquet")
    phe = pd.read_parquet(d / "blimp_phenomena.parquet")
    man = json.loads((d / "manifest.json").read_text())
    pairs = pd.read_parquet(d / "pairs.parquet")
    models = ["accuracy", "gpt2", "txl", "lstm", "ngram"]
    res = {"n_pairs_kept": int(len(pairs)), "counts": man["counts"], "notes": man.get("notes", {}).get("blimp"),
           "controls": man["config"]["analysis"]["controls"]}
    pcols = ["UID", "linguistics_term", "n_total", "n_kept", "accuracy", "gpt2", "txl", "lstm", "ngram"]
    res["paradigms"] = par[[c for c in pcols if c in par.columns]].round(4).to_dict("records")
    res["phenomena"] = phe[["linguistics_term", "n_paradigms", "n_total", "n_kept", "share_kept", "accuracy",
                            "accuracy_macro", "gpt2", "txl", "lstm", "ngram", "gpt2_run_paradigms",
                            "human"]].round(4).to_dict("records")
    ph = phe[phe["n_kept"] > 0]
    long = ph.melt(id_vars=["linguistics_term", "n_kept"], value_vars=models, var_name="model", value_name="acc")
    long["model"] = long["model"].replace({"accuracy": "SmolLM2-135M (one-token subset)"})
    fig = px.bar(long, x="linguistics_term", y="acc", color="model", barmode="group",
                 title="BLiMP accuracy per phenomenon: ours on the one-token-edit subset (n kept in hover); "
                       "published on all pairs", hover_data=["n_kept"])
    fig.add_hline(y=0.886, line_dash="dot", annotation_text="human 88.6% (overall)")
    fig.update_yaxes(range=[0, 1])
    png(fig, "e2_blimp_phenomena", width=1100, height=480)
    # stability and divergence per phenomenon (paradigm = category of the run)
    term = par.set_index("UID")["linguistics_term"].to_dict()
    byc = d / "stability_by_category.parquet"
    if byc.exists():
        b = pd.read_parquet(byc)
        b = b[b.position == "edit"]
        b = b.assign(st=stable(b), term=b["category"].map(term))
        sh = b.groupby(["term", "category"]).agg(share=("st", "mean"), ratio=("ratio", "median"),
                                                 n=("n_pairs", "max")).reset_index()
        res["stability_per_paradigm_edit"] = sh.round(4).to_dict("records")
        res["stability_per_phenomenon_edit"] = (b.groupby("term").agg(share=("st", "mean"), ratio=("ratio", "median"))
                                                .round(4).reset_index().to_dict("records"))
    s_all = pd.read_parquet(d / "stability.parquet")
    res["stable_all_pairs"] = {pos: {"n_stable": int(stable(g).sum()), "n": int(len(g)),
                                     "median_ratio": float(g["ratio"].median())}
                               for pos, g in s_all.groupby("position")}
    div = pd.read_parquet(d / "divergence.parquet")
    div = div[(div.hook == "resid_post") & (div.category != "all")].assign(term=lambda x: x.category.map(term))
    w = div.assign(wn=div.normalized * div.n_pairs)
    prof = w.groupby(["term", "layer", "offset"]).agg(wn=("wn", "sum"), n=("n_pairs", "sum")).reset_index()
    prof["normalized"] = prof.wn / prof.n
    terms = sorted(prof.term.unique())
    fig = make_subplots(rows=1, cols=2, subplot_titles=["resid_post at the edited token (offset 0)",
                                                        "resid_post, last layer, by offset (>= 10 pairs)"])
    palette = px.colors.qualitative.Dark24
    for i, t in enumerate(terms):
        g = prof[(prof.term == t) & (prof.offset == 0)].sort_values("layer")
        fig.add_trace(go.Scatter(x=g.layer, y=g.normalized, name=t, line={"color": palette[i % 24]}), 1, 1)
        g = prof[(prof.term == t) & (prof.layer == prof.layer.max()) & (prof.n >= 10)].sort_values("offset")
        fig.add_trace(go.Scatter(x=g.offset, y=g.normalized, name=t, showlegend=False,
                                 line={"color": palette[i % 24]}), 1, 2)
    fig.update_xaxes(title_text="layer", row=1, col=1)
    fig.update_xaxes(title_text="offset", row=1, col=2)
    fig.update_yaxes(title_text="mean |a-b| / spread")
    png(fig, "e2_blimp_divergence", width=1100, height=450)
    res["divergence_offset0"] = (prof[prof.offset == 0].pivot(index="layer", columns="term", values="normalized")
                                 .loc[[0, 10, 20, 29]].round(3).to_dict())
    res["divergence_last_layer_offset1"] = (prof[(prof.offset == 1) & (prof.layer == prof.layer.max())]
                                            .set_index("term")[["normalized", "n"]].round(3).to_dict("index"))
    return res


def e3(out: Path) -> dict:
    d = out / "e1_edits"
    div = pd.read_parquet(d / "divergence.parquet")
    pairs = pd.read_parquet(d / "pairs.parquet")
    types = pairs.groupby("category")["type"].first().to_dict()
    res: dict = {}
    r = div[div.hook == "resid_post"]
    cats = sorted(c for c in r.category.unique() if c != "all")
    fig = make_subplots(rows=1, cols=2, subplot_titles=["resid_post at the edited token (offset 0)",
                                                        "resid_post, last layer, by offset from the edit"])
    palette = px.colors.qualitative.Dark24
    for i, c in enumerate(cats):
        g = r[(r.category == c) & (r.offset == 0)].sort_values("layer")
        line = {"dash": "solid" if types[c] == "grammar" else "dot", "color": palette[i % len(palette)]}
        fig.add_trace(go.Scatter(x=g.layer, y=g.normalized, name=f"{c} ({types[c][0]})", line=line), 1, 1)
        last = r[(r.category == c) & (r.layer == r.layer.max()) & (r.n_pairs >= 10)].sort_values("offset")
        fig.add_trace(go.Scatter(x=last.offset, y=last.normalized, showlegend=False, line=line,
                                 name=c), 1, 2)
    fig.update_xaxes(title_text="layer", row=1, col=1)
    fig.update_xaxes(title_text="offset (>= 10 pairs)", row=1, col=2)
    fig.update_yaxes(title_text="mean |a-b| / spread")
    png(fig, "e3_divergence_resid_post", width=1100, height=450)
    # by type, all hooks: offset 0 and offset 1..3 mean, per layer
    r2 = div[div.category != "all"].assign(type=lambda x: x.category.map(types))
    prof = (r2[r2.offset <= 3].groupby(["hook", "type", "offset", "layer"])["normalized"].mean().reset_index())
    res["profile_by_type"] = prof[prof.layer.isin([0, 7, 15, 22, 29])].round(4).to_dict("records")
    a = div[div.category == "all"]
    res["resid_post_all_offset0"] = a[(a.hook == "resid_post") & (a.offset == 0)][["layer", "normalized"]].round(4).to_dict("records")
    res["resid_post_all_lastlayer_by_offset"] = a[(a.hook == "resid_post") & (a.layer == a.layer.max()) & (a.n_pairs >= 10)][["offset", "n_pairs", "normalized"]].round(4).to_dict("records")
    pp = d / "causal_patching" / "patching.parquet"
    if pp.exists():
        p = pd.read_parquet(pp)
        print(p.columns.tolist(), p[["hook", "kind", "direction", "metric"]].drop_duplicates().to_dict("records"))
        pc = p[p.level == "pair"]
        res["patching_pairs"] = pc.groupby("category")["pair_id"].first().to_dict()
        # residual stream: mean over pairs of the normalized effect per layer x offset
        rs = pc[pc.kind != "z"] if "kind" in pc.columns else pc
        rs = rs[rs.hook.str.contains("resid")]
        hz = pc[pc.hook.str.contains("hook_z") | (pc.get("kind") == "z")]
        fig = make_subplots(rows=1, cols=3, subplot_titles=["resid_pre, denoising (a into b)",
                                                            "resid_pre, noising (b into a)", "heads (hook_z), denoising"],
                            horizontal_spacing=0.08)
        for i, direction in enumerate(("denoising", "noising"), start=1):
            g = rs[rs.direction == direction].groupby(["layer", "offset"])["normalized"].mean().unstack()
            g = g.loc[:, [c for c in g.columns if -4 <= c <= 8]]
            fig.add_trace(go.Heatmap(z=g.to_numpy(), x=g.columns.astype(int), y=g.index, coloraxis="coloraxis"), 1, i)
            fig.update_xaxes(title_text="offset from edit", row=1, col=i)
            res[f"resid_{direction}_by_offset_layer"] = {
                int(o): g[o].round(3).tolist() for o in g.columns if o in (0, 1, 2)}
            top = g.stack().sort_values(ascending=False).head(8)
            res[f"resid_{direction}_top"] = [{"layer": int(l), "offset": int(o), "normalized": round(float(v), 3)}
                                            for (l, o), v in top.items()]
        h = hz[hz.direction == "denoising"].groupby(["layer", "head"])["normalized"].mean().unstack()
        fig.add_trace(go.Heatmap(z=h.to_numpy(), x=h.columns.astype(int), y=h.index, coloraxis="coloraxis"), 1, 3)
        fig.update_xaxes(title_text="head", row=1, col=3)
        fig.update_yaxes(title_text="layer", row=1, col=1)
        fig.update_layout(coloraxis={"colorscale": "RdBu", "cmid": 0}, height=500,
                          title=f"activation patching, normalized margin effect, {pc.pair_id.nunique()} grammar pairs")
        png(fig, "e3_patching", width=1200, height=520)
        toph = h.stack().sort_values(ascending=False)
        res["heads_denoising_top"] = [{"layer": int(l), "head": int(hh), "normalized": round(float(v), 3)}
                                      for (l, hh), v in toph.head(10).items()]
        hn = hz[hz.direction == "noising"].groupby(["layer", "head"])["normalized"].mean().unstack().stack()
        res["heads_noising_top"] = [{"layer": int(l), "head": int(hh), "normalized": round(float(v), 3)}
                                    for (l, hh), v in hn.sort_values(ascending=False).head(10).items()]
    return res


def e4(out: Path) -> dict:
    d = out / "e4_compare"
    js = json.loads((d / "compare.json").read_text())
    t = pd.read_parquet(d / "compare.parquet")
    for f in ("compare_share_stable", "compare_median_normalized", "compare_divergence", "compare_accuracy",
              "compare_median_ratio"):
        src = d / "figures" / f"{f}.png"
        if src.exists():
            shutil.copyfile(src, FIG / f"e4_{f}.png")
            print(f"figure {FIG / ('e4_' + f)}.png ({src.stat().st_size // 1024} KB)")
    js["table"] = t[["run", "hook", "bin", "layers", "n_components", "n_stable", "share_stable", "median_ratio",
                     "median_normalized"]].round(4).to_dict("records")
    return js


def main() -> None:
    which = sys.argv[1]
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else REPO / "outputs" / "experiments"
    res = {"e1": e1, "e2": e2, "e3": e3, "e4": e4}[which](out)
    (out / f"summary_{which}.json").write_text(json.dumps(res, indent=1, default=str))
    print(json.dumps(res, indent=1, default=str)[:6000])


if __name__ == "__main__":
    main()
