"""Compare run directories by relative depth: ``python -m interp.compare RUN_A RUN_B [RUN_C ...]``.

The runs may come from different models and model families (a trained model and its random-weight
twin; GPT-2, Pythia, Gemma, Qwen2, Mistral, Llama, ...), with different numbers of layers, widths
and hook points. Components cannot be matched one to one across models, so the comparison is made
per hook point and **relative-depth bin**: layer / (n_layers - 1) (0 = first layer, 1 = last), cut
into ``--bins`` equal bins (bin i holds depths in [i/bins, (i+1)/bins), the last bin includes 1).

Each run is named by a label (the ``run`` column of the tables, the keys of ``compare.json``, the
legends): ``--names A,B,C`` (``compare(names=[...])``), else its model's name from the manifest
(``model.name``). Runs whose model names coincide (two runs of one model, such as the tests' tiny
Llama) are named by their folder instead, and folders of one name get ``A:``, ``B:``, ... in front
(the order of the runs).

Per run, hook point and bin (at ``--position``, default the edit token):

- ``share_stable``: share of the components that are stable beyond the control baseline under the
  run's own rule (``analysis.rule``, ``interp.rules``: ``equivalence`` = ratio_hi < stable_ratio,
  ``significance`` = q < alpha and t < 0; never a constant, offset or massive component); NaN when
  the run has no controls (``analysis.controls.n=0``) or its table lacks the rule's statistic (an
  older table has no ``ratio_hi``). Runs whose rules differ are refused unless ``--rule`` names one
  rule for all (``--alpha``, ``--stable-ratio``: its thresholds); older runs, whose config names no
  rule, count as ``significance``. Each row names its run's ``null`` (control pool), ``k`` (control
  edits per pair) and ``rule``;
- ``median_ratio`` (mean |a-b| / mean |a-c|) and ``median_normalized`` (mean |a-b| / spread), and
  where the run has them ``median_ratio_lo`` / ``median_ratio_hi`` (medians of the ends of the
  ratio's confidence interval) and ``median_adj_normalized`` (the regression-adjusted effect);
- ``atp_mass``: where the run has attribution-patching results (``RUN/causal/atp.parquet``, written
  by ``python -m interp.patch run=RUN``, at the compared position), the share of the hook point's
  AtP mass in the bin: sum of |atp_mean| (a component's mean estimated patching effect on the
  post-edit margin) over the bin's components / the same over every bin of the hook point, so it
  sums to 1 over the bins of each run and hook point; ``atp_mass_run``: the bin's sum over the
  run's total over every hook point of its AtP table but ``z_head`` (whose per-head units re-count
  ``z``'s dimensions; hook points of different runs differ, so compare this one within a run);
  ``atp_abs_sum``: the bin's sum itself (nats, not comparable across models). NaN where the run has
  no complete ``causal/`` with ``atp.parquet``, or its AtP table lacks the position; a bin that
  only AtP covers gets a row with ``n_components`` 0;
- the divergence profile (category ``all``: mean normalized |a-b| per offset from the edit),
  averaged over the layers of the bin;
- error-detection accuracy per category (grammar pairs: share with log P(a) > log P(b)).

A hook point that some runs lack (GPT-NeoX's parallel attention has no ``resid_mid``; a run made
with fewer hook points) is simply absent from those runs' rows; ``compare.json`` lists per run the
hook points it lacks (``missing_hooks``: those of the other runs).

Writes into ``--out`` (default ``RUN_A/compare_<folder name of RUN_B>`` for two runs,
``RUN_A/compare_<n>runs`` for n > 2):

- ``compare.parquet``: one row per run x hook x bin (the columns above);
- ``compare_divergence.parquet``: run x hook x bin x offset, with the fewest pairs any layer of the
  bin has at that offset;
- ``compare_summary.csv`` and ``compare_summary.md`` (the same as a markdown table): one row per run
  x hook point: label, model, family and architecture, n_layers, d_model, pairs, grammar accuracy,
  the run's hook points and those it lacks, null and rule, the hook point's share stable overall and
  per depth bin (columns ``stable <lo>-<hi>``) and, where any run has AtP, its AtP mass per depth
  bin (``atp <lo>-<hi>``);
- ``compare.json``: the runs (dir, model, family, architecture, shape, hook points and those lacking,
  null and rule, accuracy, AtP: whether and why not), totals, the bins where one run has stable
  components and every other run with a known share there has none, what AtP was found
  (``atp.runs``; ``atp.figure`` false and ``atp.note`` where no run has any), the files;
- ``figures/`` (plotly HTML with plotly.min.js beside it, PNG): ``compare_share_stable``,
  ``compare_median_ratio``, ``compare_median_normalized`` (one panel per hook point, one line per
  run against relative depth), ``compare_atp_mass`` (the same, only where some run has AtP),
  ``compare_divergence`` (depth bin x offset heatmaps, one column per run), ``compare_accuracy``.

``compare(*runs, out=...)`` reads the runs with ``interp.load_run`` and raises
``interp.result.RunDirError`` (not a complete run dir) or ``CompareError`` (fewer than two runs, a
position one run lacks, rules that differ without ``rule=``, names that are not one per run or not
distinct); ``main`` turns both into one line and exit status 2. The two-run call of earlier
versions, ``compare(run_a, run_b, out)``, still works: a third positional argument that is not a
run dir (absent, empty, or holding an earlier ``compare.json``) is taken as ``out``.
"""

