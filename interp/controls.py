"""Control edits: the null baseline for "this component changes little".

A component is stable for a kind of edit only if it changes less than it does for an *arbitrary*
one-token edit at the same place. For every kept pair we build ``K`` control sentences: sentence
``a`` with its edited token replaced, at the same position, by other single tokens. How the
replacements are chosen is ``analysis.controls.pool``:

- ``common`` (default): common whole-word tokens of the tokenizer (low BPE ids are the earliest,
  most frequent merges), matching the shape of the original token: ``" word"`` after a space,
  ``"Word"`` at the start of a sentence. ``analysis.controls.words`` replaces the pool with a fixed
  list.
- ``edits``: the tokens that other pairs of the run edit (both sides). Minimal-pair edits swap
  related tokens (``a``/``an``, ``at``/``in``); random common words are a weaker baseline, and a
  component can look "stable" against them only because real edits are small edits.
- ``matched``: tokens like the real replacement ``b`` in shape, embedding distance and frequency.
  Candidates are the tokens that decode to an ASCII alphabetic word of any length (short function
  words such as ``a``, ``of``, ``he`` included), with or without a leading space, special tokens
  excluded. A token's *shape class* is (leading space or not, case pattern lower / Capitalized /
  UPPER / mixed, alphabetic or not). For each pair the candidates are those of ``b``'s class
  (the tokens of ``a`` and ``b`` and every case variant of their words excluded), or, when that
  class has fewer than ``2 K x bins`` of them, every candidate with ``b``'s leading-space shape.
  Frequency is matched by bin: the candidates in ``b``'s log-frequency bin (``analysis.controls.bins``
  bins of equal width over the candidates' log-frequency proxy, so each spans the same factor of
  frequency; widened to the neighbouring bins until there are ``2 K``). Distance is
  matched by caliper: of those, the ``2 K`` whose cosine distance to ``a``'s token in the input
  embedding (``1 - cos``) is closest to the real edit's ``dist_ab``; the ``K`` controls are drawn
  from them at random. (Quantile bins of distance are too coarse: real edits lie among the nearest
  0.1% of the vocabulary, and on SmolLM2 controls drawn from the real edit's distance decile were
  about twice as far as the real edit, at the median; with the caliper, 1.17 times, since for many
  edits hardly any token is closer to ``a`` than ``b`` is. The regression-adjusted effect in the
  stability table, ``adj_coef``, takes up what distance difference remains.)
- ``nearest``: the ``K`` candidates nearest ``a``'s token in the input embedding (cosine), with
  ``a``'s leading-space shape, ``b``'s token and case variants of both words excluded
  (deterministic: ties by token id). The hardest null: edits to the most similar tokens.
- ``grammatical``: one control per pair, ``a`` with its edited token replaced by the pair's
  ``alt`` (``Pair.alt``, a grammatical alternative for the edited word: ``was`` -> ``is``), with
  ``a``'s leading space and capitalisation. Pairs without a usable ``alt`` are set apart before
  the run by ``split_missing_alt`` (reasons ``no_alt``, ``alt_not_one_token``, ``alt_same_as_edit``,
  ``alt_span_edit``).

Log-frequency proxy. No corpus is reachable offline, so a token's frequency is estimated from its
id: byte-level BPE vocabularies (GPT-2, SmolLM2, Llama 3) number tokens in merge order, and merges
are learnt most-frequent-pair first, so the id is roughly a frequency rank; by Zipf's law frequency
~ 1 / rank, hence ``logfreq(t) = -log(1 + id(t))``. The first ~256 ids (single bytes) are not
merges; among the candidates this affects only bare single letters. Only the *ranks* of the proxy
matter for the quantile bins of ``matched``, so any monotone transform of the id gives the same
draws.

Distances are computed in float64 from the float32 embedding, so machines that share the weights
agree on the bins. Multi-token edits (``pairs.alignment=span``) use the first token of each side
and replace only ``a``'s first edited token (the controls keep ``a``'s length).

Every draw is seeded by ``(seed, pair_id)`` and depends on nothing else of the run except, for
``edits``, the whole kept pair set, so a pair gets the same controls in any batch, shard or rerun.
The controls differ from ``a`` at exactly the edit position by construction (token ids are
replaced; nothing is re-tokenized). ``build_controls`` is the entry point: it returns a
``ControlSet`` with the control sentences, the per-pair columns of ``pairs.parquet`` (``alt``,
``control_ids``, ``control_tokens``, ``dist_ab``, ``dist_ac``, ``dist_ac_mean``, ``logfreq_a``,
``logfreq_b``, ``logfreq_c_mean``) and the facts for the manifest.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np
import torch

from .config import ConfigError
from .pairs.records import Problem


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


# ---------------------------------------------------------------------------------------------
# matched, nearest and grammatical nulls

NEW_POOLS = ("matched", "nearest", "grammatical")
LOGFREQ_PROXY = "-log(1 + token id): BPE merge order as a frequency rank (Zipf)"
_CHUNK = 8192  # embedding rows per float64 product


def input_embedding(lm) -> torch.Tensor:
    """The model's input embedding, ``[vocab, d]`` float32 on the CPU (``lm``: ``LoadedModel``)."""
    w = lm.hf_model.get_input_embeddings().weight
    return w.detach().to("cpu").float()


