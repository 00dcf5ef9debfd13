"""The viewer's file safety through Flask's test client and a real werkzeug server: symlinks out of
the runs folder (figure files, figure folders, tables, manifests, static and vendored files) are
404s, foreign ``Host`` headers get 400 (DNS rebinding), and no response may be framed."""

from __future__ import annotations

import http.client
import json
import threading
from pathlib import Path

import pytest

from interp import rundir as R
from interp.viewer import create_app
from interp.viewer.app import allowed_host, no_framing

SECRET = "SECRET-OUTSIDE-THE-RUNS-FOLDER"
FIGURE = "<html><body><p>saved figure</p></body></html>"


def make_run(path: Path) -> Path:
    (path / "figures").mkdir(parents=True)
    (path / R.MANIFEST).write_text(json.dumps({"status": "complete", "created": "2024-01-01"}))
    (path / "figures" / "fig.html").write_text(FIGURE)
    return path


@pytest.fixture()
def tree(tmp_path):
    """runs/ with symlinks out of it (files, folders, chains) next to a regular run; outside/ holds a secret."""
    outside = tmp_path / "outside"
    (outside / "figs").mkdir(parents=True)
    (outside / "secret.txt").write_text(SECRET)
    (outside / "figs" / "fig.html").write_text(SECRET)
    (outside / "figs" / "secret.png").write_text(SECRET)
    (outside / "manifest.json").write_text(json.dumps({"status": SECRET}))
    (outside / "rejected.jsonl").write_text(SECRET + "\n")
    root = tmp_path / "runs"
    a = make_run(root / "a")
    figs = a / "figures"
    (figs / "passwd.png").symlink_to(outside / "secret.txt")  # a file out of the runs folder
    (figs / "chain.png").symlink_to(figs / "hop.png")  # a chain: inside, then out
    (figs / "hop.png").symlink_to(Path("..") / ".." / ".." / "outside" / "secret.txt")
    (figs / "manifest.html").symlink_to(a / R.MANIFEST)  # inside the run, outside its figure folder
    (figs / "alias.html").symlink_to("fig.html")  # inside the figure folder: served
    (a / "figures" / "sub").mkdir()
    (a / R.REJECTED).symlink_to(outside / "rejected.jsonl")
    if Path("/etc/passwd").is_file():
        (figs / "etc.png").symlink_to("/etc/passwd")
    b = make_run(root / "b")  # figure folders that are symlinks out of the runs folder
    (b / "figures" / "fig.html").unlink()
    (b / "figures").rmdir()
    (b / "figures").symlink_to(outside / "figs")
    (b / "causal").mkdir()
    (b / "causal" / "figures").symlink_to(outside / "figs")
    (b / "causal" / R.MANIFEST).symlink_to(outside / "manifest.json")
    c = root / "c"  # a run whose manifest.json lies outside
    c.mkdir()
    (c / R.MANIFEST).symlink_to(outside / "manifest.json")
    return root


@pytest.fixture()
def client(tree):
    app = create_app(tree)
    app.testing = False
    return app.test_client()


def status(client, url: str, **kw) -> tuple[int, str]:
    r = client.get(url, **kw)
    return r.status_code, r.get_data(as_text=True)


# ---------------------------------------------------------------------------------- files


@pytest.mark.parametrize("name", ["figures/passwd.png", "figures/chain.png", "figures/hop.png", "figures/etc.png",
                                  "figures/manifest.html", "figures/sub", "figures/nope.png"])
def test_a_symlinked_figure_file_leading_out_is_404(client, name):
    code, body = status(client, f"/run/a/-/files/{name}")
    assert code == 404 and SECRET not in body and "root:" not in body


def test_a_regular_figure_file_and_a_link_inside_its_folder_are_served(client):
    r = client.get("/run/a/-/files/figures/fig.html")
    assert r.status_code == 200 and r.get_data(as_text=True) == FIGURE and r.mimetype == "text/html"
    r = client.get("/run/a/-/files/figures/alias.html")
    assert r.status_code == 200 and r.get_data(as_text=True) == FIGURE


@pytest.mark.parametrize("name", ["figures/fig.html", "figures/secret.png", "causal/figures/fig.html",
                                  "causal/figures/secret.png"])
