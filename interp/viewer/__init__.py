"""Web viewer of run directories: ``create_app(runs_root)`` returns a Flask app.

The viewer only reads run directories (any folder under ``runs_root`` holding ``manifest.json``);
it selects, sorts and pivots their tables for display and never recomputes an analysis. Every
figure is an interactive plotly figure built from the tables on the server and drawn in the page by
plotly.js, served once from the installed ``plotly`` package (``/vendor/plotly.min.js``). Attention
patterns are drawn by the CircuitsVis bundle shipped inside the installed ``circuitsvis`` package
(``/vendor/circuitsvis/iife.js``). No page loads anything from another host, and a
Content-Security-Policy header forbids it.

User data (sentences, categories, run and pair names) is escaped by Jinja autoescape; data for
scripts travels as JSON in ``<script type="application/json">`` blocks written with ``|tojson``.

``python -m interp.view`` serves it; ``python -m interp.view export RUN_DIR`` writes the viewer's
figures as PNG (see ``interp/view.py``).
"""

from __future__ import annotations

import html
import importlib.metadata
import json
import math
import os
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import quote

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from flask import Flask, Response, abort, render_template, request, send_file, send_from_directory, url_for
from werkzeug.exceptions import HTTPException
from werkzeug.routing import PathConverter

from .. import results as R
from ..figures import write_pngs

# Optional tables: shown when a run has them.
DIVERGENCE = getattr(R, "DIVERGENCE", "divergence.parquet")
CONTRAST = getattr(R, "CONTRAST", "contrast.parquet")
PAIR_PROFILE = getattr(R, "PAIR_PROFILE", "pair_profile.parquet")
PAIR_COMPONENTS = getattr(R, "PAIR_COMPONENTS", "pair_components.parquet")
# ``python -m interp.patch`` writes RUN/causal/ (with its own manifest.json: not a run dir)
CAUSAL = "causal"
ABLATION = "causal/ablation.parquet"
ABLATION_SUMMARY = "causal/ablation_summary.parquet"
ABLATION_PAIRS = "causal/ablation_pairs.parquet"
SELECTIONS = "causal/selections.parquet"
PATCHING = "causal/patching.parquet"
RUN_SUBDIRS = {"causal", "figures", "checkpoint"}  # folders of a run dir that are never run dirs
FILE_DIRS = ("figures", "causal/figures")  # folders of a run dir whose files are served as they are

HOOK_ORDER = ["resid_pre", "attn_out", "z", "resid_mid", "mlp_post", "mlp_out", "resid_post"]
HOOK_TEMPLATES = {
    "resid_pre": "blocks.{layer}.hook_resid_pre", "resid_mid": "blocks.{layer}.hook_resid_mid",
    "resid_post": "blocks.{layer}.hook_resid_post", "attn_out": "blocks.{layer}.hook_attn_out",
    "mlp_out": "blocks.{layer}.hook_mlp_out", "z": "blocks.{layer}.attn.hook_z",
    "mlp_post": "blocks.{layer}.mlp.hook_post",
}
PATTERN_TEMPLATE = "blocks.{layer}.attn.hook_pattern"
# Columns of stability.parquet that are numbers one may plot or sort by (present ones are offered).
VALUE_COLUMNS = ["normalized", "mean_abs_diff", "std_abs_diff", "mean_diff", "std_diff", "spread", "act_mean",
                 "normalized_std", "rank", "control_normalized", "ratio", "p_value", "q_value",
                 "rank_calibrated", "n_pairs"]
OPTIONAL_STAB_COLUMNS = ["control_normalized", "ratio", "p_value", "q_value", "massive", "rank_calibrated"]
HEATMAP_MAX_COLUMNS = 2048   # wider hooks are shown a window at a time (cstart)
SCATTER_MAX_POINTS = 5000    # a seeded random subset beyond this
PER_PAGE_MAX = 500

CSP = ("default-src 'self'; script-src 'self' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; object-src 'none'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'self'")
# Saved figure files of a run (plotly write_html) run inline scripts; still nothing from elsewhere.
CSP_FILES = ("default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval'; "
             "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; connect-src 'self'; "
             "object-src 'none'; base-uri 'none'")


# --------------------------------------------------------------------------------------------------
# Reading run directories
# --------------------------------------------------------------------------------------------------

class _LRU:
    """A small thread-safe LRU cache keyed by (path, mtime, size) so edits of a file are seen."""

    def __init__(self, size: int):
        self.size, self.data, self.lock = size, OrderedDict(), threading.Lock()

    def get(self, path: Path, load: Callable[[Path], Any]) -> Any:
        st = path.stat()
        key = (str(path), st.st_mtime_ns, st.st_size)
        with self.lock:
            if key in self.data:
                self.data.move_to_end(key)
                return self.data[key]
        value = load(path)
        with self.lock:
            self.data[key] = value
            while len(self.data) > self.size:
                self.data.popitem(last=False)
        return value


class SavedTensors:
    """``activations.safetensors`` / ``patterns.safetensors``: tensors ``[pair, 2, ...]`` of saved pairs."""

    def __init__(self, path: Path):
        from safetensors import safe_open

        self.path = path
        with safe_open(str(path), framework="numpy") as f:
            self.keys = list(f.keys())
            self.shapes = {k: list(f.get_slice(k).get_shape()) for k in self.keys}
            meta = f.metadata() or {}
        try:
            self.pair_ids = [str(p) for p in json.loads(meta.get("pair_ids", "[]"))]
        except ValueError:
            self.pair_ids = []
        self.index = {p: i for i, p in enumerate(self.pair_ids)}

    def get(self, key: str, i: int) -> np.ndarray:
        """Slice ``[i]`` of one tensor (only that slice is read)."""
        from safetensors import safe_open

        with safe_open(str(self.path), framework="numpy") as f:
            return f.get_slice(key)[i:i + 1][0]


class TokenDecoder:
    """Token strings for saved token ids, from the run's tokenizer when it is on this machine.

    Only local files are read: the converted-model cache of ``interp.model`` for GGUF models, a
    local ``model.path``, or the Hugging Face cache (``try_to_load_from_cache`` never downloads).
    Without one, tokens are shown as ``#id`` (BOS and the edited token by their known strings).
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.cache: dict[str, Any] = {}
        self.lock = threading.Lock()

    @staticmethod
    def _tokenizer_file(mcfg: dict) -> Path | None:
        src = mcfg.get("source")
        if src == "random" and isinstance(mcfg.get("tokenizer"), dict):
            return TokenDecoder._tokenizer_file(mcfg["tokenizer"])
        if src == "gguf":
            cache = Path(os.environ.get("INTERP_CACHE_DIR", Path.home() / ".cache" / "interp"))
            version = importlib.metadata.version(str(mcfg["package"]))
            p = cache / f"{mcfg['name']}-{version}" / "tokenizer.json"
            return p if p.is_file() else None
        if mcfg.get("path"):
            p = Path(str(mcfg["path"])) / "tokenizer.json"
            return p if p.is_file() else None
        if mcfg.get("name"):
            from huggingface_hub import try_to_load_from_cache

            p = try_to_load_from_cache(str(mcfg["name"]), "tokenizer.json")
            return Path(p) if isinstance(p, str) and Path(p).is_file() else None
        return None

    def tokenizer(self, manifest: dict):
        if not self.enabled:
            return None
        mcfg = (manifest.get("config") or {}).get("model") or {}
        key = json.dumps(mcfg, sort_keys=True, default=str)
        with self.lock:
            if key in self.cache:
                return self.cache[key]
        tok = None
        try:
            path = self._tokenizer_file(mcfg)
            if path is not None:
                from tokenizers import Tokenizer

                tok = Tokenizer.from_file(str(path))
        except Exception:  # no tokenizer: ids are shown instead
            tok = None
        with self.lock:
            self.cache[key] = tok
        return tok

    def labels(self, manifest: dict, ids: list[int], known: dict[int, str]) -> list[str]:
        tok = self.tokenizer(manifest)
        out = []
        for pos, i in enumerate(ids):
            if tok is not None:
                try:
                    out.append(tok.decode([int(i)], skip_special_tokens=False))
                    continue
                except Exception:
                    pass
            out.append(known.get(pos, f"#{int(i)}"))
        return out


def _hook_sort_key(h: str) -> tuple[int, str]:
    return (HOOK_ORDER.index(h) if h in HOOK_ORDER else len(HOOK_ORDER), h)


class Run:
    """One run directory: its manifest and (cached) tables."""

    def __init__(self, store: "RunStore", run_id: str, path: Path):
        self.store, self.id, self.path = store, run_id, path
        self.manifest = store.manifest(path)

    def has(self, name: str) -> bool:
        return (self.path / name).is_file()

    def table(self, name: str) -> pd.DataFrame | None:
        p = self.path / name
        if not p.is_file():
            return None
        return self.store.tables.get(p, read_parquet)

    @property
    def stab(self) -> pd.DataFrame:
        t = self.table(R.STABILITY)
        return t if t is not None else pd.DataFrame(columns=["hook", "layer", "component", "position", "normalized"])

    @property
    def pairs(self) -> pd.DataFrame:
        t = self.table(R.PAIRS)
        return t if t is not None else pd.DataFrame(columns=["pair_id", "category", "type", "a", "b", "margin"])

    @property
    def by_category(self) -> pd.DataFrame | None:
        return self.table(R.STABILITY_BY_CATEGORY)

    def rejected(self) -> list[dict]:
        p = self.path / R.REJECTED
        if not p.is_file():
            return []
        return self.store.tables.get(p, _read_jsonl_lenient)

    def saved(self, name: str) -> SavedTensors | None:
        p = self.path / name
        if not p.is_file():
            return None
        try:
            return self.store.tables.get(p, SavedTensors)
        except Exception:
            return None

    @property
    def hooks(self) -> list[str]:
        s = self.stab
        return sorted(values(s, "hook"), key=_hook_sort_key)

    @property
    def positions(self) -> list[str]:
        present = set(values(self.stab, "position"))
        order = [p for p in self.manifest.get("positions", []) if p in present]
        return order + sorted(present - set(order))

    @property
    def layers(self) -> list[int]:
        return sorted(int(x) for x in values(self.stab, "layer"))

    def hook_name(self, point: str, layer: int) -> str:
        for h in self.manifest.get("hooks", []):
            if h.get("point") == point and int(h.get("layer", -1)) == layer:
                return h["name"]
        return HOOK_TEMPLATES.get(point, point + ".{layer}").format(layer=layer)

    @property
    def causal(self) -> bool:
        return self.has(ABLATION) or self.has(PATCHING)

    @property
    def divergence(self) -> bool:
        return self.has(DIVERGENCE) or self.has(CONTRAST)


KEY_COLUMNS = ("hook", "hook_name", "position", "category", "kind", "direction", "metric", "level", "selection",
               "mode", "where", "quantity", "group_a", "group_b")


def read_parquet(path: Path) -> pd.DataFrame:
    """A table with its repeated text columns as categoricals: filtering 10^6 rows stays fast."""
    df = pd.read_parquet(path)
    for col in KEY_COLUMNS:
        if col in df.columns and not isinstance(df[col].dtype, pd.CategoricalDtype) \
                and (pd.api.types.is_string_dtype(df[col]) or df[col].dtype == object):
            df[col] = df[col].astype("category")
    return df


def values(df: pd.DataFrame, col: str) -> list:
    """The distinct values of a column (fast for categoricals), missing values left out."""
    if col not in df.columns or df.empty:
        return []
    c = df[col]
    if isinstance(c.dtype, pd.CategoricalDtype):
        return [v for v in c.cat.categories[np.unique(c.cat.codes[c.cat.codes >= 0])].tolist()]
    return [v for v in pd.unique(c.dropna()).tolist()]


def page_rows(d: pd.DataFrame, sort: str | None, desc: bool, start: int, per: int,
              ties: tuple[str, ...] = ("hook", "layer", "component")) -> pd.DataFrame:
    """Rows ``start .. start+per`` of ``d`` sorted by ``sort`` (missing values last) without sorting
    every row when only the first pages are asked for (``nsmallest`` / ``nlargest``)."""
    if not sort or sort not in d.columns:
        return d.iloc[start:start + per]
    col = d[sort]
    numeric = pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)
    valid = d[col.notna()] if numeric else d
    n_first = start + per
    if numeric and n_first < len(valid) // 4:
        top = valid.nlargest(n_first, sort, keep="first") if desc else valid.nsmallest(n_first, sort, keep="first")
        return top.iloc[start:start + per]
    by = [sort] + [c for c in ties if c in d.columns and c != sort]
    if isinstance(col.dtype, pd.CategoricalDtype):
        d = d.assign(**{sort: col.astype(str)})
    out = d.sort_values(by, ascending=[not desc] + [True] * (len(by) - 1), na_position="last", kind="stable")
    return out.iloc[start:start + per]


def _read_jsonl_lenient(path: Path) -> list[dict]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.strip():
            try:
                row = json.loads(line)
            except ValueError:
                row = {"reason": "unreadable line in rejected.jsonl", "detail": line[:200]}
            out.append(row if isinstance(row, dict) else {"detail": str(row)})
    return out


class RunStore:
    """Every run dir under ``root`` (recursively); path checks keep every lookup inside it."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.tables = _LRU(16)
        self.manifests = _LRU(256)

    def manifest(self, path: Path) -> dict:
        return self.manifests.get(path / R.MANIFEST, lambda p: json.loads(p.read_text()))

    def list(self) -> list[tuple[str, Path]]:
        out = []
        if not self.root.is_dir():
            return out
        for dirpath, dirnames, filenames in os.walk(self.root):
            is_run = R.MANIFEST in filenames
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not (is_run and d in RUN_SUBDIRS))
            if is_run and Path(dirpath) != self.root:
                out.append((Path(dirpath).relative_to(self.root).as_posix(), Path(dirpath)))
        return out

    def resolve(self, run_id: str) -> Path | None:
        if not run_id or "\\" in run_id or "\x00" in run_id:
            return None
        parts = run_id.split("/")
        if any(p in ("", ".", "..") or p.startswith(".") for p in parts):
            return None
        path = (self.root / run_id).resolve()
        if not path.is_relative_to(self.root) or path == self.root or not (path / R.MANIFEST).is_file():
            return None
        if path.name in RUN_SUBDIRS and (path.parent / R.MANIFEST).is_file():
            return None  # e.g. RUN/causal holds the manifest of the causal tests, not of a run
        return path

    def get(self, run_id: str) -> Run:
        path = self.resolve(run_id)
        if path is None:
            abort(404, description=f"no run {run_id!r} under the runs folder")
        try:
            return Run(self, run_id, path)
        except (OSError, ValueError):
            abort(404, description=f"run {run_id!r} has an unreadable manifest.json")