from __future__ import annotations

import argparse
import math
import string
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from . import rundir as R
from . import rules
from .rules import Rule
from .result import Result, RunDirError, load_run

COMPARE = "compare.parquet"
COMPARE_DIVERGENCE = "compare_divergence.parquet"
COMPARE_JSON = "compare.json"
COMPARE_SUMMARY = "compare_summary.csv"
COMPARE_SUMMARY_MD = "compare_summary.md"
# where python -m interp.patch writes its AtP table (interp.causal.checks.CAUSAL / ATP; not imported
# from there: interp.causal loads torch)
CAUSAL = "causal"
ATP = "atp.parquet"
ATP_COLUMNS = ("atp_abs_sum", "atp_mass", "atp_mass_run")
# the family (Hugging Face model_type) of an architecture, for runs whose manifest names none
FAMILIES = {"LlamaForCausalLM": "llama", "GPT2LMHeadModel": "gpt2", "GPTNeoXForCausalLM": "gpt_neox",
            "GemmaForCausalLM": "gemma", "Gemma2ForCausalLM": "gemma2", "Gemma3ForCausalLM": "gemma3_text",
            "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3", "MistralForCausalLM": "mistral"}
PER_HEAD = "z_head"  # AtP's per-head units of z: left out of a run's total (they re-count z's dimensions)


def relative_depth(layer, n_layers: int):
    """layer / (n_layers - 1); a one-layer model sits at depth 0."""
    return np.asarray(layer, dtype="float64") / max(int(n_layers) - 1, 1)


def depth_bin(rel, bins: int):
    """Bin index of a relative depth in [0, 1]: floor(rel * bins), the depth 1 in the last bin."""
    return np.minimum(np.floor(np.asarray(rel, dtype="float64") * bins + 1e-9).astype(int), bins - 1)


def bin_label(b: int, bins: int) -> str:
    """A depth bin as text: ``0-0.1``, ``0.33-0.67``."""
    return f"{b / bins:.2g}-{(b + 1) / bins:.2g}"


def stable_mask(stab: pd.DataFrame, alpha: float = 0.05, rule: str = "significance",
                stable_ratio: float = 0.5) -> pd.Series:
    """``interp.rules.stable_mask`` as 1.0 / 0.0 (NaN statistics count as not stable); NaN for every
    row of a table the rule cannot be applied to: no q-values (a run without controls) or, under
    ``equivalence``, no ``ratio_hi`` (a table written before it existed): unknown, not "none stable"."""
    if "q_value" not in stab.columns or (rule == "equivalence" and "ratio_hi" not in stab.columns):
        return pd.Series(np.nan, index=stab.index)
    return rules.stable_mask(stab, alpha, rule, stable_ratio).astype(float)


