"""Add ``alt`` to the built-in bank: a grammatical alternative for sentence a's edited word.

Rerun (from the repository root)::

    .venv/bin/python scripts/bank_alts.py            # rewrites interp/pairs/bank/*.jsonl in place
    .venv/bin/python scripts/bank_alts.py --check    # also counts the alts that are one token
                                                     # under the SmolLM2 tokenizer

``alt`` is what ``analysis.controls.pool=grammatical`` puts at a's edited token (see
``interp.controls``): a control edit that keeps the sentence grammatical, so "this component
changes little" is measured against an edit of the same kind that breaks nothing. Each line keeps
its fields and their order; ``alt`` is added last where a rule gives one, removed where none does
(so the script can be rerun after the rules or the bank change). Line order and the JSON format of
``scripts/build_bank.py`` (``json.dumps(row, ensure_ascii=False)``, one object per line) are kept.

The rules (``alt_for``), by category; the edited word is the one word where ``a`` and ``b`` differ:

- ``article``: ``a``/``an`` -> ``the`` (not in ``a while``, ``a lot``, ``a few``, ``a little``,
  ``such a``, ``what a``, ``quite a``, ``half an``);
- ``auxiliary`` and ``subject_verb_agreement``: the other tense with the same subject:
  ``is``/``am`` -> ``was``, ``are`` -> ``were``, ``has``/``have`` -> ``had``, ``does``/``do`` ->
  ``did``, ``doesn``/``don`` (of ``doesn't``) -> ``didn``, a lexical verb -> its past tense
  (``likes`` -> ``liked``, ``runs`` -> ``ran``; a fixed table); ``was`` -> ``is``, ``were`` ->
  ``are``. Present -> past is skipped in a sentence that pins the present (``now``, ``at the
  moment``, ``currently``, ``tomorrow``, ``tonight``, ``soon``, ``next week``...); past -> present
  in one that pins the past (``yesterday``, ``ago``, ``last``, ``when``, ``during``, ``before``,
  ``after``, ``earlier``, ``once``, a year);
- ``determiner_number``: ``this``/``that``/``these``/``those`` -> ``the``; ``many`` -> ``few``,
  ``much`` -> ``little`` (same countability; ``any`` after a negation); ``every`` <-> ``each``
  (not ``each of``); ``all``, ``both`` -> ``some``; ``two`` -> ``three``, ``three``/``four`` ->
  ``two``; ``one`` -> ``a``/``an``;
- ``pronoun_case``: same case and number: ``he`` <-> ``she``, ``him`` <-> ``her``, ``we`` <->
  ``they``, ``us`` <-> ``them``, ``me`` -> ``him`` (``I`` has none: every other nominative changes
  the verb's agreement; ``them`` -> ``us`` none where ``we`` is in the sentence: "We invited us");
- ``tense``: none (a's tense is pinned by a time adverb and b's edit is the only other tense; every
  other grammatical word there changes the verb itself), and the semantic categories get none.

``alt`` is written in lower case; the control spells it like a's token (leading space, capital).
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BANK_DIR = REPO / "interp" / "pairs" / "bank"
MODEL_CONF = REPO / "conf" / "model" / "smollm2_135m.yaml"

PRESENT_MARKERS = {"now", "moment", "currently", "tomorrow", "tonight", "soon"}
NEXT_TIME = {"week", "month", "year", "weekend", "day", "time", "summer", "winter", "spring", "autumn",
             "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"}
NEGATION = {"not", "no", "never", "don", "doesn", "didn", "isn", "aren", "wasn", "weren", "hasn", "haven"}
PAST_MARKERS = {"yesterday", "ago", "last", "when", "during", "before", "after", "earlier", "once"}
YEAR = re.compile(r"^(1[5-9]|20)\d\d$")

TO_PAST = {  # present (any person) -> past, for a subject that stays the same
    "is": "was", "am": "was", "are": "were", "has": "had", "have": "had", "does": "did", "do": "did",
    "doesn": "didn", "don": "didn",
}
LEXICAL_PAST = {
    "run": "ran", "live": "lived", "work": "worked", "own": "owned", "need": "needed", "smell": "smelled",
    "speak": "spoke", "love": "loved", "like": "liked", "give": "gave", "play": "played", "taste": "tasted",
    "talk": "talked", "lose": "lost", "walk": "walked", "know": "knew", "want": "wanted", "drink": "drank",
    "sing": "sang", "eat": "ate", "sit": "sat", "get": "got",
}
for _v, _p in LEXICAL_PAST.items():
    TO_PAST[_v] = TO_PAST[_v + "s"] = _p
TO_PRESENT = {"was": "is", "were": "are"}

ARTICLE_BLOCK_NEXT = {"while", "lot", "few", "little"}
ARTICLE_BLOCK_PREV = {"such", "what", "quite", "half"}
DETERMINER = {"this": "the", "that": "the", "these": "the", "those": "the", "many": "few", "much": "little",
              "every": "each", "each": "every", "all": "some", "both": "some", "two": "three", "three": "two",
              "four": "two"}
PRONOUN = {"he": "she", "she": "he", "him": "her", "her": "him", "we": "they", "they": "we", "us": "them",
           "them": "us", "me": "him"}


def _bare(word: str) -> str:
    """The word without surrounding punctuation, lower case; ``doesn't`` -> ``doesn`` (the token)."""
    w = word.strip(".,;:!?\"()").lower()
    return w[:-2] if w.endswith("n't") else w


