"""Reading pairs from JSONL, CSV, parquet and JSON-array files (user files, the built-in bank,
BLiMP paradigms).

Accepted field names, first match wins: ``a``/``b``, ``good``/``bad``,
``sentence_good``/``sentence_bad`` (BLiMP). Optional: ``category`` (default: the file's stem),
``type`` (``grammar`` or ``semantic``; default ``grammar`` since a good/bad pair has a correct side),
``id``/``pair_id``; ``alt`` (a grammatical alternative for a's edited word, read into ``Pair.alt``;
empty means none). Other fields are kept in ``Pair.meta``. A record with CausalGym's ``base`` and
``src`` instead (``causalgym.py``) is turned into ``a``/``b`` first, in every format.

A malformed line (bad JSON, missing field, empty or identical sentences, bytes that are not UTF-8,
absurd length) becomes a ``Problem`` naming the file, the line and the reason. With ``strict=True``
the first one raises ``PairFileError`` instead.

The text formats may start with a UTF-8 byte order mark (Excel writes one). CSV is read by the ``csv``
module over the whole file: a quoted field may hold newlines, and a record's line is the line it
starts on. Its first row must be a header naming the sentence columns (a file without one is refused
with ``ConfigError``); a row with a field over ``MAX_FIELD_CHARS`` characters is rejected
(``field_too_large``), not the file.

The format (``pair_file_format``) comes from the content and the name: a file that starts with the
parquet magic ``PAR1`` is parquet, and must be named ``.parquet`` (a parquet file named ``.jsonl`` is
refused, as is a ``.parquet`` file without the magic); ``.csv`` is CSV; ``.json`` is one JSON value:
an array of objects, or an object holding that array under ``"pairs"`` or ``"data"``; any other name is
JSON lines, unless the whole file is a JSON array (its first character ``[``). Parquet and JSON
arrays have the columns (fields) and checks of JSON lines; their ``line`` is the row number, 1-based
(the n-th row of the table, the n-th element of the array). A parquet file needs columns naming the
sentences (``a``/``b``, an alias, or ``base``/``src``); a file that is binary (NUL bytes, a compressed archive...), JSON
that is not an array of pairs, or a parquet file that cannot be read is refused with ``ConfigError``
(one line naming the file and the reason), by ``check_pair_file`` before any model loads and by
``read_pair_file`` alike.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from .causalgym import GYM_FIELDS, gym_to_ab, is_gym_record, not_minimal
from .records import PAIR_TYPES, Pair, PairFileError, Problem

FIELD_NAMES = (("a", "b"), ("good", "bad"), ("sentence_good", "sentence_bad"))
SENTENCE_FIELDS = "a and b (or good/bad, sentence_good/sentence_bad, or CausalGym's base/src)"
FORMATS = ("jsonl", "csv", "parquet", "json")  # what pair_file_format answers
# read_pair_file reads these by name (.csv, .parquet, .json; JSON lines: any other name) but not these
UNREADABLE_SUFFIXES = (".arrow", ".feather", ".xlsx", ".xls", ".gz", ".zip", ".bz2", ".xz", ".pkl", ".npy",
                       ".npz", ".pt", ".safetensors")
PARQUET_MAGIC = b"PAR1"
JSON_LIST_KEYS = ("pairs", "data")  # a top-level JSON object may hold its array of pairs under one of these
# the start of a binary file, for the message that refuses it
BINARY_MAGIC = ((b"\x1f\x8b", "gzip-compressed data"), (b"PK\x03\x04", "a zip archive (.xlsx, .zip)"),
                (b"BZh", "bzip2-compressed data"), (b"\xfd7zXZ\x00", "xz-compressed data"),
                (b"ARROW1", "an Arrow file"), (b"\x93NUMPY", "a NumPy array"),
                (b"\xd0\xcf\x11\xe0", "an old Office file (.xls)"), (b"\x80", "a pickle"))
SNIFF_BYTES = 8192
MAX_CHARS = 2000  # a "sentence" longer than this is a mistake, not a minimal pair
MAX_FIELD_CHARS = 100_000  # a CSV field longer than this rejects its row (field_too_large), not the file


def pair_from_record(rec: dict, source: str, line: int, default_category: str, alignment: str | None = None,
                     max_edit_tokens: int | None = None) -> Pair | Problem:
    """One record as a ``Pair``, or the ``Problem`` that says why it is none. A CausalGym record
    (``base``/``src``, no ``a``/``b``) is turned into a/b first and refused (``not_minimal``) where
    its words can never make a minimal pair under ``alignment`` and ``max_edit_tokens``
    (``causalgym``; None: only what no alignment accepts)."""
    if not isinstance(rec, dict):
        return Problem(source, line, "not_an_object", f"expected a JSON object, got {type(rec).__name__}")
    gym = not any(fa in rec or fb in rec for fa, fb in FIELD_NAMES) and is_gym_record(rec)
    if gym:
        rec = gym_to_ab(rec)
        if isinstance(rec, tuple):
            return Problem(source, line, *rec)
    for fa, fb in FIELD_NAMES:
        if fa in rec or fb in rec:
            break
    else:
        return Problem(source, line, "missing_field", f"needs fields {SENTENCE_FIELDS}")
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
    if gym and (why := not_minimal(a, b, alignment, max_edit_tokens)):
        return Problem(source, line, "not_minimal", why, a, b, category, str(pid) if pid is not None else None)
    return Pair(a=a, b=b, category=category, type=ptype, pair_id=str(pid) if pid is not None else "",
                source=source, line=line, alt=alt, meta=meta)


def has_sentence_columns(names) -> bool:
    """Whether column (field) ``names`` hold both sentences: ``a``/``b``, an alias, or CausalGym's
    ``base``/``src``."""
    return any(fa in names and fb in names for fa, fb in (*FIELD_NAMES, GYM_FIELDS))


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
    readable, or of a type this reader does not know (see ``pair_file_format``); a CSV without a
    header. Raises ``ConfigError`` (one line naming ``pairs.path`` and the reason)."""
    from ..config import ConfigError

    p = Path(path)
    if not p.exists():
        raise ConfigError(f"pairs.path={path}: no such file")
    if not p.is_file():
        raise ConfigError(f"pairs.path={path}: not a file")
    try:
        fmt, _ = _sniff(p)
    except _Refused as err:
        raise ConfigError(f"pairs.path={path}: {err}") from None
    if fmt == "csv":
        records = _csv_records(p, str(p))
        if records and (msg := _header_problem(records[0][1])):
            raise ConfigError(f"pairs.path={path}: {msg}")


