"""The ``Pair`` record and the ``Problem`` record of a line that could not be read."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

PAIR_TYPES = ("grammar", "semantic")


@dataclass
class Pair:
    """Two sentences that should differ in one token.

    ``type == "grammar"``: ``a`` is the correct sentence and ``b`` the wrong one.
    ``type == "semantic"``: both are fine; the edit changes meaning, there is no correct side.
    """

    a: str
    b: str
    category: str
    type: str = "grammar"
    pair_id: str = ""
    source: str = ""  # file the pair came from (bank file, user file, BLiMP paradigm)
    line: int | None = None  # 1-based line in that file
    # a grammatical alternative for a's edited word ("is" for a="She was happy." / b="She were
    # happy."): the one-token control of ``analysis.controls.pool=grammatical``
    alt: str | None = None
    meta: dict = field(default_factory=dict)

    def to_row(self) -> dict:
        row = asdict(self)
        row.pop("meta")
        row.update({f"meta_{k}": v for k, v in self.meta.items()})
        return row


@dataclass
class Problem:
    """A line of an input file that gave no pair (a record that spans lines: the line it starts on),
    a duplicate dropped under ``pairs.duplicates=drop``, or a pair the tokenizer check rejected."""

    source: str
    line: int | None
    reason: str
    detail: str = ""
    a: str | None = None
    b: str | None = None
    category: str | None = None
    pair_id: str | None = None

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line is not None else self.source
        return f"{where}: {self.reason}" + (f" ({self.detail})" if self.detail else "")


class PairFileError(ValueError):
    """A malformed input line under ``pairs.strict=true``; the message names file, line and reason."""


def word_edit(a: str, b: str) -> tuple[list[str], list[str], int, int]:
    """The words of ``a`` and ``b`` (split on whitespace) and how many they share at the start
    (``p``) and, after those, at the end (``s``): the edit is ``wa[p:len(wa) - s]`` against
    ``wb[p:len(wb) - s]``."""
    wa, wb = a.split(), b.split()
    p = 0
    while p < min(len(wa), len(wb)) and wa[p] == wb[p]:
        p += 1
    s = 0
    while s < min(len(wa), len(wb)) - p and wa[-1 - s] == wb[-1 - s]:
        s += 1
    return wa, wb, p, s

