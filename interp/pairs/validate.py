"""Token-level validation of minimal pairs against a model's tokenizer.

A pair is kept when both sentences, tokenized without special tokens, have the same length and
differ at exactly one position (a one-token edit). Everything else is rejected with a reason that
names what differs, so a researcher can see why a pair did not make it.

The BOS token is not part of the sentence tokens here: the runner prepends it, so the edit position
``edit_pos`` counts from the first sentence token (0-based) and the position in the model input is
``edit_pos + 1``.

``alignment`` (``pairs.alignment``) widens what is kept, at most ``max_edit_tokens`` per side:
- ``strict`` (default): one-token edits only;
- ``same_length``: same length, differing at several positions; the edit span runs from the first to
  the last differing position;
- ``span``: a common prefix and a common suffix around one differing span per sentence, whose
  lengths may differ (one word split into several tokens). Positions after the span are aligned
  from the end (the suffix), so ``a`` and ``b`` are compared token for token there.
The edit position is the first differing token in every mode.
"""


from __future__ import annotations

from dataclasses import dataclass, field

ALIGNMENTS = ("strict", "same_length", "span")


@dataclass
class TokenizedPair:
    """A validated pair: token ids of both sentences (no BOS) and where they differ."""

    ids_a: list[int]
    ids_b: list[int]
    edit_pos: int  # 0-based index into ids_a / ids_b: the first differing token
    token_a: str  # the edited tokens' text (the whole span)
    token_b: str
    edit_end_a: int = -1  # last token of the edit span (inclusive); -1: the same as edit_pos
    edit_end_b: int = -1

    def __post_init__(self):
        if self.edit_end_a < 0:
            self.edit_end_a = self.edit_pos
        if self.edit_end_b < 0:
            self.edit_end_b = self.edit_pos

    @property
    def n_tokens(self) -> int:
        return len(self.ids_a)

    @property
    def n_tokens_b(self) -> int:
        return len(self.ids_b)

    @property
    def one_token(self) -> bool:
        return self.edit_end_a == self.edit_end_b == self.edit_pos


@dataclass
class Verdict:
    ok: bool
    reason: str = ""  # a short code: length_mismatch, multi_token_edit, identical_tokens, empty, ...
    detail: str = ""  # a human-readable explanation
    tokens: TokenizedPair | None = None
    extra: dict = field(default_factory=dict)


def encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def diff_positions(ids_a: list[int], ids_b: list[int]) -> list[int]:
    return [i for i, (x, y) in enumerate(zip(ids_a, ids_b)) if x != y]


def check_pair(tokenizer, a: str, b: str, max_tokens: int = 256, alignment: str = "strict",
               max_edit_tokens: int = 4) -> Verdict:
    """Is ``(a, b)`` a usable minimal pair under ``tokenizer``? Returns a ``Verdict`` with the reason."""
    if alignment not in ALIGNMENTS:
        raise ValueError(f"pairs.alignment={alignment!r} is not one of {ALIGNMENTS}")
    if not a.strip() or not b.strip():
        return Verdict(False, "empty", "one of the sentences is empty")
    ids_a, ids_b = encode(tokenizer, a), encode(tokenizer, b)
    if max(len(ids_a), len(ids_b)) > max_tokens:
        return Verdict(False, "too_long", f"{max(len(ids_a), len(ids_b))} tokens > max {max_tokens}")
    if ids_a == ids_b:
        return Verdict(False, "identical_tokens", "both sentences give the same tokens")
    if len(ids_a) != len(ids_b) and alignment != "span":
        return Verdict(False, "length_mismatch",
                       f"{len(ids_a)} vs {len(ids_b)} tokens (a differing word splits into a "
                       "different number of tokens, or words were added or removed)",
                       extra={"n_tokens_a": len(ids_a), "n_tokens_b": len(ids_b)})
    if len(ids_a) == len(ids_b):
        pos = diff_positions(ids_a, ids_b)
        k, end_a = pos[0], pos[-1]
        end_b = end_a
        if len(pos) > 1 and alignment == "strict":
            shown = ", ".join(
                f"{i}: {tokenizer.decode([ids_a[i]])!r}/{tokenizer.decode([ids_b[i]])!r}" for i in pos[:4])
            return Verdict(False, "multi_token_edit", f"{len(pos)} positions differ ({shown})",
                           extra={"diff_positions": pos})
    else:  # span: common prefix and suffix
        k = 0
        while ids_a[k] == ids_b[k]:
            k += 1
        s = 0
        while s < min(len(ids_a), len(ids_b)) - k and ids_a[-1 - s] == ids_b[-1 - s]:
            s += 1
        end_a, end_b = len(ids_a) - 1 - s, len(ids_b) - 1 - s
        if end_a < k or end_b < k:
            return Verdict(False, "insertion", "one sentence only adds tokens to the other (no edit to align)")
    span = max(end_a, end_b) - k + 1
    if span > max_edit_tokens:
        return Verdict(False, "edit_too_long", f"the edit spans {span} tokens > pairs.max_edit_tokens={max_edit_tokens}")
    tp = TokenizedPair(ids_a, ids_b, k, tokenizer.decode(ids_a[k:end_a + 1]), tokenizer.decode(ids_b[k:end_b + 1]),
                       end_a, end_b)
    return Verdict(True, tokens=tp)
