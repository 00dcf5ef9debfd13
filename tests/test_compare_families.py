"""interp.compare across model families (issue 23): three tiny runs of different depth and hook
points compared together, the AtP mass per relative depth, the summary table, the command line."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from interp import compare as C
from tests.conftest import CONF, make_cfg, tokenizer_overrides, write_pairs

pytestmark = pytest.mark.usefixtures("one_thread")

BINS = 4
HOOKS = ["attn_out", "mlp_out", "resid_post"]


def with_atp(run_dir):
    """``python -m interp.patch run=RUN`` with only its attribution patching: RUN/causal/atp.parquet."""
    from hydra import compose, initialize_config_dir

    from interp.causal import run_causal

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="patch", overrides=[
            "progress=false", f"run={run_dir}", "ablation.enabled=false", "patching.enabled=false",
            "atp.validate=0", "figures.enabled=false"])
    run_causal(cfg)
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three tiny random Llamas of 2, 3 and 4 layers (models ``tiny-llama``, ``tiny-3``, ``tiny-4``):
    the first with z (and z_head) besides the standard hook points, the last without attn_out; AtP
    for the first two."""
    from interp.run import run

    root = tmp_path_factory.mktemp("families")
    p = write_pairs(root / "pairs.jsonl")
    common = ("model=tiny", "device=cpu", "dtype=float32", "pairs=file", f"pairs.path={p}", "analysis.figures=false",
              "analysis.n_saved_pairs=0", *tokenizer_overrides())
    r2 = run(make_cfg(*common, "hooks.points=[resid_post,attn_out,mlp_out,z]"), root / "deep2")
    r3 = run(make_cfg(*common, "hooks=standard", "model.seed=1", "model.config.num_hidden_layers=3",
                      "model.name=tiny-3"), root / "deep3")
    r4 = run(make_cfg(*common, "hooks.points=[resid_post,mlp_out]", "model.seed=2",
                      "model.config.num_hidden_layers=4", "model.name=tiny-4"), root / "deep4")
    return with_atp(r2), with_atp(r3), r4


NAMES = ["tiny-llama", "tiny-3", "tiny-4"]
# relative depth layer / (n_layers - 1) in 4 bins: 2 layers -> 0, 1; 3 layers -> 0, 0.5, 1; 4 layers -> 0, 1/3, 2/3, 1
LAYERS_BY_BIN = {"tiny-llama": {0: [0], 3: [1]}, "tiny-3": {0: [0], 2: [1], 3: [2]},
                 "tiny-4": {0: [0], 1: [1], 2: [2], 3: [3]}}


def n_stable_by_hand(stab: pd.DataFrame, hook: str, layers: list[int]) -> tuple[int, int]:
    """The runs' own rule (equivalence, the default): ratio_hi < 0.5, never constant, offset or massive."""
    d = stab[(stab["hook"] == hook) & stab["layer"].isin(layers) & (stab["position"] == "edit")]
    ok = (d["ratio_hi"] < 0.5) & ~(d["constant"].astype(bool) | d["offset_dim"].astype(bool) | d["massive"].astype(bool))
    return int(ok.sum()), len(d)


def atp_mass_by_hand(run_dir, n_layers: int, position: str = "edit") -> pd.DataFrame:
    """From the run's causal/atp.parquet: sum |atp_mean| per hook x depth bin, over the hook point's sum
    (mass) and over the sum of every hook point but z_head (mass_run)."""
    atp = pd.read_parquet(run_dir / "causal" / "atp.parquet")
    atp = atp[atp["position"] == position]
    rel = atp["layer"] / (n_layers - 1)
    atp = atp.assign(bin=np.minimum(np.floor(rel * BINS + 1e-9), BINS - 1).astype(int), a=atp["atp_mean"].abs())
    s = atp.groupby(["hook", "bin"])["a"].sum().rename("sum").reset_index()
    s["mass"] = s["sum"] / s.groupby("hook")["sum"].transform("sum")
    s["mass_run"] = s["sum"] / s.loc[s["hook"] != "z_head", "sum"].sum()
    return s


