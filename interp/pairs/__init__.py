"""Minimal pairs: where they come from and which of them a model's tokenizer accepts.

``load_pairs(cfg.pairs)`` reads the configured source (``bank``: the built-in files under
``interp/pairs/bank/``; ``file``: ``pairs.path``; ``blimp``: BLiMP paradigm files, ``blimp.py``;
``hf``: a Hugging Face ``datasets`` dataset, ``hf.py``), filters by ``types`` and ``categories``, and
keeps ``limit`` pairs per category (a seeded sample, same every time). ``validate_pairs`` then
checks each pair against the tokenizer; rejects keep their reason.

Duplicates (a pair with the same ``a`` and ``b`` as an earlier one) are counted in
``PairSet.duplicates``; ``pairs.duplicates=keep`` (default) keeps them, ``drop`` drops each later
one as a ``Problem`` (reason ``duplicate``) naming the first.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from ..config import ConfigError
from .files import read_pair_file
from .records import PAIR_TYPES, Pair, PairFileError, Problem
from .validate import TokenizedPair, check_pair

BANK_DIR = Path(__file__).parent / "bank"
DUPLICATE_POLICIES = ("keep", "drop")  # pairs.duplicates

__all__ = ["Pair", "Problem", "PairFileError", "TokenizedPair", "PairSet", "load_pairs",
           "validate_pairs", "records_to_pairs", "select_pairs", "mark_duplicates", "bank_categories",
           "BANK_DIR", "PAIR_TYPES", "DUPLICATE_POLICIES"]


@dataclass
class PairSet:
    pairs: list[Pair]
    problems: list[Problem] = field(default_factory=list)  # lines that gave no pair
    # pairs with the same a and b as an earlier pair (kept or, pairs.duplicates=drop, dropped as problems)
    duplicates: int = 0


def bank_categories() -> dict[str, str]:
    """category -> type of every file in the built-in bank."""
    out = {}
    for path in sorted(BANK_DIR.glob("*.jsonl")):
        pairs, _ = read_pair_file(path)
        if pairs:
            out[path.stem] = pairs[0].type
    return out


def _read_many(paths: list[Path], strict: bool, pcfg=None) -> PairSet:
    ps = PairSet([])
    for p in paths:
        pairs, problems = read_pair_file(p, strict=strict, **edit_limits(pcfg))
        ps.pairs += pairs
        ps.problems += problems
    return ps


def _source_pairs(pcfg) -> PairSet:
    source = pcfg.source
    if source == "bank":
        return _read_many(sorted(BANK_DIR.glob("*.jsonl")), strict=True)
    if source == "file":
        if not pcfg.get("path"):
            raise ConfigError("pairs=file needs pairs.path=FILE (JSONL, CSV, parquet or a JSON array)")
        return _read_many([Path(pcfg.path)], strict=bool(pcfg.get("strict", False)), pcfg=pcfg)
    if source == "blimp":  # a folder of BLiMP paradigm files; pairs.paradigms selects (see blimp.py)
        from .blimp import read_blimp
        return read_blimp(pcfg)
    if source == "hf":  # a Hugging Face datasets dataset: the hub or a local copy (see hf.py)
        from .hf import read_hf
        return read_hf(pcfg)
    raise ConfigError(f"pairs.source={source!r} is not one of bank, file, blimp, hf")


def edit_limits(pcfg) -> dict:
    """``alignment`` and ``max_edit_tokens`` of a pairs config (or mapping), for the word-level check
    of CausalGym records (``files.pair_from_record``); nothing known: ``{}``."""
    if pcfg is None:
        return {}
    return {"alignment": pcfg.get("alignment") or "strict", "max_edit_tokens": pcfg.get("max_edit_tokens", 4)}


def select(pairs: list[Pair], types=None, categories=None, limit=None, seed: int = 0) -> list[Pair]:
    """Filter by type and category, then keep ``limit`` per category (seeded, order preserved)."""
    if types:
        unknown = set(types) - set(PAIR_TYPES)
        if unknown:
            raise ConfigError(f"pairs.types: {sorted(unknown)} not in {PAIR_TYPES}")
        pairs = [p for p in pairs if p.type in set(types)]
    if categories:
        present = {p.category for p in pairs}
        missing = [c for c in categories if c not in present]
        if missing:
            raise ConfigError(f"pairs.categories: no pairs of category {missing}; present: {sorted(present)}")
        pairs = [p for p in pairs if p.category in set(categories)]
    if limit is not None:
        by_cat: dict[str, list[int]] = {}
        for i, p in enumerate(pairs):
            by_cat.setdefault(p.category, []).append(i)
        keep: set[int] = set()
        for cat, idx in sorted(by_cat.items()):
            rng = random.Random(f"{seed}:{cat}")
            keep.update(idx if len(idx) <= limit else rng.sample(idx, int(limit)))
        pairs = [p for i, p in enumerate(pairs) if i in keep]
    return pairs


def load_pairs(pcfg) -> PairSet:
    """The pairs of the configured source, filtered and sampled as ``pcfg`` says, ids made unique."""
    return select_pairs(_source_pairs(pcfg), pcfg)


def select_pairs(ps: PairSet, pcfg) -> PairSet:
    """``select`` by ``pcfg.types`` and ``categories``; duplicates counted (and with
    ``pcfg.duplicates=drop`` dropped, see ``mark_duplicates``); then ``limit`` per category
    (``seed``), and pair ids made unique within the run (a repeated id gets ``~1``, ``~2``...)."""
    ps.pairs = select(ps.pairs, pcfg.get("types"), pcfg.get("categories"))
    mark_duplicates(ps, pcfg.get("duplicates", "keep") or "keep")
    ps.pairs = select(ps.pairs, limit=pcfg.get("limit"), seed=int(pcfg.get("seed", 0)))
    seen: dict[str, int] = {}
    for p in ps.pairs:  # ids unique within a run
        if p.pair_id in seen:
            seen[p.pair_id] += 1
            p.pair_id = f"{p.pair_id}~{seen[p.pair_id]}"
        else:
            seen[p.pair_id] = 0
    return ps


def mark_duplicates(ps: PairSet, policy: str = "keep") -> PairSet:
    """Count the pairs whose ``a`` and ``b`` (stripped) repeat an earlier pair's into
    ``ps.duplicates``. ``keep``: they stay; ``drop``: each goes to ``ps.problems`` (reason
    ``duplicate``, naming where the first one is). The count is of this call's ``ps.pairs``."""
    if policy not in DUPLICATE_POLICIES:
        raise ConfigError(f"pairs.duplicates={policy!r} is not one of {', '.join(DUPLICATE_POLICIES)}")
    first: dict[tuple[str, str], Pair] = {}
    kept: list[Pair] = []
    ps.duplicates = 0
    for p in ps.pairs:
        key = (p.a.strip(), p.b.strip())
        if key not in first:
            first[key] = p
        else:
            ps.duplicates += 1
            if policy == "drop":
                f = first[key]
                where = f"{f.source}:{f.line}" if f.line is not None else (f.source or f.pair_id)
                ps.problems.append(Problem(p.source, p.line, "duplicate", f"same a and b as {where}",
                                           p.a, p.b, p.category, p.pair_id))
                continue
        kept.append(p)
    ps.pairs = kept
    return ps


