"""Token-level validation of minimal pairs against a model's tokenizer.

A pair is kept when both sentences, tokenized without special tokens, have the same length and
differ at exactly one position (a one-token edit). Everything else is rejected with a reason that
names what differs, so a researcher can see why a pair did not make it.

The BOS token is not part of the sentence tokens here: the runner prepends it, so the edit position
``edit_pos`` counts from the first sentence token (0-based) and the position in the model input is
``edit_pos + 1``.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TokenizedPair:
    """A validated pair: token ids of both sentences (no BOS) and where they differ."""

    ids_a: list[int]
    ids_b: list[int]
    edit_pos: int  # 0-based index into ids_a / ids_b
    token_a: str
    token_b: str

    @property
    def n_tokens(self) -> int:
        return len(self.ids_a)


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


def check_pair(tokenizer, a: str, b: str, max_tokens: int = 256) -> Verdict:
    """Is ``(a, b)`` a one-token edit under ``tokenizer``? Returns a ``Verdict`` with the reason."""
    if not a.strip() or not b.strip():
        return Verdict(False, "empty", "one of the sentences is empty")
    ids_a, ids_b = encode(tokenizer, a), encode(tokenizer, b)
    if max(len(ids_a), len(ids_b)) > max_tokens:
        return Verdict(False, "too_long", f"{max(len(ids_a), len(ids_b))} tokens > max {max_tokens}")
    if len(ids_a) != len(ids_b):
        return Verdict(False, "length_mismatch",
                       f"{len(ids_a)} vs {len(ids_b)} tokens (a differing word splits into a "
                       "different number of tokens, or words were added or removed)",
                       extra={"n_tokens_a": len(ids_a), "n_tokens_b": len(ids_b)})
    pos = diff_positions(ids_a, ids_b)
    if not pos:
        return Verdict(False, "identical_tokens", "both sentences give the same tokens")
    if len(pos) > 1:
        shown = ", ".join(
            f"{i}: {tokenizer.decode([ids_a[i]])!r}/{tokenizer.decode([ids_b[i]])!r}" for i in pos[:4])
        return Verdict(False, "multi_token_edit", f"{len(pos)} positions differ ({shown})",
                       extra={"diff_positions": pos})
    k = pos[0]
    tp = TokenizedPair(ids_a, ids_b, k, tokenizer.decode([ids_a[k]]), tokenizer.decode([ids_b[k]]))
    return Verdict(True, tokens=tp)
