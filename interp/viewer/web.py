"""Helpers shared by the viewer's pages: reading query arguments, paging, formatting cells, links to
component and pair pages, a figure as JSON for the page, and the facts of a run shown on every page.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from flask import current_app, request, url_for

from ..hooks import HOOK_POINTS, head_points, neuron_points
from .columns import DOCS, ci_parts
from .store import Run, RunStore, TokenDecoder

HEATMAP_MAX_COLUMNS = 2048   # wider hooks are shown a window at a time (cstart)
PER_PAGE_MAX = 500
# From the hook-point table: points with a per-head view get heatmaps by head, points of neurons get
# the neuron title. The head page and the neuron page name no point in their URL: they show the
# table's first such point (``z``, ``mlp_post``); other points have component pages.
HEAD_POINTS = head_points()
HEAD_POINT = HEAD_POINTS[0] if HEAD_POINTS else None
NEURON_POINT = next(iter(neuron_points()), None)


def is_neuron(hook: str) -> bool:
    """Whether one component of ``hook`` is an MLP neuron (``unit`` of the hook-point table)."""
    return hook in HOOK_POINTS and HOOK_POINTS[hook].unit == "neuron"


def store() -> RunStore:
    """The run store of the app serving this request."""
    return current_app.extensions["interp_viewer"]["store"]


def decoder() -> TokenDecoder:
    """The token decoder of the app serving this request."""
    return current_app.extensions["interp_viewer"]["decoder"]


def fmt(v: Any, digits: int = 4) -> str:
    """A table cell: numbers with ``digits`` significant digits, missing values as an en dash."""
    if v is None or v is pd.NA or v is pd.NaT:
        return "–"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        if math.isnan(v):
            return "–"
        if v != 0 and (abs(v) >= 1e6 or abs(v) < 1e-3):
            return f"{v:.{digits - 1}e}"
        return f"{v:.{digits}g}" if abs(v) >= 1 else f"{v:.{digits}f}".rstrip("0").rstrip(".") or "0"
    if isinstance(v, (dict, list)):
        return json.dumps(v, default=str)
    return str(v)


def cell(rec: dict, col: str) -> str:
    """One table cell of a stability row: ``fmt`` of the value, or ``value [lo, hi]`` for a value
    shown with its confidence interval (``columns.CI_COLUMNS``)."""
    parts = ci_parts(col, rec)
    if parts is None:
        return fmt(rec.get(col))
    v, lo, hi = parts
    if all(x is None or (isinstance(x, float) and math.isnan(x)) for x in (lo, hi)):
        return fmt(v)
    return f"{fmt(v)} [{fmt(lo)}, {fmt(hi)}]"


def col_doc(col: str) -> str:
    """The registry's description of a stability column (a header's tooltip)."""
    return DOCS.get(col, "")


def pct(v: Any) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "–"
    return "–" if math.isnan(f) else f"{f:.1%}"


def arg_int(name: str, default: int, lo: int | None = None, hi: int | None = None) -> int:
    try:
        v = int(request.args.get(name, default))
    except (TypeError, ValueError):
        v = default
    if lo is not None:
        v = max(lo, v)
    if hi is not None:
        v = min(hi, v)
    return v


def arg_float(name: str) -> float | None:
    raw = request.args.get(name, "").strip()
    if not raw:
        return None
    try:
        v = float(raw)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def arg_choice(name: str, choices: Iterable, default: Any) -> Any:
    choices = list(choices)
    v = request.args.get(name)
    if v is None:
        return default
    for c in choices:
        if str(c) == v:
            return c
    return default


def with_args(**changes: Any) -> str:
    """The current URL with some query parameters changed (None removes one)."""
    view_args = request.view_args or {}
    args = {k: v for k, v in request.args.to_dict(flat=True).items() if k not in view_args}
    for k, v in changes.items():
        if v is None:
            args.pop(k, None)
        else:
            args[k] = str(v)
    return url_for(request.endpoint, **view_args, **args)


def paginate(n: int, per: int) -> dict:
    pages = max(1, math.ceil(n / per))
    page = arg_int("page", 1, 1, pages)
    links = []
    for p in sorted({1, 2, page - 2, page - 1, page, page + 1, page + 2, pages - 1, pages}):
        if 1 <= p <= pages:
            if links and p - links[-1][0] > 1:
                links.append((None, "…", None))
            links.append((p, str(p), with_args(page=p)))
    return {"page": page, "pages": pages, "n": n, "per": per, "start": (page - 1) * per,
            "links": [(label, href, num == page) for num, label, href in links],
            "prev": with_args(page=page - 1) if page > 1 else None,
            "next": with_args(page=page + 1) if page < pages else None}


def default_position(run: Run) -> str:
    pos = run.positions
    return "edit" if "edit" in pos else (pos[0] if pos else "edit")


def marked(sentence: str, other: str, token: str | None, other_token: str | None) -> tuple[str, str, str]:
    """``sentence`` split into (before, edited part, after) for display, by the one-token edit.

    The edited span starts where the two sentences first differ (moved back to where the edit
    token's text starts when the difference begins inside it) and ends where they agree again.
    """
    sentence, other = str(sentence), str(other)
    n = 0
    while n < min(len(sentence), len(other)) and sentence[n] == other[n]:
        n += 1
    s = 0
    while (s < min(len(sentence), len(other)) - n and sentence[len(sentence) - 1 - s] == other[len(other) - 1 - s]):
        s += 1
    start, end = n, len(sentence) - s
    t = (token or "").strip()
    ot = (other_token or "").strip()
    if t:
        for i in range(min(start, len(sentence)), -1, -1):
            if sentence.startswith(t, i) and (not ot or other.startswith(ot, i)):
                start, end = i, max(end, i + len(t))
                break
    if end <= start:  # the edit deleted text here: mark the character after it
        end = min(len(sentence), start + 1)
    return sentence[:start], sentence[start:end], sentence[end:]


def fig_spec(fig: go.Figure, click: str | None = None) -> dict:
    """A figure as plain JSON (written into the page with ``|tojson``) plus an optional click link.

    ``click`` is a URL template with ``{x}`` / ``{y}`` (heatmaps); points whose ``customdata`` is a
    path starting with ``/`` link there.
    """
    import plotly.io as pio

    return {"fig": json.loads(pio.to_json(fig, validate=False, engine="json")), "click": click}



def component_url(run: Run, hook: str, layer: int, component: int) -> str:
    """The page of one component (the neuron page for ``NEURON_POINT``, ``mlp_post``)."""
    if hook == NEURON_POINT:
        return url_for("component.neuron", run=run.id, layer=int(layer), neuron=int(component))
    return url_for("component.component", run=run.id, hook=hook, layer=int(layer), component=int(component))



def click_template(run: Run, hook: str) -> str:
    """The URL template a heatmap cell opens: the component at layer ``{y}``, component ``{x}``."""
    u = component_url(run, hook, 0, 0)
    return u[: -len("/0/0")] + "/{y}/{x}"


def component_urls(run: Run):
    """``component_url`` of one run, as the figure library's ``url`` argument."""
    return lambda hook, layer, component: component_url(run, hook, layer, component)


def stable_counts(run: Run, position: str, hook: str | None = None) -> list[dict]:
    """Per hook point at one position: components, how many are stable under the run's rule
    (``Run.stable``), their distinct component indices and, from ``directions.parquet`` where the
    run has it, the principal components they span (``n_pcs``, pooled over layers). Empty for runs
    without controls (no rule applies)."""
    from ..figures.common import hook_sort_key, values

    s = run.stab
    d = s[s["position"] == position]
    if hook is not None:
        d = d[d["hook"] == hook]
    if "q_value" not in d.columns or d.empty:
        return []
    st = run.stable(d)
    dirs = run.directions
    pooled = None
    if dirs is not None and {"hook", "layer", "position", "n_pcs"} <= set(dirs.columns):
        pooled = dirs[(dirs["layer"] == -1) & (dirs["position"] == position)]
    out = []
    for h in sorted(values(d, "hook"), key=hook_sort_key):
        m = (d["hook"] == h).to_numpy()
        g, sg = d[m], st[m]
        row = {"hook": h, "n": int(len(g)), "n_stable": int(sg.sum()),
               "n_distinct": int(g.loc[sg, "component"].nunique()), "share": float(sg.mean()) if len(g) else None,
               "n_pcs": None}
        if pooled is not None:
            p = pooled[pooled["hook"] == h]
            if len(p) and not pd.isna(p["n_pcs"].iloc[0]):
                row["n_pcs"] = int(p["n_pcs"].iloc[0])
        out.append(row)
    return out


def nav(run: Run) -> dict:
    """What base.html needs of the run on every page of it."""
    return {"run": run, "summary": run_summary(run.id, run.manifest)}


def run_summary(run_id: str, m: dict) -> dict:
    cfg = m.get("config") or {}
    pcfg = cfg.get("pairs") or {}
    model = m.get("model") or {}
    counts = m.get("counts") or {}
    pairs_desc = str(pcfg.get("source", "?"))
    if pcfg.get("path"):
        pairs_desc += f": {Path(str(pcfg['path'])).name}"
    for k in ("types", "categories", "limit"):
        if pcfg.get(k):
            pairs_desc += f", {k}={pcfg[k]}"
    acc = [r for r in m.get("accuracy", []) if r.get("type") == "grammar" and r.get("accuracy") is not None
           and not (isinstance(r.get("accuracy"), float) and math.isnan(r["accuracy"]))]
    n = sum(int(r.get("n_pairs", 0)) for r in acc)
    overall = sum(float(r["accuracy"]) * int(r.get("n_pairs", 0)) for r in acc) / n if n else None
    hooks = (cfg.get("hooks") or {}).get("points") or sorted({h.get("point") for h in m.get("hooks", [])})
    return {
        "id": run_id, "status": m.get("status", "?"), "created": m.get("created", ""),
        "model": model.get("name") or (cfg.get("model") or {}).get("name", "?"),
        "shape": f"{model.get('n_layers', '?')} layers, d_model {model.get('d_model', '?')}",
        "pairs": pairs_desc, "hooks": ", ".join(map(str, hooks)),
        "kept": counts.get("kept"), "rejected": counts.get("rejected"),
        "unreadable": counts.get("unreadable_lines"), "accuracy": overall, "acc_n": n,
        "by_category": [(r["category"], r["accuracy"], r.get("n_pairs")) for r in acc],
    }



def patching_specs(d) -> list[dict]:
    """The activation patching figures of some ``patching.parquet`` rows, as the templates take them."""
    from .. import figures as F

    return [{"name": name, "spec": fig_spec(fig)} for name, fig in F.patching_panels(d)]
