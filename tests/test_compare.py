"""interp.compare: two tiny runs of different depth, compared per hook point and relative-depth bin."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from interp import compare as C
from interp import rundir as R
from tests.conftest import make_cfg


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    import tests.conftest as conftest
    from interp.run import run

    root = tmp_path_factory.mktemp("compare")
    p = conftest.pairs_file.__wrapped__(root)  # the pairs_file fixture's JSONL, written once per module
    common = ("model=tiny", "device=cpu", "dtype=float32", "pairs=file", f"pairs.path={p}",
              "analysis.figures=false", "hooks=standard")
    a = run(make_cfg(*common), root / "run_a")
    b = run(make_cfg(*common, "model.seed=1", "model.config.num_hidden_layers=3"), root / "run_b")
    return a, b


def hand_share(stab: pd.DataFrame, hook: str, layers: list[int], alpha: float = 0.05, position: str = "edit",
               rule: str = "significance", stable_ratio: float = 0.5):
    """(stable, components) of some rows, counted by hand: equivalence = ratio_hi < stable_ratio,
    significance = q < alpha and t < 0; never constant or flagged (offset_dim, massive; older tables:
    massive is the offset flag)."""
    d = stab[(stab["hook"] == hook) & (stab["layer"].isin(layers)) & (stab["position"] == position)]
    flagged = d["constant"].astype(bool) | d["massive"].astype(bool)
    if "offset_dim" in d:
        flagged |= d["offset_dim"].astype(bool)
    ok = (d["ratio_hi"] < stable_ratio) if rule == "equivalence" else (d["q_value"] < alpha) & (d["t_stat"] < 0)
    return int((ok & ~flagged).sum()), len(d)


def test_relative_depth_puts_first_and_last_layers_at_0_and_1_whatever_the_depth():
    assert C.relative_depth([0, 1], 2).tolist() == [0.0, 1.0]
    assert C.relative_depth([0, 1, 2], 3).tolist() == [0.0, 0.5, 1.0]
    assert C.relative_depth([0], 1).tolist() == [0.0]


def test_depth_bins_are_half_open_with_the_last_layer_in_the_last_bin():
    assert C.depth_bin([0.0, 0.5, 1.0], 2).tolist() == [0, 1, 1]
    assert C.depth_bin([0.0, 0.1, 0.29, 1 / 3, 1.0], 3).tolist() == [0, 0, 0, 1, 2]


def test_stable_means_significant_smaller_than_control_and_not_massive():
    df = pd.DataFrame({"q_value": [0.01, 0.01, 0.2, 0.01], "t_stat": [-3.0, 2.0, -3.0, -3.0],
                       "massive": [False, False, False, True]})
    assert C.stable_mask(df, 0.05).tolist() == [1.0, 0.0, 0.0, 0.0]


def test_the_two_rules_count_a_table_differently_and_unknown_is_not_none():
    df = pd.DataFrame({"q_value": [0.01, 0.5, 0.001, 0.001, 0.001], "t_stat": [-3.0, 1.0, -5.0, -5.0, -5.0],
                       "ratio_hi": [0.9, 0.3, 0.1, 0.1, 0.1], "offset_dim": [False, False, False, True, False],
                       "massive": [False, False, False, False, True]})
    assert C.stable_mask(df, rule="significance").tolist() == [1.0, 0.0, 1.0, 0.0, 0.0]
    assert C.stable_mask(df, rule="equivalence").tolist() == [0.0, 1.0, 1.0, 0.0, 0.0]
    assert C.stable_mask(df, rule="equivalence", stable_ratio=0.05).tolist() == [0.0] * 5
    # an older table (no ratio_hi) under the equivalence rule, a run without controls: unknown
    assert C.stable_mask(df.drop(columns="ratio_hi"), rule="equivalence").isna().all()
    assert C.stable_mask(df.drop(columns="q_value"), rule="significance").isna().all()


@pytest.mark.parametrize("rule,alpha,ratio", [("significance", 0.05, None), ("significance", 0.5, None),
                                              ("equivalence", None, 0.5), ("equivalence", None, 1.0),
                                              (None, None, None)])
def test_bins_and_shares_match_counts_computed_by_hand_from_the_stability_tables(two_runs, tmp_path, rule, alpha,
                                                                                 ratio):
    a, b = two_runs
    s = C.compare(a, b, tmp_path / "cmp", alpha=alpha, bins=2, figures=False, rule=rule, stable_ratio=ratio)
    used = rule or "equivalence"  # None: each run's own (both runs: the default, equivalence)
    by_hand = {"rule": used, "alpha": alpha or 0.05, "stable_ratio": ratio or 0.5}
    table = pd.read_parquet(tmp_path / "cmp" / C.COMPARE)
    sa, sb = pd.read_parquet(a / "stability.parquet"), pd.read_parquet(b / "stability.parquet")
    assert set(table["run"]) == {"run_a", "run_b"}
    # run_a (2 layers): layer 0 -> bin 0, layer 1 -> bin 1; run_b (3 layers): 0 -> 0, 1 and 2 -> 1
    for run, stab, layers_by_bin in (("run_a", sa, {0: [0], 1: [1]}), ("run_b", sb, {0: [0], 1: [1, 2]})):
        for hook in ("resid_post", "attn_out", "mlp_out"):
            for bin_, layers in layers_by_bin.items():
                row = table[(table["run"] == run) & (table["hook"] == hook) & (table["bin"] == bin_)].iloc[0]
                n_stable, n = hand_share(stab, hook, layers, **by_hand)
                assert (row["rule"], row["null"], row["k"]) == (used, "common", 3)
                assert row["layers"] == ",".join(map(str, layers))
                assert row["n_components"] == n == 64 * len(layers)
                assert row["n_stable"] == n_stable
                assert row["share_stable"] == pytest.approx(n_stable / n)
                d = stab[(stab["hook"] == hook) & stab["layer"].isin(layers) & (stab["position"] == "edit")]
                assert row["median_ratio"] == pytest.approx(float(d["ratio"].median()))
                assert row["median_normalized"] == pytest.approx(float(d["normalized"].median()))
    # totals in compare.json add the bins up
                assert row["median_ratio_hi"] == pytest.approx(float(d["ratio_hi"].median()))
                assert row["median_ratio_lo"] == pytest.approx(float(d["ratio_lo"].median()))
    js = json.loads((tmp_path / "cmp" / C.COMPARE_JSON).read_text())
    assert js["rule"] == used and js["rule_forced"] == (rule is not None)
    for run in ("run_a", "run_b"):
        r = js["runs"][run]
        assert (r["null"], r["rule"], r["own_rule"], r["cluster"]) == ("common", used, "equivalence", "swap")
        assert r["stable_definition"] == js["stable_definition"] and r["stable_definition"].startswith(used)
        assert r["ci_columns"] == ["ratio_lo", "ratio_hi", "adj_lo", "adj_hi"]
    assert s["stable_definition"] == js["stable_definition"]
    n_stable, n = hand_share(sb, "resid_post", [0, 1, 2], **by_hand)
    assert js["totals"]["run_b"]["resid_post"] == {"n_components": n, "n_stable": n_stable,
                                                   "share_stable": pytest.approx(n_stable / n)}
    assert js["runs"]["run_b"]["n_layers"] == 3 and js["runs"]["run_a"]["n_layers"] == 2


def test_a_layer_at_one_third_depth_falls_in_the_middle_of_three_bins(two_runs, tmp_path):
    a, b = two_runs
    C.compare(a, b, tmp_path / "cmp3", bins=3, figures=False)
    table = pd.read_parquet(tmp_path / "cmp3" / C.COMPARE)
    # run_b depths 0, 0.5, 1 -> bins 0, 1, 2; run_a depths 0, 1 -> bins 0, 2 (no bin 1)
    assert sorted(table.loc[(table["run"] == "run_b") & (table["hook"] == "mlp_out"), "bin"]) == [0, 1, 2]
    assert sorted(table.loc[(table["run"] == "run_a") & (table["hook"] == "mlp_out"), "bin"]) == [0, 2]
    mid = table[(table["run"] == "run_b") & (table["hook"] == "mlp_out") & (table["bin"] == 1)].iloc[0]
    assert mid["layers"] == "1"


def test_divergence_is_averaged_over_the_layers_of_each_bin(two_runs, tmp_path):
    a, b = two_runs
    C.compare(a, b, tmp_path / "cmp", bins=2, figures=False)
    div = pd.read_parquet(tmp_path / "cmp" / C.COMPARE_DIVERGENCE)
    raw = pd.read_parquet(b / "divergence.parquet")
    raw = raw[(raw["category"] == "all") & (raw["hook"] == "resid_post") & (raw["offset"] == 0)]
    want = raw[raw["layer"].isin([1, 2])]["normalized"].mean()
    got = div[(div["run"] == "run_b") & (div["hook"] == "resid_post") & (div["bin"] == 1) & (div["offset"] == 0)]
    assert got["normalized"].iloc[0] == pytest.approx(want)


def test_accuracy_side_by_side_is_the_share_of_grammar_pairs_with_positive_margin(two_runs, tmp_path):
    a, b = two_runs
    s = C.compare(a, b, tmp_path / "cmp", figures=False)
    for run, d in (("run_a", a), ("run_b", b)):
        pairs = pd.read_parquet(d / "pairs.parquet")
        g = pairs[pairs["type"] == "grammar"]
        assert s["runs"][run]["accuracy"]["all_grammar"]["n"] == len(g) == 4
        assert s["runs"][run]["accuracy"]["all_grammar"]["accuracy"] == pytest.approx(float((g["margin"] > 0).mean()))
        assert s["runs"][run]["accuracy"]["article"]["n"] == 2


def test_the_command_line_writes_tables_json_and_html_figures_into_the_default_folder(two_runs):
    a, b = two_runs
    C.main([str(a), str(b), "--no-png", "--bins", "2"])
    out = a / "compare_run_b"
    for f in (C.COMPARE, C.COMPARE_DIVERGENCE, C.COMPARE_JSON, "figures/plotly.min.js",
              "figures/compare_share_stable.html", "figures/compare_divergence.html",
              "figures/compare_accuracy.html"):
        assert (out / f).exists(), f
    html = (out / "figures" / "compare_share_stable.html").read_text()
    assert '<script src="plotly.min.js"></script>' in html


def test_a_run_without_controls_has_no_stable_share_but_still_medians(tmp_path, pairs_file):
    from interp.run import run

    common = ("model=tiny", "device=cpu", "dtype=float32", "pairs=file", f"pairs.path={pairs_file}",
              "analysis.figures=false")
    a = run(make_cfg(*common, "analysis.controls.n=0"), tmp_path / "nc")
    b = run(make_cfg(*common), tmp_path / "wc")
    C.compare(a, b, tmp_path / "cmp", bins=2, figures=False)
    table = pd.read_parquet(tmp_path / "cmp" / C.COMPARE)
    nc = table[table["run"] == "nc"]
    assert nc["share_stable"].isna().all() and nc["median_normalized"].notna().all()
    assert table[table["run"] == "wc"]["share_stable"].notna().all()


def test_an_incomplete_run_dir_or_a_missing_position_is_refused_with_a_message(tmp_path, two_runs):
    from interp.result import RunDirError

    with pytest.raises(RunDirError, match="not a run directory"):
        C.compare(tmp_path, two_runs[1], tmp_path / "x", figures=False)
    with pytest.raises(C.CompareError, match="position 'nowhere' not in stability.parquet"):
        C.compare(two_runs[0], two_runs[1], tmp_path / "x", position="nowhere", figures=False)


def test_saved_results_compare_like_their_run_dirs(tmp_path, two_runs):
    import interp

    by_dir = C.compare(*two_runs, tmp_path / "d", bins=2, figures=False)
    by_result = C.compare(*map(interp.load_run, two_runs), tmp_path / "r", bins=2, figures=False)
    assert {k: v for k, v in by_result.items() if k != "out"} == {k: v for k, v in by_dir.items() if k != "out"}
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "r" / C.COMPARE),
                                  pd.read_parquet(tmp_path / "d" / C.COMPARE))


# ---------------------------------------------------------------------------------- rules, nulls, older runs


def test_runs_with_different_rules_are_refused_without_rule(two_runs, tmp_path, capsys):
    from tests import rule_runs as RR

    a, b = two_runs
    sig = RR.with_rule(b, tmp_path / "sig", "significance")
    with pytest.raises(C.CompareError, match=r"different rules: run_a: equivalence: .* sig: significance: .*--rule"):
        C.compare(a, sig, tmp_path / "x", bins=2, figures=False)
    assert not (tmp_path / "x").exists()  # refused before anything is written
    with pytest.raises(SystemExit) as err:
        C.main([str(a), str(sig), "--out", str(tmp_path / "x"), "--no-figures"])
    assert err.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "different rules" in lines[0] and "--rule" in lines[0]
    # one rule with other thresholds is another rule too
    other = RR.with_rule(b, tmp_path / "eq_other", "equivalence")
    R.write_json(other / "manifest.json", {**(m := R.read_manifest(other)), "config": {
        **m["config"], "analysis": {**m["config"]["analysis"], "stable_ratio": 0.3}}})
    with pytest.raises(C.CompareError, match="ratio_hi < 0.3"):
        C.compare(a, other, tmp_path / "x", bins=2, figures=False)
    C.compare(a, other, tmp_path / "x", bins=2, figures=False, stable_ratio=0.3)  # one threshold for both
    # --rule counts both under one rule
    C.main([str(a), str(sig), "--out", str(tmp_path / "y"), "--no-figures", "--bins", "2", "--rule", "significance"])
    out = capsys.readouterr().out
    assert "null: common pool, 3 control edits per pair, cluster: swap" in out
    assert "rule: significance: q_value < 0.05 and t_stat < 0" in out and "(forced by --rule)" in out
    table = pd.read_parquet(tmp_path / "y" / C.COMPARE)
    assert set(table["rule"]) == {"significance"}
    sb = pd.read_parquet(sig / "stability.parquet")
    row = table[(table["run"] == "sig") & (table["hook"] == "mlp_out") & (table["bin"] == 1)].iloc[0]
    assert row["n_stable"] == hand_share(sb, "mlp_out", [1, 2])[0]


def test_a_table_where_the_rules_disagree_gives_each_rule_its_count(two_runs, tmp_path):
    from tests import rule_runs as RR

    a, _ = two_runs
    eq, sig = RR.disagreeing(a, tmp_path / "eq", "equivalence"), RR.disagreeing(a, tmp_path / "sig", "significance")
    with pytest.raises(C.CompareError):
        C.compare(eq, sig, tmp_path / "own", bins=2, figures=False)
    for rule, want in (("equivalence", len(RR.EQ_ONLY)), ("significance", len(RR.SIG_ONLY))):
        s = C.compare(eq, sig, tmp_path / rule, bins=2, figures=False, rule=rule)
        assert s["totals"]["eq"]["resid_post"]["n_stable"] == s["totals"]["sig"]["resid_post"]["n_stable"] == want
    # two runs of one rule compare without --rule, each counted under it
    s = C.compare(eq, RR.disagreeing(a, tmp_path / "eq2", "equivalence"), tmp_path / "same", bins=2, figures=False)
    assert s["totals"]["eq"]["resid_post"]["n_stable"] == len(RR.EQ_ONLY)
    s = C.compare(sig, RR.disagreeing(a, tmp_path / "sig2", "significance"), tmp_path / "same2", bins=2,
                  figures=False)
    assert s["totals"]["sig"]["resid_post"]["n_stable"] == len(RR.SIG_ONLY)


def test_older_run_dirs_still_compare(two_runs, tmp_path):
    from tests import rule_runs as RR

    a, b = two_runs
    oa, ob = RR.legacy(a, tmp_path / "old_a"), RR.legacy(b, tmp_path / "old_b")
    s = C.compare(oa, ob, tmp_path / "old", bins=2, figures=True, png=False)
    table = pd.read_parquet(tmp_path / "old" / C.COMPARE)
    assert set(table["rule"]) == {"significance"} and set(table["null"]) == {"common"}
    assert table["median_ratio_hi"].isna().all() and table["median_ratio"].notna().all()
    sa = pd.read_parquet(oa / "stability.parquet")
    row = table[(table["run"] == "old_a") & (table["hook"] == "resid_post") & (table["bin"] == 0)].iloc[0]
    n_stable, n = hand_share(sa, "resid_post", [0])  # the old massive column (the offset flag) excluded
    assert row["n_stable"] == n_stable and n == 64
    assert s["runs"]["old_a"]["own_rule"] == "significance" and s["runs"]["old_a"]["ci_columns"] == []
    assert s["stable_definition"].startswith("significance: q_value < 0.05")
    assert (tmp_path / "old" / "figures" / "compare_share_stable.html").exists()
    # an older run against a new one: different rules (significance, equivalence) unless --rule
    with pytest.raises(C.CompareError, match="different rules"):
        C.compare(oa, b, tmp_path / "mixed", bins=2, figures=False)
    C.compare(oa, b, tmp_path / "mixed", bins=2, figures=False, rule="significance")
    C.compare(oa, b, tmp_path / "mixed_eq", bins=2, figures=False, rule="equivalence")
    t = pd.read_parquet(tmp_path / "mixed_eq" / C.COMPARE)
    assert t[t["run"] == "old_a"]["share_stable"].isna().all()  # no ratio_hi: unknown, not "none stable"
    assert t[t["run"] == "run_b"]["share_stable"].notna().all()
