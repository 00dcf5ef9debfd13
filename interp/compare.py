"""Compare two run directories by relative depth: ``python -m interp.compare RUN_A RUN_B``.

The two runs may come from different models (a trained model and its random-weight twin, SmolLM2
and Llama-3-8B, ...). Components cannot be matched one to one across models, so the comparison is
made per hook point and **relative-depth bin**: layer / (n_layers - 1) (0 = first layer, 1 = last),
cut into ``--bins`` equal bins (bin i holds depths in [i/bins, (i+1)/bins), the last bin includes 1).

Per run, hook point and bin (at ``--position``, default the edit token):

- ``share_stable``: share of the components that are stable beyond the control baseline under the
  run's own rule (``analysis.rule``, ``interp.rules``: ``equivalence`` = ratio_hi < stable_ratio,
  ``significance`` = q < alpha and t < 0; never a constant, offset or massive component); NaN when
  the run has no controls (``analysis.controls.n=0``) or its table lacks the rule's statistic (an
  older table has no ``ratio_hi``). Runs whose rules differ are refused unless ``--rule`` names one
  rule for both (``--alpha``, ``--stable-ratio``: its thresholds); older runs, whose config names no
  rule, count as ``significance``. Each row names its run's ``null`` (control pool), ``k`` (control
  edits per pair) and ``rule``;
- ``median_ratio`` (mean |a-b| / mean |a-c|) and ``median_normalized`` (mean |a-b| / spread), and
  where the run has them ``median_ratio_lo`` / ``median_ratio_hi`` (medians of the ends of the
  ratio's confidence interval) and ``median_adj_normalized`` (the regression-adjusted effect);
- the divergence profile (category ``all``: mean normalized |a-b| per offset from the edit),
  averaged over the layers of the bin;
- error-detection accuracy per category (grammar pairs: share with log P(a) > log P(b)).

Writes ``compare.parquet`` (one row per run x hook x bin), ``compare_divergence.parquet`` (run x
hook x bin x offset, with the fewest pairs any layer of the bin has at that offset), ``compare.json`` (runs
with their null and rule, accuracy side by side, totals, the bins where one run has stable
components and the other none) and plotly figures (HTML with plotly.min.js beside it,
PNG) into ``--out`` (default ``RUN_A/compare_<name of RUN_B>``).

``compare`` reads the runs with ``interp.load_run`` and raises ``interp.result.RunDirError`` (not a
complete run dir) or ``CompareError`` (a position one run lacks, rules that differ without
``rule=``); ``main`` turns both into one line and exit status 2.
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
from .rules import Rule
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


def stable_mask(stab: pd.DataFrame, alpha: float = 0.05, rule: str = "significance",
                stable_ratio: float = 0.5) -> pd.Series:
    """``interp.rules.stable_mask`` as 1.0 / 0.0 (NaN statistics count as not stable); NaN for every
    row of a table the rule cannot be applied to: no q-values (a run without controls) or, under
    ``equivalence``, no ``ratio_hi`` (a table written before it existed): unknown, not "none stable"."""
    if "q_value" not in stab.columns or (rule == "equivalence" and "ratio_hi" not in stab.columns):
        return pd.Series(np.nan, index=stab.index)
    return rules.stable_mask(stab, alpha, rule, stable_ratio).astype(float)


class CompareError(ValueError):
    """Two runs that cannot be compared as asked (a position one of them lacks, rules that differ)."""


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
    def analysis(self) -> dict:
        return self.result.manifest.get("config", {}).get("analysis", {}) or {}

    @property
    def controls(self) -> dict:
        c = self.analysis.get("controls", {}) or {}
        drawn = self.result.manifest.get("controls") or {}
        return {"n": c.get("n"), "pool": c.get("pool"), "k": drawn.get("k", drawn.get("n", c.get("n")))}

    @property
    def has_controls(self) -> bool:
        stab = self.result.stability
        return stab is not None and "q_value" in stab.columns

    @property
    def null(self) -> str | None:
        """The control pool the run compared with; None without controls."""
        if not self.has_controls:
            return None
        c = self.analysis.get("controls", {}) or {}
        drawn = self.result.manifest.get("controls") or {}
        return "words" if c.get("words") else (c.get("pool") or drawn.get("pool"))

    @property
    def own_rule(self) -> Rule:
        """The run's rule and thresholds (older runs: significance)."""
        return Rule.of_run(self.analysis)

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


