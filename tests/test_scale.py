"""Sharding, exact merges, resume after a crash, launchers and sweep summaries."""

import json

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from interp import rundir as R
from interp.merge import MergeError, merge_runs
from interp.run import run
from tests.conftest import CONF, command, make_cfg, run_command, run_many

TABLE_COLS = ("n_pairs", "mean_diff", "std_diff", "mean_abs_diff", "std_abs_diff", "spread", "normalized",
              "control_normalized", "ratio", "t_stat", "p_value", "q_value",
              # the clustered statistics (from the kept per-pair values) and the flags (from max |activation|)
              "ratio_lo", "ratio_hi", "n_clusters", "se_cluster", "p_cluster", "q_cluster", "adj_coef", "adj_hi",
              "stable", "stable_layers", "max_abs", "massive", "offset_dim")


def _cfg(pairs_file, *extra):
    return make_cfg("model=tiny", "device=cpu", "dtype=float32", "pairs=file", f"pairs.path={pairs_file}",
                    "hooks=all", "batch_size=1", "analysis.png=false", *extra)


def _same_tables(a, b, tol=1e-9):
    pa, pb = R.read_table(a, R.PAIRS), R.read_table(b, R.PAIRS)
    pd.testing.assert_series_equal(pa["pair_id"], pb["pair_id"])
    pd.testing.assert_series_equal(pa["margin"], pb["margin"], atol=tol, rtol=tol)
    sa, sb = R.read_table(a, R.STABILITY), R.read_table(b, R.STABILITY)
    assert len(sa) == len(sb)
    for col in TABLE_COLS:
        pd.testing.assert_series_equal(sa[col], sb[col], check_dtype=False, atol=tol, rtol=1e-7)
    for name in (R.DIVERGENCE, R.CONTRAST, R.STABILITY_BY_CATEGORY, R.DIRECTIONS):
        assert (a / name).exists() == (b / name).exists(), name
        if not (a / name).exists():  # stability_by_category.parquet: not written by runs without it
            continue
        ta, tb = R.read_table(a, name), R.read_table(b, name)
        num = ta.select_dtypes("number").columns
        pd.testing.assert_frame_equal(ta[num], tb[num], check_dtype=False, atol=tol, rtol=1e-7)
    keys = ["hook", "layer", "position", "pair_index", "component"]
    va = pd.read_parquet(a / R.PAIR_VALUES).sort_values(keys).reset_index(drop=True)
    vb = pd.read_parquet(b / R.PAIR_VALUES).sort_values(keys).reset_index(drop=True)
    assert len(va) > 0
    pd.testing.assert_frame_equal(va, vb, atol=1e-6, rtol=1e-6)
    pfa = R.read_table(a, R.PAIR_PROFILE).sort_values(["pair_id", "hook", "layer", "position"]).reset_index(drop=True)
    pfb = R.read_table(b, R.PAIR_PROFILE).sort_values(["pair_id", "hook", "layer", "position"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(pfa, pfb, atol=1e-5, rtol=1e-5)


def test_merged_shards_equal_a_single_process_run(pairs_file, tmp_path):
    one = run(_cfg(pairs_file), tmp_path / "one")
    shards = [run(_cfg(pairs_file, f"shard.index={i}", "shard.count=3"), tmp_path / f"s{i}") for i in range(3)]
    kept = [len(R.read_table(s, R.PAIRS)) for s in shards]
    assert kept == [3, 3, 2]
    merged = merge_runs(shards[::-1], tmp_path / "merged")  # order of arguments does not matter
    _same_tables(one, merged)
    m = R.read_manifest(merged)
    assert m["counts"]["kept"] == 8 and len(m["merged_from"]) == 3 and m["status"] == "complete"
    assert (merged / R.ACTIVATIONS).exists() and (merged / "figures" / "ranking_edit.html").exists()


def test_merge_refuses_incomplete_or_mismatched_shards(pairs_file, tmp_path):
    a = run(_cfg(pairs_file, "shard.index=0", "shard.count=2"), tmp_path / "a")
    b = run(_cfg(pairs_file, "shard.index=1", "shard.count=2", "seed=5"), tmp_path / "b")
    with pytest.raises(MergeError, match="differs"):
        merge_runs([a, b], tmp_path / "m")
    with pytest.raises(MergeError, match="index 0..count-1"):
        merge_runs([a], tmp_path / "m")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MergeError, match="not a complete run dir"):
        merge_runs([a, tmp_path / "empty"], tmp_path / "m")


_cli = run_command


def test_a_crashed_run_resumes_from_its_last_finished_batch_and_ends_with_the_same_tables(pairs_file, tmp_path):
    args = ["model=tiny", "device=cpu", "dtype=float32", "pairs=file", f"pairs.path={pairs_file}", "hooks=all",
            "batch_size=2", "checkpoint_every=1", "analysis.png=false", "progress=false"]
    # the crashed run and an uninterrupted one side by side (every run here on one thread: run_many)
    crashed, whole = run_many([command([*args, f"hydra.run.dir={tmp_path / 'r'}"], {"INTERP_CRASH_AFTER_BATCH": "3"}),
                               command([*args, f"hydra.run.dir={tmp_path / 'w'}"])])
    assert crashed.returncode == 17, crashed.stderr[-2000:]
    assert whole.returncode == 0, whole.stderr[-2000:]
    assert not R.is_complete(tmp_path / "r") and not (tmp_path / "r" / "manifest.json").exists()
    progress = json.loads((tmp_path / "r" / "checkpoint" / "progress.json").read_text())
    assert progress["batches_done"] == 3  # checkpointed after every batch; 4 batches in all
    (ran,) = progress["forward_parts"]  # how the model ran in the part before the crash
    assert ran["backend"] == "hf"
    planted = {**ran, "attention": "planted: the earlier part ran otherwise"}
    progress["forward_parts"] = [planted]
    (tmp_path / "r" / "checkpoint" / "progress.json").write_text(json.dumps(progress))
    assert not list((tmp_path / "r").glob("*.partial")) and not list((tmp_path / "r" / "checkpoint").glob("*.partial"))
    refused = _cli(args[:-4] + ["batch_size=4", "checkpoint_every=1", "analysis.png=false",
                                f"hydra.run.dir={tmp_path / 'r'}"])
    assert refused.returncode != 0 and "another config" in refused.stderr
    resumed, = run_many([command([*args, f"hydra.run.dir={tmp_path / 'r'}"])])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert R.read_manifest(tmp_path / "r")["counts"]["resumed_from_batch"] == 3
    assert R.read_manifest(tmp_path / "r")["forward"] == {"mixed": [planted, ran]}  # both parts on record
    assert not (tmp_path / "r" / "checkpoint").exists()
    assert R.read_manifest(tmp_path / "w")["forward"] == ran  # one part: one record
    _same_tables(tmp_path / "w", tmp_path / "r")


@pytest.mark.parametrize("launcher,target", [("joblib", "JoblibLauncher"), ("local_parallel", "JoblibLauncher"),
                                             ("submitit_slurm", "SlurmLauncher"), ("slurm_gpu", "SlurmLauncher")])
def test_every_launcher_config_composes(launcher, target):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith(target)
    if launcher == "slurm_gpu":
        assert cfg.hydra.launcher.gpus_per_node == 1 and cfg.hydra.launcher.timeout_min == 240


def test_a_joblib_sweep_runs_jobs_in_parallel_processes_and_writes_a_sweep_summary(tmp_path):
    r = _cli(["-m", "hydra/launcher=local_parallel", "model=tiny", "device=cpu", "pairs=grammar,semantic",
              "pairs.limit=2", "analysis.figures=false", "progress=false", f"hydra.sweep.dir={tmp_path}/sweep"])
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((tmp_path / "sweep" / "sweep_summary.json").read_text())
    assert len(summary) == 2 and {s["status"] for s in summary} == {"complete"}
    assert sorted(s["kept"] for s in summary) == [10, 14]  # 2 per category: 5 semantic, 7 grammar categories
    assert all(R.is_complete(s["run_dir"]) for s in summary)


def test_the_shards_command_runs_shards_in_parallel_and_merges_them(pairs_file, tmp_path):
    r = _cli(["--n", "2", "--out", str(tmp_path / "sh"), "--", "model=tiny", "device=cpu", "dtype=float32",
              "pairs=file", f"pairs.path={pairs_file}", "hooks=all", "batch_size=1", "analysis.png=false"],
             module="interp.shards")
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["shards"] == 2 and out["pairs"] == 8
    one = run(_cfg(pairs_file), tmp_path / "one")
    _same_tables(one, tmp_path / "sh" / "merged")