# ---------------------------------------------------------------------------------- labels, pure parts


def test_labels_are_model_names_folders_where_models_coincide_and_letters_where_folders_do_too(tmp_path):
    def sides(models, folders):
        return [SimpleNamespace(model=m, dir=tmp_path / f) for m, f in zip(models, folders)]

    assert C.labels(sides(["gpt2", "pythia-70m", "llama"], ["a", "b", "c"])) == ["gpt2", "pythia-70m", "llama"]
    assert C.labels(sides(["gpt2", "pythia-70m", "gpt2"], ["trained", "p", "seed1"])) == ["trained", "pythia-70m",
                                                                                           "seed1"]
    assert C.labels(sides(["gpt2", "gpt2"], ["x/run", "y/run"])) == ["A:run", "B:run"]
    assert C.labels(sides([None, "m"], ["old", "new"])) == ["old", "m"]  # no model name: the folder
    assert C.labels(sides(["a", "b"], ["x", "y"]), ["one", "two"]) == ["one", "two"]
    with pytest.raises(C.CompareError, match="3 names .* for 2 runs"):
        C.labels(sides(["a", "b"], ["x", "y"]), ["one", "two", "three"])
    with pytest.raises(C.CompareError, match="distinct"):
        C.labels(sides(["a", "b"], ["x", "y"]), ["one", "one"])


def test_stable_only_in_asks_every_other_run_with_a_known_share_to_have_none():
    t = pd.DataFrame({"run": ["A", "B", "C"] * 3, "hook": "h", "bin": [0] * 3 + [1] * 3 + [2] * 3,
                      "share_stable": [0.2, 0.0, 0.0,     # only A
                                       0.2, 0.1, 0.0,     # A and B: neither alone
                                       0.0, 0.3, np.nan]})  # B; C unknown does not count
    assert C.stable_only_in(t, ["A", "B", "C"]) == {"A": [{"hook": "h", "bin": 0, "share": 0.2}], "C": [],
                                                     "B": [{"hook": "h", "bin": 2, "share": 0.3}]}


def test_the_causal_file_names_are_interp_patch_s():
    from interp.causal import checks

    assert (C.CAUSAL, C.ATP) == (checks.CAUSAL, checks.ATP)


# ---------------------------------------------------------------------------------- three runs


def test_three_runs_of_different_depth_are_binned_by_relative_depth_and_counted_by_hand(runs, tmp_path):
    s = C.compare(*runs, out=tmp_path / "cmp", bins=BINS, figures=False)
    table = pd.read_parquet(tmp_path / "cmp" / C.COMPARE)
    assert list(dict.fromkeys(table["run"])) == NAMES == list(s["runs"])  # labels: the model names, in order
    for run_dir, name in zip(runs, NAMES):
        stab = pd.read_parquet(run_dir / "stability.parquet")
        r = s["runs"][name]
        assert (r["n_layers"], r["d_model"], r["family"], r["architecture"]) == (
            len(LAYERS_BY_BIN[name]), 64, "llama", "LlamaForCausalLM")
        for hook in ("resid_post", "mlp_out"):
            rows = table[(table["run"] == name) & (table["hook"] == hook)]
            assert rows["bin"].tolist() == sorted(LAYERS_BY_BIN[name])
            for b, layers in LAYERS_BY_BIN[name].items():
                row = rows[rows["bin"] == b].iloc[0]
                n_stable, n = n_stable_by_hand(stab, hook, layers)
                assert row["layers"] == ",".join(map(str, layers)) and row["n_components"] == n == 64 * len(layers)
                assert (row["n_stable"], row["share_stable"]) == (n_stable, pytest.approx(n_stable / n))
                assert row["n_layers"] == r["n_layers"] and row["model"] == name
    div = pd.read_parquet(tmp_path / "cmp" / C.COMPARE_DIVERGENCE)
    assert list(dict.fromkeys(div["run"])) == NAMES
    raw = pd.read_parquet(runs[2] / "divergence.parquet")
    raw = raw[(raw["category"] == "all") & (raw["hook"] == "mlp_out") & (raw["offset"] == 0) & (raw["layer"] == 1)]
    got = div[(div["run"] == "tiny-4") & (div["hook"] == "mlp_out") & (div["bin"] == 1) & (div["offset"] == 0)]
    assert got["normalized"].iloc[0] == pytest.approx(raw["normalized"].iloc[0])