def bin_table(run: Side, position: str, rule: Rule, bins: int) -> pd.DataFrame:
    stab = run.result.stability
    if position not in set(stab["position"]):
        raise CompareError(f"{run.dir}: position {position!r} not in stability.parquet "
                           f"(has {sorted(set(stab['position']))})")
    d = stab[stab["position"] == position].copy()
    d["rel_depth"] = relative_depth(d["layer"], run.n_layers)
    d["bin"] = depth_bin(d["rel_depth"], bins)
    d["stable"] = stable_mask(d, rule.alpha, rule.rule, rule.stable_ratio)
    has_ratio = "ratio" in d.columns
    extra = [c for c in ("ratio_lo", "ratio_hi", "adj_normalized") if c in d.columns]
    null, k = run.null, run.controls["k"] if run.has_controls else None
    rows = []
    for (hook, b), g in d.groupby(["hook", "bin"], sort=True):
        rows.append({
            "run": run.name, "model": run.model, "n_layers": run.n_layers, "null": null,
            "k": np.nan if k is None else float(k), "rule": rule.rule if run.has_controls else None,
            "hook": hook,
            "bin": int(b), "bin_lo": b / bins, "bin_hi": (b + 1) / bins,
            "layers": ",".join(str(x) for x in sorted(g["layer"].unique())),
            "n_components": int(len(g)),
            "n_stable": float(g["stable"].sum()) if g["stable"].notna().all() else np.nan,
            "share_stable": float(g["stable"].mean()) if g["stable"].notna().all() else np.nan,
            "median_ratio": float(g["ratio"].median()) if has_ratio else np.nan,
            **{f"median_{c}": float(g[c].median()) if c in extra else np.nan
               for c in ("ratio_lo", "ratio_hi", "adj_normalized")},
            "median_normalized": float(g["normalized"].median()),
        })
    return pd.DataFrame(rows)


