"""Control edits: the null baseline for "this component changes little".

A component is stable for a kind of edit only if it changes less than it does for an *arbitrary*
one-token edit at the same place. For every kept pair we build ``K`` control sentences: sentence
``a`` with its edited token replaced, at the same position, by other single tokens. By default the
replacements are drawn from common whole-word tokens of the tokenizer (low BPE ids are the earliest,
most frequent merges), matching the shape of the original token: ``" word"`` after a space,
``"Word"`` at the start of a sentence. ``analysis.controls.words`` replaces the pool with a fixed list.

``analysis.controls.pool=edits`` is a stricter null: the replacements are the tokens that other pairs
of the run edit (both sides). Minimal-pair edits swap related tokens (``a``/``an``, ``at``/``in``);
random common words are a weaker baseline, and a component can look "stable" against them only
because real edits are small edits. Compare both before reading a result.

The draw is seeded by ``(seed, pair_id)``, so a pair gets the same controls in any batch, shard or
rerun. The controls differ from ``a`` at exactly the edit position by construction (token ids are
replaced; nothing is re-tokenized).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .config import ConfigError


@dataclass
class ControlPool:
    space: list[int]  # tokens that decode to " word"
    bare: list[int]  # tokens that decode to "Word" (sentence-initial shape)

    def for_token(self, text: str) -> list[int]:
        return self.space if text.startswith(" ") or not self.bare else self.bare


def build_pool(tokenizer, size: int = 500, words: list[str] | None = None) -> ControlPool:
    """The ``size`` lowest-id alphabetic whole-word tokens of each shape (or the given words)."""
    if words:
        space, bare = [], []
        for w in words:
            for text, out in ((" " + w.strip(), space), (w.strip().capitalize(), bare)):
                ids = tokenizer(text, add_special_tokens=False)["input_ids"]
                if len(ids) == 1:
                    out.append(ids[0])
        if not space:
            raise ConfigError("analysis.controls.words: none of the words is a single token")
        return ControlPool(space, bare)
    space, bare = [], []
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    for tid in range(len(tokenizer)):
        if tid in special:
            continue
        text = tokenizer.decode([tid])
        word = text[1:] if text.startswith(" ") else text
        if not (word.isascii() and word.isalpha() and 3 <= len(word) <= 12):
            continue
        if text.startswith(" ") and word.islower() and len(space) < size:
            space.append(tid)
        elif not text.startswith(" ") and word[0].isupper() and word[1:].islower() and len(bare) < size:
            bare.append(tid)
        if len(space) >= size and len(bare) >= size:
            break
    return ControlPool(space, bare)


def edits_pool(tokenized) -> ControlPool:
    """The tokens edited by the run's pairs (both sides), split by shape."""
    toks = {}
    for tp in tokenized:
        toks[tp.ids_a[tp.edit_pos]] = tp.token_a
        toks[tp.ids_b[tp.edit_pos]] = tp.token_b
    space = sorted(t for t, s in toks.items() if s.startswith(" "))
    bare = sorted(t for t, s in toks.items() if not s.startswith(" "))
    return ControlPool(space, bare)


def make_pool(tokenizer, kind: str, size: int, words, tokenized) -> ControlPool:
    if kind == "common":
        return build_pool(tokenizer, size, words)
    if kind == "edits":
        return edits_pool(tokenized)
    raise ConfigError(f"analysis.controls.pool={kind!r} is not one of common, edits")


def control_ids(pool: ControlPool, ids_a: list[int], edit_pos: int, token_a: str, exclude: set[int],
                n: int, seed: int, key: str) -> list[list[int]]:
    """``n`` copies of ``ids_a`` with position ``edit_pos`` replaced by distinct pool tokens."""
    candidates = [t for t in pool.for_token(token_a) if t not in exclude]
    if len(candidates) < n:  # too few of the same shape: take the other shape too
        candidates += [t for t in (pool.bare if candidates and candidates[0] in pool.space else pool.space)
                       if t not in exclude and t not in candidates]
    if len(candidates) < n:
        raise ConfigError(f"control pool too small for pair {key}: {len(candidates)} candidates for {n} "
                         "controls; lower analysis.controls.n or use analysis.controls.pool=common")
    rng = random.Random(f"{seed}:{key}")
    out = []
    for t in rng.sample(candidates, n):
        ids = list(ids_a)
        ids[edit_pos] = t
        out.append(ids)
    return out
