"""Finding and reading run dirs for the viewer: the run store (every run dir under a root, with path
checks), one run's manifest and tables (cached, repeated text columns as categoricals), the saved
activations and attention patterns, and token strings from a tokenizer already on this machine.

Every file the viewer reads or serves goes through ``contained_file``: its path is resolved
(``Path.resolve``, symlinks at any depth followed) and refused when the real path leaves the folder
it must lie in (the run's own directory, inside the runs folder; for served figure files the
figure folder itself). A symlink out of the runs folder is never read, listed or served.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd
from flask import abort

from ..hooks import HOOK_POINTS, PATTERN
from .. import rules
from .. import rundir as R
from ..figures.common import hook_sort_key, values

# Optional tables: shown when a run has them.
DIVERGENCE = R.DIVERGENCE
CONTRAST = R.CONTRAST
PAIR_PROFILE = R.PAIR_PROFILE
PAIR_COMPONENTS = R.PAIR_COMPONENTS
# ``python -m interp.patch`` writes RUN/causal/ (with its own manifest.json: not a run dir)
CAUSAL = "causal"
ABLATION = "causal/ablation.parquet"
ABLATION_SUMMARY = "causal/ablation_summary.parquet"
ABLATION_PAIRS = "causal/ablation_pairs.parquet"
ABLATION_VS_RANDOM = "causal/ablation_vs_random.parquet"  # older causal dirs have none
SELECTIONS = "causal/selections.parquet"
PATCHING = "causal/patching.parquet"
RUN_SUBDIRS = {"causal", "figures", "checkpoint"}  # folders of a run dir that are never run dirs
FILE_DIRS = ("figures", "causal/figures")  # folders of a run dir whose files are served as they are

HOOK_TEMPLATES = {p.point: p.template for p in HOOK_POINTS.values()}  # from the one hook-point table
PATTERN_TEMPLATE = PATTERN.template


def contained_file(base: Path, rel: str) -> Path | None:
    """The real path of the file ``base / rel`` when it lies inside ``base`` (as given: pass a
    resolved ``base`` to allow symlinks that stay inside its real location); None when ``rel`` is
    absolute, has empty, ``.`` or ``..`` parts or a NUL, when the file is missing or not a regular
    file, or when its resolved path (symlinks at any depth followed) leaves ``base``."""
    rel = str(rel)
    if not rel or "\x00" in rel or rel.startswith("/"):
        return None
    if any(part in ("", ".", "..") for part in rel.split("/")):
        return None
    try:
        real = (base / rel).resolve(strict=True)
    except (OSError, RuntimeError):  # missing, a symlink loop, unreadable
        return None
    if not real.is_relative_to(base) or not real.is_file():
        return None
    return real


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
        """Slice ``[i]`` of one tensor (only that slice is read); bfloat16 (activations of a bf16
        run, which numpy has no type for) as float32."""
        from safetensors import safe_open

        with safe_open(str(self.path), framework="numpy") as f:
            part = f.get_slice(key)
            if part.get_dtype() != "BF16":
                return part[i:i + 1][0]
        with safe_open(str(self.path), framework="pt") as f:
            return f.get_slice(key)[i:i + 1][0].float().numpy()


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


class Run:
    """One run directory: its manifest and (cached) tables."""

    def __init__(self, store: "RunStore", run_id: str, path: Path):
        self.store, self.id, self.path = store, run_id, path
        self.manifest = store.manifest(path)

    def file(self, name: str) -> Path | None:
        """The real path of ``RUN/name`` when it is a file inside the run dir (``contained_file``):
        a symlink leading out of the run dir reads as a missing file."""
        return contained_file(self.path, name)

    def has(self, name: str) -> bool:
        return self.file(name) is not None

    def table(self, name: str) -> pd.DataFrame | None:
        p = self.file(name)
        if p is None:
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

    @property
    def by_category_note(self) -> str | None:
        """Why the run has no per-category table though it has several categories (its manifest's
        ``by_category``: ``analysis.by_category``), for the pages that would show it; else None."""
        if self.has(R.STABILITY_BY_CATEGORY):
            return None
        from ..result import not_written

        return not_written(self.manifest)

    @property
    def directions(self) -> pd.DataFrame | None:
        return self.table(R.DIRECTIONS)

    # ------------------------------------------------------------ the run's rule for "stable"

    @property
    def analysis(self) -> dict:
        return (self.manifest.get("config") or {}).get("analysis") or {}

    @property
    def run_rule(self) -> rules.Rule:
        """The run's rule for "stable" and its thresholds (runs before ``analysis.rule``: significance)."""
        return rules.Rule.of_run(self.analysis)

    @property
    def rule(self) -> str:
        return self.run_rule.rule

    @property
    def alpha(self) -> float:
        return self.run_rule.alpha

    @property
    def stable_ratio(self) -> float:
        return self.run_rule.stable_ratio

    @property
    def ci(self) -> float:
        return self.run_rule.ci

    def stable(self, d: pd.DataFrame) -> pd.Series:
        """Rows of ``d`` (stability rows) stable under the run's rule and thresholds
        (``interp.rules.stable_mask``; a rule this version does not know: none)."""
        if self.rule not in rules.RULES:
            return pd.Series(False, index=d.index)
        return rules.stable_mask(d, self.alpha, self.rule, self.stable_ratio)

    def with_stable(self, d: pd.DataFrame) -> pd.DataFrame:
        """``d`` with its ``stable`` column computed by the run's rule (runs with controls only: without
        q-values no rule applies, and the column is left as it is)."""
        if "q_value" not in d.columns:
            return d
        return d.assign(stable=self.stable(d))

    @property
    def inference(self) -> dict:
        """What the pages say about how "stable" was decided: the null (control pool, edits per pair,
        facts from the draw), the rule in words, the thresholds, the clustering and how the
        intervals were computed, and whether the table is of the older kind."""
        a = self.analysis
        controls = a.get("controls") or {}
        drawn = self.manifest.get("controls") or {}
        n = drawn.get("k", drawn.get("n", controls.get("n")))
        has_controls = "q_value" in self.stab.columns
        pool = "words" if controls.get("words") else (drawn.get("pool") or controls.get("pool"))
        facts = {k: v for k, v in drawn.items() if k not in ("pool", "k", "n", "seed", "test")}
        known = self.rule in rules.RULES
        definition = rules.definition(self.rule, self.alpha, self.stable_ratio, self.ci) if known \
            else f"{self.rule}: a rule this viewer does not know (nothing counted as stable)"
        s = self.stab
        methods = s["se_method"].astype(str).value_counts().to_dict() if "se_method" in s.columns else {}
        return {"rule": self.rule, "alpha": self.alpha, "stable_ratio": self.stable_ratio, "ci": self.ci,
                "definition": definition, "rule_set": "rule" in a,
                "null": pool if has_controls else None, "k": n if has_controls else None,
                "null_facts": facts if has_controls else {}, "test": drawn.get("test"),
                "cluster": a.get("cluster"), "cluster_text": CLUSTER_KINDS.get(str(a.get("cluster")), ""),
                "se_methods": methods, "has_controls": has_controls,
                "has_ci": "ratio_hi" in s.columns, "legacy_flag": bool(s.attrs.get("legacy_massive")),
                "clustered_test": (self.manifest.get("inference") or {}).get("clustered_test")}

    def rejected(self) -> list[dict]:
        p = self.file(R.REJECTED)
        if p is None:
            return []
        return self.store.tables.get(p, _read_jsonl_lenient)

    def saved(self, name: str) -> SavedTensors | None:
        p = self.file(name)
        if p is None:
            return None
        try:
            return self.store.tables.get(p, SavedTensors)
        except Exception:
            return None

    @property
    def hooks(self) -> list[str]:
        s = self.stab
        return sorted(values(s, "hook"), key=hook_sort_key)

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


