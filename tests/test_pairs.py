import json

import pytest
from omegaconf import OmegaConf

from interp.pairs import PairFileError, load_pairs, select, validate_pairs
from interp.pairs.files import read_pair_file
from interp.pairs.records import Pair


def test_malformed_lines_are_reported_with_file_line_and_reason(tmp_path):
    p = tmp_path / "bad.jsonl"
    lines = [
        json.dumps({"a": "She is good at math.", "b": "She is good in math."}),
        "{not json",
        json.dumps({"a": "Only one side."}),
        json.dumps({"a": "", "b": "Empty other."}),
        json.dumps({"a": "Same.", "b": "Same."}),
        json.dumps({"a": "x" * 3000, "b": "y"}),
        json.dumps({"a": "A cat.", "b": "A dog.", "type": "nonsense"}),
        json.dumps(["a", "list"]),
    ]
    p.write_bytes(("\n".join(lines) + "\n").encode() + b"\xff\xfe broken bytes\n")
    pairs, problems = read_pair_file(p)
    assert len(pairs) == 1 and pairs[0].line == 1 and pairs[0].category == "bad"
    got = [(pr.line, pr.reason) for pr in problems]
    assert got == [(2, "bad_json"), (3, "missing_field"), (4, "empty_sentence"), (5, "identical_sentences"),
                   (6, "too_long"), (7, "bad_type"), (8, "not_an_object"), (9, "not_utf8")]
    assert str(problems[0]).startswith(f"{p}:2: bad_json")


def test_strict_mode_stops_at_the_first_malformed_line_naming_it(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps({"a": "A.", "b": "B."}) + "\n{oops\n")
    with pytest.raises(PairFileError, match=r"bad\.jsonl:2: bad_json"):
        read_pair_file(p, strict=True)


def test_alternative_field_names_and_csv_are_read(tmp_path):
    j = tmp_path / "blimpish.jsonl"
    j.write_text(json.dumps({"sentence_good": "Good one.", "sentence_bad": "Bad one.", "UID": "x", "pairID": "7"}) + "\n"
                 + json.dumps({"good": "G.", "bad": "B.", "category": "cat"}) + "\n")
    pairs, problems = read_pair_file(j)
    assert [(p.a, p.b, p.category) for p in pairs] == [("Good one.", "Bad one.", "blimpish"), ("G.", "B.", "cat")]
    assert pairs[0].meta["UID"] == "x" and not problems
    c = tmp_path / "p.csv"
    c.write_text('a,b,category,type\n"She is here, now.",He is here now.,subject,semantic\n,,x,grammar\n')
    pairs, problems = read_pair_file(c)
    assert pairs[0].a == "She is here, now." and pairs[0].type == "semantic" and pairs[0].line == 2
    assert problems[0].line == 3 and problems[0].reason == "empty_sentence"


def test_limit_keeps_a_reproducible_sample_per_category():
    pairs = [Pair(f"a{i}", f"b{i}", "x" if i % 2 else "y", pair_id=str(i)) for i in range(40)]
    s1 = select(pairs, limit=5, seed=1)
    s2 = select(pairs, limit=5, seed=1)
    s3 = select(pairs, limit=5, seed=2)
    assert [p.pair_id for p in s1] == [p.pair_id for p in s2]
    assert [p.pair_id for p in s1] != [p.pair_id for p in s3]
    assert sum(p.category == "x" for p in s1) == 5 and sum(p.category == "y" for p in s1) == 5


def test_unknown_category_is_an_error_that_lists_the_present_ones():
    pairs = [Pair("a", "b", "tense")]
    with pytest.raises(ValueError, match="present: \\['tense'\\]"):
        select(pairs, categories=["article"])


def test_validation_keeps_one_token_edits_and_says_why_others_are_rejected(tiny_lm):
    tok = tiny_lm.tokenizer
    pairs = [Pair("She is good at math.", "She is good in math.", "p"),
             Pair("She walked home.", "She has walked home.", "t"),
             Pair("The cat sat here.", "A dog sat there.", "s")]
    kept, rejected = validate_pairs(pairs, tok)
    assert len(kept) == 1
    tp = kept[0][1]
    assert tp.token_a.strip() == "at" and tp.token_b.strip() == "in"
    assert tp.ids_a[:tp.edit_pos] == tp.ids_b[:tp.edit_pos]
    assert [r.reason for r in rejected] == ["length_mismatch", "multi_token_edit"]


def test_file_source_requires_a_path():
    cfg = OmegaConf.create({"source": "file", "path": None})
    with pytest.raises(ValueError, match="pairs.path"):
        load_pairs(cfg)
