"""BLiMP paradigms: loading and selecting, validation under SmolLM2, the report, an end-to-end run."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from omegaconf import OmegaConf

import interp
from interp import rundir as R
from interp.pairs import load_pairs, validate_pairs
from interp.pairs import blimp as B
from tests.conftest import CONF, REPO, make_cfg

BLIMP = REPO.parent / "shared" / "data" / "blimp"
SUMMARY = BLIMP / "models_summary.jsonl"
needs_blimp = pytest.mark.skipif(not BLIMP.is_dir(), reason=f"BLiMP data not found at {BLIMP}")
CHECK_PAIR_REASONS = {"empty", "too_long", "length_mismatch", "identical_tokens", "multi_token_edit"}


def blimp_pcfg(*overrides: str):
    return make_cfg("pairs=blimp", *overrides).pairs


def test_the_default_folder_is_shared_data_blimp_beside_the_repository():
    assert B.default_blimp_dir() == REPO.parent / "shared" / "data" / "blimp"


@needs_blimp
def test_two_named_paradigms_with_limit_20_give_20_pairs_each_with_category_type_and_meta():
    pcfg = blimp_pcfg("pairs.paradigms=[determiner_noun_agreement_1,transitive]", "pairs.limit=20")
    ps = load_pairs(pcfg)
    by_cat = pd.Series([p.category for p in ps.pairs]).value_counts().to_dict()
    assert by_cat == {"determiner_noun_agreement_1": 20, "transitive": 20}
    assert ps.problems == []
    assert {p.type for p in ps.pairs} == {"grammar"}
    for p in ps.pairs:
        assert p.pair_id == f"{p.category}-{p.meta['pairID']}"
        assert p.meta["UID"] == p.category
        assert p.source == str(BLIMP / f"{p.category}.jsonl")
    dna = [p for p in ps.pairs if p.category == "determiner_noun_agreement_1"]
    assert {(p.meta["field"], p.meta["linguistics_term"]) for p in dna} == {("morphology", "determiner_noun_agreement")}
    tr = [p for p in ps.pairs if p.category == "transitive"]
    assert {(p.meta["field"], p.meta["linguistics_term"]) for p in tr} == {("syntax", "argument_structure")}
    # a is sentence_good: check one pair against its line in the file
    p = dna[0]
    rec = json.loads((BLIMP / "determiner_noun_agreement_1.jsonl").read_text().splitlines()[p.line - 1])
    assert (p.a, p.b, str(rec["pairID"])) == (rec["sentence_good"], rec["sentence_bad"], p.meta["pairID"])
    again = load_pairs(pcfg)
    assert [(q.pair_id, q.a, q.b) for q in again.pairs] == [(q.pair_id, q.a, q.b) for q in ps.pairs]


@needs_blimp
def test_without_paradigms_every_file_but_models_summary_is_a_paradigm():
    uids = B.available_paradigms(BLIMP)
    assert len(uids) == 57 and "models_summary" not in uids
    ps = load_pairs(blimp_pcfg("pairs.limit=1"))
    assert sorted({p.category for p in ps.pairs}) == uids and len(ps.pairs) == 57


@needs_blimp
def test_identical_sentence_lines_of_the_release_are_problems_tagged_with_paradigm_and_pair_id():
    ps = load_pairs(blimp_pcfg("pairs.paradigms=[passive_1]"))
    assert len(ps.pairs) == 998
    assert [(pr.reason, pr.category, pr.pair_id, pr.line) for pr in ps.problems] == [
        ("identical_sentences", "passive_1", "passive_1-324", 325),
        ("identical_sentences", "passive_1", "passive_1-810", 811)]


@needs_blimp
def test_an_unknown_paradigm_is_an_error_that_lists_the_known_ones():
    with pytest.raises(ValueError, match="no_such_paradigm") as err:
        load_pairs(blimp_pcfg("pairs.paradigms=[transitive,no_such_paradigm]"))
    assert "determiner_noun_agreement_1" in str(err.value) and "wh_island" in str(err.value)


def test_a_missing_folder_is_an_error_naming_the_path_and_pairs_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="pairs.path=DIR") as err:
        load_pairs(blimp_pcfg(f"pairs.path={missing}"))
    assert str(missing) in str(err.value)


def test_a_missing_default_folder_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setattr(B, "default_blimp_dir", lambda: tmp_path / "shared" / "data" / "blimp")
    with pytest.raises(FileNotFoundError, match=r"\.\./shared/data/blimp") as err:
        load_pairs(blimp_pcfg())
    assert str(tmp_path / "shared" / "data" / "blimp") in str(err.value)


def test_a_folder_without_paradigm_files_is_an_error(tmp_path):
    (tmp_path / "models_summary.jsonl").write_text("")
    with pytest.raises(FileNotFoundError, match="no paradigm files"):
        load_pairs(blimp_pcfg(f"pairs.path={tmp_path}"))


def test_an_unknown_alignment_is_refused_with_the_modes_listed():
    from interp.pairs import validate_pairs
    from interp.pairs.records import Pair

    with pytest.raises(ValueError, match="pairs.alignment='loose' is not one of"):
        validate_pairs([Pair("A cat.", "A dog.", "x")], None, alignment="loose")


def test_a_small_folder_of_paradigm_files_is_read_with_pairs_path(tmp_path):
    rows = [{"sentence_good": f"The cat{i} sleeps.", "sentence_bad": f"The cat{i} sleep.", "field": "morphology",
             "linguistics_term": "subject_verb_agreement", "UID": "toy", "pairID": str(i)} for i in range(3)]
    (tmp_path / "toy.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ps = load_pairs(blimp_pcfg(f"pairs.path={tmp_path}"))
    assert [(p.pair_id, p.category, p.a) for p in ps.pairs] == [(f"toy-{i}", "toy", f"The cat{i} sleeps.") for i in range(3)]


@pytest.fixture(scope="module")
def smol_tokenizer():
    from interp.model import load_tokenizer

    return load_tokenizer(OmegaConf.load(CONF / "model" / "smollm2_135m.yaml"))


@needs_blimp
def test_under_smollm2_kept_plus_rejected_is_loaded_and_reasons_are_check_pair_codes(smol_tokenizer):
    ps = load_pairs(blimp_pcfg("pairs.paradigms=[determiner_noun_agreement_1,transitive]", "pairs.limit=50"))
    kept, rejected = validate_pairs(ps.pairs, smol_tokenizer)
    assert len(ps.pairs) == 100
    for uid in ("determiner_noun_agreement_1", "transitive"):
        k = sum(p.category == uid for p, _ in kept)
        r = sum(x.category == uid for x in rejected)
        assert k + r == 50
    assert {x.reason for x in rejected} <= CHECK_PAIR_REASONS
    assert all(x.pair_id.startswith(x.category + "-") for x in rejected)
    # agreement pairs are mostly one-token edits; transitive ones mostly not (the verb splits differently)
    assert sum(p.category == "determiner_noun_agreement_1" for p, _ in kept) >= 40
    assert sum(p.category == "transitive" for p, _ in kept) < 35
    for p, tp in kept:
        assert tp.ids_a[tp.edit_pos] != tp.ids_b[tp.edit_pos] and len(tp.ids_a) == len(tp.ids_b)


def _row(uid, margin):
    return {"pair_id": f"{uid}-{margin}", "category": uid, "type": "grammar", "margin": margin}


@pytest.fixture
def synthetic():
    pairs_df = pd.DataFrame([_row("determiner_noun_agreement_1", m) for m in (1.0, -1.0, 2.0)]
                            + [_row("transitive", m) for m in (0.5, -0.1)])
    rejected = ([{"category": "transitive", "reason": "length_mismatch"}] * 2
                + [{"category": "transitive", "reason": "multi_token_edit"}]
                + [{"category": "ellipsis_n_bar_1", "reason": "multi_token_edit"}] * 2
                + [{"category": None, "source": str(BLIMP / "determiner_noun_agreement_1.jsonl"),
                    "reason": "identical_sentences"}])
    return pairs_df, rejected


@needs_blimp
def test_the_report_counts_rejections_and_accuracy_per_paradigm_next_to_published_gpt2(synthetic):
    tables = B.blimp_report(*synthetic, SUMMARY)
    par = tables["blimp_paradigms"].set_index("UID")
    assert list(par.index) == ["determiner_noun_agreement_1", "ellipsis_n_bar_1", "transitive"]
    cols = ["n_total", "n_kept", "n_rejected", "rejected_identical_sentences", "rejected_length_mismatch",
            "rejected_multi_token_edit", "n_correct"]
    assert par.loc["determiner_noun_agreement_1", cols].tolist() == [4, 3, 1, 1, 0, 0, 2]
    assert par.loc["transitive", cols].tolist() == [5, 2, 3, 0, 2, 1, 1]
    assert par.loc["ellipsis_n_bar_1", cols].tolist() == [2, 0, 2, 0, 0, 2, 0]
    assert par.loc["determiner_noun_agreement_1", "accuracy"] == pytest.approx(2 / 3)
    assert par.loc["transitive", "accuracy"] == pytest.approx(0.5)
    assert math.isnan(par.loc["ellipsis_n_bar_1", "accuracy"])
    assert par["gpt2"].to_dict() == {"determiner_noun_agreement_1": 0.988, "ellipsis_n_bar_1": 0.915,
                                     "transitive": 0.86}
    assert par.loc["transitive", ["lstm", "txl", "ngram"]].tolist() == [0.647, 0.758, 0.708]
    assert par.loc["transitive", ["field", "linguistics_term"]].tolist() == ["syntax", "argument_structure"]
    assert par.loc["determiner_noun_agreement_1", "field"] == "morphology"
    assert set(par["accuracy_scope"]) == {"one-token-edit subset"}


@needs_blimp
def test_the_report_aggregates_phenomena_with_the_published_phenomenon_rows_and_an_overall_row(synthetic):
    phen = B.blimp_report(*synthetic, SUMMARY)["blimp_phenomena"].set_index("linguistics_term")
    assert list(phen.index) == ["argument_structure", "determiner_noun_agreement", "ellipsis", "overall"]
    assert phen.loc["argument_structure", ["n_total", "n_kept", "n_correct"]].tolist() == [5, 2, 1]
    assert phen.loc["overall", ["n_paradigms", "n_total", "n_kept", "n_rejected", "n_correct"]].tolist() == [3, 11, 5, 6, 3]
    assert phen.loc["overall", "rejected_multi_token_edit"] == 3
    assert phen.loc["overall", "accuracy"] == pytest.approx(3 / 5)  # pooled over kept pairs
    assert phen.loc["overall", "accuracy_macro"] == pytest.approx((2 / 3 + 1 / 2) / 2)  # mean of paradigms
    assert phen["gpt2"].to_dict() == pytest.approx({"argument_structure": 0.8177777778,
                                                    "determiner_noun_agreement": 0.95825, "ellipsis": 0.8935,
                                                    "overall": 0.830238806})
    assert set(phen["published_source"]) == {"models_summary"}
    assert phen.loc["overall", "human"] == 0.886 and phen["human"].drop("overall").isna().all()
    assert phen.loc["determiner_noun_agreement", "gpt2_run_paradigms"] == 0.988  # only its paradigm in the run


@needs_blimp
def test_without_phenomenon_rows_the_published_number_is_the_mean_of_the_paradigm_rows(synthetic, tmp_path):
    rows = [json.loads(line) for line in SUMMARY.read_text().splitlines()]
    par_rows = [r for r in rows if r["UID"] != "overall"]
    path = tmp_path / "models_summary.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in par_rows))
    phen = B.blimp_report(*synthetic, path, info={})["blimp_phenomena"].set_index("linguistics_term")
    assert set(phen["published_source"]) == {"mean_of_paradigms"}
    arg = [r["gpt2"] for r in par_rows if r["linguistics_term"] == "argument_structure"]
    assert len(arg) == 9 and phen.loc["argument_structure", "gpt2"] == pytest.approx(sum(arg) / 9)
    assert phen.loc["overall", "gpt2"] == pytest.approx(sum(r["gpt2"] for r in par_rows) / 67)
    # no paradigm files beside this summary: the phenomenon comes from the summary's paradigm rows
    assert phen.loc["ellipsis", "n_total"] == 2


@needs_blimp
def test_a_tiny_run_on_two_paradigms_writes_the_blimp_tables_manifest_note_and_summary(tmp_path, capsys):
    from interp.run import run

    cfg = make_cfg("model=tiny", "device=cpu", "pairs=blimp",
                   "pairs.paradigms=[determiner_noun_agreement_1,anaphor_gender_agreement]", "pairs.limit=10",
                   "analysis.figures=false")
    out = run(cfg, tmp_path / "run")
    par = pd.read_parquet(out / "blimp_paradigms.parquet").set_index("UID")
    phen = pd.read_parquet(out / "blimp_phenomena.parquet").set_index("linguistics_term")
    assert sorted(par.index) == ["anaphor_gender_agreement", "determiner_noun_agreement_1"]
    assert (par["n_total"] == 10).all() and (par["n_kept"] + par["n_rejected"] == 10).all()
    assert par.loc["anaphor_gender_agreement", "gpt2"] == 0.994
    pairs = pd.read_parquet(out / "pairs.parquet")
    assert par["n_kept"].sum() == len(pairs)
    acc = pairs.groupby("category")["margin"].apply(lambda m: (m > 0).mean())
    assert par.loc[acc.index, "accuracy"].tolist() == pytest.approx(acc.tolist())
    assert list(phen.index) == ["anaphor_agreement", "determiner_noun_agreement", "overall"]
    assert phen.loc["overall", "n_total"] == 20 and phen.loc["overall", "human"] == 0.886
    m = R.read_manifest(out)
    assert m["notes"]["blimp"]["tables"] == ["blimp_paradigms.parquet", "blimp_phenomena.parquet"]
    assert "one-token-edit" in m["notes"]["blimp"]["accuracy_scope"]
    printed = interp.load_run(out).summary()  # what the command prints
    assert "BLiMP error detection" in printed and "98.8%" in printed and "human 88.6%" in printed

