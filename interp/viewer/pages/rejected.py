"""A run's rejected pairs and unreadable lines, by reason."""

from __future__ import annotations

from flask import Blueprint, render_template

from ..web import PER_PAGE_MAX, arg_choice, arg_int, nav, paginate, store

bp = Blueprint("rejected", __name__)


@bp.route("/run/<path:run>/-/rejected")
def rejected(run: str):
    r = store().get(run)
    rows = r.rejected()
    reasons: dict[str, int] = {}
    for row in rows:
        reasons[str(row.get("reason"))] = reasons.get(str(row.get("reason")), 0) + 1
    reason = arg_choice("reason", [""] + sorted(reasons), "")
    shown = [row for row in rows if not reason or str(row.get("reason")) == reason]
    per = arg_int("per", 100, 1, PER_PAGE_MAX)
    pg = paginate(len(shown), per)
    return render_template("rejected.html", **nav(r), rows=shown[pg["start"]:pg["start"] + per], pg=pg,
                           reasons=sorted(reasons.items()), reason=reason,
                           counts=r.manifest.get("counts", {}))
