"""Plotly figures of the causal tests (``interp.patch``), written under ``RUN/causal/figures/``.

- ``effect_vs_k``: margin change and accuracy change against k for the stable, least stable and
  random selections (random: mean over seeds, error bars = standard deviation across seeds, faint
  markers = each seed), one figure per ablation mode x where;
- ``patching_heatmap``: normalized patching effect, layer x position (residual stream; per category
  the position is the offset from the edit) or layer x head (``hook_z``), denoising and noising
  side by side.

HTML works offline (``plotly.min.js`` beside it, as in ``interp.figures``); PNG when kaleido works.
``python -m interp.figures_causal RUN_DIR [--no-png]`` rewrites them from the tables.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from . import results as R
from .figures import write_figures, write_plotlyjs

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


def patching_heatmap(patching: pd.DataFrame, kind: str, *, pair_id=None, category=None,
                     metric: str | None = None) -> go.Figure:
    """Normalized effect per layer x position (or offset) or layer x head; one panel per direction."""
    d = patching[patching["kind"] == kind]
    if pair_id is not None:
        d = d[(d["level"] == "pair") & (d["pair_id"] == pair_id)]
        where = f"pair {pair_id}"
    else:
        d = d[(d["level"] == "category") & (d["category"] == category)]
        where = f"category {category} (mean over pairs, positions aligned on the edit)"
    metric = metric or (d["metric"].iloc[0] if len(d) else "margin")
    d = d[d["metric"] == metric]
    directions = [x for x in ("denoising", "noising") if x in set(d["direction"])]
    fig = make_subplots(rows=1, cols=max(1, len(directions)),
                        subplot_titles=[f"{x} ({'a into b' if x == 'denoising' else 'b into a'})" for x in directions])
    per_head = kind == "z"
    xcol = "head" if per_head else ("position" if pair_id is not None else "offset")
    for c, direction in enumerate(directions, start=1):
        dd = d[d["direction"] == direction]
        grid = dd.pivot_table(index="layer", columns=xcol, values="normalized", aggfunc="first", dropna=False).sort_index()
        x = list(grid.columns)
        if xcol == "position":
            tok = dd.drop_duplicates("position").set_index("position")["token"]
            x = [f"{p}:{tok.get(p, '')}" for p in grid.columns]
        fig.add_trace(go.Heatmap(z=grid.to_numpy(dtype=float), x=x, y=list(grid.index), zmid=0,
                                 colorscale="RdBu", reversescale=True, coloraxis="coloraxis",
                                 hovertemplate=f"layer %{{y}}<br>{xcol} %{{x}}<br>normalized %{{z:.3f}}<extra></extra>"),
                      row=1, col=c)
        fig.update_xaxes(title_text={"head": "head", "position": "position:token",
                                     "offset": "offset from the edit"}[xcol], row=1, col=c)
        fig.update_yaxes(title_text="layer", row=1, col=c)
    hook = d["hook"].iloc[0] if len(d) else kind
    fig.update_layout(title=f"activation patching, {hook} per layer x {xcol}, {where}<br>"
                            f"<sup>normalized {metric}: 0 = no effect, 1 = the patched run scores like the source run</sup>",
                      coloraxis={"colorscale": "RdBu", "reversescale": True, "cmid": 0,
                                 "colorbar": {"title": "normalized"}},
                      height=380 + 12 * (int(d["layer"].max()) + 1 if len(d) else 0))
    return fig


def _slug(x) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(x))[:60]


def write_causal_figures(causal_dir: str | Path, ablation: pd.DataFrame | None = None,
                         patching: pd.DataFrame | None = None, n_pair_figures: int = 3, png: bool = True,
                         read_tables: bool = True) -> dict:
    """Write the causal figures under ``causal_dir/figures``; returns the file names (and PNG errors).

    Tables not given are read from ``causal_dir`` when ``read_tables``."""
    causal_dir = Path(causal_dir)
    if read_tables and ablation is None and (causal_dir / "ablation.parquet").exists():
        ablation = pd.read_parquet(causal_dir / "ablation.parquet")
    if read_tables and patching is None and (causal_dir / "patching.parquet").exists():
        patching = pd.read_parquet(causal_dir / "patching.parquet")
    figs: dict[str, go.Figure] = {}
    if ablation is not None and not ablation.empty:
        for (mode, where), _ in ablation.groupby(["mode", "where"], sort=True):
            figs[f"effect_vs_k_{mode}_{where}"] = effect_vs_k(ablation, mode, where)
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
    fdir.mkdir(parents=True, exist_ok=True)
    write_plotlyjs(fdir)
    return write_figures(figs, fdir, png)


def main(argv: list[str] | None = None) -> None:
    """``python -m interp.figures_causal RUN_DIR [--no-png]``: rewrite the causal figures of a run."""
    args = sys.argv[1:] if argv is None else argv
    if not args:
        raise SystemExit("usage: python -m interp.figures_causal RUN_DIR [--no-png]")
    out = write_causal_figures(Path(args[0]) / "causal", png="--no-png" not in args)
    for k, v in out.items():
        print(k, v)


if __name__ == "__main__":
    main()