def logfreq(token_id) -> float | np.ndarray:
    """The log-frequency proxy of a token id (or an array of ids): ``-log(1 + id)``."""
    if isinstance(token_id, (int, np.integer)):
        return -math.log1p(int(token_id))
    return -np.log1p(np.asarray(token_id, dtype=np.float64))


def case_pattern(word: str) -> str:
    """``lower``, ``capitalized`` (``Word``, ``I``, ``A``), ``upper`` (``USA``) or ``mixed``."""
    if word.islower():
        return "lower"
    if word[:1].isupper() and (len(word) == 1 or word[1:].islower()):
        return "capitalized"
    if word.isupper():
        return "upper"
    return "mixed"


def shape_class(text: str) -> tuple[bool, str, bool]:
    """A token's shape class: (leading space, case pattern, ASCII alphabetic)."""
    space = text.startswith(" ")
    word = text[1:] if space else text
    return space, case_pattern(word), bool(word) and word.isascii() and word.isalpha()


def _word(text: str) -> str:
    return text.strip().lower()


class Vocabulary:
    """Decoded text, shape class and log-frequency of every token, and the candidate tokens of the
    matched and nearest pools (ASCII alphabetic words with or without a leading space)."""

    def __init__(self, tokenizer, n_rows: int | None = None):
        n = len(tokenizer) if n_rows is None else min(len(tokenizer), n_rows)
        self.tokenizer = tokenizer
        texts = tokenizer.batch_decode([[t] for t in range(n)])
        raw = tokenizer.convert_ids_to_tokens(list(range(n)))
        for t, r in enumerate(raw):  # SentencePiece decodes a lone "▁word" without its space
            if isinstance(r, str) and r.startswith("\u2581") and not texts[t].startswith(" "):
                texts[t] = " " + texts[t]
        self.texts = texts
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        words = [_word(x) for x in texts]
        index: dict[str, int] = {}
        self.word_ids = np.array([index.setdefault(w, len(index)) for w in words], dtype=np.int64)
        self.logfreq = logfreq(np.arange(n))
        cand, classes = [], {}
        for t, x in enumerate(texts):
            if t in special:
                continue
            space, case, alpha = shape_class(x)
            if alpha:
                cand.append(t)
                classes.setdefault((space, case, alpha), []).append(t)
        self.candidates = np.array(cand, dtype=np.int64)
        self.classes = {k: np.array(v, dtype=np.int64) for k, v in classes.items()}
        self.by_space = {s: np.array(sorted(t for k, v in classes.items() if k[0] == s for t in v), dtype=np.int64)
                         for s in (True, False)}

    def text(self, token_id: int) -> str:
        return self.texts[token_id] if token_id < len(self.texts) else self.tokenizer.decode([token_id])

    def without(self, ids: np.ndarray, tokens: list[int]) -> np.ndarray:
        """``ids`` less the given tokens and every token whose word is a case variant of theirs."""
        words = [self.word_ids[t] for t in tokens if t < len(self.word_ids) and self.texts[t].strip()]
        keep = ~np.isin(self.word_ids[ids], words) & ~np.isin(ids, tokens)
        return ids[keep]


