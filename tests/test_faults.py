"""Nothing lost, nothing counted twice, nothing of another run left behind: fault injection on the
tiny model (a kill at every step of a checkpoint save, damaged checkpoints, finished run dirs
reused, file modes)."""

import hashlib
import json
import os
import stat

import pytest

from interp import rundir as R
from interp.run import run
from interp.run.pipeline import CountError, check_counts
from tests.conftest import command, make_cfg, run_command, run_many, tokenizer_overrides
from tests.test_scale import _same_tables


def _args(pairs_file, run_dir, *extra):
    return ["model=tiny", "device=cpu", "dtype=float32", "pairs=file", f"pairs.path={pairs_file}",
            "hooks=resid_post", "batch_size=2", "checkpoint_every=1", "analysis.png=false", "progress=false",
            *tokenizer_overrides(), f"hydra.run.dir={run_dir}", *extra]


_cmd, _cli = command, run_command


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """An uninterrupted run of the fault tests' command, and its pairs file."""
    from tests.conftest import write_pairs

    base = tmp_path_factory.mktemp("faults")
    pairs = write_pairs(base / "pairs.jsonl")
    r, = run_many([_cmd(_args(pairs, base / "whole"))])
    assert r.returncode == 0, r.stderr[-2000:]
    return pairs, base / "whole"


STEPS = range(1, 8)


def _in_process(pairs, run_dir, *extra) -> None:
    """The fault tests' config (plus ``extra``) run through ``interp.run.run`` in this process (a
    failure raises): what the command does after its config check, without its seconds of imports.
    For runs a test needs as they are (a resume, the shards to merge); what a test is about runs as
    the command."""
    run(make_cfg(*[a for a in _args(pairs, run_dir, *extra) if not a.startswith("hydra.")]), run_dir)


@pytest.fixture(scope="module")
def killed(whole, tmp_path_factory):
    """Per step of a checkpoint save: the run killed there (after batch 2 of 4), its progress record
    then, and the same config run again: the last step's by the same command, the others through
    ``interp.run.run`` in this process (the crashes are processes killed, two at a time)."""
    pairs, _ = whole
    base = tmp_path_factory.mktemp("killed")
    dirs = {step: base / f"step{step}" for step in STEPS}
    crashed = run_many([_cmd(_args(pairs, dirs[s]), {"INTERP_CRASH_IN_SAVE": f"2:{s}"}) for s in STEPS])
    progress = {s: json.loads((dirs[s] / "checkpoint" / "progress.json").read_text())
                if (dirs[s] / "checkpoint" / "progress.json").exists() else None for s in STEPS}
    complete = {s: R.is_complete(dirs[s]) for s in STEPS}
    resumed = {s: _in_process(pairs, dirs[s]) for s in STEPS if s != STEPS[-1]}
    resumed[STEPS[-1]] = _cli(_args(pairs, dirs[STEPS[-1]]))
    return {s: (dirs[s], c, progress[s], complete[s], resumed[s]) for s, c in zip(STEPS, crashed)}


@pytest.mark.parametrize("step", STEPS)
def test_a_kill_at_any_step_of_a_checkpoint_save_resumes_to_the_same_tables(whole, killed, step):
    _, ref = whole
    d, crashed, progress, complete_after_crash, resumed = killed[step]
    assert crashed.returncode == 17, crashed.stderr[-2000:]
    assert not complete_after_crash
    assert progress["batches_done"] == (2 if step >= 6 else 1)  # the switch is progress.json
    if resumed is not None:  # the command line's run (the others raised if they failed)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
    m = R.read_manifest(d)
    assert m["counts"]["resumed_from_batch"] == progress["batches_done"]
    assert m["counts"]["kept"] == R.read_manifest(ref)["counts"]["kept"]
    _same_tables(ref, d)