class CompareError(ValueError):
    """Runs that cannot be compared as asked (fewer than two, a position one of them lacks, rules
    that differ, names that do not fit)."""


@dataclass
class Side:
    """One run of the comparison: its ``Result`` and the name (label) its rows carry."""

    result: Result
    name: str

    @property
    def dir(self) -> Path:
        return self.result.run_dir

    @property
    def info(self) -> dict:
        """The manifest's model facts (name, architecture, shape)."""
        return self.result.manifest.get("model") or {}

    @property
    def n_layers(self) -> int:
        return int(self.info["n_layers"])

    @property
    def model(self) -> str | None:
        return self.info.get("name")

    @property
    def architecture(self) -> str | None:
        return self.info.get("architecture")

    @property
    def family(self) -> str | None:
        """The manifest's ``family`` (the Hugging Face ``model_type``: ``llama``, ``gpt2``,
        ``gpt_neox``, ...) where it names one, else read from the architecture of a run written
        before the key existed (``LlamaForCausalLM`` -> ``llama``)."""
        fam = self.info.get("family")
        if fam and fam != "unknown":
            return str(fam)
        arch = self.architecture
        if not arch:
            return fam
        if arch in FAMILIES:
            return FAMILIES[arch]
        for tail in ("ForCausalLM", "LMHeadModel"):
            if arch.endswith(tail) and len(arch) > len(tail):
                return arch[: -len(tail)].lower()
        return arch

    @property
    def d_model(self) -> int | None:
        d = self.info.get("d_model")
        return None if d is None else int(d)

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

    @property
    def atp_path(self) -> Path:
        return self.dir / CAUSAL / ATP


def side(run: str | Path | Result) -> Side:
    """A run dir (read with ``interp.load_run``) or a saved ``Result`` as one side of the comparison,
    named by its folder until ``labels`` names it."""
    result = run if isinstance(run, Result) else load_run(run)
    if result.run_dir is None:
        raise RunDirError("the result has no run directory; save it first (Result.save)")
    return Side(result, result.run_dir.name)


def labels(sides: Sequence[Side], names: Sequence[str] | None = None) -> list[str]:
    """The runs' labels: ``names`` (one per run, distinct), else each run's model name; runs whose
    model names coincide get their folder's name, and those that still coincide ``A:``, ``B:``, ...
    (by position) in front."""
    if names is not None:
        names = [str(n) for n in names]
        if len(names) != len(sides):
            raise CompareError(f"{len(names)} names ({', '.join(names)}) for {len(sides)} runs: give one per run")
        if len(set(names)) != len(names) or not all(names):
            raise CompareError(f"the names must be distinct and not empty: {', '.join(names)}")
        return names
    out = [s.model or s.dir.name for s in sides]
    out = [s.dir.name if out.count(n) > 1 else n for n, s in zip(out, sides)]
    letter = [string.ascii_uppercase[i] if i < 26 else str(i + 1) for i in range(len(sides))]
    return [f"{letter[i]}:{n}" if out.count(n) > 1 else n for i, n in enumerate(out)]


def accuracy(pairs: pd.DataFrame) -> dict:
    """Error-detection accuracy per grammar category and over all grammar pairs (with n)."""
    g = pairs[pairs["type"] == "grammar"]
    out = {c: {"n": int(len(d)), "accuracy": rules.accuracy(d["margin"])}
           for c, d in g.groupby("category", sort=True)}
    if len(g):
        out["all_grammar"] = {"n": int(len(g)), "accuracy": rules.accuracy(g["margin"])}
    return out


