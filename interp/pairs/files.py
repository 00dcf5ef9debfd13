"""Reading pairs from JSONL and CSV files (user files, the built-in bank, BLiMP paradigms).

Accepted field names, first match wins: ``a``/``b``, ``good``/``bad``,
``sentence_good``/``sentence_bad`` (BLiMP). Optional: ``category`` (default: the file's stem),
``type`` (``grammar`` or ``semantic``; default ``grammar`` since a good/bad pair has a correct side),
``id``/``pair_id``; ``alt`` (a grammatical alternative for a's edited word, read into ``Pair.alt``;
empty means none). Other fields are kept in ``Pair.meta``.

A malformed line (bad JSON, missing field, empty or identical sentences, bytes that are not UTF-8,
absurd length) becomes a ``Problem`` naming the file, the line and the reason. With ``strict=True``
the first one raises ``PairFileError`` instead.

Both formats may start with a UTF-8 byte order mark (Excel writes one). CSV is read by the ``csv``
module over the whole file: a quoted field may hold newlines, and a record's line is the line it
starts on. Its first row must be a header naming the sentence columns (a file without one is refused
with ``ConfigError``); a row with a field over ``MAX_FIELD_CHARS`` characters is rejected
(``field_too_large``), not the file.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from .records import PAIR_TYPES, Pair, PairFileError, Problem

FIELD_NAMES = (("a", "b"), ("good", "bad"), ("sentence_good", "sentence_bad"))
# read_pair_file reads CSV (.csv) and JSON lines (any other name); these it cannot read
UNREADABLE_SUFFIXES = (".parquet", ".arrow", ".feather", ".xlsx", ".xls", ".gz", ".zip", ".bz2", ".xz", ".pkl")
MAX_CHARS = 2000  # a "sentence" longer than this is a mistake, not a minimal pair
MAX_FIELD_CHARS = 100_000  # a CSV field longer than this rejects its row (field_too_large), not the file


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
    if p.suffix.lower() == ".csv":
        records = _csv_records(p, str(p))
        if records and (msg := _header_problem(records[0][1])):
            raise ConfigError(f"pairs.path={path}: {msg}")


def _decode(raw: bytes, line: int) -> str:
    """One line's bytes as text; a byte order mark at the start of the file is dropped."""
    return raw.decode("utf-8-sig" if line == 1 else "utf-8")


def _lines(path: Path) -> list[tuple[int, str | None]]:
    """(line number, text) per line; text None where the bytes are not UTF-8."""
    out = []
    for i, raw in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            out.append((i, _decode(raw, i)))
        except UnicodeDecodeError:
            out.append((i, None))
    return out


def _csv_records(path: Path, source: str) -> list[tuple[int, list[str] | Problem]]:
    """(line the record starts on, its cells) per non-blank CSV record, read by the ``csv`` module
    over the whole file (a quoted field may span lines). A record that cannot be read comes as a
    ``Problem`` instead of cells: bytes that are not UTF-8, a quote never closed, a csv error."""
    raw = path.read_bytes().splitlines(keepends=True)
    bad: set[int] = set()

    def text():
        for i, b in enumerate(raw, start=1):
            try:
                yield _decode(b, i)
            except UnicodeDecodeError:
                bad.add(i)
                yield b.decode("utf-8", errors="replace")

    out: list[tuple[int, list[str] | Problem]] = []
    reader = csv.reader(text())
    old_limit = csv.field_size_limit()
    # no field can be longer than the file; MAX_FIELD_CHARS rejects rows, not the csv module
    csv.field_size_limit(max(old_limit, sum(map(len, raw)) + 1))
    try:
        end = 0
        while True:
            start = end + 1
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as err:
                end = reader.line_num
                out.append((start, Problem(source, start, "bad_csv", str(err))))
                continue
            end = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            broken = sorted(b for b in bad if start <= b <= end)
            if broken:
                where = "" if broken == [start] else f" (line {broken[0]})"
                out.append((start, Problem(source, start, "not_utf8", f"the line's bytes are not valid UTF-8{where}")))
            elif end == len(raw) and start < end and _unclosed(raw[start - 1:end]):
                out.append((start, Problem(source, start, "unclosed_quote",
                                           f"a quoted field opened here is never closed; it runs to the end "
                                           f"of the file (line {end})")))
            else:
                out.append((start, row))
    finally:
        csv.field_size_limit(old_limit)
    return out


def _unclosed(raw: list[bytes]) -> bool:
    """Whether these lines (a record running to the end of the file) end inside a quoted field."""
    text = b"".join(raw).decode("utf-8", errors="replace")
    try:
        list(csv.reader(text.splitlines(keepends=True), strict=True))
    except csv.Error as err:
        return "unexpected end of data" in str(err)
    return False


def _header_problem(first: list[str] | Problem) -> str | None:
    """Why a CSV's first record is not a header naming the sentence columns (None: it is one)."""
    need = "a CSV pairs file needs a header row naming its columns: a,b (or good,bad or sentence_good,sentence_bad)"
    if isinstance(first, Problem):
        return f"{need}; its first row cannot be read ({first.reason})"
    names = {c.strip() for c in first}
    if any(fa in names and fb in names for fa, fb in FIELD_NAMES):
        return None
    shown = ",".join(first)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return f"{need}; its first row is {shown!r}"


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
    if path.suffix.lower() == ".csv":
        records = _csv_records(path, source)
        if not records:
            return pairs, problems
        msg = _header_problem(records[0][1])
        if msg:
            from ..config import ConfigError
            raise ConfigError(f"{path}: {msg}")
        names = [c.strip() for c in records[0][1]]
        for i, cells in records[1:]:
            if isinstance(cells, Problem):
                take(cells)
                continue
            longest = max(map(len, cells), default=0)
            if longest > MAX_FIELD_CHARS:
                take(Problem(source, i, "field_too_large", f"a field of {longest} characters > {MAX_FIELD_CHARS}"))
                continue
            # as csv.DictReader: a missing cell is None, cells past the header are dropped
            rec = {h: cells[k] if k < len(cells) else None for k, h in enumerate(names)}
            take(pair_from_record(rec, source, i, category))
        return pairs, problems

    lines = _lines(path)
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
