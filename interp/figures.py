"""Plotly figures built from a run directory's tables.

Every figure is written as HTML that works offline (plotly.js is written once into ``figures/`` and
referenced relatively, never fetched from a CDN) and, when a Chromium is available to kaleido, as a
static PNG for papers. ``python -m interp.figures RUN_DIR`` (re)writes them from the tables alone.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from . import results as R

log = logging.getLogger(__name__)
for _name in ("choreographer", "kaleido", "logistro"):  # browser start-up chatter
    logging.getLogger(_name).setLevel(logging.WARNING)


def heatmap(stab: pd.DataFrame, hook: str, position: str = "edit", value: str = "normalized",
            by: str = "component", block: int = 64) -> go.Figure:
    """Layer x component heatmap of the normalized change at one hook point and position.

    ``by="head"`` (hook ``z``) averages over each head's dimensions; ``by="block"`` (``mlp_post``)
    averages neurons in blocks of ``block`` so thousands of neurons fit on one screen.
    """
    d = stab[(stab["hook"] == hook) & (stab["position"] == position)].copy()
    if by == "head" and "head" in d:
        d["col"], xlab = d["head"], "head (mean over head dimensions)"
    elif by == "block":
        d["col"], xlab = d["component"] // block * block, f"neuron block (mean over {block} neurons, first index)"
    else:
        d["col"], xlab = d["component"], "component" + (" (head*d_head + dim)" if hook == "z" else "")
    grid = d.pivot_table(index="layer", columns="col", values=value, aggfunc="mean").sort_index()
    fig = go.Figure(go.Heatmap(z=grid.to_numpy(), x=grid.columns, y=grid.index, colorscale="Viridis",
                               colorbar={"title": value},
                               hovertemplate="layer %{y}<br>" + by + " %{x}<br>" + value + " %{z:.4f}<extra></extra>"))
    fig.update_layout(title=f"{value} |a-b| at '{position}', {hook}: layer x {by}",
                      xaxis_title=xlab, yaxis_title="layer", height=420 + 8 * len(grid))
    return fig


def ranking(stab: pd.DataFrame, position: str = "edit", top_k: int = 20) -> go.Figure:
    """Bar chart of the ``top_k`` most stable components, with the control baseline and q-values.

    With controls, components are ordered by ``rank_calibrated`` (evidence of changing less than a
    control edit) and each bar sits beside the same component's control change; without, by ``rank``.
    """
    d = stab[stab["position"] == position]
    calibrated = "rank_calibrated" in d
    d = d.nsmallest(top_k, "rank_calibrated" if calibrated else "normalized")
    labels = [f"{h}[{l}].{c}" + (" (massive)" if m else "")
              for h, l, c, m in zip(d["hook"], d["layer"], d["component"], d.get("massive", [False] * len(d)))]
    err = d["normalized_std"] / np.sqrt(d["n_pairs"].clip(lower=1))
    text = [f"q={q:.2g}" for q in d["q_value"]] if calibrated else None
    fig = go.Figure(go.Bar(x=d["normalized"], y=labels, orientation="h", error_x={"array": err},
                           name="minimal-pair edit", text=text, textposition="outside",
                           hovertemplate="%{y}<br>normalized %{x:.4f}<extra></extra>"))
    if calibrated:
        fig.add_bar(x=d["control_normalized"], y=labels, orientation="h", name="control edit (null baseline)",
                    hovertemplate="%{y}<br>control %{x:.4f}<extra></extra>")
    fig.update_layout(title=f"{top_k} most stable components at '{position}'"
                      + (" (by paired t vs control; text: BH q-value)" if calibrated else ""),
                      xaxis_title="mean |change| / component spread", yaxis={"autorange": "reversed"},
                      barmode="group", height=240 + (34 if calibrated else 22) * len(d))
    return fig


def scatter(stab: pd.DataFrame, position: str = "edit", max_points: int = 20000) -> go.Figure:
    """Per component: minimal-pair change against control change (with controls), or mean |a-b|
    against the component's spread; massive dimensions marked."""
    d = stab[stab["position"] == position].dropna(subset=["normalized"])
    if len(d) > max_points:
        d = d.sample(max_points, random_state=0)
    d = d.assign(kind=np.where(d.get("massive", False), "massive", "ordinary"))
    if "control_normalized" in d:
        fig = px.scatter(d, x="control_normalized", y="normalized", color="layer", symbol="kind",
                         hover_data=["hook", "layer", "component", "ratio", "q_value"], opacity=0.6,
                         log_x=True, log_y=True)
        lo = float(np.nanmin(d[["normalized", "control_normalized"]].clip(lower=1e-6).to_numpy()))
        hi = float(np.nanmax(d[["normalized", "control_normalized"]].to_numpy()))
        fig.add_scatter(x=[lo, hi], y=[lo, hi], mode="lines", line={"dash": "dot", "color": "grey"},
                        name="edit = control", showlegend=True)
        fig.update_layout(title=f"change at '{position}': minimal-pair edit vs control edit (normalized); "
                          "below the diagonal = more stable than an arbitrary edit",
                          xaxis_title="control |a-c| / spread", yaxis_title="edit |a-b| / spread")
        return fig
    fig = px.scatter(d, x="spread", y="mean_abs_diff", color="layer", symbol="kind",
                     hover_data=["hook", "layer", "component", "normalized", "std_abs_diff"],
                     log_x=True, log_y=True, opacity=0.6)
    fig.update_layout(title=f"change distribution at '{position}': mean |a-b| vs component spread")
    return fig


