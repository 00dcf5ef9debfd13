"""The selections against their matched random ones (``ablation_vs_random.parquet``): the figure
``interp.figures.vs_random`` from a real tiny causal dir, ``write_causal_figures`` writing it, and the
viewer's causal page showing the table (and still working for causal dirs without the file)."""

from __future__ import annotations

import json
import re
import shutil

import pandas as pd
import pytest

from interp import figures as F
from interp.causal.ablation import VS_RANDOM_COLUMNS
from interp.viewer import create_app
from tests.test_ablation import split_run  # noqa: F401  (fixture)
from tests.test_patching import patch_cfg
from tests.viewer_fixtures import add_causal, viewer_runs  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

RUN_B = "sweeps/S/0_b"


@pytest.fixture(scope="module")
def causal_dir(split_run, tmp_path_factory):  # noqa: F811
    """A real causal dir of the tiny model: held-out split, 2 ks, 12 random seeds, no figures yet."""
    from interp.causal import run_causal

    out = tmp_path_factory.mktemp("vs_random") / "causal"
    run_causal(patch_cfg(f"run={split_run}", f"out={out}", "k=[2,5]", "ablation.seeds=12", "ablation.limit=null",
                         "ablation.modes=[mean]", "ablation.where=[edit]", "patching.enabled=false",
                         "atp.enabled=false", "figures.enabled=false", "batch_size=8"))
    return out


def test_figure_shows_the_random_distribution_and_the_selections(causal_dir):
    vs = pd.read_parquet(causal_dir / "ablation_vs_random.parquet")
    ab = pd.read_parquet(causal_dir / "ablation.parquet")
    assert list(vs.columns) == VS_RANDOM_COLUMNS and set(vs["pairs"]) == {"held_out"}
    fig = F.vs_random(vs, ablation=ab)
    box = [t for t in fig.data if t.type == "box"]
    assert len(box) == 1 and box[0].name.startswith("random (12 seeds)")
    # every seed's mean change at each k, as in ablation.parquet
    rnd = ab[(ab["selection"] == "random") & (ab["category"] == "all") & (ab["mode"] == "mean")]
    assert len(box[0].y) == len(rnd) == 2 * 12
    assert sorted(box[0].y) == pytest.approx(sorted(rnd["post_edit_margin_change"]))
    marks = {t.name: t for t in fig.data if t.type == "scatter"}
    assert "stable (clustered CI)" in marks  # the random draws are matched to the stable selection only
    st = vs[(vs["selection"] == "stable") & (vs["metric"] == "post_edit_margin") & (vs["category"] == "all")]
    st = st.sort_values("k")
    assert list(marks["stable (clustered CI)"].y) == pytest.approx(list(st["change"]))
    assert list(marks["stable (clustered CI)"].error_y.array) == pytest.approx(list(st["change_hi"] - st["change"]))
    notes = [a.text for a in fig.layout.annotations]
    assert any(f"p_perm {st['p_perm'].iloc[0]:.3f}" in n and f"diff {st['diff_vs_random'].iloc[0]:+.3f}" in n
               for n in notes)
    assert "nats" in fig.layout.yaxis.title.text and "after the edit" in fig.layout.yaxis.title.text
    assert "held-out" in fig.layout.title.text
    assert list(fig.layout.xaxis.ticktext) == ["k=2", "k=5"]
    # without ablation.parquet: the box comes from the table's summary (mean, sd, min, max)
    fig = F.vs_random(vs, "downstream_divergence")
    box = [t for t in fig.data if t.type == "box"][0]
    d = vs[(vs["metric"] == "downstream_divergence") & (vs["category"] == "all")].drop_duplicates("k").sort_values("k")
    assert list(box.median) == pytest.approx(list(d["random_mean"]))
    assert list(box.upperfence) == pytest.approx(list(d["random_max"]))
    # nothing to draw: an empty figure that says so
    assert "no rows" in F.vs_random(vs, category="no such category").layout.annotations[0].text