class Distances:
    """Cosine distances ``1 - cos`` between input-embedding rows, in float64."""

    def __init__(self, embedding: torch.Tensor):
        self.E = embedding
        norms = torch.empty(embedding.shape[0], dtype=torch.float64)
        for s in range(0, embedding.shape[0], _CHUNK):
            norms[s:s + _CHUNK] = embedding[s:s + _CHUNK].double().norm(dim=1)
        self.norms = norms

    def pairs(self, x: list[int], y: list[int]) -> np.ndarray:
        """Distance of ``x[i]`` to ``y[i]``."""
        if not x:
            return np.zeros(0)
        ex, ey = self.E[x].double(), self.E[y].double()
        cos = (ex * ey).sum(1) / (self.norms[x] * self.norms[y]).clamp_min(1e-30)
        return (1.0 - cos).numpy()

    def to_all(self, tokens: list[int]) -> np.ndarray:
        """``[len(tokens), vocab]``: distance of every embedding row to each of ``tokens``."""
        A = self.E[tokens].double().T  # [d, U]
        out = torch.empty((len(tokens), self.E.shape[0]), dtype=torch.float64)
        for s in range(0, self.E.shape[0], _CHUNK):
            out[:, s:s + _CHUNK] = (self.E[s:s + _CHUNK].double() @ A).T
        out /= (self.norms[None, :] * self.norms[tokens][:, None]).clamp_min(1e-30)
        return (1.0 - out).numpy()


def width_bins(values: np.ndarray, bins: int) -> np.ndarray:
    """The inner edges of ``bins`` bins of equal width over the range of ``values`` (log-frequency:
    each bin spans the same factor of frequency, unlike quantile bins of the vocabulary, whose top
    bin spans the first ~8,000 ids of a 49k vocabulary)."""
    lo, hi = float(np.min(values)), float(np.max(values))
    return np.linspace(lo, hi, bins + 1)[1:-1] if bins > 1 else np.zeros(0)


def quantile_bins(values: np.ndarray, bins: int) -> np.ndarray:
    """The inner edges of ``bins`` quantile bins of ``values`` (``bin_of`` gives 0..bins-1)."""
    return np.quantile(values, np.linspace(0.0, 1.0, bins + 1)[1:-1]) if bins > 1 else np.zeros(0)


def bin_of(edges: np.ndarray, values) -> np.ndarray:
    return np.searchsorted(edges, values, side="right")


CALIPER = 2  # matched: draw the K controls from the CALIPER x K candidates closest to the real distance


@dataclass
class MatchedDraw:
    """One pair's matched draw: the candidates of its frequency cell, the caliper, the controls."""

    candidates: np.ndarray  # of b's shape class (or leading-space shape when widened)
    freq_edges: np.ndarray
    freq_bin: int  # of the real replacement b
    near: np.ndarray  # the CALIPER x K candidates of the frequency cell closest to dist_ab
    caliper: float  # the largest |distance - dist_ab| among ``near``
    controls: list[int]
    rings: int  # frequency bins widened beyond b's own (0: all from its own bin)
    widened: bool  # b's shape class had too few candidates: its leading-space shape was used


