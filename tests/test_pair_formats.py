"""Pair files as parquet and JSON arrays beside JSON lines and CSV; a file of the wrong type refused by
the command before any model loads; the manifest's schema_version; the modes of a run's files."""

from __future__ import annotations

import csv
import json
import os

import pandas as pd
import pytest

from interp.config import ConfigError
from interp.pairs.files import check_pair_file, pair_file_format, read_pair_file
from tests.conftest import PAIR_ROWS, command, make_cfg, run_many, tokenizer_overrides

pytestmark = pytest.mark.usefixtures("one_thread")

FIELDS = ("a", "b", "category", "type")


def _records():
    """PAIR_ROWS with what the formats must carry alike: an alt, a row without category and type, a
    duplicate, bad rows."""
    rows = [dict(zip(FIELDS, r)) for r in PAIR_ROWS]
    rows[1]["alt"] = "the"
    rows.append({"a": "The cat is here.", "b": "The cat are here."})  # category: the file's stem; grammar
    rows.append(dict(rows[0]))  # a duplicate of the first
    rows.append({"a": "Same text.", "b": "Same text."})  # identical_sentences
    rows.append({"a": "Only one side.", "b": ""})  # empty_sentence
    return rows


def write_all(folder, rows=None) -> dict[str, object]:
    """The same records as JSON lines, CSV, parquet and a JSON array."""
    rows = rows or _records()
    cols = list(dict.fromkeys(k for r in rows for k in r))
    out = {}
    out["jsonl"] = folder / "pairs.jsonl"
    out["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    out["csv"] = folder / "pairs.csv"
    with open(out["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, cols)
        w.writeheader()
        w.writerows(rows)
    out["parquet"] = folder / "pairs.parquet"
    pd.DataFrame(rows, columns=cols).to_parquet(out["parquet"], index=False)
    out["json"] = folder / "pairs.json"
    out["json"].write_text(json.dumps(rows, indent=1))
    return out


def _kept(pairs):
    return [(p.pair_id, p.a, p.b, p.category, p.type, p.alt, p.line) for p in pairs]


def _problems(problems):
    return [(pr.line, pr.reason) for pr in problems]


def test_the_four_formats_give_the_same_pairs_and_problems(tmp_path):
    files = write_all(tmp_path)
    got = {fmt: read_pair_file(p) for fmt, p in files.items()}
    assert {fmt: pair_file_format(p) for fmt, p in files.items()} == {f: f for f in files}
    ref_pairs, ref_problems = got["jsonl"]
    assert len(ref_pairs) == len(PAIR_ROWS) + 2 and ref_pairs[-1].line == len(PAIR_ROWS) + 2
    assert ref_pairs[1].alt == "the" and ref_pairs[-2].a == "The cat is here."
    assert (ref_pairs[-2].category, ref_pairs[-2].type) == ("pairs", "grammar")
    for fmt in ("parquet", "json"):  # the same, row n as line n
        pairs, problems = got[fmt]
        assert _kept(pairs) == _kept(ref_pairs), fmt
        assert _problems(problems) == _problems(ref_problems), fmt
        assert [pr.reason for pr in problems] == ["identical_sentences", "empty_sentence"]
    # CSV numbers file lines (the header is line 1); the pairs and reasons are the same
    pairs, problems = got["csv"]
    assert [k[1:6] for k in _kept(pairs)] == [k[1:6] for k in _kept(ref_pairs)]
    assert [(n - 1, r) for n, r in _problems(problems)] == _problems(ref_problems)


def test_aliases_and_null_cells(tmp_path):
    """good/bad and sentence_good/sentence_bad as in JSON lines; in parquet a null cell is an absent
    field, so one table may mix the aliases (JSON lines: rows with different fields)."""
    rows = [{"sentence_good": "The cat is here.", "sentence_bad": "The cat are here.", "category": "agr"},
            {"good": "A cat.", "bad": "A cats."},
            {"a": "He runs.", "b": None}]
    files = write_all(tmp_path, rows)
    want = [("agr-00001", "The cat is here.", "The cat are here.", "agr", "grammar", None, 1),
            ("pairs-00002", "A cat.", "A cats.", "pairs", "grammar", None, 2)]
    for fmt in ("jsonl", "parquet", "json"):
        pairs, problems = read_pair_file(files[fmt])
        assert _kept(pairs) == want, fmt
        assert [(pr.line, pr.reason, pr.detail) for pr in problems] == [(3, "missing_field", "field 'b' is missing")]


def test_a_json_object_with_its_pairs_under_pairs_or_data_and_a_json_array_under_another_name(tmp_path):
    rows = _records()
    ref = _kept(read_pair_file(write_all(tmp_path, rows)["jsonl"])[0])
    for key in ("pairs", "data"):
        p = tmp_path / f"{key}" / "pairs.json"
        p.parent.mkdir()
        p.write_text(json.dumps({"name": "mine", key: rows}))
        assert _kept(read_pair_file(p)[0]) == ref
    p = tmp_path / "array" / "pairs.jsonl"  # an array named .jsonl (today's files of that kind)
    p.parent.mkdir()
    p.write_text("\n" + json.dumps(rows))
    assert pair_file_format(p) == "json" and _kept(read_pair_file(p)[0]) == ref


def test_duplicates_and_strict_are_the_same_in_every_format(tmp_path):
    from interp.pairs import load_pairs

    for fmt, p in write_all(tmp_path).items():
        cfg = make_cfg("pairs=file", f"pairs.path={p}", "pairs.duplicates=drop").pairs
        ps = load_pairs(cfg)
        assert ps.duplicates == 1, fmt
        assert [pr.reason for pr in ps.problems] == ["identical_sentences", "empty_sentence", "duplicate"], fmt
        first = 2 if fmt == "csv" else 1  # CSV numbers file lines, its header is line 1
        assert ps.problems[-1].detail == f"same a and b as {p}:{first}", fmt
        from interp.pairs.records import PairFileError
        with pytest.raises(PairFileError, match="identical_sentences"):
            read_pair_file(p, strict=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from interp.run import get_model

    cfg = make_cfg("model=tiny", "device=cpu", "dtype=float32", *tokenizer_overrides())
    return get_model(cfg)


def _tiny_run(path, out, lm):
    from interp.run import run_result

    cfg = make_cfg("model=tiny", "device=cpu", "dtype=float32", "pairs=file", f"pairs.path={path}",
                   "analysis.figures=false", *tokenizer_overrides())
    return run_result(cfg, out, lm=lm)


def test_the_four_formats_give_the_same_kept_pairs_and_margins_on_the_tiny_model(tmp_path, tiny):
    files = write_all(tmp_path)
    tables = {}
    for fmt, p in files.items():
        r = _tiny_run(p, tmp_path / f"run_{fmt}", tiny)
        tables[fmt] = r.pairs.set_index("pair_index")
    ref = tables["jsonl"]
    assert len(ref) >= 4
    cols = ["pair_id", "a", "b", "category", "type", "margin"]
    for fmt in ("csv", "parquet", "json"):
        if fmt == "csv":  # its pair ids number file lines, one more than the row
            pd.testing.assert_frame_equal(tables[fmt][cols[1:]], ref[cols[1:]])
        else:
            pd.testing.assert_frame_equal(tables[fmt][cols], ref[cols])
            assert tables[fmt]["line"].tolist() == ref["line"].tolist()


# ------------------------------------------------------------------ wrong files, refused before the model


def _bad_files(tmp_path):
    pq_file = write_all(tmp_path)["parquet"]
    out = {}
    out["parquet_named_jsonl"] = tmp_path / "really_parquet.jsonl"
    out["parquet_named_jsonl"].write_bytes(pq_file.read_bytes())
    out["binary"] = tmp_path / "binary.jsonl"
    out["binary"].write_bytes(bytes(range(256)) * 4)
    out["gzip"] = tmp_path / "pairs.csv"
    import gzip
    out["gzip"].write_bytes(gzip.compress(b"a,b\nA.,B.\n"))
    out["json_object"] = tmp_path / "object.json"
    out["json_object"].write_text(json.dumps({"a": "A cat.", "b": "A dog."}))
    out["json_scalar"] = tmp_path / "number.json"
    out["json_scalar"].write_text("42")
    out["json_lines_as_json"] = tmp_path / "lines.json"
    out["json_lines_as_json"].write_text('{"a": "A.", "b": "B."}\n{"a": "C.", "b": "D."}\n')
    out["parquet_without_ab"] = tmp_path / "noab.parquet"
    pd.DataFrame({"good_sentence": ["A."], "other": ["B."]}).to_parquet(out["parquet_without_ab"])
    out["not_parquet"] = tmp_path / "text.parquet"
    out["not_parquet"].write_text('{"a": "A.", "b": "B."}\n')
    out["broken_parquet"] = tmp_path / "broken.parquet"
    out["broken_parquet"].write_bytes(b"PAR1" + b"\x00" * 64 + b"PAR1")
    return out


MESSAGES = {
    "parquet_named_jsonl": "a parquet file (it starts with PAR1) named .jsonl",
    "binary": "binary content (NUL bytes",
    "gzip": "binary content (gzip-compressed data)",
    "json_object": "a JSON object, not a list of pairs",
    "json_scalar": "a JSON int, not a list of pairs",
    "json_lines_as_json": "not valid JSON: Extra data at line 2",
    "parquet_without_ab": "a parquet pairs file needs columns a and b",
    "not_parquet": "not a parquet file (it does not start with PAR1)",
    "broken_parquet": "cannot be read as parquet",
}


def test_each_wrong_file_is_refused_in_one_line_by_the_check_and_the_reader(tmp_path):
    for case, path in _bad_files(tmp_path).items():
        for call, prefix in ((check_pair_file, f"pairs.path={path}: "), (read_pair_file, f"{path}: ")):
            with pytest.raises(ConfigError) as err:
                call(path)
            msg = str(err.value)
            assert msg.startswith(prefix) and MESSAGES[case] in msg and "\n" not in msg, (case, msg)


def test_analyze_with_a_wrong_file_raises_the_same_error(tmp_path, tiny):
    import interp

    path = _bad_files(tmp_path)["parquet_named_jsonl"]
    with pytest.raises(ConfigError, match=r"really_parquet\.jsonl: a parquet file \(it starts with PAR1\)"):
        interp.analyze(tiny, path)


def test_the_command_refuses_each_wrong_file_before_any_model_loads(tmp_path):
    env = {"INTERP_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    cases = _bad_files(tmp_path)
    runs = run_many([command(["model=tiny", "pairs=file", f"pairs.path={path}",
                              f"hydra.run.dir={tmp_path / f'run_{case}'}", *tokenizer_overrides()], env)
                     for case, path in cases.items()], timeout=120)
    for (case, path), p in zip(cases.items(), runs):
        assert p.returncode == 2, (case, p.stderr)
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1, (case, p.stderr)  # no model-loading output, no traceback
        assert lines[0].startswith(f"interp.run: error: pairs.path={path}: ") and MESSAGES[case] in lines[0], lines
        # nothing of the model was touched: no cache folder (its conversion), no run dir, no output
        assert not p.stdout.strip() and not (tmp_path / f"run_{case}").exists() and not (tmp_path / "cache").exists(), case


# ------------------------------------------------------------------ manifest schema_version, file modes


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny):
    folder = tmp_path_factory.mktemp("formats_run")
    old = os.umask(0o022)
    try:
        r = _tiny_run(write_all(folder)["jsonl"], folder / "run", tiny)
    finally:
        os.umask(old)
    return r.run_dir


def test_the_manifest_records_the_schema_version(tiny_run):
    from interp.rundir import SCHEMA_VERSION, read_manifest

    assert isinstance(SCHEMA_VERSION, int) and SCHEMA_VERSION >= 1
    assert read_manifest(tiny_run)["schema_version"] == SCHEMA_VERSION


def test_an_older_run_loads_and_a_newer_one_is_refused(tiny_run, tmp_path):
    import shutil

    import interp
    from interp.result import RunDirError
    from interp.rundir import SCHEMA_VERSION

    for name, version in (("older", None), ("same", SCHEMA_VERSION), ("newer", SCHEMA_VERSION + 1),
                          ("text", "2")):
        run = tmp_path / name
        shutil.copytree(tiny_run, run)
        m = json.loads((run / "manifest.json").read_text())
        if version is None:
            m.pop("schema_version")
        else:
            m["schema_version"] = version
        (run / "manifest.json").write_text(json.dumps(m))
        if name in ("older", "same"):
            r = interp.load_run(run)
            assert len(r.pairs) > 0 and r.manifest.get("schema_version") == version
        else:
            with pytest.raises(RunDirError, match=rf"newer interp \(run-dir schema_version {version!r}") as err:
                interp.load_run(run)
            assert str(run) in str(err.value) and "upgrade interp" in str(err.value)


def test_every_file_of_a_run_is_written_0644_under_umask_022(tiny_run):
    modes = {str(p.relative_to(tiny_run)): oct(p.stat().st_mode & 0o777)
             for p in tiny_run.rglob("*") if p.is_file()}
    assert "activations.safetensors" in modes and "manifest.json" in modes and "pairs.parquet" in modes
    assert {f: m for f, m in modes.items() if m != "0o644"} == {}