def test_a_figure_folder_symlinked_out_of_the_runs_folder_is_404(client, name):
    code, body = status(client, f"/run/b/-/files/{name}")
    assert code == 404 and SECRET not in body


def test_pages_list_and_read_nothing_from_outside(client):
    code, page = status(client, "/run/a")
    assert code == 200 and SECRET not in page
    assert "fig.html" in page and "alias.html" in page
    for name in ("passwd.png", "chain.png", "hop.png", "etc.png", "manifest.html"):
        assert name not in page  # not offered as links
    code, page = status(client, "/run/a/-/rejected")
    assert code == 200 and SECRET not in page  # rejected.jsonl links out: no rejected pairs
    code, page = status(client, "/run/b")
    assert code == 200 and SECRET not in page and "secret.png" not in page
    assert status(client, "/run/c")[0] == 404  # manifest.json outside: not a run
    code, page = status(client, "/")
    assert code == 200 and SECRET not in page and "unreadable manifest" in page


def test_static_and_vendored_files_stay_in_their_folders(tree, tmp_path, monkeypatch):
    from interp.viewer.pages import vendor

    static = tmp_path / "static"
    static.mkdir()
    (static / "ok.css").write_text("body {}")
    (static / "leak.css").symlink_to(tmp_path / "outside" / "secret.txt")
    cdn = tmp_path / "cv" / "dist" / "cdn"
    cdn.mkdir(parents=True)
    (cdn / "iife.js").symlink_to(tmp_path / "outside" / "secret.txt")
    app = create_app(tree)
    app.testing = False
    c = app.test_client()
    assert c.get("/static/viewer.css").status_code == 200
    for url in ("/static/..%2f..%2fview.py", "/static/../app.py", "/static/nope.css"):
        assert c.get(url).status_code == 404
    app.static_folder = str(static)
    assert c.get("/static/ok.css").status_code == 200
    code, body = status(c, "/static/leak.css")
    assert code == 404 and SECRET not in body
    monkeypatch.setattr(vendor, "_circuitsvis_bundle", lambda: cdn / "iife.js")
    code, body = status(c, "/vendor/circuitsvis/iife.js")
    assert code == 404 and SECRET not in body


# ---------------------------------------------------------------------------------- Host header


def test_the_test_clients_localhost_is_the_default_apps_own_host(client):
    assert client.get("/").status_code == 200  # Host: localhost
    assert client.get("/", base_url="http://127.0.0.1:5123").status_code == 200  # port not known: any
    assert client.get("/", base_url="http://[::1]:5123").status_code == 200


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8050", "localhost.evil.example", "127.0.0.2.nip.io:80",
                                  "10.0.0.1:8050", "", "localhost:abc"])
def test_a_foreign_host_is_400(client, host):
    r = client.get("/run/a", headers={"Host": host})
    assert r.status_code == 400, host
    assert "Host" in r.get_data(as_text=True) and "saved figure" not in r.get_data(as_text=True)
    assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
    assert client.get("/run/a/-/files/figures/fig.html", headers={"Host": host}).status_code == 400


def test_own_address_and_allowed_hosts(tree):
    c = create_app(tree, host="127.0.0.1", port=8050).test_client()
    for host in ("127.0.0.1:8050", "localhost:8050", "[::1]:8050", "LocalHost:8050"):
        assert c.get("/", headers={"Host": host}).status_code == 200, host
    for host in ("127.0.0.1:8051", "localhost", "evil.example:8050", "viewer.example.org"):
        assert c.get("/", headers={"Host": host}).status_code == 400, host
    c = create_app(tree, host="127.0.0.1", port=8050,
                   allowed_hosts=["viewer.example.org", "box.lan:9000"]).test_client()
    for host in ("viewer.example.org", "viewer.example.org:443", "box.lan:9000", "localhost:8050"):
        assert c.get("/", headers={"Host": host}).status_code == 200, host
    for host in ("box.lan", "box.lan:9001", "evil.example:8050"):
        assert c.get("/", headers={"Host": host}).status_code == 400, host
    c = create_app(tree, host="192.168.1.5", port=8050).test_client()  # not loopback: only its own address
    assert c.get("/", headers={"Host": "192.168.1.5:8050"}).status_code == 200
    assert c.get("/", headers={"Host": "localhost:8050"}).status_code == 400


