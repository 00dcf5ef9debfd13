"""The shared decision rules: what counts as "stable" and what error-detection accuracy is.

Every table, summary, figure, comparison and viewer page that says "stable" or "accuracy" calls
these, so the definitions live in one place.
"""

from __future__ import annotations

import pandas as pd

STABLE_DEFINITION = "q_value < {alpha} and t_stat < 0 and not massive"


def stable_mask(stab: pd.DataFrame, alpha: float) -> pd.Series:
    """Rows of a stability table that are stable beyond the control baseline: the paired test
    says |a-b| is smaller than the control edits' change (``t_stat < 0``) at FDR ``alpha``
    (``q_value < alpha``), and the component is not a flagged massive activation. Without
    controls (no ``q_value`` column) nothing is stable."""
    if "q_value" not in stab:
        return pd.Series(False, index=stab.index)
    massive = stab["massive"].fillna(False).astype(bool) if "massive" in stab else False
    return (stab["q_value"] < alpha) & (stab["t_stat"] < 0) & ~massive


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
