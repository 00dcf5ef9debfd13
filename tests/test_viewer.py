"""The run viewer through Flask's test client: every route, 404s, path traversal, escaping, paging."""

from __future__ import annotations

import html
import json
import re
import shutil
from urllib.parse import quote

import pandas as pd
import pytest

from interp import rundir as R
from interp.viewer import create_app, fmt, marked
from tests.viewer_fixtures import MARKUP_A, REJECTED_A, SCRIPT_A, viewer_runs  # noqa: F401  (fixture)

RUN_A = "run_a"
RUN_B = "sweeps/S/0_b"


@pytest.fixture(scope="module")
def client(viewer_runs):  # noqa: F811
    root, _ = viewer_runs
    app = create_app(root)
    app.testing = False  # error pages as users get them (no exception propagation)
    return app.test_client()


def get(client, url: str, status: int = 200) -> str:
    r = client.get(url)
    assert r.status_code == status, (url, r.status_code, r.get_data(as_text=True)[:500])
    return r.get_data(as_text=True)


def figures(page: str) -> dict[str, dict]:
    """The plotly specs of a page by figure id (JSON blocks read by static/viewer.js)."""
    blocks = re.findall(r'<script type="application/json" data-plotly="([^"]+)">(.*?)</script>', page, re.S)
    return {k: json.loads(v) for k, v in blocks}


def circuitsvis_specs(page: str) -> dict[str, dict]:
    blocks = re.findall(r'<script type="application/json" data-circuitsvis="([^"]+)">(.*?)</script>', page, re.S)
    return {k: json.loads(v) for k, v in blocks}


def pair_id_of(run_dir, sentence: str) -> str:
    p = R.read_table(run_dir, R.PAIRS)
    return str(p.loc[p["a"] == sentence, "pair_id"].iloc[0])


def assert_local_only(page: str) -> None:
    """No page references another host: scripts, styles, links and images are all relative."""
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', page), re.findall(r'(?:src|href)="[^"]+"', page)


# ---------------------------------------------------------------------------------- run list


def test_run_list_shows_every_run_dir_recursively(client, viewer_runs):  # noqa: F811
    page = get(client, "/")
    assert f'href="/run/{RUN_A}"' in page and f'href="/run/{RUN_B}"' in page
    assert "/run/sweeps/S\"" not in page and "run_a/causal" not in page and "0_b/causal" not in page
    assert "tiny-llama" in page and "viewer_pairs.jsonl" in page
    assert "resid_pre, resid_mid, resid_post, attn_out, mlp_out" in page and "resid_post, z, mlp_post" in page
    assert "50.0%" in page  # grammar accuracy per category
    assert "complete" in page
    get(client, "/?sort=id")
    assert_local_only(page)


def test_compare_page(client):
    assert "Compare two runs" in get(client, "/compare")
    page = get(client, f"/compare?a={RUN_A}&b={quote(RUN_B)}&hook=resid_post&position=last&k=5")
    assert RUN_A in page and RUN_B in page
    figs = figures(page)
    assert {"fig-accuracy", "fig-heatmap-0", "fig-heatmap-1", "fig-ranking-0", "fig-ranking-1",
            "fig-joint"} <= set(figs)
    assert "at 'last'" in figs["fig-joint"]["fig"]["layout"]["title"]["text"]
    assert "resid_post, z, mlp_post" in page  # the facts table shows the differing hooks
    get(client, f"/compare?a={RUN_A}&b=nope", 404)
    get(client, f"/compare?a=..%2f..&b={RUN_A}", 404)


# ---------------------------------------------------------------------------------- one run