def test_a_hook_point_one_run_lacks_is_absent_for_it_and_kept_for_the_others(runs, tmp_path):
    from interp.figures.compare import depth_profile

    s = C.compare(*runs, out=tmp_path / "cmp", bins=BINS, figures=False)
    table = pd.read_parquet(tmp_path / "cmp" / C.COMPARE)
    assert set(table.loc[table["run"] == "tiny-4", "hook"]) == {"mlp_out", "resid_post"}
    for name in ("tiny-llama", "tiny-3"):
        assert (table.loc[(table["run"] == name) & (table["hook"] == "attn_out"), "n_components"] > 0).all()
    assert s["hooks"] == ["attn_out", "mlp_out", "resid_post", "z", "z_head"]
    assert s["runs"]["tiny-4"]["missing_hooks"] == ["attn_out", "z", "z_head"]
    assert s["runs"]["tiny-3"]["missing_hooks"] == ["z", "z_head"] and s["runs"]["tiny-llama"]["missing_hooks"] == []
    assert "attn_out" not in s["totals"]["tiny-4"] and s["totals"]["tiny-3"]["attn_out"]["n_components"] == 192
    # in the figures: the attn_out panel has a line for each run that has it, the legend each run once
    fig = depth_profile(table, "share_stable", NAMES, BINS, "edit")
    panel = [t.name.split(" (")[0] for t in fig.data if t.xaxis == "x"]  # attn_out, the first panel
    assert panel == ["tiny-llama", "tiny-3"]
    assert sorted(t.name.split(" (")[0] for t in fig.data if t.showlegend) == sorted(NAMES)
    assert len({t.line.color for t in fig.data}) == 3


def test_atp_mass_per_depth_bin_sums_to_one_and_is_the_recount_of_the_atp_table(runs, tmp_path):
    s = C.compare(*runs, out=tmp_path / "cmp", bins=BINS, figures=True, png=False)
    table = pd.read_parquet(tmp_path / "cmp" / C.COMPARE)
    for run_dir, name, n_layers in ((runs[0], "tiny-llama", 2), (runs[1], "tiny-3", 3)):
        t = table[table["run"] == name]
        assert s["runs"][name]["atp"]["status"] == "ok"
        sums = t.groupby("hook")["atp_mass"].sum()
        np.testing.assert_allclose(sums.to_numpy(), 1.0, rtol=1e-12)
        assert t.loc[t["hook"] != "z_head", "atp_mass_run"].sum() == pytest.approx(1.0)
        want = atp_mass_by_hand(run_dir, n_layers)
        got = t[["hook", "bin", "atp_abs_sum", "atp_mass", "atp_mass_run"]].merge(want, on=["hook", "bin"],
                                                                                  how="outer")
        assert len(got) == len(want) == len(t)  # every bin of the AtP table is a row of compare.parquet
        np.testing.assert_allclose(got["atp_abs_sum"], got["sum"], rtol=1e-9)
        np.testing.assert_allclose(got["atp_mass"], got["mass"], rtol=1e-9)
        np.testing.assert_allclose(got["atp_mass_run"], got["mass_run"], rtol=1e-9)
    assert set(table.loc[table["run"] == "tiny-llama", "hook"]) >= {"z", "z_head"}
    # tiny-4 has no causal/: NaN, and compare.json says why
    assert table.loc[table["run"] == "tiny-4", list(C.ATP_COLUMNS)].isna().all().all()
    assert s["runs"]["tiny-4"]["atp"]["status"].startswith("no causal/atp.parquet")
    assert s["atp"]["runs"] == ["tiny-llama", "tiny-3"] and s["atp"]["figure"] and "note" not in s["atp"]
    assert "compare_atp_mass.html" in s["figures"]["html"]
    assert (tmp_path / "cmp" / "figures" / "compare_atp_mass.html").exists()
    # at another position, AtP's own rows of that position
    C.compare(*runs[:2], out=tmp_path / "after", bins=BINS, position="after", figures=False)
    t = pd.read_parquet(tmp_path / "after" / C.COMPARE)
    want = atp_mass_by_hand(runs[1], 3, "after").set_index(["hook", "bin"])["mass"]
    got = t[t["run"] == "tiny-3"].set_index(["hook", "bin"])["atp_mass"]
    np.testing.assert_allclose(got.loc[want.index], want, rtol=1e-9)


