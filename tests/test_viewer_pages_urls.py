"""``benchmarks.viewer_pages.pages``: page URLs from the viewer's routes, a pair id quoted whole.

A run dir of two files (``manifest.json``, ``pairs.parquet``) is enough for the URLs and for the
pair page; no model runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote, unquote

import pandas as pd
import pytest
from flask import request

from benchmarks.viewer_pages import pages
from interp import rundir as R
from interp.viewer import create_app

ODD_IDS = ["grammar/agreement 12%", "a/../b %2F?x#y", "trail// 100% "]


def make_run(root: Path, name: str, ids: list[str], hooks=("resid_post",)) -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / R.MANIFEST).write_text(json.dumps({"schema_version": R.SCHEMA_VERSION,
                                              "hooks": [{"point": h} for h in hooks]}))
    pd.DataFrame({"pair_id": ids, "category": "c", "type": "grammar", "a": [f"A {i} x." for i in range(len(ids))],
                  "b": [f"A {i} y." for i in range(len(ids))], "edit_pos": 2, "margin": 0.5}).to_parquet(run / R.PAIRS)
    return run


ENDPOINTS = {"run": "run.run_page", "table": "table.table", "layer": "layer.layer",
             "divergence": "divergence.divergence", "pairs": "pairs.pairs", "pair": "pairs.pair",
             "rejected": "rejected.rejected", "causal": "causal.causal", "component": "component.component",
             "head": "head.head"}


@pytest.mark.parametrize("pair_id", ODD_IDS)
def test_a_pair_id_with_slash_space_and_percent_is_one_quoted_segment_that_opens_its_pair_page(tmp_path, pair_id):
    run = make_run(tmp_path / "runs", "r1", [pair_id, "plain-1"], hooks=("resid_post", "z"))
    app = create_app(run.parent)
    urls = pages(run, app)
    assert set(urls) == set(ENDPOINTS)
    assert urls["pair"] == "/run/r1/-/pair/" + quote(pair_id, safe="")  # one segment: no raw / ? # or space
    adapter = app.url_map.bind("localhost")
    for name, url in urls.items():  # a server decodes the path once (%2F -> /), then the route's converter matches
        endpoint, args = adapter.match(unquote(url))
        assert endpoint == ENDPOINTS[name] and args["run"] == "r1"
    assert adapter.match(unquote(urls["pair"]))[1]["pair_id"] == pair_id
    with app.test_client() as client:
        r = client.get(urls["pair"])
        assert r.status_code == 200 and request.view_args["pair_id"] == pair_id
        assert "plain-1" in r.get_data(as_text=True)  # the next pair's link: the page of the first pair


def test_plain_ids_give_the_urls_built_by_hand_before(tmp_path):
    run = make_run(tmp_path / "runs", "run_x", ["p-1"])
    urls = pages(run, create_app(run.parent))
    rid = "run_x"
    assert urls == {"run": f"/run/{rid}", "table": f"/run/{rid}/-/table", "layer": f"/run/{rid}/-/layer/0",
                    "divergence": f"/run/{rid}/-/divergence", "pairs": f"/run/{rid}/-/pairs",
                    "pair": f"/run/{rid}/-/pair/p-1", "rejected": f"/run/{rid}/-/rejected",
                    "causal": f"/run/{rid}/-/causal", "component": f"/run/{rid}/-/component/resid_post/0/0"}


def test_a_pair_id_that_starts_with_a_slash_opens_its_pair_page(tmp_path):
    run = make_run(tmp_path / "runs", "r1", ["/lead", "plain-1"])
    app = create_app(run.parent)
    url = pages(run, app)["pair"]
    assert url == "/run/r1/-/pair/%2Flead"
    assert app.test_client().get(url).status_code == 200
