"""The figure library (``interp.figures``) on small synthetic tables, and the command lines of
``interp.figures``, ``interp.view`` and ``interp.compare``: --help, and user errors as one line + exit 2."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from interp import figures as F
from interp import rundir as R


def stability(controls: bool = True) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for hook in ("resid_post", "z"):
        for layer in range(3):
            for c in range(8):
                rows.append({"hook": hook, "layer": layer, "component": c, "position": "edit",
                             "head": c // 4 if hook == "z" else None, "head_dim": c % 4 if hook == "z" else None,
                             "normalized": float(rng.uniform(0.1, 2)), "normalized_std": 0.1, "n_pairs": 4,
                             "spread": float(rng.uniform(0.5, 1)), "mean_abs_diff": float(rng.uniform(0.1, 1))})
    d = pd.DataFrame(rows)
    if controls:
        d["control_normalized"] = d["normalized"] * 1.5
        d["q_value"] = np.linspace(0.001, 0.5, len(d))
        d["t_stat"] = -1.0
        d["massive"] = False
        d["rank_calibrated"] = np.arange(len(d))
    return d


def pairs() -> pd.DataFrame:
    return pd.DataFrame({"pair_id": ["p1", "p2", "p3", "p4"], "category": ["art", "art", "prep", "loc"],
                         "type": ["grammar", "grammar", "grammar", "semantic"], "a": list("abcd"), "b": list("efgh"),
                         "margin": [1.0, -0.5, 2.0, 0.3]})


def test_every_figure_takes_a_dataframe_or_a_result_object():
    stab, p = stability(), pairs()
    result = SimpleNamespace(stability=stab, pairs=p, manifest={"status": "complete"})
    for fn, args in ((F.heatmap, ("resid_post", "edit")), (F.ranking, ("edit", 5)), (F.scatter, ("edit",)),
                     (F.layer_profile, (1, "edit"))):
        assert fn(stab, *args).to_json() == fn(result, *args).to_json(), fn.__name__
    assert F.margins(p).to_json() == F.margins(result).to_json()
    with pytest.raises(TypeError, match="stability"):
        F.heatmap(object(), "resid_post")


def test_accuracy_from_the_pairs_uses_the_grammar_pairs_only():
    fig = F.accuracy(SimpleNamespace(pairs=pairs(), manifest={}))
    (bar,) = fig.data
    assert list(bar.x) == ["art", "prep"] and list(bar.y) == [0.5, 1.0] and list(bar.text) == ["n=2", "n=1"]


def test_heatmap_variants_window_heads_and_blocks():
    stab = stability()
    full = F.heatmap(stab, "resid_post", "edit").data[0]
    assert list(full.x) == list(range(8)) and list(full.y) == [0, 1, 2]
    window = F.heatmap(stab, "resid_post", "edit", cstart=2, cwidth=3)
    assert list(window.data[0].x) == [2, 3, 4] and "components 2–4 of 8" in window.layout.title.text
    heads = F.heatmap(stab, "z", "edit", by="head").data[0]
    z = stab[stab["hook"] == "z"]
    assert list(heads.x) == [0, 1]
    assert heads.z[1][0] == pytest.approx(z[(z["layer"] == 1) & (z["head"] == 0)]["normalized"].mean())
    blocks = F.heatmap(stab, "resid_post", "edit", by="block", block=4).data[0]
    assert list(blocks.x) == [0, 4]


def test_the_run_ranking_shows_the_control_baseline_and_the_viewer_ranking_links_components():
    stab = stability()
    run = F.run_figures(stab, pairs())["ranking_edit"]
    assert [t.name for t in run.data] == ["minimal-pair edit", "control edit (null baseline)"]
    assert list(run.data[0].x) == list(stab.nsmallest(20, "rank_calibrated")["normalized"])
    viewer = F.ranking(stab, "edit", 3, url=lambda h, l, c: f"/{h}/{l}/{c}")
    assert len(viewer.data) == 1 and all(u.startswith("/") for u in viewer.data[0].customdata)


def test_run_figures_without_controls_plot_the_change_against_the_spread():
    figs = F.run_figures(stability(controls=False), pairs())
    assert {"heatmap_resid_post_edit", "heatmap_z_heads_edit", "ranking_edit", "scatter_edit", "margins"} <= set(figs)
    assert figs["scatter_edit"].layout.xaxis.title.text == "spread"
    assert len(figs["ranking_edit"].data) == 1


def test_hook_order_heads_and_neurons_come_from_the_hook_point_table(monkeypatch):
    import dataclasses

    from interp import hooks
    from interp.figures.common import HOOK_ORDER, hook_sort_key

    assert sorted(HOOK_ORDER) == sorted(hooks.HOOK_POINTS)
    # today's points keep the order of the pages: the residual stream through a block
    assert sorted(hooks.HOOK_POINTS, key=hook_sort_key) == ["resid_pre", "attn_out", "z", "resid_mid", "mlp_post",
                                                            "mlp_out", "resid_post"]
    assert hooks.head_summary("z") == "z_head" and hooks.head_points() == ["z"]
    assert hooks.neuron_points() == ["mlp_post"]
    stab = stability(controls=False)
    assert F.common.label("z", 1, 5, 1) == "z[1].h1.5" and F.common.label("resid_post", 1, 5, 1) == "resid_post[1].5"
    figs = F.run_figures(stab, pairs())
    assert "heatmap_z_heads_edit" in figs and "heatmap_resid_post_heads_edit" not in figs
    assert "block" not in " ".join(figs)
    assert F.heatmap(stab, "z", "edit").layout.xaxis.title.text == "component (head × d_head + dim)"
    # a point that gains a per-head view in the table gets head heatmaps and head labels; one of
    # neurons gets block heatmaps and the neuron axis
    point = hooks.HOOK_POINTS["resid_post"]
    monkeypatch.setitem(hooks.HOOK_POINTS, "resid_post", dataclasses.replace(point, heads=True, unit="neuron"))
    figs = F.run_figures(stab.assign(head=stab["component"] // 4), pairs())
    assert {"heatmap_resid_post_heads_edit", "heatmap_resid_post_blocks_edit"} <= set(figs)
    assert F.common.label("resid_post", 1, 5, 1) == "resid_post[1].h1.5"
    assert F.heatmap(stab, "resid_post", "edit").layout.xaxis.title.text == "component (neuron)"
    assert list(F.head_dimensions(stab.assign(head=0), 1, 0, hook="resid_post").data[0].y) == list(
        stab[(stab["hook"] == "resid_post") & (stab["layer"] == 1)]["normalized"])


@pytest.mark.parametrize("module,argv", [("interp.figures.cli", []), ("interp.view", []),
                                         ("interp.view", ["serve"]), ("interp.view", ["export"]),
                                         ("interp.compare", [])])
def test_help_describes_the_command(module, argv, capsys):
    import importlib

    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as err:
        main(argv + ["--help"])
    assert err.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m ") and "--" in out and len(out.splitlines()) > 5


def make_run_dir(path):
    path.mkdir()
    R.write_json(path / R.MANIFEST, {"status": "complete", "model": {"n_layers": 3}})
    R.write_parquet(path / R.STABILITY, stability())
    R.write_parquet(path / R.PAIRS, pairs())
    return path


@pytest.mark.parametrize("argv", [["interp.figures.cli", "{missing}"], ["interp.figures.cli", "{plain}"],
                                  ["interp.view", "export", "{missing}"], ["interp.view", "export", "{plain}"],
                                  ["interp.view", "--runs", "{missing}"],
                                  ["interp.compare", "{plain}", "{run}", "--no-figures"]])
def test_a_missing_or_non_run_dir_is_one_line_and_exit_status_2(argv, tmp_path, capsys):
    import importlib

    dirs = {"missing": tmp_path / "missing", "plain": tmp_path, "run": make_run_dir(tmp_path / "run")}
    main = importlib.import_module(argv[0]).main
    with pytest.raises(SystemExit) as err:
        main([a.format(**dirs) for a in argv[1:]])
    assert err.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m interp.") and "error:" in lines[0]


def test_figures_command_redraws_a_run_dir(tmp_path, capsys):
    from interp.figures.cli import main

    run = make_run_dir(tmp_path / "run")
    main([str(run), "--no-png", "--top-k", "5"])
    written = sorted(p.name for p in (run / R.FIGURES).glob("*.html"))
    assert "ranking_edit.html" in written and "margins.html" in written
    html = (run / R.FIGURES / "ranking_edit.html").read_text()
    assert '<script src="plotly.min.js"></script>' in html and "cdn" not in html.split("<body>")[0]
    spec = json.loads(F.ranking(stability(), "edit", 5, key="rank_calibrated", control=True).to_json())
    assert len(spec["data"][0]["y"]) == 5


def with_inference(d: pd.DataFrame) -> pd.DataFrame:
    """``stability()`` with the columns of matched nulls and clustered inference: a ratio with its
    interval, the cluster-robust q-value, the adjusted effect and the two flags apart."""
    d = d.copy()
    d["ratio"] = np.linspace(0.2, 1.4, len(d))
    d["ratio_lo"], d["ratio_hi"] = d["ratio"] * 0.8, d["ratio"] * 1.3
    d["q_cluster"], d["n_clusters"] = 0.02, 12
    d["adj_coef"], d["adj_lo"], d["adj_hi"] = -0.5, -0.9, -0.1
    d["offset_dim"], d["massive"] = False, False
    d.loc[0, "offset_dim"] = True
    d.loc[1, "massive"] = True
    return d


def test_the_ranking_marks_offset_and_massive_apart_and_draws_the_ratio_interval():
    stab = with_inference(stability())
    fig = F.ranking(stab, "edit", 5, key="ratio_hi", control=True, stable_ratio=0.5)
    (bar,) = fig.data
    top = stab.nsmallest(5, "ratio_hi")
    assert list(bar.x) == list(top["ratio"])
    assert list(bar.error_x.array) == pytest.approx(list(top["ratio_hi"] - top["ratio"]))
    assert list(bar.error_x.arrayminus) == pytest.approx(list(top["ratio"] - top["ratio_lo"]))
    assert bar.y[0] == "resid_post[0].0 (offset)" and bar.y[1] == "resid_post[0].1 (massive)"
    assert "(offset" not in " ".join(bar.y[2:]) and "(massive" not in " ".join(bar.y[2:])
    assert len({bar.marker.color[0], bar.marker.color[1], bar.marker.color[2]}) == 3  # coloured apart
    assert bar.hovertext[2].startswith(f"ratio {top['ratio'].iloc[2]:.3g} [")
    assert "q_cluster 0.02" in bar.hovertext[2]
    assert "adj_coef -0.5 [-0.9, -0.1]" in bar.hovertext[2] and "flagged: offset" in bar.hovertext[0]
    lines = {s.x0 for s in fig.layout.shapes}
    assert lines == {1, 0.5}  # the control edit and the equivalence threshold
    assert "confidence interval" in fig.layout.title.text
    # the run's figures: the ratio with its interval, ordered by ratio_hi under the equivalence rule
    run = F.run_figures(stab, pairs(), rule="equivalence", stable_ratio=0.5)["ranking_edit"]
    assert list(run.data[0].x) == list(stab.nsmallest(20, "ratio_hi")["ratio"])
    assert run.data[0].error_x.arrayminus
    run = F.run_figures(stab, pairs())["ranking_edit"]  # the rule unknown: by rank_calibrated, interval drawn
    assert list(run.data[0].x) == list(stab.nsmallest(20, "rank_calibrated")["ratio"])
    # the normalized ranking (the viewer's default) keeps its standard errors and marks the flags too
    norm = F.ranking(stab, "edit", len(stab)).data[0]
    assert "resid_post[0].0 (offset)" in norm.y and "resid_post[0].1 (massive)" in norm.y
    assert norm.error_x.array is not None and norm.error_x.arrayminus is None


def test_an_older_table_s_massive_column_is_the_offset_flag():
    old = stability()  # massive: the offset flag, no offset_dim, no interval
    old.loc[0, "massive"] = True
    fig = F.ranking(old, "edit", 5, key="rank_calibrated", control=True)
    assert [t.name for t in fig.data] == ["minimal-pair edit", "control edit (null baseline)"]
    assert fig.data[0].y[0] == "resid_post[0].0 (offset)" and "(massive)" not in " ".join(fig.data[0].y)
    assert fig.data[0].error_x.arrayminus is None


def test_directions_lines_per_hook_over_layers():
    dirs = pd.DataFrame([{"hook": h, "layer": l, "position": p, "mean_diff_relative": 0.1 * (l + 1)}
                         for h in ("resid_post", "attn_out") for l in (-1, 0, 1, 2) for p in ("edit", "last")])
    fig = F.directions_lines(dirs, "edit")
    assert [t.name for t in fig.data] == ["attn_out", "resid_post"] and list(fig.data[0].x) == [0, 1, 2]
    assert F.directions_lines(SimpleNamespace(directions=dirs), "edit").to_json() == fig.to_json()
    assert "no directions" in F.directions_lines(None).layout.annotations[0].text


def test_compare_depth_profiles_name_the_null_and_rule_and_draw_intervals():
    from interp.figures.compare import depth_profile

    rows = [{"run": r, "hook": "resid_post", "bin": b, "layers": str(b), "null": null, "rule": "equivalence",
             "median_ratio": 0.8, "median_ratio_lo": 0.6, "median_ratio_hi": 1.1, "share_stable": 0.1}
            for r, null in (("A", "common"), ("B", "matched")) for b in (0, 1)]
    t = pd.DataFrame(rows)
    fig = depth_profile(t, "median_ratio", ("A", "B"), 2, "edit")
    assert fig.data[0].name == "A (null common, rule equivalence)" and fig.data[1].name.startswith("B (null matched")
    assert list(fig.data[0].error_y.array) == pytest.approx([0.3, 0.3])
    fig = depth_profile(t, "share_stable", ("A", "B"), 2, "edit", definition="equivalence: ratio_hi < 0.5")
    assert "equivalence: ratio_hi &lt; 0.5" in fig.layout.title.text or "ratio_hi < 0.5" in fig.layout.title.text
    old = t.drop(columns=["null", "rule", "median_ratio_lo", "median_ratio_hi"])
    fig = depth_profile(old, "median_ratio", ("A", "B"), 2, "edit")
    assert fig.data[0].name == "A" and fig.data[0].error_y.array is None
