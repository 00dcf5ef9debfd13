"""Checkpoint and resume: a run's finished batches saved atomically in ``RUN_DIR/checkpoint/``.

A run started again in the same directory with the same config continues from its last finished
batch and ends with the same tables; a different config there is refused (``RunConfigMismatch``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .. import rundir as R

CHECKPOINT_DIR = "checkpoint"


class RunConfigMismatch(RuntimeError):
    """The run dir holds a checkpoint of a run with another config."""


class Checkpoint:
    """Atomic progress files in ``run_dir/checkpoint``: finished pair rows, stats, rejected pairs."""

    def __init__(self, run_dir: Path, cfg_hash: str):
        self.dir = Path(run_dir) / CHECKPOINT_DIR
        self.hash = cfg_hash

    def check(self) -> None:
        """Refuse a checkpoint of another config (``RunConfigMismatch``), reading only its progress file."""
        meta_path = self.dir / "progress.json"
        if meta_path.exists():
            found = json.loads(meta_path.read_text())["config_hash"]
            if found != self.hash:
                raise RunConfigMismatch(
                    f"{self.dir.parent} holds a run with another config (hash {found}, this one {self.hash}); "
                    "use another hydra.run.dir or start the same config again")

    def load(self) -> tuple[int, list[dict], list[dict], dict, list, list[dict]] | None:
        meta_path = self.dir / "progress.json"
        if not meta_path.exists():
            return None
        meta = json.loads(meta_path.read_text())
        if meta["config_hash"] != self.hash:
            raise RunConfigMismatch(
                f"{self.dir.parent} holds a run with another config (hash {meta['config_hash']}, this "
                f"one {self.hash}); use another hydra.run.dir or start the same config again")
        from safetensors.torch import load_file

        done = meta["batches_done"]
        rows = pd.read_parquet(self.dir / "pairs.parquet").to_dict("records") if done else []
        state = load_file(str(self.dir / "stats.safetensors")) if done else {}
        details = [(pd.read_parquet(self.dir / "pair_profile.parquet"),
                    pd.read_parquet(self.dir / "pair_components.parquet"))] if done else []
        return done, rows, meta.get("failed", []), state, details, meta.get("forward_parts", [])

    def save(self, batches_done: int, rows: list[dict], failed: list[dict], state: dict, details,
             forward_parts: list[dict], pair_values: dict | None = None) -> None:
        R.write_parquet(self.dir / "pairs.parquet", pd.DataFrame(rows))
        R.write_safetensors(self.dir / "stats.safetensors", state)
        R.write_safetensors(self.dir / "pair_values.safetensors", pair_values or {})
        R.write_parquet(self.dir / "pair_profile.parquet", pd.concat([d[0] for d in details], ignore_index=True))
        R.write_parquet(self.dir / "pair_components.parquet", pd.concat([d[1] for d in details], ignore_index=True))
        # progress.json last: it names what the other two files hold
        R.write_json(self.dir / "progress.json",
                     {"config_hash": self.hash, "batches_done": batches_done, "failed": failed,
                      "forward_parts": forward_parts})

    def load_pair_values(self) -> dict:
        """The kept per-pair values saved with the last checkpoint (``DiffStats.pair_value_state``)."""
        from safetensors.torch import load_file

        path = self.dir / "pair_values.safetensors"
        return load_file(str(path)) if path.exists() else {}

    def remove(self) -> None:
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)


def combine_forward(parts: list[dict]) -> dict:
    """How the model ran over several parts (the parts of a resumed run, or shards): one record if
    they agree, else every part's (``mixed``)."""
    return parts[0] if all(f == parts[0] for f in parts) else {"mixed": parts}
