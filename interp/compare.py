"""Compare two run directories by relative depth: ``python -m interp.compare RUN_A RUN_B``.

The two runs may come from different models (a trained model and its random-weight twin, SmolLM2
and Llama-3-8B, ...). Components cannot be matched one to one across models, so the comparison is
made per hook point and **relative-depth bin**: layer / (n_layers - 1) (0 = first layer, 1 = last),
cut into ``--bins`` equal bins (bin i holds depths in [i/bins, (i+1)/bins), the last bin includes 1).

Per run, hook point and bin (at ``--position``, default the edit token):

- ``share_stable``: share of the components that are stable beyond the control baseline: q < alpha,
  t < 0 (they change less than a control edit) and not flagged ``massive``; NaN when the run has no
  controls (``analysis.controls.n=0``: no q-values);
- ``median_ratio`` (mean |a-b| / mean |a-c|) and ``median_normalized`` (mean |a-b| / spread);
- the divergence profile (category ``all``: mean normalized |a-b| per offset from the edit),
  averaged over the layers of the bin;
- error-detection accuracy per category (grammar pairs: share with log P(a) > log P(b)).

Writes ``compare.parquet`` (one row per run x hook x bin), ``compare_divergence.parquet`` (run x
hook x bin x offset, with the fewest pairs any layer of the bin has at that offset), ``compare.json`` (runs, accuracy side by side, totals, the bins where one run
has stable components and the other none) and plotly figures (HTML with plotly.min.js beside it,
PNG) into ``--out`` (default ``RUN_A/compare_<name of RUN_B>``).

``compare`` reads the runs with ``interp.load_run`` and raises ``interp.result.RunDirError`` (not a
complete run dir) or ``CompareError`` (a position one run lacks); ``main`` turns both into one line
and exit status 2.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import rundir as R
from . import rules
from .result import Result, RunDirError, load_run

COMPARE = "compare.parquet"
COMPARE_DIVERGENCE = "compare_divergence.parquet"
COMPARE_JSON = "compare.json"


def relative_depth(layer, n_layers: int):
    """layer / (n_layers - 1); a one-layer model sits at depth 0."""
    return np.asarray(layer, dtype="float64") / max(int(n_layers) - 1, 1)


def depth_bin(rel, bins: int):
    """Bin index of a relative depth in [0, 1]: floor(rel * bins), the depth 1 in the last bin."""
    return np.minimum(np.floor(np.asarray(rel, dtype="float64") * bins + 1e-9).astype(int), bins - 1)


def stable_mask(stab: pd.DataFrame, alpha: float) -> pd.Series:
    """``interp.rules.stable_mask`` as 1.0 / 0.0 (NaN q-values count as not stable); NaN for every row
    of a run without controls (no q-values: unknown, not "none stable")."""
    if "q_value" not in stab.columns:
        return pd.Series(np.nan, index=stab.index)
    return rules.stable_mask(stab, alpha).astype(float)


class CompareError(ValueError):
    """Two runs that cannot be compared as asked (a position one of them lacks)."""


@dataclass
class Side:
    """One run of the comparison: its ``Result`` and the name its rows carry."""

    result: Result
    name: str

    @property
    def dir(self) -> Path:
        return self.result.run_dir

    @property
    def n_layers(self) -> int:
        return int(self.result.manifest["model"]["n_layers"])

    @property
    def model(self) -> str | None:
        return self.result.manifest["model"].get("name")

    @property
    def controls(self) -> dict:
        c = (self.result.manifest.get("config", {}).get("analysis", {}) or {}).get("controls", {}) or {}
        return {"n": c.get("n"), "pool": c.get("pool")}

    @property
    def divergence(self) -> pd.DataFrame:
        div = self.result.divergence
        return pd.DataFrame() if div is None else div


def side(run: str | Path | Result) -> Side:
    """A run dir (read with ``interp.load_run``) or a saved ``Result`` as one side of the comparison."""
    result = run if isinstance(run, Result) else load_run(run)
    if result.run_dir is None:
        raise RunDirError("the result has no run directory; save it first (Result.save)")
    return Side(result, result.run_dir.name)


def accuracy(pairs: pd.DataFrame) -> dict:
    """Error-detection accuracy per grammar category and over all grammar pairs (with n)."""
    g = pairs[pairs["type"] == "grammar"]
    out = {c: {"n": int(len(d)), "accuracy": rules.accuracy(d["margin"])}
           for c, d in g.groupby("category", sort=True)}
    if len(g):
        out["all_grammar"] = {"n": int(len(g)), "accuracy": rules.accuracy(g["margin"])}
    return out


def bin_table(run: Side, position: str, alpha: float, bins: int) -> pd.DataFrame:
    stab = run.result.stability
    if position not in set(stab["position"]):
        raise CompareError(f"{run.dir}: position {position!r} not in stability.parquet "
                           f"(has {sorted(set(stab['position']))})")
    d = stab[stab["position"] == position].copy()
    d["rel_depth"] = relative_depth(d["layer"], run.n_layers)
    d["bin"] = depth_bin(d["rel_depth"], bins)
    d["stable"] = stable_mask(d, alpha)
    has_ratio = "ratio" in d.columns
    rows = []
    for (hook, b), g in d.groupby(["hook", "bin"], sort=True):
        rows.append({
            "run": run.name, "model": run.model, "n_layers": run.n_layers, "hook": hook,
            "bin": int(b), "bin_lo": b / bins, "bin_hi": (b + 1) / bins,
            "layers": ",".join(str(x) for x in sorted(g["layer"].unique())),
            "n_components": int(len(g)),
            "n_stable": float(g["stable"].sum()) if g["stable"].notna().all() else np.nan,
            "share_stable": float(g["stable"].mean()) if g["stable"].notna().all() else np.nan,
            "median_ratio": float(g["ratio"].median()) if has_ratio else np.nan,
            "median_normalized": float(g["normalized"].median()),
        })
    return pd.DataFrame(rows)


def divergence_table(run: Side, bins: int) -> pd.DataFrame:
    div = run.divergence
    if div.empty:
        return pd.DataFrame(columns=["run", "hook", "bin", "offset", "normalized", "n_pairs"])
    d = div[div["category"] == "all"].copy()
    d["bin"] = depth_bin(relative_depth(d["layer"], run.n_layers), bins)
    out = (d.groupby(["hook", "bin", "offset"], sort=True)
           .agg(normalized=("normalized", "mean"), n_pairs=("n_pairs", "min")).reset_index())
    out.insert(0, "run", run.name)
    return out


def compare(run_a: str | Path | Result, run_b: str | Path | Result, out: str | Path | None = None,
            position: str = "edit", alpha: float = 0.05, bins: int = 10, figures: bool = True,
            png: bool = True) -> dict:
    """Compare two runs (run dirs, or saved ``Result`` objects); writes into ``out`` and returns the
    summary written as ``compare.json`` (plus ``out``)."""
    A, B = side(run_a), side(run_b)
    out = Path(out) if out else A.dir / f"compare_{B.name}"
    if A.name == B.name:  # same folder name in two places: keep the labels apart
        A.name, B.name = f"A:{A.name}", f"B:{B.name}"
    out.mkdir(parents=True, exist_ok=True)
    table = pd.concat([bin_table(A, position, alpha, bins), bin_table(B, position, alpha, bins)],
                      ignore_index=True)
    div = pd.concat([divergence_table(A, bins), divergence_table(B, bins)], ignore_index=True)
    R.write_parquet(out / COMPARE, table)
    R.write_parquet(out / COMPARE_DIVERGENCE, div)

    # bins (per hook) where one run has stable components and the other has none
    wide = table.pivot_table(index=["hook", "bin"], columns="run", values="share_stable", dropna=False)
    only = {A.name: [], B.name: []}
    if A.name in wide.columns and B.name in wide.columns:
        for (hook, b), r in wide.iterrows():
            sa, sb = r[A.name], r[B.name]
            if pd.notna(sa) and pd.notna(sb):
                if sa > 0 and sb == 0:
                    only[A.name].append({"hook": hook, "bin": int(b), "share": float(sa)})
                if sb > 0 and sa == 0:
                    only[B.name].append({"hook": hook, "bin": int(b), "share": float(sb)})
    totals = {}
    for run in (A, B):
        t = table[table["run"] == run.name]
        totals[run.name] = {
            hook: {"n_components": int(g["n_components"].sum()),
                   "n_stable": None if g["n_stable"].isna().any() else int(g["n_stable"].sum()),
                   "share_stable": None if g["n_stable"].isna().any()
                   else float(g["n_stable"].sum() / g["n_components"].sum())}
            for hook, g in t.groupby("hook", sort=True)}
    summary = {
        "position": position, "alpha": alpha, "bins": bins,
        "stable_definition": rules.STABLE_DEFINITION.format(alpha=alpha),
        "runs": {r.name: {"dir": str(r.dir), "model": r.model, "n_layers": r.n_layers,
                          "n_pairs": int(len(r.result.pairs)), "controls": r.controls,
                          "accuracy": accuracy(r.result.pairs)} for r in (A, B)},
        "totals": totals,
        "stable_only_in": only,
        "files": [COMPARE, COMPARE_DIVERGENCE],
    }
    if figures:
        summary["figures"] = write_figures(out, table, div, summary, A.name, B.name, png=png)
    R.write_json(out / COMPARE_JSON, _clean(summary))
    summary["out"] = str(out)
    return summary


def _clean(obj):
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_figures(out: Path, table: pd.DataFrame, div: pd.DataFrame, summary: dict, name_a: str, name_b: str,
                  png: bool = True) -> dict:
    """The comparison's figures (``interp.figures.compare``) into ``out/figures`` as HTML and PNG."""
    from .figures import export
    from .figures.compare import compare_figures

    fdir = out / "figures"
    fdir.mkdir(parents=True, exist_ok=True)
    export.write_plotlyjs(fdir)
    figs = compare_figures(table, div, summary, name_a, name_b)
    written = {"html": [export.save_html(f, fdir, n) for n, f in figs.items()]}
    if png:
        pngs = export.save_pngs(figs, fdir)
        written["png" if "error" not in pngs else "png_error"] = (
            list(pngs.values()) if "error" not in pngs else pngs["error"])
    return written


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m interp.compare",
        description="Compare two run directories (possibly of different models) per hook point and relative-depth "
                    "bin: share of stable components, median ratio and normalized change, divergence profile, "
                    "error-detection accuracy. Writes compare.parquet, compare_divergence.parquet, compare.json "
                    "and figures into --out.")
    ap.add_argument("run_a", help="first run directory (holding manifest.json)")
    ap.add_argument("run_b", help="second run directory")
    ap.add_argument("--out", default=None, help="output folder [RUN_A/compare_<name of RUN_B>]")
    ap.add_argument("--position", default="edit", help="token position mode compared: edit | last | after [edit]")
    ap.add_argument("--alpha", type=float, default=0.05,
                    help="FDR level of the stable rule (%s) [0.05]" % rules.STABLE_DEFINITION.replace("%", "%%"))
    ap.add_argument("--bins", type=int, default=10, help="number of relative-depth bins [10]")
    ap.add_argument("--no-figures", action="store_true", help="tables and compare.json only")
    ap.add_argument("--no-png", action="store_true", help="HTML figures only (no kaleido)")
    a = ap.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        s = compare(a.run_a, a.run_b, a.out, a.position, a.alpha, a.bins, figures=not a.no_figures,
                    png=not a.no_png)
    except (RunDirError, CompareError) as err:  # a run dir or position that does not fit: one line, exit status 2
        print(f"python -m interp.compare: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"compare -> {s['out']}")
    for name, r in s["runs"].items():
        acc = r["accuracy"].get("all_grammar", {})
        print(f"{name}: model {r['model']}, {r['n_layers']} layers, {r['n_pairs']} pairs, controls {r['controls']}, "
              f"grammar accuracy {acc.get('accuracy', float('nan')):.3f} (n={acc.get('n', 0)})")
        for hook, t in s["totals"][name].items():
            print(f"  {hook}: {t['n_stable']} / {t['n_components']} stable ({t['share_stable']})")
    for name, lst in s["stable_only_in"].items():
        if lst:
            print(f"stable only in {name}: " + ", ".join(f"{x['hook']} bin {x['bin']}" for x in lst))


if __name__ == "__main__":
    main()
