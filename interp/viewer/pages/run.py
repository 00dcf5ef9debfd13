"""A run's overview page (facts, accuracy, margins, what "stable" means in the run and how many
components are, the directions they span, heatmap, ranking, scatter, saved figures) and its saved
figure files."""

from __future__ import annotations

import json

import pandas as pd

from flask import Blueprint, abort, render_template, request, send_file, url_for

from ... import figures as F
from ... import rundir as R
from ...figures.common import hook_sort_key
from ...figures.stability import heatmap_window, scatter_points
from ..columns import OPTIONAL_STAB_COLUMNS, VALUE_COLUMNS
from ..store import figure_files, records, served_file
from ..web import (HEAD_POINT, HEAD_POINTS, HEATMAP_MAX_COLUMNS, NEURON_POINT, arg_choice, arg_int, click_template,
                   component_urls, default_position, fig_spec, nav, stable_counts, store)

RANK_KEYS = ("normalized", "rank_calibrated", "ratio_hi", "control_normalized", "ratio", "q_value", "q_cluster",
             "adj_normalized", "p_value")
RATIO_KEYS = ("ratio", "ratio_hi", "ratio_lo")  # rankings by these draw the ratio with its interval
DIRECTION_COLUMNS = ["hook", "layer", "n_components", "n_stable", "n_distinct", "n_pcs", "pairs_used",
                     "mean_diff_norm", "spread_norm", "mean_diff_relative", "mean_diff_snr"]
# what the heatmap and the scatter plot read of the stability rows (the scatter's hover text:
# figures.common.details and flag_columns)
HEAT_COLUMNS = ("hook", "position", "layer", "component", "head")
SCATTER_COLUMNS = ("hook", "position", "layer", "component", "ratio", "ratio_lo", "ratio_hi", "q_value", "q_cluster",
                   "n_clusters", "adj_coef", "adj_lo", "adj_hi", "offset_dim", "massive")


def at_position(s: pd.DataFrame, position: str, columns) -> pd.DataFrame:
    """The stability rows of one position mode with only ``columns``: one copy of a few columns,
    where each figure would copy every column of the whole table (1.4 million rows x 40 columns for
    Llama-3-8B's neurons over 32 layers) to select its rows."""
    keep = [c for c in dict.fromkeys(columns) if c in s.columns]
    return s.loc[(s["position"] == position).to_numpy(), keep]


bp = Blueprint("run", __name__)

