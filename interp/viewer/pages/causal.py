"""A run's causal results (``RUN/causal/`` of ``python -m interp.patch``): ablation against k per
selection, the selections against their matched random ones (``ablation_vs_random.parquet``, when
the causal dir has it), the selected components, activation patching heatmaps, the saved figure files."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, abort, render_template

from ... import figures as F
from ... import rundir as R
from ..store import ABLATION, ABLATION_SUMMARY, ABLATION_VS_RANDOM, CAUSAL, PATCHING, SELECTIONS, figure_files, records
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
        metrics = [c for c in ("margin_change", "post_edit_margin_change", "downstream_divergence_change",
                               "accuracy_change", "accuracy", "margin") if c in ab]
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
    vs = r.table(ABLATION_VS_RANDOM)
    if vs is not None and len(vs) and {"selection", "k", "mode", "where", "category", "metric"} <= set(vs.columns):
        ctx.update(vs_random_context(vs, ab, ctx.get("ab_f") or {}))
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


VS_COLUMNS = ["selection", "k", "mode", "where", "metric", "change", "change CI", "random mean ± sd",
              "diff vs random [CI]", "p_perm", "beyond all random", "n_seeds", "n_pairs", "pairs"]


def _num(x, spec: str) -> str:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return "–"
    return "–" if x != x else format(x, spec)


def vs_random_context(vs, ab, ab_f: dict) -> dict:
    """The vs-random table (category all, every selection x k x mode x where x metric) and its
    figure for one metric (``vmetric``) at the ablation form's mode and where."""
    d = vs[vs["category"].astype(str) == "all"]
    if d.empty:
        d = vs[vs["category"].astype(str) == sorted(set(vs["category"].astype(str)))[0]]
    metric_order = ("post_edit_margin", "downstream_divergence", "margin")
    metrics = [m for m in metric_order if m in set(d["metric"])] + sorted(set(d["metric"]) - set(metric_order))
    sel_order = {"stable": 0, "least_stable": 1}
    d = d.assign(_s=d["selection"].map(sel_order).fillna(2), _m=d["metric"].map({m: i for i, m in enumerate(metrics)}))
    d = d.sort_values(["mode", "where", "_m", "_s", "selection", "k"], kind="stable")
    rows = []
    for rec in records(d):
        rows.append({
            "selection": rec["selection"], "k": rec["k"], "mode": rec["mode"], "where": rec["where"],
            "metric": rec["metric"], "change": rec.get("change"),
            "change CI": f"[{_num(rec.get('change_lo'), '+.3f')}, {_num(rec.get('change_hi'), '+.3f')}]",
            "random mean ± sd": f"{_num(rec.get('random_mean'), '+.3f')} ± {_num(rec.get('random_sd'), '.3f')}",
            "diff vs random [CI]": f"{_num(rec.get('diff_vs_random'), '+.3f')} [{_num(rec.get('diff_lo'), '+.3f')}, "
                                   f"{_num(rec.get('diff_hi'), '+.3f')}]",
            "p_perm": rec.get("p_perm"), "beyond all random": rec.get("beyond_all_random"),
            "n_seeds": rec.get("n_seeds"), "n_pairs": rec.get("n_pairs"), "pairs": rec.get("pairs") or "–"})
    modes, wheres = sorted(set(d["mode"].astype(str))), sorted(set(d["where"].astype(str)))
    mode = ab_f.get("mode") if ab_f.get("mode") in modes else ("mean" if "mean" in modes else modes[0])
    where = ab_f.get("where") if ab_f.get("where") in wheres else ("edit" if "edit" in wheres else wheres[0])
    metric = arg_choice("vmetric", metrics, metrics[0])
    cat = str(d["category"].iloc[0])
    fig = fig_spec(F.vs_random(vs, metric, mode, where, cat, ablation=ab))
    kinds = sorted(set(d["pairs"].astype(str)) - {""}) if "pairs" in d else []
    return {"vs_cols": VS_COLUMNS, "vs_rows": rows[:PER_PAGE_MAX], "vs_n": len(d), "vs_metrics": metrics,
            "vs_metric": metric, "vs_mode": mode, "vs_where": where, "vs_category": cat, "vs_pairs": kinds,
            "vs_fig": fig}
