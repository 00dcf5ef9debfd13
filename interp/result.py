"""``Result``: an analysis in memory (tables as DataFrames, the manifest), and its run directory.

``interp.analyze`` returns a ``Result``; nothing is written until ``Result.save(dir)``, which writes
the run directory every command and the viewer read (``README.md``: the output contract).
``load_run(dir)`` reads one back; tables are read when first used, so opening a large run is cheap.

    >>> r = interp.analyze(model, [("She is good at math.", "She is good of math.")])
    >>> r.stability.nsmallest(5, "rank")
    >>> r.save("outputs/runs/mine")              # python -m interp.view shows it
    >>> interp.load_run("outputs/runs/mine").pairs
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Callable

import pandas as pd

from . import rundir as R
from .rundir import RunDirError
from .rules import STABLE_DEFINITION, Rule, stable_mask, summarize

# table name -> file; the order is the order ``save`` writes them in
TABLES = {
    "pairs": R.PAIRS,
    "stability": R.STABILITY,
    "stability_by_category": R.STABILITY_BY_CATEGORY,
    "contrast": R.CONTRAST,
    "divergence": R.DIVERGENCE,
    "directions": R.DIRECTIONS,
    "pair_profile": R.PAIR_PROFILE,
    "pair_components": R.PAIR_COMPONENTS,
}
BLIMP_TABLES = ("blimp_paradigms", "blimp_phenomena")
TENSOR_FILES = (R.STATS, R.ACTIVATIONS, R.PATTERNS, R.PAIR_VALUES)

Table = pd.DataFrame | Callable[[], pd.DataFrame | None] | None
REJECTED_COLUMNS = ["source", "line", "reason", "detail", "a", "b", "category", "pair_id"]


def check_target(out: Path, own: Path | None = None, overwrite: bool = False) -> None:
    """Refuse to save into a folder that holds another complete run (``overwrite``: allow it)."""
    if not overwrite and R.is_complete(out) and (own is None or out.resolve() != own.resolve()):
        raise FileExistsError(f"{out} already holds a complete run; save to a new folder (or overwrite=True)")


def clear_run(run_dir: Path) -> None:
    """Remove a finished run's result files (tables, tensors, figures, causal checks, manifest),
    keeping what is not the run's output (Hydra's ``.hydra/``, logs)."""
    names = {*TABLES.values(), *TENSOR_FILES, R.REJECTED, R.MANIFEST, *(f"{n}.parquet" for n in BLIMP_TABLES)}
    for p in run_dir.iterdir():
        if p.name in names and p.is_file():
            p.unlink()
        elif p.name in (R.FIGURES, "causal") and p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)


class Result:
    """One analysis: its tables (``pairs``, ``stability``, ``stability_by_category``, ``contrast``,
    ``divergence``, ``pair_profile``, ``pair_components``, ``rejected``; the run dir's columns),
    ``manifest`` (dict), ``config`` (the resolved config, a dict) and ``run_dir`` (where it was
    saved or loaded from, else None). A table a run did not produce is None."""

    def __init__(self, manifest: dict, tables: dict[str, Table], rejected_rows: list[dict] | None = None,
                 tensors: dict[str, tuple[dict, dict]] | None = None, run_dir: Path | None = None,
                 extra_tables: dict[str, Table] | None = None):
        self.manifest = manifest
        self._tables: dict[str, Table] = dict(tables)
        self._extra: dict[str, Table] = dict(extra_tables or {})
        self._rejected_rows = rejected_rows
        self._tensors = tensors or {}  # file name -> (tensors, metadata); from a run dir: copied
        self.run_dir = Path(run_dir) if run_dir else None
        # the analysis's own time (from the manifest it was made or loaded with): each save adds its writing
        self._analysis_s: float | None = manifest.get("timings", {}).get("total_s")

    # ------------------------------------------------------------ tables

    def _get(self, store: dict[str, Table], name: str) -> pd.DataFrame | None:
        v = store.get(name)
        if callable(v):
            v = store[name] = v()
        return v

    def table(self, name: str) -> pd.DataFrame | None:
        """A table by name: one of ``TABLES``, ``rejected``, or an extra table (BLiMP reports)."""
        if name == "rejected":
            return self.rejected
        if name in TABLES:
            return self._get(self._tables, name)
        if name in self._extra:
            return self._get(self._extra, name)
        raise KeyError(f"no table {name!r}; tables: {', '.join([*TABLES, 'rejected', *self._extra])}")

    pairs = property(lambda self: self.table("pairs"), doc="one row per kept pair (pairs.parquet)")
    stability = property(lambda self: self.table("stability"), doc="one row per component (stability.parquet)")
    stability_by_category = property(lambda self: self.table("stability_by_category"))
    contrast = property(lambda self: self.table("contrast"))
    divergence = property(lambda self: self.table("divergence"))
    directions = property(lambda self: self.table("directions"), doc="distinct directions of the stable set")
    pair_profile = property(lambda self: self.table("pair_profile"))
    pair_components = property(lambda self: self.table("pair_components"))

    @property
    def rejected(self) -> pd.DataFrame:
        """Every unused pair or line with its reason (rejected.jsonl); failed pairs add their own columns."""
        rows = self.rejected_rows
        return pd.DataFrame(rows) if rows else pd.DataFrame(columns=REJECTED_COLUMNS)

    @property
    def rejected_rows(self) -> list[dict]:
        if self._rejected_rows is None:
            path = self.run_dir / R.REJECTED if self.run_dir else None
            self._rejected_rows = R.read_jsonl(path) if path and path.exists() else []
        return self._rejected_rows

    @property
    def extra_tables(self) -> list[str]:
        return list(self._extra)

    @property
    def config(self) -> dict:
        return self.manifest["config"]

    def stable(self, position: str | None = None, alpha: float | None = None) -> pd.DataFrame:
        """Rows of ``stability`` that are stable beyond the control baseline under the run's rule
        (``interp.rules``); ``alpha`` matters to the significance rule only."""
        stab = self.stability
        if position is not None:
            stab = stab[stab["position"] == position]
        return stab[self.stable_mask(stab, alpha)]

    def stable_mask(self, stab: pd.DataFrame, alpha: float | None = None, rule: str | None = None) -> pd.Series:
        """``interp.rules.stable_mask`` with this run's rule and thresholds (``alpha``/``rule``: another)."""
        return stable_mask(stab, self.alpha if alpha is None else alpha, rule or self.rule, self.stable_ratio)

    @property
    def run_rule(self) -> Rule:
        """The run's rule for "stable" and its thresholds (``interp.rules.Rule.of_run``)."""
        return Rule.of_run(self.config["analysis"])

    @property
    def alpha(self) -> float:
        return self.run_rule.alpha

    @property
    def rule(self) -> str:
        """The run's rule for "stable" (runs before ``analysis.rule`` existed: significance)."""
        return self.run_rule.rule

    @property
    def stable_ratio(self) -> float:
        return self.run_rule.stable_ratio

    @property
    def null(self) -> str:
        """The control pool the run compared with (``analysis.controls.pool``)."""
        c = self.config["analysis"]["controls"]
        return "words" if c.get("words") else str(c["pool"])

    def pair_values(self, hook: str | None = None, layer: int | None = None,
                    position: str | None = None) -> pd.DataFrame | None:
        """The per-pair values the clustered statistics were computed from (``pair_values.parquet``),
        for one hook point, layer or position mode (None: all); None if the run kept none."""
        if R.PAIR_VALUES in self._tensors:
            return self._tensors[R.PAIR_VALUES][0].frame(hook, layer, position)
        path = self.run_dir / R.PAIR_VALUES if self.run_dir else None
        if path is None or not path.exists():
            return None
        filters = [(k, "==", v) for k, v in (("hook", hook), ("layer", layer), ("position", position)) if v is not None]
        return pd.read_parquet(path, filters=filters or None)

    def accuracy(self) -> pd.DataFrame:
        """Per category: pairs, mean margin, error-detection accuracy (grammar categories)."""
        return summarize(self.pairs)

    # ------------------------------------------------------------ text

    def summary(self) -> str:
        """What ``python -m interp.run`` prints at the end: counts, accuracy, the most stable components."""
        m = self.manifest
        c = m["counts"]
        lines = [f"\npairs: {c['kept']} kept, {c['rejected']} rejected, {c['unreadable_lines']} unreadable lines"
                 + (f", {c['failed_in_forward']} failed" if c["failed_in_forward"] else "")]
        if c["rejected_by_reason"]:
            lines.append("  rejected: " + ", ".join(f"{k}={v}" for k, v in sorted(c["rejected_by_reason"].items())))
        lines.append("error detection (share of pairs with log P(a) > log P(b)):")
        for r in self.accuracy().itertuples():
            acc = f"{r.accuracy:6.1%}" if r.type == "grammar" and pd.notna(r.accuracy) else "   n/a"
            lines.append(f"  {r.category:<24} {r.type:<9} n={r.n_pairs:<5} accuracy={acc}  "
                         f"mean margin={r.mean_margin:+.3f}")
        stab = self.stability
        top_k = int(m["config"]["analysis"]["top_k"])
        if stab is not None and not stab.empty:
            pos = m["positions"][0]
            d = stab[stab["position"] == pos]
            if "q_value" in d:
                sig = d[self.stable_mask(d)]
                lines.append(f"null: {self._null_text()}")
                lines.append(f"rule: {self.run_rule.definition}")
                for p in m["positions"]:  # every position mode: its count and how its intervals were computed
                    dp = stab[stab["position"] == p]
                    sp = dp[self.stable_mask(dp)]
                    how = ""
                    if "se_method" in dp:
                        how = " (intervals: " + ", ".join(f"{k} {v}" for k, v in dp["se_method"].value_counts().items())
                        how += "; iid = per-pair values not kept, analysis.pair_values)" if (dp["se_method"] == "iid").any() \
                            else ")"
                    lines.append(f"stable at '{p}': {len(sp)} of {dp['q_value'].notna().sum()} components"
                                 + (f", {sp['component'].nunique()} distinct component indices" if len(sp) else "") + how)
                lines.append(f"most stable at '{pos}':")
                order = "ratio_hi" if self.rule == "equivalence" and "ratio_hi" in d else "rank_calibrated"
                for r in sig.nsmallest(min(top_k, 10), order).itertuples():
                    ci = (f"  CI [{r.ratio_lo:.3f}, {r.ratio_hi:.3f}]" if hasattr(r, "ratio_hi") else "")
                    lines.append(f"  {r.hook}[{r.layer}].{r.component:<6} edit/control={r.ratio:.3f}{ci}  "
                                 f"normalized={r.normalized:.4f}  q={r.q_value:.2g}")
            else:
                lines.append(f"most stable components at '{pos}' (normalized |a-b| = mean |a-b| / spread; "
                             "no control baseline):")
                for r in d.nsmallest(min(top_k, 10), "normalized").itertuples():
                    lines.append(f"  {r.hook}[{r.layer}].{r.component:<6} normalized={r.normalized:.4f}  "
                                 f"mean|a-b|={r.mean_abs_diff:.4g}")
        note = not_written(m)
        if note:  # several categories, no per-category table: why, and how to get it
            lines.append(note)
        lines.append(f"run dir: {self.run_dir}" if self.run_dir else "not saved (Result.save(dir) writes a run dir)")
        if "blimp_paradigms" in self._extra:
            from .pairs.blimp import format_blimp_summary
            lines += format_blimp_summary({n: self.table(n) for n in BLIMP_TABLES})
        return "\n".join(lines)

    def _null_text(self) -> str:
        c = self.config["analysis"]["controls"]
        facts = self.manifest.get("controls") or {}
        k = facts.get("k", c["n"])
        text = f"{self.null} ({k} control edit{'s' if k != 1 else ''} per pair"
        if facts.get("median_dist_ab") is not None and facts.get("median_dist_ac_mean") is not None:
            text += (f"; median cosine distance in the input embedding: real edit {facts['median_dist_ab']:.3f}, "
                     f"controls {facts['median_dist_ac_mean']:.3f}")
        return text + ")"

    def __repr__(self) -> str:
        c = self.manifest.get("counts", {})
        where = f" at {self.run_dir}" if self.run_dir else ""
        return (f"<interp.Result{where}: {c.get('kept')} pairs kept, {c.get('rejected')} rejected, "
                f"hooks {sorted({h['point'] for h in self.manifest.get('hooks', [])})}>")

    # ------------------------------------------------------------ writing

    def save(self, run_dir: str | Path, figures: bool | None = None, png: bool | None = None,
             overwrite: bool = False) -> Path:
        """Write the run directory (every table, the statistics, saved activations, figures, and
        ``manifest.json`` last). ``figures``/``png`` default to the run's ``analysis.figures`` and
        ``analysis.png``. A folder that already holds another complete run is refused unless
        ``overwrite`` (what ``python -m interp.run`` does when run again into the same folder)."""
        t0 = time.time()
        out = Path(run_dir)
        check_target(out, self.run_dir, overwrite)
        if R.is_complete(out) and (self.run_dir is None or out.resolve() != self.run_dir.resolve()):
            clear_run(out)  # replaced entirely: nothing of the old run stays beside the new one
        out.mkdir(parents=True, exist_ok=True)
        for name, file in TABLES.items():
            df = self.table(name)
            if df is not None:
                R.write_table(out / file, df)
        R.write_jsonl(out / R.REJECTED, self.rejected_rows)
        self._write_tensors(out)
        for name in self._extra:
            R.write_table(out / f"{name}.parquet", self.table(name))
        acfg = self.config["analysis"]
        timings = {k: v for k, v in self.manifest.get("timings", {}).items() if k != "total_s"}
        timings["write_s"] = time.time() - t0
        figure_info = {}
        if acfg["figures"] if figures is None else figures:
            t = time.time()
            from .figures import write_run_figures

            figure_info = write_run_figures(out, self.stability, self.pairs, top_k=int(acfg["top_k"]),
                                            png=bool(acfg["png"] if png is None else png), rule=self.rule,
                                            stable_ratio=self.stable_ratio)
            timings["figures_s"] = time.time() - t
        if self._analysis_s is not None:
            timings["total_s"] = self._analysis_s + (time.time() - t0)
        manifest = {**self.manifest, "run_dir": str(out.resolve()), "figures": figure_info, "timings": timings}
        R.write_json(out / R.MANIFEST, manifest)
        self.manifest, self.run_dir = manifest, out
        return out

    def _write_tensors(self, out: Path) -> None:
        for file in TENSOR_FILES:
            if file in self._tensors:
                tensors, meta = self._tensors[file]
                if file.endswith(".parquet"):  # a writer of its own (pair_values.parquet)
                    with R.atomic_path(out / file) as tmp:
                        tensors(tmp)
                    continue
                if callable(tensors):
                    tensors = tensors()
                R.write_safetensors(out / file, tensors, meta)
            elif self.run_dir is not None and (self.run_dir / file).exists() and \
                    (self.run_dir / file).resolve() != (out / file).resolve():
                shutil.copyfile(self.run_dir / file, out / file)


def not_written(manifest: dict) -> str | None:
    """Why a run dir has no ``stability_by_category.parquet`` though its pairs have several
    categories, in one line that names the setting that writes it; None otherwise (and for runs
    written before the setting existed, which had the table whenever they had several categories)."""
    bc = manifest.get("by_category") or {}
    if bc.get("written") is not False or len(manifest.get("groups") or []) < 2:
        return None
    return f"stability_by_category.parquet not written ({bc.get('reason')}): analysis.by_category=true writes it"


def load_run(run_dir: str | Path) -> Result:
    """The ``Result`` of a run directory written by ``python -m interp.run`` or ``Result.save``."""
    run = Path(run_dir)
    if not run.is_dir():
        raise RunDirError(f"{run}: no such directory")
    if not (run / R.MANIFEST).is_file():
        raise RunDirError(f"{run}: not a run directory (no {R.MANIFEST})")
    try:
        manifest = R.read_manifest(run)  # a run newer than this code: SchemaVersionError, a RunDirError
    except R.SchemaVersionError:
        raise
    except (OSError, ValueError) as err:
        raise RunDirError(f"{run / R.MANIFEST}: unreadable ({err})") from err
    if manifest.get("status") != "complete":
        raise RunDirError(f"{run}: the run is not complete (status {manifest.get('status')!r})")

    def reader(file: str) -> Callable[[], pd.DataFrame | None]:
        return lambda: pd.read_parquet(run / file) if (run / file).exists() else None

    extra = {n: reader(f"{n}.parquet") for n in BLIMP_TABLES if (run / f"{n}.parquet").exists()}
    return Result(manifest, {name: reader(file) for name, file in TABLES.items()}, None, None, run, extra)


__all__ = ["Result", "load_run", "RunDirError", "STABLE_DEFINITION"]

