"""``pairs=hf``: pairs from a Hugging Face ``datasets`` dataset, on the hub or in a local copy.

``pairs.dataset`` names it:
- a folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk`` (it holds
  ``state.json`` or ``dataset_dict.json``): read with ``load_from_disk``; of a ``DatasetDict`` the
  split ``pairs.split`` (default ``train``), a single ``Dataset`` whole;
- any other local file or folder: ``load_dataset`` over its data files (a ``.jsonl``/``.json``,
  ``.csv``, ``.parquet`` or ``.arrow`` file is one ``train`` split; a folder's files name their splits
  as the hub's do: ``train.jsonl``, ``test.jsonl``...), with ``pairs.subset`` as the config name;
- else a hub name (``org/name``): ``load_dataset(dataset, subset, split=split)``, which needs the hub
  or the ``datasets`` cache (``HF_DATASETS_OFFLINE=1`` reads only the cache).
A name that is not a local file or folder and cannot be a hub name (``./x``, ``/x``, ``a/b/c``, a
data-file suffix) is a missing local path.

Each row is one record (None cells left out) read by ``files.pair_from_record`` and filed by
``files.collect``, so its checks, problems and CausalGym adapter are those of a pair file; ``line``
is the row number (1-based) and ``source`` is ``DATASET:SPLIT`` (``DATASET`` for a single saved
``Dataset``). ``pairs.columns`` maps our fields ``a``, ``b``, ``category``, ``type``, ``alt``,
``pair_id`` to column names (null: found by name as in files, ``a``/``b``, ``good``/``bad``,
``sentence_good``/``sentence_bad`` or CausalGym's ``base``/``src``). The mapped sentence columns are
the sentences; every other column, those mapped to the other fields included, stays in
``Pair.meta`` (scalars only). BLiMP's columns need no mapping: ``UID`` is the category when there is
no ``category`` column, and a ``pairID`` gives ``pair_id = <category>-<pairID>``, as ``pairs=blimp``
does. The default category (no column) is the dataset's name (its last path component).

``check_hf_source`` refuses before any model loads, with one line (``ConfigError``): ``datasets`` not
installed, no ``pairs.dataset``, a local path that does not exist, a split that does not exist (the
available ones listed), a mapped column that does not exist or no sentence columns (the columns
listed), a dataset that cannot be read. A local copy is opened for that (cheap: ``load_from_disk``
memory-maps, ``load_dataset`` reuses its cache) and kept for the reader, so a run opens it once; of a
hub dataset only its metadata is read (``load_dataset_builder``: splits and columns where the hub
publishes them), the rows once, by the reader.
"""

from __future__ import annotations

import contextlib
import functools
import re
from pathlib import Path
from typing import Any

from ..config import ConfigError, one_line
from . import PairSet
from .files import collect, has_sentence_columns, pair_from_record
from .records import Problem

COLUMN_FIELDS = ("a", "b", "category", "type", "alt", "pair_id")
DATA_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".arrow": "arrow"}
SAVED_MARKERS = ("dataset_dict.json", "state.json")  # what save_to_disk writes (DatasetDict, Dataset)
HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
INSTALL = "pairs=hf needs the datasets package: pip install interp[hf]"
_KEEP = 4  # opened datasets (or hub metadata) kept, so checking and reading open once


def _datasets():
    try:
        import datasets
    except ImportError:
        raise ConfigError(INSTALL) from None
    return datasets


@contextlib.contextmanager
def _quiet():
    """No progress bars or warnings of ``datasets`` (the command's error is one line on stderr)."""
    ds = _datasets()
    # the plural names are newer than the hf extra's floor (datasets 2.14); the singular ones older
    disabled = getattr(ds, "are_progress_bars_disabled", lambda: not ds.is_progress_bar_enabled())
    off = getattr(ds, "disable_progress_bars", None) or ds.disable_progress_bar
    on = getattr(ds, "enable_progress_bars", None) or ds.enable_progress_bar
    bars, level = not disabled(), ds.logging.get_verbosity()
    off()
    ds.logging.set_verbosity_error()
    try:
        yield ds
    finally:
        ds.logging.set_verbosity(level)
        if bars:
            on()


def kind_of(name: str) -> tuple[str, Path | None]:
    """``("saved" | "files" | "hub", local path)`` for ``pairs.dataset`` (module docstring);
    ``ConfigError`` for a local path that does not exist."""
    p = Path(name).expanduser()
    if p.exists():
        if p.is_dir() and any((p / m).is_file() for m in SAVED_MARKERS):
            return "saved", p
        return "files", p
    if HUB_NAME.match(name) and p.suffix.lower() not in DATA_BUILDERS:
        return "hub", None
    raise ConfigError(f"pairs.dataset={name}: no such file or folder")


