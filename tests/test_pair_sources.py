"""pairs=hf (a Hugging Face ``datasets`` dataset; local copies only, never the hub) and CausalGym
records: the same pairs and numbers as the same rows in a JSONL file, a column mapping, the errors
refused before any model loads, CausalGym's base/src turned into minimal pairs or rejected."""

from __future__ import annotations

import json
import sys
import time

import pandas as pd
import pytest

from interp.config import ConfigError
from interp.pairs import load_pairs
from tests.conftest import REPO, make_cfg, run_command, tokenizer_overrides

datasets = pytest.importorskip("datasets")
pytestmark = pytest.mark.usefixtures("one_thread")

BLIMP = REPO.parent / "shared" / "data" / "blimp"
PARADIGMS = ("determiner_noun_agreement_1", "anaphor_gender_agreement")
N_ROWS = 12  # rows of each paradigm: enough to compare, seconds on the tiny model
needs_blimp = pytest.mark.skipif(not all((BLIMP / f"{p}.jsonl").is_file() for p in PARADIGMS),
                                 reason="BLiMP paradigm files not found in ../shared/data/blimp")
RUN = ["model=tiny", "device=cpu", "dtype=float32", "analysis.figures=false", "progress=false"]


def _kept(pairs):
    return [(p.a, p.b, p.category, p.type, p.meta) for p in pairs]


def _problems(problems):
    return [(pr.line, pr.reason) for pr in problems]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def tiny():
    from interp.run import get_model

    return get_model(make_cfg(*RUN[:3], *tokenizer_overrides()))


# ------------------------------------------------------------------ BLiMP rows: hf copies == a JSONL file


@pytest.fixture(scope="module")
def blimp(tmp_path_factory):
    """Two real BLiMP paradigms (first rows, read at test time) as: the raw rows; a JSONL of the same
    rows with category = UID (what pairs=file reads); Dataset.save_to_disk; a DatasetDict with the
    rows as its test split; the raw JSONL read by load_dataset("json") and saved; the raw JSONL file."""
    if not all((BLIMP / f"{p}.jsonl").is_file() for p in PARADIGMS):
        pytest.skip("BLiMP paradigm files not found in ../shared/data/blimp")
    folder = tmp_path_factory.mktemp("blimp_hf")
    rows = []
    for uid in PARADIGMS:
        with open(BLIMP / f"{uid}.jsonl") as f:
            rows += [json.loads(next(f)) for _ in range(N_ROWS)]
    out = {"rows": rows, "ref": _write_jsonl(folder / "ref.jsonl", [{**r, "category": r["UID"]} for r in rows])}
    raw = _write_jsonl(folder / "raw.jsonl", rows)
    ds = datasets.Dataset.from_list(rows)
    ds.save_to_disk(str(folder / "saved"))
    datasets.DatasetDict(train=ds.select(range(2)), test=ds).save_to_disk(str(folder / "dict"))
    datasets.load_dataset("json", data_files=str(raw)).save_to_disk(str(folder / "from_json"))
    out["copies"] = {"saved": [f"pairs.dataset={folder / 'saved'}"],
                     "dict_test": [f"pairs.dataset={folder / 'dict'}", "pairs.split=test"],
                     "from_json": [f"pairs.dataset={folder / 'from_json'}"],
                     "jsonl_file": [f"pairs.dataset={raw}"]}
    paradigm_dir = folder / "paradigms"  # the same rows as pairs=blimp reads them
    paradigm_dir.mkdir()
    for uid in PARADIGMS:
        _write_jsonl(paradigm_dir / f"{uid}.jsonl", [r for r in rows if r["UID"] == uid])
    out["paradigms"] = paradigm_dir
    return out


