"""One command for several GPUs (or CPU processes): shard, run in parallel, merge.

    python -m interp.shards --n 2 --out outputs/runs/big -- model=llama3_8b_shape device=cuda pairs=all

Starts ``n`` processes of ``python -m interp.run OVERRIDES shard.index=i shard.count=n
hydra.run.dir=OUT/shard_i``, process ``i`` seeing only GPU ``devices[i]`` (``CUDA_VISIBLE_DEVICES``;
default: GPU i when CUDA has at least n devices), waits for all, then merges them into
``OUT/merged`` with ``interp.merge``. A failed shard stops the merge and names its log; shards keep
their checkpoints, so the same command resumes them. Each shard writes the statistics the merge
combines (``stats.safetensors``: ``analysis.save_state=auto`` writes it for a shard;
``analysis.save_state=false`` is refused here). A model too large for one GPU instead loads
across several in one process with ``model.device_map=auto`` (hub or local weights).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from . import rundir as R
from .cli import FAILURE, USAGE_ERROR, Parser, fail, positive_int
from .config import ConfigError
from .merge import MergeError, merge_runs
from .run.cli import precheck


def _last_line(log: Path) -> str:
    """The last non-empty line of a shard's log (interp.run's one-line error, when it refused),
    without its ``PROG: error:`` prefix."""
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    return re.sub(r"^\S+: error: ", "", lines[-1]) if lines else "(empty log)"


def main(argv: list[str] | None = None) -> None:
    ap = Parser("interp.shards", __doc__)
    ap.add_argument("--n", type=positive_int, required=True, metavar="N", help="number of shards (processes)")
    ap.add_argument("--out", required=True, metavar="DIR", help="folder for shard_i/, shard_i.log and merged/")
    ap.add_argument("--devices", default=None, metavar="IDS",
                    help="comma-separated GPU ids, one per shard (default: GPU i for shard i when CUDA has n GPUs)")
    ap.add_argument("overrides", nargs="*", metavar="OVERRIDE", help="Hydra overrides for interp.run (after --)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        fail("interp.shards", f"--out {out}: exists and is not a directory")
    devices = [d.strip() for d in args.devices.split(",") if d.strip()] if args.devices else None
    if devices is not None and len(devices) < args.n:
        fail("interp.shards", f"--devices names {len(devices)} GPU(s) for {args.n} shards")
    if devices is None:
        try:
            import torch

            if torch.cuda.device_count() >= args.n:
                devices = [str(i) for i in range(args.n)]
        except ImportError:
            pass
    try:  # the config of every shard, checked before any process starts or any folder exists
        precheck([*args.overrides, "shard.index=0", f"shard.count={args.n}"])
    except ConfigError as err:
        fail("interp.shards", f"interp.run refuses the overrides: {err}")
    from .config import compose

    try:
        no_state = compose([*args.overrides, "shard.index=0", f"shard.count={args.n}"]).analysis.save_state is False
    except ConfigError:  # overrides precheck reads otherwise (a sweep): interp.run decides
        no_state = False
    if no_state:
        fail("interp.shards", "analysis.save_state=false: the shards would write no statistics to merge; "
                              "leave it at auto (a shard writes them) or true")
    out.mkdir(parents=True, exist_ok=True)
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
            failed.append((i, p.returncode))
        log.close()
    wall = time.time() - t0
    if failed:
        logs = [out / f"shard_{i}.log" for i, _ in failed]
        if all(code == USAGE_ERROR for _, code in failed):  # interp.run refused the overrides: say why
            fail("interp.shards", f"interp.run refused the overrides: {_last_line(logs[0])} (log: {logs[0]})")
        fail("interp.shards", f"shard(s) {[i for i, _ in failed]} failed; see {', '.join(map(str, logs))}", FAILURE)
    try:
        merged = merge_runs([out / f"shard_{i}" for i in range(args.n)], out / "merged")
    except MergeError as err:
        fail("interp.shards", f"merging the shards failed: {err}", FAILURE)
    from .result import load_run

    print(load_run(merged).summary(), flush=True)  # the merged run's summary, as a single run prints it
    manifest = R.read_manifest(merged)
    forward = [R.read_manifest(out / f"shard_{i}")["timings"]["forward_s"] for i in range(args.n)]
    kept = manifest["counts"]["kept"]
    print(json.dumps({"shards": args.n, "devices": devices, "wall_s": round(wall, 2), "pairs": kept,
                      "shard_forward_s": [round(f, 3) for f in forward],
                      "forward_pairs_per_s": round(kept / max(forward), 2),
                      "wall_pairs_per_s": round(kept / wall, 2), "merged": str(merged)}), flush=True)


if __name__ == "__main__":
    main()
