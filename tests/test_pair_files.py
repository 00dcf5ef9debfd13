"""Reading pair files: CSV through the csv module (quoted newlines, huge fields, header), byte order
marks, duplicates."""

import json

import pytest
from omegaconf import OmegaConf

from interp.config import ConfigError
from interp.pairs import PairSet, load_pairs, mark_duplicates, select_pairs
from interp.pairs.files import MAX_FIELD_CHARS, check_pair_file, read_pair_file
from interp.pairs.records import Pair, PairFileError


def test_a_quoted_newline_stays_in_its_field_and_later_lines_are_numbered_right(tmp_path):
    c = tmp_path / "multi.csv"
    c.write_text('a,b,note\n'
                 'She is here.,She are here.,"two\nlines"\n'
                 '"One\nsentence.","One\nsentences."\n'
                 '\n'
                 'He runs.,He run.,x\n'
                 ',He run.,x\n', newline="")
    pairs, problems = read_pair_file(c)
    assert [(p.line, p.a) for p in pairs] == [(2, "She is here."), (4, "One\nsentence."), (8, "He runs.")]
    assert pairs[0].meta == {"note": "two\nlines"} and pairs[1].b == "One\nsentences."
    assert [(pr.line, pr.reason) for pr in problems] == [(9, "empty_sentence")]


def test_crlf_csv_with_quoted_newlines(tmp_path):
    c = tmp_path / "excel.csv"
    c.write_bytes(b'a,b\r\n"x\r\ny.",z.\r\nA.,B.\r\n')
    pairs, problems = read_pair_file(c)
    assert [(p.line, p.a, p.b) for p in pairs] == [(2, "x\r\ny.", "z."), (4, "A.", "B.")] and not problems


def test_a_huge_field_rejects_its_row_only(tmp_path):
    c = tmp_path / "big.csv"
    c.write_text('a,b\nA cat.,A dog.\n"' + "x" * 200_000 + '",short.\nHe runs.,He run.\n')
    pairs, problems = read_pair_file(c)
    assert [p.line for p in pairs] == [2, 4]
    assert [(pr.line, pr.reason) for pr in problems] == [(3, "field_too_large")]
    assert str(MAX_FIELD_CHARS) in problems[0].detail
    with pytest.raises(PairFileError, match=r"big\.csv:3: field_too_large"):
        read_pair_file(c, strict=True)
    import csv
    assert csv.field_size_limit() == 131072  # the csv module's limit is put back


def test_byte_order_marks_are_dropped(tmp_path):
    c = tmp_path / "excel.csv"
    c.write_bytes(b"\xef\xbb\xbfa,b\r\nA cat.,A dog.\r\nHe runs.,He run.\r\n")
    pairs, problems = read_pair_file(c)
    assert [(p.a, p.line) for p in pairs] == [("A cat.", 2), ("He runs.", 3)] and not problems
    assert not any(k.startswith("\ufeff") for p in pairs for k in p.meta)
    check_pair_file(c)
    j = tmp_path / "bom.jsonl"
    j.write_bytes(b"\xef\xbb\xbf" + (json.dumps({"a": "A.", "b": "B."}) + "\n"
                                     + json.dumps({"a": "C.", "b": "D."}) + "\n").encode())
    pairs, problems = read_pair_file(j)
    assert [p.a for p in pairs] == ["A.", "C."] and not problems


def test_a_csv_without_a_header_is_refused_in_one_line(tmp_path):
    c = tmp_path / "noheader.csv"
    c.write_text("She is here.,She are here.\nHe runs.,He run.\n")
    for call in (lambda: read_pair_file(c), lambda: check_pair_file(c)):
        with pytest.raises(ConfigError, match="needs a header row") as err:
            call()
        assert str(c) in str(err.value) and "\n" not in str(err.value)
    half = tmp_path / "half.csv"  # a header that names only one sentence column
    half.write_text("a,category\nx,y\n")
    with pytest.raises(ConfigError, match="header row"):
        check_pair_file(half)
    for fa, fb in (("good", "bad"), ("sentence_good", "sentence_bad")):
        ok = tmp_path / f"{fa}.csv"
        ok.write_text(f"{fa}, {fb}\nG.,B.\n")
        check_pair_file(ok)
        assert [(p.a, p.b) for p in read_pair_file(ok)[0]] == [("G.", "B.")]


def test_config_validate_refuses_the_headerless_csv_before_the_model(tmp_path):
    from interp.config import compose, validate

    c = tmp_path / "noheader.csv"
    c.write_text("She is here.,She are here.\n")
    cfg = compose(["pairs=file", f"pairs.path={c}"])
    with pytest.raises(ConfigError, match=r"pairs\.path=.*needs a header row"):
        validate(cfg)


def test_bad_bytes_and_an_unclosed_quote_are_problems_of_their_record(tmp_path):
    c = tmp_path / "broken.csv"
    c.write_bytes(b'a,b\nA.,B.\n"x\n\xff y",z\nC.,D.\n"never closed,E.\nF.,G.\n')
    pairs, problems = read_pair_file(c)
    assert [p.line for p in pairs] == [2, 5]
    assert [(pr.line, pr.reason) for pr in problems] == [(3, "not_utf8"), (6, "unclosed_quote")]
    assert "line 4" in problems[0].detail and "line 7" in problems[1].detail


def _pairs():
    return [Pair("A cat.", "A dog.", "x", source="f.csv", line=2),
            Pair(" A cat.", "A dog. ", "x", source="f.csv", line=3),
            Pair("A cat.", "A cow.", "x", source="f.csv", line=4),
            Pair("A cat.", "A dog.", "y", source="f.csv", line=5)]


def test_duplicates_are_counted_and_kept_by_default():
    ps = select_pairs(PairSet(_pairs()), OmegaConf.create({}))
    assert ps.duplicates == 2 and len(ps.pairs) == 4 and not ps.problems


def test_duplicates_dropped_are_reported_naming_the_first():
    ps = mark_duplicates(PairSet(_pairs()), "drop")
    assert ps.duplicates == 2 and [p.line for p in ps.pairs] == [2, 4]
    assert [(pr.line, pr.reason) for pr in ps.problems] == [(3, "duplicate"), (5, "duplicate")]
    assert "f.csv:2" in ps.problems[0].detail
    with pytest.raises(ConfigError, match="pairs.duplicates"):
        mark_duplicates(PairSet(_pairs()), "merge")


def test_duplicates_option_through_load_pairs(tmp_path):
    c = tmp_path / "dup.csv"
    c.write_text("a,b\nA cat.,A dog.\nHe runs.,He run.\nA cat. ,A dog.\n")
    base = {"source": "file", "path": str(c), "limit": None, "seed": 0}
    kept = load_pairs(OmegaConf.create(base))
    assert kept.duplicates == 1 and len(kept.pairs) == 2 + 1
    assert len({p.pair_id for p in kept.pairs}) == 3
    dropped = load_pairs(OmegaConf.create({**base, "duplicates": "drop"}))
    assert dropped.duplicates == 1 and [p.line for p in dropped.pairs] == [2, 3]
    assert [(pr.line, pr.reason) for pr in dropped.problems] == [(4, "duplicate")]
    # strict mode is about malformed lines: a duplicate dropped by choice does not raise
    strict = load_pairs(OmegaConf.create({**base, "duplicates": "drop", "strict": True}))
    assert strict.duplicates == 1