@needs_blimp
def test_every_local_copy_gives_the_pairs_of_the_jsonl_file_and_of_pairs_blimp(blimp):
    ref = load_pairs(make_cfg("pairs=file", f"pairs.path={blimp['ref']}").pairs)
    assert len(ref.pairs) == 2 * N_ROWS and {p.category for p in ref.pairs} == set(PARADIGMS)
    via_blimp = load_pairs(make_cfg("pairs=blimp", f"pairs.path={blimp['paradigms']}").pairs)
    for name, overrides in blimp["copies"].items():
        ps = load_pairs(make_cfg("pairs=hf", *overrides).pairs)
        assert _kept(ps.pairs) == _kept(ref.pairs), name
        assert _problems(ps.problems) == _problems(ref.problems), name
        assert [p.line for p in ps.pairs] == [p.line for p in ref.pairs], name  # the row number
        # UID is the category, the paradigm's other fields (UID, field, linguistics_term, pairID...)
        # are meta, and the pair ids are pairs=blimp's (which reads the paradigms in name order)
        assert sorted((p.pair_id, p.category, p.a, p.meta["pairID"]) for p in ps.pairs) == \
            sorted((p.pair_id, p.category, p.a, p.meta["pairID"]) for p in via_blimp.pairs), name
        assert {p.pair_id: p.meta for p in ps.pairs} == {p.pair_id: p.meta for p in via_blimp.pairs}, name
        where = overrides[0].split("=", 1)[1]  # a single saved Dataset has no split
        assert ps.pairs[0].source == {"saved": where, "dict_test": f"{where}:test"}.get(name, f"{where}:train")
    assert ps.pairs[0].meta["linguistics_term"] and "pairID" in ps.pairs[0].meta


@needs_blimp
def test_analyze_and_the_command_give_the_jsonl_files_pairs_and_log_probs(blimp, tiny, tmp_path):
    import interp
    from interp.run import main

    cols = ["a", "b", "category", "type", "line", "edit_pos", "token_a", "token_b", "logprob_a", "logprob_b",
            "margin"]
    meta = sorted(c for c in pd.read_json(blimp["ref"], lines=True).columns
                  if c not in ("sentence_good", "sentence_bad", "category"))
    cols += [f"meta_{c}" for c in meta]
    ref = interp.analyze(tiny, blimp["ref"], figures=False).pairs
    assert len(ref) >= N_ROWS and ref["margin"].notna().all()
    saved = blimp["copies"]["saved"][0].split("=", 1)[1]
    got = interp.analyze(tiny, datasets.load_from_disk(saved), figures=False).pairs
    pd.testing.assert_frame_equal(got[cols], ref[cols])
    assert got["pair_id"].str.startswith(PARADIGMS).all()

    runs = {}
    for name, pairs in (("file", ["pairs=file", f"pairs.path={blimp['ref']}"]),
                        ("hf", ["pairs=hf", *blimp["copies"]["saved"]])):
        main([*RUN, *pairs, *tokenizer_overrides(), f"hydra.run.dir={tmp_path / name}"])
        runs[name] = pd.read_parquet(tmp_path / name / "pairs.parquet")
    pd.testing.assert_frame_equal(runs["hf"][cols], runs["file"][cols])
    pd.testing.assert_frame_equal(runs["hf"][cols], ref[cols], check_dtype=False)
    manifest = json.loads((tmp_path / "hf" / "manifest.json").read_text())
    assert manifest["config"]["pairs"]["source"] == "hf" and manifest["config"]["pairs"]["dataset"] == saved


# ------------------------------------------------------------------ a column mapping