class _Refused(Exception):
    """Why a file cannot be read as pairs (the message, without the file's name)."""


def pair_file_format(path: str | Path) -> str:
    """The format of a pairs file, one of ``FORMATS``, from its content and name (module docstring).
    A file that is none of them raises ``ConfigError`` naming the file and the reason."""
    from ..config import ConfigError

    try:
        return _sniff(Path(path))[0]
    except _Refused as err:
        raise ConfigError(f"{path}: {err}") from None


KNOWN = "pairs files are JSON lines (.jsonl), CSV (.csv), parquet (.parquet) or a JSON array (.json)"


def _sniff(p: Path) -> tuple[str, list | None]:
    """The format of ``p`` and, for a JSON array, its elements (parsed once); ``_Refused`` if none."""
    suffix = p.suffix.lower()
    if suffix in UNREADABLE_SUFFIXES:
        raise _Refused(f"a {p.suffix} file cannot be read as pairs; {KNOWN}")
    try:
        with open(p, "rb") as f:
            head = f.read(SNIFF_BYTES)
    except OSError as err:
        raise _Refused(f"cannot be read ({err.strerror or err})") from None
    if head.startswith(PARQUET_MAGIC):
        if suffix != ".parquet":
            named = p.suffix or "without a suffix"
            raise _Refused(f"a parquet file (it starts with {PARQUET_MAGIC.decode()}) named {named}; "
                           "name it .parquet to read it as parquet")
        _parquet_columns(p)
        return "parquet", None
    if suffix == ".parquet":
        raise _Refused(f"not a parquet file (it does not start with {PARQUET_MAGIC.decode()})")
    for magic, what in BINARY_MAGIC:
        if head.startswith(magic):
            raise _Refused(f"binary content ({what}), not text; {KNOWN}")
    if b"\x00" in head:
        raise _Refused(f"binary content (NUL bytes; UTF-16 text?), not UTF-8 text; {KNOWN}")
    if suffix == ".csv":
        return "csv", None
    if suffix == ".json":
        return "json", _json_rows(p)
    if head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"[":  # a JSON array under another name
        try:
            return "json", _json_rows(p)
        except _Refused:
            pass  # JSON lines whose first line is an array: each line reported as JSON lines are
    return "jsonl", None