def test_run_page_figures_and_selectors(client):
    page = get(client, f"/run/{RUN_A}")
    figs = figures(page)
    assert {"fig-heatmap", "fig-ranking", "fig-scatter", "fig-margins", "fig-accuracy"} <= set(figs)
    heat = figs["fig-heatmap"]["fig"]
    assert heat["data"][0]["type"] == "heatmap" and "resid_post" in heat["layout"]["title"]["text"]
    assert figs["fig-heatmap"]["click"].endswith("/component/resid_post/{y}/{x}")
    assert figs["fig-ranking"]["fig"]["data"][0]["customdata"][0].startswith(f"/run/{RUN_A}/-/component/")
    assert 'src="/vendor/plotly.min.js"' in page and page.count("plotly.min.js") == 1
    assert "Stability heatmap" in page and "normalized" in page
    assert_local_only(page)

    page = get(client, f"/run/{RUN_A}?hook=attn_out&position=last&value=spread&k=7&x=normalized&y=spread&log=0")
    figs = figures(page)
    assert "spread at 'last', attn_out" in figs["fig-heatmap"]["fig"]["layout"]["title"]["text"]
    assert len(figs["fig-ranking"]["fig"]["data"][0]["y"]) == 7
    assert figs["fig-scatter"]["fig"]["layout"]["xaxis"]["type"] == "linear"
    figs = figures(get(client, f"/run/{RUN_A}?layer=1&k=5"))
    assert all("[1]" in label for label in figs["fig-ranking"]["fig"]["data"][0]["y"])
    assert "layer 1" in figs["fig-ranking"]["fig"]["layout"]["title"]["text"]
    # unknown values fall back to the defaults instead of failing
    page = get(client, f"/run/{RUN_A}?hook=nope&position=%3Cx%3E&value=__class__&k=abc&cstart=-5&layer=9")
    assert "at 'edit', resid_post" in figures(page)["fig-heatmap"]["fig"]["layout"]["title"]["text"]


def test_run_page_of_a_run_with_heads_and_neurons(client):
    page = get(client, f"/run/{RUN_B}")
    assert f"/run/{RUN_B}/-/head/0/0" in page and f"/run/{RUN_B}/-/neuron/0/0" in page
    figs = figures(get(client, f"/run/{RUN_B}?hook=z&by=head"))
    assert "layer × head" in figs["fig-heatmap"]["fig"]["layout"]["title"]["text"]
    assert figs["fig-heatmap"]["click"].endswith("/head/{y}/{x}")
    figs = figures(get(client, f"/run/{RUN_B}?hook=mlp_post"))
    assert figs["fig-heatmap"]["click"].endswith("/neuron/{y}/{x}")
    # optional columns of the stability table are offered when present
    stab = R.read_table(get_run(client, RUN_B), R.STABILITY)
    if "rank_calibrated" in stab.columns:
        page = get(client, f"/run/{RUN_B}?rank_key=rank_calibrated")
        assert "(sorted by rank_calibrated)" in figures(page)["fig-ranking"]["fig"]["layout"]["title"]["text"]


def get_run(client, run_id):
    return client.application.extensions["interp_viewer"]["store"].resolve(run_id)


def test_saved_figure_files_are_served_and_nothing_else(client):
    page = get(client, f"/run/{RUN_A}/-/files/figures/margins.html")
    assert "plotly.min.js" in page
    r = client.get(f"/run/{RUN_A}/-/files/figures/plotly.min.js")
    assert r.status_code == 200 and len(r.data) > 1_000_000
    assert "saved figure" in get(client, f"/run/{RUN_B}/-/files/causal/figures/effect_vs_k_mean_edit.html")
    for bad in ("figures/..%2fmanifest.json", "figures/../manifest.json", "manifest.json", "figures/nope.html",
                "causal/manifest.json", "figures/%2e%2e/%2e%2e/%2e%2e/etc/passwd"):
        get(client, f"/run/{RUN_A}/-/files/{bad}", 404)


def test_vendored_scripts_come_from_the_installed_packages(client):
    r = client.get("/vendor/plotly.min.js")
    assert r.status_code == 200 and r.mimetype == "application/javascript" and b"plotly" in r.data[:2000].lower()
    r = client.get("/vendor/circuitsvis/iife.js")
    assert r.status_code == 200 and r.data.startswith(b'"use strict";var CircuitsVis=')
    get(client, "/vendor/circuitsvis/..%2f..%2f__init__.py", 404)
    get(client, "/vendor/circuitsvis/esm.js", 404)


