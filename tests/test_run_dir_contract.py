"""The run-dir contract (``interp.run.contract``): README's table is its rendering, a real run
writes exactly its files and columns, and every reader refuses a run newer than the code."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from interp import rundir as R
from interp.run import contract as C
from tests.conftest import PAIR_ROWS, REPO, make_cfg, tokenizer_overrides

pytestmark = pytest.mark.usefixtures("one_thread")

REGENERATE = "python -m interp.run.contract --write"


def test_readme_run_dir_table_is_the_contract_rendered():
    text = (REPO / "README.md").read_text()
    section = text[text.index("## The run directory"):]
    section = section[:section.find("\n## ", 1)]
    assert C.BEGIN in section and C.END in section, f"README's run-dir section lacks the markers; run {REGENERATE}"
    assert C.readme_section(text) == C.readme_block(), (
        f"README.md's run-dir table differs from interp/run/contract.py; regenerate it with: {REGENERATE}")


def test_the_contract_names_each_entry_once_and_matches_paths():
    names = [e.name for e in C.entries()]
    assert len(names) == len(set(names))
    assert C.entry("figures/heatmap_z_edit.html").name == "figures/"
    assert C.entry("causal/figures/x.html").name == "causal/figures/"
    assert C.entry("causal/atp.parquet").name == "causal/atp.parquet"
    assert C.entry("compare_other/compare.json").name == "compare_<RUN_B>/"
    assert C.entry("stability.parquet").name == R.STABILITY
    assert C.entry("notes.txt") is None and C.entry("figuresx/a.html") is None
    try:  # the experiment trackers' record, where that module exists
        from interp.tracking import TRACKING_FILE
    except ImportError:
        pass
    else:
        assert C.entry(TRACKING_FILE) is not None
    # the stability columns are interp.stats.registry's, with the keys and the per-head columns
    from interp.stats.registry import COLUMNS

    full = C.table_columns(R.STABILITY, controls=True, heads=True)
    assert set(full) == {c.name for c in COLUMNS} | {"hook", "hook_name", "layer", "component", "position", "head",
                                                     "head_dim"}
    bare = C.table_columns(R.STABILITY)
    assert "ratio_hi" not in bare and "head" not in bare and "stable" in bare
    with pytest.raises(KeyError):
        C.table_columns(R.STABILITY, control=True)


# ------------------------------------------------------------------ a real run against the contract


def _write_pairs(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_lm):
    """Two tiny runs: with controls, the z hook, several categories (contrast), saved activations,
    figures and the causal checks; and without controls, one hook without heads, one category."""
    from hydra import compose, initialize_config_dir

    from interp.causal import run_causal
    from interp.run import run_result

    tmp = tmp_path_factory.mktemp("contract")
    rows = [{"a": a, "b": b, "category": c, "type": t, "note": f"row {i}"} for i, (a, b, c, t) in enumerate(PAIR_ROWS)]
    full = _write_pairs(tmp / "pairs.jsonl", rows)
    with open(full, "a") as f:  # a rejected pair and an unreadable line
        f.write('{"a": "She walked home.", "b": "She has walked home."}\nnot json\n')
    cfg = make_cfg("model=tiny", "device=cpu", "dtype=float32", "pairs=file", f"pairs.path={full}",
                   "hooks.points=[resid_post,z]", "hooks.layers=[0,1]", "analysis.controls.n=2", "analysis.png=false",
                   "analysis.save_state=true", "batch_size=8", *tokenizer_overrides())
    run_result(cfg, tmp / "full", lm=tiny_lm)
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        pcfg = compose(config_name="patch", overrides=[
            "progress=false", f"run={tmp / 'full'}", "k=[1]", "ablation.seeds=2", "ablation.limit=2",
            "ablation.split=null", "patching.n_pairs=1", "atp.limit=2", "atp.validate=2", "figures.png=false",
            "figures.n_pairs=1"])
    run_causal(pcfg)

    one = _write_pairs(tmp / "one.jsonl", [r for r in rows if r["category"] == "subject"])
    cfg = make_cfg("model=tiny", "device=cpu", "dtype=float32", "pairs=file", f"pairs.path={one}",
                   "hooks.points=[mlp_out]", "hooks.layers=[0]", "analysis.controls.n=0", "analysis.figures=false",
                   "analysis.n_saved_pairs=0", "analysis.detail_pairs=0", *tokenizer_overrides())
    run_result(cfg, tmp / "bare", lm=tiny_lm)
    return {"full": tmp / "full", "bare": tmp / "bare"}


def _files(run_dir) -> list[str]:
    return sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file())


def _check_run(run_dir, conditions: dict) -> set[str]:
    """Every file of ``run_dir`` is in the contract and every table has exactly its columns; the
    names of the contract's entries written."""
    seen = set()
    for rel in _files(run_dir):
        e = C.entry(rel)
        assert e is not None, f"{rel} is written but not in interp/run/contract.py"
        seen.add(e.name)
        if not rel.endswith(".parquet"):
            continue
        assert e.columns is not None, f"{rel}: a table without columns in the contract"
        cols = list(pd.read_parquet(run_dir / rel).columns)
        families = [p for p, _ in e.prefixes]
        plain = [c for c in cols if not c.startswith(tuple(families))] if families else cols
        assert plain == C.table_columns(e.name, **conditions), f"{rel}: columns differ from the contract"
    return seen


