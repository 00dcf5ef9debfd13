"""Figures of the causal tests (``interp.patch``: ``RUN/causal/``), for the run dir and the viewer.

- ``effect_vs_k``: margin change and accuracy change against k for the stable, least stable and
  random selections (random: mean over seeds, error bars = standard deviation across seeds, faint
  markers = each seed), one figure per ablation mode x where;
- ``patching_heatmap``: normalized patching effect, layer x position (residual stream,
  ``patching.positions=each``; per category the position is the offset from the edit), layer x
  {edit, after} (``positions=modes``) or layer x head (points with a per-head view, ``hook_z``),
  denoising and noising side by side; the hover shows the category rows' bootstrap CI and the
  pairs used / left out for a small denominator.

- ``vs_random``: per k, the matched random selections' distribution (each seed's mean change) and
  the stable / least-stable selection's change with its clustered CI, annotated with the permutation
  p-value and diff_vs_random [CI] (``ablation_vs_random.parquet``), one figure per mode x where;

- ``ablation`` and ``patching_panels``: the viewer's interactive variants (one selection of mode,
  where and category; one figure per patched hook kind and metric).

``write_causal_figures`` writes the first three under ``RUN/causal/figures/`` (HTML that works
offline, PNG when kaleido works); ``python -m interp.figures --causal RUN_DIR`` rewrites them.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .. import rundir as R
from ..hooks import HOOK_POINTS
from .common import empty, esc, styled

log = logging.getLogger(__name__)

COLORS = {"stable": "#1f77b4", "random": "#7f7f7f", "least_stable": "#d62728"}


def effect_vs_k(ablation: pd.DataFrame, mode: str, where: str, category: str = "all") -> go.Figure:
    """Margin change and accuracy change against k, per selection; random with its spread over seeds."""
    d = ablation[(ablation["mode"] == mode) & (ablation["where"] == where) & (ablation["category"] == category)]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("mean margin change", "accuracy change"))
    for sel in [s for s in COLORS if s in set(d["selection"])]:
        ds = d[d["selection"] == sel]
        for col, metric in enumerate(("margin_change", "accuracy_change"), start=1):
            g = ds.groupby("k")[metric]
            mean, std, n = g.mean(), g.std(), g.count()
            err = std.where(n > 1).fillna(0).to_numpy()
            fig.add_trace(go.Scatter(
                x=mean.index, y=mean.to_numpy(), mode="lines+markers", name=sel, legendgroup=sel,
                showlegend=col == 1, line={"color": COLORS[sel]},
                error_y={"type": "data", "array": err, "visible": bool((n > 1).any())},
                hovertemplate=f"{sel}<br>k %{{x}}<br>{metric} %{{y:.4f}}<extra></extra>"), row=1, col=col)
            if (n > 1).any():
                fig.add_trace(go.Scatter(
                    x=ds["k"], y=ds[metric], mode="markers", legendgroup=sel, showlegend=False,
                    marker={"color": COLORS[sel], "opacity": 0.35, "size": 5},
                    customdata=ds["seed"], hovertemplate=f"{sel} seed %{{customdata}}<br>k %{{x}}<br>%{{y:.4f}}<extra></extra>"),
                    row=1, col=col)
    n_pairs = int(d["n_pairs"].iloc[0]) if len(d) else 0
    ks = sorted(set(d["k"]))
    fig.update_xaxes(title_text="k (components ablated)", type="log", tickvals=ks, ticktext=[str(k) for k in ks])
    fig.update_yaxes(title_text="log P(correct) - log P(wrong), change", row=1, col=1)
    fig.update_yaxes(title_text="accuracy change", row=1, col=2)
    fig.update_layout(title=f"{mode} ablation at '{where}', {category} ({n_pairs} pairs)<br>"
                            "<sup>random: mean +- std over seeds (faint markers: each seed)</sup>", height=480)
    return fig


# columns of patching.parquet shown in the hover text where a table has them (older tables do not)
PATCH_HOVER = ("normalized_lo", "normalized_hi", "n_pairs", "n_excluded", "denominator")
BLOCK_ORDER = ("edit", "after", "each", "all")


def patch_x(d: pd.DataFrame, kind: str | None = None, pair: bool = False) -> str | None:
    """The column a patching heatmap puts on x: ``head`` (per-head kinds), ``positions`` (the
    edit / after blocks of ``positions=modes``), ``position`` (one pair) or ``offset`` (a category)."""
    if (kind in HOOK_POINTS and HOOK_POINTS[kind].heads and "head" in d) or ("head" in d and d["head"].notna().any()):
        return "head"
    if "positions" in d and d["positions"].isin(["edit", "after"]).any():
        return "positions"
    for col in (("position", "offset") if pair else ("offset", "position")):
        if col in d and d[col].notna().any():
            return col
    return None


def patch_grid(d: pd.DataFrame, x: str, value: str = "normalized", agg: str = "mean"):
    """(z, x values, layers, customdata, hover text) of a layer x ``x`` heatmap of patching rows; the
    hover shows the CI, the pairs used and left out, and the denominator where the rows have them."""
    grid = d.pivot_table(observed=True, index="layer", columns=x, values=value, aggfunc=agg, dropna=False).sort_index()
    cols = list(grid.columns)
    if x == "positions":
        cols = [c for c in BLOCK_ORDER if c in cols] + [c for c in cols if c not in BLOCK_ORDER]
    grid = grid.reindex(columns=cols)
    extra = [c for c in PATCH_HOVER if c in d and pd.to_numeric(d[c], errors="coerce").notna().any()]
    custom, hover = None, ""
    if extra:
        custom = np.stack([d.assign(_v=pd.to_numeric(d[c], errors="coerce").astype(float))
                           .pivot_table(observed=True, index="layer", columns=x, values="_v", aggfunc="first")
                           .reindex(index=grid.index, columns=cols).to_numpy(dtype=float) for c in extra], axis=-1)
        at = {c: f"%{{customdata[{i}]" for i, c in enumerate(extra)}
        if "normalized_lo" in at and "normalized_hi" in at:
            hover += f"<br>CI [{at['normalized_lo']}:.3f}}, {at['normalized_hi']}:.3f}}]"
        if "n_pairs" in at:
            hover += f"<br>pairs used {at['n_pairs']}:.0f}}"
        if "n_excluded" in at:
            hover += f"<br>excluded (small denominator) {at['n_excluded']}:.0f}}"
        if "denominator" in at:
            hover += f"<br>source - base {at['denominator']}:.3f}}"
    return grid.to_numpy(dtype=float), cols, list(grid.index), custom, hover


def patching_heatmap(patching: pd.DataFrame, kind: str, *, pair_id=None, category=None,
                     metric: str | None = None) -> go.Figure:
    """Normalized effect per layer x position (or offset), layer x {edit, after} (``positions=modes``)
    or layer x head; one panel per direction. Hover: the bootstrap CI and the pairs used / left out."""
    d = patching[patching["kind"] == kind]
    if pair_id is not None:
        d = d[(d["level"] == "pair") & (d["pair_id"] == pair_id)]
        where = f"pair {pair_id}"
    else:
        d = d[(d["level"] == "category") & (d["category"] == category)]
        where = (f"category {category} (ratio of means over pairs"
                 + (", positions aligned on the edit)" if "positions" not in d or (d["positions"] == "each").any()
                    else ")"))
    metric = metric or (d["metric"].iloc[0] if len(d) else "margin")
    d = d[d["metric"] == metric]
    directions = [x for x in ("denoising", "noising") if x in set(d["direction"])]
    fig = make_subplots(rows=1, cols=max(1, len(directions)),
                        subplot_titles=[f"{x} ({'a into b' if x == 'denoising' else 'b into a'})" for x in directions])
    xcol = patch_x(d, kind, pair=pair_id is not None) or "position"
    for c, direction in enumerate(directions, start=1):
        dd = d[d["direction"] == direction]
        z, cols, layers, custom, hover = patch_grid(dd, xcol, agg="first")
        x = [str(v) for v in cols]
        if xcol in ("position", "positions") and "token" in dd:
            tok = dd.dropna(subset=[xcol]).drop_duplicates(xcol).set_index(xcol)["token"]
            x = [f"{p}:{tok.get(p, '')}" if pd.notna(tok.get(p)) else str(p) for p in cols]
        fig.add_trace(go.Heatmap(z=z, x=x, y=layers, zmid=0, customdata=custom,
                                 colorscale="RdBu", reversescale=True, coloraxis="coloraxis",
                                 hovertemplate=f"layer %{{y}}<br>{xcol} %{{x}}<br>normalized %{{z:.3f}}{hover}"
                                               "<extra></extra>"),
                      row=1, col=c)
        fig.update_xaxes(title_text={"head": "head", "position": "position:token", "positions": "positions",
                                     "offset": "offset from the edit"}[xcol], row=1, col=c)
        fig.update_yaxes(title_text="layer", row=1, col=c)
    hook = d["hook"].iloc[0] if len(d) else kind
    fig.update_layout(title=f"activation patching, {hook} per layer x {xcol}, {where}<br>"
                            f"<sup>normalized {metric}: 0 = no effect, 1 = the patched run scores like the source run</sup>",
                      coloraxis={"colorscale": "RdBu", "reversescale": True, "cmid": 0,
                                 "colorbar": {"title": "normalized"}},
                      height=380 + 12 * (int(d["layer"].max()) + 1 if len(d) else 0))
    return fig


# what each metric of ablation_vs_random.parquet measures (interp.causal.metrics), for axis titles
METRIC_UNITS = {
    "post_edit_margin": "nats; log-prob of the tokens after the edit, a minus b",
    "margin": "nats; log P(a) - log P(b), whole sentences",
    "downstream_divergence": "nats; mean KL(p_a || p_b) of the predictions after the edit",
}
VS_SELECTIONS = ("stable", "least_stable")


def _pick(values: list, preferred: str, given: str | None) -> str | None:
    if given is not None:
        return given
    return preferred if preferred in values else (values[0] if values else None)


def vs_random(table: pd.DataFrame, metric: str = "post_edit_margin", mode: str | None = None,
              where: str | None = None, category: str = "all", ablation: pd.DataFrame | None = None) -> go.Figure:
    """The stable and least-stable selections against their matched random selections, per k.

    ``table``: rows of ``ablation_vs_random.parquet``; ``ablation``: rows of ``ablation.parquet``,
    whose ``random`` rows give each seed's mean change (column ``{metric}_change``), drawn as a box
    with every seed as a point. Without it (or without that column) the box is drawn from the
    table's summary: mean (line), mean +- sd (box), min .. max (whiskers). The selections are
    markers with their clustered CI (``change_lo``/``change_hi``), annotated with ``p_perm`` and
    ``diff_vs_random [diff_lo, diff_hi]``. ``mode``/``where`` default to mean/edit (else the first)."""
    d = table[(table["metric"] == metric) & (table["category"].astype(str) == str(category))]
    mode = _pick(sorted(set(d["mode"].astype(str))), "mean", mode)
    where = _pick(sorted(set(d["where"].astype(str))), "edit", where)
    d = d[(d["mode"].astype(str) == str(mode)) & (d["where"].astype(str) == str(where))]
    title = f"{metric}: selections against matched random ones, {mode} ablation at '{where}', category {category}"
    if d.empty:
        return empty(title, "no rows of ablation_vs_random.parquet for this choice")
    rnd = None
    col = f"{metric}_change"
    if ablation is not None and col in ablation and "selection" in ablation:
        rnd = ablation[(ablation["selection"] == "random") & (ablation["mode"].astype(str) == str(mode))
                       & (ablation["where"].astype(str) == str(where))
                       & (ablation["category"].astype(str) == str(category))]
        rnd = rnd if len(rnd) else None
    ks = sorted({int(k) for k in d["k"]} | ({int(k) for k in rnd["k"]} if rnd is not None else set()))
    xpos = {k: i for i, k in enumerate(ks)}
    fig = go.Figure()
    n_seeds = int(d["n_seeds"].max())
    if rnd is not None:
        fig.add_trace(go.Box(
            x=[xpos[int(k)] for k in rnd["k"]], y=rnd[col], name=f"random ({rnd['seed'].nunique()} seeds)",
            boxpoints="all", jitter=0.4, pointpos=0, width=0.35, marker={"color": COLORS["random"], "size": 4,
                                                                         "opacity": 0.6},
            line={"color": COLORS["random"]}, fillcolor="rgba(127,127,127,0.15)", customdata=rnd["seed"],
            hovertemplate="random seed %{customdata}<br>mean change %{y:.4f}<extra></extra>"))
    else:
        r = d.drop_duplicates("k").sort_values("k")
        mean, sd = r["random_mean"].to_numpy(float), np.nan_to_num(r["random_sd"].to_numpy(float))
        fig.add_trace(go.Box(
            x=[xpos[int(k)] for k in r["k"]], q1=mean - sd, median=mean, q3=mean + sd, mean=mean,
            lowerfence=r["random_min"], upperfence=r["random_max"], width=0.35,
            name=f"random ({n_seeds} seeds: mean +- sd, min..max)", line={"color": COLORS["random"]},
            fillcolor="rgba(127,127,127,0.15)"))
    sels = [s for s in VS_SELECTIONS if s in set(d["selection"])] + sorted(set(d["selection"]) - set(VS_SELECTIONS))
    shift = {s: 0.3 * (-1 if i % 2 == 0 else 1) * (1 + i // 2) for i, s in enumerate(sels)}
    for i, sel in enumerate(sels):
        g = d[d["selection"] == sel].sort_values("k")
        x = [xpos[int(k)] + shift[sel] for k in g["k"]]
        y = g["change"].to_numpy(float)
        hi = (g["change_hi"].to_numpy(float) - y)
        lo = (y - g["change_lo"].to_numpy(float))
        custom = np.stack([g["diff_vs_random"], g["diff_lo"], g["diff_hi"], g["p_perm"], g["n_pairs"]], -1)
        color = COLORS.get(sel, ["#2ca02c", "#9467bd", "#8c564b"][i % 3])
        fig.add_trace(go.Scatter(
            x=x, y=y, mode="markers", name=f"{esc(sel)} (clustered CI)",
            marker={"color": color, "size": 11, "symbol": "diamond"},
            error_y={"type": "data", "array": np.nan_to_num(hi), "arrayminus": np.nan_to_num(lo), "visible": True},
            customdata=custom,
            hovertemplate=(f"{esc(sel)}<br>change %{{y:.4f}}<br>diff vs random %{{customdata[0]:+.4f}} "
                           "[%{customdata[1]:+.4f}, %{customdata[2]:+.4f}]<br>p_perm %{customdata[3]:.3f}"
                           "<br>%{customdata[4]:.0f} pairs<extra></extra>")))
        for xx, rec in zip(x, g.itertuples()):
            top = rec.change_hi if np.isfinite(rec.change_hi) else rec.change
            fig.add_annotation(x=xx, y=top, yshift=8, showarrow=False, yanchor="bottom",
                               font={"size": 10, "color": color},
                               text=(f"p_perm {rec.p_perm:.3f}<br>diff {rec.diff_vs_random:+.3f}<br>"
                                     f"[{rec.diff_lo:+.3f}, {rec.diff_hi:+.3f}]"))
    fig.add_hline(y=0, line_dash="dot", line_color="#999")
    kinds = set(d["pairs"].astype(str)) if "pairs" in d else set()
    held = ("held-out pairs (the selection was ranked on the other pairs)" if kinds == {"held_out"} else
            "IN-SAMPLE pairs (selected and tested on the same pairs)" if kinds == {"in_sample"} else
            "pairs: " + (", ".join(sorted(kinds)) or "not recorded"))
    n_pairs = int(d["n_pairs"].max())
    styled(fig, title, 480,
           xaxis={"title": {"text": "k (components ablated)"}, "tickvals": list(range(len(ks))),
                  "ticktext": [f"k={k}" for k in ks], "range": [-0.8, len(ks) - 0.2]},
           yaxis_title=f"change in {esc(metric)}<br>({esc(METRIC_UNITS.get(metric, 'mean change'))})",
           legend={"orientation": "h", "y": -0.2})
    fig.update_layout(title={"text": f"{esc(title)}<br><sup>{esc(held)}, {n_pairs} ablated; random: each "
                                     f"seed's mean change ({n_seeds} seeds); annotated: permutation p and "
                                     "diff vs random [cluster-robust CI]</sup>"},
                      margin={"t": 80, "l": 90})
    return fig


vs_random_figure = vs_random  # its name inside write_causal_figures, whose argument ``vs_random`` is a table


def _slug(x) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(x))[:60]


def write_causal_figures(causal_dir: str | Path, ablation: pd.DataFrame | None = None,
                         patching: pd.DataFrame | None = None, n_pair_figures: int = 3, png: bool = True,
                         read_tables: bool = True, vs_random: pd.DataFrame | None = None) -> dict:
    """Write the causal figures under ``causal_dir/figures``; returns the file names (and PNG errors).

    Tables not given are read from ``causal_dir`` when ``read_tables``; ``ablation_vs_random.parquet``
    also when an ablation table was given (``interp.patch`` writes it before drawing the figures),
    giving ``vs_random_{mode}_{where}`` (post_edit_margin, category all)."""
    causal_dir = Path(causal_dir)
    if read_tables and ablation is None and (causal_dir / "ablation.parquet").exists():
        ablation = pd.read_parquet(causal_dir / "ablation.parquet")
    if read_tables and patching is None and (causal_dir / "patching.parquet").exists():
        patching = pd.read_parquet(causal_dir / "patching.parquet")
    vs_path = causal_dir / "ablation_vs_random.parquet"
    if vs_random is None and (read_tables or ablation is not None) and vs_path.exists():
        vs_random = pd.read_parquet(vs_path)
    figs: dict[str, go.Figure] = {}
    if ablation is not None and not ablation.empty:
        for (mode, where), _ in ablation.groupby(["mode", "where"], sort=True):
            figs[f"effect_vs_k_{mode}_{where}"] = effect_vs_k(ablation, mode, where)
    if vs_random is not None and not vs_random.empty:
        d = vs_random[(vs_random["metric"] == "post_edit_margin") & (vs_random["category"].astype(str) == "all")]
        for (mode, where), _ in d.groupby(["mode", "where"], sort=True):
            figs[f"vs_random_{mode}_{where}"] = vs_random_figure(d, "post_edit_margin", mode, where, "all", ablation)
    if patching is not None and not patching.empty:
        kinds = sorted(set(patching["kind"]))
        pair_ids = list(dict.fromkeys(patching.loc[patching["level"] == "pair", "pair_id"]))[:n_pair_figures]
        for kind in kinds:
            for pid in pair_ids:
                figs[f"patch_{kind}_pair_{_slug(pid)}"] = patching_heatmap(patching, kind, pair_id=pid)
            for cat in sorted(set(patching.loc[patching["level"] == "category", "category"])):
                figs[f"patch_{kind}_category_{_slug(cat)}"] = patching_heatmap(patching, kind, category=cat)
    fdir = causal_dir / R.FIGURES
    if not figs:
        return {"html": []}
    from .export import write_figures, write_plotlyjs

    fdir.mkdir(parents=True, exist_ok=True)
    write_plotlyjs(fdir)
    return write_figures(figs, fdir, png)


def ablation(d: pd.DataFrame, summary: pd.DataFrame | None, metric: str, mode: str | None = None,
             where: str | None = None, category: str | None = None) -> go.Figure:
    """Ablation effect against k per selection (rows of ``ablation.parquet`` already narrowed to one
    mode, where and category): the mean over seeds from ``summary`` (±sd over seeds) when it has
    ``{metric}_mean``, else the mean of ``d``; and each seed faintly."""
    f = {"mode": mode, "where": where, "category": category}
    fig = go.Figure()
    sels = [s for s in COLORS if s in set(d["selection"])] + sorted(set(d["selection"]) - set(COLORS))
    for i, sel in enumerate(sels):
        g = d[d["selection"] == sel]
        color = COLORS.get(sel, ["#2ca02c", "#9467bd", "#8c564b"][i % 3])
        mean_col, sd = f"{metric}_mean", None
        s = None
        if summary is not None and mean_col in summary:
            s = summary[summary["selection"] == sel]
            for col in ("mode", "where", "category"):
                if f.get(col) is not None and col in s:
                    s = s[s[col].astype(str) == f[col]]
            s = s.sort_values("k") if len(s) else None
        if s is not None:
            x, y = s["k"], s[mean_col]
            sd = s[f"{metric}_std"] if f"{metric}_std" in s else None
        else:
            m = g.groupby("k", observed=True, as_index=False)[metric].mean().sort_values("k")
            x, y = m["k"], m[metric]
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=esc(sel), line={"color": color},
                                 error_y={"array": sd.fillna(0).tolist(), "visible": True} if sd is not None else None))
        if "seed" in g and g["seed"].nunique() > 1:
            fig.add_trace(go.Scatter(x=g["k"], y=g[metric], mode="markers", showlegend=False, hoverinfo="skip",
                                     marker={"color": color, "size": 5, "opacity": 0.3}))
    fig.add_hline(y=0, line_dash="dot")
    where_ = ", ".join(f"{k} {esc(v)}" for k, v in f.items() if v is not None)
    return styled(fig, f"ablation: {metric} against the number of ablated components k ({where_})", 420,
                  xaxis={"title": {"text": "k"}, "type": "log", "tickvals": sorted(int(k) for k in set(d["k"]))},
                  yaxis_title=metric,
                  legend={"orientation": "h", "y": -0.2})


def patching_panels(d: pd.DataFrame) -> list[tuple[str, go.Figure]]:
    """(name, figure) per patched hook kind and metric of ``patching.parquet`` rows: layer x position /
    offset / {edit, after} / head, one panel per direction; the hover shows the CI and the pairs used
    and left out where the rows have them."""
    if d.empty or "layer" not in d:
        return []
    numeric_metric = "metric" in d and pd.api.types.is_numeric_dtype(d["metric"])
    value = "normalized" if "normalized" in d else ("metric" if numeric_metric else None)
    if value is None:
        return []
    kind_col = "kind" if "kind" in d else ("hook" if "hook" in d else None)
    metric_col = "metric" if "metric" in d and value != "metric" else None
    out = []
    for kind, dk in (d.groupby(kind_col, observed=True, sort=True) if kind_col else [("", d)]):
        for metric, dm in (dk.groupby(metric_col, observed=True, sort=True) if metric_col else [("", dk)]):
            x = patch_x(dm, pair="pair_id" in dm and dm["pair_id"].nunique() == 1 and dm["pair_id"].notna().all())
            if x is None:
                continue
            dirs = sorted(set(dm["direction"].astype(str))) if "direction" in dm else [""]
            fig = make_subplots(rows=1, cols=len(dirs), subplot_titles=[esc(t) for t in dirs], shared_yaxes=True,
                                horizontal_spacing=0.06)
            labels = {}
            if x in ("position", "positions") and "token" in dm:
                labels = {(q if x == "positions" else int(q)): str(t) for q, t in zip(dm[x], dm["token"])
                          if pd.notna(q) and pd.notna(t)}
            for i, direction in enumerate(dirs, start=1):
                g = dm[dm["direction"].astype(str) == direction] if direction else dm
                z, cols, layers, custom, hover = patch_grid(g, x, value)
                cols = [c if x == "positions" else int(c) for c in cols]
                xs = [f"{c}:{esc(labels[c])}" if c in labels else str(c) for c in cols]
                fig.add_trace(go.Heatmap(z=z, x=xs, y=[int(l) for l in layers], customdata=custom,
                                         coloraxis="coloraxis",
                                         hovertemplate=f"{esc(direction)}<br>layer %{{y}}<br>{x} %{{x}}"
                                                       f"<br>%{{z:.3f}}{hover}<extra></extra>"),
                              row=1, col=i)
                fig.update_xaxes(title_text=x, row=1, col=i)
            fig.update_yaxes(title_text="layer", row=1, col=1)
            if dm["layer"].nunique() <= 40:
                fig.update_yaxes(dtick=1)
            fig.update_layout(coloraxis={"colorscale": "RdBu", "reversescale": True, "cmid": 0,
                                         "colorbar": {"title": {"text": value}}})
            title = (f"activation patching, {kind}" + (f", metric {metric}" if metric else "")
                     + f": {value} by layer and {x}")
            styled(fig, title, 260 + 26 * dm["layer"].nunique())
            out.append((f"patch-{kind}-{metric}".replace(" ", "_"), fig))
    return out