def _parquet_columns(p: Path) -> list[str]:
    """The column names of a parquet file; refused where it cannot be read or names no sentence columns."""
    try:
        import pyarrow.parquet as pq

        names = list(pq.read_schema(p).names)
    except Exception as err:  # pyarrow's errors: ArrowInvalid, OSError...
        raise _unreadable_parquet(err) from None
    if not has_sentence_columns(names):
        shown = ", ".join(names)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        raise _Refused(f"a parquet pairs file needs columns {SENTENCE_FIELDS}; its columns are [{shown}]")
    return names


def _json_rows(p: Path) -> list:
    """The array of a JSON pairs file (each element one pair, numbered from 1); refused where the file
    is not UTF-8, not JSON, or not an array (an object holding one under ``JSON_LIST_KEYS`` is taken)."""
    try:
        text = p.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise _Refused(f"not UTF-8 text (byte {err.start})") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        hint = " (JSON lines, one object a line, belong in a .jsonl file)" if err.msg == "Extra data" else ""
        raise _Refused(f"not valid JSON: {err.msg} at line {err.lineno} column {err.colno}{hint}") from None
    if isinstance(value, dict):
        for key in JSON_LIST_KEYS:
            if isinstance(value.get(key), list):
                return value[key]
        raise _Refused("a JSON object, not a list of pairs: a JSON pairs file is an array of objects "
                       f"(or an object with that array under {' or '.join(repr(k) for k in JSON_LIST_KEYS)}); "
                       "JSON lines belong in a .jsonl file")
    if not isinstance(value, list):
        raise _Refused(f"a JSON {type(value).__name__}, not a list of pairs (an array of objects)")
    return value


def _parquet_rows(p: Path) -> list[dict]:
    """The rows of a parquet pairs file as dicts of Python values, null cells left out."""
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(p).to_pylist()
        # a null cell is a field the row does not have (a table of mixed aliases has every column);
        # pandas keeps a DataFrame's index as a column: not a field of the pair
        return [{k: v for k, v in r.items() if v is not None and not k.startswith("__index_level_")}
                for r in rows]
    except Exception as err:
        raise _unreadable_parquet(err) from None


def _unreadable_parquet(err: BaseException) -> _Refused:
    """The refusal of a file pyarrow cannot read (its error on one line, cut at 200 characters)."""
    msg = " ".join(str(err).split())
    return _Refused(f"cannot be read as parquet ({msg[:200]})")


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
    need = ("a CSV pairs file needs a header row naming its columns: a,b (or good,bad or sentence_good,sentence_bad, "
            "or CausalGym's base,src)")
    if isinstance(first, Problem):
        return f"{need}; its first row cannot be read ({first.reason})"
    names = {c.strip() for c in first}
    if has_sentence_columns(names):
        return None
    shown = ",".join(first)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return f"{need}; its first row is {shown!r}"


def read_pair_file(path: str | Path, strict: bool = False, default_category: str | None = None,
                   alignment: str | None = None,
                   max_edit_tokens: int | None = None) -> tuple[list[Pair], list[Problem]]:
    """Read a JSONL, CSV, parquet or JSON-array file of pairs (the format: ``pair_file_format``).
    Returns the pairs and the problems, in file order. A file of no known format raises
    ``ConfigError`` (one line naming the file and the reason). ``alignment``/``max_edit_tokens``
    (``pairs.*``): what CausalGym records must meet at the word level (``pair_from_record``)."""
    from ..config import ConfigError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pairs file not found: {path}")
    source = str(path)
    category = default_category or path.stem
    pairs: list[Pair] = []
    problems: list[Problem] = []

    take = collect(pairs, problems, strict)
    try:
        fmt, rows = _sniff(path)
        if fmt == "parquet":
            rows = _parquet_rows(path)
    except _Refused as err:
        raise ConfigError(f"{path}: {err}") from None
    if rows is not None:  # parquet, JSON array: the n-th row is "line" n
        for i, rec in enumerate(rows, start=1):
            take(pair_from_record(rec, source, i, category, alignment, max_edit_tokens))
        return pairs, problems
    if fmt == "csv":
        records = _csv_records(path, source)
        if not records:
            return pairs, problems
        msg = _header_problem(records[0][1])
        if msg:
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
            take(pair_from_record(rec, source, i, category, alignment, max_edit_tokens))
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
        take(pair_from_record(rec, source, i, category, alignment, max_edit_tokens))
    return pairs, problems
