"""Reading and writing a run directory. Every file is written atomically (temp file + rename), so
a crash never leaves a half-written table that a reader would take as complete.

The layout (the output contract): ``interp.run.contract`` lists every file, and every table's
columns; README.md's table is rendered from it. ``read_manifest`` refuses a run dir newer than
this code (``SCHEMA_VERSION``), for every reader.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

# The version of the run-dir layout that manifest.json's "schema_version" records. Raise it when a
# reader of the old layout would misread a new run dir; every reader (``read_manifest``: load_run,
# the viewer, compare, merge, patch) refuses a newer one and reads an older one (a run without the
# key is older than the key). Every file of the layout: ``interp.run.contract``.
SCHEMA_VERSION = 1

MANIFEST = "manifest.json"
PAIRS = "pairs.parquet"
STABILITY = "stability.parquet"
STABILITY_BY_CATEGORY = "stability_by_category.parquet"
REJECTED = "rejected.jsonl"
STATS = "stats.safetensors"
CONTRAST = "contrast.parquet"
DIVERGENCE = "divergence.parquet"
PAIR_PROFILE = "pair_profile.parquet"
PAIR_COMPONENTS = "pair_components.parquet"
ACTIVATIONS = "activations.safetensors"
PATTERNS = "patterns.safetensors"
PAIR_VALUES = "pair_values.parquet"
DIRECTIONS = "directions.parquet"
FIGURES = "figures"


def _file_mode() -> int:
    """The mode a new file gets under the process's umask (read once per write: umask is process-wide)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.
    The file gets the mode the umask gives a new file, whatever the writer (safetensors writes 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str, sort_keys=False) + "\n")


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            for r in rows:
                f.write(json.dumps(r, default=str) + "\n")


def write_parquet(path: str | Path, df: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def write_table(path: str | Path, df: pd.DataFrame) -> None:
    """A run's table (``Result.save``), atomically: zstd-compressed, dictionary-encoded only where
    values repeat (text, flags, integers): a float column of a stability table has as many distinct
    values as rows, and its dictionary page, written before the writer falls back to plain encoding,
    only added a quarter to the file and slowed reading it. The values read back are the same."""
    dictionary = [str(c) for c in df.columns if not pd.api.types.is_float_dtype(df[c])]
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False, compression="zstd", use_dictionary=dictionary)


def write_safetensors(path: str | Path, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)


class RunDirError(ValueError):
    """A folder is not a complete run directory (or not one this code can read); the message says why."""


class SchemaVersionError(RunDirError):
    """A run dir written by a newer interp: its manifest's ``schema_version`` is above ``SCHEMA_VERSION``."""

    def __init__(self, run_dir: str | Path, version: Any):
        self.run_dir, self.version, self.supported = Path(run_dir), version, SCHEMA_VERSION
        super().__init__(f"{run_dir}: written by a newer interp (run-dir schema_version {version!r}, this code reads "
                         f"up to {SCHEMA_VERSION}); upgrade interp to read it")


def check_schema(manifest: dict, run_dir: str | Path) -> dict:
    """``manifest`` if this code can read its run dir, else ``SchemaVersionError`` (one line naming
    ``run_dir``, the run's version and this code's). A manifest without the key is older than it."""
    version = manifest.get("schema_version", 0)
    if not isinstance(version, int) or isinstance(version, bool) or version > SCHEMA_VERSION:
        raise SchemaVersionError(run_dir, version)
    return manifest


def read_manifest(run_dir: str | Path, check: bool = True) -> dict:
    """The run dir's ``manifest.json``; ``SchemaVersionError`` for a run newer than this code
    (``check=False``: read it anyway, e.g. to see whether it is complete). ``OSError`` when it is
    missing, ``ValueError`` when it is not a JSON object."""
    path = Path(run_dir) / MANIFEST
    manifest = json.loads(path.read_text())
    if not isinstance(manifest, dict):
        raise ValueError(f"{path}: not a JSON object")
    return check_schema(manifest, run_dir) if check else manifest


def read_table(run_dir: str | Path, name: str) -> pd.DataFrame:
    return pd.read_parquet(Path(run_dir) / name)


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def is_complete(run_dir: str | Path) -> bool:
    """A run dir is complete once its manifest says so (written last), whatever its schema_version."""
    try:
        return read_manifest(run_dir, check=False).get("status") == "complete"
    except (OSError, ValueError):
        return False
