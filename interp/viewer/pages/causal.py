"""A run's causal results (``RUN/causal/`` of ``python -m interp.patch``): ablation against k per
selection, the selected components, activation patching heatmaps, the saved figure files."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, abort, render_template

from ... import figures as F
from ... import rundir as R
from ..store import ABLATION, ABLATION_SUMMARY, CAUSAL, PATCHING, SELECTIONS, figure_files, records
from ..web import PER_PAGE_MAX, arg_choice, component_url, fig_spec, nav, patching_specs, store

bp = Blueprint("causal", __name__)


@bp.route("/run/<path:run>/-/causal")
def causal(run: str):
    r = store().get(run)
    if not r.causal:
        abort(404, description="this run has no causal results (python -m interp.patch writes RUN/causal/)")
    ctx: dict[str, Any] = {"figs": {}, "files": figure_files(r, "causal/figures")}
    cm_path = r.file(f"{CAUSAL}/{R.MANIFEST}")
    try:
        cm = json.loads(cm_path.read_text()) if cm_path is not None else {}
    except (OSError, ValueError):
        cm = {}
    ctx["cman"] = {"created": cm.get("created"), "status": cm.get("status"), "rank_column": cm.get("rank_column"),
                   "counts": cm.get("counts", {}),
                   "method": json.dumps(cm.get("method", {}), indent=2, default=str),
                   "config": json.dumps(cm.get("config", {}), indent=2, default=str)}
    ab = r.table(ABLATION)
    if ab is not None and len(ab):
        summ = r.table(ABLATION_SUMMARY)
        modes = sorted(set(ab["mode"].astype(str))) if "mode" in ab else []
        wheres = sorted(set(ab["where"].astype(str))) if "where" in ab else []
        cats = sorted(set(ab["category"].astype(str))) if "category" in ab else []
        metrics = [c for c in ("margin_change", "accuracy_change", "accuracy", "margin") if c in ab]
        f = {"mode": arg_choice("mode", modes, modes[0] if modes else None),
             "where": arg_choice("where", wheres, wheres[0] if wheres else None),
             "category": arg_choice("acat", cats, "all" if "all" in cats else (cats[0] if cats else None)),
             "metric": arg_choice("metric", metrics, metrics[0] if metrics else None)}
        d = ab
        for col, key in (("mode", "mode"), ("where", "where"), ("category", "category")):
            if f[key] is not None and col in d:
                d = d[d[col].astype(str) == f[key]]
        if f["metric"] and "k" in d:
            ctx["figs"]["ablation"] = fig_spec(F.ablation(d, summ, f["metric"], f["mode"], f["where"], f["category"]))
        cols = [c for c in ("selection", "k", "seed", "n_components", "n_pairs", "margin_change",
                            "margin_change_se", "accuracy", "accuracy_change", "baseline_margin",
                            "baseline_accuracy") if c in d]
        order = [c for c in ("selection", "k", "seed") if c in d]
        ctx.update(ab_f=f, ab_modes=modes, ab_wheres=wheres, ab_cats=cats, ab_metrics=metrics, ab_cols=cols,
                   ab_rows=records(d.sort_values(order, kind="stable") if order else d, cols)[:PER_PAGE_MAX],
                   ab_n=len(d))
    sel = r.table(SELECTIONS)
    if sel is not None and len(sel):
        sels = [x for x in ("stable", "random", "least_stable") if x in set(sel["selection"])] + sorted(
            set(sel["selection"]) - {"stable", "random", "least_stable"})
        ks = sorted(set(int(k) for k in sel["k"])) if "k" in sel else []
        fs = {"selection": arg_choice("sel", sels, sels[0]), "k": arg_choice("sk", ks, ks[-1] if ks else None)}
        d = sel[sel["selection"] == fs["selection"]]
        if fs["k"] is not None:
            d = d[d["k"] == fs["k"]]
        if "seed" in d and len(d):
            d = d[d["seed"] == d["seed"].min()]
        rows = []
        for rec in records(d):
            rec["href"] = component_url(r, rec["hook"], rec["layer"], rec["component"]) \
                if {"hook", "layer", "component"} <= set(rec) else None
            rows.append(rec)
        ctx.update(sel_f=fs, sel_options=sels, sel_ks=ks, sel_rows=rows,
                   sel_cols=[c for c in ("hook", "layer", "component", "rank_value", "normalized", "act_mean")
                             if c in d])
    pt = r.table(PATCHING)
    if pt is not None and len(pt):
        levels = sorted(set(pt["level"].astype(str))) if "level" in pt else []
        level = arg_choice("level", levels, "category" if "category" in levels else (levels[0] if levels else None))
        d = pt[pt["level"].astype(str) == level] if level else pt
        subj_col = "pair_id" if level == "pair" and "pair_id" in d else ("category" if "category" in d else None)
        subjects = sorted(set(d[subj_col].dropna().astype(str))) if subj_col else []
        subject = arg_choice("subject", subjects, "all" if "all" in subjects and level == "category"
                             else (subjects[0] if subjects else None))
        if subject is not None:
            d = d[d[subj_col].astype(str) == subject]
        ctx.update(pt_levels=levels, pt_level=level, pt_subjects=subjects, pt_subject=subject, pt_subj_col=subj_col,
                   patching=patching_specs(d), pt_n=len(pt))
    return render_template("causal.html", **nav(r), **ctx)