# --------------------------------------------------------------------------------------------------
# Small helpers for pages
# --------------------------------------------------------------------------------------------------

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


def esc(s: Any) -> str:
    """Text for plotly labels: plotly turns a few HTML tags in labels into markup, so escape them."""
    return html.escape(str(s), quote=False)


def fig_spec(fig: go.Figure, click: str | None = None) -> dict:
    """A figure as plain JSON (written into the page with ``|tojson``) plus an optional click link.

    ``click`` is a URL template with ``{x}`` / ``{y}`` (heatmaps); points whose ``customdata`` is a
    path starting with ``/`` link there.
    """
    import plotly.io as pio

    return {"fig": json.loads(pio.to_json(fig, validate=False, engine="json")), "click": click}


def _layout(fig: go.Figure, title: str, height: int | None = None, **kw) -> go.Figure:
    fig.update_layout(title={"text": esc(title), "x": 0.01, "font": {"size": 15}}, template="plotly_white",
                      margin={"l": 60, "r": 20, "t": 50, "b": 50}, **({"height": height} if height else {}), **kw)
    return fig


def _empty(title: str, message: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=esc(message), showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _layout(fig, title, 260)


def records(df: pd.DataFrame, columns: list[str] | None = None) -> list[dict]:
    cols = [c for c in (columns or list(df.columns)) if c in df.columns]
    return [dict(zip(cols, row)) for row in df[cols].itertuples(index=False, name=None)]


# --------------------------------------------------------------------------------------------------
# Figures (built from tables: selecting, sorting, pivoting; nothing is recomputed)
# --------------------------------------------------------------------------------------------------

def fig_heatmap(run: Run, hook: str, position: str, value: str = "normalized", cstart: int = 0,
                cwidth: int = HEATMAP_MAX_COLUMNS, by_head: bool = False) -> tuple[go.Figure, dict]:
    """Layer x component heatmap of one hook and position (``by_head``: z only, mean over each head's dims)."""
    s = run.stab
    d = s[(s["hook"] == hook) & (s["position"] == position)]
    info = {"n_components": 0, "cstart": 0, "cend": 0}
    if d.empty or value not in d.columns:
        return _empty(f"{hook} at '{position}'", "no rows for this hook and position"), info
    if by_head and "head" in d.columns and d["head"].notna().any():
        grid = d.pivot_table(observed=True, index="layer", columns="head", values=value, aggfunc="mean").sort_index()
        fig = go.Figure(go.Heatmap(z=grid.to_numpy(dtype=float), x=[int(c) for c in grid.columns],
                                   y=[int(i) for i in grid.index], colorscale="Viridis",
                                   colorbar={"title": {"text": value}},
                                   hovertemplate="layer %{y}<br>head %{x}<br>mean " + value
                                   + " %{z:.4g}<extra></extra>"))
        _layout(fig, f"{value} at '{position}', z: layer × head (mean over each head's dimensions)",
                220 + 26 * len(grid), xaxis={"title": {"text": "head"}, "dtick": 1},
                yaxis={"title": {"text": "layer"}, "dtick": 1 if len(grid) <= 40 else None})
        return fig, {"n_components": int(d["component"].max()) + 1, "cstart": 0, "cend": int(d["component"].max()) + 1}
    n_comp = int(d["component"].max()) + 1
    cstart = max(0, min(cstart, max(0, n_comp - 1)))
    cend = min(n_comp, cstart + cwidth)
    d = d[(d["component"] >= cstart) & (d["component"] < cend)]
    grid = d.pivot_table(observed=True, index="layer", columns="component", values=value, aggfunc="first",
                         dropna=False).sort_index()
    z = grid.to_numpy(dtype=float)
    heat = go.Heatmap(z=np.where(np.isfinite(z), z, None), x=[int(c) for c in grid.columns],
                      y=[int(i) for i in grid.index], colorscale="Viridis", colorbar={"title": {"text": value}},
                      hovertemplate="layer %{y}<br>component %{x}<br>" + value + " %{z:.4g}<extra></extra>")
    fig = go.Figure(heat)
    label = "component" + (" (head × d_head + dim)" if hook == "z" else " (neuron)" if hook == "mlp_post" else "")
    window = f", components {cstart}–{cend - 1} of {n_comp}" if cend - cstart < n_comp else ""
    _layout(fig, f"{value} at '{position}', {hook}: layer × component{window}", 220 + 26 * len(grid),
            xaxis_title=label, yaxis_title="layer", yaxis={"dtick": 1 if len(grid) <= 40 else None})
    info = {"n_components": n_comp, "cstart": cstart, "cend": cend}
    return fig, info


def _component_url(run: Run, hook: str, layer: int, component: int) -> str:
    if hook == "mlp_post":
        return url_for("neuron", run=run.id, layer=int(layer), neuron=int(component))
    return url_for("component", run=run.id, hook=hook, layer=int(layer), component=int(component))


def _label(hook: str, layer: int, comp: int, head: Any = None) -> str:
    if hook == "z" and head is not None and not pd.isna(head):
        return f"z[{layer}].h{int(head)}.{comp}"
    return f"{hook}[{layer}].{comp}"


def _saved_pairs(pairs: pd.DataFrame, acts) -> Iterable[tuple[str, dict, int]]:
    """(pair id, its pairs.parquet row, its index in the saved tensors) for every saved pair."""
    for pid in acts.pair_ids:
        prow = pairs[pairs["pair_id"].astype(str) == pid]
        if not prow.empty:
            yield pid, records(prow)[0], acts.index[pid]


def _select(run: Run, position: str, hook: str | None = None, layer: int | None = None) -> pd.DataFrame:
    """Stability rows of one position, optionally one hook point and one layer."""
    s = run.stab
    d = s[s["position"] == position]
    if hook:
        d = d[d["hook"] == hook]
    if layer is not None:
        d = d[d["layer"] == layer]
    return d


def top_rows(run: Run, position: str, k: int, hook: str | None = None, key: str = "normalized",
             layer: int | None = None) -> pd.DataFrame:
    d = _select(run, position, hook, layer)
    key = key if key in d.columns else "normalized"
    return page_rows(d.dropna(subset=[key]), key, False, 0, k)


def fig_ranking(run: Run, position: str, k: int = 20, hook: str | None = None, key: str = "normalized",
                layer: int | None = None) -> go.Figure:
    d = top_rows(run, position, k, hook, key, layer)
    if d.empty:
        return _empty("ranking", "no ranked components")
    labels = [_label(h, l, c, hd) for h, l, c, hd in zip(d["hook"], d["layer"], d["component"],
                                                          d["head"] if "head" in d else [None] * len(d))]
    err = None
    if "normalized_std" in d and "n_pairs" in d:
        err = {"array": (d["normalized_std"] / np.sqrt(d["n_pairs"].clip(lower=1))).tolist(), "thickness": 1}
    bar = go.Bar(x=d["normalized"], y=labels, orientation="h", error_x=err,
                 customdata=[_component_url(run, h, l, c) for h, l, c in zip(d["hook"], d["layer"], d["component"])],
                 hovertemplate="%{y}<br>normalized %{x:.4g}<extra>click: details</extra>", marker_color="#4c78a8")
    fig = go.Figure(bar)
    by = "" if key in ("normalized", "rank") else f" (sorted by {key})"
    where = (f", {hook}" if hook else "") + (f", layer {layer}" if layer is not None else "")
    return _layout(fig, f"{len(d)} most stable components at '{position}'{by}{where}",
                   160 + 22 * len(d), xaxis_title="mean |a−b| / component spread (s.e. over pairs)",
                   yaxis={"autorange": "reversed"})


def fig_scatter(run: Run, position: str, x: str = "spread", y: str = "mean_abs_diff", hook: str | None = None,
                log: bool = True, layer: int | None = None) -> tuple[go.Figure, dict]:
    d = _select(run, position, hook, layer)
    d = d.dropna(subset=[c for c in (x, y) if c in d.columns])
    n = len(d)
    if x not in d.columns or y not in d.columns or d.empty:
        return _empty("scatter", "nothing to plot"), {"n": n, "shown": 0}
    if log:
        d = d[(d[x] > 0) & (d[y] > 0)]
    if len(d) > SCATTER_MAX_POINTS:
        d = d.sample(SCATTER_MAX_POINTS, random_state=0)
    fig = go.Figure()
    symbols = ["circle", "square", "diamond", "cross", "x", "triangle-up", "star"]
    layers = run.layers
    cmax = max(layers) if layers else 1
    for i, (h, g) in enumerate(sorted(d.groupby("hook", observed=True), key=lambda t: _hook_sort_key(t[0]))):
        fig.add_trace(go.Scatter(
            x=g[x], y=g[y], mode="markers", name=h,
            marker={"symbol": symbols[i % len(symbols)], "color": g["layer"], "colorscale": "Viridis",
                    "cmin": 0, "cmax": cmax, "opacity": 0.65, "size": 6,
                    "colorbar": {"title": {"text": "layer"}} if i == 0 else None, "showscale": i == 0},
            text=[_label(h, l, c) for l, c in zip(g["layer"], g["component"])],
            customdata=[_component_url(run, h, l, c) for l, c in zip(g["layer"], g["component"])],
            hovertemplate="%{text}<br>" + x + " %{x:.4g}<br>" + y + " %{y:.4g}<extra></extra>"))
    kind = "log" if log else "linear"
    subset = f" ({len(d)} of {n} components, random subset)" if len(d) < n else ""
    _layout(fig, f"{y} vs {x} at '{position}'{subset}",
            480, xaxis={"type": kind, "title": {"text": x}}, yaxis={"type": kind, "title": {"text": y}},
            legend={"orientation": "h", "y": -0.18})
    return fig, {"n": n, "shown": len(d)}


def fig_margins(run: Run) -> go.Figure:
    p = run.pairs
    if p.empty or "margin" not in p:
        return _empty("margins", "no pairs")
    fig = go.Figure()
    for t, g in p.groupby("type", observed=True, sort=True):
        fig.add_trace(go.Box(
            x=[esc(c) for c in g["category"]], y=g["margin"], name=esc(t), boxpoints="all", jitter=0.4,
            pointpos=0, fillcolor="rgba(0,0,0,0)", line={"width": 1},
            text=[f"{esc(a)}<br>{esc(b)}" for a, b in zip(g["a"], g["b"])],
            customdata=[url_for("pair", run=run.id, pair_id=str(pid)) for pid in g["pair_id"]],
            hovertemplate="%{text}<br>margin %{y:.3f}<extra></extra>"))
    fig.add_hline(y=0, line_dash="dot")
    return _layout(fig, "log P(a) − log P(b) per pair (grammar: a is the correct sentence)", 420,
                   boxmode="group", yaxis_title="margin", xaxis_title="category")


def fig_accuracy(runs: list[Run]) -> go.Figure:
    fig = go.Figure()
    for run in runs:
        acc = [r for r in run.manifest.get("accuracy", []) if r.get("type") == "grammar"]
        if not acc:
            continue
        fig.add_trace(go.Bar(x=[esc(r["category"]) for r in acc], y=[r.get("accuracy") for r in acc],
                             name=esc(run.id), text=[f"n={r.get('n_pairs')}" for r in acc],
                             hovertemplate="%{x}<br>accuracy %{y:.1%}<br>%{text}<extra>" + esc(run.id) + "</extra>"))
    if not fig.data:
        return _empty("error-detection accuracy", "no grammar pairs")
    fig.add_hline(y=0.5, line_dash="dot")
    return _layout(fig, "error-detection accuracy by category (share of pairs with log P(a) > log P(b))", 360,
                   yaxis={"range": [0, 1], "tickformat": ".0%"}, barmode="group", showlegend=len(runs) > 1)


def fig_layer_profile(run: Run, layer: int, position: str, value: str = "normalized") -> go.Figure:
    s = run.stab
    d = s[(s["layer"] == layer) & (s["position"] == position)]
    fig = go.Figure()
    for h in sorted(set(d["hook"]), key=_hook_sort_key):
        g = d[d["hook"] == h].sort_values("component")
        fig.add_trace(go.Scatter(x=g["component"], y=g[value], mode="lines+markers" if len(g) <= 256 else "lines",
                                 name=h, marker={"size": 4},
                                 customdata=[_component_url(run, h, layer, c) for c in g["component"]],
                                 hovertemplate=h + ".%{x}<br>" + value + " %{y:.4g}<extra></extra>"))
    return _layout(fig, f"{value} of every component of layer {layer} at '{position}'", 380,
                   xaxis_title="component", yaxis_title=value, legend={"orientation": "h", "y": -0.2})


def fig_category_boxes(run: Run, layer: int, hook: str, position: str) -> go.Figure | None:
    bc = run.by_category
    if bc is None:
        return None
    d = bc[(bc["layer"] == layer) & (bc["hook"] == hook) & (bc["position"] == position)]
    if d.empty:
        return None
    fig = go.Figure()
    for cat, g in d.groupby("category", observed=True, sort=True):
        fig.add_trace(go.Box(y=g["normalized"], name=esc(cat), boxpoints="outliers",
                             hovertemplate=esc(cat) + "<br>%{y:.4g}<extra></extra>"))
    return _layout(fig, f"normalized change of {hook} components at layer {layer}, '{position}', per category",
                   360, yaxis_title="normalized", showlegend=False)


def fig_category_bars(d: pd.DataFrame, title: str) -> go.Figure:
    """``d``: rows of stability_by_category for one component (or several, e.g. a head's dims)."""
    fig = go.Figure()
    for pos, g in d.groupby("position", observed=True, sort=False):
        err = None
        if "normalized_std" in g and "n_pairs" in g:
            err = {"array": (g["normalized_std"] / np.sqrt(g["n_pairs"].clip(lower=1))).tolist(), "thickness": 1}
        fig.add_trace(go.Bar(x=[esc(c) for c in g["category"]], y=g["normalized"], name=esc(pos), error_y=err,
                             hovertemplate="%{x}<br>normalized %{y:.4g}<extra>" + esc(pos) + "</extra>"))
    return _layout(fig, title, 360, barmode="group", yaxis_title="normalized |a−b|", xaxis_title="category")


# --------------------------------------------------------------------------------------------------
# Saved pairs: token labels, per-layer change, attention patterns
# --------------------------------------------------------------------------------------------------

def saved_tokens(app_decoder: TokenDecoder, run: Run, acts: SavedTensors, i: int, row: dict) -> list[list[str]]:
    """Token strings of both sentences of saved pair ``i`` (valid positions only, BOS included)."""
    tokens = acts.get("tokens", i)
    mask = acts.get("mask", i) if "mask" in acts.keys else np.ones_like(tokens)
    bos = str((run.manifest.get("model") or {}).get("bos_token", "<bos>"))
    out = []
    edit = int(row.get("edit_pos", -1)) + 1
    for s, tok_key in ((0, "token_a"), (1, "token_b")):
        n = int(mask[s].sum())
        known = {0: bos}
        if edit > 0 and row.get(tok_key) is not None:
            known[edit] = str(row[tok_key])
        out.append(app_decoder.labels(run.manifest, tokens[s][:n].tolist(), known))
    return out


def pair_change(run: Run, acts: SavedTensors, i: int, hook: str, n: int,
                relative: bool) -> tuple[list[int], np.ndarray]:
    """||a − b|| (over the hook's components) per layer and position of saved pair ``i``."""
    layers, rows = [], []
    for layer in run.layers:
        name = run.hook_name(hook, layer)
        if name not in acts.keys:
            continue
        x = acts.get(name, i).astype(np.float64)  # [2, pos, ...]
        a = x[0, :n].reshape(n, -1)
        b = x[1, :n].reshape(n, -1)
        d = np.linalg.norm(a - b, axis=1)
        if relative:
            na = np.linalg.norm(a, axis=1)
            d = np.where(na > 0, d / np.where(na > 0, na, 1), np.nan)
        layers.append(layer)
        rows.append(d)
    return layers, (np.stack(rows) if rows else np.zeros((0, n)))


def fig_pair_change(layers: list[int], grid: np.ndarray, labels: list[str], edit: int, hook: str,
                    relative: bool, positions: list[int] | None = None, source: str = "") -> go.Figure:
    """Layer x position heatmap of ||a - b||; ``edit`` is the column index of the edited token."""
    positions = list(range(len(labels))) if positions is None else positions
    x = [f"{q}:{esc(t)}" for q, t in zip(positions, labels)]
    what = "||a−b|| / ||a||" if relative else "||a−b||"
    fig = go.Figure(go.Heatmap(z=np.where(np.isfinite(grid), grid, None), x=x, y=layers, colorscale="Magma",
                               reversescale=True, colorbar={"title": {"text": what}},
                               hovertemplate="layer %{y}<br>position %{x}<br>" + what + " %{z:.4g}<extra></extra>"))
    if 0 <= edit < len(x):
        fig.add_vrect(x0=edit - 0.5, x1=edit + 0.5, line={"color": "#1f77b4", "width": 2})
    return _layout(fig, f"{what} at {hook} per layer and position (tokens of sentence a; edit outlined)"
                   + (f" — {source}" if source else ""),
                   200 + 28 * len(layers), xaxis={"title": {"text": "position:token (a)"}, "tickangle": -40},
                   yaxis={"title": {"text": "layer"}, "dtick": 1 if len(layers) <= 40 else None})


def fig_pair_edit_lines(run: Run, acts: SavedTensors, i: int, n: int, edit: int) -> go.Figure:
    fig = go.Figure()
    for hook in run.hooks:
        layers, grid = pair_change(run, acts, i, hook, n, relative=False)
        if len(layers) and 0 <= edit < grid.shape[1]:
            fig.add_trace(go.Scatter(x=layers, y=grid[:, edit], mode="lines+markers", name=hook))
    return _layout(fig, "||a−b|| at the edited token per layer, every saved hook", 340, xaxis_title="layer",
                   yaxis_title="||a−b||", xaxis={"dtick": 1}, legend={"orientation": "h", "y": -0.25})


def attention_spec(pats: SavedTensors, i: int, layer: int, n_a: int, n_b: int, labels: list[list[str]],
                   head: int | None = None) -> list[dict] | None:
    key = PATTERN_TEMPLATE.format(layer=layer)
    if key not in pats.keys:
        return None
    x = pats.get(key, i).astype(np.float32)  # [2, head, q, k]
    out = []
    for s, n in ((0, n_a), (1, n_b)):
        att = np.round(x[s, :, :n, :n], 4)
        if head is None:
            props = {"tokens": labels[s], "attention": att.tolist(),
                     "attentionHeadNames": [f"L{layer}H{h}" for h in range(att.shape[0])], "maskUpperTri": True}
            out.append({"component": "AttentionHeads", "props": props})
        else:
            out.append({"component": "AttentionPattern",
                        "props": {"tokens": labels[s], "attention": att[head].tolist(), "maskUpperTri": True,
                                  "showAxisLabels": True}})
    return out


# --------------------------------------------------------------------------------------------------
# The app
# --------------------------------------------------------------------------------------------------

def figure_files(run: Run, folder: str) -> list[str]:
    fdir = run.path / folder
    if not fdir.is_dir():
        return []
    return [f"{folder}/{p.name}" for p in sorted(fdir.iterdir())
            if p.is_file() and p.suffix in (".html", ".png", ".svg", ".pdf")]


def pattern_layers(pats: SavedTensors) -> list[int]:
    out = []
    for k in pats.keys:
        parts = k.split(".")
        if len(parts) == 4 and parts[1].isdigit() and k == PATTERN_TEMPLATE.format(layer=parts[1]):
            out.append(int(parts[1]))
    return sorted(out)


class AnyPath(PathConverter):
    """Like ``path`` but ``url_for`` quotes every character (a pair id may hold ``/`` or ``..``)."""

    def to_url(self, value: str) -> str:
        return quote(str(value), safe="")


def _circuitsvis_bundle() -> Path:
    """The package's own browser bundle (found without importing circuitsvis, which imports torch)."""
    import importlib.util

    spec = importlib.util.find_spec("circuitsvis")
    if spec is None or not spec.submodule_search_locations:
        return Path("/nonexistent/circuitsvis/iife.js")
    return Path(list(spec.submodule_search_locations)[0]) / "dist" / "cdn" / "iife.js"


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


def create_app(runs_root: str | Path, decode_tokens: bool = True) -> Flask:
    """The viewer of every run dir under ``runs_root``. ``decode_tokens=False``: show token ids."""
    app = Flask(__name__, template_folder="templates", static_folder="static")
    app.url_map.converters["anypath"] = AnyPath
    app.config["RUNS_ROOT"] = str(Path(runs_root).resolve())
    app.json.sort_keys = False
    store = RunStore(runs_root)
    decoder = TokenDecoder(decode_tokens)
    app.extensions["interp_viewer"] = {"store": store, "decoder": decoder}
    vendor: dict[str, bytes] = {}

    app.jinja_env.filters["fmt"] = fmt
    app.jinja_env.filters["pct"] = pct
    app.jinja_env.globals.update(with_args=with_args, marked=marked)

    @app.after_request
    def _headers(resp: Response) -> Response:
        if request.endpoint == "run_file":
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

    # ---- vendored scripts from installed packages, served once and cached by the browser --------

    @app.route("/vendor/plotly.min.js")
    def plotly_js():
        if "plotly" not in vendor:
            from plotly.offline import get_plotlyjs

            vendor["plotly"] = get_plotlyjs().encode()
        resp = Response(vendor["plotly"], mimetype="application/javascript")
        resp.cache_control.public, resp.cache_control.max_age = True, 86400
        return resp

    @app.route("/vendor/circuitsvis/<name>")
    def circuitsvis_js(name: str):
        if name not in ("iife.js", "iife.js.map"):
            abort(404)
        path = _circuitsvis_bundle().with_name(name)
        if not path.is_file():
            abort(404, description="circuitsvis is not installed")
        return send_file(path, mimetype="application/json" if name.endswith(".map") else "application/javascript",
                         max_age=86400)

    # ---- run list and comparison ----------------------------------------------------------------

    @app.route("/")
    def index():
        rows = []
        for run_id, path in store.list():
            try:
                rows.append(run_summary(run_id, store.manifest(path)))
            except (OSError, ValueError):
                rows.append({"id": run_id, "status": "unreadable manifest", "created": "", "by_category": [],
                             "model": "?", "shape": "", "pairs": "", "hooks": "", "kept": None, "rejected": None,
                             "unreadable": None, "accuracy": None, "acc_n": 0})
        order = request.args.get("sort", "created")
        if order == "id":
            rows.sort(key=lambda r: r["id"])
        else:
            rows.sort(key=lambda r: str(r.get("created", "")), reverse=True)
        return render_template("index.html", runs=rows, root=app.config["RUNS_ROOT"], sort=order)

    @app.route("/compare")
    def compare():
        ids = [r for r, _ in store.list()]
        a_id, b_id = request.args.get("a"), request.args.get("b")
        if not a_id or not b_id:
            return render_template("compare.html", ids=ids, runs=None, a_id=a_id, b_id=b_id)
        a, b = store.get(a_id), store.get(b_id)
        hooks = sorted(set(a.hooks) | set(b.hooks), key=_hook_sort_key)
        positions = list(dict.fromkeys(a.positions + b.positions))
        hook = arg_choice("hook", hooks, "resid_post" if "resid_post" in hooks else (hooks[0] if hooks else ""))
        position = arg_choice("position", positions,
                              "edit" if "edit" in positions else (positions[0] if positions else ""))
        value = arg_choice("value", [c for c in VALUE_COLUMNS if c in a.stab.columns and c in b.stab.columns],
                           "normalized")
        k = arg_int("k", 15, 1, 200)
        figs = {"accuracy": fig_spec(fig_accuracy([a, b]))}
        sides = []
        for run in (a, b):
            heat, _ = fig_heatmap(run, hook, position, value)
            sides.append({"run": run, "summary": run_summary(run.id, run.manifest),
                          "heatmap": fig_spec(heat, click=_click_template(run, hook)),
                          "ranking": fig_spec(fig_ranking(run, position, k)),
                          "accuracy": run.manifest.get("accuracy", [])})
        # the same components in both runs: one against the other
        key = ["hook", "layer", "component", "position"]
        sa = a.stab[(a.stab["hook"] == hook) & (a.stab["position"] == position)]
        sb = b.stab[(b.stab["hook"] == hook) & (b.stab["position"] == position)]
        both = sa[key + [value]].merge(sb[key + [value]], on=key, suffixes=("_a", "_b")).dropna()
        if len(both):
            shown = both.sample(SCATTER_MAX_POINTS, random_state=0) if len(both) > SCATTER_MAX_POINTS else both
            fig = go.Figure(go.Scatter(
                x=shown[f"{value}_a"], y=shown[f"{value}_b"], mode="markers",
                marker={"color": shown["layer"], "colorscale": "Viridis", "showscale": True, "opacity": 0.6,
                        "colorbar": {"title": {"text": "layer"}}},
                text=[_label(hook, l, c) for l, c in zip(shown["layer"], shown["component"])],
                hovertemplate="%{text}<br>A %{x:.4g}<br>B %{y:.4g}<extra></extra>"))
            lo = float(min(shown[f"{value}_a"].min(), shown[f"{value}_b"].min()))
            hi = float(max(shown[f"{value}_a"].max(), shown[f"{value}_b"].max()))
            fig.add_shape(type="line", x0=lo, y0=lo, x1=hi, y1=hi, line={"dash": "dot", "color": "#888"})
            _layout(fig, f"{value} of the same {hook} components at '{position}': A vs B ({len(both)} matched)", 460,
                    xaxis_title=f"A: {esc(a.id)}", yaxis_title=f"B: {esc(b.id)}")
            figs["joint"] = fig_spec(fig)
        top_a = set(map(tuple, top_rows(a, position, k, hook)[["layer", "component"]].to_numpy().tolist()))
        top_b = set(map(tuple, top_rows(b, position, k, hook)[["layer", "component"]].to_numpy().tolist()))
        facts = _compare_facts(a, b)
        return render_template("compare.html", ids=ids, runs=sides, a_id=a_id, b_id=b_id, figs=figs, hooks=hooks,
                               positions=positions, hook=hook, position=position, value=value, k=k,
                               values=[c for c in VALUE_COLUMNS if c in a.stab.columns and c in b.stab.columns],
                               facts=facts, overlap=len(top_a & top_b), matched=len(both))

    def _compare_facts(a: Run, b: Run) -> list[tuple[str, str, str]]:
        sa, sb = run_summary(a.id, a.manifest), run_summary(b.id, b.manifest)
        rows = [("created", sa["created"], sb["created"]), ("model", sa["model"], sb["model"]),
                ("shape", sa["shape"], sb["shape"]), ("pairs", sa["pairs"], sb["pairs"]),
                ("hooks", sa["hooks"], sb["hooks"]), ("kept", fmt(sa["kept"]), fmt(sb["kept"])),
                ("rejected", fmt(sa["rejected"]), fmt(sb["rejected"])),
                ("accuracy (grammar)", pct(sa["accuracy"]), pct(sb["accuracy"])),
                ("positions", ", ".join(a.positions), ", ".join(b.positions))]
        return rows

    def _click_template(run: Run, hook: str) -> str:
        u = _component_url(run, hook, 0, 0)
        return u[: -len("/0/0")] + "/{y}/{x}"

    # ---- one run ----------------------------------------------------------------------------------

    def _nav(run: Run) -> dict:
        return {"run": run, "summary": run_summary(run.id, run.manifest)}

    @app.route("/run/<path:run>")
    def run_page(run: str):
        r = store.get(run)
        hooks, positions = r.hooks, r.positions
        hook = arg_choice("hook", hooks, "resid_post" if "resid_post" in hooks else (hooks[0] if hooks else ""))
        position = arg_choice("position", positions, default_position(r))
        values = [c for c in VALUE_COLUMNS if c in r.stab.columns]
        value = arg_choice("value", values, "normalized")
        rank_hook = arg_choice("rank_hook", [""] + hooks, "")
        rank_keys = [c for c in ("normalized", "rank_calibrated", "control_normalized", "ratio", "q_value", "p_value")
                     if c in r.stab.columns]
        rank_by = str(((r.manifest.get("config") or {}).get("analysis") or {}).get("rank_by") or "normalized")
        rank_key = arg_choice("rank_key", rank_keys, rank_by if rank_by in rank_keys else "normalized")
        k = arg_int("k", int(((r.manifest.get("config") or {}).get("analysis") or {}).get("top_k", 20)), 1, 200)
        sx = arg_choice("x", values, "spread")
        sy = arg_choice("y", values, "mean_abs_diff")
        slog = request.args.get("log", "1") != "0"
        cstart = arg_int("cstart", 0, 0)
        by_head = hook == "z" and request.args.get("by") == "head"
        heat, hinfo = fig_heatmap(r, hook, position, value, cstart, by_head=by_head)
        sel_layer = arg_choice("layer", [""] + r.layers, "")
        sel_layer = None if sel_layer == "" else int(sel_layer)
        scatter, sinfo = fig_scatter(r, position, sx, sy, None, slog, sel_layer)
        click = url_for("head", run=r.id, layer=0, head=0)[: -len("/0/0")] + "/{y}/{x}" if by_head \
            else _click_template(r, hook)
        figs = {"heatmap": fig_spec(heat, click=click),
                "ranking": fig_spec(fig_ranking(r, position, k, rank_hook or None, rank_key, sel_layer)),
                "scatter": fig_spec(scatter), "margins": fig_spec(fig_margins(r)),
                "accuracy": fig_spec(fig_accuracy([r]))}
        files = figure_files(r, R.FIGURES)
        heads = []
        if "z" in hooks and "head" in r.stab.columns:
            heads = sorted(int(h) for h in r.stab.loc[r.stab["hook"] == "z", "head"].dropna().unique())
        return render_template(
            "run.html", **_nav(r), figs=figs, hooks=hooks, positions=positions, hook=hook, position=position,
            value=value, values=values, k=k, rank_hook=rank_hook, rank_keys=rank_keys, rank_key=rank_key,
            sx=sx, sy=sy, slog=slog, hinfo=hinfo, sinfo=sinfo, files=files, heads=heads, by_head=by_head,
            sel_layer=sel_layer,
            cwidth=HEATMAP_MAX_COLUMNS, config_json=json.dumps(r.manifest.get("config", {}), indent=2, default=str),
            timings=r.manifest.get("timings", {}), counts=r.manifest.get("counts", {}),
            accuracy=r.manifest.get("accuracy", []), model=r.manifest.get("model", {}),
            optional=[c for c in OPTIONAL_STAB_COLUMNS if c in r.stab.columns],
            layers=r.layers)

    @app.route("/run/<path:run>/-/files/<path:name>")
    def run_file(run: str, name: str):
        """Saved figure files of a run (figures/ and causal/figures/ only), served as they are."""
        r = store.get(run)
        for d in FILE_DIRS:
            if name.startswith(d + "/") and "/" not in name[len(d) + 1:]:
                return send_from_directory(r.path / d, name[len(d) + 1:], max_age=0)
        abort(404, description="only files of figures/ and causal/figures/ are served")

    @app.route("/run/<path:run>/-/table")
    def table(run: str):
        r = store.get(run)
        which = arg_choice("t", ["stability", "by_category"], "stability")
        df = r.by_category if which == "by_category" else r.stab
        if df is None:
            abort(404, description="this run has no per-category table (it has one category)")
        hooks = sorted(values(df, "hook"), key=_hook_sort_key)
        categories = sorted(map(str, values(df, "category")))
        f = {"hook": arg_choice("hook", [""] + hooks, ""),
             "position": arg_choice("position", [""] + r.positions, ""),
             "layer": request.args.get("layer", ""), "component": request.args.get("component", ""),
             "head": request.args.get("head", ""),
             "category": arg_choice("category", [""] + categories, "")}
        d = df
        if f["hook"]:
            d = d[d["hook"] == f["hook"]]
        if f["position"]:
            d = d[d["position"] == f["position"]]
        if f["category"]:
            d = d[d["category"] == f["category"]]
        for col in ("layer", "component", "head"):
            if f[col] != "" and col in d.columns:
                try:
                    d = d[d[col] == int(f[col])]
                except ValueError:
                    f[col] = ""
        sortable = [c for c in ["rank", "normalized", "mean_abs_diff", "spread", "layer", "component", "hook"]
                    + OPTIONAL_STAB_COLUMNS if c in d.columns]
        sort = arg_choice("sort", sortable, "rank" if "rank" in d.columns else "normalized")
        desc = request.args.get("desc") == "1"
        per = arg_int("per", 50, 1, PER_PAGE_MAX)
        pg = paginate(len(d), per)
        page = page_rows(d, sort, desc, pg["start"], per)
        cols = [c for c in ["category", "hook", "layer", "component", "head", "head_dim", "position", "n_pairs",
                            "normalized", "normalized_std", "mean_abs_diff", "std_abs_diff", "mean_diff", "spread",
                            "act_mean", "rank"] + OPTIONAL_STAB_COLUMNS if c in page.columns]
        rows = []
        for rec in records(page, cols):
            rows.append({"cells": rec, "href": _component_url(r, rec["hook"], rec["layer"], rec["component"])})
        return render_template("table.html", **_nav(r), rows=rows, cols=cols, pg=pg, f=f, hooks=hooks, which=which,
                               sortable=sortable, sort=sort, desc=desc, per=per, total=len(df),
                               categories=categories,
                               has_by_category=r.by_category is not None)

    @app.route("/run/<path:run>/-/rejected")
    def rejected(run: str):
        r = store.get(run)
        rows = r.rejected()
        reasons: dict[str, int] = {}
        for row in rows:
            reasons[str(row.get("reason"))] = reasons.get(str(row.get("reason")), 0) + 1
        reason = arg_choice("reason", [""] + sorted(reasons), "")
        shown = [row for row in rows if not reason or str(row.get("reason")) == reason]
        per = arg_int("per", 100, 1, PER_PAGE_MAX)
        pg = paginate(len(shown), per)
        return render_template("rejected.html", **_nav(r), rows=shown[pg["start"]:pg["start"] + per], pg=pg,
                               reasons=sorted(reasons.items()), reason=reason,
                               counts=r.manifest.get("counts", {}))

    # ---- pairs ----------------------------------------------------------------------------------

    @app.route("/run/<path:run>/-/pairs")
    def pairs(run: str):
        r = store.get(run)
        p = r.pairs
        acts = r.saved(R.ACTIVATIONS)
        saved_ids = set(acts.pair_ids) if acts else set()
        cats = sorted(set(p["category"])) if len(p) else []
        types = sorted(set(p["type"])) if len(p) else []
        q = request.args.get("q", "").strip()
        f = {"q": q, "category": arg_choice("category", [""] + cats, ""), "type": arg_choice("type", [""] + types, ""),
             "min": arg_float("min"), "max": arg_float("max"),
             "correct": arg_choice("correct", ["", "yes", "no"], ""), "saved": request.args.get("saved") == "1"}
        d = p
        if q:
            ql = q.lower()
            hit = np.zeros(len(d), dtype=bool)
            for col in ("a", "b", "pair_id", "token_a", "token_b"):
                if col in d:
                    hit |= d[col].astype(str).str.lower().str.contains(ql, regex=False).to_numpy()
            d = d[hit]
        if f["category"]:
            d = d[d["category"] == f["category"]]
        if f["type"]:
            d = d[d["type"] == f["type"]]
        if f["min"] is not None:
            d = d[d["margin"] >= f["min"]]
        if f["max"] is not None:
            d = d[d["margin"] <= f["max"]]
        if f["correct"] and "correct" in d:
            want = f["correct"] == "yes"
            d = d[d["correct"].map(lambda v: v is not None and not pd.isna(v) and bool(v) == want).astype(bool)]
        if f["saved"]:
            d = d[d["pair_id"].astype(str).isin(saved_ids)]
        sortable = [c for c in ("pair_id", "margin", "category", "n_tokens", "logprob_a", "logprob_b") if c in d]
        sort = arg_choice("sort", [""] + sortable, "")
        desc = request.args.get("desc") == "1"
        if sort:
            d = d.sort_values(sort, ascending=not desc, kind="stable")
        per = arg_int("per", 50, 1, PER_PAGE_MAX)
        pg = paginate(len(d), per)
        rows = records(d.iloc[pg["start"]:pg["start"] + per])
        for row in rows:
            row["saved"] = str(row["pair_id"]) in saved_ids
        return render_template("pairs.html", **_nav(r), rows=rows, pg=pg, f=f, categories=cats, types=types,
                               sortable=sortable, sort=sort, desc=desc, per=per, total=len(p))

    @app.route("/run/<path:run>/-/pair/<anypath:pair_id>")
    def pair(run: str, pair_id: str):
        r = store.get(run)
        p = r.pairs
        hit = p.index[p["pair_id"].astype(str) == pair_id]
        if len(hit) == 0:
            abort(404, description=f"no kept pair {pair_id!r} in this run")
        pos = int(hit[0])
        row = records(p.iloc[[pos]])[0]
        prev_id = str(p["pair_id"].iloc[pos - 1]) if pos > 0 else None
        next_id = str(p["pair_id"].iloc[pos + 1]) if pos + 1 < len(p) else None
        acts, pats = r.saved(R.ACTIVATIONS), r.saved(R.PATTERNS)
        edit = int(row.get("edit_pos", -1)) + 1
        ctx: dict[str, Any] = {"saved": False, "figs": {}, "edit": edit, "labels": None}
        rel = request.args.get("rel") == "1"
        ctx["rel"] = rel
        # token strings (saved pairs only)
        src = acts if acts is not None and pair_id in acts.index else (
            pats if pats is not None and pair_id in pats.index else None)
        if src is not None and "tokens" in src.keys:
            ctx.update(saved=True, labels=saved_tokens(decoder, r, src, src.index[pair_id], row))
        labels = ctx["labels"]
        # per-layer change: pair_profile.parquet (every pair) or else the saved activations
        prof = r.table(PAIR_PROFILE)
        prof = prof[prof["pair_id"].astype(str) == pair_id] if prof is not None and "pair_id" in prof else None
        if prof is not None and len(prof) and {"hook", "layer", "position", "diff_norm"} <= set(prof.columns):
            hooks = sorted(set(prof["hook"]), key=_hook_sort_key)
            hook = arg_choice("hook", hooks, "resid_post" if "resid_post" in hooks else hooks[0])
            d = prof[prof["hook"] == hook]
            val = d["diff_norm"] / d["a_norm"].where(d["a_norm"] > 0) if rel and "a_norm" in d else d["diff_norm"]
            grid = d.assign(_v=val).pivot_table(observed=True, index="layer", columns="position", values="_v",
                                                aggfunc="first", dropna=False).sort_index()
            positions = [int(c) for c in grid.columns]
            xl = [labels[0][q] if labels and q < len(labels[0]) else str(q) for q in positions]
            ctx["figs"]["change"] = fig_spec(fig_pair_change(
                [int(l) for l in grid.index], grid.to_numpy(dtype=float), xl,
                positions.index(edit) if edit in positions else -1,
                hook, rel, positions, "pair_profile.parquet"))
            lines = go.Figure()
            at_edit = prof[prof["position"] == edit] if "offset" not in prof else prof[prof["offset"] == 0]
            for h in hooks:
                g = at_edit[at_edit["hook"] == h].sort_values("layer")
                lines.add_trace(go.Scatter(x=g["layer"], y=g["diff_norm"], mode="lines+markers", name=h))
            _layout(lines, "||a−b|| at the edited token per layer, every hook (pair_profile.parquet)", 340,
                    xaxis_title="layer", yaxis_title="||a−b||", xaxis={"dtick": 1},
                    legend={"orientation": "h", "y": -0.25})
            ctx["figs"]["edit_lines"] = fig_spec(lines)
            ctx.update(change_hooks=hooks, hook=hook)
        elif acts is not None and pair_id in acts.index and labels:
            ia = acts.index[pair_id]
            n = min(len(labels[0]), len(labels[1]))
            act_hooks = [h for h in r.hooks if any(r.hook_name(h, l) in acts.keys for l in r.layers)]
            if act_hooks:
                hook = arg_choice("hook", act_hooks, "resid_post" if "resid_post" in act_hooks else act_hooks[0])
                layers, grid = pair_change(r, acts, ia, hook, n, rel)
                ctx["figs"]["change"] = fig_spec(fig_pair_change(layers, grid, labels[0][:n], edit, hook, rel,
                                                                 list(range(n)), "activations.safetensors"))
                ctx["figs"]["edit_lines"] = fig_spec(fig_pair_edit_lines(r, acts, ia, n, edit))
                ctx.update(change_hooks=act_hooks, hook=hook)
        # most changed / most stable components of this pair
        pc = r.table(PAIR_COMPONENTS)
        if pc is not None and "pair_id" in pc:
            d = pc[pc["pair_id"].astype(str) == pair_id]
            if len(d):
                chooks = sorted(set(d["hook"]), key=_hook_sort_key)
                ch = arg_choice("chook", chooks, "resid_post" if "resid_post" in chooks else chooks[0])
                d = d[d["hook"] == ch].sort_values(["layer", "kind", "order"], kind="stable")
                comp_rows = []
                for (layer_, kind), g in d.groupby(["layer", "kind"], observed=True, sort=True):
                    none = [None] * len(g)
                    comp_rows.append({"layer": int(layer_), "kind": kind, "items": [
                        {"component": int(c), "abs_diff": a, "normalized": nv,
                         "href": _component_url(r, ch, int(layer_), int(c))}
                        for c, a, nv in zip(g["component"], g.get("abs_diff", none), g.get("normalized", none))]})
                ctx.update(comp_hooks=chooks, comp_hook=ch, comp_rows=comp_rows)
        # attention patterns (saved pairs)
        if pats is not None and pair_id in pats.index and labels:
            ip = pats.index[pair_id]
            pat_layers = pattern_layers(pats)
            if pat_layers:
                layer_ = arg_choice("layer", pat_layers, pat_layers[0])
                head_arg = request.args.get("head", "")
                n_heads = pats.shapes[PATTERN_TEMPLATE.format(layer=layer_)][2]
                head_i = int(head_arg) if head_arg.isdigit() and int(head_arg) < n_heads else None
                ctx.update(pat_layers=pat_layers, layer=layer_, head=head_i, n_heads=n_heads,
                           attention=attention_spec(pats, ip, layer_, len(labels[0]), len(labels[1]), labels, head_i))
        # causal results of this pair
        pt = r.table(PATCHING)
        if pt is not None and "pair_id" in pt:
            d = pt[pt["pair_id"].astype(str) == pair_id]
            if len(d):
                ctx["patching"] = patching_figs(d)
        ap = r.table(ABLATION_PAIRS)
        if ap is not None and "pair_id" in ap:
            d = ap[ap["pair_id"].astype(str) == pair_id]
            if len(d):
                cols = [c for c in ("selection", "k", "seed", "mode", "where", "baseline_margin", "margin",
                                    "margin_change") if c in d]
                order = [c for c in ("mode", "where", "selection", "k", "seed") if c in d]
                ctx.update(abl_cols=cols, abl_rows=records(d.sort_values(order, kind="stable") if order else d, cols))
        return render_template("pair.html", **_nav(r), row=row, prev_id=prev_id, next_id=next_id, **ctx,
                               n_saved=len(acts.pair_ids) if acts else 0)

    # ---- drill-down: layer, head, component / neuron ---------------------------------------------

    @app.route("/run/<path:run>/-/layer/<int:layer>")
    def layer(run: str, layer: int):
        r = store.get(run)
        if layer not in r.layers:
            abort(404, description=f"no layer {layer} in this run (layers {r.layers[:1]}…{r.layers[-1:]})")
        position = arg_choice("position", r.positions, default_position(r))
        values = [c for c in VALUE_COLUMNS if c in r.stab.columns]
        value = arg_choice("value", values, "normalized")
        s = r.stab
        d = s[(s["layer"] == layer) & (s["position"] == position)]
        summary = []
        for h in sorted(set(d["hook"]), key=_hook_sort_key):
            g = d[d["hook"] == h].dropna(subset=["normalized"])
            if g.empty:
                summary.append({"hook": h, "n": int((d["hook"] == h).sum())})
                continue
            best = g.sort_values("normalized", kind="stable").iloc[0]
            summary.append({"hook": h, "n": int((d["hook"] == h).sum()), "best": int(best["component"]),
                            "best_norm": best["normalized"], "best_rank": best.get("rank"),
                            "median": float(g["normalized"].median()), "max": float(g["normalized"].max()),
                            "href": _component_url(r, h, layer, int(best["component"]))})
        hooks_here = [x["hook"] for x in summary]
        cat_hook = arg_choice("chook", hooks_here, hooks_here[0] if hooks_here else "")
        figs = {"profile": fig_spec(fig_layer_profile(r, layer, position, value))}
        boxes = fig_category_boxes(r, layer, cat_hook, position) if cat_hook else None
        if boxes is not None:
            figs["categories"] = fig_spec(boxes)
        top = top_rows(r, position, 20, layer=layer)
        top_cols = [c for c in ["hook", "component", "head", "normalized", "mean_abs_diff", "spread", "rank"]
                    + OPTIONAL_STAB_COLUMNS if c in top.columns]
        top_recs = [{"cells": rec, "href": _component_url(r, rec["hook"], layer, rec["component"])}
                    for rec in records(top, top_cols)]
        heads = []
        zd = d[d["hook"] == "z"]
        if len(zd) and "head" in zd:
            for hd, g in zd.groupby("head", observed=True):
                heads.append({"head": int(hd), "mean": float(g["normalized"].mean()),
                              "min": float(g["normalized"].min()),
                              "best_rank": g["rank"].min() if "rank" in g else None})
        i = r.layers.index(layer)
        return render_template("layer.html", **_nav(r), layer=layer, position=position, value=value, values=values,
                               hook_summary=summary, figs=figs, top=top_recs, top_cols=top_cols, heads=heads,
                               cat_hook=cat_hook, hooks_here=hooks_here,
                               prev_layer=r.layers[i - 1] if i > 0 else None,
                               next_layer=r.layers[i + 1] if i + 1 < len(r.layers) else None)

    @app.route("/run/<path:run>/-/head/<int:layer>/<int:head>")
    def head(run: str, layer: int, head: int):
        r = store.get(run)
        s = r.stab
        if "head" not in s.columns:
            abort(404, description="this run has no per-head rows (hook point z was not recorded)")
        d = s[(s["hook"] == "z") & (s["layer"] == layer) & (s["head"] == head)]
        if d.empty:
            abort(404, description=f"no head {head} at layer {layer} in this run")
        n_heads = int(s.loc[(s["hook"] == "z") & (s["layer"] == layer), "head"].max()) + 1
        per_pos = []
        for pos, g in d.groupby("position", observed=True, sort=False):
            per_pos.append({"position": pos, "n": len(g), "mean": float(g["normalized"].mean()),
                            "min": float(g["normalized"].min()), "best_rank": g["rank"].min() if "rank" in g else None,
                            "n_ranked": int(s.loc[s["position"] == pos, "rank"].notna().sum()) if "rank" in s else None,
                            "mean_abs_diff": float(g["mean_abs_diff"].mean())})
        position = arg_choice("position", r.positions, default_position(r))
        dims = d[d["position"] == position].sort_values("head_dim")
        fig = go.Figure()
        for pos, g in d.groupby("position", observed=True, sort=False):
            fig.add_trace(go.Bar(x=g["head_dim"], y=g["normalized"], name=esc(pos),
                                 customdata=[_component_url(r, "z", layer, c) for c in g["component"]]))
        _layout(fig, f"normalized change of each dimension of head {head}, layer {layer}", 340, barmode="group",
                xaxis_title="head dimension", yaxis_title="normalized")
        figs = {"dims": fig_spec(fig)}
        bc = r.by_category
        if bc is not None and "head" in bc:
            g = bc[(bc["hook"] == "z") & (bc["layer"] == layer) & (bc["head"] == head)]
            if len(g):
                mean = g.groupby(["position", "category"], observed=True, sort=False,
                                 as_index=False)["normalized"].mean()
                figs["categories"] = fig_spec(fig_category_bars(
                    mean, f"head {head}, layer {layer}: mean normalized change over its dimensions, per category"))
        dim_cols = [c for c in ["head_dim", "component", "normalized", "mean_abs_diff", "spread", "rank"]
                    + OPTIONAL_STAB_COLUMNS if c in dims.columns]
        dim_rows = [{"cells": rec, "href": _component_url(r, "z", layer, rec["component"])}
                    for rec in records(dims, dim_cols)]
        # attention patterns of this head on a saved pair, and |z_a - z_b| of the head per saved pair
        pats, acts = r.saved(R.PATTERNS), r.saved(R.ACTIVATIONS)
        pattern, saved_rows, sel = None, [], None
        p = r.pairs
        if pats is not None and pats.pair_ids:
            sel = arg_choice("pair", pats.pair_ids, pats.pair_ids[0])
            prow = p[p["pair_id"].astype(str) == sel]
            if len(prow) and "tokens" in pats.keys:
                rec = records(prow)[0]
                i = pats.index[sel]
                labels = saved_tokens(decoder, r, pats, i, rec)
                pattern = attention_spec(pats, i, layer, len(labels[0]), len(labels[1]), labels, head)
        zname = r.hook_name("z", layer)
        if acts is not None and zname in acts.keys:
            for pid, rec, i in _saved_pairs(p, acts):
                x = acts.get(zname, i)  # [2, pos, head, d_head]
                e = int(rec["edit_pos"]) + 1
                if x.ndim == 4 and e < x.shape[1] and head < x.shape[2]:
                    saved_rows.append({"pair_id": pid, "a": rec["a"], "b": rec["b"], "token_a": rec.get("token_a"),
                                       "token_b": rec.get("token_b"), "row": rec,
                                       "diff": float(np.linalg.norm(x[0, e, head] - x[1, e, head]))})
        return render_template("head.html", **_nav(r), layer=layer, head=head, n_heads=n_heads, per_pos=per_pos,
                               figs=figs, dim_rows=dim_rows, dim_cols=dim_cols, position=position,
                               pattern=pattern, saved_ids=pats.pair_ids if pats else [], sel=sel,
                               saved_rows=saved_rows)

    @app.route("/run/<path:run>/-/neuron/<int:layer>/<int:neuron>")
    def neuron(run: str, layer: int, neuron: int):
        r = store.get(run)
        if "mlp_post" not in r.hooks:
            abort(404, description="this run has no neuron rows (hook point mlp_post was not recorded)")
        return _component_page(r, "mlp_post", layer, neuron)

    @app.route("/run/<path:run>/-/component/<hook>/<int:layer>/<int:component>")
    def component(run: str, hook: str, layer: int, component: int):
        return _component_page(store.get(run), hook, layer, component)

    def _component_page(r: Run, hook: str, layer: int, comp: int):
        s = r.stab
        d = s[(s["hook"] == hook) & (s["layer"] == layer) & (s["component"] == comp)]
        if d.empty:
            abort(404, description=f"no component {hook}[{layer}].{comp} in this run")
        rows = []
        for rec in records(d):
            pos = rec["position"]
            at = s[s["position"] == pos]
            same = at[(at["hook"] == hook) & (at["layer"] == layer)]
            v = rec.get("normalized")
            rec["n_ranked"] = int(at["rank"].notna().sum()) if "rank" in at else None
            ok = v is not None and not pd.isna(v)
            rec["rank_in_site"] = int((same["normalized"] < v).sum()) + 1 if ok else None
            rec["n_site"] = len(same)
            rows.append(rec)
        cols = [c for c in ["position", "n_pairs", "normalized", "normalized_std", "mean_abs_diff", "std_abs_diff",
                            "mean_diff", "std_diff", "act_mean", "spread", "rank"] + OPTIONAL_STAB_COLUMNS
                if c in d.columns]
        figs = {}
        cat_rows = []
        bc = r.by_category
        if bc is not None:
            g = bc[(bc["hook"] == hook) & (bc["layer"] == layer) & (bc["component"] == comp)]
            if len(g):
                figs["categories"] = fig_spec(fig_category_bars(
                    g, f"{_label(hook, layer, comp)}: normalized change per category"))
                cat_rows = records(g.sort_values(["position", "category"], kind="stable"),
                                   ["category", "position", "n_pairs", "normalized", "mean_abs_diff", "mean_diff"])
        # its activation in the saved pairs (a, b and a - b at the edited and the last token)
        acts = r.saved(R.ACTIVATIONS)
        name = r.hook_name(hook, layer)
        saved_rows = []
        if acts is not None and name in acts.keys:
            p = r.pairs
            for pid, rec, i in _saved_pairs(p, acts):
                x = acts.get(name, i)
                x = x.reshape(x.shape[0], x.shape[1], -1)
                if comp >= x.shape[2]:
                    continue
                n = int(acts.get("mask", i)[0].sum()) if "mask" in acts.keys else x.shape[1]
                e = int(rec["edit_pos"]) + 1
                vals = {"pair_id": pid, "row": rec}
                for tag, t in (("edit", e), ("last", n - 1)):
                    if 0 <= t < x.shape[1]:
                        vals[f"{tag}_a"], vals[f"{tag}_b"] = float(x[0, t, comp]), float(x[1, t, comp])
                        vals[f"{tag}_diff"] = vals[f"{tag}_a"] - vals[f"{tag}_b"]
                saved_rows.append(vals)
            if saved_rows:
                fig = go.Figure()
                for tag in ("edit", "last"):
                    fig.add_trace(go.Bar(x=[esc(v["pair_id"]) for v in saved_rows],
                                         y=[v.get(f"{tag}_diff") for v in saved_rows], name=f"a−b at {tag}",
                                         customdata=[url_for("pair", run=r.id, pair_id=v["pair_id"])
                                                     for v in saved_rows]))
                _layout(fig, f"{_label(hook, layer, comp)}: a − b in the saved pairs", 340, barmode="group",
                        xaxis_title="pair", yaxis_title="a − b")
                figs["saved"] = fig_spec(fig)
        head_i = None
        if hook == "z" and "head" in d.columns:
            head_i = int(d["head"].iloc[0])
        n_comp = int(s.loc[(s["hook"] == hook) & (s["layer"] == layer), "component"].max()) + 1
        def comp_url(c: int) -> str:
            if hook == "mlp_post":
                return url_for("neuron", run=r.id, layer=layer, neuron=c)
            return _component_url(r, hook, layer, c)

        return render_template("component.html", **_nav(r), hook=hook, layer=layer, comp=comp, rows=rows,
                               prev_url=comp_url(comp - 1) if comp > 0 else None,
                               next_url=comp_url(comp + 1) if comp + 1 < n_comp else None,
                               cols=cols, figs=figs, cat_rows=cat_rows, saved_rows=saved_rows, head=head_i,
                               n_comp=n_comp, label=_label(hook, layer, comp, head_i), is_neuron=hook == "mlp_post")

    # ---- optional results: causal, divergence ------------------------------------------------------

    @app.route("/run/<path:run>/-/causal")
    def causal(run: str):
        r = store.get(run)
        if not r.causal:
            abort(404, description="this run has no causal results (python -m interp.patch writes RUN/causal/)")
        ctx: dict[str, Any] = {"figs": {}, "files": figure_files(r, "causal/figures")}
        cm_path = r.path / CAUSAL / R.MANIFEST
        try:
            cm = json.loads(cm_path.read_text()) if cm_path.is_file() else {}
        except ValueError:
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
                ctx["figs"]["ablation"] = fig_spec(fig_ablation(d, summ, f))
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
                rec["href"] = _component_url(r, rec["hook"], rec["layer"], rec["component"]) \
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
            subject = arg_choice("subject", subjects, subjects[0] if subjects else None)
            if subject is not None:
                d = d[d[subj_col].astype(str) == subject]
            ctx.update(pt_levels=levels, pt_level=level, pt_subjects=subjects, pt_subject=subject, pt_subj_col=subj_col,
                       patching=patching_figs(d), pt_n=len(pt))
        return render_template("causal.html", **_nav(r), **ctx)

    @app.route("/run/<path:run>/-/divergence")
    def divergence(run: str):
        r = store.get(run)
        if not r.divergence:
            abort(404, description="this run has no divergence.parquet or contrast.parquet")
        ctx: dict[str, Any] = {"figs": {}}
        dv = r.table(DIVERGENCE)
        if dv is not None and len(dv) and {"hook", "layer", "offset"} <= set(dv.columns):
            hooks = sorted(set(dv["hook"]), key=_hook_sort_key)
            cats = sorted(set(dv["category"].astype(str))) if "category" in dv else []
            hook = arg_choice("hook", hooks, "resid_post" if "resid_post" in hooks else hooks[0])
            cat = arg_choice("category", cats, "all" if "all" in cats else "")
            val = arg_choice("value", [c for c in ("normalized", "normalized_median") if c in dv], "normalized")
            d = dv[dv["hook"] == hook]
            if cat:
                d = d[d["category"].astype(str) == cat]
                grid = d.pivot_table(observed=True, index="layer", columns="offset", values=val,
                                     aggfunc="first").sort_index()
                what = esc(cat)
            else:  # no 'all' rows: categories together, weighted by their pairs
                w = d["n_pairs"] if "n_pairs" in d else pd.Series(1, index=d.index)
                tmp = (d.assign(_wv=d[val] * w, _w=w.where(d[val].notna(), 0))
                       .groupby(["layer", "offset"], observed=True)[["_wv", "_w"]].sum())
                grid = (tmp["_wv"] / tmp["_w"].where(tmp["_w"] > 0)).unstack("offset").sort_index()
                what = "all categories (mean weighted by pairs)"
            fig = go.Figure(go.Heatmap(z=grid.to_numpy(dtype=float), x=[int(c) for c in grid.columns],
                                       y=[int(i) for i in grid.index], colorscale="Magma",
                                       colorbar={"title": {"text": val}},
                                       hovertemplate="layer %{y}<br>offset %{x}<br>%{z:.4g}<extra></extra>"))
            _layout(fig, f"{val} |a−b| by layer and token offset from the edit, {hook}, {what}", 220 + 26 * len(grid),
                    xaxis_title="offset from the edited token", yaxis_title="layer",
                    yaxis={"dtick": 1 if len(grid) <= 40 else None})
            ctx["figs"]["divergence"] = fig_spec(fig)
            lines = go.Figure()
            dd = dv[dv["hook"] == hook]
            for c, g in (dd.groupby("category", observed=True, sort=True) if "category" in dd else [("all", dd)]):
                for layer_ in ([max(r.layers)] if r.layers else []):
                    m = g[g["layer"] == layer_].sort_values("offset")
                    lines.add_trace(go.Scatter(x=m["offset"], y=m[val], mode="lines+markers", name=esc(c)))
            last = max(r.layers) if r.layers else "?"
            _layout(lines, f"{val} by offset at the last layer ({last}), {hook}, per category",
                    360, xaxis_title="offset from the edited token", yaxis_title=val)
            ctx["figs"]["div_lines"] = fig_spec(lines)
            ctx.update(dv_hooks=hooks, dv_hook=hook, dv_cats=cats, dv_cat=cat, dv_val=val,
                       dv_vals=[c for c in ("normalized", "normalized_median") if c in dv])
        ct = r.table(CONTRAST)
        if ct is not None and len(ct):
            f = {}
            d = ct
            for col in ("hook", "position", "quantity"):
                if col in ct:
                    opts = sorted(set(ct[col].astype(str)), key=_hook_sort_key if col == "hook" else None)
                    f[col] = (opts, arg_choice("c" + col, [""] + opts, ""))
                    if f[col][1]:
                        d = d[d[col].astype(str) == f[col][1]]
            if "layer" in d and request.args.get("clayer", "") != "":
                try:
                    d = d[d["layer"] == int(request.args["clayer"])]
                except ValueError:
                    pass
            sortable = [c for c in ("q_value", "p_value", "effect", "t_stat", "layer") if c in d]
            sort = arg_choice("csort", sortable, sortable[0] if sortable else None)
            desc = request.args.get("cdesc") == "1"
            if sort:
                d = d.sort_values(sort, ascending=not desc, kind="stable", na_position="last")
            if {"effect", "p_value"} <= set(d.columns) and len(d):
                shown = d.sample(SCATTER_MAX_POINTS, random_state=0) if len(d) > SCATTER_MAX_POINTS else d
                keys = list(zip(shown["hook"], shown["layer"], shown["component"])) \
                    if {"hook", "layer", "component"} <= set(shown.columns) else None
                vol = go.Figure(go.Scatter(
                    x=shown["effect"], y=shown["p_value"], mode="markers",
                    marker={"color": shown["layer"] if "layer" in shown else None, "colorscale": "Viridis",
                            "opacity": 0.6, "showscale": "layer" in shown, "colorbar": {"title": {"text": "layer"}}},
                    text=[_label(h, l, c) for h, l, c in keys] if keys else None,
                    customdata=[_component_url(r, h, l, c) for h, l, c in keys] if keys else None,
                    hovertemplate="%{text}<br>effect %{x:.4g}<br>p %{y:.3g}<extra></extra>"))
                subset = f" ({len(shown)} of {len(d)}, random subset)" if len(shown) < len(d) else ""
                _layout(vol, "contrast between groups: effect vs p-value" + subset, 420, xaxis_title="effect",
                        yaxis={"type": "log", "autorange": "reversed", "title": {"text": "p-value"}})
                ctx["figs"]["volcano"] = fig_spec(vol)
            per = arg_int("per", 50, 1, PER_PAGE_MAX)
            pg = paginate(len(d), per)
            cols = list(ct.columns)
            rows = []
            for rec in records(d.iloc[pg["start"]:pg["start"] + per], cols):
                href = _component_url(r, rec["hook"], rec["layer"], rec["component"]) \
                    if {"hook", "layer", "component"} <= set(rec) else None
                rows.append({"cells": rec, "href": href})
            ctx.update(ct_cols=cols, ct_rows=rows, ct_pg=pg, ct_f=f, ct_sortable=sortable, ct_sort=sort, ct_desc=desc,
                       ct_layer=request.args.get("clayer", ""), ct_groups=sorted(set(
                           f"{a} vs {b}" for a, b in zip(ct.get("group_a", []), ct.get("group_b", [])))))
        return render_template("divergence.html", **_nav(r), **ctx)

    return app


def fig_ablation(d: pd.DataFrame, summary: pd.DataFrame | None, f: dict) -> go.Figure:
    """Ablation effect against k per selection: mean over seeds (±sd over seeds) and each seed faintly."""
    metric = f["metric"]
    colors = {"stable": "#1f77b4", "random": "#7f7f7f", "least_stable": "#d62728"}
    fig = go.Figure()
    sels = [s for s in colors if s in set(d["selection"])] + sorted(set(d["selection"]) - set(colors))
    for i, sel in enumerate(sels):
        g = d[d["selection"] == sel]
        color = colors.get(sel, ["#2ca02c", "#9467bd", "#8c564b"][i % 3])
        mean_col, sd = f"{metric}_mean", None
        s = None
        if summary is not None and mean_col in summary:
            s = summary[summary["selection"] == sel]
            for col in ("mode", "where", "category"):
                if f.get(col) is not None and col in s:
                    s = s[s[col].astype(str) == f[col]]
            s = s.sort_values("k") if len(s) else None
        if s is not None:
            x, y = s["k"], s[mean_col]
            sd = s[f"{metric}_std"] if f"{metric}_std" in s else None
        else:
            m = g.groupby("k", observed=True, as_index=False)[metric].mean().sort_values("k")
            x, y = m["k"], m[metric]
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=esc(sel), line={"color": color},
                                 error_y={"array": sd.fillna(0).tolist(), "visible": True} if sd is not None else None))
        if "seed" in g and g["seed"].nunique() > 1:
            fig.add_trace(go.Scatter(x=g["k"], y=g[metric], mode="markers", showlegend=False, hoverinfo="skip",
                                     marker={"color": color, "size": 5, "opacity": 0.3}))
    fig.add_hline(y=0, line_dash="dot")
    where = ", ".join(f"{k} {esc(v)}" for k, v in f.items() if k in ("mode", "where", "category") and v is not None)
    return _layout(fig, f"ablation: {metric} against the number of ablated components k ({where})", 420,
                   xaxis={"title": {"text": "k"}, "type": "log", "tickvals": sorted(int(k) for k in set(d["k"]))},
                   yaxis_title=metric,
                   legend={"orientation": "h", "y": -0.2})


