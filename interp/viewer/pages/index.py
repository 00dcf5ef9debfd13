"""The run list: every run dir under the runs folder, newest first (or by name)."""

from __future__ import annotations

from flask import Blueprint, current_app, render_template, request

from ... import rundir as R
from ..store import newer_text
from ..web import run_summary, store

bp = Blueprint("index", __name__)


@bp.route("/")
def index():
    rows = []
    for run_id, path in store().list():
        try:
            rows.append(run_summary(run_id, store().manifest(path)))
        except (OSError, ValueError) as err:
            status = newer_text(err) if isinstance(err, R.SchemaVersionError) else "unreadable manifest"
            rows.append({"id": run_id, "status": status, "created": "", "by_category": [],
                         "model": "?", "shape": "", "pairs": "", "hooks": "", "kept": None, "rejected": None,
                         "unreadable": None, "accuracy": None, "acc_n": 0})
    order = request.args.get("sort", "created")
    if order == "id":
        rows.sort(key=lambda r: r["id"])
    else:
        rows.sort(key=lambda r: str(r.get("created", "")), reverse=True)
    return render_template("index.html", runs=rows, root=current_app.config["RUNS_ROOT"], sort=order)
