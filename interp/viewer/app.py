"""The viewer's app factory: ``create_app(runs_root)`` makes the Flask app (config, security headers,
the Host check, error pages, template filters) and registers one blueprint per page
(``interp.viewer.pages``).

Safety: every response forbids framing (``Content-Security-Policy: frame-ancestors 'none'``, merged
into the page's policy, and ``X-Frame-Options: DENY``); requests whose ``Host`` header is not the
viewer's own address get 400 (``allowed_host``: no DNS rebinding of a server on 127.0.0.1); static
files, like run files (``store.contained_file``), are served only when their resolved path stays in
their folder.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Callable, Iterable
from urllib.parse import quote

from flask import Flask, Response, abort, render_template, request, send_file
from werkzeug.exceptions import HTTPException
from werkzeug.routing import PathConverter

from .pages import BLUEPRINTS
from .store import RunStore, TokenDecoder, contained_file
from .web import cell, col_doc, fmt, marked, pct, with_args

CSP = ("default-src 'self'; script-src 'self' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; object-src 'none'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
# Saved figure files of a run (plotly write_html) run inline scripts; still nothing from elsewhere.
CSP_FILES = ("default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval'; "
             "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; connect-src 'self'; "
             "object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
FILE_ENDPOINT = "run.run_file"  # the route serving a run's saved figure files
FRAME_ANCESTORS = "frame-ancestors 'none'"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")  # a loopback-bound viewer answers to each of these
DEFAULT_HOST = "127.0.0.1"


def no_framing(csp: str | None) -> str:
    """``csp`` with its ``frame-ancestors`` directive (if any) replaced by ``frame-ancestors 'none'``."""
    kept = [d.strip() for d in (csp or "").split(";")
            if d.strip() and d.strip().split()[0].lower() != "frame-ancestors"]
    return "; ".join(kept + [FRAME_ANCESTORS])


def _host_port(value: str) -> tuple[str, int | None]:
    """A Host header value (or a ``--allow-host`` entry) split into (lowercased name, port or None);
    an IPv6 address comes back bracketed (``[::1]``). A malformed port: (value, -1)."""
    value = value.strip().lower()
    if value.startswith("["):
        name, _, rest = value.partition("]")
        name += "]"
        if not rest:
            return name, None
        port = rest[1:] if rest.startswith(":") else "x"
    elif value.count(":") > 1:  # a bare IPv6 address
        return f"[{value}]", None
    else:
        name, sep, port = value.partition(":")
        if not sep:
            return name, None
    return (name, int(port)) if port.isdigit() else (value, -1)


def _is_loopback(name: str) -> bool:
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False


def _is_wildcard(name: str) -> bool:
    return name in ("", "0.0.0.0", "[::]")


def allowed_host(host: str | None = None, port: int | None = None,
                 allowed_hosts: Iterable[str] = ()) -> Callable[[str], bool]:
    """Whether a request's ``Host`` header names this viewer: ``host`` (the address it listens on,
    default 127.0.0.1) with its ``port``, plus ``localhost``, ``127.0.0.1`` and ``[::1]`` with that
    port when ``host`` is a loopback or wildcard address (0.0.0.0, ::). ``port=None`` (not known,
    e.g. port 0): any port, or none. Each of ``allowed_hosts`` is a name (any port, or none: a
    reverse proxy's name) or ``name:port`` (that port only)."""
    name, _ = _host_port(host or DEFAULT_HOST)
    names = set()
    if not _is_wildcard(name):
        names.add(name)
    if _is_loopback(name) or _is_wildcard(name):
        names.update(LOOPBACK_NAMES)
    exact: set[tuple[str, int | None]] = set()
    any_port: set[str] = set()
    if port is None:
        any_port |= names
    else:
        exact |= {(n, int(port)) for n in names}
        if int(port) == 80:
            exact |= {(n, None) for n in names}
    for entry in allowed_hosts or ():
        n, p = _host_port(str(entry))
        if p is None:
            any_port.add(n)
        elif p >= 0:
            exact.add((n, p))

    def check(value: str) -> bool:
        n, p = _host_port(value or "")
        if p == -1 or not n:
            return False
        return n in any_port or (n, p) in exact

    return check


class ViewerFlask(Flask):
    """Flask whose static route serves a file only when its resolved path stays in the static folder."""

    def send_static_file(self, filename: str) -> Response:
        if not self.has_static_folder:
            abort(404)
        path = contained_file(Path(self.static_folder).resolve(), filename)
        if path is None:
            abort(404)
        return send_file(path, max_age=self.get_send_file_max_age(filename))


class AnyPath(PathConverter):
    """Like ``path`` but ``url_for`` quotes every character (a pair id may hold ``/`` or ``..``), and
    a value may start with ``/`` (``path``'s pattern cannot: an id ``/lead`` fell to another route)."""

    regex = ".+?"

    def to_url(self, value: str) -> str:
        return quote(str(value), safe="")


def create_app(runs_root: str | Path, decode_tokens: bool = True, host: str | None = None, port: int | None = None,
               allowed_hosts: Iterable[str] = ()) -> Flask:
    """The viewer of every run dir under ``runs_root``. ``decode_tokens=False``: show token ids.

    ``host``/``port``: the address the server listens on (default 127.0.0.1, any port); requests
    whose ``Host`` header names anything else get 400 (``allowed_host``), except the extra names of
    ``allowed_hosts`` (``NAME`` with any port, or ``NAME:PORT``) of a deliberate remote setup."""
    app = ViewerFlask("interp.viewer", template_folder="templates", static_folder="static")
    app.url_map.converters["anypath"] = AnyPath
    app.url_map.merge_slashes = False  # a quoted "/" that starts a value is part of it, not a doubled slash
    app.config["RUNS_ROOT"] = str(Path(runs_root).resolve())
    app.json.sort_keys = False
    app.config["VIEWER_ADDRESS"] = (host or DEFAULT_HOST, port)
    app.config["ALLOWED_HOSTS"] = [str(h) for h in allowed_hosts or ()]
    host_ok = allowed_host(host, port, app.config["ALLOWED_HOSTS"])
    app.extensions["interp_viewer"] = {"store": RunStore(runs_root), "decoder": TokenDecoder(decode_tokens)}

    app.jinja_env.filters["fmt"] = fmt
    app.jinja_env.filters["pct"] = pct
    app.jinja_env.globals.update(with_args=with_args, marked=marked, cell=cell, col_doc=col_doc)

    @app.before_request
    def _host_check():  # DNS rebinding: a page of another site reaching 127.0.0.1 names its own host
        if not host_ok(request.host):
            abort(400, description="this viewer answers only requests for its own address (Host header); "
                                   "add others with --allow-host")

    @app.after_request
    def _headers(resp: Response) -> Response:
        if request.endpoint == FILE_ENDPOINT and resp.status_code < 400:
            resp.headers["Content-Security-Policy"] = CSP_FILES
        else:
            resp.headers.setdefault("Content-Security-Policy", CSP)
        resp.headers["Content-Security-Policy"] = no_framing(resp.headers["Content-Security-Policy"])
        resp.headers["X-Frame-Options"] = "DENY"
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