STABILITY_TABLES = (R.STABILITY, R.STABILITY_BY_CATEGORY)
# analysis.cluster: what the pairs of one cluster share (the cluster-robust statistics)
CLUSTER_KINDS = {"swap": "pairs with the same swap (token_a, token_b)",
                 "template": "pairs with the same sentence a, edited token masked",
                 "none": "every pair its own cluster"}


def read_parquet(path: Path) -> pd.DataFrame:
    """A table with its repeated text columns as categoricals: filtering 10^6 rows stays fast.

    Stability tables written before ``offset_dim`` existed call the offset flag ``massive``: it is
    renamed ``offset_dim`` here (``attrs["legacy_massive"]``), so ``massive`` always means the
    massive-activation flag of Sun et al. on every page. Text key columns are read as dictionaries,
    straight into categoricals (a 32-layer Llama-3-8B ``mlp_post`` table has 1.4 million rows: no
    string per row is made)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    text = [c for c in KEY_COLUMNS if c in schema.names
            and (pa.types.is_string(schema.field(c).type) or pa.types.is_large_string(schema.field(c).type))]
    df = pq.read_table(path, read_dictionary=text).to_pandas(split_blocks=True, self_destruct=True)
    if path.name in STABILITY_TABLES and "massive" in df.columns and "offset_dim" not in df.columns:
        df = df.rename(columns={"massive": "offset_dim"})
        df.attrs["legacy_massive"] = True
    for col in KEY_COLUMNS:
        if col in df.columns and not isinstance(df[col].dtype, pd.CategoricalDtype) \
                and (pd.api.types.is_string_dtype(df[col]) or df[col].dtype == object):
            df[col] = df[col].astype("category")
    return df


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


def newer_text(err: "R.SchemaVersionError") -> str:
    """A run too new for this code, in the viewer's words (no file paths)."""
    return (f"written by a newer interp (run-dir schema_version {err.version!r}, this viewer reads up to "
            f"{err.supported}); upgrade interp to view it")


