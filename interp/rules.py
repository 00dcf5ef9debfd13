"""The shared decision rules: what counts as "stable" and what error-detection accuracy is.

Every table, summary, figure, comparison and viewer page that says "stable" or "accuracy" calls
these, so the definitions live in one place.

Two rules for "stable" (``analysis.rule``), each against the run's null (``analysis.controls.pool``):

- ``equivalence`` (default): the upper end of the ratio's confidence interval (``ratio_hi``,
  mean |a-b| / mean control change, cluster-robust where the run kept per-pair values) lies below
  ``analysis.stable_ratio``: the real edit moves the component less than half as much as a control
  edit, and the data rule out anything larger. An effect-size statement that more pairs make
  sharper, not looser. With ``analysis.ci=0.95`` the upper end of the two-sided interval is a
  one-sided 97.5% bound (stricter than the 90% interval of a 5% two one-sided tests procedure).
- ``significance``: the rule before clustered inference: the iid paired test says |a-b| is smaller
  than the control change (``t_stat < 0``) at FDR ``alpha`` (``q_value < alpha``). With hundreds
  of pairs any consistent small difference passes it.

Under both, components flagged ``constant``, ``offset_dim`` or ``massive`` are never stable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import pandas as pd

RULES = ("equivalence", "significance")
DEFINITIONS = {
    "equivalence": "ratio_hi < {stable_ratio} (upper end of the two-sided {ci:.0%} interval of mean |a-b| / "
                   "mean control change), not constant, offset or massive",
    "significance": "q_value < {alpha} and t_stat < 0, not constant, offset or massive",
}
STABLE_DEFINITION = DEFINITIONS["significance"]  # kept for readers of older code: the significance rule


def definition(rule: str = "equivalence", alpha: float = 0.05, stable_ratio: float = 0.5, ci: float = 0.95) -> str:
    """The rule in words, with its thresholds."""
    return f"{rule}: " + DEFINITIONS[rule].format(alpha=alpha, stable_ratio=stable_ratio, ci=ci)


def flagged(stab: pd.DataFrame) -> pd.Series:
    """Components no rule calls stable: constant, a large constant offset, or a massive activation
    (tables written before ``offset_dim`` existed call the offset flag ``massive``)."""
    out = pd.Series(False, index=stab.index)
    for col in ("constant", "offset_dim", "massive"):
        if col in stab:
            out |= stab[col].fillna(False).astype(bool)
    return out


def stable_mask(stab: pd.DataFrame, alpha: float = 0.05, rule: str = "significance",
                stable_ratio: float = 0.5) -> pd.Series:
    """Rows of a stability table that are stable beyond the control baseline under ``rule``
    (module docstring). Without controls (no ``q_value`` column) nothing is stable; under
    ``equivalence`` a table without ``ratio_hi`` (written before it existed) has nothing stable."""
    if rule not in RULES:
        raise ValueError(f"rule={rule!r} is not one of {', '.join(RULES)}")
    if "q_value" not in stab:
        return pd.Series(False, index=stab.index)
    if rule == "equivalence":
        if "ratio_hi" not in stab:
            return pd.Series(False, index=stab.index)
        ok = stab["ratio_hi"] < stable_ratio
    else:
        ok = (stab["q_value"] < alpha) & (stab["t_stat"] < 0)
    return (ok & ~flagged(stab)).fillna(False).astype(bool)


@dataclass(frozen=True)
class Rule:
    """A rule for "stable" with its thresholds (the ones it uses: ``alpha`` for significance,
    ``stable_ratio`` and the interval's level ``ci`` for equivalence)."""

    rule: str
    alpha: float = 0.05
    stable_ratio: float = 0.5
    ci: float = 0.95

    @classmethod
    def of_run(cls, analysis: Mapping | None) -> "Rule":
        """A run's rule from the ``analysis`` section of its config (runs from before
        ``analysis.rule`` existed: significance)."""
        a = analysis or {}
        return cls(str(a.get("rule") or "significance"), float(a.get("alpha", 0.05)),
                   float(a.get("stable_ratio", 0.5)), float(a.get("ci", 0.95)))

    @property
    def definition(self) -> str:
        return definition(self.rule, self.alpha, self.stable_ratio, self.ci)

    @property
    def key(self) -> tuple:
        return (self.rule, self.alpha) if self.rule == "significance" else (self.rule, self.stable_ratio, self.ci)

    def mask(self, stab: pd.DataFrame) -> pd.Series:
        """``stable_mask`` under this rule."""
        return stable_mask(stab, self.alpha, self.rule, self.stable_ratio)


def correct(margin: float, pair_type: str) -> bool | None:
    """Whether the model prefers the correct sentence of one pair: grammar pairs only (``a`` is
    the correct one; margin = log P(a) - log P(b)); None for pairs with no correct side."""
    return (margin > 0) if pair_type == "grammar" else None


def accuracy(margins: pd.Series) -> float:
    """Error-detection accuracy of grammar pairs: the share with margin > 0 (the BLiMP method)."""
    return float((margins > 0).mean())


def summarize(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per category: pairs, mean margin, error-detection accuracy (grammar categories only)."""
    if pairs.empty:
        return pd.DataFrame(columns=["category", "type", "n_pairs", "mean_margin", "accuracy"])
    g = pairs.groupby(["category", "type"], sort=True)
    out = g.agg(n_pairs=("pair_id", "size"), mean_margin=("margin", "mean")).reset_index()
    acc = pairs[pairs["type"] == "grammar"].groupby("category")["margin"].apply(accuracy)
    out["accuracy"] = out["category"].map(acc)
    return out


def grammar_accuracy(rows) -> float | None:
    """Error-detection accuracy over the grammar pairs of a run, from the manifest's ``accuracy``
    rows (per category): the mean of the categories' accuracies weighted by their pairs (None
    without grammar pairs)."""
    grammar = [a for a in rows or [] if a.get("type") == "grammar" and a.get("accuracy") is not None]
    if not grammar:
        return None
    return sum(a["accuracy"] * a["n_pairs"] for a in grammar) / sum(a["n_pairs"] for a in grammar)