def test_a_run_with_controls_heads_and_causal_checks_writes_exactly_the_contract(runs):
    run = runs["full"]
    seen = _check_run(run, {"controls": True, "heads": True})
    written = {e.name for e in C.run_files() if e.always} | {
        R.STABILITY_BY_CATEGORY, R.CONTRAST, R.PAIR_VALUES, R.PAIR_PROFILE, R.PAIR_COMPONENTS, R.ACTIVATIONS,
        R.PATTERNS, R.STATS, "figures/"} | {e.name for e in C.causal_files()}
    assert written <= seen, f"not written: {sorted(written - seen)}"
    assert "meta_note" in pd.read_parquet(run / R.PAIRS).columns  # the meta_* family
    keys = list(R.read_manifest(run))
    assert keys == [k for k, _ in C.MANIFEST_KEYS if k in keys], "manifest.json's keys differ from the contract's"
    assert {k for k, _ in C.MANIFEST_KEYS} - set(keys) <= set(C.MANIFEST_LATER)
    rejected = R.read_jsonl(run / R.REJECTED)
    assert len(rejected) == 2 and all(set(r) == set(C.table_columns(R.REJECTED)) for r in rejected)


def test_a_run_without_controls_or_heads_lacks_exactly_their_columns(runs):
    run = runs["bare"]
    seen = _check_run(run, {"controls": False, "heads": False})
    assert {e.name for e in C.run_files() if e.always} <= seen
    assert R.STABILITY_BY_CATEGORY not in seen and R.PAIR_VALUES not in seen and R.ACTIVATIONS not in seen


# ------------------------------------------------------------------ schema_version: every reader


@pytest.fixture
def newer(runs, tmp_path):
    """A copy of the full run whose manifest says it was written by a newer interp."""
    run = tmp_path / "runs" / "newer"
    shutil.copytree(runs["full"], run, ignore=shutil.ignore_patterns("causal", "figures", "*.safetensors"))
    m = R.read_manifest(run)
    R.write_json(run / R.MANIFEST, {**m, "schema_version": R.SCHEMA_VERSION + 1})
    return run


def _says_newer(text: str) -> bool:
    return f"schema_version {R.SCHEMA_VERSION + 1}" in text and f"up to {R.SCHEMA_VERSION}" in text


def test_read_manifest_refuses_a_newer_run_in_one_line(newer, runs):
    with pytest.raises(R.SchemaVersionError) as err:
        R.read_manifest(newer)
    msg = str(err.value)
    assert str(newer) in msg and _says_newer(msg) and "\n" not in msg
    assert err.value.version == R.SCHEMA_VERSION + 1 and isinstance(err.value, ValueError)
    assert R.read_manifest(newer, check=False)["schema_version"] == R.SCHEMA_VERSION + 1
    assert R.is_complete(newer)  # complete, just not readable here
    assert R.read_manifest(runs["full"])["schema_version"] == R.SCHEMA_VERSION


def test_load_run_refuses_a_newer_run(newer):
    import interp
    from interp.result import RunDirError

    with pytest.raises(RunDirError) as err:
        interp.load_run(newer)
    assert str(newer) in str(err.value) and _says_newer(str(err.value))


def test_the_viewer_store_refuses_a_newer_run(newer, runs):
    from interp.viewer import create_app
    from interp.viewer.store import RunStore

    root = newer.parent
    shutil.copytree(runs["bare"], root / "ok")
    with pytest.raises(R.SchemaVersionError):
        RunStore(root).manifest(newer)
    c = create_app(root, decode_tokens=False).test_client()
    page = c.get("/run/newer")
    assert page.status_code == 404 and _says_newer(page.get_data(as_text=True))
    assert str(newer) not in page.get_data(as_text=True)  # no file paths in the viewer
    index = c.get("/").get_data(as_text=True)
    assert _says_newer(index) and "/run/ok" in index
    assert c.get("/run/ok").status_code == 200


def test_merge_refuses_a_newer_shard(newer, tmp_path, capsys):
    from interp.merge import MergeError, main, merge_runs

    with pytest.raises(MergeError) as err:
        merge_runs([newer], tmp_path / "merged")
    assert str(newer) in str(err.value) and _says_newer(str(err.value))
    with pytest.raises(SystemExit) as code:
        main([str(newer), "--out", str(tmp_path / "merged")])
    assert code.value.code == 2 and _says_newer(capsys.readouterr().err)


def test_compare_refuses_a_newer_run(newer, runs, tmp_path, capsys):
    from interp.compare import compare, main
    from interp.result import RunDirError

    with pytest.raises(RunDirError) as err:
        compare(runs["full"], newer, tmp_path / "cmp", figures=False)
    assert str(newer) in str(err.value) and _says_newer(str(err.value))
    with pytest.raises(SystemExit) as code:
        main([str(newer), str(runs["full"]), "--out", str(tmp_path / "cmp"), "--no-figures"])
    assert code.value.code == 2 and _says_newer(capsys.readouterr().err)


def test_patch_and_a_new_run_into_it_refuse_a_newer_run(newer, tmp_path):
    from interp.causal import RunDirError, check_run_dir
    from interp.run import RunConfigMismatch
    from interp.run import check_run_dir as check_target

    with pytest.raises(RunDirError) as err:
        check_run_dir(newer)
    assert _says_newer(str(err.value))
    with pytest.raises(RunConfigMismatch) as err:
        check_target(make_cfg("model=tiny"), newer)
    assert _says_newer(str(err.value)) and "overwrite=true" in str(err.value)


def test_a_sweep_summary_names_a_newer_job_as_newer(newer, tmp_path):
    import shutil

    from interp.callbacks import summarize_sweep

    sweep = tmp_path / "sweep"
    shutil.copytree(newer, sweep / "0_job")
    row = summarize_sweep(sweep).iloc[0]
    assert row["status"] == "newer" and f"schema_version {R.SCHEMA_VERSION + 1}" in row["error"]