def matched_draw(vocab: Vocabulary, dist_a: np.ndarray, tok_a: int, tok_b: int, n: int, bins: int,
                 seed: int, key: str) -> MatchedDraw:
    """The ``matched`` controls of one pair (``dist_a``: distance of every token to ``tok_a``).

    Frequency by bin: the candidates in b's log-frequency quantile bin (widened to neighbouring
    bins until there are ``CALIPER x n``). Distance by caliper: of those, the ``CALIPER x n``
    whose distance to ``a`` is closest to the real edit's; ``n`` of them drawn at random (seeded by
    ``(seed, key)``). Quantile bins of distance are far too coarse here: real edits sit among the
    nearest 0.1% of the vocabulary, and a bin of a tenth (or a hundredth) of it reaches tokens two
    to three times as far."""
    cls = shape_class(vocab.text(tok_b))
    cands = vocab.without(vocab.classes.get(cls, np.zeros(0, dtype=np.int64)), [tok_a, tok_b])
    m = CALIPER * n
    widened = len(cands) < m * bins
    if widened:
        cands = vocab.without(vocab.by_space[cls[0]], [tok_a, tok_b])
    if len(cands) < n:
        raise ConfigError(f"analysis.controls.n={n}: pool=matched has {len(cands)} candidates for pair "
                          f"{key} ({vocab.text(tok_a)!r} -> {vocab.text(tok_b)!r}); lower analysis.controls.n")
    f = vocab.logfreq[cands]
    f_edges = width_bins(vocab.logfreq[vocab.candidates], bins)
    cf = bin_of(f_edges, f)
    fb = int(bin_of(f_edges, logfreq(tok_b)))
    rings = 0
    while (np.abs(cf - fb) <= rings).sum() < min(m, len(cands)):
        rings += 1
    cell = cands[np.abs(cf - fb) <= rings]
    gap = np.abs(dist_a[cell] - dist_a[tok_b])
    order = np.lexsort((cell, gap))[:m]  # closest in distance, ties by token id
    near = cell[order]
    chosen = sorted(random.Random(f"{seed}:{key}").sample(sorted(near.tolist()), min(n, len(near))))
    return MatchedDraw(cands, f_edges, fb, near, float(gap[order].max()), chosen, rings, widened)


def nearest_ids(vocab: Vocabulary, dist_a: np.ndarray, tok_a: int, tok_b: int, n: int, key: str) -> list[int]:
    """The ``n`` candidates nearest ``tok_a`` with its leading-space shape (ties by token id)."""
    space = vocab.text(tok_a).startswith(" ")
    cands = vocab.without(vocab.by_space[space], [tok_a, tok_b])
    if len(cands) < n:
        raise ConfigError(f"analysis.controls.n={n}: pool=nearest has {len(cands)} candidates for pair "
                          f"{key} ({vocab.text(tok_a)!r}); lower analysis.controls.n")
    d = dist_a[cands]
    if n < len(cands):  # the n smallest and their ties, then sorted by (distance, id)
        keep = d <= np.partition(d, n - 1)[n - 1]
        cands, d = cands[keep], d[keep]
    return cands[np.lexsort((cands, d))[:n]].tolist()


def alt_token(tokenizer, pair, tp) -> tuple[int | None, str, str]:
    """The token id of ``pair.alt`` spelled like a's edited token (leading space, capitalisation);
    ``(None, reason, detail)`` where the pair cannot have a grammatical control."""
    if not pair.alt:
        return None, "no_alt", "the pair has no alt (a grammatical alternative for a's edited word)"
    if tp.edit_end_a > tp.edit_pos:
        return None, "alt_span_edit", f"a's edit {tp.token_a!r} spans several tokens; one alt token cannot replace it"
    text_a = tokenizer.decode([tp.ids_a[tp.edit_pos]])
    word_a = text_a.lstrip(" ")
    alt = pair.alt.strip()
    if word_a[:1].isupper():
        alt = alt.upper() if len(word_a) > 1 and word_a.isupper() else alt[:1].upper() + alt[1:]
    text = (" " if text_a.startswith(" ") else "") + alt
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if len(ids) != 1:
        return None, "alt_not_one_token", f"alt {text!r} is {len(ids)} tokens"
    if ids[0] in (tp.ids_a[tp.edit_pos], tp.ids_b[tp.edit_pos]):
        return None, "alt_same_as_edit", f"alt {text!r} is the edited token of a or b"
    return ids[0], "", ""


def split_missing_alt(kept, tokenizer) -> tuple[list, list[Problem]]:
    """``pool=grammatical``: the kept ``(Pair, TokenizedPair)`` with a usable ``alt``, and a
    ``Problem`` for each of the others (reason ``no_alt``, ``alt_not_one_token``,
    ``alt_same_as_edit`` or ``alt_span_edit``)."""
    ok, problems = [], []
    for p, tp in kept:
        tid, reason, detail = alt_token(tokenizer, p, tp)
        if tid is None:
            problems.append(Problem(p.source, p.line, reason, detail, p.a, p.b, p.category, p.pair_id))
        else:
            ok.append((p, tp))
    return ok, problems


