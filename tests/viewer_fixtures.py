"""Run dirs for the viewer tests, made once per session by ``interp.run.run`` on the tiny model.

- ``run_a``: ``hooks=all``, every pair's activations saved; no causal results;
- ``sweeps/S/0_b`` (nested like a sweep job): hook points resid_post, z and mlp_post, activations of
  the first 4 pairs only, no ``pair_profile.parquet`` (the pair page falls back to the saved
  activations) and a ``causal/`` folder shaped like the one ``python -m interp.patch`` writes
  (fabricated numbers: the viewer only displays them), ``ablation_vs_random.parquet`` included
  (``add_causal(..., vs_random=False)`` gives an older causal dir without it).

Sentences include markup (``<b>``, ``<script>``) that must come out escaped.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from interp import rundir as R

MARKUP_A = "<b>She</b> is good at math."
MARKUP_B = "<b>She</b> is good in math."
SCRIPT_A = "He said <script>alert(1)</script> at noon."
SCRIPT_B = "He said <script>alert(1)</script> in noon."
REJECTED_A = "She walked <i>home</i>."

PAIRS = [
    ("She is good at math.", "She is good in math.", "preposition", "grammar"),
    ("She ate an apple today.", "She ate a apple today.", "article", "grammar"),
    (MARKUP_A, MARKUP_B, "preposition", "grammar"),
    ("They bought an old car.", "They bought a old car.", "article", "grammar"),
    ("She loves coffee.", "He loves coffee.", "subject", "semantic"),
    ("We met in Paris last year.", "We met in Berlin last year.", "location", "semantic"),
    (SCRIPT_A, SCRIPT_B, "preposition", "grammar"),
    ("He is afraid of dogs at night.", "He is afraid from dogs at night.", "preposition", "grammar"),
    ("The soup was hot.", "The soup was cold.", "adjective", "semantic"),
]


def write_pairs(path: Path) -> Path:
    lines = [json.dumps({"a": a, "b": b, "category": c, "type": t}) for a, b, c, t in PAIRS]
    lines.append(json.dumps({"a": REJECTED_A, "b": "She has walked home."}))  # rejected: length
    lines.append("not json")  # unreadable line
    path.write_text("\n".join(lines) + "\n")
    return path


def make_runs(root: Path) -> dict[str, Path]:
    from interp.run import run
    from tests.conftest import make_cfg

    root.mkdir(parents=True, exist_ok=True)
    pairs = write_pairs(root.parent / "viewer_pairs.jsonl")
    base = ("model=tiny", "device=cpu", "pairs=file", f"pairs.path={pairs}", "analysis.png=false")
    a = run(make_cfg(*base, "hooks=all", "analysis.n_saved_pairs=16"), root / "run_a")
    b = run(make_cfg(*base, "hooks.points=[resid_post,z,mlp_post]", "analysis.n_saved_pairs=4"),
            root / "sweeps" / "S" / "0_b")
    (b / getattr(R, "PAIR_PROFILE", "pair_profile.parquet")).unlink(missing_ok=True)
    add_causal(b)
    (root / "sweeps" / "S" / "multirun.yaml").write_text("sweep root: not a run dir\n")
    return {"a": a, "b": b}


_CACHE: dict[str, tuple[Path, dict[str, Path]]] = {}


@pytest.fixture(scope="session")
def viewer_runs(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """(runs root, {"a": run_a, "b": sweeps/S/0_b}); built once even when two modules use it."""
    if "runs" not in _CACHE:
        root = tmp_path_factory.mktemp("viewer") / "runs"
        _CACHE["runs"] = (root, make_runs(root))
    return _CACHE["runs"]


def add_causal(run_dir: Path, vs_random: bool = True) -> None:
    """RUN/causal/ with the tables of ``python -m interp.patch`` (columns as it writes them); without
    ``ablation_vs_random.parquet`` unless ``vs_random``."""
    rng = np.random.default_rng(0)
    pairs = R.read_table(run_dir, R.PAIRS)
    m = R.read_manifest(run_dir)
    layers = range(int(m["model"]["n_layers"]))
    n_heads = int(m["model"]["n_heads"])
    gram = pairs[pairs["type"] == "grammar"]
    cats = sorted(set(gram["category"]))
    out = run_dir / "causal"
    (out / "figures").mkdir(parents=True)
    rows, pair_rows, sel_rows = [], [], []
    for sel in ("stable", "random", "least_stable"):
        for k in (1, 4):
            for seed in (range(2) if sel == "random" else [0]):
                for c in range(k):
                    sel_rows.append({"selection": sel, "k": k, "seed": seed, "hook": "resid_post",
                                     "hook_name": f"blocks.{c % 2}.hook_resid_post", "layer": c % 2, "component": c,
                                     "rank_value": float(c + 1), "normalized": 0.5, "act_mean": 0.0})
                for mode in ("mean", "resample"):
                    for cat in cats + ["all"]:
                        d = float(rng.normal(0, 0.3))
                        rows.append({"selection": sel, "k": k, "seed": seed, "mode": mode, "where": "edit",
                                     "category": cat, "margin_change": d, "accuracy": 0.5, "accuracy_change": 0.0,
                                     "n_pairs": 2, "n_components": k, "margin": d, "baseline_margin": 0.0,
                                     "baseline_accuracy": 0.5, "margin_change_se": 0.1,
                                     "post_edit_margin_change": d / 2, "downstream_divergence_change": abs(d) / 4})
                    for pid, cat in zip(gram["pair_id"], gram["category"]):
                        pair_rows.append({"selection": sel, "k": k, "seed": seed, "mode": mode, "where": "edit",
                                          "pair_id": pid, "category": cat, "baseline_margin": 0.1, "margin": 0.2,
                                          "margin_change": 0.1})
    ab = pd.DataFrame(rows)
    R.write_parquet(out / "ablation.parquet", ab)
    summ = ab.groupby(["selection", "k", "mode", "where", "category"], sort=False).agg(
        n_seeds=("seed", "nunique"), margin_change_mean=("margin_change", "mean"),
        margin_change_std=("margin_change", "std"), accuracy_change_mean=("accuracy_change", "mean"),
        accuracy_change_std=("accuracy_change", "std"), n_pairs=("n_pairs", "first")).reset_index()
    R.write_parquet(out / "ablation_summary.parquet", summ)
    R.write_parquet(out / "ablation_pairs.parquet", pd.DataFrame(pair_rows))
    if vs_random:
        R.write_parquet(out / "ablation_vs_random.parquet", vs_random_table(ab))
    R.write_parquet(out / "selections.parquet", pd.DataFrame(sel_rows))
    prow = []
    first = gram.iloc[0]
    # as interp.patch writes it by default (patching.positions=modes; heads on here): per layer the
    # edit token and the tokens after it, per pair and per category with the bootstrap CI
    common = {"category": first["category"], "metric": "margin", "position": None, "patched": 0.5, "base": 0.0,
              "source": 1.0, "denominator": 1.0, "post_edit_margin": -1.0}
    for direction in ("denoising", "noising"):
        for layer in layers:
            for block, offset, token in (("edit", 0, "an/a"), ("after", None, " apple today.")):
                v = float(rng.uniform(-1, 1))
                prow.append({**common, "level": "pair", "pair_id": first["pair_id"], "hook": "resid_pre",
                             "kind": "resid_pre", "layer": layer, "positions": block, "offset": offset, "head": None,
                             "direction": direction, "normalized": v, "normalized_lo": None, "normalized_hi": None,
                             "token": token, "n_pairs": 1, "n_excluded": 0})
                prow.append({**common, "level": "category", "pair_id": None, "hook": "resid_pre",
                             "kind": "resid_pre", "layer": layer, "positions": block, "offset": offset, "head": None,
                             "direction": direction, "normalized": v, "normalized_lo": v - 0.2,
                             "normalized_hi": v + 0.2, "token": None, "n_pairs": 1, "n_excluded": 1})
            for h in range(n_heads):
                prow.append({**common, "level": "pair", "pair_id": first["pair_id"], "hook": "z", "kind": "z",
                             "layer": layer, "positions": "all", "offset": None, "head": h, "direction": direction,
                             "normalized": float(rng.uniform(-1, 1)), "normalized_lo": None, "normalized_hi": None,
                             "token": None, "n_pairs": 1, "n_excluded": 0})
    pt = pd.DataFrame(prow)
    for col in ("position", "offset", "head"):
        pt[col] = pt[col].astype("Int64")
    for col in ("normalized_lo", "normalized_hi"):
        pt[col] = pt[col].astype(float)
    R.write_parquet(out / "patching.parquet", pt)
    (out / "figures" / "effect_vs_k_mean_edit.html").write_text("<html><body>saved figure</body></html>\n")
    R.write_json(out / "manifest.json", {
        "status": "complete", "created": "2026-01-01T00:00:00", "run_dir": str(run_dir),
        "rank_column": "rank_calibrated", "counts": {"ablation_pairs": len(gram)},
        "method": {"patching": "normalized = ..."}, "config": {"k": [1, 4]}})


VS_METRICS = {"post_edit_margin": "post_edit_margin_change", "margin": "margin_change",
              "downstream_divergence": "downstream_divergence_change"}


def vs_random_table(ab: pd.DataFrame) -> pd.DataFrame:
    """An ``ablation_vs_random.parquet`` (columns of ``interp.causal.ablation.VS_RANDOM_COLUMNS``)
    from the fixture's ablation rows: each selection against the random seeds' mean changes."""
    rows = []
    for (sel, k, mode, where, cat), g in ab.groupby(["selection", "k", "mode", "where", "category"], sort=True):
        if sel == "random":
            continue
        rnd = ab[(ab["selection"] == "random") & (ab["k"] == k) & (ab["mode"] == mode) & (ab["where"] == where)
                 & (ab["category"] == cat)]
        for metric, col in VS_METRICS.items():
            change, r = float(g[col].iloc[0]), rnd[col].to_numpy(float)
            diff = change - float(r.mean())
            far = np.abs(r - r.mean()) >= abs(change - r.mean())
            rows.append({"selection": sel, "k": int(k), "mode": mode, "where": where, "category": cat, "metric": metric,
                         "change": change, "change_lo": change - 0.2, "change_hi": change + 0.2,
                         "random_mean": float(r.mean()), "random_sd": float(r.std(ddof=1)),
                         "random_min": float(r.min()), "random_max": float(r.max()), "diff_vs_random": diff,
                         "diff_se": 0.1, "diff_lo": diff - 0.2, "diff_hi": diff + 0.2, "n_clusters": 2,
                         "p_perm": float((1 + far.sum()) / (len(r) + 1)),
                         "share_random_below": float((r < change).mean()),
                         "beyond_all_random": bool(change < r.min() or change > r.max()), "n_seeds": len(r),
                         "n_pairs": int(g["n_pairs"].iloc[0]), "pairs": "held_out"})
    return pd.DataFrame(rows)