def test_runs_without_atp_give_nan_no_atp_figure_and_compare_json_says_so(runs, tmp_path):
    bare = tmp_path / "bare"  # the first run without its causal/ folder
    shutil.copytree(runs[0], bare, ignore=shutil.ignore_patterns("causal"))
    unfinished = tmp_path / "unfinished"  # causal/atp.parquet of a patch that did not finish
    shutil.copytree(runs[1], unfinished)
    (unfinished / "causal" / "manifest.json").unlink()
    s = C.compare(bare, unfinished, runs[2], out=tmp_path / "cmp", bins=BINS, figures=True, png=False)
    table = pd.read_parquet(tmp_path / "cmp" / C.COMPARE)
    assert table[list(C.ATP_COLUMNS)].isna().all().all() and table["n_components"].gt(0).all()
    assert s["atp"]["runs"] == [] and s["atp"]["figure"] is False and "no run has AtP" in s["atp"]["note"]
    assert "incomplete" in s["runs"]["tiny-3"]["atp"]["status"]
    assert "compare_atp_mass.html" not in s["figures"]["html"] and "compare_share_stable.html" in s["figures"]["html"]
    assert not (tmp_path / "cmp" / "figures" / "compare_atp_mass.html").exists()
    js = json.loads((tmp_path / "cmp" / C.COMPARE_JSON).read_text())
    assert js["atp"]["note"] == s["atp"]["note"]
    assert not any(c.startswith("atp ") for c in pd.read_csv(tmp_path / "cmp" / C.COMPARE_SUMMARY).columns)
    # AtP without the compared position: NaN as well
    s = C.compare(*runs[:2], out=tmp_path / "last", bins=BINS, position="last", figures=False)
    assert s["atp"]["runs"] == [] and "position 'last' not in causal/atp.parquet" in s["runs"]["tiny-3"]["atp"]["status"]
    assert pd.read_parquet(tmp_path / "last" / C.COMPARE)["atp_mass"].isna().all()


def test_the_summary_table_has_a_row_per_run_and_hook_with_the_shares_per_depth_bin(runs, tmp_path):
    s = C.compare(*runs, out=tmp_path / "cmp", bins=BINS, figures=False)
    table = pd.read_parquet(tmp_path / "cmp" / C.COMPARE)
    wide = pd.read_csv(tmp_path / "cmp" / C.COMPARE_SUMMARY, keep_default_na=False, na_values=[""])
    assert C.COMPARE_SUMMARY in s["files"] and C.COMPARE_SUMMARY_MD in s["files"]
    assert list(zip(wide["run"], wide["hook"])) == [(n, h) for n in NAMES for h in s["runs"][n]["hooks"]]
    bins = ["0-0.25", "0.25-0.5", "0.5-0.75", "0.75-1"]
    assert [c for c in wide.columns if c.startswith("stable ")] == [f"stable {b}" for b in bins]
    assert [c for c in wide.columns if c.startswith("atp ")] == [f"atp {b}" for b in bins]
    for _, row in wide.iterrows():
        r = s["runs"][row["run"]]
        assert (row["n_layers"], row["d_model"], row["family"], row["architecture"]) == (
            r["n_layers"], r["d_model"], r["family"], r["architecture"])
        assert row["accuracy"] == pytest.approx(r["accuracy"]["all_grammar"]["accuracy"])
        assert row["hooks"].split() == r["hooks"]
        assert (row["missing_hooks"].split() if isinstance(row["missing_hooks"], str) else []) == r["missing_hooks"]
        assert row["share_stable"] == pytest.approx(s["totals"][row["run"]][row["hook"]]["share_stable"])
        t = table[(table["run"] == row["run"]) & (table["hook"] == row["hook"])].set_index("bin")
        for b, label in enumerate(bins):
            for col, prefix in (("share_stable", "stable"), ("atp_mass", "atp")):
                want = t[col].get(b, np.nan)
                assert (np.isnan(want) and np.isnan(row[f"{prefix} {label}"])) or row[f"{prefix} {label}"] == \
                    pytest.approx(want)
    md = (tmp_path / "cmp" / C.COMPARE_SUMMARY_MD).read_text().splitlines()
    assert len(md) == len(wide) + 2 and md[0].startswith("| run | model | family |")


