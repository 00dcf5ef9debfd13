"""Seconds per viewer page on a run dir, through Flask's test client (no browser, no network).

    python -m benchmarks.viewer_pages RUN_DIR [--repeats 2]

The run dir's parent is the viewer's runs folder. Every page kind a researcher opens on a run is
requested ``repeats`` times in a fresh app (the first request of a page reads its tables from disk,
later ones may hit the store's cache): the run page, the stability table, a layer, a component (or
neuron) page, a head page where the run has ``z``, divergence, pairs, one pair, rejected, causal.
Prints one JSON line: the run dir's size, then per page the first and the best later time and the
HTTP status, and the slowest first request.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd


def dir_size_mb(path: Path) -> dict:
    files = {p.relative_to(path).as_posix(): p.stat().st_size for p in path.rglob("*") if p.is_file()}
    top = sorted(files.items(), key=lambda kv: -kv[1])[:8]
    return {"total_mb": round(sum(files.values()) / 2 ** 20, 1),
            "largest_mb": {k: round(v / 2 ** 20, 1) for k, v in top}}


def pages(run_dir: Path, app) -> dict[str, str]:
    """Page name -> URL on ``app`` (the viewer of ``run_dir``'s parent), built by its routes
    (``url_for``), so a pair id with ``/``, ``?``, ``#`` or ``%`` is quoted."""
    from flask import url_for

    from interp import rundir as R

    m = R.read_manifest(run_dir)
    pairs = pd.read_parquet(run_dir / "pairs.parquet", columns=["pair_id"])
    points = [h["point"] for h in m.get("hooks", [])]
    hook = points[0] if points else "resid_post"
    endpoints = {"run": ("run.run_page", {}), "table": ("table.table", {}), "layer": ("layer.layer", {"layer": 0}),
                 "divergence": ("divergence.divergence", {}), "pairs": ("pairs.pairs", {}),
                 "pair": ("pairs.pair", {"pair_id": str(pairs["pair_id"].iloc[0])}),
                 "rejected": ("rejected.rejected", {}), "causal": ("causal.causal", {})}
    if hook == "mlp_post":
        endpoints["neuron"] = ("component.neuron", {"layer": 0, "neuron": 0})
    else:
        endpoints["component"] = ("component.component", {"hook": hook, "layer": 0, "component": 0})
    if "z" in points:
        endpoints["head"] = ("head.head", {"layer": 0, "head": 0})
    with app.test_request_context():
        return {name: url_for(endpoint, run=run_dir.name, **args) for name, (endpoint, args) in endpoints.items()}


def measure(run_dir: Path, repeats: int = 2) -> dict:
    from interp.viewer import create_app

    run_dir = run_dir.resolve()
    app = create_app(run_dir.parent)
    client = app.test_client()
    res = {}
    for name, url in pages(run_dir, app).items():
        times, status = [], None
        for _ in range(repeats):
            t = time.perf_counter()
            r = client.get(url)
            times.append(time.perf_counter() - t)
            status = r.status_code
        res[name] = {"first_s": round(times[0], 3), "again_s": round(min(times[1:] or times), 3), "status": status}
    return {"run_dir": str(run_dir), **dir_size_mb(run_dir), "pages": res,
            "slowest_first_s": max(v["first_s"] for v in res.values())}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args(argv)
    print(json.dumps(measure(a.run_dir, a.repeats)), flush=True)


if __name__ == "__main__":
    main()