def patching_figs(d: pd.DataFrame) -> list[dict]:
    """One figure per patched hook kind and metric: layer x position / offset / head, one panel per direction."""
    from plotly.subplots import make_subplots

    if d.empty or "layer" not in d:
        return []
    numeric_metric = "metric" in d and pd.api.types.is_numeric_dtype(d["metric"])
    value = "normalized" if "normalized" in d else ("metric" if numeric_metric else None)
    if value is None:
        return []
    kind_col = "kind" if "kind" in d else ("hook" if "hook" in d else None)
    metric_col = "metric" if "metric" in d and value != "metric" else None
    out = []
    for kind, dk in (d.groupby(kind_col, observed=True, sort=True) if kind_col else [("", d)]):
        for metric, dm in (dk.groupby(metric_col, observed=True, sort=True) if metric_col else [("", dk)]):
            if "head" in dm and dm["head"].notna().any():
                x = "head"
            elif "position" in dm and dm["position"].notna().any():
                x = "position"
            elif "offset" in dm and dm["offset"].notna().any():
                x = "offset"
            else:
                continue
            dirs = sorted(set(dm["direction"].astype(str))) if "direction" in dm else [""]
            fig = make_subplots(rows=1, cols=len(dirs), subplot_titles=[esc(t) for t in dirs], shared_yaxes=True,
                                horizontal_spacing=0.06)
            labels = {}
            if x == "position" and "token" in dm:
                labels = {int(q): str(t) for q, t in zip(dm["position"], dm["token"]) if pd.notna(q) and pd.notna(t)}
            for i, direction in enumerate(dirs, start=1):
                g = dm[dm["direction"].astype(str) == direction] if direction else dm
                grid = g.pivot_table(observed=True, index="layer", columns=x, values=value, aggfunc="mean").sort_index()
                cols = [int(c) for c in grid.columns]
                xs = [f"{c}:{esc(labels[c])}" if c in labels else str(c) for c in cols]
                fig.add_trace(go.Heatmap(z=grid.to_numpy(dtype=float), x=xs, y=[int(l) for l in grid.index],
                                         coloraxis="coloraxis",
                                         hovertemplate=f"{esc(direction)}<br>layer %{{y}}<br>{x} %{{x}}"
                                                       "<br>%{z:.3f}<extra></extra>"),
                              row=1, col=i)
                fig.update_xaxes(title_text=x, row=1, col=i)
            fig.update_yaxes(title_text="layer", row=1, col=1)
            if dm["layer"].nunique() <= 40:
                fig.update_yaxes(dtick=1)
            fig.update_layout(coloraxis={"colorscale": "RdBu", "reversescale": True, "cmid": 0,
                                         "colorbar": {"title": {"text": value}}})
            title = (f"activation patching, {kind}" + (f", metric {metric}" if metric else "")
                     + f": {value} by layer and {x}")
            _layout(fig, title, 260 + 26 * dm["layer"].nunique())
            out.append({"name": f"patch-{kind}-{metric}".replace(" ", "_"), "spec": fig_spec(fig)})
    return out


