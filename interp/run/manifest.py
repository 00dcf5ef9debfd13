"""The manifest: what a run directory's ``manifest.json`` says about the run that made it.

The layout's ``schema_version`` (``interp.rundir.SCHEMA_VERSION``), status, the resolved config and
its hash, the model, how the forward pass ran, package versions, hooks, groups, counts (loaded, kept,
rejected by reason, failed), the control baseline, notes, what is excluded from the statistics,
accuracy per category, figures and timings.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import sys
import time

from omegaconf import DictConfig, OmegaConf

CONTROL_TEST = "one-sided paired t-test over pairs of |a-b| - mean_k |a-c_k|; BH q-values over all rows"
CLUSTER_TEST = ("the same test with cluster-robust (CR1) standard errors, n_clusters - 1 degrees of freedom; "
                "ratio of means with a delta-method interval on its log; |change| ~ 1 + embedding distance + "
                "real edit, cluster-robust")
EXCLUDED = {
    "bos": "the BOS position is excluded from every statistic except max_abs and the massive flag "
           "(Sun et al. 2024 measure massive activations on BOS and the first delimiter)",
    "padding": "pad positions are masked out of every statistic and log-probability",
    "shared_prefix": "in the component spread, the prefix shared by both sentences is counted once",
}


def config_hash(cfg: DictConfig) -> str:
    """Hash of what determines a run's numbers (not progress bars, output placement or tracking)."""
    c = OmegaConf.to_container(cfg, resolve=True)
    for k in ("progress", "hydra", "checkpoint_every", "overwrite", "tracking"):
        c.pop(k, None)
    (c.get("analysis") or {}).pop("save_state", None)  # whether stats.safetensors is written: no number
    return hashlib.sha256(json.dumps(c, sort_keys=True, default=str).encode()).hexdigest()[:16]


def recorded_config(cfg: DictConfig) -> dict:
    """The config a manifest records: the run's, without ``tracking`` (where the run is logged:
    ``tracking.json``), so a run tracked or not records the same config."""
    c = OmegaConf.to_container(cfg, resolve=True)
    c.pop("tracking", None)
    return c


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for pkg in ("interp", "torch", "transformers", "transformer-lens", "numpy", "pandas", "hydra-core"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def rejected_by_reason(rows: list[dict]) -> dict[str, int]:
    reasons: dict[str, int] = {}
    for r in rows:
        reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    return reasons


def build_manifest(cfg: DictConfig, stats, facts: dict, n_kept: int, rejected_rows: list[dict], n_failed: int,
                   notes: dict, accuracy: list[dict], timings: dict) -> dict:
    """The manifest of a finished analysis; ``run_dir`` and ``figures`` are filled in when it is saved."""
    from ..rundir import SCHEMA_VERSION

    acfg = cfg.analysis
    n_controls = stats.n_controls
    return {
        "schema_version": SCHEMA_VERSION,
        "status": "complete",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "run_dir": None,
        "config": recorded_config(cfg),
        "config_hash": config_hash(cfg),
        "model": facts["model"],
        "forward": facts.get("forward"),
        "versions": versions(),
        "hooks": [vars(s) for s in stats.sites],
        "positions": stats.positions,
        "groups": stats.categories,
        "group_types": facts["group_types"],
        "shard": facts.get("shard"),
        "merged_from": facts.get("merged_from"),
        "counts": {
            "pairs_loaded": facts["pairs_loaded"], "unreadable_lines": facts["unreadable_lines"],
            "kept": n_kept, "rejected": facts["rejected"], "failed_in_forward": n_failed,
            "rejected_by_reason": rejected_by_reason(rejected_rows), "batches": facts["batches"],
            "resumed_from_batch": facts["resumed_from_batch"], "duplicate_pairs": facts.get("duplicates", 0),
            **facts["inspect"],
        },
        "controls": {**(facts.get("controls") or {}), "n": n_controls, "seed": int(cfg.seed),
                     "pool": (("words" if acfg.controls.words else acfg.controls.pool)
                              if n_controls else None),
                     "test": CONTROL_TEST},
        "inference": {"rule": str(acfg.rule), "stable_ratio": float(acfg.stable_ratio), "alpha": float(acfg.alpha),
                      "ci": float(acfg.ci), "cluster": str(acfg.cluster), "clustered_test": CLUSTER_TEST},
        "pair_values": facts.get("pair_values"),
        # whether stability_by_category.parquet was written, and why not (interp.run.state)
        "by_category": facts.get("by_category"),
        "state": facts.get("state"),  # whether stats.safetensors was written (analysis.save_state)
        "notes": notes,
        "excluded": dict(EXCLUDED),
        "accuracy": accuracy,
        "figures": {},
        "timings": timings,
    }
