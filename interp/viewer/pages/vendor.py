"""Scripts vendored from installed packages (plotly.js, the CircuitsVis bundle), served once and
cached by the browser: no page loads anything from another host."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, abort, send_file

from ..store import contained_file

bp = Blueprint("vendor", __name__)
_cache: dict[str, bytes] = {}


def _circuitsvis_bundle() -> Path:
    """The package's own browser bundle (found without importing circuitsvis, which imports torch)."""
    import importlib.util

    spec = importlib.util.find_spec("circuitsvis")
    if spec is None or not spec.submodule_search_locations:
        return Path("/nonexistent/circuitsvis/iife.js")
    return Path(list(spec.submodule_search_locations)[0]) / "dist" / "cdn" / "iife.js"


@bp.route("/vendor/plotly.min.js")
def plotly_js():
    if "plotly" not in _cache:
        from plotly.offline import get_plotlyjs

        _cache["plotly"] = get_plotlyjs().encode()
    resp = Response(_cache["plotly"], mimetype="application/javascript")
    resp.cache_control.public, resp.cache_control.max_age = True, 86400
    return resp


@bp.route("/vendor/circuitsvis/<name>")
def circuitsvis_js(name: str):
    if name not in ("iife.js", "iife.js.map"):
        abort(404)
    bundle = _circuitsvis_bundle()
    try:
        folder = bundle.parent.resolve(strict=True)
    except OSError:
        abort(404, description="circuitsvis is not installed")
    path = contained_file(folder, name)  # resolved; refused when it leads out of the package's folder
    if path is None:
        abort(404, description="circuitsvis is not installed")
    return send_file(path, mimetype="application/json" if name.endswith(".map") else "application/javascript",
                     max_age=86400)

# ---- run list and comparison ----------------------------------------------------------------