def _stamp(p: Path) -> tuple:
    files = [p, *sorted(p.rglob("*"))] if p.is_dir() else [p]
    return tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files)


def _setting(pcfg, key: str, default=None):
    value = pcfg.get(key, default)
    return default if value is None else value


def _cannot(name: str, err: BaseException) -> ConfigError:
    msg = one_line(err)
    return ConfigError(f"pairs.dataset={name}: cannot be read ({type(err).__name__}: {msg[:300]})")


def _pick_split(splits, split: str, name: str) -> None:
    if split not in splits:
        raise ConfigError(f"pairs.split={split}: no such split in {name}; its splits are {', '.join(splits)}")


def open_split(pcfg) -> tuple[Any, str]:
    """The ``datasets.Dataset`` of ``pcfg`` (``dataset``, ``subset``, ``split``) and its source name;
    a local copy is opened once per change of its files (kept for the next call)."""
    name = str(pcfg.get("dataset"))
    subset, split = pcfg.get("subset"), str(_setting(pcfg, "split", "train"))
    kind, path = kind_of(name)
    if kind == "hub":
        return _open(kind, name, subset, split, path)
    return _opened(kind, name, subset, split, path, _stamp(path))


@functools.lru_cache(maxsize=_KEEP)
def _opened(kind: str, name: str, subset, split: str, path: Path | None, stamp: tuple | None):
    """What ``_open`` (a local copy, its files' ``stamp`` in the key) or ``_hub_info`` (kind
    ``hub-info``) gave, the last ``_KEEP`` of both kinds together kept for the next call."""
    if kind == "hub-info":
        return _hub_info(name, subset, split)
    return _open(kind, name, subset, split, path)


def _open(kind: str, name: str, subset, split: str, path: Path | None) -> tuple[Any, str]:
    with _quiet() as ds:
        try:
            if kind == "saved":
                if subset:
                    raise ConfigError(f"pairs.subset={subset}: a folder written by save_to_disk has no subsets")
                got = ds.load_from_disk(str(path))
                if isinstance(got, ds.DatasetDict):
                    _pick_split(list(got), split, name)
                    out = (got[split], f"{name}:{split}")
                else:
                    out = (got, name)
            elif kind == "files":
                builder = DATA_BUILDERS.get(path.suffix.lower()) if path.is_file() else None
                if path.is_file() and builder is None:
                    raise ConfigError(f"pairs.dataset={name}: a {path.suffix or 'suffix-less'} file is not a data file "
                                      f"datasets reads by name ({', '.join(DATA_BUILDERS)}), nor a folder")
                got = (ds.load_dataset(builder, subset, data_files=str(path)) if builder
                       else ds.load_dataset(str(path), subset))
                _pick_split(list(got), split, name)
                out = (got[split], f"{name}:{split}")
            else:
                try:
                    got = ds.load_dataset(name, subset, split=split)
                except ValueError as err:
                    if "Unknown split" in str(err):
                        raise ConfigError(f"pairs.split={split}: no such split in {name} ({one_line(err)})") from None
                    raise
                out = (got, f"{name}:{split}")
        except ConfigError:
            raise
        except Exception as err:  # datasets' and pyarrow's errors: DatasetGenerationError, OSError...
            raise _cannot(name, err) from None
    return out


def _hub_metadata(pcfg) -> tuple[list[str] | None, str]:
    """The columns of a hub dataset's split where the hub publishes them (None: known only once
    loaded), after checking the split where its list is published; metadata only, no rows."""
    name, subset, split = str(pcfg.get("dataset")), pcfg.get("subset"), str(_setting(pcfg, "split", "train"))
    return _opened("hub-info", name, subset, split, None, None)


def _hub_info(name: str, subset, split: str) -> tuple[list[str] | None, str]:
    with _quiet() as ds:
        try:
            info = ds.load_dataset_builder(name, subset).info
        except Exception as err:
            raise _cannot(name, err) from None
    if info.splits:
        _pick_split(list(info.splits), split.split("[")[0], name)
    columns = list(info.features) if info.features else None
    return columns, f"{name}:{split}"