def test_write_causal_figures_writes_the_vs_random_figure(causal_dir, tmp_path):
    d = tmp_path / "causal"
    shutil.copytree(causal_dir, d)
    ab = pd.read_parquet(d / "ablation.parquet")
    # as interp.patch calls it: the ablation table given, nothing read; the vs-random table read anyway
    out = F.write_causal_figures(d, ab, None, png=False, read_tables=False)
    assert "vs_random_mean_edit.html" in {p.split("/")[-1] for p in map(str, out["html"])}
    html = (d / "figures" / "vs_random_mean_edit.html").read_text()
    assert "p_perm" in html and "random (12 seeds)" in html
    # the table passed in; with read_tables and nothing given, both read from the folder
    vs = pd.read_parquet(d / "ablation_vs_random.parquet")
    out = F.write_causal_figures(d, ab, None, png=False, read_tables=False, vs_random=vs.assign(where="after"))
    assert (d / "figures" / "vs_random_mean_after.html").exists()
    (d / "figures" / "vs_random_mean_edit.html").unlink()
    F.write_causal_figures(d, png=False)
    assert (d / "figures" / "vs_random_mean_edit.html").exists()
    # an older causal dir without the file: the other figures as before
    (d / "ablation_vs_random.parquet").unlink()
    shutil.rmtree(d / "figures")
    out = F.write_causal_figures(d, png=False)
    names = {str(p).split("/")[-1] for p in out["html"]}
    assert "effect_vs_k_mean_edit.html" in names and not any(n.startswith("vs_random") for n in names)


def figures(page: str) -> dict[str, dict]:
    blocks = re.findall(r'<script type="application/json" data-plotly="([^"]+)">(.*?)</script>', page, re.S)
    return {k: json.loads(v) for k, v in blocks}


def get(client, url: str, status: int = 200) -> str:
    r = client.get(url)
    assert r.status_code == status, (url, r.status_code, r.get_data(as_text=True)[:500])
    return r.get_data(as_text=True)


def test_causal_page_shows_the_vs_random_table(viewer_runs):  # noqa: F811
    root, runs = viewer_runs
    client = create_app(root).test_client()
    page = get(client, f"/run/{RUN_B}/-/causal")
    assert 'id="vs-random"' in page and "ablation_vs_random.parquet" in page
    for col in ("random mean ± sd", "diff vs random [CI]", "p_perm", "n_pairs", "held_out"):
        assert col in page
    vs = pd.read_parquet(runs["b"] / "causal" / "ablation_vs_random.parquet")
    row = vs[(vs["category"] == "all") & (vs["selection"] == "stable") & (vs["metric"] == "post_edit_margin")].iloc[0]
    assert f"{row['diff_vs_random']:+.3f} [{row['diff_lo']:+.3f}, {row['diff_hi']:+.3f}]" in page
    assert "held out (the components were ranked on the other pairs)" in page
    figs = figures(page)
    fig = figs["fig-vs-random"]["fig"]
    assert "post_edit_margin" in fig["layout"]["yaxis"]["title"]["text"]
    assert {t.get("name", "").split(" ")[0] for t in fig["data"]} >= {"random", "stable", "least_stable"}
    # another metric and the ablation form's mode
    page = get(client, f"/run/{RUN_B}/-/causal?vmetric=downstream_divergence&mode=resample")
    fig = figures(page)["fig-vs-random"]["fig"]
    assert "downstream_divergence" in fig["layout"]["yaxis"]["title"]["text"]
    assert "resample ablation" in fig["layout"]["title"]["text"]
    assert "fig-ablation" in figures(page)  # the rest of the page as before


def test_causal_page_of_an_older_causal_dir(viewer_runs, tmp_path):  # noqa: F811
    _, runs = viewer_runs
    root = tmp_path / "runs"
    old = root / "old"
    shutil.copytree(runs["b"], old, ignore=shutil.ignore_patterns("causal"))
    add_causal(old, vs_random=False)
    assert not (old / "causal" / "ablation_vs_random.parquet").exists()
    page = get(create_app(root).test_client(), "/run/old/-/causal")
    assert 'id="vs-random"' not in page and "fig-vs-random" not in figures(page)
    assert "fig-ablation" in figures(page) and 'id="selections"' in page