def test_a_damaged_checkpoint_is_refused_not_double_counted(whole, tmp_path):
    pairs, _ = whole
    d = tmp_path / "r"
    assert _cli(_args(pairs, d), {"INTERP_CRASH_IN_SAVE": "2:7"}).returncode == 17
    progress_path = d / "checkpoint" / "progress.json"
    progress = json.loads(progress_path.read_text())
    progress["n_rows"] += 2  # the record and the files disagree
    progress_path.write_text(json.dumps(progress))
    r = _cli(_args(pairs, d))
    assert r.returncode == 2 and "inconsistent" in r.stderr and "remove it to start the run over" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not R.is_complete(d)


def _digest(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_another_config_into_a_finished_run_dir_is_refused_and_changes_nothing(whole, tmp_path):
    pairs, _ = whole
    d, c = tmp_path / "r", tmp_path / "c"  # a finished run; a checkpoint of a killed one
    done, crashed = run_many([_cmd(_args(pairs, d)), _cmd(_args(pairs, c), {"INTERP_CRASH_IN_SAVE": "2:7"})])
    assert done.returncode == 0 and crashed.returncode == 17
    before = {d: _digest(d), c: _digest(c)}
    r, rc = run_many([_cmd(_args(pairs, d, "seed=1")), _cmd(_args(pairs, c, "seed=1"))])
    assert r.returncode == 2 and "holds a finished run of another config" in r.stderr
    assert _digest(d) == before[d]  # .hydra/config.yaml included
    # a checkpoint of another config: refused before Hydra writes anything either
    assert rc.returncode == 2 and "another config" in rc.stderr and _digest(c) == before[c]


def test_overwrite_replaces_a_finished_run_entirely(whole, tmp_path):
    pairs, _ = whole
    d = tmp_path / "r"
    _in_process(pairs, d)
    assert (d / R.CONTRAST).exists()
    (d / "causal").mkdir()
    (d / "causal" / "manifest.json").write_text("{}")  # the old run's causal checks
    r = _cli(_args(pairs, d, "analysis.contrast=null", "overwrite=true"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert not (d / R.CONTRAST).exists() and not (d / "causal").exists()  # nothing stale beside the new run
    assert R.read_manifest(d)["config"]["analysis"]["contrast"] is None


def test_merge_into_a_finished_run_is_refused_without_overwrite(whole, tmp_path):
    pairs, ref = whole
    shards = [str(tmp_path / f"s{i}") for i in range(2)]
    for i, s in enumerate(shards):
        _in_process(pairs, s, f"shard.index={i}", "shard.count=2")
    out = tmp_path / "m"
    r, first = run_many([_cmd([*shards, "--out", str(ref)], module="interp.merge"),
                         _cmd([*shards, "--out", str(out)], module="interp.merge")])
    assert r.returncode == 2 and "already holds a finished run" in r.stderr
    assert first.returncode == 0, first.stderr[-2000:]
    assert _cli([*shards, "--out", str(out), "--overwrite"], module="interp.merge").returncode == 0
    m = R.read_manifest(out)  # replaced: a new complete run with the same pairs
    assert m["status"] == "complete" and m["counts"]["kept"] == R.read_manifest(ref)["counts"]["kept"]
    assert len(m["merged_from"]) == 2


def test_counts_that_do_not_add_up_stop_the_run():
    rows = [{"pair_index": i} for i in (0, 1, 1)]
    with pytest.raises(CountError, match="counted twice"):
        check_counts(rows, [], 3, 3, 0, 3, sharded=False)
    with pytest.raises(CountError, match="kept \\+ 1 rejected != 5 loaded"):
        check_counts([{"pair_index": 0}, {"pair_index": 1}], [], 2, 2, 1, 5, sharded=False)
    check_counts([{"pair_index": 0}], [{"pair_index": 1}], 2, 2, 0, 2, sharded=False)


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640)])
def test_every_file_of_a_run_follows_the_umask(pairs_file, tmp_path, umask, mode):
    cfg = make_cfg("model=tiny", "device=cpu", "dtype=float32", "pairs=file", f"pairs.path={pairs_file}",
                   "hooks=resid_post", "analysis.png=false", *tokenizer_overrides())
    old = os.umask(umask)
    try:
        out = run(cfg, tmp_path / "r")
    finally:
        os.umask(old)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files)
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in files} == {p.name: mode for p in files}
