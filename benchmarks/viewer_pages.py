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


def pages(run_dir: Path) -> dict[str, str]:
    from interp import rundir as R

    rid = run_dir.name
    m = R.read_manifest(run_dir)
    pairs = pd.read_parquet(run_dir / "pairs.parquet", columns=["pair_id"])
    points = [h["point"] for h in m.get("hooks", [])]
    hook = points[0] if points else "resid_post"
    out = {"run": f"/run/{rid}", "table": f"/run/{rid}/-/table", "layer": f"/run/{rid}/-/layer/0",
           "divergence": f"/run/{rid}/-/divergence", "pairs": f"/run/{rid}/-/pairs",
           "pair": f"/run/{rid}/-/pair/{pairs['pair_id'].iloc[0]}", "rejected": f"/run/{rid}/-/rejected",
           "causal": f"/run/{rid}/-/causal"}
    if hook == "mlp_post":
        out["neuron"] = f"/run/{rid}/-/neuron/0/0"
    else:
        out["component"] = f"/run/{rid}/-/component/{hook}/0/0"
    if "z" in points:
        out["head"] = f"/run/{rid}/-/head/0/0"
    return out


def measure(run_dir: Path, repeats: int = 2) -> dict:
    from interp.viewer import create_app

    run_dir = run_dir.resolve()
    client = create_app(run_dir.parent).test_client()
    res = {}
    for name, url in pages(run_dir).items():
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
