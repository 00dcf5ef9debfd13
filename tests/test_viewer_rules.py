"""The viewer's pages on the rules for "stable": the null, the rule in words and the confidence
intervals of a run with the new columns; counts under the run's own rule (a table on which the two
rules disagree counts differently under each); an older run dir (no ratio_hi, ``massive`` as the
offset flag, no rule in its config) still renders."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
from markupsafe import escape

from interp import rules
from interp import rundir as R
from interp.viewer import create_app, fmt
from tests import rule_runs as RR
from tests.viewer_fixtures import viewer_runs  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def rule_root(viewer_runs, tmp_path_factory):  # noqa: F811
    _, runs = viewer_runs
    root = tmp_path_factory.mktemp("rules") / "runs"
    root.mkdir()
    src = runs["a"]
    return root, {"new": RR.with_rule(src, root / "new", "equivalence"),
                  "eq": RR.disagreeing(src, root / "eq", "equivalence"),
                  "sig": RR.disagreeing(src, root / "sig", "significance"),
                  "old": RR.legacy(src, root / "old")}


@pytest.fixture(scope="module")
def client(rule_root):
    app = create_app(rule_root[0])
    app.testing = False
    return app.test_client()


def get(client, url: str, status: int = 200) -> str:
    r = client.get(url)
    assert r.status_code == status, (url, r.status_code, r.get_data(as_text=True)[:800])
    return r.get_data(as_text=True)


def esc(text: str) -> str:
    return str(escape(text))


def component_rows(page: str) -> dict[str, dict[str, str]]:
    """The component page's table: position -> {header: cell text}."""
    table = page[page.index("<table class=\"data\">"):]
    table = table[:table.index("</table>")]
    heads = [re.sub(r"<[^>]+>", "", h).strip() for h in re.findall(r"<th[^>]*>(.*?)</th>", table, re.S)]
    out = {}
    for row in re.findall(r"<tr>(.*?)</tr>", table.split("<tbody>")[1], re.S):
        cells = [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
        rec = dict(zip(heads, cells))
        out[rec["position"]] = rec
    return out


def stable_count(page: str, hook: str) -> int:
    """The run page's count of stable components of one hook (its 'stable components' table)."""
    m = re.search(r"<tr><td>" + hook + r'</td><td class="num">\d+</td><td class="num strong">(\d+)</td>', page)
    assert m, page[page.find('id="stable"'):][:3000]
    return int(m.group(1))


def test_pages_name_the_null_the_rule_and_the_clusters(client, rule_root):
    m = R.read_manifest(rule_root[1]["new"])
    a = m["config"]["analysis"]
    rule = esc(rules.definition("equivalence", a["alpha"], a["stable_ratio"], a["ci"]))
    page = get(client, "/run/new")
    section = page[page.index('id="stable"'):page.index('id="heatmap"')]
    assert f"<b>{a['controls']['pool']}</b> control pool" in section
    assert f"<b>{m['controls']['k']}</b> control edits per pair" in section
    assert f"<b>{rule}</b>" in section and "older run" not in section
    assert f"<b>{a['cluster']}</b>" in section and "cluster:swap" in section  # the kind, and how intervals were made
    assert "median_dist_ab" in section  # facts of the draw
    for url in ("/run/new/-/table", "/run/new/-/layer/0", "/run/new/-/component/resid_post/0/3"):
        p = get(client, url)
        assert rule in p and f"{a['controls']['pool']} pool" in p, url


def test_tables_show_the_ratio_and_the_adjusted_effect_with_their_intervals(client, rule_root):
    stab = pd.read_parquet(rule_root[1]["new"] / R.STABILITY)
    row = stab[(stab["hook"] == "resid_post") & (stab["layer"] == 0) & (stab["component"] == 3)
               & (stab["position"] == "edit")].iloc[0]
    ratio = f"{fmt(row['ratio'])} [{fmt(row['ratio_lo'])}, {fmt(row['ratio_hi'])}]"
    adj = f"{fmt(row['adj_coef'])} [{fmt(row['adj_lo'])}, {fmt(row['adj_hi'])}]"
    page = get(client, "/run/new/-/component/resid_post/0/3")
    assert ratio in page and adj in page
    assert "<th" in page and ">ratio [CI]</th>" in page and ">adj_coef [CI]</th>" in page
    for col in ("n_clusters", "q_cluster", "offset_dim", "massive", "stable"):
        assert f">{col}</th>" in page, col
    assert f'<td class="num">{fmt(row["q_cluster"])}</td>' in page
    page = get(client, "/run/new/-/table?hook=resid_post&layer=0&component=3&position=edit")
    assert ratio in page and adj in page
    assert ">ratio_lo</th>" not in page  # folded into the ratio's cell, still offered for sorting
    assert '<option value="ratio_hi"' in get(client, "/run/new/-/table?sort=ratio_hi")
    # the ranking by ratio_hi draws the ratio with its interval as error bars
    page = get(client, "/run/new?rank_key=ratio_hi&k=5")
    bars = json.loads(re.search(r'data-plotly="fig-ranking">(.*?)</script>', page, re.S).group(1))["fig"]["data"][0]
    assert len(bars["error_x"]["arrayminus"]) == len(bars["error_x"]["array"]) == 5
    assert all(re.match(r"ratio [\d.]+ \[[\d.]+, [\d.]+\]<br>q_value", t) for t in bars["hovertext"])


def test_counts_use_the_run_s_rule(client):
    eq, sig = get(client, "/run/eq"), get(client, "/run/sig")
    assert stable_count(eq, "resid_post") == len(RR.EQ_ONLY)
    assert stable_count(sig, "resid_post") == len(RR.SIG_ONLY)  # not the stored (equivalence) column
    assert stable_count(eq, "attn_out") == stable_count(sig, "attn_out") == 0
    assert esc(rules.definition("significance")) in sig and esc(rules.definition("equivalence")) in eq
    # the table's filter and stable column, the layer page, the head counts
    for run, want in (("eq", RR.EQ_ONLY), ("sig", RR.SIG_ONLY)):
        page = get(client, f"/run/{run}/-/table?stable=1&per=500&position=edit&sort=component")
        assert f"{len(want)} rows, page 1" in page or f"<span>{len(want)} rows" in page
        shown = [int(x) for x in re.findall(r"/component/resid_post/0/(\d+)\"", page.split("<tbody>")[1])]
        assert sorted(shown) == want
        page = get(client, f"/run/{run}/-/layer/0?position=edit")
        assert f"stable=1\">{len(want)}</a>" in page
        for c in want:
            assert component_rows(get(client, f"/run/{run}/-/component/resid_post/0/{c}"))["edit"]["stable"] == "yes"
        other = RR.SIG_ONLY if run == "eq" else RR.EQ_ONLY
        assert component_rows(get(client, f"/run/{run}/-/component/resid_post/0/{other[0]}"))["edit"]["stable"] == "no"
    # flagged components are stable under neither rule; the two flags apart
    for run in ("eq", "sig"):
        for c, flag, not_flag in ((RR.OFFSET, "offset_dim", "massive"), (RR.MASSIVE, "massive", "offset_dim")):
            row = component_rows(get(client, f"/run/{run}/-/component/resid_post/0/{c}"))["edit"]
            assert (row[flag], row[not_flag], row["stable"]) == ("yes", "no", "no")


def test_the_directions_table_is_on_the_overview(client, rule_root):
    page = get(client, "/run/new")
    dirs = pd.read_parquet(rule_root[1]["new"] / R.DIRECTIONS)
    n = int((dirs["position"] == "edit").sum())
    assert f"directions.parquet at 'edit' ({n} rows" in page and "<th>n_pcs</th>" in page
    spec = re.search(r'data-plotly="fig-directions">(.*?)</script>', page, re.S)
    assert spec and "mean_diff_relative per layer" in spec.group(1)
    assert "principal components" in page


def test_an_older_run_dir_still_renders(client, rule_root):
    page = get(client, "/run/old")
    section = page[page.index('id="stable"'):page.index('id="heatmap"')]
    assert esc(rules.definition("significance", 0.05)) in section and "older run" in section
    assert "shown here as <code>offset_dim</code>" in section
    assert "fig-directions" not in page
    # the legacy offset flag (its column massive) keeps a component out under the significance rule
    stab = pd.read_parquet(rule_root[1]["old"] / R.STABILITY)
    edit = stab[stab["position"] == "edit"]
    want = int(((edit["q_value"] < 0.05) & (edit["t_stat"] < 0) & ~edit["massive"]
                & (edit["hook"] == "resid_post")).sum())
    assert stable_count(page, "resid_post") == want
    comp = get(client, f"/run/old/-/component/resid_post/0/{RR.LEGACY_OFFSET}")
    assert ">offset_dim</th>" in comp and ">massive</th>" not in comp and "older table" in comp
    row = component_rows(comp)["edit"]
    assert (row["offset_dim"], row["stable"]) == ("yes", "no") and "[" not in row["ratio"]  # no interval
    assert component_rows(get(client, "/run/old/-/component/resid_post/0/0"))["edit"]["stable"] in ("yes", "no")
    for url in ("/run/old/-/table", "/run/old/-/table?stable=1", "/run/old/-/table?t=by_category",
                "/run/old/-/layer/1", "/run/old?rank_key=q_value", "/compare?a=old&b=new"):
        get(client, url)


def test_the_compare_page_names_each_run_s_null_and_rule(client):
    page = get(client, "/compare?a=old&b=new&hook=resid_post&position=edit")
    assert "<th>null</th>" in page and "<th>rule for stable</th>" in page
    assert esc(rules.definition("significance")) in page and esc(rules.definition("equivalence")) in page
    assert "decide &#34;stable&#34; differently" in page or 'decide "stable" differently' in page
    page = get(client, "/compare?a=eq&b=sig&hook=resid_post&position=edit")
    assert f"<b>{len(RR.EQ_ONLY)}</b> of" in page and f"<b>{len(RR.SIG_ONLY)}</b> of" in page
    page = get(client, "/compare?a=new&b=eq&hook=resid_post&position=edit")
    assert "differently" not in page