class RunStore:
    """Every run dir under ``root`` (recursively); path checks keep every lookup inside it."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.tables = _LRU(16)
        self.manifests = _LRU(256)

    def manifest(self, path: Path) -> dict:
        """The manifest of the run dir ``path``; a ``manifest.json`` whose real path leaves the run dir
        is not read (``FileNotFoundError``); a run newer than this code: ``rundir.SchemaVersionError``."""
        p = contained_file(Path(path).resolve(), R.MANIFEST)
        if p is None:
            raise FileNotFoundError(f"{path}/{R.MANIFEST}: missing or outside the run dir")
        # read_manifest reads path/manifest.json: the file p, checked above and stat-ed as the cache key
        return self.manifests.get(p, lambda f: R.read_manifest(path))

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
        if not path.is_relative_to(self.root) or path == self.root or contained_file(path, R.MANIFEST) is None:
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
        except R.SchemaVersionError as err:
            abort(404, description=f"run {run_id!r}: {newer_text(err)}")
        except (OSError, ValueError):
            abort(404, description=f"run {run_id!r} has an unreadable manifest.json")


def records(df: pd.DataFrame, columns: list[str] | None = None) -> list[dict]:
    """Rows of ``df`` as dicts (only ``columns`` that it has, in that order)."""
    cols = [c for c in (columns or list(df.columns)) if c in df.columns]
    return [dict(zip(cols, row)) for row in df[cols].itertuples(index=False, name=None)]


def saved_pairs(pairs: pd.DataFrame, acts) -> Iterable[tuple[str, dict, int]]:
    """(pair id, its pairs.parquet row, its index in the saved tensors) for every saved pair."""
    for pid in acts.pair_ids:
        prow = pairs[pairs["pair_id"].astype(str) == pid]
        if not prow.empty:
            yield pid, records(prow)[0], acts.index[pid]


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


def attention_spec(pats: SavedTensors, i: int, layer: int, n_a: int, n_b: int, labels: list[list[str]],
                   head: int | None = None) -> list[dict] | None:
    """CircuitsVis props of the attention of saved pair ``i`` at one layer (every head, or ``head``)."""
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


def served_file(run: Run, name: str) -> Path | None:
    """The real path of a saved figure file ``name`` (``figures/x.html``, ``causal/figures/x.png``)
    of a run, as the viewer serves it: directly in one of ``FILE_DIRS``, and its resolved path inside
    that folder of the run dir (so inside the run dir and the runs folder). A symlinked file or
    figure folder that leads anywhere else, even elsewhere in the run dir: None."""
    for d in FILE_DIRS:
        if name.startswith(d + "/") and "/" not in name[len(d) + 1:]:
            return contained_file(run.path / d, name[len(d) + 1:])
    return None


def figure_files(run: Run, folder: str) -> list[str]:
    """The saved figure files of one folder of a run (HTML, PNG, SVG, PDF) as paths inside the run;
    only those the viewer serves (``served_file``)."""
    fdir = run.path / folder
    if not fdir.is_dir():
        return []
    return [f"{folder}/{p.name}" for p in sorted(fdir.iterdir())
            if p.suffix in (".html", ".png", ".svg", ".pdf") and served_file(run, f"{folder}/{p.name}") is not None]


def pattern_layers(pats: SavedTensors) -> list[int]:
    """The layers whose attention patterns were saved."""
    out = []
    for k in pats.keys:
        parts = k.split(".")
        if len(parts) == 4 and parts[1].isdigit() and k == PATTERN_TEMPLATE.format(layer=parts[1]):
            out.append(int(parts[1]))
    return sorted(out)

