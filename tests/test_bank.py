"""The built-in pair bank (interp/pairs/bank/*.jsonl) and the script that builds it."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

from interp.pairs.files import read_pair_file
from interp.pairs.validate import check_pair

REPO = Path(__file__).resolve().parents[1]
BANK = REPO / "interp" / "pairs" / "bank"
SCRIPT = REPO / "scripts" / "build_bank.py"

EXPECTED = {
    "subject": "semantic", "location": "semantic", "adjective": "semantic",
    "verb": "semantic", "number": "semantic",
    "tense": "grammar", "article": "grammar", "preposition": "grammar",
    "subject_verb_agreement": "grammar", "determiner_number": "grammar",
    "pronoun_case": "grammar", "auxiliary": "grammar",
}
FIELDS = ["pair_id", "a", "b", "category", "type"]
MIN_PAIRS = 100


@pytest.fixture(scope="module")
def tok():
    from omegaconf import OmegaConf

    from interp.model import load_tokenizer

    return load_tokenizer(OmegaConf.load(REPO / "conf" / "model" / "smollm2_135m.yaml"))


@pytest.fixture(scope="module")
def bank() -> dict[str, list[dict]]:
    files = sorted(BANK.glob("*.jsonl"))
    assert files, f"no bank files in {BANK}"
    return {p.stem: [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines()]
            for p in files}


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory, tok):
    """Run the build script's ``main`` into a fresh folder: (folder, per-category report)."""
    spec = importlib.util.spec_from_file_location("build_bank", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
    try:
        spec.loader.exec_module(mod)
        out = tmp_path_factory.mktemp("bank")
        reports = mod.main(out, tokenizer=tok, verbose=False)
    finally:
        sys.modules.pop(spec.name, None)
    return out, reports


def test_every_expected_category_has_a_file_with_at_least_100_pairs(bank):
    missing = sorted(set(EXPECTED) - set(bank))
    assert not missing, f"missing bank files: {missing}"
    small = {c: len(rows) for c, rows in bank.items() if len(rows) < MIN_PAIRS}
    assert not small, f"categories with fewer than {MIN_PAIRS} pairs: {small}"


def test_every_line_has_exactly_the_documented_fields(bank):
    for cat, rows in bank.items():
        for r in rows:
            assert list(r) in (FIELDS, FIELDS + ["alt"]), f"{cat}: {r}"  # alt: scripts/bank_alts.py
            assert all(isinstance(r[k], str) and r[k] for k in list(r)), f"{cat}: {r}"


def test_every_bank_pair_is_a_one_token_edit_under_smollm2(bank, tok):
    bad = []
    for cat, rows in bank.items():
        for r in rows:
            v = check_pair(tok, r["a"], r["b"])
            if not v.ok:
                bad.append(f"{r['pair_id']}: {v.reason} ({v.detail})")
    assert not bad, f"{len(bad)} pairs are not one-token edits:\n" + "\n".join(bad[:20])


def test_pair_ids_are_unique_and_named_after_their_category(bank):
    ids = [r["pair_id"] for rows in bank.values() for r in rows]
    assert len(ids) == len(set(ids)), "duplicate pair_id in the bank"
    for cat, rows in bank.items():
        for r in rows:
            assert re.fullmatch(rf"{re.escape(cat)}-\d{{4}}", r["pair_id"]), r["pair_id"]


def test_each_file_has_one_type_and_every_row_names_the_file_category(bank):
    for cat, rows in bank.items():
        types = {r["type"] for r in rows}
        assert len(types) == 1 and types <= {"grammar", "semantic"}, f"{cat}: types {types}"
        if cat in EXPECTED:
            assert types == {EXPECTED[cat]}, f"{cat} should be {EXPECTED[cat]}, is {types}"
        assert {r["category"] for r in rows} == {cat}, f"{cat}: a row names another category"


def test_no_category_repeats_a_pair(bank):
    for cat, rows in bank.items():
        pairs = [(r["a"], r["b"]) for r in rows]
        assert len(pairs) == len(set(pairs)), f"{cat}: duplicate (a, b)"
        if rows[0]["type"] == "semantic":  # (a, b) and (b, a) are the same meaning change
            unordered = {tuple(sorted(p)) for p in pairs}
            assert len(unordered) == len(pairs), f"{cat}: a pair appears in both directions"


def test_sentences_are_short_and_end_with_a_period(bank):
    for cat, rows in bank.items():
        for r in rows:
            for s in (r["a"], r["b"]):
                assert s.endswith("."), f"{r['pair_id']}: {s!r}"
                assert 4 <= len(s.split()) <= 15, f"{r['pair_id']}: {s!r}"
                assert s[0].isupper(), f"{r['pair_id']}: {s!r}"


def test_the_package_reader_takes_every_bank_line_without_a_problem():
    for path in sorted(BANK.glob("*.jsonl")):
        pairs, problems = read_pair_file(path, strict=True)
        assert pairs and not problems, f"{path.name}: {problems[:3]}"


def test_the_build_script_regenerates_byte_identical_files(rebuilt):
    out, _ = rebuilt
    built = sorted(p.name for p in out.glob("*.jsonl"))
    assert built == sorted(f"{c}.jsonl" for c in EXPECTED)
    stale = [n for n in built if (out / n).read_bytes() != (BANK / n).read_bytes()]
    assert not stale, f"bank files out of date, rerun scripts/build_bank.py: {stale}"


def test_the_build_script_keeps_at_least_20_hand_written_pairs_per_seed_category(rebuilt):
    _, reports = rebuilt
    for cat in ["subject", "location", "adjective", "tense", "article", "preposition"]:
        assert reports[cat]["hand_kept"] >= 20, f"{cat}: {reports[cat]['hand_kept']} hand-written kept"
