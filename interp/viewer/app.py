"""The viewer's app factory: ``create_app(runs_root)`` makes the Flask app (config, security headers,
error pages, template filters) and registers one blueprint per page (``interp.viewer.pages``).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from flask import Flask, Response, render_template, request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import PathConverter

from .pages import BLUEPRINTS
from .store import RunStore, TokenDecoder
from .web import cell, col_doc, fmt, marked, pct, with_args

CSP = ("default-src 'self'; script-src 'self' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; object-src 'none'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'self'")
# Saved figure files of a run (plotly write_html) run inline scripts; still nothing from elsewhere.
CSP_FILES = ("default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval'; "
             "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; connect-src 'self'; "
             "object-src 'none'; base-uri 'none'")
FILE_ENDPOINT = "run.run_file"  # the route serving a run's saved figure files


class AnyPath(PathConverter):
    """Like ``path`` but ``url_for`` quotes every character (a pair id may hold ``/`` or ``..``)."""

    def to_url(self, value: str) -> str:
        return quote(str(value), safe="")


def create_app(runs_root: str | Path, decode_tokens: bool = True) -> Flask:
    """The viewer of every run dir under ``runs_root``. ``decode_tokens=False``: show token ids."""
    app = Flask("interp.viewer", template_folder="templates", static_folder="static")
    app.url_map.converters["anypath"] = AnyPath
    app.config["RUNS_ROOT"] = str(Path(runs_root).resolve())
    app.json.sort_keys = False
    app.extensions["interp_viewer"] = {"store": RunStore(runs_root), "decoder": TokenDecoder(decode_tokens)}

    app.jinja_env.filters["fmt"] = fmt
    app.jinja_env.filters["pct"] = pct
    app.jinja_env.globals.update(with_args=with_args, marked=marked, cell=cell, col_doc=col_doc)

    @app.after_request
    def _headers(resp: Response) -> Response:
        if request.endpoint == FILE_ENDPOINT:
            resp.headers["Content-Security-Policy"] = CSP_FILES
        else:
            resp.headers.setdefault("Content-Security-Policy", CSP)
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Referrer-Policy"] = "no-referrer"
        return resp

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException):
        return render_template("error.html", code=err.code, name=err.name, description=err.description), err.code

    @app.errorhandler(Exception)
    def _error(err: Exception):  # a bug or an unreadable file: a page, not a traceback
        app.logger.exception("error while serving %s", request.path)
        return render_template("error.html", code=500, name="Internal error",
                               description=f"{type(err).__name__} while reading the run"), 500

    for bp in BLUEPRINTS:
        app.register_blueprint(bp)
    return app