def divergence(div: pd.DataFrame, hook: str) -> go.Figure:
    """How quickly the edit is absorbed: normalized |a-b| per layer and token offset, per category."""
    d = div[div["hook"] == hook]
    cats = list(dict.fromkeys(sorted(c for c in d["category"].unique() if c != "all") + ["all"]))
    cats = [c for c in cats if c in set(d["category"])]
    fig = make_subplots(rows=1, cols=len(cats), subplot_titles=cats, shared_yaxes=True)
    for i, c in enumerate(cats, start=1):
        g = d[d["category"] == c].pivot_table(index="layer", columns="offset", values="normalized")
        fig.add_trace(go.Heatmap(z=g.to_numpy(), x=g.columns, y=g.index, coloraxis="coloraxis",
                                 hovertemplate=c + "<br>layer %{y}<br>offset %{x}<br>%{z:.3f}<extra></extra>"),
                      row=1, col=i)
        fig.update_xaxes(title_text="offset from edit", row=1, col=i)
    fig.update_yaxes(title_text="layer", row=1, col=1)
    fig.update_layout(title=f"divergence profile, {hook}: mean over components of |a-b| / spread",
                      coloraxis={"colorscale": "Magma"}, height=460, width=max(700, 260 * len(cats)))
    return fig


def margins(pairs: pd.DataFrame) -> go.Figure:
    """Error-detection margin log P(a) - log P(b) per pair, by category."""
    fig = px.strip(pairs, x="category", y="margin", color="type", hover_data=["pair_id", "a", "b"])
    fig.add_hline(y=0, line_dash="dot")
    fig.update_layout(title="log P(a) - log P(b) per pair (grammar: a is correct)")
    return fig


def save_html(fig: go.Figure, figures_dir: Path, name: str) -> str:
    """Write ``name.html``; plotly.js is loaded from ``plotly.min.js`` beside it (offline)."""
    figures_dir.mkdir(parents=True, exist_ok=True)
    with R.atomic_path(figures_dir / f"{name}.html") as tmp:
        fig.write_html(str(tmp), include_plotlyjs=False, full_html=True, config={"displaylogo": False})
        html = tmp.read_text().replace("<head>", '<head><script src="plotly.min.js"></script>', 1)
        tmp.write_text(html)
    return f"{name}.html"