def test_a_custom_column_mapping(tmp_path):
    rows = [{"premise": "She is good at math.", "hypothesis": "She is good in math.", "phenomenon": "preposition",
             "kind": "grammar", "fix": "on", "idx": 7, "note": "first"},
            {"premise": "The soup was hot.", "hypothesis": "The soup was cold.", "phenomenon": "adjective",
             "kind": "semantic", "fix": None, "idx": 8, "note": "second"},
            {"premise": "A cat.", "hypothesis": None, "phenomenon": "x", "kind": "grammar", "fix": None, "idx": 9,
             "note": "no b"}]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    mapping = ["pairs.columns.a=premise", "pairs.columns.b=hypothesis", "pairs.columns.category=phenomenon",
               "pairs.columns.type=kind", "pairs.columns.alt=fix", "pairs.columns.pair_id=idx"]
    ps = load_pairs(make_cfg("pairs=hf", f"pairs.dataset={tmp_path / 'ds'}", *mapping).pairs)
    got = [(p.pair_id, p.a, p.b, p.category, p.type, p.alt, p.line) for p in ps.pairs]
    assert got == [("7", "She is good at math.", "She is good in math.", "preposition", "grammar", "on", 1),
                   ("8", "The soup was hot.", "The soup was cold.", "adjective", "semantic", None, 2)]
    # the sentence columns are the sentences; the other columns, mapped ones too, stay meta
    assert ps.pairs[0].meta == {"phenomenon": "preposition", "kind": "grammar", "fix": "on", "idx": 7,
                                "note": "first"}
    assert [(pr.line, pr.reason, pr.category) for pr in ps.problems] == [(3, "missing_field", "x")]
    # the mapping as one dict override; the sentences alone (category: the dataset's name)
    ps = load_pairs(make_cfg("pairs=hf", f"pairs.dataset={tmp_path / 'ds'}",
                             "pairs.columns={a: premise, b: hypothesis}").pairs)
    assert [(p.a, p.category, p.type) for p in ps.pairs] == [("She is good at math.", "ds", "grammar"),
                                                            ("The soup was hot.", "ds", "grammar")]


# ------------------------------------------------------------------ bad input: one line, exit 2, no model


def _bad_cases(tmp_path):
    datasets.DatasetDict(train=datasets.Dataset.from_list([{"a": "A cat.", "b": "A cats."}]),
                         test=datasets.Dataset.from_list([{"a": "A dog.", "b": "A dogs."}])
                         ).save_to_disk(str(tmp_path / "dict"))
    datasets.Dataset.from_list([{"text": "A cat.", "label": 1}]).save_to_disk(str(tmp_path / "plain"))
    return {
        "no_datasets": ([f"pairs.dataset={tmp_path / 'dict'}"], "pairs=hf needs the datasets package: "
                        "pip install interp[hf]"),
        "missing_path": ([f"pairs.dataset={tmp_path / 'missing'}"],
                         f"pairs.dataset={tmp_path / 'missing'}: no such file or folder"),
        "missing_split": ([f"pairs.dataset={tmp_path / 'dict'}", "pairs.split=validation"],
                          f"pairs.split=validation: no such split in {tmp_path / 'dict'}; its splits are train, test"),
        "missing_column": ([f"pairs.dataset={tmp_path / 'dict'}", "pairs.columns.a=premise", "pairs.columns.b=b"],
                           f"pairs.columns.a=premise: no such column in {tmp_path / 'dict'}:train; "
                           "its columns are [a, b]"),
        "no_sentence_columns": ([f"pairs.dataset={tmp_path / 'plain'}"],
                                "no sentence columns (a/b, good/bad, sentence_good/sentence_bad or base/src); "
                                "name them with pairs.columns.a=COLUMN pairs.columns.b=COLUMN; "
                                "its columns are [text, label]"),
    }