def test_summary_table_is_filtered_and_paged_on_the_server(client, viewer_runs):  # noqa: F811
    _, runs = viewer_runs
    stab = R.read_table(runs["a"], R.STABILITY)
    page = get(client, f"/run/{RUN_A}/-/table?per=25")
    assert f"{len(stab)} rows in stability.parquet" in page
    assert f"{len(stab)} rows, page 1 of {-(-len(stab) // 25)}" in page
    rows1 = re.findall(r"<tr>.*?</tr>", page.split("<tbody>")[1], re.S)
    assert len(rows1) == 25
    page2 = get(client, f"/run/{RUN_A}/-/table?per=25&page=2")
    rows2 = re.findall(r"<tr>.*?</tr>", page2.split("<tbody>")[1], re.S)
    assert len(rows2) == 25 and rows1 != rows2
    assert 'rel="prev"' in page2 and 'rel="next"' in page2
    # a page past the end shows the last page
    assert "page 9999" not in get(client, f"/run/{RUN_A}/-/table?per=25&page=9999")
    # filters
    want = stab[(stab["hook"] == "mlp_out") & (stab["layer"] == 1) & (stab["position"] == "last")]
    page = get(client, f"/run/{RUN_A}/-/table?hook=mlp_out&layer=1&position=last&per=500&sort=normalized&desc=1")
    assert f"{len(want)} rows" in page and "attn_out" not in page.split("<tbody>")[1]
    best = want.sort_values("normalized", ascending=False).iloc[0]
    first = re.findall(r"<tr>.*?</tr>", page.split("<tbody>")[1], re.S)[0]
    assert f"/component/mlp_out/1/{int(best['component'])}\"" in first
    # per-category table of run B, z rows of one head
    page = get(client, f"/run/{RUN_B}/-/table?t=by_category&hook=z&head=1&category=article&per=500")
    assert "Per-category table" in page and "<th>category</th>" in page and "<th>head</th>" in page
    bc = R.read_table(viewer_runs[1]["b"], R.STABILITY_BY_CATEGORY)
    want = bc[(bc["hook"] == "z") & (bc["head"] == 1) & (bc["category"] == "article")]
    assert len(want) > 0 and f"<span>{len(want)} rows" in page
    get(client, f"/run/{RUN_B}/-/table?layer=abc&component=%3Cscript%3E")  # bad numbers are ignored


def test_rejected_pairs_with_reasons(client):
    page = get(client, f"/run/{RUN_A}/-/rejected")
    assert "length_mismatch" in page and "bad_json" in page
    assert html.escape(REJECTED_A, quote=False) in page and REJECTED_A not in page
    page = get(client, f"/run/{RUN_A}/-/rejected?reason=bad_json")
    assert "bad_json" in page and "She has walked home." not in page


# ---------------------------------------------------------------------------------- pairs


def test_pair_browser_search_filters_and_paging(client, viewer_runs):  # noqa: F811
    _, runs = viewer_runs
    pairs = R.read_table(runs["a"], R.PAIRS)
    page = get(client, f"/run/{RUN_A}/-/pairs")
    assert f"{len(pairs)} kept pairs" in page and f"{len(pairs)} rows" in page
    assert "<mark>" in page
    page = get(client, f"/run/{RUN_A}/-/pairs?q=PARIS")
    assert "1 rows" in page and "Berlin" in page and "coffee" not in page
    page = get(client, f"/run/{RUN_A}/-/pairs?category=article")
    assert "2 rows" in page and "apple" in page and "Paris" not in page
    lo = float(pairs["margin"].median())
    page = get(client, f"/run/{RUN_A}/-/pairs?min={lo}&per=500")
    assert f"{int((pairs['margin'] >= lo).sum())} rows" in page
    page = get(client, f"/run/{RUN_A}/-/pairs?max={lo}&type=grammar")
    assert f"{int(((pairs['margin'] <= lo) & (pairs['type'] == 'grammar')).sum())} rows" in page
    page = get(client, f"/run/{RUN_A}/-/pairs?correct=yes")
    assert f"{int((pairs['correct'] == True).sum())} rows" in page  # noqa: E712
    page = get(client, f"/run/{RUN_B}/-/pairs?saved=1")
    assert "4 rows" in page
    page = get(client, f"/run/{RUN_A}/-/pairs?per=2&page=2&sort=margin&desc=1")
    shown = re.findall(r'/-/pair/([^"]+)"', page.split("<tbody>")[1])
    assert shown == list(pairs.sort_values("margin", ascending=False)["pair_id"].iloc[2:4])
    get(client, f"/run/{RUN_A}/-/pairs?min=abc&max=inf&per=-3")


