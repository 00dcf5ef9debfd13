"""What a run dir keeps of its statistics (issue 20, "run-dir size"): the mergeable state only
where a run needs it (``analysis.save_state``), its counts stored compact, per-category tables
only up to a size (``analysis.by_category``; without them the state keeps blocks of categories),
and all of it still exact: merged shards equal one pass, a resumed run equals an uninterrupted one,
and the viewer's pages work on a run without ``stability_by_category.parquet``."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors import safe_open

from interp import merge, rundir as R, shards
from interp.hooks import HookSite
from interp.merge import MergeError, merge_runs
from interp.run import run
from interp.run.state import state_groups
from interp.stats import DiffStats
from interp.stats.moments import Sums, compact_counts, expand_counts
from tests.conftest import make_cfg, tokenizer_overrides
from tests.test_cli import _exit, _one_line_error
from tests.test_scale import _same_tables

pytestmark = pytest.mark.usefixtures("one_thread")

# preposition, article: grammar; subject, location, adjective: semantic (tests/conftest.py PAIR_ROWS)
OFF = ("analysis.by_category=false",)
# a contrast of two categories: blocks preposition | subject | the other grammar | the other semantic
OFF_CATS = ("analysis.by_category=false", "analysis.contrast=[preposition,subject]")


def _cfg(pairs_file, *extra):
    return make_cfg("model=tiny", "device=cpu", "dtype=float32", "pairs=file", f"pairs.path={pairs_file}",
                    "hooks.points=[resid_post,z]", "batch_size=1", "analysis.png=false", "analysis.figures=false",
                    "progress=false", *tokenizer_overrides(), *extra)


def _state(run_dir):
    with safe_open(str(run_dir / R.STATS), framework="pt") as f:
        return f.metadata(), {k: f.get_tensor(k) for k in f.keys()}


# ------------------------------------------------------------------ exactness


@pytest.mark.parametrize("extra", [(), OFF, OFF_CATS], ids=["by_category", "off", "off_two_categories"])
def test_merged_shards_equal_one_pass_with_and_without_per_category_tables(pairs_file, tmp_path, extra):
    one = run(_cfg(pairs_file, *extra), tmp_path / "one")
    parts = [run(_cfg(pairs_file, *extra, f"shard.index={i}", "shard.count=2"), tmp_path / f"s{i}") for i in range(2)]
    merged = merge_runs(parts, tmp_path / "merged")
    _same_tables(one, merged)
    assert (one / R.STABILITY_BY_CATEGORY).exists() == (not extra)
    div = R.read_table(merged, R.DIVERGENCE)
    assert (set(div["category"]) == {"all"}) == bool(extra)  # per-category rows only with the table
    m = R.read_manifest(merged)
    assert m["groups"] == ["adjective", "article", "location", "preposition", "subject"]
    assert m["by_category"]["written"] == (not extra)
    meta, _ = _state(parts[0])
    if extra == OFF:
        assert json.loads(meta["members"]) == {"semantic": ["adjective", "location", "subject"],
                                               "grammar": ["article", "preposition"]}
    if extra == OFF_CATS:
        assert json.loads(meta["members"]) == {"other:semantic": ["adjective", "location"],
                                               "other:grammar": ["article"], "preposition": ["preposition"],
                                               "subject": ["subject"]}
        ct = R.read_table(merged, R.CONTRAST)
        assert set(ct["group_a"]) == {"preposition"} and set(ct["group_b"]) == {"subject"}
        assert ct["n_a"].max() == 2 and ct["n_b"].max() == 2


def test_without_per_category_tables_the_tables_over_all_pairs_are_the_same(pairs_file, tmp_path):
    on = run(_cfg(pairs_file), tmp_path / "on")
    off = run(_cfg(pairs_file, *OFF), tmp_path / "off")
    for name in (R.STABILITY, R.CONTRAST, R.DIRECTIONS):
        a, b = R.read_table(on, name), R.read_table(off, name)
        pd.testing.assert_frame_equal(a, b, check_exact=False, atol=1e-12, rtol=1e-9)
    div_on = R.read_table(on, R.DIVERGENCE)
    div_on = div_on[div_on["category"] == "all"].reset_index(drop=True)
    pd.testing.assert_frame_equal(div_on, R.read_table(off, R.DIVERGENCE), check_exact=False, atol=1e-12)


@pytest.mark.parametrize("extra", [OFF, ("analysis.by_category=true",)], ids=["off", "on"])
def test_a_resumed_run_equals_an_uninterrupted_one_with_and_without_per_category_tables(
        pairs_file, tmp_path, monkeypatch, extra):
    extra = (*extra, "batch_size=2")  # 4 batches (a shard's batches differ; a resumed run's are the same)
    whole = run(_cfg(pairs_file, *extra), tmp_path / "whole")

    class Killed(BaseException):
        pass

    def kill(code):
        raise Killed(code)

    args = (*extra, "checkpoint_every=1")
    monkeypatch.setenv("INTERP_CRASH_AFTER_BATCH", "2")
    monkeypatch.setattr(os, "_exit", kill)
    with pytest.raises(Killed):
        run(_cfg(pairs_file, *args), tmp_path / "r")
    monkeypatch.undo()
    progress = json.loads((tmp_path / "r" / "checkpoint" / "progress.json").read_text())
    assert progress["batches_done"] == 2
    gen = tmp_path / "r" / "checkpoint" / progress["generation"]
    with safe_open(str(gen / "stats.safetensors"), framework="pt") as f:  # the checkpoint's state: its own
        n, s1 = f.get_tensor("diff/resid_post/n"), f.get_tensor("diff/resid_post/s1")
    assert n.shape[-1] == 1 and s1.shape[-1] == 64 and s1.shape[1] == (2 if OFF[0] in extra else 5)
    resumed = run(_cfg(pairs_file, *args), tmp_path / "r")
    assert R.read_manifest(resumed)["counts"]["resumed_from_batch"] == 2
    assert not (resumed / R.STATS).exists()  # not a shard: the run dir has no state, the checkpoint had its own
    _same_tables(whole, resumed)


def _filled_stats(n_groups: int = 3) -> DiffStats:
    """A DiffStats whose sums were filled from random values, one component left NaN for a pair."""
    sites = [HookSite("resid_post", 0, "blocks.0.hook_resid_post", "dim"),
             HookSite("resid_post", 1, "blocks.1.hook_resid_post", "dim")]
    st = DiffStats(sites, [f"g{i}" for i in range(n_groups)])
    g = torch.Generator().manual_seed(0)
    shape = (2, n_groups, 5, 3, 7)
    x = torch.randn(11, 2, 5, 3, 7, generator=g, dtype=torch.float64)
    x[:, :, :, 2] = torch.where(torch.arange(11)[:, None, None, None] < 4, float("nan"), x[:, :, :, 2])  # 'after'
    group = torch.arange(11) % n_groups
    st.diff["resid_post"] = Sums.zeros(shape, torch.zeros((2, 1, 5, 3, 7), dtype=torch.float64))
    st.diff["resid_post"].add_grouped_(0, x, group, n_groups)
    y = x.clone()
    y[3, 1, 0, 0, 4] = float("nan")  # one component of one site misses one value: its counts differ
    st.profile["resid_post"] = Sums.zeros(shape, torch.full((2, 1, 5, 3, 7), 0.5, dtype=torch.float64))
    st.profile["resid_post"].add_grouped_(0, y, group, n_groups)
    st.spread["resid_post"] = Sums(torch.zeros(2, 7, dtype=torch.float64), torch.full((2, 7), 9.0),
                                   torch.randn(2, 7, generator=g, dtype=torch.float64),
                                   torch.rand(2, 7, generator=g, dtype=torch.float64) + 3)
    return st


def test_compact_counts_round_trip_exactly():
    st = _filled_stats()
    state = st.state_dict()
    assert state["diff/resid_post/n"].shape == (2, 3, 5, 3, 1)  # one count per site, group, channel, mode
    assert state["spread/resid_post/n"].shape == (2, 1)
    assert state["profile/resid_post/n"].shape == (2, 3, 5, 3, 7)  # counts differ along the components: kept whole
    back = DiffStats(st.sites, st.groups)
    back.load_state_dict(state)
    for kind in ("diff", "spread", "profile"):
        a, b = getattr(st, kind)["resid_post"], getattr(back, kind)["resid_post"]
        for k in ("n", "s1", "s2", "shift"):
            assert torch.equal(getattr(a, k if k != "n" else "_n"), getattr(b, k if k != "n" else "_n")), (kind, k)
    n = back.diff["resid_post"].n
    assert n.is_contiguous() and n.stride()[-1] == 1  # a tensor of its own: the next batch adds into it
    n += 1
    assert torch.equal(compact_counts(torch.ones(3, 1)), torch.ones(3, 1))
    with pytest.raises(ValueError, match="does not fit"):
        expand_counts(torch.ones(2, 1), (3, 4))


def test_the_compact_state_file_loads_to_the_same_tables(pairs_file, tmp_path):
    d = run(_cfg(pairs_file, "analysis.save_state=true"), tmp_path / "r")
    meta, state = _state(d)
    assert state["diff/resid_post/n"].shape[-1] == 1 and state["diff/resid_post/s1"].shape[-1] == 64
    from omegaconf import OmegaConf

    stats, _ = merge.load_stats(d, OmegaConf.create(R.read_manifest(d)["config"]))
    assert stats.diff["resid_post"].n.shape == stats.diff["resid_post"].s1.shape
    stab = stats.table()
    pd.testing.assert_series_equal(stab["mean_abs_diff"], R.read_table(d, R.STABILITY)["mean_abs_diff"])


# ------------------------------------------------------------------ which files


def test_save_state_auto_writes_the_state_for_shards_only_and_merge_says_how_to_get_it(pairs_file, tmp_path, capsys):
    single = run(_cfg(pairs_file), tmp_path / "single")
    assert not (single / R.STATS).exists()
    m = R.read_manifest(single)
    assert m["state"]["saved"] is False and "analysis.save_state=true" in m["state"]["reason"]
    s0 = run(_cfg(pairs_file, "shard.index=0", "shard.count=2"), tmp_path / "s0")
    assert (s0 / R.STATS).exists() and R.read_manifest(s0)["state"]["saved"] is True
    s1 = run(_cfg(pairs_file, "shard.index=1", "shard.count=2", "analysis.save_state=false"), tmp_path / "s1")
    assert not (s1 / R.STATS).exists()
    with pytest.raises(MergeError, match="analysis.save_state=true"):
        merge_runs([s0, s1], tmp_path / "m")
    code, _, err = _exit(merge.main, [str(s0), str(s1), "--out", str(tmp_path / "m")], capsys)
    line = _one_line_error(err, "interp.merge")
    assert code == 2 and f"{s1}: no {R.STATS}" in line and "analysis.save_state=true" in line
    assert not (tmp_path / "m" / R.MANIFEST).exists()
    # the setting writes no number: the same config with the state, into the same run dir, replaces it
    again = run(_cfg(pairs_file, "analysis.save_state=true"), tmp_path / "single")
    assert (again / R.STATS).exists() and R.read_manifest(again)["config_hash"] == m["config_hash"]


def test_the_shards_command_refuses_a_setting_that_leaves_nothing_to_merge(tmp_path, capsys):
    argv = ["--n", "2", "--out", str(tmp_path / "sh"), "--", "model=tiny", "analysis.save_state=false"]
    code, _, err = _exit(shards.main, argv, capsys)
    assert code == 2 and "analysis.save_state=false" in _one_line_error(err, "interp.shards")
    assert not (tmp_path / "sh").exists()


def test_auto_per_category_tables_switch_off_above_the_row_limit_and_the_run_says_why(pairs_file, tmp_path):
    small = run(_cfg(pairs_file), tmp_path / "small")
    bc = R.read_manifest(small)["by_category"]
    # rows: (64 resid_post + 64 z + 4 z_head) x 2 layers x 3 positions x 5 categories
    assert bc == {"setting": "auto", "rows": 3960, "max_rows": 1_000_000, "written": True}
    assert (small / R.STABILITY_BY_CATEGORY).exists()
    big = run(_cfg(pairs_file, "analysis.by_category_max_rows=3959"), tmp_path / "big")
    bc = R.read_manifest(big)["by_category"]
    assert bc["written"] is False and bc["rows"] == 3960
    assert bc["reason"] == "3,960 rows > analysis.by_category_max_rows=3,959"
    assert bc["state_groups"] == {"semantic": ["adjective", "location", "subject"], "grammar": ["article", "preposition"]}
    assert not (big / R.STABILITY_BY_CATEGORY).exists()
    from interp import load_run

    line = [ln for ln in load_run(big).summary().splitlines() if "stability_by_category" in ln]
    assert line == ["stability_by_category.parquet not written (3,960 rows > analysis.by_category_max_rows=3,959): "
                    "analysis.by_category=true writes it"]
    _, state = _state(run(_cfg(pairs_file, "analysis.by_category_max_rows=3959", "analysis.save_state=true"),
                          tmp_path / "big_state"))
    assert state["diff/resid_post/s1"].shape[1] == 2  # two blocks of categories instead of five


def test_state_groups_are_the_coarsest_blocks_the_tables_need():
    cats = ["a", "b", "c", "x", "y"]
    types = {"a": "grammar", "b": "grammar", "c": "grammar", "x": "semantic", "y": "semantic"}
    assert state_groups(cats, types, None, per_category=True) == (cats, None)
    assert state_groups(cats, types, None, per_category=False) == (
        ["grammar", "semantic"], {"grammar": ["a", "b", "c"], "semantic": ["x", "y"]})
    assert state_groups(cats, types, "skipped: no kept pairs of 'tense' in this run", per_category=False)[0] == \
        ["grammar", "semantic"]
    sides = [("b", ["b"]), ("semantic", ["x", "y"])]
    assert state_groups(cats, types, sides, per_category=False) == (
        ["other:grammar", "b", "semantic"], {"other:grammar": ["a", "c"], "b": ["b"], "semantic": ["x", "y"]})
    st = DiffStats([], ["other:grammar", "b", "semantic"],
                   members={"other:grammar": ["a", "c"], "b": ["b"], "semantic": ["x", "y"]})
    assert st.group_index(["a", "b", "c"]) == [0, 1] and st.group_index(["y", "x"]) == [2]
    with pytest.raises(ValueError, match="analysis.by_category=true"):
        st.group_index(["a"])


# ------------------------------------------------------------------ the viewer


def test_the_viewer_pages_work_on_a_run_without_per_category_tables(pairs_file, tmp_path):
    from interp.viewer import create_app

    root = tmp_path / "runs"
    d = run(_cfg(pairs_file, "hooks.points=[resid_post,z,mlp_post]", "analysis.by_category_max_rows=10",
                 "analysis.n_saved_pairs=2"), root / "r")
    assert not (d / R.STABILITY_BY_CATEGORY).exists()
    client = create_app(root).test_client()
    # rows: (64 resid_post + 64 z + 4 z_head + 128 mlp_post) x 2 layers x 3 positions x 5 categories
    note = "stability_by_category.parquet not written (7,800 rows &gt; analysis.by_category_max_rows=10): " \
           "analysis.by_category=true writes it"
    pid = str(R.read_table(d, R.PAIRS)["pair_id"].iloc[0])
    pages = {"/run/r": None, "/run/r/-/table": note, "/run/r/-/layer/1": note,
             "/run/r/-/component/resid_post/1/3": note, "/run/r/-/neuron/0/5": note, "/run/r/-/head/1/2": note,
             "/run/r/-/divergence": None, "/run/r/-/pairs": None, f"/run/r/-/pair/{pid}": None}
    for url, says in pages.items():
        r = client.get(url)
        page = r.get_data(as_text=True)
        assert r.status_code == 200, (url, page[:300])
        if says:
            assert says in page, url
    r = client.get("/run/r/-/table?t=by_category")
    assert r.status_code == 404 and note in r.get_data(as_text=True)


def test_a_16_bit_run_saves_its_activations_in_its_dtype_and_the_viewer_reads_them(pairs_file, tmp_path):
    from safetensors.torch import load_file

    from interp.viewer import create_app

    d = run(_cfg(pairs_file, "dtype=bfloat16", "analysis.n_saved_pairs=2"), tmp_path / "runs" / "bf16")
    acts = load_file(str(d / R.ACTIVATIONS))
    assert acts["blocks.1.hook_resid_post"].dtype == torch.bfloat16  # the values as the model made them
    assert acts["tokens"].dtype == torch.int64
    client = create_app(tmp_path / "runs").test_client()
    page = client.get("/run/bf16/-/component/resid_post/1/3")
    assert page.status_code == 200 and "In the saved pairs" in page.get_data(as_text=True)
    x = acts["blocks.1.hook_resid_post"][0].float().numpy()
    from interp.viewer.store import SavedTensors

    assert np.array_equal(SavedTensors(d / R.ACTIVATIONS).get("blocks.1.hook_resid_post", 0), x)