def edited_word(a: str, b: str) -> tuple[int, list[str]] | None:
    """(index of the one word where a and b differ, a's words, bare); None where not exactly one."""
    wa, wb = a.split(), b.split()
    if len(wa) != len(wb):
        return None
    diff = [i for i, (x, y) in enumerate(zip(wa, wb)) if x != y]
    if len(diff) != 1:
        return None
    return diff[0], [_bare(w) for w in wa]


def tense_alt(i: int, words: list[str]) -> str | None:
    w, others = words[i], set(words[:i] + words[i + 1:])
    if w in TO_PAST:
        future = any(x == "next" and y in NEXT_TIME for x, y in zip(words, words[1:]))  # not "next door"
        return None if others & PRESENT_MARKERS or future else TO_PAST[w]
    if w in TO_PRESENT:
        if others & PAST_MARKERS or any(YEAR.match(x) for x in others):
            return None
        return TO_PRESENT[w]
    return None


def alt_for(row: dict) -> str | None:
    """The grammatical alternative for a's edited word under the category's rule, or None."""
    found = edited_word(row["a"], row["b"])
    if found is None:
        return None
    i, words = found
    w = words[i]
    prev = words[i - 1] if i > 0 else ""
    nxt = words[i + 1] if i + 1 < len(words) else ""
    cat = row.get("category")
    if cat == "article":
        if w in ("a", "an") and nxt not in ARTICLE_BLOCK_NEXT and prev not in ARTICLE_BLOCK_PREV:
            return "the"
        return None
    if cat in ("auxiliary", "subject_verb_agreement"):
        return tense_alt(i, words)
    if cat == "determiner_number":
        if w == "each" and nxt == "of":
            return None
        if w == "one":
            return "an" if nxt[:1] in tuple("aeiou") else "a"
        if w == "much" and set(words[:i]) & NEGATION:  # "we don't have much time": "any", not "little"
            return "any"
        return DETERMINER.get(w)
    if cat == "pronoun_case":
        alt = PRONOUN.get(w)
        if alt == "us" and "we" in words:  # "We invited us": a reflexive is needed
            return None
        return alt
    return None


def with_alt(row: dict) -> dict:
    """The row with ``alt`` (re)computed: last if the rule gives one, absent otherwise."""
    out = {k: v for k, v in row.items() if k != "alt"}
    alt = alt_for(out)
    if alt:
        out["alt"] = alt
    return out


def rewrite(path: Path) -> list[dict]:
    rows = [with_alt(json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return rows


def one_token_alts(rows: list[dict], tokenizer) -> int:
    """How many of the rows' alts give a grammatical control under ``tokenizer``."""
    from interp.controls import split_missing_alt
    from interp.pairs.files import pair_from_record
    from interp.pairs.validate import check_pair

    kept = []
    for i, r in enumerate(rows):
        v = check_pair(tokenizer, r["a"], r["b"])
        if v.ok and r.get("alt"):
            kept.append((pair_from_record(r, "bank", i + 1, r["category"]), v.tokens))
    return len(split_missing_alt(kept, tokenizer)[0])


def main(bank_dir: str | Path = BANK_DIR, check: bool = False, verbose: bool = True) -> dict:
    """Rewrite every bank file in ``bank_dir``; returns ``{category: {pairs, alt[, one_token]}}``."""
    tokenizer = None
    if check:
        from omegaconf import OmegaConf

        from interp.model import load_tokenizer

        tokenizer = load_tokenizer(OmegaConf.load(MODEL_CONF))
    report = {}
    for path in sorted(Path(bank_dir).glob("*.jsonl")):
        rows = rewrite(path)
        rep = {"pairs": len(rows), "alt": sum("alt" in r for r in rows)}
        if tokenizer is not None:
            rep["one_token"] = one_token_alts(rows, tokenizer)
        report[path.stem] = rep
        if verbose:
            extra = f"  one token under SmolLM2 {rep['one_token']:4d}" if "one_token" in rep else ""
            kinds = Counter(r["alt"] for r in rows if "alt" in r).most_common(4)
            print(f"{path.stem:24s} pairs {rep['pairs']:4d}  with alt {rep['alt']:4d}{extra}"
                  + (f"  ({', '.join(f'{k} {v}' for k, v in kinds)}, ...)" if kinds else ""))
    return report


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bank", default=str(BANK_DIR), help="folder of bank files (default: the package bank)")
    ap.add_argument("--check", action="store_true", help="count alts that are one token under SmolLM2")
    args = ap.parse_args()
    main(args.bank, check=args.check)
