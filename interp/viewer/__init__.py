"""Web viewer of run directories: ``create_app(runs_root)`` returns a Flask app.

The viewer only reads run directories (any folder under ``runs_root`` holding ``manifest.json``);
it selects, sorts and pivots their tables for display and never recomputes an analysis. Every
figure comes from the figure library ``interp.figures``, built on the server and drawn in the page
by plotly.js, served once from the installed ``plotly`` package (``/vendor/plotly.min.js``).
Attention patterns are drawn by the CircuitsVis bundle shipped inside the installed ``circuitsvis``
package (``/vendor/circuitsvis/iife.js``). No page loads anything from another host, and a
Content-Security-Policy header forbids it.

Safety: files (saved figures, static and vendored scripts, the tables a page reads) are read only
when their resolved path stays inside their folder (``store.contained_file``: a symlink out of the
runs folder is a 404); requests whose ``Host`` header is not the viewer's own address get 400
(``create_app(host=, port=, allowed_hosts=)``, DNS rebinding); no response may be framed
(``frame-ancestors 'none'``, ``X-Frame-Options: DENY``).

User data (sentences, categories, run and pair names) is escaped by Jinja autoescape; data for
scripts travels as JSON in ``<script type="application/json">`` blocks written with ``|tojson``.

"Stable" is decided on every page by the run's own rule (``Run.stable``: ``interp.rules.stable_mask``
with the manifest's ``analysis.rule``, ``alpha`` and ``stable_ratio``; runs before ``analysis.rule``:
significance), and the pages name the run's null (control pool, control edits per pair) and rule.
Stability tables written before ``offset_dim`` existed call the offset flag ``massive``; the store
shows it as ``offset_dim``.

Layout: ``app`` (the factory), ``store`` (finding and reading run dirs), ``pages/`` (one blueprint per
page), ``web`` (helpers the pages share), ``columns`` (the value columns offered and shown).
``python -m interp.view`` serves it; ``python -m interp.view export RUN_DIR`` writes the viewer's
figures as PNG (``interp.figures.export_figures``).
"""

from __future__ import annotations

from .app import create_app
from .web import fmt, marked

__all__ = ["create_app", "fmt", "marked"]