def test_pair_page_of_a_saved_pair(client, viewer_runs):  # noqa: F811
    _, runs = viewer_runs
    pid = pair_id_of(runs["a"], "She is good at math.")
    page = get(client, f"/run/{RUN_A}/-/pair/{pid}")
    assert "She is good <mark>at</mark> math." in page and "She is good <mark>in</mark> math." in page
    figs = figures(page)
    assert {"fig-change", "fig-edit_lines"} <= set(figs)
    change = figs["fig-change"]["fig"]
    assert change["data"][0]["type"] == "heatmap" and len(change["data"][0]["y"]) == 2
    assert any(" at" in str(x) for x in change["data"][0]["x"])  # token strings from the run's tokenizer
    cv = circuitsvis_specs(page)
    assert set(cv) == {"cv-a", "cv-b"} and cv["cv-a"]["component"] == "AttentionHeads"
    props = cv["cv-a"]["props"]
    n = len(props["tokens"])
    assert len(props["attention"]) == 4 and len(props["attention"][0]) == n and len(props["attention"][0][0]) == n
    assert props["tokens"][4] == " at" and cv["cv-b"]["props"]["tokens"][4] == " in"
    assert 'src="/vendor/circuitsvis/iife.js"' in page
    assert "components" in page and "most_changed" in page  # pair_components.parquet
    # one head, another layer, relative change
    page = get(client, f"/run/{RUN_A}/-/pair/{pid}?layer=1&head=2&rel=1&hook=attn_out")
    cv = circuitsvis_specs(page)
    assert cv["cv-a"]["component"] == "AttentionPattern" and len(cv["cv-a"]["props"]["attention"]) == n
    assert "||a−b|| / ||a||" in figures(page)["fig-change"]["fig"]["layout"]["title"]["text"]
    assert "attn_out" in figures(page)["fig-change"]["fig"]["layout"]["title"]["text"]
    get(client, f"/run/{RUN_A}/-/pair/{pid}?layer=99&head=99&hook=%3Cb%3E")  # bad choices: defaults
    assert_local_only(page)


def test_pair_page_change_from_activations_and_unsaved_pairs(client, viewer_runs):  # noqa: F811
    _, runs = viewer_runs
    pairs = R.read_table(runs["b"], R.PAIRS)
    saved, unsaved = str(pairs["pair_id"].iloc[0]), str(pairs["pair_id"].iloc[-1])
    page = get(client, f"/run/{RUN_B}/-/pair/{saved}?hook=z")
    figs = figures(page)
    assert "activations.safetensors" in figs["fig-change"]["fig"]["layout"]["title"]["text"]
    assert "at z per layer" in figs["fig-change"]["fig"]["layout"]["title"]["text"]
    assert {"cv-a", "cv-b"} == set(circuitsvis_specs(page))
    assert "Activation patching of this pair" in page and "ablation_pairs.parquet" in page
    page = get(client, f"/run/{RUN_B}/-/pair/{unsaved}")
    assert "not among them" in page and not circuitsvis_specs(page) and "iife.js" not in page


def test_sentences_with_markup_are_escaped_everywhere(client, viewer_runs):  # noqa: F811
    _, runs = viewer_runs
    for sentence in (MARKUP_A, SCRIPT_A):
        pid = pair_id_of(runs["a"], sentence)
        for url in (f"/run/{RUN_A}/-/pair/{pid}", f"/run/{RUN_A}/-/pairs", f"/run/{RUN_A}/-/pairs?q=script",
                    f"/run/{RUN_A}"):
            page = get(client, url)
            assert "<script>alert(1)</script>" not in page and "<b>She</b>" not in page
        page = get(client, f"/run/{RUN_A}/-/pair/{pid}")
        assert html.escape(sentence.split(" at ")[0], quote=False) in page
    page = get(client, f"/run/{RUN_A}/-/pair/{pair_id_of(runs['a'], SCRIPT_A)}")
    # in JSON for scripts '<' is written \u003c, so no '</script>' can close the block
    cv = re.findall(r'data-circuitsvis="cv-a">(.*?)</script>', page, re.S)[0]
    assert "\\u003c/" in cv and json.loads(cv)["props"]["tokens"][-6:-3] == ["\u003c/", "script", "\u003e"]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    # query parameters are echoed into forms escaped
    page = get(client, f"/run/{RUN_A}?%3Cscript%3E=%22%3E%3Cscript%3Ealert(1)%3C/script%3E&k=%22%3E%3Cb%3E")
    assert "<script>alert" not in page and '"><b>' not in page
    margins = figures(get(client, f"/run/{RUN_A}"))["fig-margins"]["fig"]
    texts = [t for trace in margins["data"] for t in trace["text"]]
    assert any("&lt;b&gt;She&lt;/b&gt;" in t for t in texts) and not any("<b>She" in t for t in texts)