def test_allowed_host_rules():
    ok = allowed_host("::1", 80)
    assert ok("[::1]:80") and ok("[::1]") and ok("localhost") and not ok("[::2]")
    ok = allowed_host("0.0.0.0", 8050)  # every address: the loopback names; the others by --allow-host
    assert ok("127.0.0.1:8050") and not ok("0.0.0.0:8050") and not ok("192.168.1.5:8050")


def test_a_real_server_refuses_a_rebound_host(tree):
    from werkzeug.serving import make_server

    holder = {}
    srv = make_server("127.0.0.1", 0, lambda env, start: holder["app"](env, start), threaded=True)
    holder["app"] = create_app(tree, host="127.0.0.1", port=srv.server_port)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        def get(host: str | None) -> int:
            conn = http.client.HTTPConnection("127.0.0.1", srv.server_port, timeout=30)
            conn.putrequest("GET", "/run/a", skip_host=host is not None)
            if host is not None:
                conn.putheader("Host", host)
            conn.endheaders()
            code = conn.getresponse().status
            conn.close()
            return code

        assert get(None) == 200  # http.client sends Host: 127.0.0.1:PORT
        assert get(f"localhost:{srv.server_port}") == 200
        assert get(f"rebind.example:{srv.server_port}") == 400
    finally:
        srv.shutdown()
        thread.join(timeout=10)


def test_serve_passes_its_address_and_allowed_hosts(tree, monkeypatch):
    from flask import Flask

    from interp.view import main, parser

    assert parser().parse_args(["serve", "--allow-host", "a", "--allow-host", "b:1"]).allow_host == ["a", "b:1"]
    seen = {}
    monkeypatch.setattr(Flask, "run", lambda self, **kw: seen.update(app=self, **kw))
    main(["--runs", str(tree), "--port", "8123", "--allow-host", "viewer.example.org"])
    app = seen["app"]
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8123
    c = app.test_client()
    assert c.get("/", headers={"Host": "localhost:8123"}).status_code == 200
    assert c.get("/", headers={"Host": "viewer.example.org"}).status_code == 200
    assert c.get("/", headers={"Host": "evil.example:8123"}).status_code == 400


# ---------------------------------------------------------------------------------- framing


def test_every_response_forbids_framing(client):
    for url, code in (("/", 200), ("/run/a", 200), ("/run/a/-/files/figures/fig.html", 200),
                      ("/static/viewer.css", 200), ("/vendor/plotly.min.js", 200), ("/run/nope", 404),
                      ("/run/a/-/files/figures/passwd.png", 404)):
        r = client.get(url)
        assert r.status_code == code, url
        csp = r.headers["Content-Security-Policy"]
        assert csp.count("frame-ancestors") == 1 and "frame-ancestors 'none'" in csp, (url, csp)
        assert csp.startswith("default-src 'self'"), (url, csp)
        assert r.headers["X-Frame-Options"] == "DENY", url
    # the saved figure files keep their own policy (inline scripts of plotly write_html), framing merged in
    csp = client.get("/run/a/-/files/figures/fig.html").headers["Content-Security-Policy"]
    assert "'unsafe-inline'" in csp.split("script-src")[1].split(";")[0]


def test_frame_ancestors_merges_into_a_policy():
    assert no_framing("default-src 'self'; frame-ancestors 'self' https://x") == \
        "default-src 'self'; frame-ancestors 'none'"
    assert no_framing("default-src 'self';") == "default-src 'self'; frame-ancestors 'none'"
    assert no_framing("") == "frame-ancestors 'none'"


def test_an_existing_policy_of_a_view_is_merged(tree):
    app = create_app(tree)

    @app.route("/custom")
    def custom():
        return "x", 200, {"Content-Security-Policy": "default-src 'none'; frame-ancestors *"}

    r = app.test_client().get("/custom")
    assert r.headers["Content-Security-Policy"] == "default-src 'none'; frame-ancestors 'none'"
