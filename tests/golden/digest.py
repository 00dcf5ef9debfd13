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
# The columns each table had when the reference was recorded, in their order. Later columns (the matched
# nulls' and the clustered statistics') are left out of the digest, so the reference pins that the
# numbers a run already produced stay bit-identical; the flag then named ``massive`` is ``offset_dim``
# since ``massive`` means Sun et al.'s massive activation.
LEGACY_COLUMNS = {
    "pairs": ["pair_index", "pair_id", "category", "type", "a", "b", "source", "line", "n_tokens", "n_tokens_b",
              "edit_pos", "edit_end_a", "edit_end_b", "token_a", "token_b", "token_id_a", "token_id_b", "logprob_a",
              "logprob_b", "margin", "correct"],
    "stability": ["hook", "hook_name", "layer", "component", "position", "n_pairs", "mean_diff", "std_diff",
                  "mean_abs_diff", "std_abs_diff", "act_mean", "spread", "normalized", "normalized_std", "constant",
                  "massive", "mean_control_diff", "control_normalized", "ratio", "ratio_pair_mean", "ratio_pair_std",
                  "delta_normalized", "t_stat", "p_value", "head", "head_dim", "rank", "q_value", "rank_calibrated"],
    "contrast": ["hook", "layer", "component", "position", "group_a", "group_b", "quantity", "n_a", "n_b", "mean_a",
                 "mean_b", "effect", "t_stat", "p_value", "q_value"],
    "divergence": ["hook", "layer", "category", "offset", "n_pairs", "normalized", "normalized_median"],
    "pair_profile": ["pair_id", "hook", "layer", "position", "offset", "diff_norm", "a_norm"],
    "pair_components": ["pair_id", "hook", "layer", "kind", "order", "component", "abs_diff", "normalized"],
}
LEGACY_COLUMNS["stability_by_category"] = LEGACY_COLUMNS["stability"] + ["category"]
LEGACY_STATE = ("diff/", "spread/", "profile/")  # stats.safetensors keys of the reference (not absmax/abshist)
LEGACY_CONTROLS = ("n", "seed", "pool", "test")
NEW_COUNTS = ("duplicate_pairs",)

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
        if df is not None and "offset_dim" in df:
            df = df.drop(columns="massive").rename(columns={"offset_dim": "massive"})
        if df is not None:
            df = df[[c for c in LEGACY_COLUMNS[name] if c in df]]
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
            keys = [k for k in sorted(f.keys()) if name != "stats" or k.startswith(LEGACY_STATE)]
            tensors = {k: f.get_tensor(k) for k in keys}
            if name == "stats":  # counts saved compact (one per site where every component has the same):
                from interp.stats.moments import expand_counts  # the numbers are those of the full tensor

                tensors = {k: expand_counts(t, tensors[k[:-1] + "s1"].shape) if k.endswith("/n") and
                           k[:-1] + "s1" in tensors else t for k, t in tensors.items()}
            out[name] = {k: tensor_digest(t) for k, t in tensors.items()}
            out[name]["__metadata__"] = _sha(json.dumps(meta, sort_keys=True).encode())
    rej = run / "rejected.jsonl"
    out["rejected"] = _sha(rej.read_bytes()) if rej.exists() else None
    man = json.loads((run / "manifest.json").read_text())
    if man.get("counts"):  # counts added since the reference: not in it
        man["counts"] = {k: v for k, v in man["counts"].items() if k not in NEW_COUNTS}
    if man.get("controls"):
        man["controls"] = {k: v for k, v in man["controls"].items() if k in LEGACY_CONTROLS}
    out["manifest"] = {k: _sha(json.dumps(man.get(k), sort_keys=True, default=str).encode()) for k in MANIFEST_KEYS}
    return out


if __name__ == "__main__":
    json.dump(digest(sys.argv[1]), sys.stdout, indent=1, sort_keys=True)
    print()
