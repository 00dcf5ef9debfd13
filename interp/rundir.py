"""Reading and writing a run directory. Every file is written atomically (temp file + rename), so
a crash never leaves a half-written table that a reader would take as complete.

Layout (the output contract; README.md documents it for other tools):

    manifest.json            schema_version, resolved config, model, versions, counts, timings, exclusions
    pairs.parquet            one row per kept pair (scores, edit position and tokens)
    stability.parquet        one row per hook x layer x component x position mode
    stability_by_category.parquet  the same per category
    contrast.parquet         Welch test per component between two groups of pairs (analysis.contrast)
    divergence.parquet       normalized |a-b| per hook x layer x category x token offset from the edit
    directions.parquet       per hook x layer x position: distinct directions of the stable set, mean a-b
    pair_values.parquet      per pair x hook x layer x component x position: |a-b| and the control mean
    pair_profile.parquet     per pair: ||a-b|| and ||a|| per hook x layer x position (drill-down)
    pair_components.parquet  per pair: the most changed and most stable components per hook x layer
    rejected.jsonl           pairs and lines that were not used, with the reason
    stats.safetensors        the mergeable running statistics (input of interp.merge)
    activations.safetensors  raw activations of the first N kept pairs, [N, 2, pos, ...]
    patterns.safetensors     attention patterns of the same pairs, [N, 2, head, q, k]
    figures/                 plotly HTML (offline) and PNG
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
# reader of the old layout would misread a new run dir; interp.load_run refuses a newer one and reads
# an older one (a run without the key is older than the key).
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


def write_safetensors(path: str | Path, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def read_manifest(run_dir: str | Path) -> dict:
    return json.loads((Path(run_dir) / MANIFEST).read_text())


def read_table(run_dir: str | Path, name: str) -> pd.DataFrame:
    return pd.read_parquet(Path(run_dir) / name)


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def is_complete(run_dir: str | Path) -> bool:
    """A run dir is complete once its manifest says so (written last)."""
    try:
        return read_manifest(run_dir).get("status") == "complete"
    except (OSError, ValueError):
        return False