def test_unknown_pairs_and_traversal_are_404(client):
    for url in (f"/run/{RUN_A}/-/pair/nope", f"/run/{RUN_A}/-/pair/..%2f..%2fmanifest.json",
                f"/run/{RUN_A}/-/pair/../../manifest.json", f"/run/{RUN_A}/-/pair/%3Cscript%3Ealert(1)%3C%2Fscript%3E"):
        page = get(client, url, 404)
        assert "404" in page and "Traceback" not in page and "<script>alert" not in page


# ---------------------------------------------------------------------------------- drill-down


def test_layer_pages(client):
    for layer in (0, 1):
        page = get(client, f"/run/{RUN_A}/-/layer/{layer}?position=after")
        assert f"Layer {layer}" in page and {"fig-profile", "fig-categories"} <= set(figures(page))
        assert f"/run/{RUN_A}/-/component/" in page
    page = get(client, f"/run/{RUN_B}/-/layer/1?chook=mlp_post")
    assert "Heads (z)" in page and f"/run/{RUN_B}/-/head/1/3" in page and f"/run/{RUN_B}/-/neuron/1/" in page
    assert "mlp_post components at layer 1" in figures(page)["fig-categories"]["fig"]["layout"]["title"]["text"]
    get(client, f"/run/{RUN_A}/-/layer/2", 404)
    get(client, f"/run/{RUN_A}/-/layer/-1", 404)
    get(client, f"/run/{RUN_A}/-/layer/abc", 404)


def test_head_page(client, viewer_runs):  # noqa: F811
    page = get(client, f"/run/{RUN_B}/-/head/1/2")
    assert "Head 2 of layer 1" in page
    assert {"fig-dims", "fig-categories"} <= set(figures(page))
    assert "best rank" in page and "||z_a − z_b|| at the edit" in page
    cv = circuitsvis_specs(page)
    assert cv["cv-a"]["component"] == "AttentionPattern"
    _, runs = viewer_runs
    pid = str(R.read_table(runs["b"], R.PAIRS)["pair_id"].iloc[1])
    page = get(client, f"/run/{RUN_B}/-/head/1/2?pair={pid}&position=last")
    assert f'<option value="{pid}" selected' in page
    get(client, f"/run/{RUN_B}/-/head/1/4", 404)  # 4 heads: 0..3
    get(client, f"/run/{RUN_B}/-/head/9/0", 404)
    get(client, f"/run/{RUN_A}/-/head/0/0", 404)  # no z rows in run A


def test_neuron_and_component_pages(client):
    page = get(client, f"/run/{RUN_B}/-/neuron/1/5")
    assert "Neuron mlp_post[1].5" in page and "of 128" in page
    figs = figures(page)
    assert {"fig-categories", "fig-saved"} <= set(figs)
    assert "a − b at edit" in page
    assert re.search(r"<b>\d+</b> <span class=\"muted\">of \d+</span>", page)  # its rank
    assert f"/run/{RUN_B}/-/neuron/1/4" in page and f"/run/{RUN_B}/-/neuron/1/6" in page
    page = get(client, f"/run/{RUN_B}/-/component/z/0/17")
    assert "z[0].h1.17" in page and f"/run/{RUN_B}/-/head/0/1" in page
    page = get(client, f"/run/{RUN_A}/-/component/resid_post/1/3")
    assert "resid_post[1].3" in page and "fig-saved" in page
    get(client, f"/run/{RUN_B}/-/neuron/1/128", 404)
    get(client, f"/run/{RUN_A}/-/neuron/0/0", 404)  # run A has no mlp_post
    get(client, f"/run/{RUN_A}/-/component/nope/0/0", 404)
    get(client, f"/run/{RUN_A}/-/component/resid_post/5/0", 404)