@bp.route("/run/<path:run>")
def run_page(run: str):
    r = store().get(run)
    hooks, positions = r.hooks, r.positions
    hook = arg_choice("hook", hooks, "resid_post" if "resid_post" in hooks else (hooks[0] if hooks else ""))
    position = arg_choice("position", positions, default_position(r))
    values = [c for c in VALUE_COLUMNS if c in r.stab.columns]
    value = arg_choice("value", values, "normalized")
    rank_hook = arg_choice("rank_hook", [""] + hooks, "")
    rank_keys = [c for c in RANK_KEYS if c in r.stab.columns]
    rank_by = str(((r.manifest.get("config") or {}).get("analysis") or {}).get("rank_by") or "normalized")
    rank_key = arg_choice("rank_key", rank_keys, rank_by if rank_by in rank_keys else "normalized")
    k = arg_int("k", int(((r.manifest.get("config") or {}).get("analysis") or {}).get("top_k", 20)), 1, 200)
    sx = arg_choice("x", values, "spread")
    sy = arg_choice("y", values, "mean_abs_diff")
    slog = request.args.get("log", "1") != "0"
    cstart = arg_int("cstart", 0, 0)
    by_head = hook in HEAD_POINTS and request.args.get("by") == "head"
    s = r.stab
    hs = at_position(s, position, (*HEAT_COLUMNS, value))
    here = hs[hs["hook"] == hook]
    if by_head and "head" in here.columns and here["head"].notna().any():
        heat = F.heatmap(hs, hook, position, value, by="head")
        hinfo = heatmap_window(hs, hook, position)
    else:
        heat = F.heatmap(hs, hook, position, value, cstart=cstart, cwidth=HEATMAP_MAX_COLUMNS)
        hinfo = heatmap_window(hs, hook, position, cstart, HEATMAP_MAX_COLUMNS)
    sel_layer = arg_choice("layer", [""] + r.layers, "")
    sel_layer = None if sel_layer == "" else int(sel_layer)
    urls = component_urls(r)
    ss = at_position(s, position, (*SCATTER_COLUMNS, sx, sy))
    scatter = F.scatter(ss, position, sx, sy, None, slog, sel_layer, url=urls)
    shown, n = scatter_points(ss, position, sx, sy, None, slog, sel_layer)
    sinfo = {"n": n, "shown": 0 if shown is None else len(shown)}
    click = url_for("head.head", run=r.id, layer=0, head=0)[: -len("/0/0")] + "/{y}/{x}" if by_head \
        and hook == HEAD_POINT else None if by_head else click_template(r, hook)
    ratio_bars = rank_key in RATIO_KEYS and "ratio_hi" in s.columns
    ranking = F.ranking(s, position, k, rank_hook or None, rank_key, sel_layer, url=urls,
                        value="ratio" if ratio_bars else None,
                        stable_ratio=r.stable_ratio if ratio_bars and r.rule == "equivalence" else None)
    figs = {"heatmap": fig_spec(heat, click=click),
            "ranking": fig_spec(ranking),
            "scatter": fig_spec(scatter),
            "margins": fig_spec(F.margins(r.pairs, url=lambda pid: url_for("pairs.pair", run=r.id, pair_id=pid))),
            "accuracy": fig_spec(F.accuracy({r.id: r.manifest}))}
    # what "stable" means here: the null, the rule, the counts under it, the directions they span
    inference = r.inference
    counts = stable_counts(r, position)
    dirs = r.directions
    dir_rows = []
    if dirs is not None and len(dirs) and "position" in dirs.columns:
        here_dirs = dirs[dirs["position"] == position]
        here_dirs = here_dirs.assign(_h=[hook_sort_key(str(h)) for h in here_dirs["hook"]]).sort_values(
            ["_h", "layer"], kind="stable")
        dir_rows = records(here_dirs, DIRECTION_COLUMNS)
        if "mean_diff_relative" in dirs.columns and (here_dirs["layer"] >= 0).any():
            figs["directions"] = fig_spec(F.directions_lines(dirs, position))
    files = figure_files(r, R.FIGURES)
    heads = []
    if HEAD_POINT in hooks and "head" in r.stab.columns:
        heads = sorted(int(h) for h in r.stab.loc[r.stab["hook"] == HEAD_POINT, "head"].dropna().unique())
    return render_template(
        "run.html", **nav(r), figs=figs, hooks=hooks, positions=positions, hook=hook, position=position,
        value=value, values=values, k=k, rank_hook=rank_hook, rank_keys=rank_keys, rank_key=rank_key,
        sx=sx, sy=sy, slog=slog, hinfo=hinfo, sinfo=sinfo, files=files, heads=heads, by_head=by_head,
        head_hooks=HEAD_POINTS, head_hook=HEAD_POINT, neuron_hook=NEURON_POINT if NEURON_POINT in hooks else None,
        sel_layer=sel_layer,
        cwidth=HEATMAP_MAX_COLUMNS, config_json=json.dumps(r.manifest.get("config", {}), indent=2, default=str),
        timings=r.manifest.get("timings", {}), counts=r.manifest.get("counts", {}),
        accuracy=r.manifest.get("accuracy", []), model=r.manifest.get("model", {}),
        optional=[c for c in OPTIONAL_STAB_COLUMNS if c in r.stab.columns],
        layers=r.layers, inf=inference, stable_counts=counts, dir_rows=dir_rows,
        dir_cols=[c for c in DIRECTION_COLUMNS if dir_rows and c in dir_rows[0]])


@bp.route("/run/<path:run>/-/files/<path:name>")
def run_file(run: str, name: str):
    """Saved figure files of a run (figures/ and causal/figures/ only), served as they are; a file
    whose resolved path leaves its figure folder (a symlink, of the file or of the folder) is a 404."""
    r = store().get(run)
    path = served_file(r, name)
    if path is None:
        abort(404, description="only files of figures/ and causal/figures/ are served")
    return send_file(path, download_name=name.rsplit("/", 1)[-1], max_age=0)  # the real path, checked