# --------------------------------------------------------------------------------------------------
# Static export
# --------------------------------------------------------------------------------------------------

def export_figures(run_dir: str | Path, out: str | Path | None = None, width: int = 1100) -> list[Path]:
    """Write the viewer's figures of one run as PNG, all in one kaleido browser session.

    Kaleido's page is built with MathJax off and plotly.js from the installed package, so the
    browser it starts loads nothing from the network.
    """
    run_dir = Path(run_dir).resolve()
    if not (run_dir / R.MANIFEST).is_file():
        raise FileNotFoundError(f"{run_dir} is not a run dir (no {R.MANIFEST})")
    out = Path(out) if out else run_dir / R.FIGURES / "viewer"
    out.mkdir(parents=True, exist_ok=True)
    app = create_app(run_dir.parent, decode_tokens=False)
    store: RunStore = app.extensions["interp_viewer"]["store"]
    figs: dict[str, go.Figure] = {}
    with app.test_request_context("/"):
        r = Run(store, run_dir.name, run_dir)
        figs["accuracy"] = fig_accuracy([r])
        figs["margins"] = fig_margins(r)
        for position in r.positions:
            for hook in r.hooks:
                figs[f"heatmap_{hook}_{position}"] = fig_heatmap(r, hook, position)[0]
            figs[f"ranking_{position}"] = fig_ranking(r, position, 20)
            figs[f"scatter_{position}"] = fig_scatter(r, position)[0]
        position = default_position(r)
        for layer in r.layers:
            figs[f"layer_{layer}_{position}"] = fig_layer_profile(r, layer, position)
        ab = r.table(ABLATION)
        if ab is not None and len(ab) and "k" in ab and "selection" in ab:
            summ = r.table(ABLATION_SUMMARY)
            keys = [c for c in ("mode", "where") if c in ab]
            for key, d in (ab.groupby(keys, observed=True, sort=True) if keys else [("all", ab)]):
                key = key if isinstance(key, tuple) else (key,)
                cat = "all" if "category" in d and "all" in set(d["category"]) else None
                if cat:
                    d = d[d["category"] == cat]
                f = {"mode": str(key[0]), "where": str(key[1]) if len(key) > 1 else None, "category": cat,
                     "metric": "margin_change" if "margin_change" in d else "accuracy"}
                figs["ablation_" + "_".join(map(str, key))] = fig_ablation(d, summ, f)
        pt = r.table(PATCHING)
        if pt is not None and len(pt):
            d = pt[pt["level"] == "category"] if "level" in pt else pt
            subj = "category" if "category" in d else None
            for name, g in (d.groupby(subj, observed=True, sort=True) if subj else [("all", d)]):
                for spec in patching_figs(g):
                    figs[f"{spec['name']}_{name}"] = go.Figure(spec["spec"]["fig"])
        dv = r.table(DIVERGENCE)
        if dv is not None and len(dv) and {"hook", "layer", "offset", "normalized"} <= set(dv.columns):
            for hook in sorted(set(dv["hook"]), key=_hook_sort_key):
                d = dv[dv["hook"] == hook]
                cat = "all" if "category" in d and "all" in set(d["category"]) else None
                d = d[d["category"] == cat] if cat else d
                grid = d.pivot_table(observed=True, index="layer", columns="offset", values="normalized",
                                     aggfunc="mean").sort_index()
                fig = go.Figure(go.Heatmap(z=grid.to_numpy(dtype=float), x=list(grid.columns), y=list(grid.index),
                                           colorscale="Magma", colorbar={"title": {"text": "normalized"}}))
                figs[f"divergence_{hook}"] = _layout(fig, f"normalized |a−b| by layer and offset, {hook}"
                                                     + ("" if cat else " (mean over categories)"), 220 + 26 * len(grid),
                                                     xaxis_title="offset from the edited token", yaxis_title="layer")
    names = list(figs)
    paths, seen = [], set()
    for n in names:  # category names are user data: keep file names plain and inside ``out``
        base = re.sub(r"[^A-Za-z0-9_.-]+", "_", n).strip("._") or "figure"
        name, i = base, 1
        while name in seen:
            i += 1
            name = f"{base}_{i}"
        seen.add(name)
        paths.append(out / f"{name}.png")
    write_pngs([figs[n] for n in names], paths, width)
    return paths