def rules_for(A: Side, B: Side, rule: str | None = None, alpha: float | None = None,
              stable_ratio: float | None = None) -> tuple[Rule, Rule]:
    """The rule each run's stable share is counted under. ``rule`` None: each run's own
    (``alpha``/``stable_ratio`` given: those thresholds instead of the runs'), refused with
    ``CompareError`` where the two differ; ``rule`` given: that rule for both, with ``alpha`` /
    ``stable_ratio`` or the defaults (0.05, 0.5). A run without controls is counted under none."""
    if rule is not None:
        if rule not in rules.RULES:
            raise CompareError(f"rule {rule!r} is not one of {', '.join(rules.RULES)}")
        return tuple(Rule(rule, 0.05 if alpha is None else alpha, 0.5 if stable_ratio is None else stable_ratio,
                          s.own_rule.ci) for s in (A, B))
    ra, rb = (Rule(r.rule, r.alpha if alpha is None else alpha, r.stable_ratio if stable_ratio is None
                   else stable_ratio, r.ci) for r in (A.own_rule, B.own_rule))
    if A.has_controls and B.has_controls and ra.key != rb.key:
        raise CompareError(
            f"the runs decide 'stable' by different rules: {A.name}: {ra.definition}; {B.name}: {rb.definition}"
            " - their stable shares would not be comparable; pass --rule equivalence or --rule significance "
            "(compare(rule=...)) to count both under one rule")
    return ra, rb


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
            position: str = "edit", alpha: float | None = None, bins: int = 10, figures: bool = True,
            png: bool = True, rule: str | None = None, stable_ratio: float | None = None) -> dict:
    """Compare two runs (run dirs, or saved ``Result`` objects); writes into ``out`` and returns the
    summary written as ``compare.json`` (plus ``out``). The stable shares use each run's own rule
    unless ``rule`` names one for both (``rules_for``: differing rules without it raise
    ``CompareError``); ``alpha``/``stable_ratio``: thresholds instead of the runs' own."""
    A, B = side(run_a), side(run_b)
    out = Path(out) if out else A.dir / f"compare_{B.name}"
    if A.name == B.name:  # same folder name in two places: keep the labels apart
        A.name, B.name = f"A:{A.name}", f"B:{B.name}"
    rule_a, rule_b = rules_for(A, B, rule, alpha, stable_ratio)
    table = pd.concat([bin_table(A, position, rule_a, bins), bin_table(B, position, rule_b, bins)],
                      ignore_index=True)
    out.mkdir(parents=True, exist_ok=True)
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
    used = {A.name: rule_a, B.name: rule_b}
    counted = [used[r.name] for r in (A, B) if r.has_controls]
    definitions = list(dict.fromkeys(x.definition for x in counted))
    summary = {
        "position": position, "alpha": counted[0].alpha if counted else alpha, "bins": bins,
        "rule": (counted[0].rule if len(definitions) == 1 else None) if counted else None,
        "rule_forced": rule is not None,
        "stable_definition": definitions[0] if len(definitions) == 1 else
        "; ".join(f"{r.name}: {used[r.name].definition}" for r in (A, B) if r.has_controls) or None,
        "runs": {r.name: {"dir": str(r.dir), "model": r.model, "n_layers": r.n_layers,
                          "n_pairs": int(len(r.result.pairs)), "controls": r.controls, "null": r.null,
                          "null_facts": {k: v for k, v in (r.result.manifest.get("controls") or {}).items()
                                         if k.startswith("median_")} if r.has_controls else {},
                          "own_rule": r.own_rule.rule if r.has_controls else None,
                          "rule": used[r.name].rule if r.has_controls else None,
                          "stable_definition": used[r.name].definition if r.has_controls else None,
                          "cluster": r.analysis.get("cluster") if r.has_controls else None,
                          "ci_columns": [c for c in ("ratio_lo", "ratio_hi", "adj_lo", "adj_hi")
                                         if c in r.result.stability.columns],
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
    ap.add_argument("--rule", choices=rules.RULES, default=None,
                    help="count 'stable' in both runs under this rule (equivalence: %s; significance: %s) "
                         "[each run's own analysis.rule; runs whose rules differ are refused without --rule]"
                    % (rules.DEFINITIONS["equivalence"].format(stable_ratio="STABLE_RATIO", ci=0.95).replace(
                        "%", "%%"), rules.DEFINITIONS["significance"].format(alpha="ALPHA")))
    ap.add_argument("--alpha", type=float, default=None,
                    help="FDR level of the significance rule [each run's analysis.alpha; with --rule: 0.05]")
    ap.add_argument("--stable-ratio", type=float, default=None,
                    help="threshold of the equivalence rule [each run's analysis.stable_ratio; with --rule: 0.5]")
    ap.add_argument("--bins", type=int, default=10, help="number of relative-depth bins [10]")
    ap.add_argument("--no-figures", action="store_true", help="tables and compare.json only")
    ap.add_argument("--no-png", action="store_true", help="HTML figures only (no kaleido)")
    a = ap.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        s = compare(a.run_a, a.run_b, a.out, a.position, a.alpha, a.bins, figures=not a.no_figures,
                    png=not a.no_png, rule=a.rule, stable_ratio=a.stable_ratio)
    except (RunDirError, CompareError) as err:  # a run dir, position or rule that does not fit: one line, status 2
        print(f"python -m interp.compare: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"compare -> {s['out']}")
    for name, r in s["runs"].items():
        acc = r["accuracy"].get("all_grammar", {})
        print(f"{name}: model {r['model']}, {r['n_layers']} layers, {r['n_pairs']} pairs, "
              f"grammar accuracy {acc.get('accuracy', float('nan')):.3f} (n={acc.get('n', 0)})")
        if r["null"] is None:
            print("  null: none (no control edits), nothing counted as stable")
        else:
            forced = " (forced by --rule)" if s["rule_forced"] and r["rule"] != r["own_rule"] else ""
            print(f"  null: {r['null']} pool, {r['controls']['k']} control edits per pair"
                  + (f", cluster: {r['cluster']}" if r["cluster"] else ""))
            print(f"  rule: {r['stable_definition']}{forced}")
        for hook, t in s["totals"][name].items():
            print(f"  {hook}: {t['n_stable']} / {t['n_components']} stable ({t['share_stable']})")
    for name, lst in s["stable_only_in"].items():
        if lst:
            print(f"stable only in {name}: " + ", ".join(f"{x['hook']} bin {x['bin']}" for x in lst))


if __name__ == "__main__":
    main()
