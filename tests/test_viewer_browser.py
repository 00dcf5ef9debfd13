"""The viewer in a real browser: headless Debian Chromium driven by Playwright.

The app is served by werkzeug on 127.0.0.1 in a thread. Each page must draw its plotly figures and
CircuitsVis patterns, log no console error, and request nothing from any other host. A screenshot
of each page goes to ``test-artifacts/``. Also: the PNG export through kaleido, and file safety (a
figure symlinked out of the runs folder shows nothing of it, a rebound host name gets 400, no page
can be framed).
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest

from interp import rundir as R
from tests.viewer_fixtures import MARKUP_A, viewer_runs  # noqa: F401  (fixture)

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
    pytest.skip(f"no Chromium at {CHROMIUM} (Debian package chromium)", allow_module_level=True)

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-default-apps", "--disable-extensions"]


@pytest.fixture(scope="module")
def server(viewer_runs):  # noqa: F811
    from werkzeug.serving import make_server

    from interp.viewer import create_app

    root, runs = viewer_runs
    srv = make_server("127.0.0.1", 0, create_app(root), threaded=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_port}", runs
    srv.shutdown()
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


class Page:
    """A page that records console errors, page errors, dialogs and every request."""

    def __init__(self, browser, base: str):
        self.base = base
        self.page = browser.new_page(viewport={"width": 1300, "height": 900})
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: self.errors.append(f"console: {m.text}") if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.page.on("dialog", lambda d: (self.errors.append(f"dialog: {d.message}"), d.dismiss()))
        self.page.on("request", lambda r: self.requests.append(r.url))

    def open(self, path: str, shot: str):
        resp = self.page.goto(self.base + path, wait_until="networkidle")
        assert resp is not None and resp.status == 200, path
        self.page.wait_for_function(
            "() => [...document.querySelectorAll('[data-plotly]')].every("
            "b => document.getElementById(b.dataset.plotly).getAttribute('data-rendered') === '1')", timeout=30_000)
        ARTIFACTS.mkdir(exist_ok=True)
        png = ARTIFACTS / f"viewer_{shot}.png"
        self.page.screenshot(path=str(png), full_page=True)
        assert png.stat().st_size > 30_000, f"{png} looks empty ({png.stat().st_size} bytes)"
        return self.page

    def check_clean(self):
        assert not self.errors, self.errors
        hosts = {u.split("/")[2] for u in self.requests if u.startswith(("http://", "https://"))}
        assert hosts == {self.base.split("/")[2]}, hosts
        assert all(u.startswith((self.base, "data:", "blob:")) for u in self.requests), \
            [u for u in self.requests if not u.startswith((self.base, "data:", "blob:"))]

    def close(self):
        self.page.close()


def plotly_rendered(page, expected: int) -> None:
    n_blocks = page.locator("script[data-plotly]").count()
    assert n_blocks >= expected
    assert page.locator(".fig .plot-container").count() == n_blocks
    assert page.locator(".fig svg.main-svg").count() >= n_blocks
    assert page.locator(".fig-error").count() == 0


def test_run_list_and_run_page_render(server, browser):
    base, _ = server
    p = Page(browser, base)
    page = p.open("/", "index")
    assert page.locator("table.runs tbody tr").count() == 2
    assert page.locator("a", has_text="sweeps/S/0_b").count() == 1
    page = p.open("/run/run_a", "run")
    plotly_rendered(page, 5)
    assert page.locator("#fig-heatmap .heatmaplayer").count() >= 1 or page.locator("#fig-heatmap image").count() >= 1
    assert page.locator("#fig-ranking .bars path").count() >= 10
    # clicking a bar of the ranking opens that component's page
    url = page.evaluate("() => { const gd = document.getElementById('fig-ranking');"
                        " const cd = gd.data[0].customdata[0]; gd.emit('plotly_click', {points: [{customdata: cd}]});"
                        " return cd; }")
    page.wait_for_url(base + url)
    assert page.locator("h1", has_text="Component").count() == 1
    p.check_clean()
    p.close()


def test_pair_page_renders_attention_patterns(server, browser):
    base, runs = server
    pairs = R.read_table(runs["a"], R.PAIRS)
    pid = str(pairs.loc[pairs["a"] == MARKUP_A, "pair_id"].iloc[0])
    p = Page(browser, base)
    page = p.open(f"/run/run_a/-/pair/{pid}", "pair")
    plotly_rendered(page, 2)
    for cv in ("#cv-a", "#cv-b"):
        page.wait_for_function(f"() => document.querySelector('{cv}').children.length > 0", timeout=30_000)
        assert page.locator(f"{cv} *").count() > 20
        assert page.locator(f"{cv} canvas, {cv} svg").count() >= 1
    # the sentence's markup is text, not elements
    assert page.locator(".sentences b").count() == 0
    assert "<b>She</b> is good" in page.locator(".sentences").inner_text()
    page = p.open(f"/run/run_a/-/pair/{pid}?layer=1&head=2", "pair_head")
    page.wait_for_function("() => document.querySelector('#cv-a').children.length > 0", timeout=30_000)
    p.check_clean()
    p.close()


def test_drill_down_compare_and_causal_pages_render(server, browser):
    base, _ = server
    p = Page(browser, base)
    for path, shot, n in (("/run/sweeps/S/0_b/-/head/1/2", "head", 2), ("/run/sweeps/S/0_b/-/neuron/1/5", "neuron", 2),
                          ("/run/sweeps/S/0_b/-/layer/0", "layer", 2), ("/run/sweeps/S/0_b/-/causal", "causal", 2),
                          ("/compare?a=run_a&b=sweeps/S/0_b", "compare", 6)):
        page = p.open(path, shot)
        plotly_rendered(page, n)
    p.check_clean()
    p.close()


SECRET = "SECRET-OUTSIDE-THE-RUNS-FOLDER"


@pytest.fixture(scope="module")
def linked_server(viewer_runs, tmp_path_factory):  # noqa: F811
    """A copy of run_a whose figures/passwd.png links out of the runs folder, and a run whose figures
    folder is a symlink out of it; served on 127.0.0.1 with its own address (port known)."""
    from werkzeug.serving import make_server

    from interp.viewer import create_app

    _, runs = viewer_runs
    base = tmp_path_factory.mktemp("linked")
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text(SECRET)
    (outside / "fig.html").write_text(f"<html><body><p>{SECRET}</p></body></html>")
    root = base / "runs"
    run = root / "run_a"
    shutil.copytree(runs["a"], run, ignore=shutil.ignore_patterns("*.safetensors"))
    (run / "figures").mkdir(exist_ok=True)
    (run / "figures" / "passwd.png").symlink_to(outside / "secret.txt")
    (run / "figures" / "page.html").symlink_to(outside / "fig.html")
    other = root / "linked"
    other.mkdir()
    shutil.copy(run / R.MANIFEST, other / R.MANIFEST)
    (other / "figures").symlink_to(outside)
    holder = {}
    srv = make_server("127.0.0.1", 0, lambda env, start: holder["app"](env, start), threaded=True)
    holder["app"] = create_app(root, host="127.0.0.1", port=srv.server_port)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_port}", srv.server_port
    srv.shutdown()
    thread.join(timeout=10)


def test_symlinked_figures_show_nothing_from_outside(linked_server, browser):
    base, _ = linked_server
    page = browser.new_page()
    for path in ("/run/run_a/-/files/figures/passwd.png", "/run/run_a/-/files/figures/page.html",
                 "/run/linked/-/files/figures/fig.html", "/run/linked/-/files/figures/secret.txt"):
        resp = page.goto(base + path)
        assert resp is not None and resp.status == 404, path
        assert SECRET not in page.content() and SECRET not in resp.text(), path
    page.close()
    p = Page(browser, base)  # a normal page of the same run still renders, without links to them
    pg = p.open("/run/run_a", "run_linked")
    plotly_rendered(pg, 5)
    assert "passwd.png" not in pg.content() and SECRET not in pg.content()
    p.check_clean()
    p.close()


def test_rebound_host_name_and_framing_are_refused(linked_server, browser):
    base, port = linked_server
    # a second browser in which evil.test resolves to 127.0.0.1: DNS rebinding
    b = browser.browser_type.launch(executable_path=CHROMIUM, headless=True,
                                    args=ARGS + ["--host-resolver-rules=MAP evil.test 127.0.0.1"])
    try:
        page = b.new_page()
        resp = page.goto(f"http://evil.test:{port}/run/run_a")
        assert resp is not None and resp.status == 400
        assert "Host" in page.content() and page.locator("[data-plotly]").count() == 0
        resp = page.goto(f"http://evil.test:{port}/run/run_a/-/files/figures/passwd.png")
        assert resp is not None and resp.status == 400 and SECRET not in page.content()
        # a page of another origin (another port of 127.0.0.1) framing the viewer: the frame is refused
        from werkzeug.serving import make_server
        from werkzeug.wrappers import Response

        framing = Response(f'<iframe src="{base}/run/run_a" width="800" height="600"></iframe>', mimetype="text/html")
        outer = make_server("127.0.0.1", 0, framing)
        thread = threading.Thread(target=outer.serve_forever, daemon=True)
        thread.start()
        try:
            page.goto(f"http://127.0.0.1:{outer.server_port}/")
            page.wait_for_timeout(2000)
            frames = [f for f in page.frames if f != page.main_frame]
            assert len(frames) == 1 and not frames[0].url.startswith(base), frames[0].url  # an error page
            assert frames[0].locator("[data-plotly]").count() == 0
        finally:
            outer.shutdown()
            thread.join(timeout=10)
        resp = page.goto(base + "/run/run_a")
        assert resp.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in resp.headers["content-security-policy"]
    finally:
        b.close()


def test_png_export_of_the_viewer_figures(viewer_runs, tmp_path):  # noqa: F811
    from interp.view import main

    if shutil.which("chromium") is None and "BROWSER_PATH" not in os.environ:
        os.environ["BROWSER_PATH"] = CHROMIUM
    _, runs = viewer_runs
    out = tmp_path / "png"
    main(["export", str(runs["b"]), "--out", str(out), "--width", "700"])
    pngs = sorted(out.glob("*.png"))
    names = {p.stem for p in pngs}
    assert {"accuracy", "margins", "heatmap_z_edit", "ranking_edit", "scatter_edit", "layer_1_edit"} <= names
    assert any(n.startswith("ablation_") for n in names) and any(n.startswith("patch-") for n in names)
    for png in pngs:
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000, png
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(out / "heatmap_z_edit.png", ARTIFACTS / "viewer_export_heatmap_z_edit.png")
