"""CausalGym records as minimal pairs, and the word-level check of what can never be one.

CausalGym (Arora et al. 2024; the Hugging Face dataset ``aryaman/causalgym``, built from SyntaxGym
test suites) stores a pair as a base and a source input that differ in one feature, each with the
word a model should predict next::

    {"base": ["<|endoftext|>The", " guard", " that", " hated", " the", " manager"],
     "src":  ["<|endoftext|>The", " guards", " that", " hated", " the", " manager"],
     "base_label": " is", "src_label": " are", "base_type": "singular", "src_type": "plural",
     "task": "agr_sv_num_subj-relc"}

``base`` and ``src`` are lists of template spans (each carrying its leading space, joined with no
separator; spans without leading spaces are joined with one space) or plain sentences. A leading
special token of the model CausalGym used (``<|endoftext|>``, ``<s>``...) is dropped: the run adds
its own BOS.

The pair: ``a`` = base + ``base_label``, ``b`` = src + ``base_label`` (the same word appended to
both, as SyntaxGym compares a matching and a mismatching condition on the same critical region):
"The guard that hated the manager is" / "The guards that hated the manager is". They differ where
base and src differ, and ``a`` is the sentence whose last word is the one expected, so the type is
``grammar`` (``a`` is the correct side); the label is among the positions after the edit. Appending each its
own label instead would make two edits (subject and verb), never one. A record without
``base_label`` gives base / src as they are, of type ``semantic`` (no correct side). Category = the
record's ``category``, else ``task``; ``base_label`` and ``src_label`` (stripped), ``base_type``,
``src_type``, ``task`` and the record's other scalar fields are kept in ``Pair.meta``.

A record is recognised by its fields ``base`` and ``src`` (and no ``a``/``b`` or alias), in every
pair-file format, in ``pairs=hf`` and in Python records (``files.pair_from_record``).

``not_minimal`` answers, at the word level (whitespace-separated words), whether a pair can never
pass the tokenizer check of ``pairs.alignment`` (the check itself comes later, ``validate_pairs``):
after the words both sentences share at the start and at the end, one side has nothing left (words
only added or removed), or, under ``strict``, more than one word differs on a side, or, under
``same_length`` / ``span``, more words differ than ``pairs.max_edit_tokens`` (every word is at least
one token). Such a record becomes a ``Problem`` with reason ``not_minimal``.
"""

from __future__ import annotations

import re

from .records import word_edit

GYM_FIELDS = ("base", "src")
# a special token the dataset's model put in front of the text (the run adds its own BOS)
LEADING_SPECIAL = re.compile(r"^\s*(?:<\|[^<>|\s]*\|>|</?s>|<bos>|<eos>)")


def is_gym_record(rec: dict) -> bool:
    """Whether ``rec`` is a CausalGym record (fields ``base`` and ``src``)."""
    return isinstance(rec, dict) and all(k in rec for k in GYM_FIELDS)


def join_spans(value) -> str | None:
    """The text of a ``base``/``src`` value: a string, or a list of spans joined (spans that carry
    their leading space with nothing between them, others with one space); a leading special token
    dropped. None where the value is neither."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, (list, tuple)) and value and all(isinstance(x, str) for x in value):
        spaced = any(x[:1].isspace() for x in value[1:])
        text = ("" if spaced else " ").join(value)
    else:
        return None
    while m := LEADING_SPECIAL.match(text):
        text = text[m.end():]
    return text.strip()


def _append(text: str, label: str) -> str:
    return text + label if label[:1].isspace() else f"{text} {label}"


def gym_to_ab(rec: dict) -> dict | tuple[str, str]:
    """The record with ``a`` and ``b`` in place of ``base`` and ``src`` (module docstring), or
    ``(reason, detail)`` where its fields cannot be read."""
    base, src = join_spans(rec.get("base")), join_spans(rec.get("src"))
    if base is None or src is None:
        bad = "base" if base is None else "src"
        return "not_text", f"field {bad!r} must be a sentence or a non-empty list of strings"
    label = rec.get("base_label")
    if label is not None and not isinstance(label, str):
        return "not_text", "field 'base_label' must be a string"
    out = {k: v for k, v in rec.items() if k not in GYM_FIELDS}
    label = label if label and label.strip() else None
    out["a"] = _append(base, label) if label and base else base
    out["b"] = _append(src, label) if label and src else src
    for k in ("base_label", "src_label"):
        if isinstance(out.get(k), str):
            out[k] = out[k].strip()
    if not out.get("type"):
        out["type"] = "grammar" if label else "semantic"
    if not out.get("category") and out.get("task") is not None:
        out["category"] = str(out["task"])
    return out


def edit_words(a: str, b: str) -> tuple[list[str], list[str]]:
    """The words of ``a`` and of ``b`` left between the words they share at the start and at the end."""
    wa, wb, p, s = word_edit(a, b)
    return wa[p:len(wa) - s], wb[p:len(wb) - s]


def not_minimal(a: str, b: str, alignment: str | None = None, max_edit_tokens: int | None = None) -> str | None:
    """Why ``a``/``b`` can never pass the tokenizer check of ``alignment`` (None: it may). Without
    an alignment only what no mode accepts is refused (words only added or removed)."""
    if a.split() == b.split():
        return None  # the same words (spacing differs): the tokenizer check says what it makes of them
    ra, rb = edit_words(a, b)
    if not ra or not rb:
        return (f"src only {'removes' if ra else 'adds'} words ({' '.join(ra or rb)!r}): an insertion, "
                "not an edit of base; no alignment pairs it")
    shown = f"{' '.join(ra)!r} / {' '.join(rb)!r}"
    if alignment == "strict" and (len(ra) > 1 or len(rb) > 1):
        return (f"base and src differ in {len(ra)} vs {len(rb)} words ({shown}); pairs.alignment=strict "
                "needs a one-word edit (same_length or span take up to pairs.max_edit_tokens)")
    n = max(len(ra), len(rb))
    if alignment in ("same_length", "span") and max_edit_tokens is not None and n > int(max_edit_tokens):
        return f"base and src differ in {n} words ({shown}) > pairs.max_edit_tokens={max_edit_tokens}"
    return None
