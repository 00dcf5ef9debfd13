"""The comparison of two runs: their facts side by side (the null and the rule for "stable" of each
included), accuracy, stable components (each run under its own rule), heatmap and ranking of each,
and the same components of both, one against the other."""

from __future__ import annotations

from flask import Blueprint, render_template, request

from ... import figures as F
from ...figures.common import hook_sort_key, top_rows
from ...figures.compare import joint, joint_rows
from ..columns import VALUE_COLUMNS
from ..store import Run
from .run import HEAT_COLUMNS, at_position
from ..web import (HEATMAP_MAX_COLUMNS, arg_choice, arg_int, click_template, component_urls, fig_spec, fmt, pct,
                   run_summary, stable_counts, store)

bp = Blueprint("compare", __name__)


@bp.route("/compare")
def compare():
    ids = [r for r, _ in store().list()]
    a_id, b_id = request.args.get("a"), request.args.get("b")
    if not a_id or not b_id:
        return render_template("compare.html", ids=ids, runs=None, a_id=a_id, b_id=b_id)
    a, b = store().get(a_id), store().get(b_id)
    hooks = sorted(set(a.hooks) | set(b.hooks), key=hook_sort_key)
    positions = list(dict.fromkeys(a.positions + b.positions))
    hook = arg_choice("hook", hooks, "resid_post" if "resid_post" in hooks else (hooks[0] if hooks else ""))
    position = arg_choice("position", positions,
                          "edit" if "edit" in positions else (positions[0] if positions else ""))
    values = [c for c in VALUE_COLUMNS if c in a.stab.columns and c in b.stab.columns]
    value = arg_choice("value", values, "normalized")
    k = arg_int("k", 15, 1, 200)
    figs = {"accuracy": fig_spec(F.accuracy({a.id: a.manifest, b.id: b.manifest}))}
    sides = []
    # of each run the rows at this position with the columns the heatmap and the joint plot read
    # (each figure would copy every column of a whole table to select its rows)
    at = {run.id: at_position(run.stab, position, (*HEAT_COLUMNS, value)) for run in (a, b)}
    for run in (a, b):
        heat = F.heatmap(at[run.id], hook, position, value, cwidth=HEATMAP_MAX_COLUMNS)
        counts = stable_counts(run, position, hook)
        sides.append({"run": run, "summary": run_summary(run.id, run.manifest), "inf": run.inference,
                      "stable": counts[0] if counts else None,
                      "heatmap": fig_spec(heat, click=click_template(run, hook)),
                      "ranking": fig_spec(F.ranking(run.stab, position, k, url=component_urls(run))),
                      "accuracy": run.manifest.get("accuracy", [])})
    # the same components in both runs: one against the other
    matched = len(joint_rows(at[a.id], at[b.id], hook, position, value))
    fig = joint(at[a.id], at[b.id], hook, position, value, a.id, b.id)
    if fig is not None:
        figs["joint"] = fig_spec(fig)
    top_a = set(map(tuple, top_rows(a.stab, position, k, hook)[["layer", "component"]].to_numpy().tolist()))
    top_b = set(map(tuple, top_rows(b.stab, position, k, hook)[["layer", "component"]].to_numpy().tolist()))
    ia, ib = a.inference, b.inference
    same_rule = ia["has_controls"] and ib["has_controls"] and ia["definition"] == ib["definition"]
    return render_template("compare.html", ids=ids, runs=sides, a_id=a_id, b_id=b_id, figs=figs, hooks=hooks,
                           positions=positions, hook=hook, position=position, value=value, k=k, values=values,
                           facts=_compare_facts(a, b), overlap=len(top_a & top_b), matched=matched,
                           same_rule=same_rule)


def _compare_facts(a: Run, b: Run) -> list[tuple[str, str, str]]:
    sa, sb = run_summary(a.id, a.manifest), run_summary(b.id, b.manifest)
    return [("created", sa["created"], sb["created"]), ("model", sa["model"], sb["model"]),
            ("shape", sa["shape"], sb["shape"]), ("pairs", sa["pairs"], sb["pairs"]),
            ("hooks", sa["hooks"], sb["hooks"]), ("kept", fmt(sa["kept"]), fmt(sb["kept"])),
            ("rejected", fmt(sa["rejected"]), fmt(sb["rejected"])),
            ("accuracy (grammar)", pct(sa["accuracy"]), pct(sb["accuracy"])),
            ("positions", ", ".join(a.positions), ", ".join(b.positions)),
            ("null", _null(a), _null(b)), ("rule for stable", _rule(a), _rule(b)),
            ("clusters", a.inference["cluster"] or "none", b.inference["cluster"] or "none")]


def _null(run: Run) -> str:
    i = run.inference
    return f"{i['null']} pool, {fmt(i['k'])} control edits per pair" if i["has_controls"] else "none (no control edits)"


def _rule(run: Run) -> str:
    i = run.inference
    return i["definition"] if i["has_controls"] else "none (no control edits)"
