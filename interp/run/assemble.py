"""From a finished analysis's running statistics and pair rows to its ``Result``.

The tables (stability overall and per category, contrast, divergence, the per-pair drill-down),
the BLiMP report where the pairs are BLiMP's, the statistics' saved state (``stats.safetensors``,
where ``analysis.save_state`` asks for it: ``interp.run.state``) and the manifest. Tables are
computed when first used. Runs (``pipeline.execute``) and merges of shards (``interp.merge``) both
end here.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from .. import rundir as R
from ..config import ConfigError
from ..result import Result
from ..rules import summarize
from ..stats import values as pair_values
from ..stats.diff import PairInfo
from .manifest import build_manifest
from .state import plan_save_state


def contrast_sides(spec, types: dict[str, str], groups: list[str]):
    """``analysis.contrast`` -> ((name, categories), (name, categories)), or a note why it is skipped."""
    if not spec:
        return None
    if len(spec) != 2:
        raise ConfigError(f"analysis.contrast needs two groups, got {list(spec)}")
    out = []
    for side in spec:
        cats = [c for c in groups if types[c] == side] if side in ("grammar", "semantic") else \
            ([side] if side in groups else [])
        if not cats:
            return f"skipped: no kept pairs of {side!r} in this run"
        out.append((str(side), cats))
    if set(out[0][1]) & set(out[1][1]):
        raise ConfigError(f"analysis.contrast: {spec[0]} and {spec[1]} overlap")
    return out


LIST_COLUMNS = {"control_ids": np.int64, "control_tokens": object, "dist_ac": np.float64}


def _once(make):
    """A table maker that computes its table once (the stability table feeds two tables)."""
    box = []

    def get():
        if not box:
            box.append(make())
        return box[0]
    return get


def assemble(cfg: DictConfig, stats, pairs_df: pd.DataFrame, rejected_rows: list[dict], failed: list[dict],
             profiles: list[pd.DataFrame], components: list[pd.DataFrame], facts: dict, timings: dict,
             t0: float, tensor_files: dict | None = None) -> Result:
    """The Result of an analysis (see the module docstring)."""
    acfg = cfg.analysis
    groups = stats.categories
    pairs_df = pairs_df.sort_values("pair_index").reset_index(drop=True)
    for col in LIST_COLUMNS:  # as a parquet file reads them back: numpy arrays
        if col in pairs_df:
            pairs_df[col] = [np.asarray(v, dtype=LIST_COLUMNS[col]) for v in pairs_df[col]]
    info = PairInfo(pairs_df, str(acfg.cluster)) if not pairs_df.empty else None
    table_kw = {"offset_factor": float(acfg.offset.factor), "offset_cv": float(acfg.offset.max_cv),
                "massive_ratio": float(acfg.massive.ratio), "massive_min": float(acfg.massive.min_abs),
                "pair_info": info, "level": float(acfg.ci), "rule": str(acfg.rule), "alpha": float(acfg.alpha),
                "stable_ratio": float(acfg.stable_ratio)}
    stability = _once(lambda: stats.table(**table_kw))
    tables: dict = {"pairs": pairs_df, "stability": stability}
    if len(groups) > 1 and stats.per_category:  # else the state has blocks of categories (interp.run.state)
        tables["stability_by_category"] = lambda: pd.concat(
            [stats.table(group=g, **table_kw).assign(category=g) for g in groups], ignore_index=True)
    notes: dict = {}
    sides = contrast_sides(acfg.contrast, facts["group_types"], groups)
    if isinstance(sides, str):
        notes["contrast"] = sides
    elif sides:
        tables["contrast"] = lambda: stats.contrast(sides[0][1], sides[1][1], (sides[0][0], sides[1][0]), info)
    tables["divergence"] = lambda: stats.divergence()
    tables["directions"] = lambda: stats.directions(stability(), facts["group_types"], info)
    profiles = [p for p in profiles if not p.empty]
    if profiles:
        tables["pair_profile"] = pd.concat(profiles, ignore_index=True)
        tables["pair_components"] = pd.concat([c for c in components if not c.empty], ignore_index=True)
    all_rejected = rejected_rows + failed

    extra = {}
    if cfg.pairs.source == "blimp":  # per-paradigm/phenomenon tables and the manifest's notes["blimp"]
        from ..pairs.blimp import blimp_tables
        extra, notes["blimp"] = blimp_tables(pairs_df, all_rejected, cfg.pairs)

    stats_meta = {"groups": json.dumps(stats.groups), "group_types": json.dumps(facts["group_types"]),
                  "positions": json.dumps(stats.positions), "n_controls": str(stats.n_controls),
                  "max_offset": str(stats.max_offset),
                  "shapes": json.dumps({k: list(v) for k, v in stats.shapes.items()}),
                  "sites": json.dumps([vars(x) for x in stats.sites])}
    if stats.members is not None:  # groups are blocks of categories: which (interp.merge rebuilds the layout)
        stats_meta["members"] = json.dumps(stats.members)
    state = plan_save_state(acfg, cfg.get("shard"))
    facts = {**facts, "state": state}
    files = {R.STATS: (stats.state_dict, stats_meta)} if state["saved"] else {}
    files.update(tensor_files or {})
    stats.flush_values()  # on a GPU the last chunks are still staged in pinned memory
    if stats.values:
        files[R.PAIR_VALUES] = (pair_values.PairValues(stats), None)
    timings["total_s"] = time.time() - t0
    manifest = build_manifest(cfg, stats, facts, len(pairs_df), all_rejected, len(failed), notes,
                              summarize(pairs_df).to_dict("records"), timings)
    return Result(manifest, tables, all_rejected, files, None, extra)