@dataclass
class ControlSet:
    """What ``build_controls`` gives the pipeline."""

    k: int  # controls per pair actually used (cfg n; 1 for grammatical; 0 without controls)
    ids: list[list[list[int]]] | None  # per entry of ``indices``: k token-id sentences (None when k == 0)
    rows: list[dict]  # per entry of ``indices``: columns for pairs.parquet
    facts: dict = field(default_factory=dict)  # for the manifest


def control_count(ccfg) -> int:
    """Control sentences per pair for ``analysis.controls`` (``ccfg``): ``n``, one for the
    ``grammatical`` pool (the pair's own alternative), 0 without controls."""
    n = int(ccfg.n)
    return min(n, 1) if ccfg.pool == "grammatical" else n


def _median(values) -> float | None:
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=np.float64)
    return float(np.median(v)) if len(v) else None


def build_controls(cfg, tokenizer, embedding: torch.Tensor | None, kept, indices: list[int]) -> ControlSet:
    """Control sentences and their per-pair columns for the kept pairs at ``indices``.

    ``kept``: the run's ``(Pair, TokenizedPair)`` list (the ``edits`` pool is built from all of it,
    so shards agree); ``embedding``: ``input_embedding(lm)`` (needed by ``matched`` and ``nearest``
    and for the distance columns; None leaves the distances NaN). ``pool=grammatical`` expects
    ``kept`` filtered by ``split_missing_alt`` (a pair without a usable alt raises ValueError).

    ``facts``: ``pool``, ``k``, ``logfreq_proxy``, ``candidates`` (tokens the pool draws from:
    common/edits pool size, the candidate vocabulary of matched/nearest, distinct alt tokens of
    grammatical), the medians over the pairs at ``indices`` of ``dist_ab``, ``dist_ac_mean``,
    ``logfreq_b`` and ``logfreq_c_mean`` (None without values), and for matched ``bins``,
    ``median_caliper`` (median over pairs of the largest |distance - dist_ab| the draw allowed),
    ``share_own_freq_bin`` (pairs drawn from b's own frequency bin) and ``pairs_widened`` (pairs
    whose shape class was too small)."""
    ccfg = cfg.analysis.controls
    pool, n, seed = str(ccfg.pool), int(ccfg.n), int(cfg.seed)
    bins = int(ccfg.bins)
    if pool in NEW_POOLS and ccfg.get("words"):
        raise ConfigError(f"analysis.controls.words is a fixed list for pool=common; pool={pool} does not use it")
    if pool in ("matched", "nearest") and n and embedding is None:
        raise ValueError(f"analysis.controls.pool={pool} needs the input embedding")
    k = control_count(ccfg)
    dist = Distances(embedding) if embedding is not None else None
    vocab = Vocabulary(tokenizer, embedding.shape[0] if embedding is not None else None) \
        if k and pool in ("matched", "nearest") else None

    firsts = [(kept[i][1].ids_a[kept[i][1].edit_pos], kept[i][1].ids_b[kept[i][1].edit_pos]) for i in indices]
    ctrl: list[list[int]] = [[] for _ in indices]  # control token per entry
    facts: dict = {"pool": pool, "k": k, "logfreq_proxy": LOGFREQ_PROXY}
    dist_ab: list[float] = [math.nan] * len(indices)
    dist_ac: list[list[float]] = [[] for _ in indices]

    if k and pool in ("common", "edits"):
        cp = make_pool(tokenizer, pool, int(ccfg.pool_size), ccfg.words, [tp for _, tp in kept])
        facts["candidates"] = len(set(cp.space) | set(cp.bare))
        for j, i in enumerate(indices):
            p, tp = kept[i]
            own = {tp.ids_a[tp.edit_pos], tp.ids_b[tp.edit_pos]}
            ctrl[j] = [ids[tp.edit_pos] for ids in control_ids(cp, tp.ids_a, tp.edit_pos, tp.token_a, own, n,
                                                                seed, p.pair_id)]
    elif k and pool == "grammatical":
        alts = set()
        for j, i in enumerate(indices):
            p, tp = kept[i]
            tid, reason, detail = alt_token(tokenizer, p, tp)
            if tid is None:
                raise ValueError(f"pair {p.pair_id}: {reason} ({detail}); set such pairs apart with "
                                 "split_missing_alt before build_controls")
            ctrl[j] = [tid]
            alts.add(tid)
        facts["candidates"] = len(alts)
    elif k:  # matched, nearest: grouped by a's token, whose distances to the vocabulary are computed once
        facts["candidates"] = int(len(vocab.candidates))
        if pool == "matched":
            facts.update(bins=bins, caliper_k=CALIPER, pairs_widened=0)
            calipers, own_bin = [], 0
        by_a: dict[int, list[int]] = {}
        for j, (ta, _) in enumerate(firsts):
            by_a.setdefault(ta, []).append(j)
        # a's tokens in groups of 64 fixed by the whole run (not this shard): the matrix product of a
        # group is not bitwise the same in another group's company, and shards must draw alike
        run_toks = sorted({tp.ids_a[tp.edit_pos] for _, tp in kept})
        groups = [run_toks[g:g + 64] for g in range(0, len(run_toks), 64)]
        for group in groups:
            if not any(t in by_a for t in group):
                continue
            D = dist.to_all(group)
            for row, ta in zip(D, group):
                for j in by_a.get(ta, []):
                    p = kept[indices[j]][0]
                    tb = firsts[j][1]
                    if pool == "matched":
                        m = matched_draw(vocab, row, ta, tb, n, bins, seed, p.pair_id)
                        ctrl[j] = m.controls
                        calipers.append(m.caliper)
                        own_bin += m.rings == 0
                        facts["pairs_widened"] += m.widened
                    else:
                        ctrl[j] = nearest_ids(vocab, row, ta, tb, n, p.pair_id)
                    dist_ab[j] = float(row[tb])
                    dist_ac[j] = [float(row[c]) for c in ctrl[j]]
        if pool == "matched":
            facts["median_caliper"] = _median(calipers)
            facts["share_own_freq_bin"] = own_bin / len(indices) if indices else None

    if dist is not None:  # the pools that did not compute them above
        todo = [j for j in range(len(indices)) if math.isnan(dist_ab[j])]
        ab = dist.pairs([firsts[j][0] for j in todo], [firsts[j][1] for j in todo])
        for j, v in zip(todo, ab):
            dist_ab[j] = float(v)
        flat = [(j, c) for j in todo for c in ctrl[j]]
        ac = dist.pairs([firsts[j][0] for j, _ in flat], [c for _, c in flat])
        for (j, _), v in zip(flat, ac):
            dist_ac[j].append(float(v))

    rows, ids_out = [], []
    for j, i in enumerate(indices):
        p, tp = kept[i]
        ta, tb = firsts[j]
        cs = ctrl[j]
        sentences = []
        for c in cs:
            ids = list(tp.ids_a)
            ids[tp.edit_pos] = c
            sentences.append(ids)
        ids_out.append(sentences)
        dac = dist_ac[j] if dist is not None else [math.nan] * len(cs)
        rows.append({
            "alt": p.alt, "control_ids": list(cs), "control_tokens": [tokenizer.decode([c]) for c in cs],
            "dist_ab": dist_ab[j], "dist_ac": list(dac),
            "dist_ac_mean": float(np.mean(dac)) if cs else math.nan,
            "logfreq_a": logfreq(ta), "logfreq_b": logfreq(tb),
            "logfreq_c_mean": float(np.mean(logfreq(np.array(cs)))) if cs else math.nan,
        })
    facts.update(
        median_dist_ab=_median(r["dist_ab"] for r in rows),
        median_dist_ac_mean=_median(r["dist_ac_mean"] for r in rows),
        median_logfreq_b=_median(r["logfreq_b"] for r in rows),
        median_logfreq_c_mean=_median(r["logfreq_c_mean"] for r in rows),
    )
    return ControlSet(k, ids_out if k else None, rows, facts)