# ---------------------------------------------------------------------------------- optional results


def test_causal_page(client, viewer_runs):  # noqa: F811
    page = get(client, f"/run/{RUN_B}/-/causal")
    figs = figures(page)
    assert "fig-ablation" in figs and any(k.startswith("fig-patch-resid_pre") for k in figs)
    names = {t["name"] for t in figs["fig-ablation"]["fig"]["data"] if t.get("name")}
    assert {"stable", "random", "least_stable"} <= names
    assert "rank_calibrated" in page and "effect_vs_k_mean_edit.html" in page
    assert f"/run/{RUN_B}/-/component/resid_post/" in page  # selections link to components
    _, runs = viewer_runs
    pid = str(R.read_table(runs["b"], R.PAIRS)["pair_id"].iloc[0])
    page = get(client, f"/run/{RUN_B}/-/causal?level=pair&subject={pid}&mode=resample&acat=all"
                       "&metric=accuracy_change&sel=random&sk=1")
    figs = figures(page)
    assert any(k.startswith("fig-patch-z") for k in figs)
    assert "accuracy_change" in figs["fig-ablation"]["fig"]["layout"]["title"]["text"]
    assert f"/run/{RUN_B}/-/pair/{pid}" in page
    get(client, f"/run/{RUN_A}/-/causal", 404)  # run A has no causal results


def test_divergence_and_contrast_page(client):
    r = client.get(f"/run/{RUN_A}/-/divergence")
    if r.status_code == 404:
        pytest.skip("this toolkit version writes no divergence.parquet / contrast.parquet")
    page = r.get_data(as_text=True)
    figs = figures(page)
    assert "fig-divergence" in figs
    if "contrast.parquet" in page:
        assert "fig-volcano" in figs and "rows, page 1 of" in page
        page2 = get(client, f"/run/{RUN_A}/-/divergence?chook=mlp_out&cposition=edit&csort=effect&cdesc=1"
                            "&page=2&clayer=1")
        assert "resid_pre" not in page2.split("<tbody>")[-1]
    get(client, f"/run/{RUN_A}/-/divergence?hook=nope&category=%3Cb%3E&value=x")


# ---------------------------------------------------------------------------------- safety, errors


@pytest.mark.parametrize("url", [
    "/run/nope", "/run/..%2f..%2fetc", "/run/..%2f..%2fetc/-/pairs", "/run/../../etc/passwd", "/run/%2e%2e/-/table",
    "/run/sweeps", "/run/sweeps/S", "/run/run_a/causal", "/run/run_a/figures", "/run/.hidden", "/run/run_a/.hydra",
    "/run/run_a%00/-/pairs", "/run/%3Cscript%3Ealert(1)%3C%2Fscript%3E", "/nope",
])
def test_unknown_or_escaping_runs_are_a_404_page(client, url):
    r = client.get(url)
    assert r.status_code == 404
    page = r.get_data(as_text=True)
    assert "404" in page and "Traceback" not in page and "<script>alert" not in page
    assert r.headers["Content-Security-Policy"].startswith("default-src 'self'")


def test_security_headers(client):
    r = client.get(f"/run/{RUN_A}")
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "connect-src 'self'" in csp
    assert "'unsafe-inline'" not in csp.split("style-src")[0]  # no inline scripts
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert "frame-ancestors 'none'" in csp and r.headers["X-Frame-Options"] == "DENY"  # see test_viewer_security