def records_to_pairs(records: list, source: str, strict: bool = False,
                     default_category: str = "pairs", alignment: str | None = None,
                     max_edit_tokens: int | None = None) -> PairSet:
    """Pairs from Python objects: ``(a, b)`` (or ``(a, b, category)``, ``(a, b, category, type)``)
    tuples, or dicts with the fields a pair file has (CausalGym records too). Item ``i`` counts as
    line ``i + 1`` of ``source``; problems are kept like a file's (``strict``: the first raises
    ``PairFileError``)."""
    from .files import collect, pair_from_record

    ps = PairSet([])
    take = collect(ps.pairs, ps.problems, strict)
    for i, item in enumerate(records, start=1):
        if isinstance(item, (tuple, list)):
            if not 2 <= len(item) <= 4:
                take(Problem(source, i, "bad_tuple", f"expected (a, b[, category[, type]]), got {len(item)} items"))
                continue
            item = dict(zip(("a", "b", "category", "type"), item))
        take(pair_from_record(item, source, i, default_category, alignment, max_edit_tokens))
    return ps


def validate_pairs(pairs: list[Pair], tokenizer, max_tokens: int = 256, alignment: str = "strict",
                   max_edit_tokens: int = 4) -> tuple[list[tuple[Pair, TokenizedPair]], list[Problem]]:
    """Split pairs into usable edits (kept, with tokens) and the rest (with reasons)."""
    kept, rejected = [], []
    for p in pairs:
        v = check_pair(tokenizer, p.a, p.b, max_tokens=max_tokens, alignment=alignment,
                       max_edit_tokens=max_edit_tokens)
        if v.ok:
            kept.append((p, v.tokens))
        else:
            rejected.append(Problem(p.source, p.line, v.reason, v.detail, p.a, p.b, p.category, p.pair_id))
    return kept, rejected
