"""Run dirs for the tests of the rules for "stable" in the viewer, the figures and ``interp.compare``:
copies of a real run dir with their rule changed, with a stability table on which the two rules
disagree, or rewritten the way runs were written before matched nulls and clustered inference.

- ``with_rule(src, dst, rule)``: the run with ``analysis.rule`` (and ``manifest["inference"]``) set;
- ``disagreeing(src, dst, rule)``: the same with a stability table where, at the edit token, 3
  resid_post components of layer 0 are stable under the equivalence rule only, 5 under the
  significance rule only, and 2 would be under both but are flagged (one ``offset_dim``, one
  ``massive``);
- ``legacy(src, dst)``: an older run dir: no ``ratio_lo``/``ratio_hi`` or clustered columns, no
  ``stable``, the offset flag called ``massive`` (and set on one component that the significance
  rule would otherwise call stable), no ``analysis.rule``/``stable_ratio``/``ci``/``cluster``, no
  ``directions.parquet`` or ``pair_values.parquet``, the old ``controls`` block of the manifest.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd

from interp import rules
from interp import rundir as R

EQ_ONLY = [0, 1, 2]        # resid_post[0] components stable under equivalence only
SIG_ONLY = [3, 4, 5, 6, 7]  # ... under significance only
OFFSET, MASSIVE = 8, 9      # ... under both, but flagged
LEGACY_OFFSET = 10          # the legacy table's offset flag (its column ``massive``)

# columns a stability table gained with matched nulls and clustered inference
NEW_COLUMNS = ["ratio_lo", "ratio_hi", "n_clusters", "se_cluster", "t_cluster", "p_cluster", "q_cluster",
               "adj_coef", "adj_lo", "adj_hi", "adj_normalized", "se_method", "stable", "stable_layers", "max_abs"]


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors", "figures", "compare_*", "causal"))
    return dst


def _manifest(run: Path, edit) -> None:
    m = json.loads((run / R.MANIFEST).read_text())
    edit(m)
    (run / R.MANIFEST).write_text(json.dumps(m, indent=2))


def with_rule(src: Path, dst: Path, rule: str) -> Path:
    run = _copy(src, dst)

    def edit(m):
        m["config"]["analysis"]["rule"] = rule
        m.setdefault("inference", {})["rule"] = rule
    _manifest(run, edit)
    return run


def _edit_rows(stab: pd.DataFrame) -> pd.Series:
    return (stab["hook"] == "resid_post") & (stab["layer"] == 0) & (stab["position"] == "edit")


def disagreeing_table(stab: pd.DataFrame) -> pd.DataFrame:
    """``stab`` with the statistics of the rules set so that the rules disagree (module docstring)."""
    d = stab.copy()
    d["ratio_hi"], d["q_value"], d["t_stat"] = 0.9, 0.5, 1.0  # nothing stable under either rule
    d["offset_dim"], d["massive"], d["constant"] = False, False, False
    here = _edit_rows(d)
    comp = d["component"]
    d.loc[here & comp.isin(EQ_ONLY), "ratio_hi"] = 0.3
    d.loc[here & comp.isin(SIG_ONLY), ["q_value", "t_stat"]] = [0.01, -2.0]
    both = here & comp.isin([OFFSET, MASSIVE])
    d.loc[both, ["ratio_hi", "q_value", "t_stat"]] = [0.1, 0.001, -5.0]
    d.loc[here & (comp == OFFSET), "offset_dim"] = True
    d.loc[here & (comp == MASSIVE), "massive"] = True
    d["ratio_lo"] = d[["ratio_lo", "ratio_hi"]].min(axis=1)
    d["ratio"] = d[["ratio", "ratio_hi"]].min(axis=1).clip(lower=d["ratio_lo"])
    d["stable"] = rules.stable_mask(d, rule="equivalence")  # as the run wrote it (its own rule)
    return d


def disagreeing(src: Path, dst: Path, rule: str) -> Path:
    run = with_rule(src, dst, rule)
    for name in (R.STABILITY, R.STABILITY_BY_CATEGORY):
        if (run / name).exists():
            R.write_parquet(run / name, disagreeing_table(pd.read_parquet(run / name)))
    return run


def legacy_table(stab: pd.DataFrame) -> pd.DataFrame:
    d = stab.drop(columns=[c for c in NEW_COLUMNS + ["massive"] if c in stab.columns])
    d = d.rename(columns={"offset_dim": "massive"})
    here = _edit_rows(d)
    d.loc[here & (d["component"] == LEGACY_OFFSET), ["massive", "q_value", "t_stat"]] = [True, 0.001, -5.0]
    return d


def legacy(src: Path, dst: Path) -> Path:
    run = _copy(src, dst)
    for name in (R.DIRECTIONS, R.PAIR_VALUES):
        (run / name).unlink(missing_ok=True)
    for name in (R.STABILITY, R.STABILITY_BY_CATEGORY):
        if (run / name).exists():
            R.write_parquet(run / name, legacy_table(pd.read_parquet(run / name)))
    if (run / R.CONTRAST).exists():
        c = pd.read_parquet(run / R.CONTRAST)
        R.write_parquet(run / R.CONTRAST, c.drop(columns=[x for x in NEW_COLUMNS if x in c.columns]))

    def edit(m):
        a = m["config"]["analysis"]
        for k in ("rule", "stable_ratio", "ci", "cluster", "offset", "pair_values"):
            a.pop(k, None)
        a["massive"] = {"factor": 20.0, "max_cv": 0.25}
        a["controls"] = {k: v for k, v in a["controls"].items() if k in ("n", "pool", "pool_size", "words")}
        m.pop("inference", None)
        m.pop("pair_values", None)
        m["controls"] = {"n": a["controls"]["n"], "seed": 0, "pool": a["controls"]["pool"], "test": "paired t-test"}
    _manifest(run, edit)
    return run