# ---------------------------------------------------------------------------------- calls and the command line


def test_the_command_line_with_three_runs_writes_every_file_into_the_default_folder(runs, capsys):
    C.main([*map(str, runs), "--no-png", "--bins", str(BINS)])
    out = runs[0] / "compare_3runs"
    for f in (C.COMPARE, C.COMPARE_DIVERGENCE, C.COMPARE_SUMMARY, C.COMPARE_SUMMARY_MD, C.COMPARE_JSON,
              "figures/plotly.min.js", "figures/compare_share_stable.html", "figures/compare_divergence.html",
              "figures/compare_atp_mass.html", "figures/compare_accuracy.html"):
        assert (out / f).exists(), f
    text = capsys.readouterr().out
    assert f"compare -> {out}" in text and "lacks hook points: attn_out, z, z_head" in text
    assert "family llama (LlamaForCausalLM), d_model 64" in text
    assert json.loads((out / C.COMPARE_JSON).read_text())["runs"]["tiny-4"]["n_layers"] == 4


def test_names_label_the_runs_and_wrong_names_are_one_line_and_status_2(runs, tmp_path, capsys):
    C.main([*map(str, runs), "--no-figures", "--names", "gpt2, pythia,llama", "--out", str(tmp_path / "n")])
    assert list(dict.fromkeys(pd.read_parquet(tmp_path / "n" / C.COMPARE)["run"])) == ["gpt2", "pythia", "llama"]
    capsys.readouterr()
    for names in ("a,b", "a,a,b"):
        with pytest.raises(SystemExit) as err:
            C.main([*map(str, runs), "--no-figures", "--names", names, "--out", str(tmp_path / "bad")])
        assert err.value.code == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()
    with pytest.raises(SystemExit) as err:
        C.main([str(runs[0])])
    assert err.value.code == 2
    with pytest.raises(C.CompareError, match="two or more runs"):
        C.compare(runs[0], out=tmp_path / "one")


def test_the_two_run_call_keeps_its_default_folder_and_positional_out(runs, tmp_path):
    s = C.compare(runs[0], runs[1], bins=BINS, figures=False)
    assert s["out"] == str(runs[0] / "compare_deep3") and list(s["runs"]) == ["tiny-llama", "tiny-3"]
    C.compare(runs[0], runs[1], tmp_path / "positional", bins=BINS, figures=False)  # compare(run_a, run_b, out)
    assert (tmp_path / "positional" / C.COMPARE).exists()
    s = C.compare([*runs], out=tmp_path / "listed", bins=BINS, figures=False)  # one list of runs
    assert list(s["runs"]) == NAMES
    # a third positional argument that is a run dir is a run; a folder with other files is not taken as out
    assert list(C.compare(*runs, bins=BINS, figures=False)["runs"]) == NAMES
    other = tmp_path / "notes"
    other.mkdir()
    (other / "x.txt").write_text("mine")
    from interp.result import RunDirError

    with pytest.raises(RunDirError):
        C.compare(runs[0], runs[1], other, bins=BINS, figures=False)
    assert [p.name for p in other.iterdir()] == ["x.txt"]
