"""Matched nulls (interp.controls): the matched, nearest and grammatical control pools, the pairs'
``alt`` field and the bank rule that fills it; ``common`` and ``edits`` draw as before."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import math
import sys

import numpy as np
import pytest
import torch

from interp.config import ConfigError
from interp.controls import build_controls, input_embedding, split_missing_alt
from interp.pairs import BANK_DIR, validate_pairs
from interp.pairs.files import read_pair_file
from interp.pairs.records import Pair
from interp.pairs.validate import check_pair
from tests.conftest import REPO, make_cfg, tokenizer_overrides

BANK_CATS = ["article", "auxiliary", "determiner_number", "pronoun_case", "subject_verb_agreement", "preposition",
             "subject"]


def cfg_for(pool: str, n: int = 3, *more: str):
    return make_cfg("model=tiny", "device=cpu", "dtype=float32", *tokenizer_overrides(),
                    f"analysis.controls.pool={pool}", f"analysis.controls.n={n}", *more)


@pytest.fixture(scope="module")
def emb(tiny_lm):
    return input_embedding(tiny_lm)


@pytest.fixture(scope="module")
def kept(tiny_lm):
    """Real bank pairs (every 14th line of, several categories, with and without alt) as the tiny model's
    tokenizer (SmolLM2's) keeps them."""
    pairs = []
    for cat in BANK_CATS:
        pairs += read_pair_file(BANK_DIR / f"{cat}.jsonl", strict=True)[0][::14]
    k, rejected = validate_pairs(pairs, tiny_lm.tokenizer)
    assert not rejected
    return k


def words_of(tok, tid):
    return tok.decode([tid]).strip().lower()


def candidate_vocab(tok, n_rows):
    """Independent of interp.controls: (id, text) of the alphabetic whole-word tokens."""
    special = set(tok.all_special_ids)
    out = []
    for t in range(min(len(tok), n_rows)):
        s = tok.decode([t])
        w = s[1:] if s.startswith(" ") else s
        if t not in special and w and w.isascii() and w.isalpha():
            out.append((t, s))
    return out


def cos_dist(E, a, ids):
    E = E.double()
    x = E[ids]
    return (1 - (x @ E[a]) / (x.norm(dim=1) * E[a].norm())).numpy()


def case(w):
    if w.islower():
        return "lower"
    if w[0].isupper() and (len(w) == 1 or w[1:].islower()):
        return "cap"
    return "upper" if w.isupper() else "mixed"


# --- pair files ---------------------------------------------------------------------------------

def test_pair_files_read_an_alt_column_into_pair_alt(tmp_path):
    j = tmp_path / "p.jsonl"
    j.write_text("\n".join(json.dumps(r) for r in [
        {"a": "She was happy.", "b": "She were happy.", "alt": "is", "note": "x"},
        {"a": "She is good at math.", "b": "She is good in math.", "alt": ""},
        {"a": "He ate an apple.", "b": "He ate a apple."},
        {"a": "He ate an apple.", "b": "He ate a apple.", "alt": 3},
    ]) + "\n")
    pairs, problems = read_pair_file(j)
    assert [p.alt for p in pairs] == ["is", None, None]
    assert pairs[0].meta == {"note": "x"} and all("alt" not in p.meta for p in pairs)
    assert [(pr.line, pr.reason) for pr in problems] == [(4, "not_text")]
    row = pairs[0].to_row()
    assert row["alt"] == "is" and "meta_alt" not in row and row["meta_note"] == "x"

    c = tmp_path / "p.csv"
    with open(c, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["a", "b", "category", "alt"])
        w.writerow(["She was happy.", "She were happy.", "be", "is"])
        w.writerow(["They saw him.", "They saw he.", "case", ""])
    pairs, problems = read_pair_file(c)
    assert not problems and [p.alt for p in pairs] == ["is", None] and all(p.meta == {} for p in pairs)


def test_the_bank_is_read_with_its_alts():
    pairs, _ = read_pair_file(BANK_DIR / "auxiliary.jsonl", strict=True)
    assert pairs[0].a == "She has already eaten." and pairs[0].alt == "had"
    assert any(p.alt is None for p in pairs) and all("alt" not in p.meta for p in pairs)


# --- common and edits: the draws of the implementation before the new pools --------------------

# sha256 of the control sentences (json of the token-id lists) that the implementation before the
# new pools drew for these settings (recorded with that code's functions, which this file copied
# until the digests were taken)
DRAWN_BEFORE = {
    "common": "4950e2f4894cbf94bcf538568bc13eed6ee24b8d0926bf6e9553e222e9809448",
    "edits": "a27532952005d4b6f0c2c543fa5721ba74a14d233549804bda5bdc98f5ce87e1",
    "common-words": "9ab602b2d719d8bfc3d940648622ab2b6c71704127ca32611b0f6401d0bb2b02",
}


@pytest.mark.parametrize("pool,words", [("common", None), ("edits", None),
                                        ("common", ["table", "river", "green", "music"])])
def test_common_and_edits_draw_exactly_what_they_drew_before(tiny_lm, emb, kept, pool, words):
    tok = tiny_lm.tokenizer
    more = [f"analysis.controls.words=[{','.join(words)}]"] if words else []
    cfg = cfg_for(pool, 3, "seed=7", "analysis.controls.pool_size=200", *more)
    indices = list(range(0, len(kept), 2))
    cs = build_controls(cfg, tok, emb, kept, indices)
    digest = hashlib.sha256(json.dumps(cs.ids).encode()).hexdigest()
    assert cs.k == 3 and digest == DRAWN_BEFORE[pool + ("-words" if words else "")]
    edit = [kept[i][1].edit_pos for i in indices]
    assert [r["control_ids"] for r in cs.rows] == [[ids[e] for ids in o] for e, o in zip(edit, cs.ids)]


# --- every pool ----------------------------------------------------------------------------------

@pytest.mark.parametrize("pool", ["common", "edits", "matched", "nearest", "grammatical"])
def test_controls_differ_from_a_only_at_the_edit_position_and_rows_describe_them(tiny_lm, emb, kept, pool):
    tok = tiny_lm.tokenizer
    pairs = split_missing_alt(kept, tok)[0] if pool == "grammatical" else kept
    cs = build_controls(cfg_for(pool), tok, emb, pairs, list(range(len(pairs))))
    k = 1 if pool == "grammatical" else 3
    assert cs.k == k and len(cs.ids) == len(cs.rows) == len(pairs)
    assert cs.facts["pool"] == pool and cs.facts["k"] == k and "logfreq_proxy" in cs.facts
    for (p, tp), sents, row in zip(pairs, cs.ids, cs.rows):
        assert len(sents) == k
        for ids in sents:
            assert len(ids) == len(tp.ids_a)
            assert [i for i, (x, y) in enumerate(zip(ids, tp.ids_a)) if x != y] == [tp.edit_pos]
        ta, tb = tp.ids_a[tp.edit_pos], tp.ids_b[tp.edit_pos]
        assert row["control_ids"] == [s[tp.edit_pos] for s in sents]
        assert row["control_tokens"] == [tok.decode([c]) for c in row["control_ids"]]
        assert tb not in row["control_ids"] and ta not in row["control_ids"]
        assert row["alt"] == p.alt
        assert row["dist_ab"] == pytest.approx(float(cos_dist(emb, ta, [tb])[0]), abs=1e-9)
        assert row["dist_ac"] == pytest.approx(cos_dist(emb, ta, row["control_ids"]).tolist(), abs=1e-9)
        assert row["dist_ac_mean"] == pytest.approx(np.mean(row["dist_ac"]))
        assert row["logfreq_a"] == -math.log1p(ta) and row["logfreq_b"] == -math.log1p(tb)
        assert row["logfreq_c_mean"] == pytest.approx(np.mean([-math.log1p(c) for c in row["control_ids"]]))


def test_without_controls_rows_still_carry_distance_and_frequency(tiny_lm, emb, kept):
    cs = build_controls(cfg_for("matched", 0), tiny_lm.tokenizer, emb, kept, [0, 3])
    assert cs.k == 0 and cs.ids is None and len(cs.rows) == 2
    for i, row in zip([0, 3], cs.rows):
        tp = kept[i][1]
        assert row["control_ids"] == row["control_tokens"] == row["dist_ac"] == []
        assert math.isnan(row["dist_ac_mean"]) and math.isnan(row["logfreq_c_mean"])
        assert row["dist_ab"] > 0 and row["logfreq_b"] == -math.log1p(tp.ids_b[tp.edit_pos])


def test_a_span_edit_measures_distances_on_the_first_tokens(tiny_lm, emb):
    from tests.test_alignment import SPLIT

    tok = tiny_lm.tokenizer
    tp = check_pair(tok, *SPLIT, alignment="span").tokens
    assert tp.edit_end_b > tp.edit_pos
    pair = Pair(*SPLIT, "agreement", pair_id="split")
    cs = build_controls(cfg_for("nearest", 2), tok, emb, [(pair, tp)], [0])
    ta, tb = tp.ids_a[tp.edit_pos], tp.ids_b[tp.edit_pos]
    assert cs.rows[0]["dist_ab"] == pytest.approx(float(cos_dist(emb, ta, [tb])[0]), abs=1e-9)
    assert all(len(s) == len(tp.ids_a) for s in cs.ids[0])


def test_input_embedding_is_the_float32_input_embedding_on_the_cpu(tiny_lm, emb):
    w = tiny_lm.hf_model.get_input_embeddings().weight
    assert emb.dtype == torch.float32 and emb.device.type == "cpu" and emb.shape == tuple(w.shape)
    assert torch.equal(emb, w.detach().cpu().float())


# --- matched --------------------------------------------------------------------------------------

@pytest.mark.parametrize("bins", [5, 10])
def test_matched_draws_match_frequency_by_bin_and_distance_by_caliper(tiny_lm, emb, kept, bins):
    from interp.controls import CALIPER

    tok = tiny_lm.tokenizer
    cfg = cfg_for("matched", 3, f"analysis.controls.bins={bins}")
    cs = build_controls(cfg, tok, emb, kept, list(range(len(kept))))
    vocab = candidate_vocab(tok, emb.shape[0])
    for (p, tp), row in zip(kept, cs.rows):
        ta, tb = tp.ids_a[tp.edit_pos], tp.ids_b[tp.edit_pos]
        sb = tok.decode([tb])
        shape_b = (sb.startswith(" "), case(sb.strip()))
        out = {words_of(tok, ta), words_of(tok, tb)}
        cands = np.array([t for t, s in vocab if (s.startswith(" "), case(s.strip())) == shape_b
                          and s.strip().lower() not in out])
        assert len(cands) >= 2 * 3 * bins  # b's own shape class: no widening here
        f = -np.log1p(cands.astype(float))
        f_all = -np.log1p(np.array([t for t, _ in vocab], dtype=float))  # equal-width bins over every candidate
        fe = np.linspace(f_all.min(), f_all.max(), bins + 1)[1:-1]
        fb = np.searchsorted(fe, row["logfreq_b"], "right")
        cf = np.searchsorted(fe, f, "right")
        ring = 0
        while (np.abs(cf - fb) <= ring).sum() < CALIPER * 3:  # b's bin, widened until it holds 2 K
            ring += 1
        cell = cands[np.abs(cf - fb) <= ring]
        # the controls' frequencies lie within that many bins of b's
        assert (np.abs(np.searchsorted(fe, -np.log1p(np.array(row["control_ids"], dtype=float)), "right") - fb)
                <= ring).all()
        gap = np.abs(cos_dist(emb, ta, cell.tolist()) - row["dist_ab"])
        near = set(cell[np.lexsort((cell, gap))[:CALIPER * 3]].tolist())
        assert set(row["control_ids"]) <= near and len(set(row["control_ids"])) == 3
        # closer in distance than the typical candidate of the cell: the caliper did its job
        assert np.abs(np.array(row["dist_ac"]) - row["dist_ab"]).max() <= np.median(gap)
    assert cs.facts["bins"] == bins and 0 < cs.facts["share_own_freq_bin"] <= 1.0
    assert cs.facts["candidates"] == len(vocab) and cs.facts["median_caliper"] >= 0


def test_matched_draws_are_the_same_for_any_indices_and_change_with_the_seed(tiny_lm, emb, kept):
    tok = tiny_lm.tokenizer
    everything = build_controls(cfg_for("matched"), tok, emb, kept, list(range(len(kept))))
    by_id = {kept[i][0].pair_id: r["control_ids"] for i, r in enumerate(everything.rows)}
    for indices in ([5], list(range(len(kept)))[::-3], list(range(1, len(kept), 4))):
        part = build_controls(cfg_for("matched"), tok, emb, kept, indices)
        assert [r["control_ids"] for r in part.rows] == [by_id[kept[i][0].pair_id] for i in indices]
        for i, r in zip(indices, part.rows):  # the distances bit for bit: a shard's columns equal one pass's
            assert (r["dist_ab"], r["dist_ac"]) == (everything.rows[i]["dist_ab"], everything.rows[i]["dist_ac"])
    # the draw hangs on (seed, pair_id) only: the same pair in another run's list draws the same
    alone = build_controls(cfg_for("matched"), tok, emb, [kept[7]], [0])
    assert alone.rows[0]["control_ids"] == by_id[kept[7][0].pair_id]
    other = build_controls(cfg_for("matched", 3, "seed=1"), tok, emb, kept, list(range(len(kept))))
    assert [r["control_ids"] for r in other.rows] != list(by_id.values())


# --- nearest --------------------------------------------------------------------------------------

def test_nearest_are_the_k_nearest_by_cosine_with_b_and_case_variants_excluded(tiny_lm, emb, kept):
    tok = tiny_lm.tokenizer
    indices = list(range(0, len(kept), 3))
    cs = build_controls(cfg_for("nearest", 4), tok, emb, kept, indices)
    vocab = candidate_vocab(tok, emb.shape[0])
    for i, row in zip(indices, cs.rows):
        tp = kept[i][1]
        ta, tb = tp.ids_a[tp.edit_pos], tp.ids_b[tp.edit_pos]
        space = tok.decode([ta]).startswith(" ")
        out = {words_of(tok, ta), words_of(tok, tb)}
        cands = [t for t, s in vocab if s.startswith(" ") == space and s.strip().lower() not in out]
        d = cos_dist(emb, ta, cands)
        expect = [cands[j] for j in np.lexsort((np.array(cands), d))[:4]]
        assert row["control_ids"] == expect and tb not in expect
        assert row["dist_ac"] == sorted(row["dist_ac"])
    again = build_controls(cfg_for("nearest", 4, "seed=99"), tok, emb, kept, indices)
    assert [r["control_ids"] for r in again.rows] == [r["control_ids"] for r in cs.rows]  # deterministic


def test_too_few_candidates_is_a_one_line_config_error_naming_the_setting(tiny_lm, emb, kept):
    for pool in ("nearest", "matched"):
        with pytest.raises(ConfigError, match="analysis.controls.n") as err:
            build_controls(cfg_for(pool, 10 ** 6), tiny_lm.tokenizer, emb, kept, [0])
        assert "\n" not in str(err.value)


# --- grammatical ----------------------------------------------------------------------------------

def test_grammatical_puts_alt_at_the_edit_spelled_like_a(tiny_lm, emb, kept):
    tok = tiny_lm.tokenizer
    ok, problems = split_missing_alt(kept, tok)
    assert ok and problems
    cs = build_controls(cfg_for("grammatical", 3), tok, emb, ok, list(range(len(ok))))
    assert cs.k == 1
    for (p, tp), row in zip(ok, cs.rows):
        text_a = tok.decode([tp.ids_a[tp.edit_pos]])
        want = p.alt.capitalize() if text_a.strip()[0].isupper() else p.alt
        want = (" " if text_a.startswith(" ") else "") + want
        assert row["control_tokens"] == [want] and row["alt"] == p.alt
    # a sentence-initial article: "An owl ..." -> "The owl ..."
    p = Pair("An owl was sitting on the fence.", "A owl was sitting on the fence.", "article", pair_id="x", alt="the")
    one = build_controls(cfg_for("grammatical"), tok, emb, [(p, check_pair(tok, p.a, p.b).tokens)], [0])
    assert tok.decode(one.ids[0][0]) == "The owl was sitting on the fence."


def test_split_missing_alt_names_why_a_pair_cannot_have_a_grammatical_control(tiny_lm, emb):
    from tests.test_alignment import SPLIT

    tok = tiny_lm.tokenizer
    specs = [
        (Pair("She was happy.", "She were happy.", "be", pair_id="ok", alt="is", source="f", line=1), "strict"),
        (Pair("She is good at math.", "She is good in math.", "prep", pair_id="none", source="f", line=2), "strict"),
        (Pair("She was happy.", "She were happy.", "be", pair_id="long", alt="antidisestablishmentarianism",
              source="f", line=3), "strict"),
        (Pair("She was happy.", "She were happy.", "be", pair_id="same", alt="were", source="f", line=4), "strict"),
        # a's word is two tokens; then only b's
        (Pair(SPLIT[1], SPLIT[0], "agreement", pair_id="span", alt="ran", source="f", line=5), "span"),
        (Pair(*SPLIT, "agreement", pair_id="b_span", alt="ran", source="f", line=6), "span"),
    ]
    kept = [(p, check_pair(tok, p.a, p.b, alignment=al).tokens) for p, al in specs]
    ok, problems = split_missing_alt(kept, tok)
    assert [p.pair_id for p, _ in ok] == ["ok", "b_span"]
    assert [(pr.pair_id, pr.reason) for pr in problems] == [
        ("none", "no_alt"), ("long", "alt_not_one_token"), ("same", "alt_same_as_edit"), ("span", "alt_span_edit")]
    pr = problems[0]
    assert (pr.source, pr.line, pr.a, pr.b, pr.category) == ("f", 2, specs[1][0].a, specs[1][0].b, "prep")
    cs = build_controls(cfg_for("grammatical"), tok, emb, ok, [0])
    assert tok.decode(cs.ids[0][0]) == "She is happy."
    with pytest.raises(ValueError, match="split_missing_alt"):
        build_controls(cfg_for("grammatical"), tok, emb, kept, [0, 1])


# --- the bank rule --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bank_alts():
    spec = importlib.util.spec_from_file_location("bank_alts", REPO / "scripts" / "bank_alts.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.modules.pop(spec.name, None)
    return mod


def _bank_row(pair_id):
    cat = pair_id.rsplit("-", 1)[0]
    for line in (BANK_DIR / f"{cat}.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["pair_id"] == pair_id:
            return r
    raise KeyError(pair_id)


@pytest.mark.parametrize("pair_id,a,alt", [
    ("auxiliary-0001", "She has already eaten.", "had"),
    ("auxiliary-0003", "He is reading in the garden.", "was"),
    ("auxiliary-0004", "We were sleeping when the phone rang.", None),  # past pinned by "when ... rang"
    ("auxiliary-0012", "He doesn't eat meat.", "didn"),
    ("article-0001", "She ate an apple.", "the"),
    ("determiner_number-0001", "These books are old.", "the"),
    ("determiner_number-0005", "We don't have much time left.", "any"),
    ("pronoun_case-0001", "They saw him there.", "her"),
    ("pronoun_case-0002", "She works at the bank.", "he"),
    ("pronoun_case-0003", "My mother called me yesterday.", "him"),
    ("pronoun_case-0004", "We invited them to dinner.", None),  # "We invited us"
    ("subject_verb_agreement-0001", "The dogs run around the yard every morning.", "ran"),
    ("tense-0001", "Yesterday she walked home.", None),
    ("location-0001", "They met in Paris.", None),
])
def test_the_bank_rule_gives_the_expected_alt(bank_alts, pair_id, a, alt):
    row = _bank_row(pair_id)
    assert row["a"] == a
    assert bank_alts.alt_for(row) == alt
    assert row.get("alt") == alt  # the committed file carries it


def test_the_bank_files_are_what_the_rule_writes(bank_alts, tmp_path):
    for path in sorted(BANK_DIR.glob("*.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        assert [bank_alts.with_alt(r) for r in rows] == rows, path.name
        for r in rows:  # key order kept, alt last
            assert list(r)[:5] == ["pair_id", "a", "b", "category", "type"] and list(r)[5:] in ([], ["alt"])
    copy = tmp_path / "bank"
    copy.mkdir()
    for path in BANK_DIR.glob("*.jsonl"):
        stripped = [{k: v for k, v in json.loads(line).items() if k != "alt"} for line in path.read_text().splitlines()]
        (copy / path.name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in stripped))
    report = bank_alts.main(copy, verbose=False)
    for path in BANK_DIR.glob("*.jsonl"):
        assert (copy / path.name).read_bytes() == path.read_bytes(), path.name
    assert report["article"]["alt"] > 200 and report["tense"]["alt"] == 0 and report["subject"]["alt"] == 0
