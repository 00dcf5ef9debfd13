"""Merge shard run dirs into one run dir: ``python -m interp.merge SHARD_DIR... --out DIR``.

Shards are runs of the same config that differ only in ``shard.index`` (``shard.count`` equal).
Their statistics are exact monoids (float64 power sums about a shift per component; a merge
re-expresses one state about the other's shift, equivalent to Chan et al.'s), so the merged
tables equal those of a single-process run up to float rounding (the forward passes see other
batch compositions, which changes activations only at the level of float32 rounding). Pairs are
concatenated in the run-wide order; the drill-down tables are concatenated; the saved activations
and attention patterns come from shard 0, which saves them for the run's first pairs.

A shard's statistics are its ``stats.safetensors``, which a run writes when it is a shard
(``shard.count > 1``; ``analysis.save_state``): a run dir without one is refused, with the setting
that writes it.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf
from safetensors import safe_open

from . import rundir as R
from .cli import Parser, fail, user_errors
from .hooks import HookSite
from .run.assemble import assemble
from .run.checkpoint import combine_forward
from .run.pipeline import new_stats

IGNORED = ("shard", "hydra", "progress", "checkpoint_every", "overwrite")


class MergeError(ValueError):
    """Shards that cannot be merged; the message names the shard and the reason."""


def _comparable(config: dict) -> str:
    c = {k: v for k, v in config.items() if k not in IGNORED}
    if isinstance(c.get("analysis"), dict):  # whether the state file is written: not a number of the run
        c["analysis"] = {k: v for k, v in c["analysis"].items() if k != "save_state"}
    return json.dumps(c, sort_keys=True, default=str)


def load_stats(run_dir: Path, cfg, keep_values: dict | None = None):
    """The mergeable statistics of a run dir as a ``DiffStats`` (on the CPU), with its kept
    per-pair values (``pair_values.parquet``) when ``keep_values`` names them."""
    path = run_dir / R.STATS
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        state = {k: f.get_tensor(k) for k in f.keys()}
    sites = [HookSite(**s) for s in json.loads(meta["sites"])]
    members = json.loads(meta["members"]) if "members" in meta else None  # blocks of categories (interp.run.state)
    stats = new_stats(cfg, sites, json.loads(meta["groups"]), "cpu", keep_values=keep_values, members=members)
    stats.load_state_dict(state)
    if keep_values and (run_dir / R.PAIR_VALUES).exists():
        from .stats.values import read_into
        read_into(run_dir / R.PAIR_VALUES, stats)
    stats.shapes = {k: tuple(v) for k, v in json.loads(meta["shapes"]).items()}
    return stats, json.loads(meta["group_types"])


def merge_runs(shards: list[str | Path], out: str | Path, overwrite: bool = False) -> Path:
    t0 = time.time()
    shards = [Path(s) for s in shards]
    if not shards:
        raise MergeError("no shard dirs given")
    if R.is_complete(out) and not overwrite:
        raise MergeError(f"--out {out} already holds a finished run; choose another folder or --overwrite to replace it")
    manifests = []
    for s in shards:
        if not R.is_complete(s):
            raise MergeError(f"{s}: not a complete run dir (no manifest.json with status complete)")
        try:
            manifests.append(R.read_manifest(s))
        except R.SchemaVersionError as err:  # a shard newer than this code
            raise MergeError(str(err)) from None
    ref = _comparable(manifests[0]["config"])
    for s, m in zip(shards[1:], manifests[1:]):
        if _comparable(m["config"]) != ref:
            raise MergeError(f"{s}: its config differs from {shards[0]}'s beyond the shard settings")
    info = [(m.get("shard") or {"index": 0, "count": 1}) for m in manifests]
    counts = {int(i["count"]) for i in info}
    indices = sorted(int(i["index"]) for i in info)
    if len(counts) != 1 or indices != list(range(counts.pop())):
        raise MergeError(f"shards must be index 0..count-1 of one count exactly once; got {info}")
    for s in shards:
        if not (s / R.STATS).is_file():
            raise MergeError(f"{s}: no {R.STATS}, the statistics a merge combines (a run writes it as a shard, "
                             "shard.count > 1, unless analysis.save_state=false); run it again with "
                             "analysis.save_state=true")
    cfg = OmegaConf.create(manifests[0]["config"])
    cfg.shard = {"index": 0, "count": 1}
    kept_facts = manifests[0].get("pair_values") or {}
    keep = kept_facts.get("kept") or {}
    if any((m.get("pair_values") or {}).get("kept") != keep for m in manifests):
        raise MergeError("the shards kept per-pair values of different hook points or position modes "
                         "(analysis.pair_values.max_mb dropped different ones); merge needs the same")
    stats, group_types = load_stats(shards[0], cfg, keep)
    for s in shards[1:]:
        other, _ = load_stats(s, cfg, keep)
        stats = stats.merge(other)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pairs = pd.concat([R.read_table(s, R.PAIRS) for s in shards], ignore_index=True)
    first = next(s for s, i in zip(shards, info) if int(i["index"]) == 0)
    rejected = [r for r in R.read_jsonl(first / R.REJECTED) if r.get("reason") != "forward_failed"]
    failed = [r for s in shards for r in R.read_jsonl(s / R.REJECTED) if r.get("reason") == "forward_failed"]
    profiles, components = [], []
    for s in shards:
        if (s / R.PAIR_PROFILE).exists():
            profiles.append(R.read_table(s, R.PAIR_PROFILE))
            components.append(R.read_table(s, R.PAIR_COMPONENTS))
    for name in (R.ACTIVATIONS, R.PATTERNS):
        if (first / name).exists():
            shutil.copyfile(first / name, out / name)
    m0 = next(m for m, i in zip(manifests, info) if int(i["index"]) == 0)
    facts = {
        "model": m0["model"], "forward": combine_forward([m.get("forward") for m in manifests]), "group_types": group_types,
        "pairs_loaded": m0["counts"]["pairs_loaded"],
        "unreadable_lines": m0["counts"]["unreadable_lines"], "rejected": m0["counts"]["rejected"],
        "batches": sum(m["counts"]["batches"] for m in manifests), "resumed_from_batch": 0,
        "inspect": {"n_saved_pairs": m0["counts"].get("n_saved_pairs", 0)}, "shard": None,
        "merged_from": [str(s.resolve()) for s in shards],
        "controls": {k: v for k, v in (m0.get("controls") or {}).items() if k not in ("n", "seed", "pool", "test")},
        "pair_values": kept_facts, "by_category": m0.get("by_category"),
    }
    timings = {"shard_forward_s": [m["timings"].get("forward_s") for m in manifests]}
    assemble(cfg, stats, pairs, rejected, failed, profiles, components, facts, timings, t0).save(out, overwrite=True)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = Parser("interp.merge", __doc__)
    ap.add_argument("shards", nargs="+", metavar="SHARD_DIR",
                    help="complete shard run dirs of one config, shard.index 0..count-1")
    ap.add_argument("--out", required=True, metavar="DIR", help="the merged run dir (created)")
    ap.add_argument("--overwrite", action="store_true", help="replace a finished run in --out entirely")
    args = ap.parse_args(argv)
    for s in args.shards:
        if not Path(s).is_dir():
            fail("interp.merge", f"{s}: no such directory")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        fail("interp.merge", f"--out {args.out}: exists and is not a directory")
    with user_errors("interp.merge", MergeError):
        out = merge_runs(args.shards, args.out, overwrite=args.overwrite)
    from .result import load_run

    print(load_run(out).summary(), flush=True)


if __name__ == "__main__":
    main()
