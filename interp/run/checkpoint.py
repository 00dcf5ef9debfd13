"""Checkpoint and resume: a run's finished batches saved atomically in ``RUN_DIR/checkpoint/``.

A run started again in the same directory with the same config continues from its last finished
batch and ends with the same tables; a different config there is refused (``RunConfigMismatch``).

A checkpoint is one unit: each save writes a new generation folder (``checkpoint/gen-NNNNNN/``:
the pair rows, the statistics, the kept per-pair values, the drill-down tables), then replaces
``progress.json``, which names that generation, the size of each of its files and the number of
pair rows, and only then removes the older generations. An interrupt at any moment leaves
``progress.json`` naming a complete generation (the new one or the one before); a resume checks the
named files against the record and refuses an inconsistent checkpoint (``CheckpointError``) rather
than count a batch twice.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd

from .. import rundir as R

CHECKPOINT_DIR = "checkpoint"
FILES = ("pairs.parquet", "stats.safetensors", "pair_values.safetensors", "pair_profile.parquet",
         "pair_components.parquet")


class RunConfigMismatch(RuntimeError):
    """The run dir holds a checkpoint or a finished run of another config."""


class CheckpointError(RuntimeError):
    """A checkpoint whose files do not match its record (a damaged or hand-edited folder)."""


def _crash_point(batches_done: int, step: int) -> None:
    """Tests: ``INTERP_CRASH_IN_SAVE=BATCH:STEP`` stops the process after the STEP-th write of the
    save after batch BATCH (1..5: the generation's files; 6: progress.json; 7: the old generations
    removed), as a kill at that moment would."""
    spec = os.environ.get("INTERP_CRASH_IN_SAVE")
    if spec and spec == f"{batches_done}:{step}":
        os._exit(17)


class Checkpoint:
    """Atomic progress in ``run_dir/checkpoint``: finished pair rows, statistics, per-pair values,
    drill-down tables, failed pairs (module docstring)."""

    def __init__(self, run_dir: Path, cfg_hash: str):
        self.dir = Path(run_dir) / CHECKPOINT_DIR
        self.hash = cfg_hash

    def _progress(self) -> dict | None:
        path = self.dir / "progress.json"
        return json.loads(path.read_text()) if path.exists() else None

    def check(self) -> None:
        """Refuse a checkpoint of another config (``RunConfigMismatch``), reading only its progress file."""
        meta = self._progress()
        if meta is not None and meta["config_hash"] != self.hash:
            raise RunConfigMismatch(
                f"{self.dir.parent} holds a run with another config (hash {meta['config_hash']}, this one "
                f"{self.hash}); use another hydra.run.dir or start the same config again")

    def _where(self, meta: dict) -> Path:
        """The folder of the generation ``progress.json`` names (checkpoints written before
        generations existed: the checkpoint folder itself)."""
        return self.dir / meta["generation"] if meta.get("generation") else self.dir

    def _verify(self, meta: dict, rows: list[dict]) -> None:
        gen = self._where(meta)
        bad = []
        for name, size in (meta.get("files") or {}).items():
            p = gen / name
            if not p.exists():
                bad.append(f"{name} missing")
            elif p.stat().st_size != size:
                bad.append(f"{name} has {p.stat().st_size} bytes, recorded {size}")
        if "n_rows" in meta and len(rows) != meta["n_rows"]:
            bad.append(f"{len(rows)} pair rows, recorded {meta['n_rows']}")
        index = [r["pair_index"] for r in rows]
        if len(set(index)) != len(index):
            bad.append(f"{len(index) - len(set(index))} pairs twice")
        if bad:
            raise CheckpointError(f"{self.dir} is inconsistent ({'; '.join(bad)}); remove it to start the run over")

    def load(self) -> tuple[int, list[dict], list[dict], dict, list, list[dict]] | None:
        meta = self._progress()
        if meta is None:
            return None
        self.check()
        from safetensors.torch import load_file

        done = meta["batches_done"]
        gen = self._where(meta)
        rows = pd.read_parquet(gen / "pairs.parquet").to_dict("records") if done else []
        self._verify(meta, rows)
        state = load_file(str(gen / "stats.safetensors")) if done else {}
        details = [(pd.read_parquet(gen / "pair_profile.parquet"),
                    pd.read_parquet(gen / "pair_components.parquet"))] if done else []
        return done, rows, meta.get("failed", []), state, details, meta.get("forward_parts", [])

    def load_pair_values(self) -> dict:
        """The kept per-pair values saved with the last checkpoint (``DiffStats.pair_value_state``)."""
        from safetensors.torch import load_file

        meta = self._progress()
        path = self._where(meta) / "pair_values.safetensors" if meta else None
        return load_file(str(path)) if path is not None and path.exists() else {}

    def save(self, batches_done: int, rows: list[dict], failed: list[dict], state: dict, details,
             forward_parts: list[dict], pair_values: dict | None = None) -> None:
        gen = self.dir / f"gen-{batches_done:06d}"
        if gen.exists():  # left by an interrupted save of the same batch: never named by progress.json
            shutil.rmtree(gen)
        writers = (
            lambda p: R.write_parquet(p, pd.DataFrame(rows)),
            lambda p: R.write_safetensors(p, state),
            lambda p: R.write_safetensors(p, pair_values or {}),
            lambda p: R.write_parquet(p, pd.concat([d[0] for d in details], ignore_index=True)),
            lambda p: R.write_parquet(p, pd.concat([d[1] for d in details], ignore_index=True)),
        )
        for step, (name, write) in enumerate(zip(FILES, writers), 1):
            write(gen / name)
            _crash_point(batches_done, step)
        # the switch: progress.json names the new generation, its files' sizes and its row count
        R.write_json(self.dir / "progress.json",
                     {"config_hash": self.hash, "batches_done": batches_done, "generation": gen.name,
                      "files": {name: (gen / name).stat().st_size for name in FILES}, "n_rows": len(rows),
                      "failed": failed, "forward_parts": forward_parts})
        _crash_point(batches_done, 6)
        for old in self.dir.iterdir():  # older generations, and files of checkpoints before generations
            if old.name != gen.name and old.name != "progress.json":
                shutil.rmtree(old) if old.is_dir() else old.unlink()
        _crash_point(batches_done, 7)

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def combine_forward(parts: list[dict]) -> dict:
    """How the model ran over several parts (the parts of a resumed run, or shards): one record if
    they agree, else every part's (``mixed``)."""
    return parts[0] if all(f == parts[0] for f in parts) else {"mixed": parts}