def column_mapping(columns_cfg, names: list[str] | None, where: str) -> dict[str, str]:
    """``pairs.columns`` checked against the dataset's column ``names`` (None: not known), with the
    BLiMP default (``UID`` as the category); ``ConfigError`` naming the key and listing the columns."""
    if columns_cfg is not None and not hasattr(columns_cfg, "items"):
        raise ConfigError(f"pairs.columns={columns_cfg!r} must map fields ({', '.join(COLUMN_FIELDS)}) to columns")
    given = {str(k): v for k, v in (columns_cfg or {}).items() if v is not None}
    shown = f"its columns are [{', '.join(names)}]" if names is not None else ""
    for field, col in given.items():
        if field not in COLUMN_FIELDS:
            raise ConfigError(f"pairs.columns.{field}: not a field; the fields are {', '.join(COLUMN_FIELDS)}")
        if not isinstance(col, str):
            raise ConfigError(f"pairs.columns.{field}={col!r} must be a column name")
        if names is not None and col not in names:
            raise ConfigError(f"pairs.columns.{field}={col}: no such column in {where}; {shown}")
    if ("a" in given) != ("b" in given):
        raise ConfigError("pairs.columns.a and pairs.columns.b name the two sentence columns: set both "
                          "(or neither: a/b, good/bad, sentence_good/sentence_bad or base/src are found by name)")
    if names is not None and "a" not in given and not has_sentence_columns(names):
        how = ("rename them (Dataset.rename_columns)" if where.startswith("<")  # analyze's Dataset
               else "name them with pairs.columns.a=COLUMN pairs.columns.b=COLUMN")
        raise ConfigError(f"pairs.dataset={where}: no sentence columns (a/b, good/bad, sentence_good/sentence_bad "
                          f"or base/src); {how}; {shown}")
    mapping = dict(given)
    if "category" not in mapping and names is not None and "category" not in names and "UID" in names:
        mapping["category"] = "UID"  # BLiMP: the paradigm
    return mapping


def _record(row: dict, mapping: dict[str, str], default_category: str) -> dict:
    rec = {k: v for k, v in row.items() if v is not None}
    if "a" in mapping:
        for k in (mapping["a"], mapping["b"]):
            rec.pop(k, None)
        for k in ("a", "b"):
            if row.get(mapping[k]) is not None:
                rec[k] = row[mapping[k]]
            else:
                rec.pop(k, None)
    for field in ("category", "type", "alt", "pair_id"):
        if field in mapping and row.get(mapping[field]) is not None:
            rec[field] = row[mapping[field]]
    if "pair_id" not in rec and "id" not in rec and "pairID" in rec:  # BLiMP, as pairs=blimp names its pairs
        rec["pair_id"] = f"{rec.get('category') or default_category}-{rec['pairID']}"
    return rec


def dataset_pairs(dataset, source: str, default_category: str = "pairs", columns=None, strict: bool = False,
                  alignment: str | None = None, max_edit_tokens: int | None = None) -> PairSet:
    """The pairs of a ``datasets.Dataset`` (any iterable of row dicts; ``columns``: ``pairs.columns``),
    row ``i`` as line ``i`` (1-based) of ``source``; problems tagged with the row's category."""
    names = getattr(dataset, "column_names", None)
    mapping = column_mapping(columns, list(names) if names is not None else None, source)
    ps = PairSet([])
    take = collect(ps.pairs, ps.problems, strict)
    for i, row in enumerate(dataset, start=1):
        rec = _record(row, mapping, default_category) if isinstance(row, dict) else row
        item = pair_from_record(rec, source, i, default_category, alignment, max_edit_tokens)
        if isinstance(item, Problem):
            if item.category is None and isinstance(rec, dict):
                item.category = str(rec.get("category") or rec.get("task") or default_category)
            if item.pair_id is None and isinstance(rec, dict) and rec.get("pair_id") is not None:
                item.pair_id = str(rec["pair_id"])
        take(item)
    return ps


def default_category(name: str) -> str:
    """The category of rows without one: the dataset's last path component (without a data suffix)."""
    last = Path(str(name).rstrip("/")).name or str(name)
    return Path(last).stem if Path(last).suffix.lower() in DATA_BUILDERS else last


def read_hf(pcfg) -> PairSet:
    """The pairs of ``pairs=hf`` (before ``select``: types, categories, limit)."""
    from . import edit_limits

    dataset, source = open_split(pcfg)
    return dataset_pairs(dataset, source, default_category(str(pcfg.get("dataset"))), pcfg.get("columns"),
                         strict=bool(pcfg.get("strict", False)), **edit_limits(pcfg))


def check_hf_source(pcfg, check_files: bool = True) -> None:
    """Refuse before any model loads what ``pairs=hf`` cannot read (module docstring); raises
    ``ConfigError`` with one line. ``check_files``: also open the dataset (a hub one: its metadata)."""
    _datasets()
    name = pcfg.get("dataset")
    if not name or name == "???":
        raise ConfigError("pairs=hf needs pairs.dataset=NAME (a hub dataset) or pairs.dataset=PATH (a local copy)")
    column_mapping(pcfg.get("columns"), None, str(name))
    if not check_files:
        return
    kind, _ = kind_of(str(name))
    if kind == "hub":
        names, where = _hub_metadata(pcfg)
    else:
        dataset, where = open_split(pcfg)
        names = list(dataset.column_names)
    column_mapping(pcfg.get("columns"), names, where)