def run_columns(run: Side, rule: Rule) -> dict:
    """The columns every row of a run carries: its name, model, depth, null and rule."""
    k = run.controls["k"] if run.has_controls else None
    return {"run": run.name, "model": run.model, "n_layers": run.n_layers, "null": run.null,
            "k": np.nan if k is None else float(k), "rule": rule.rule if run.has_controls else None}


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
    cols = run_columns(run, rule)
    rows = []
    for (hook, b), g in d.groupby(["hook", "bin"], sort=True):
        rows.append({
            **cols, "hook": hook,
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


def atp_bins(run: Side, position: str, bins: int) -> tuple[pd.DataFrame, dict]:
    """The run's AtP mass per hook point and depth bin (``run``, ``hook``, ``bin``, ``atp_layers``
    and ``ATP_COLUMNS``; empty where it has none) and what was found (``status``: ``ok`` or why not)."""
    keys = ["run", "hook", "bin", "atp_layers", *ATP_COLUMNS]
    none = pd.DataFrame(columns=keys)
    path = run.atp_path
    if not path.exists():
        return none, {"status": f"no {CAUSAL}/{ATP} (python -m interp.patch run=RUN writes it)"}
    if not R.is_complete(path.parent):
        return none, {"status": f"{CAUSAL}/ is incomplete (no complete {R.MANIFEST}): an unfinished interp.patch"}
    atp = pd.read_parquet(path, columns=["hook", "layer", "component", "position", "atp_mean"])
    info = {"file": str(path), "positions": sorted(set(atp["position"]))}
    d = atp[atp["position"] == position].copy()
    if d.empty:
        return none, {**info, "status": f"position {position!r} not in {CAUSAL}/{ATP}"}
    d["bin"] = depth_bin(relative_depth(d["layer"], run.n_layers), bins)
    d["abs"] = d["atp_mean"].abs().astype("float64")
    g = (d.groupby(["hook", "bin"], sort=True)
         .agg(atp_abs_sum=("abs", lambda x: x.sum(skipna=False)),  # a non-finite score (NaN) voids its bin
              atp_layers=("layer", lambda x: ",".join(str(v) for v in sorted(set(x)))))
         .reset_index())
    # a hook point (and the run) with a void bin has no mass anywhere: the rest would not sum to its share
    g["atp_mass"] = g["atp_abs_sum"] / g.groupby("hook")["atp_abs_sum"].transform(lambda x: x.sum(skipna=False))
    total = float(g.loc[g["hook"] != PER_HEAD, "atp_abs_sum"].sum(skipna=False))
    g["atp_mass_run"] = g["atp_abs_sum"] / total if total > 0 else np.nan
    g.insert(0, "run", run.name)
    hooks = list(dict.fromkeys(g["hook"]))
    return g[keys], {**info, "status": "ok", "hooks": hooks, "total_abs": total}


def with_atp(table: pd.DataFrame, atp: pd.DataFrame, cols: dict[str, dict], order: list[str],
             bins: int) -> pd.DataFrame:
    """``table`` with the AtP columns joined on run, hook and bin (NaN where a run has none); a bin
    only AtP covers gets a row of its own (``n_components`` 0); rows by run (in ``order``), hook, bin."""
    keys = ["run", "hook", "bin"]
    atp = atp.astype({"bin": "int64"}) if len(atp) else atp
    joined = table.merge(atp[keys + list(ATP_COLUMNS)], on=keys, how="left") if len(atp) else \
        table.assign(**{c: np.nan for c in ATP_COLUMNS})
    if len(atp):
        seen = set(map(tuple, table[keys].itertuples(index=False)))
        only = atp[[k not in seen for k in map(tuple, atp[keys].itertuples(index=False))]]
        if len(only):
            rows = pd.DataFrame([{**cols[r["run"]], "hook": r["hook"], "bin": int(r["bin"]),
                                  "bin_lo": r["bin"] / bins, "bin_hi": (r["bin"] + 1) / bins,
                                  "layers": r["atp_layers"], "n_components": 0,
                                  **{c: r[c] for c in ATP_COLUMNS}} for _, r in only.iterrows()])
            joined = pd.concat([joined, rows], ignore_index=True)[joined.columns]
    for c in ATP_COLUMNS:
        joined[c] = joined[c].astype("float64")
    rank = joined["run"].map({n: i for i, n in enumerate(order)})
    return (joined.assign(_rank=rank).sort_values(["_rank", "hook", "bin"], kind="mergesort")
            .drop(columns="_rank").reset_index(drop=True))


def rules_for(sides: Sequence[Side], rule: str | None = None, alpha: float | None = None,
              stable_ratio: float | None = None) -> list[Rule]:
    """The rule each run's stable share is counted under. ``rule`` None: each run's own
    (``alpha``/``stable_ratio`` given: those thresholds instead of the runs'), refused with
    ``CompareError`` where they differ; ``rule`` given: that rule for all, with ``alpha`` /
    ``stable_ratio`` or the defaults (0.05, 0.5). A run without controls is counted under none."""
    if rule is not None:
        if rule not in rules.RULES:
            raise CompareError(f"rule {rule!r} is not one of {', '.join(rules.RULES)}")
        return [Rule(rule, 0.05 if alpha is None else alpha, 0.5 if stable_ratio is None else stable_ratio,
                     s.own_rule.ci) for s in sides]
    own = [Rule(r.rule, r.alpha if alpha is None else alpha, r.stable_ratio if stable_ratio is None
                else stable_ratio, r.ci) for r in (s.own_rule for s in sides)]
    counted = [(s, r) for s, r in zip(sides, own) if s.has_controls]
    if len({r.key for _, r in counted}) > 1:
        raise CompareError(
            "the runs decide 'stable' by different rules: " + "; ".join(f"{s.name}: {r.definition}" for s, r in counted)
            + " - their stable shares would not be comparable; pass --rule equivalence or --rule significance "
            "(compare(rule=...)) to count all under one rule")
    return own


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


def stable_only_in(table: pd.DataFrame, names: list[str]) -> dict[str, list[dict]]:
    """Per run, the (hook, bin)s where it has stable components and every other run whose share is
    known there has none (at least one such run)."""
    wide = table.pivot_table(index=["hook", "bin"], columns="run", values="share_stable", dropna=False)
    only: dict[str, list[dict]] = {n: [] for n in names}
    have = [n for n in names if n in wide.columns]
    for (hook, b), r in wide.iterrows():
        for n in have:
            others = [r[o] for o in have if o != n and pd.notna(r[o])]
            if pd.notna(r[n]) and r[n] > 0 and others and all(x == 0 for x in others):
                only[n].append({"hook": hook, "bin": int(b), "share": float(r[n])})
    return only


def summary_table(table: pd.DataFrame, summary: dict, bins: int) -> pd.DataFrame:
    """``compare_summary.csv``: one row per run x hook point, the run's facts then the hook point's
    share stable per depth bin (and AtP mass per bin where any run has AtP)."""
    with_atp_cols = bool(table["atp_mass"].notna().any())
    rows = []
    for name, r in summary["runs"].items():
        acc = r["accuracy"].get("all_grammar", {})
        t = table[table["run"] == name]
        for hook in r["hooks"] + [h for h in dict.fromkeys(t["hook"]) if h not in r["hooks"]]:
            g = t[t["hook"] == hook]
            tot = summary["totals"][name].get(hook, {})
            row = {"run": name, "model": r["model"], "family": r["family"], "architecture": r["architecture"],
                   "n_layers": r["n_layers"], "d_model": r["d_model"], "n_pairs": r["n_pairs"],
                   "accuracy": acc.get("accuracy", np.nan), "n_grammar_pairs": acc.get("n", 0),
                   "hooks": " ".join(r["hooks"]), "missing_hooks": " ".join(r["missing_hooks"]),
                   "null": r["null"], "rule": r["rule"], "hook": hook,
                   "n_components": tot.get("n_components", 0),
                   "share_stable": np.nan if tot.get("share_stable") is None else tot["share_stable"]}
            by_bin = dict(zip(g["bin"], g["share_stable"]))
            row.update({f"stable {bin_label(b, bins)}": by_bin.get(b, np.nan) for b in range(bins)})
            if with_atp_cols:
                mass = dict(zip(g["bin"], g["atp_mass"]))
                row.update({f"atp {bin_label(b, bins)}": mass.get(b, np.nan) for b in range(bins)})
            rows.append(row)
    return pd.DataFrame(rows)


def markdown(df: pd.DataFrame) -> str:
    """A table as markdown (numbers to 3 decimals, missing values as ``-``)."""
    def cell(v) -> str:
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return "-"
        if isinstance(v, (float, np.floating)):
            return f"{v:.3f}"
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + " --- |" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _is_out_folder(p: Path) -> bool:
    """Whether the third positional argument of ``compare(run_a, run_b, out)`` (the two-run call of
    earlier versions) is ``out``: never a run dir; a folder not there yet, empty, or holding an
    earlier comparison."""
    if (p / R.MANIFEST).exists():
        return False
    if not p.exists():
        return True
    return p.is_dir() and (not any(p.iterdir()) or (p / COMPARE_JSON).exists())


def compare(*runs: str | Path | Result, out: str | Path | None = None, position: str = "edit",
            alpha: float | None = None, bins: int = 10, figures: bool = True, png: bool = True,
            rule: str | None = None, stable_ratio: float | None = None,
            names: Sequence[str] | None = None) -> dict:
    """Compare two or more runs (run dirs, or saved ``Result`` objects; or one list of them); writes
    into ``out`` and returns the summary written as ``compare.json`` (plus ``out``). The stable
    shares use each run's own rule unless ``rule`` names one for all (``rules_for``: differing rules
    without it raise ``CompareError``); ``alpha``/``stable_ratio``: thresholds instead of the runs'
    own; ``names``: the runs' labels (default: ``labels``). ``compare(run_a, run_b, out)`` (the
    earlier two-run call) still works: see the module's docstring."""
    runs_ = list(runs[0]) if len(runs) == 1 and isinstance(runs[0], (list, tuple)) else list(runs)
    if out is None and len(runs_) == 3 and isinstance(runs_[2], (str, Path)) and _is_out_folder(Path(runs_[2])):
        runs_, out = runs_[:2], runs_[2]
    if len(runs_) < 2:
        raise CompareError(f"compare needs two or more runs, got {len(runs_)}")
    if int(bins) < 1:
        raise CompareError(f"bins must be at least 1, got {bins}")
    bins = int(bins)
    sides = [side(r) for r in runs_]
    if out is None:
        out = sides[0].dir / (f"compare_{sides[1].dir.name}" if len(sides) == 2 else f"compare_{len(sides)}runs")
    out = Path(out)
    for s, n in zip(sides, labels(sides, names)):
        s.name = n
    order = [s.name for s in sides]
    used_rules = rules_for(sides, rule, alpha, stable_ratio)
    table = pd.concat([bin_table(s, position, r, bins) for s, r in zip(sides, used_rules)], ignore_index=True)
    found = [atp_bins(s, position, bins) for s in sides]
    atp = pd.concat([f for f, _ in found if len(f)], ignore_index=True) if any(len(f) for f, _ in found) \
        else found[0][0]
    table = with_atp(table, atp, {s.name: run_columns(s, r) for s, r in zip(sides, used_rules)}, order, bins)
    div = pd.concat([divergence_table(s, bins) for s in sides], ignore_index=True)

    has = table[table["n_components"] > 0]
    own_hooks = {s.name: list(dict.fromkeys(has.loc[has["run"] == s.name, "hook"])) for s in sides}
    all_hooks = sorted(set().union(*own_hooks.values()))
    totals = {}
    for s in sides:
        t = has[has["run"] == s.name]
        totals[s.name] = {
            hook: {"n_components": int(g["n_components"].sum()),
                   "n_stable": None if g["n_stable"].isna().any() else int(g["n_stable"].sum()),
                   "share_stable": None if g["n_stable"].isna().any()
                   else float(g["n_stable"].sum() / g["n_components"].sum())}
            for hook, g in t.groupby("hook", sort=True)}
    used = dict(zip(order, used_rules))
    counted = [used[s.name] for s in sides if s.has_controls]
    definitions = list(dict.fromkeys(x.definition for x in counted))
    atp_info = {s.name: info for s, (_, info) in zip(sides, found)}
    with_atp_runs = [n for n in order if atp_info[n]["status"] == "ok"]
    summary = {
        "position": position, "alpha": counted[0].alpha if counted else alpha, "bins": bins,
        "rule": (counted[0].rule if len(definitions) == 1 else None) if counted else None,
        "rule_forced": rule is not None,
        "stable_definition": definitions[0] if len(definitions) == 1 else
        "; ".join(f"{s.name}: {used[s.name].definition}" for s in sides if s.has_controls) or None,
        "runs": {s.name: {"dir": str(s.dir), "model": s.model, "family": s.family, "architecture": s.architecture,
                          "n_layers": s.n_layers, "d_model": s.d_model,
                          "n_pairs": int(len(s.result.pairs)), "controls": s.controls, "null": s.null,
                          "null_facts": {k: v for k, v in (s.result.manifest.get("controls") or {}).items()
                                         if k.startswith("median_")} if s.has_controls else {},
                          "own_rule": s.own_rule.rule if s.has_controls else None,
                          "rule": used[s.name].rule if s.has_controls else None,
                          "stable_definition": used[s.name].definition if s.has_controls else None,
                          "cluster": s.analysis.get("cluster") if s.has_controls else None,
                          "ci_columns": [c for c in ("ratio_lo", "ratio_hi", "adj_lo", "adj_hi")
                                         if c in s.result.stability.columns],
                          "hooks": own_hooks[s.name],
                          "missing_hooks": [h for h in all_hooks if h not in own_hooks[s.name]],
                          "atp": atp_info[s.name],
                          "accuracy": accuracy(s.result.pairs)} for s in sides},
        "hooks": all_hooks,
        "totals": totals,
        "stable_only_in": stable_only_in(table, order),
        "atp": {"runs": with_atp_runs, "figure": bool(figures and with_atp_runs),
                "mass": "sum of |atp_mean| per bin / over the bins of the hook point (atp_mass), "
                        f"over the run's hook points but {PER_HEAD} (atp_mass_run)",
                **({} if with_atp_runs else {"note": f"no run has AtP results ({CAUSAL}/{ATP} of a complete "
                                                     "python -m interp.patch): atp_mass is NaN, no AtP figure"})},
        "files": [COMPARE, COMPARE_DIVERGENCE, COMPARE_SUMMARY, COMPARE_SUMMARY_MD],
    }
    out.mkdir(parents=True, exist_ok=True)
    R.write_parquet(out / COMPARE, table)
    R.write_parquet(out / COMPARE_DIVERGENCE, div)
    wide = summary_table(table, summary, bins)
    with R.atomic_path(out / COMPARE_SUMMARY) as tmp:
        wide.to_csv(tmp, index=False)
    with R.atomic_path(out / COMPARE_SUMMARY_MD) as tmp:
        Path(tmp).write_text(markdown(wide))
    if figures:
        summary["figures"] = write_figures(out, table, div, summary, *order, png=png)
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


def write_figures(out: Path, table: pd.DataFrame, div: pd.DataFrame, summary: dict, *names: str,
                  png: bool = True) -> dict:
    """The comparison's figures (``interp.figures.compare``) into ``out/figures`` as HTML and PNG."""
    from .figures import export
    from .figures.compare import compare_figures

    fdir = out / "figures"
    fdir.mkdir(parents=True, exist_ok=True)
    export.write_plotlyjs(fdir)
    figs = compare_figures(table, div, summary, *names)
    written = {"html": [export.save_html(f, fdir, n) for n, f in figs.items()]}
    if png:
        pngs = export.save_pngs(figs, fdir)
        written["png" if "error" not in pngs else "png_error"] = (
            list(pngs.values()) if "error" not in pngs else pngs["error"])
    return written


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m interp.compare",
        description="Compare two or more run directories (possibly of different models and families) per hook "
                    "point and relative-depth bin: share of stable components, median ratio and normalized change, "
                    "divergence profile, AtP mass (runs with causal/atp.parquet), error-detection accuracy. Writes "
                    "compare.parquet, compare_divergence.parquet, compare_summary.csv/.md, compare.json and "
                    "figures into --out.")
    ap.add_argument("runs", nargs="+", metavar="RUN", help="two or more run directories (holding manifest.json)")
    ap.add_argument("--out", default=None,
                    help="output folder [RUN_A/compare_<name of RUN_B> for two runs, RUN_A/compare_<n>runs for more]")
    ap.add_argument("--names", default=None,
                    help="the runs' labels, comma-separated, one per run [each run's model name; runs of one "
                         "model: their folder names]")
    ap.add_argument("--position", default="edit", help="token position mode compared: edit | last | after [edit]")
    ap.add_argument("--rule", choices=rules.RULES, default=None,
                    help="count 'stable' in every run under this rule (equivalence: %s; significance: %s) "
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
    if len(a.runs) < 2:
        ap.error("give two or more run directories")
    names = None if a.names is None else [n.strip() for n in a.names.split(",")]
    try:
        s = compare(*a.runs, out=a.out, position=a.position, alpha=a.alpha, bins=a.bins, figures=not a.no_figures,
                    png=not a.no_png, rule=a.rule, stable_ratio=a.stable_ratio, names=names)
    except (RunDirError, CompareError) as err:  # a run dir, position or rule that does not fit: one line, status 2
        print(f"python -m interp.compare: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"compare -> {s['out']}")
    for name, r in s["runs"].items():
        acc = r["accuracy"].get("all_grammar", {})
        print(f"{name}: model {r['model']}, {r['n_layers']} layers, {r['n_pairs']} pairs, "
              f"grammar accuracy {acc.get('accuracy', float('nan')):.3f} (n={acc.get('n', 0)})")
        if r["family"] or r["d_model"]:
            print(f"  family {r['family']} ({r['architecture']}), d_model {r['d_model']}")
        if r["null"] is None:
            print("  null: none (no control edits), nothing counted as stable")
        else:
            forced = " (forced by --rule)" if s["rule_forced"] and r["rule"] != r["own_rule"] else ""
            print(f"  null: {r['null']} pool, {r['controls']['k']} control edits per pair"
                  + (f", cluster: {r['cluster']}" if r["cluster"] else ""))
            print(f"  rule: {r['stable_definition']}{forced}")
        for hook, t in s["totals"][name].items():
            print(f"  {hook}: {t['n_stable']} / {t['n_components']} stable ({t['share_stable']})")
        if r["missing_hooks"]:
            print(f"  lacks hook points: {', '.join(r['missing_hooks'])}")
        print(f"  AtP: {'causal/atp.parquet' if r['atp']['status'] == 'ok' else r['atp']['status']}")
    for name, lst in s["stable_only_in"].items():
        if lst:
            print(f"stable only in {name}: " + ", ".join(f"{x['hook']} bin {x['bin']}" for x in lst))
    print(f"summary table: {Path(s['out']) / COMPARE_SUMMARY} (and {COMPARE_SUMMARY_MD})")


if __name__ == "__main__":
    main()
