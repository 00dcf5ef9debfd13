"""Digests of a run dir's numbers: one sha256 per table and per tensor, for bit-identity checks.

``python tests/golden/digest.py RUN_DIR > FILE.json`` records them; the golden test compares a
fresh run of the same command with the recorded file. Parquet tables are hashed by their content
(column names, dtypes, values in row order), not their file bytes (which carry library versions),
with a file path in ``source`` reduced to its file name (the checkout may lie anywhere);
tensors by dtype, shape and bytes; the manifest by its config, counts, accuracy and hooks.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

TABLES = ["pairs", "stability", "stability_by_category", "contrast", "divergence", "pair_profile",
          "pair_components"]
TENSORS = ["stats", "activations", "patterns"]
MANIFEST_KEYS = ["config", "config_hash", "hooks", "positions", "groups", "group_types", "counts", "controls",
                 "accuracy", "excluded", "notes"]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def frame_digest(df) -> str:
    import pandas as pd

    h = hashlib.sha256()
    h.update(json.dumps([[str(c), str(t)] for c, t in df.dtypes.items()]).encode())
    h.update(pd.util.hash_pandas_object(df, index=False).values.tobytes())
    return h.hexdigest()


def tensor_digest(t) -> str:
    import torch

    return _sha(str(t.dtype).encode() + str(list(t.shape)).encode()
                + t.contiguous().view(-1).view(torch.uint8).numpy().tobytes())


def digest(run_dir: str | Path) -> dict:
    import pandas as pd
    from safetensors import safe_open

    run = Path(run_dir)
    out: dict = {}
    for name in TABLES:
        p = run / f"{name}.parquet"
        df = pd.read_parquet(p) if p.exists() else None
        if df is not None and "source" in df:  # where the checkout lies is not a number of the run
            df = df.assign(source=df["source"].map(lambda s: Path(s).name if s else s))
        out[name] = frame_digest(df) if df is not None else None
    for name in TENSORS:
        p = run / f"{name}.safetensors"
        if not p.exists():
            out[name] = None
            continue
        with safe_open(str(p), framework="pt") as f:
            meta = {k: v for k, v in (f.metadata() or {}).items()}
            out[name] = {k: tensor_digest(f.get_tensor(k)) for k in sorted(f.keys())}
            out[name]["__metadata__"] = _sha(json.dumps(meta, sort_keys=True).encode())
    rej = run / "rejected.jsonl"
    out["rejected"] = _sha(rej.read_bytes()) if rej.exists() else None
    man = json.loads((run / "manifest.json").read_text())
    out["manifest"] = {k: _sha(json.dumps(man.get(k), sort_keys=True, default=str).encode()) for k in MANIFEST_KEYS}
    return out


if __name__ == "__main__":
    json.dump(digest(sys.argv[1]), sys.stdout, indent=1, sort_keys=True)
    print()