def test_each_bad_input_is_refused_in_one_line_with_exit_code_2_before_the_model_loads(tmp_path, monkeypatch,
                                                                                         capsys):
    import interp.run
    from interp.config import validate
    from interp.run import main

    def no_model(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(interp.run, "get_model", no_model)
    cases = _bad_cases(tmp_path)
    capsys.readouterr()  # save_to_disk's progress bars
    for case, (overrides, message) in cases.items():
        with monkeypatch.context() as m:
            if case == "no_datasets":
                m.setitem(sys.modules, "datasets", None)  # import datasets fails as where it is not installed
            with pytest.raises(ConfigError) as err:
                validate(make_cfg("model=tiny", "pairs=hf", *overrides))
            assert message in str(err.value) and "\n" not in str(err.value), (case, str(err.value))
            run_dir = tmp_path / f"run_{case}"
            with pytest.raises(SystemExit) as exit_:
                main(["model=tiny", "pairs=hf", *overrides, f"hydra.run.dir={run_dir}"])
        assert exit_.value.code == 2, case
        err_lines = capsys.readouterr().err.strip().splitlines()
        assert len(err_lines) == 1 and err_lines[0].startswith("interp.run: error: ") and message in err_lines[0], \
            (case, err_lines)
        assert not run_dir.exists(), case


def test_the_command_refuses_a_missing_split_before_any_model_loads(tmp_path):
    overrides, message = _bad_cases(tmp_path)["missing_split"]
    env = {"INTERP_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    t0 = time.time()
    p = run_command(["model=tiny", "pairs=hf", *overrides, f"hydra.run.dir={tmp_path / 'run'}", *tokenizer_overrides()],
                    env, timeout=120)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().splitlines() == [f"interp.run: error: {message}"]
    assert not p.stdout.strip() and not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()
    assert time.time() - t0 < 30


def test_a_local_copy_is_opened_once_for_the_check_and_the_reader(tmp_path, monkeypatch):
    from interp.config import validate

    datasets.Dataset.from_list([{"a": "A cat.", "b": "A cats."}]).save_to_disk(str(tmp_path / "ds"))
    calls = []
    real = datasets.load_from_disk
    monkeypatch.setattr(datasets, "load_from_disk", lambda *a, **k: calls.append(a) or real(*a, **k))
    cfg = make_cfg("model=tiny", "pairs=hf", f"pairs.dataset={tmp_path / 'ds'}")
    validate(cfg)
    validate(cfg)  # the command checks before Hydra starts and again in the run
    assert len(load_pairs(cfg.pairs).pairs) == 1 and len(calls) == 1


# ------------------------------------------------------------------ CausalGym records

EOT = "<|endoftext|>"
GYM = [  # the format of aryaman/causalgym: template spans (BOS of its model first), labels with their space
    {"base": [f"{EOT}The", " guard", " behind", " the", " managers"],
     "src": [f"{EOT}The", " guards", " behind", " the", " managers"],
     "base_label": " is", "src_label": " are", "base_type": "singular", "src_type": "plural",
     "task": "agr_sv_num_pp"},
    {"base": [EOT, "John", " walked", " because"], "src": [EOT, "Jane", " walked", " because"],
     "base_label": " he", "src_label": " she", "base_type": "he", "src_type": "she", "task": "agr_gender"},
    {"base": [f"{EOT}While the", " lawyers", " lost", " the", " plans"],
     "src": [f"{EOT}The", " lawyers", " lost", " the", " plans"],
     "base_label": " they", "src_label": " .", "base_type": "sub", "src_type": "main", "task": "gss_subord"},
    {"base": [f"{EOT}The", " infant", " who was", " brought", " the", " sandwich"],
     "src": [f"{EOT}The", " infant", "", " brought", " the", " sandwich"],
     "base_label": " by", "src_label": " .", "base_type": "rr", "src_type": "mv", "task": "garden_mvrr"},
    {"base": [f"{EOT}The", " guards", " behind", " the", " managers"],  # the first one swapped
     "src": [f"{EOT}The", " guard", " behind", " the", " managers"],
     "base_label": " are", "src_label": " is", "base_type": "plural", "src_type": "singular",
     "task": "agr_sv_num_pp"},
]
GYM_PAIRS = [("The guard behind the managers is", "The guards behind the managers is", "agr_sv_num_pp"),
             ("John walked because he", "Jane walked because he", "agr_gender"),
             ("The guards behind the managers are", "The guard behind the managers are", "agr_sv_num_pp")]
GYM_REJECTED = {3: ("gss_subord", "base and src differ in 2 vs 1 words ('While the' / 'The'); "
                                  "pairs.alignment=strict needs a one-word edit"),
                4: ("garden_mvrr", "src only removes words ('who was'): an insertion")}


def _gym_copies(folder):
    out = {"jsonl": ["pairs=file", f"pairs.path={_write_jsonl(folder / 'gym.jsonl', GYM)}"]}
    (folder / "gym.json").write_text(json.dumps(GYM))
    out["json"] = ["pairs=file", f"pairs.path={folder / 'gym.json'}"]
    pd.DataFrame(GYM).to_parquet(folder / "gym.parquet")
    out["parquet"] = ["pairs=file", f"pairs.path={folder / 'gym.parquet'}"]
    datasets.Dataset.from_list(GYM).save_to_disk(str(folder / "gym_ds"))
    out["hf"] = ["pairs=hf", f"pairs.dataset={folder / 'gym_ds'}"]
    out["hf_jsonl"] = ["pairs=hf", f"pairs.dataset={folder / 'gym.jsonl'}"]
    return out


def test_causalgym_records_become_pairs_in_every_format_and_in_pairs_hf(tmp_path):
    for name, overrides in _gym_copies(tmp_path).items():
        ps = load_pairs(make_cfg(*overrides).pairs)
        assert [(p.a, p.b, p.category) for p in ps.pairs] == GYM_PAIRS, name
        assert [p.line for p in ps.pairs] == [1, 2, 5] and {p.type for p in ps.pairs} == {"grammar"}, name
        assert ps.pairs[0].meta == {"base_label": "is", "src_label": "are", "base_type": "singular",
                                    "src_type": "plural", "task": "agr_sv_num_pp"}, name
        assert [(pr.line, pr.reason) for pr in ps.problems] == [(3, "not_minimal"), (4, "not_minimal")], name
        for pr in ps.problems:
            category, detail = GYM_REJECTED[pr.line]
            assert detail in pr.detail and pr.a is not None, (name, pr)
            if name.startswith("hf"):
                assert pr.category == category, (name, pr)
    # span alignment takes the two-word edit to the tokenizer check; an insertion stays refused
    ps = load_pairs(make_cfg(*_gym_copies(tmp_path)["jsonl"], "pairs.alignment=span").pairs)
    assert [p.line for p in ps.pairs] == [1, 2, 3, 5] and [pr.line for pr in ps.problems] == [4]
    assert (ps.pairs[2].a, ps.pairs[2].b) == ("While the lawyers lost the plans they",
                                              "The lawyers lost the plans they")
    # without labels: base and src as they are, no correct side
    bare = [{k: v for k, v in GYM[1].items() if "label" not in k}]
    ps = load_pairs(make_cfg("pairs=file", f"pairs.path={_write_jsonl(tmp_path / 'bare.jsonl', bare)}").pairs)
    assert [(p.a, p.b, p.type) for p in ps.pairs] == [("John walked because", "Jane walked because", "semantic")]


def test_causalgym_runs_keep_the_one_token_edits_and_reject_the_rest_with_the_reason(tmp_path, tiny):
    from interp.run import run_result

    copies = _gym_copies(tmp_path)
    tables = {}
    for name in ("jsonl", "hf"):
        cfg = make_cfg(*RUN, *copies[name], *tokenizer_overrides())
        r = run_result(cfg, tmp_path / f"run_{name}", lm=tiny)
        tables[name] = r.pairs
        assert [tuple(x) for x in r.pairs[["a", "b", "category"]].itertuples(index=False)] == GYM_PAIRS, name
        assert r.pairs["token_a"].tolist() == [" guard", "John", " guards"], name
        assert r.pairs["meta_src_label"].tolist() == ["are", "she", "is"], name
        rejected = [json.loads(line) for line in (tmp_path / f"run_{name}" / "rejected.jsonl").read_text().splitlines()]
        assert [(row["line"], row["reason"]) for row in rejected] == [(3, "not_minimal"), (4, "not_minimal")], name
        assert all(GYM_REJECTED[row["line"]][1] in row["detail"] for row in rejected), name
    cols = ["a", "b", "category", "type", "line", "logprob_a", "logprob_b", "margin"]
    pd.testing.assert_frame_equal(tables["hf"][cols], tables["jsonl"][cols])


def test_analyze_reads_causalgym_records_from_a_list_and_a_dataset(tiny):
    import interp

    for pairs in (GYM, datasets.Dataset.from_list(GYM)):
        r = interp.analyze(tiny, pairs, figures=False)
        assert [tuple(x) for x in r.pairs[["a", "b", "category"]].itertuples(index=False)] == GYM_PAIRS
        assert sorted(r.rejected["reason"]) == ["not_minimal", "not_minimal"]
    with pytest.raises(TypeError, match=r"a DatasetDict holds several splits \(train\); pass one"):
        interp.analyze(tiny, datasets.DatasetDict(train=datasets.Dataset.from_list(GYM)))
    with pytest.raises(ConfigError, match=r"no sentence columns .*rename them .*its columns are \[text\]"):
        interp.analyze(tiny, datasets.Dataset.from_list([{"text": "A cat."}]))
