"""What a run keeps of its statistics, decided before the batch loop from the config and the kept
pairs (so every shard of a run decides alike):

- ``by_category``: whether the run writes the per-category stability table
  (``stability_by_category.parquet``) and per-category divergence rows (``analysis.by_category``:
  ``auto`` = when the table has at most ``analysis.by_category_max_rows`` rows, components x layers
  x positions x categories);
- ``state_groups``: the groups the running statistics are kept per. With per-category tables, one
  per category. Without them, the coarsest blocks of categories from which every set of categories
  that a table needs is a union: the two sides of ``analysis.contrast`` and the grammar pairs of
  ``directions.parquet`` (categories of one side and one pair type form one block); the state is
  ``categories / blocks`` times smaller, the tables over all pairs the same;
- ``save_state``: whether the run dir gets ``stats.safetensors``, the input of ``interp.merge``
  (``analysis.save_state``: ``auto`` = when the run is a shard). Checkpoints keep their own copy.
"""

from __future__ import annotations

from ..hooks import HOOK_POINTS, head_summary
from ..stats.values import components


def table_rows(sites, info: dict, positions: list[str]) -> int:
    """Rows of the stability table of one category: every component of every hooked site (and of
    the per-head summaries, ``z_head``) at every position mode."""
    per_layer = 0
    for s in sites:
        per_layer += components(s.point, info)
        hp = HOOK_POINTS.get(s.point)
        if hp is not None and hp.heads:
            per_layer += components(head_summary(s.point), info)
    return per_layer * len(positions)


def plan_by_category(acfg, sites, info: dict, categories: list[str]) -> dict:
    """``analysis.by_category`` for this run: the manifest's ``by_category`` record (``written``,
    ``setting``, ``rows``, ``max_rows`` and, when not written, ``reason``; the run says it
    in one line: ``interp.result.not_written``)."""
    setting = acfg.get("by_category", "auto")
    max_rows = int(acfg.get("by_category_max_rows", 1_000_000))
    rows = table_rows(sites, info, list(acfg.positions)) * len(categories)
    out = {"setting": setting, "rows": rows, "max_rows": max_rows}
    if len(categories) < 2:
        return {**out, "written": False, "reason": "one category: stability.parquet is the table of that category"}
    if setting is True:
        return {**out, "written": True}
    if setting is False:
        return {**out, "written": False, "reason": "analysis.by_category=false"}
    if rows <= max_rows:
        return {**out, "written": True}
    return {**out, "written": False, "reason": f"{rows:,} rows > analysis.by_category_max_rows={max_rows:,}"}


def state_groups(categories: list[str], group_types: dict[str, str], sides, per_category: bool
                 ) -> tuple[list[str], dict[str, list[str]] | None]:
    """The groups of the running statistics: ``(names, members)``. Per category: the categories and
    None. Otherwise blocks of categories (``members``: name -> categories, in ``categories`` order):
    the categories of one contrast side (``sides``: ``contrast_sides``' pairs, or None) split by
    pair type, and the rest by pair type; a block is named after its contrast side, the rest after
    their type (``other:<type>`` beside a contrast; ``<side>:<type>`` if a side had several types)."""
    if per_category:
        return list(categories), None
    side_of: dict[str, str] = {}
    if isinstance(sides, list):
        for name, cats in sides:
            for c in cats:
                side_of[c] = name
    blocks: dict[tuple[str, str], list[str]] = {}
    for c in categories:
        blocks.setdefault((side_of.get(c, ""), str(group_types.get(c, ""))), []).append(c)
    side_types: dict[str, set[str]] = {}
    for side, t in blocks:
        side_types.setdefault(side, set()).add(t)
    names: list[str] = []
    members: dict[str, list[str]] = {}
    for (side, t), cats in blocks.items():
        if side and len(side_types[side]) == 1:
            name = side
        elif not side and not side_of:  # no contrast: the blocks are the pair types
            name = t or "untyped"
        else:
            name = f"{side or 'other'}:{t or 'untyped'}"
        if name in members:  # never expected; names stay unique
            name = "+".join(cats)
        names.append(name)
        members[name] = cats
    return names, members


def plan_save_state(acfg, shard) -> dict:
    """``analysis.save_state`` for this run: the manifest's ``state`` record (``saved``, ``setting``,
    ``reason``)."""
    setting = acfg.get("save_state", "auto")
    count = int(shard.count) if shard else 1
    if setting is True:
        return {"saved": True, "setting": setting, "reason": "analysis.save_state=true"}
    if setting is False:
        return {"saved": False, "setting": setting, "reason": "analysis.save_state=false"}
    if count > 1:
        return {"saved": True, "setting": setting, "reason": f"a shard (shard.count={count}): interp.merge reads it"}
    return {"saved": False, "setting": setting,
            "reason": "not a shard (analysis.save_state=true writes it, for interp.merge)"}
