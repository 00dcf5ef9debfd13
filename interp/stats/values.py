"""What a run keeps per pair: ``pair_values.parquet``, from which any null or model can be refit.

Per kept pair x hook site x component x position mode: ``abs_diff`` = |a - b| and ``control_diff``
= the mean over the pair's control edits of |a - c_k| (the two per-pair values every clustered
statistic of the stability table is computed from). Which hook points and position modes are kept
is ``analysis.pair_values``: by default every recorded hook point except ``mlp_post`` (its neurons
outnumber the residual dimensions several times), all position modes, within ``max_mb`` (estimated
before the run; the last position modes, then the last hook points, are dropped until it fits, and
the manifest's ``pair_values`` says what was kept).

Layout: one row group per hook site and position mode, rows ordered by pair then component, so a
reader can take one site without reading the rest:

    pd.read_parquet(run / "pair_values.parquet",
                    filters=[("hook", "==", "resid_post"), ("layer", "==", 3), ("position", "==", "edit")])

Columns: ``pair_index`` (joins ``pairs.parquet``'s ``pair_index`` column; failed pairs leave gaps), ``hook``, ``layer``,
``position``, ``component``, ``abs_diff``, ``control_diff`` (float32, exactly the values the run's
statistics used).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..hooks import HOOK_POINTS, head_summary

DEFAULT_EXCLUDED = ("mlp_post",)
BYTES_PER_VALUE = 8  # two float32 values per pair x component x mode (in memory and on disk)


def components(point: str, info: dict) -> int:
    """Components of one layer of a hook point (or a per-head summary point) for a model's facts."""
    for p, hp in HOOK_POINTS.items():
        if head_summary(p) == point and hp.heads:
            return int(info["n_heads"])
    unit = HOOK_POINTS[point].unit
    if unit == "neuron":
        return int(info["d_mlp"])
    if unit == "head_dim":
        return int(info["n_heads"]) * int(info["d_head"])
    return int(info["d_model"])


def plan(acfg, points: list[str], layers: dict[str, int], info: dict, n_pairs: int) -> tuple[dict[str, list[str]], dict]:
    """Which hook points and position modes keep per-pair values: (point -> modes, facts for the
    manifest). ``points``: the run's hook points and their per-head summaries; ``layers``: layers
    per point."""
    pv = acfg.pair_values
    wanted = list(pv.hooks) if pv.hooks is not None else [p for p in points if p not in DEFAULT_EXCLUDED]
    heads = {head_summary(p) for p in points if p in HOOK_POINTS and HOOK_POINTS[p].heads}
    if pv.hooks is None:
        wanted += [h for h in heads if h not in wanted]
    chosen = [p for p in points if p in wanted]
    modes = [m for m in acfg.positions if m in pv.positions]
    if not int(acfg.controls.n) or not modes or not chosen:
        return {}, {"kept": {}, "estimated_mb": 0.0, "max_mb": int(pv.max_mb), "dropped": []}

    def size(ps, ms):
        return sum(n_pairs * layers[p] * components(p, info) * len(ms) * BYTES_PER_VALUE for p in ps) / 2 ** 20

    dropped = []
    limit = float(pv.max_mb)
    while chosen and size(chosen, modes) > limit:
        if len(modes) > 1:
            dropped.append(f"position {modes.pop()}")
        else:
            dropped.append(f"hook {chosen.pop()}")
    kept = {p: list(modes) for p in chosen}
    return kept, {"kept": kept, "estimated_mb": round(size(chosen, modes), 1) if chosen else 0.0,
                  "max_mb": int(pv.max_mb), "dropped": dropped}


def _blocks(stats, hook: str | None = None, layer: int | None = None, position: str | None = None):
    """The kept per-pair values, one hook site and position mode at a time: (rows, columns), with
    ``hook``, ``layer`` and ``position`` as scalars of the block; None selects every one."""
    for point, modes in stats.keep_values.items():
        if hook is not None and point != hook:
            continue
        got = stats.pair_values(point)
        if got is None:
            continue
        index, v = got  # [N, L, 2, M, C]
        sites = stats.point_sites.get(point) or stats.derived[point]
        N, C = v.shape[0], v.shape[-1]
        for li, site in enumerate(sites):
            if layer is not None and site.layer != layer:
                continue
            for mi, mode in enumerate(modes):
                if position is not None and mode != position:
                    continue
                yield N * C, {"pair_index": np.repeat(index, C), "hook": point, "layer": np.int32(site.layer),
                              "position": mode, "component": np.tile(np.arange(C, dtype=np.int32), N),
                              "abs_diff": v[:, li, 0, mi].reshape(-1), "control_diff": v[:, li, 1, mi].reshape(-1)}


def write(path: str | Path, stats) -> int:
    """Write the kept per-pair values of ``stats`` (a ``DiffStats``) to ``path``; rows written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("pair_index", pa.int64()), ("hook", pa.string()), ("layer", pa.int32()),
                        ("position", pa.string()), ("component", pa.int32()), ("abs_diff", pa.float32()),
                        ("control_diff", pa.float32())])
    rows = 0
    with pq.ParquetWriter(str(path), schema, compression="zstd") as w:
        for n, cols in _blocks(stats):
            cols.update(hook=pa.array([cols["hook"]] * n), position=pa.array([cols["position"]] * n),
                        layer=np.full(n, cols["layer"], dtype=np.int32))
            w.write_table(pa.table(cols, schema=schema))
            rows += n
    return rows


class PairValues:
    """The kept per-pair values of a finished analysis: ``write(path)`` (the run dir's file) and
    ``frame(...)`` (a DataFrame of some sites, as the file would read)."""

    def __init__(self, stats):
        self.stats = stats

    def __call__(self, path) -> int:
        return write(path, self.stats)

    def frame(self, hook: str | None = None, layer: int | None = None, position: str | None = None) -> pd.DataFrame:
        frames = [pd.DataFrame(cols) for _, cols in _blocks(self.stats, hook, layer, position)]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)


COLUMNS = ["pair_index", "hook", "layer", "position", "component", "abs_diff", "control_diff"]


def read_into(path: str | Path, stats) -> None:
    """Load a run dir's ``pair_values.parquet`` into ``stats.values`` (``interp.merge``: the shards'
    per-pair values are concatenated)."""
    import pyarrow.parquet as pq

    for point, modes in stats.keep_values.items():
        sites = stats.point_sites.get(point) or stats.derived.get(point)
        if not sites:
            continue
        parts = []
        for li, site in enumerate(sites):
            per_mode = []
            for mode in modes:
                t = pq.read_table(str(path), filters=[("hook", "==", point), ("layer", "==", site.layer),
                                                      ("position", "==", mode)]).to_pandas()
                if t.empty:
                    break
                C = int(t["component"].max()) + 1
                idx = t["pair_index"].to_numpy()[::C]
                per_mode.append(np.stack([t["abs_diff"].to_numpy().reshape(-1, C),
                                          t["control_diff"].to_numpy().reshape(-1, C)], 1))  # [N, 2, C]
            if len(per_mode) != len(modes):
                parts = []
                break
            parts.append(np.stack(per_mode, 2))  # [N, 2, M, C]
        if parts:
            stats.values[point] = [(0, idx, np.stack(parts, 1))]  # [N, L, 2, M, C]
            stats._pv_cache.pop(point, None)