def write_pngs(figs: list[go.Figure], paths: list[Path], width: int = 1100) -> None:
    """Render figures to PNG in one kaleido (headless Chromium) session, fully offline: MathJax off
    (kaleido's default page would fetch it from a CDN); plotly.js comes from the installed package."""
    import kaleido

    specs = [{"fig": f.to_dict(), "path": str(p),
              "opts": {"format": "png", "width": width, "height": f.layout.height or 500, "scale": 1}}
             for f, p in zip(figs, paths)]
    kaleido.write_fig_from_object_sync(specs, kopts={"mathjax": False})


def save_pngs(figs: dict[str, go.Figure], figures_dir: Path) -> dict[str, str]:
    """Write every figure as ``name.png`` in one kaleido session. Returns name -> file, or an error."""
    names = list(figs)
    tmp_paths = [figures_dir / f".{n}.partial.png" for n in names]
    try:
        write_pngs([figs[n] for n in names], tmp_paths)
    except Exception as err:  # kaleido without a browser: say so, keep the HTML
        for t in tmp_paths:
            t.unlink(missing_ok=True)
        return {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"}
    out = {}
    for n, t in zip(names, tmp_paths):
        t.replace(figures_dir / f"{n}.png")
        out[n] = f"{n}.png"
    return out


def write_figures(figs: dict[str, go.Figure], fdir: Path, png: bool) -> dict:
    """HTML for every figure and, if ``png``, PNGs in one kaleido session; returns what was written
    (a failed PNG export is logged and reported, the HTML stays)."""
    written: dict = {"html": [save_html(f, fdir, n) for n, f in figs.items()]}
    if png:
        pngs = save_pngs(figs, fdir)
        if "error" in pngs:
            log.warning("PNG export failed (%s); the HTML figures are written. kaleido needs Chromium.",
                        pngs["error"])
            written["png_error"] = pngs["error"]
        else:
            written["png"] = list(pngs.values())
    return written


def write_plotlyjs(figures_dir: Path) -> None:
    from plotly.offline import get_plotlyjs

    target = figures_dir / "plotly.min.js"
    if not target.exists():
        with R.atomic_path(target) as tmp:
            tmp.write_text(get_plotlyjs())


def write_run_figures(run_dir: str | Path, stab: pd.DataFrame | None = None, pairs: pd.DataFrame | None = None,
                      top_k: int = 20, png: bool = True) -> dict:
    run_dir = Path(run_dir)
    stab = R.read_table(run_dir, R.STABILITY) if stab is None else stab
    pairs = R.read_table(run_dir, R.PAIRS) if pairs is None else pairs
    fdir = run_dir / R.FIGURES
    fdir.mkdir(parents=True, exist_ok=True)
    write_plotlyjs(fdir)
    position = "edit" if "edit" in set(stab["position"]) else stab["position"].iloc[0]
    figs = {}
    for hook in sorted(stab["hook"].unique()):
        figs[f"heatmap_{hook}_{position}"] = heatmap(stab, hook, position)
        if hook == "z":
            figs[f"heatmap_z_heads_{position}"] = heatmap(stab, hook, position, by="head")
        if hook == "mlp_post":
            figs[f"heatmap_mlp_post_blocks_{position}"] = heatmap(stab, hook, position, by="block")
    div_path = run_dir / R.DIVERGENCE
    if div_path.exists():
        div = pd.read_parquet(div_path)
        for hook in sorted(div["hook"].unique()):
            figs[f"divergence_{hook}"] = divergence(div, hook)
    figs[f"ranking_{position}"] = ranking(stab, position, top_k)
    figs[f"scatter_{position}"] = scatter(stab, position)
    figs["margins"] = margins(pairs)
    return write_figures(figs, fdir, png)


def main(argv: list[str] | None = None) -> None:
    """``python -m interp.figures RUN_DIR [--no-png]``: rewrite the figures of a run."""
    args = sys.argv[1:] if argv is None else argv
    if not args:
        raise SystemExit("usage: python -m interp.figures RUN_DIR [--no-png]")
    out = write_run_figures(args[0], png="--no-png" not in args)
    for k, v in out.items():
        print(k, v)


if __name__ == "__main__":
    main()
