"""Reading pairs from JSONL and CSV files (user files, the built-in bank, BLiMP paradigms).

Accepted field names, first match wins: ``a``/``b``, ``good``/``bad``,
``sentence_good``/``sentence_bad`` (BLiMP). Optional: ``category`` (default: the file's stem),
``type`` (``grammar`` or ``semantic``; default ``grammar`` since a good/bad pair has a correct side),
``id``/``pair_id``; ``alt`` (a grammatical alternative for a's edited word, read into ``Pair.alt``;
empty means none). Other fields are kept in ``Pair.meta``.

A malformed line (bad JSON, missing field, empty or identical sentences, bytes that are not UTF-8,
absurd length) becomes a ``Problem`` naming the file, the line and the reason. With ``strict=True``
the first one raises ``PairFileError`` instead.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from .records import PAIR_TYPES, Pair, PairFileError, Problem

FIELD_NAMES = (("a", "b"), ("good", "bad"), ("sentence_good", "sentence_bad"))
# read_pair_file reads CSV (.csv) and JSON lines (any other name); these it cannot read
UNREADABLE_SUFFIXES = (".parquet", ".arrow", ".feather", ".xlsx", ".xls", ".gz", ".zip", ".bz2", ".xz", ".pkl")
MAX_CHARS = 2000  # a "sentence" longer than this is a mistake, not a minimal pair


def pair_from_record(rec: dict, source: str, line: int, default_category: str) -> Pair | Problem:
    if not isinstance(rec, dict):
        return Problem(source, line, "not_an_object", f"expected a JSON object, got {type(rec).__name__}")
    for fa, fb in FIELD_NAMES:
        if fa in rec or fb in rec:
            break
    else:
        return Problem(source, line, "missing_field", "needs fields a and b (or good/bad, sentence_good/sentence_bad)")
    a, b = rec.get(fa), rec.get(fb)
    if a is None or b is None:
        return Problem(source, line, "missing_field", f"field {fb if a is not None else fa!r} is missing")
    if not isinstance(a, str) or not isinstance(b, str):
        return Problem(source, line, "not_text", f"fields {fa!r} and {fb!r} must be strings")
    a, b = a.strip(), b.strip()
    if not a or not b:
        return Problem(source, line, "empty_sentence", f"field {fa if not a else fb!r} is empty", a, b)
    if a == b:
        return Problem(source, line, "identical_sentences", "both sentences are the same text", a, b)
    if max(len(a), len(b)) > MAX_CHARS:
        return Problem(source, line, "too_long", f"{max(len(a), len(b))} characters > {MAX_CHARS}")
    ptype = rec.get("type") or "grammar"
    if ptype not in PAIR_TYPES:
        return Problem(source, line, "bad_type", f"type {ptype!r} is not one of {PAIR_TYPES}", a, b)
    category = str(rec.get("category") or default_category)
    alt = rec.get("alt")
    if alt is not None and not isinstance(alt, str):
        return Problem(source, line, "not_text", "field 'alt' must be a string", a, b)
    alt = (alt or "").strip() or None
    known = {fa, fb, "type", "category", "id", "pair_id", "alt"}
    meta = {k: v for k, v in rec.items() if k not in known and isinstance(v, (str, int, float, bool))}
    pid = rec.get("pair_id", rec.get("id"))
    return Pair(a=a, b=b, category=category, type=ptype, pair_id=str(pid) if pid is not None else "",
                source=source, line=line, alt=alt, meta=meta)


def collect(pairs: list[Pair], problems: list[Problem], strict: bool):
    """A function that files each read item: a pair (its id defaults to ``category-LINE``) or a
    problem (``strict``: raised as ``PairFileError`` instead)."""
    def take(item: Pair | Problem) -> None:
        if isinstance(item, Problem):
            if strict:
                raise PairFileError(str(item))
            problems.append(item)
        else:
            if not item.pair_id:
                item.pair_id = f"{item.category}-{item.line:05d}"
            pairs.append(item)
    return take


def check_pair_file(path: str | Path) -> None:
    """Refuse, before any model loads, a pairs file that cannot be read: missing, a folder, not
    readable, or of a type this reader does not know. Raises ``ConfigError`` (one line)."""
    from ..config import ConfigError

    p = Path(path)
    if not p.exists():
        raise ConfigError(f"pairs.path={path}: no such file")
    if not p.is_file():
        raise ConfigError(f"pairs.path={path}: not a file")
    if p.suffix.lower() in UNREADABLE_SUFFIXES:
        raise ConfigError(f"pairs.path={path}: a {p.suffix} file cannot be read as pairs; "
                          "pairs files are JSON lines (.jsonl) or CSV (.csv)")
    try:
        with open(p, "rb") as f:
            f.read(1)
    except OSError as err:
        raise ConfigError(f"pairs.path={path}: cannot be read ({err.strerror or err})") from None


def _lines(path: Path) -> list[tuple[int, str | None]]:
    """(line number, text) per line; text None where the bytes are not UTF-8."""
    out = []
    for i, raw in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            out.append((i, raw.decode("utf-8")))
        except UnicodeDecodeError:
            out.append((i, None))
    return out


def read_pair_file(path: str | Path, strict: bool = False,
                   default_category: str | None = None) -> tuple[list[Pair], list[Problem]]:
    """Read a JSONL or CSV file of pairs. Returns the pairs and the problems, in file order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pairs file not found: {path}")
    source = str(path)
    category = default_category or path.stem
    pairs: list[Pair] = []
    problems: list[Problem] = []

    take = collect(pairs, problems, strict)
    lines = _lines(path)
    if path.suffix.lower() == ".csv":
        header_line = next(((i, t) for i, t in lines if t is not None and t.strip()), None)
        if header_line is None:
            return pairs, problems
        for i, text in lines:
            if i <= header_line[0]:
                continue
            if text is None:
                take(Problem(source, i, "not_utf8", "the line's bytes are not valid UTF-8"))
                continue
            if not text.strip():
                continue
            row = next(csv.DictReader(io.StringIO(header_line[1] + "\n" + text)))
            take(pair_from_record({k: v for k, v in row.items() if k is not None}, source, i, category))
        return pairs, problems

    for i, text in lines:
        if text is None:
            take(Problem(source, i, "not_utf8", "the line's bytes are not valid UTF-8"))
            continue
        if not text.strip():
            continue
        try:
            rec = json.loads(text)
        except json.JSONDecodeError as err:
            take(Problem(source, i, "bad_json", err.msg))
            continue
        take(pair_from_record(rec, source, i, category))
    return pairs, problems
