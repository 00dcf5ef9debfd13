"""One command for several GPUs (or CPU processes): shard, run in parallel, merge.

    python -m interp.shards --n 2 --out outputs/runs/big -- model=llama3_8b_shape device=cuda pairs=all

Starts ``n`` processes of ``python -m interp.run OVERRIDES shard.index=i shard.count=n
hydra.run.dir=OUT/shard_i``, process ``i`` seeing only GPU ``devices[i]`` (``CUDA_VISIBLE_DEVICES``;
default: GPU i when CUDA has at least n devices), waits for all, then merges them into
``OUT/merged`` with ``interp.merge``. A failed shard stops the merge and names its log; shards keep
their checkpoints, so the same command resumes them. A model too large for one GPU instead loads
across several in one process with ``model.device_map=auto`` (hub or local weights).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .merge import merge_runs


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(prog="python -m interp.shards", description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, required=True, help="number of shards (processes)")
    ap.add_argument("--out", required=True, help="folder for shard_i/ and merged/")
    ap.add_argument("--devices", default=None, help="comma-separated GPU ids, one per shard")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for interp.run (after --)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    devices = args.devices.split(",") if args.devices else None
    if devices is None:
        try:
            import torch

            if torch.cuda.device_count() >= args.n:
                devices = [str(i) for i in range(args.n)]
        except ImportError:
            pass
    if devices is not None and len(devices) < args.n:
        raise SystemExit(f"--devices names {len(devices)} GPUs for {args.n} shards")
    procs = []
    t0 = time.time()
    for i in range(args.n):
        env = dict(os.environ)
        if devices is not None:
            env["CUDA_VISIBLE_DEVICES"] = devices[i]
        cmd = [sys.executable, "-m", "interp.run", *args.overrides, f"shard.index={i}", f"shard.count={args.n}",
               f"hydra.run.dir={out / f'shard_{i}'}", "progress=false"]
        log = open(out / f"shard_{i}.log", "w")
        procs.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    failed = []
    for i, (p, log) in enumerate(procs):
        if p.wait() != 0:
            failed.append(i)
        log.close()
    wall = time.time() - t0
    if failed:
        raise SystemExit(f"shard(s) {failed} failed; see {', '.join(str(out / f'shard_{i}.log') for i in failed)}")
    merged = merge_runs([out / f"shard_{i}" for i in range(args.n)], out / "merged")
    manifest = json.loads((merged / "manifest.json").read_text())
    forward = [json.loads((out / f"shard_{i}" / "manifest.json").read_text())["timings"]["forward_s"]
               for i in range(args.n)]
    kept = manifest["counts"]["kept"]
    print(json.dumps({"shards": args.n, "devices": devices, "wall_s": round(wall, 2), "pairs": kept,
                      "shard_forward_s": [round(f, 3) for f in forward],
                      "forward_pairs_per_s": round(kept / max(forward), 2),
                      "wall_pairs_per_s": round(kept / wall, 2), "merged": str(merged)}), flush=True)
    return merged


if __name__ == "__main__":
    main()