def test_broken_files_give_an_error_page_not_a_traceback(viewer_runs, tmp_path):  # noqa: F811
    _, runs = viewer_runs
    root = tmp_path / "runs"
    shutil.copytree(runs["a"], root / "broken", ignore=shutil.ignore_patterns("*.safetensors", "figures"))
    (root / "broken" / R.PAIRS).write_text("not parquet")
    (root / "bad_manifest").mkdir()
    (root / "bad_manifest" / R.MANIFEST).write_text("{not json")
    app = create_app(root)
    c = app.test_client()
    assert "unreadable manifest" in get(c, "/")
    get(c, "/run/bad_manifest", 404)
    r = c.get("/run/broken/-/pairs")
    assert r.status_code == 500 and "Internal error" in r.get_data(as_text=True)
    assert "Traceback" not in r.get_data(as_text=True)
    # the rest of that run still works (no activations: pair pages say so)
    get(c, "/run/broken/-/table")
    # a run dir holding only its manifest: pages without tables, not errors
    (root / "bare").mkdir()
    shutil.copy(runs["a"] / R.MANIFEST, root / "bare" / R.MANIFEST)
    for url in ("/run/bare", "/run/bare/-/table", "/run/bare/-/pairs", "/run/bare/-/rejected",
                "/compare?a=bare&b=broken"):
        get(c, url)
    get(c, "/run/bare/-/layer/0", 404)
    # query parameters named like a path part do not break links
    get(c, "/run/broken/-/table?run=x&page=2&per=5")
    # an empty runs folder, and one that does not exist
    assert "No run dirs" in get(create_app(tmp_path / "empty").test_client(), "/")


def test_token_ids_without_a_tokenizer(viewer_runs):  # noqa: F811
    root, runs = viewer_runs
    c = create_app(root, decode_tokens=False).test_client()
    pid = pair_id_of(runs["a"], "She is good at math.")
    tokens = circuitsvis_specs(get(c, f"/run/{RUN_A}/-/pair/{pid}"))["cv-a"]["props"]["tokens"]
    assert tokens[0] == "<|endoftext|>" and tokens[4] == " at" and tokens[1].startswith("#")


def test_helpers():
    assert marked("She ate an apple.", "She ate a apple.", " an", " a") == ("She ate ", "an", " apple.")
    assert marked("She ate a apple.", "She ate an apple.", " a", " an") == ("She ate ", "a", " apple.")
    assert marked("She loves tea.", "He loves tea.", "She", "He") == ("", "She", " loves tea.")
    assert "".join(marked("x", "x", None, None)) == "x"
    assert fmt(float("nan")) == "–" and fmt(None) == "–" and fmt(pd.NA) == "–" and fmt(3) == "3"
    assert fmt(0.000012345) == "1.234e-05" and fmt(True) == "yes" and fmt(12.3456) == "12.35"


def test_optional_columns_are_the_registry_columns_that_need_controls():
    from interp.stats.registry import COLUMNS
    from interp.viewer.columns import (CI_COLUMNS, OPTIONAL_STAB_COLUMNS, VALUE_COLUMNS, display_columns,
                                       with_ci)

    # the columns of the stable rules side by side: ratio with its interval, iid and clustered tests,
    # the adjusted effect with its interval, the two flags, the verdict
    assert OPTIONAL_STAB_COLUMNS[:17] == [
        "control_normalized", "ratio", "ratio_lo", "ratio_hi", "p_value", "q_value", "n_clusters", "q_cluster",
        "adj_coef", "adj_lo", "adj_hi", "adj_normalized", "offset_dim", "massive", "stable", "stable_layers",
        "rank_calibrated"]
    needs_controls = {c.name for c in COLUMNS if c.needs_controls}
    # every value column written only with controls is shown (a new one with no edit of the viewer)
    assert {c for c in VALUE_COLUMNS if c in needs_controls} <= set(OPTIONAL_STAB_COLUMNS)
    # tables fold an interval into its value's cell; the rows still carry the ends
    shown = display_columns(["ratio", "ratio_lo", "ratio_hi", "q_value", "adj_coef", "adj_lo", "adj_hi"])
    assert shown == ["ratio", "q_value", "adj_coef"]
    assert set(with_ci(shown)) == {"ratio", "q_value", *CI_COLUMNS["ratio"], "adj_coef", *CI_COLUMNS["adj_coef"]}
    assert display_columns(["ratio_lo", "ratio_hi"]) == ["ratio_lo", "ratio_hi"]  # no value: the ends stay


def test_cli_arguments(tmp_path):
    from interp.view import main

    with pytest.raises(SystemExit):
        main(["--runs", str(tmp_path / "missing")])
    with pytest.raises(SystemExit):
        main(["export", str(tmp_path)])  # not a run dir
