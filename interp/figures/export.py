"""Writing figures to files: offline HTML (plotly.js written once beside them, never fetched from
a CDN) and PNG through kaleido (headless Chromium, offline), plus the two figure sets of a run:

- ``write_run_figures``: the run's ``figures/`` (heatmaps, ranking, scatter, divergence, margins),
  written by ``interp.run`` and by ``python -m interp.figures RUN_DIR``;
- ``export_figures``: the viewer's figures of a run as PNG (``python -m interp.view export RUN_DIR``).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from .. import rundir as R
from ..hooks import head_points, neuron_points
from .causal import ablation, patching_panels, vs_random
from .common import hook_sort_key, values
from .divergence import divergence, divergence_heatmap
from .pairs import accuracy, margins
from .stability import heatmap, layer_profile, ranking, scatter

log = logging.getLogger(__name__)
for _name in ("choreographer", "kaleido", "logistro"):  # browser start-up chatter
    logging.getLogger(_name).setLevel(logging.WARNING)

HEATMAP_MAX_COLUMNS = 2048  # the viewer shows wider hooks a window of this many components at a time
RUN_SCATTER_MAX_POINTS = 20000


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
    """``plotly.min.js`` from the installed package, once per folder (the HTML figures load it)."""
    from plotly.offline import get_plotlyjs

    target = figures_dir / "plotly.min.js"
    if not target.exists():
        with R.atomic_path(target) as tmp:
            tmp.write_text(get_plotlyjs())


def run_figures(stab: pd.DataFrame, pairs: pd.DataFrame, div: pd.DataFrame | None = None,
                top_k: int = 20, rule: str | None = None, stable_ratio: float | None = None) -> dict[str, go.Figure]:
    """The figures of a run's ``figures/`` folder by file name (without extension).

    The ranking (runs with controls) shows the ratio with its confidence interval where the table
    has one; ``rule`` (the run's ``analysis.rule``) orders it: ``equivalence`` by ``ratio_hi`` (with
    a line at ``stable_ratio``), else by ``rank_calibrated``."""
    position = "edit" if "edit" in set(stab["position"]) else stab["position"].iloc[0]
    figs = {}
    for hook in sorted(stab["hook"].unique()):
        figs[f"heatmap_{hook}_{position}"] = heatmap(stab, hook, position)
        if hook in head_points():
            figs[f"heatmap_{hook}_heads_{position}"] = heatmap(stab, hook, position, by="head")
        if hook in neuron_points():
            figs[f"heatmap_{hook}_blocks_{position}"] = heatmap(stab, hook, position, by="block")
    if div is not None:
        for hook in sorted(div["hook"].unique()):
            figs[f"divergence_{hook}"] = divergence(div, hook)
    calibrated = "rank_calibrated" in stab
    key = "rank_calibrated" if calibrated else "normalized"
    if rule == "equivalence" and "ratio_hi" in stab:
        key = "ratio_hi"
    figs[f"ranking_{position}"] = ranking(stab, position, top_k, key=key, control=calibrated,
                                          stable_ratio=stable_ratio if rule == "equivalence" else None)
    controls = "control_normalized" in stab
    figs[f"scatter_{position}"] = scatter(stab, position, *(("control_normalized", "normalized") if controls
                                                            else ("spread", "mean_abs_diff")),
                                          max_points=RUN_SCATTER_MAX_POINTS, diagonal=controls)
    figs["margins"] = margins(pairs)
    return figs


def write_run_figures(run_dir: str | Path, stab: pd.DataFrame | None = None, pairs: pd.DataFrame | None = None,
                      top_k: int = 20, png: bool = True, rule: str | None = None,
                      stable_ratio: float | None = None) -> dict:
    """Write a run's figures into ``run_dir/figures`` (tables not given are read from ``run_dir``);
    returns the files written (and a PNG error, if any). ``rule``/``stable_ratio``: the run's rule
    for "stable" (``run_figures``); when the stability table is read from ``run_dir``, they are
    read from its manifest (older runs: significance)."""
    run_dir = Path(run_dir)
    if stab is None and rule is None and (run_dir / R.MANIFEST).is_file():
        from ..rules import Rule

        own = Rule.of_run((R.read_manifest(run_dir).get("config") or {}).get("analysis"))
        rule, stable_ratio = own.rule, own.stable_ratio
    stab = R.read_table(run_dir, R.STABILITY) if stab is None else stab
    pairs = R.read_table(run_dir, R.PAIRS) if pairs is None else pairs
    fdir = run_dir / R.FIGURES
    fdir.mkdir(parents=True, exist_ok=True)
    write_plotlyjs(fdir)
    div = pd.read_parquet(run_dir / R.DIVERGENCE) if (run_dir / R.DIVERGENCE).exists() else None
    return write_figures(run_figures(stab, pairs, div, top_k, rule, stable_ratio), fdir, png)


def _optional(run_dir: Path, name: str) -> pd.DataFrame | None:
    return pd.read_parquet(run_dir / name) if (run_dir / name).is_file() else None


def viewer_figures(run_dir: str | Path) -> dict[str, go.Figure]:
    """The viewer's figures of one run by name: accuracy, margins, heatmaps and rankings and scatter
    plots of every hook and position, layer profiles, and the causal and divergence results present."""
    run_dir = Path(run_dir)
    manifest = R.read_manifest(run_dir)
    stab, pairs = R.read_table(run_dir, R.STABILITY), R.read_table(run_dir, R.PAIRS)
    present = set(values(stab, "position"))
    positions = [p for p in manifest.get("positions", []) if p in present]
    positions += sorted(present - set(positions))
    hooks = sorted(values(stab, "hook"), key=hook_sort_key)
    layers = sorted(int(x) for x in values(stab, "layer"))
    figs: dict[str, go.Figure] = {"accuracy": accuracy({run_dir.name: manifest}), "margins": margins(pairs)}
    for position in positions:
        for hook in hooks:
            figs[f"heatmap_{hook}_{position}"] = heatmap(stab, hook, position, cwidth=HEATMAP_MAX_COLUMNS)
        figs[f"ranking_{position}"] = ranking(stab, position, 20)
        figs[f"scatter_{position}"] = scatter(stab, position)
    position = "edit" if "edit" in positions else (positions[0] if positions else "edit")
    for layer in layers:
        figs[f"layer_{layer}_{position}"] = layer_profile(stab, layer, position)
    ab = _optional(run_dir, "causal/ablation.parquet")
    if ab is not None and len(ab) and "k" in ab and "selection" in ab:
        summ = _optional(run_dir, "causal/ablation_summary.parquet")
        keys = [c for c in ("mode", "where") if c in ab]
        for key, d in (ab.groupby(keys, observed=True, sort=True) if keys else [("all", ab)]):
            key = key if isinstance(key, tuple) else (key,)
            cat = "all" if "category" in d and "all" in set(d["category"]) else None
            if cat:
                d = d[d["category"] == cat]
            figs["ablation_" + "_".join(map(str, key))] = ablation(
                d, summ, "margin_change" if "margin_change" in d else "accuracy", mode=str(key[0]),
                where=str(key[1]) if len(key) > 1 else None, category=cat)
    vs = _optional(run_dir, "causal/ablation_vs_random.parquet")
    if vs is not None and len(vs) and {"metric", "mode", "where", "category"} <= set(vs.columns):
        d = vs[(vs["metric"] == "post_edit_margin") & (vs["category"].astype(str) == "all")]
        for (mode, where), _ in d.groupby(["mode", "where"], sort=True):
            figs[f"vs_random_{mode}_{where}"] = vs_random(d, "post_edit_margin", mode, where, "all", ablation=ab)
    pt = _optional(run_dir, "causal/patching.parquet")
    if pt is not None and len(pt):
        d = pt[pt["level"] == "category"] if "level" in pt else pt
        subj = "category" if "category" in d else None
        for name, g in (d.groupby(subj, observed=True, sort=True) if subj else [("all", d)]):
            for fname, fig in patching_panels(g):
                figs[f"{fname}_{name}"] = fig
    dv = _optional(run_dir, R.DIVERGENCE)
    if dv is not None and len(dv) and {"hook", "layer", "offset", "normalized"} <= set(dv.columns):
        for hook in sorted(set(dv["hook"]), key=hook_sort_key):
            cats = set(dv.loc[dv["hook"] == hook, "category"].astype(str)) if "category" in dv else set()
            figs[f"divergence_{hook}"] = divergence_heatmap(dv, hook, "all" if "all" in cats else None)
    return figs


def export_figures(run: Any, out: str | Path | None = None, width: int = 1100) -> list[Path]:
    """Write the viewer's figures of one run (a run dir, or a result object with ``.run_dir``) as
    PNG into ``out`` (default ``RUN/figures/viewer``), all in one kaleido browser session.

    Kaleido's page is built with MathJax off and plotly.js from the installed package, so the
    browser it starts loads nothing from the network."""
    run_dir = Path(getattr(run, "run_dir", run)).resolve()
    if not (run_dir / R.MANIFEST).is_file():
        raise FileNotFoundError(f"{run_dir} is not a run dir (no {R.MANIFEST})")
    out = Path(out) if out else run_dir / R.FIGURES / "viewer"
    out.mkdir(parents=True, exist_ok=True)
    figs = viewer_figures(run_dir)
    names = list(figs)
    paths, seen = [], set()
    for n in names:  # category names are user data: keep file names plain and inside ``out``
        base = re.sub(r"[^A-Za-z0-9_.-]+", "_", n).strip("._") or "figure"
        name, i = base, 1
        while name in seen:
            i += 1
            name = f"{base}_{i}"
        seen.add(name)
        paths.append(out / f"{name}.png")
    write_pngs([figs[n] for n in names], paths, width)
    return paths
