"""``python -m interp.view``: browse run directories in a web browser; export the figures as PNG.

    python -m interp.view [serve] [--runs outputs] [--host 127.0.0.1] [--port 8050] [--allow-host NAME]...
    python -m interp.view export RUN_DIR [--out DIR] [--width 1100]

The server reads every run dir (a folder holding ``manifest.json``) under ``--runs``; when
``--runs`` is itself a run dir, its parent folder is served. Nothing is fetched from the network:
plotly.js and the CircuitsVis bundle come from the installed packages, token strings from a
tokenizer file already on this machine (otherwise token ids are shown). The server answers only
requests addressed to itself (``Host``: the ``--host`` address and ``--port``, plus localhost,
127.0.0.1 and [::1] when it listens on a loopback or wildcard address); a remote setup names its
other addresses with ``--allow-host``. Files are served only from inside the runs folder.

``export`` writes the viewer's figures of one run (accuracy, margins, heatmaps of every hook and
position, rankings, scatter plots, layer profiles, causal results when present) as PNG through
kaleido, all in one browser session; the default folder is ``RUN_DIR/figures/viewer``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

PROG = "python -m interp.view"
COMMANDS = ("serve", "export")


def _offline() -> None:
    # the viewer never downloads: keep the Hugging Face libraries off the network too
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _fail(message: str) -> None:
    """A user error: one line on stderr, exit status 2."""
    print(f"{PROG}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=PROG, description="Browse run directories in a web browser (serve, the default), or write the "
                               "viewer's figures of one run as PNG (export). Nothing is fetched from the network.")
    sub = ap.add_subparsers(dest="command", metavar="{serve,export}")
    s = sub.add_parser("serve", help="serve the viewer of every run dir under --runs (the default command)",
                       description="Serve the viewer of every run dir (a folder holding manifest.json) under "
                                   "--runs; when --runs is itself a run dir, its parent folder is served.")
    s.add_argument("--runs", default="outputs", help="folder searched (recursively) for run dirs [outputs]")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on [127.0.0.1]")
    s.add_argument("--port", type=int, default=8050, help="port [8050]")
    s.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also answer requests whose Host header is NAME (any port) or NAME:PORT, e.g. the "
                        "name a reverse proxy or another machine uses (repeatable); other foreign Host "
                        "headers get 400 (DNS rebinding)")
    s.add_argument("--no-tokenizer", action="store_true", help="show token ids instead of token strings")
    s.add_argument("--debug", action="store_true", help="Flask debug mode (reloader, debugger)")
    e = sub.add_parser("export", help="write the viewer's figures of one run as PNG (kaleido)",
                       description="Write the viewer's figures of one run (accuracy, margins, heatmaps, rankings, "
                                   "scatter plots, layer profiles, causal and divergence results when present) as "
                                   "PNG through kaleido, in one headless browser session.")
    e.add_argument("run_dir", help="a run directory (holding manifest.json)")
    e.add_argument("--out", default=None, help="output folder [RUN_DIR/figures/viewer]")
    e.add_argument("--width", type=int, default=1100, help="image width in pixels [1100]")
    return ap


def serve(args: argparse.Namespace) -> None:
    _offline()
    root = Path(args.runs)
    if not root.is_dir():
        _fail(f"--runs {root}: no such folder")
    if (root / "manifest.json").is_file():
        root = root.resolve().parent
    try:
        from .viewer import create_app
    except ImportError as err:  # flask or circuitsvis: the viewer extra
        _fail(f"the viewer needs {err.name or 'flask'}: pip install 'interp[viewer]'")

    app = create_app(root, decode_tokens=not args.no_tokenizer, host=args.host,
                     port=args.port or None, allowed_hosts=args.allow_host)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"interp viewer: runs under {root.resolve()} at http://{shown}:{args.port}/", flush=True)
    if args.host in ("0.0.0.0", "::", "") and not args.allow_host:
        print("interp viewer: listening on every address, answering only localhost names; name the others "
              "with --allow-host", file=sys.stderr, flush=True)
    app.run(host=args.host, port=args.port, debug=args.debug, threaded=True)


def export(args: argparse.Namespace) -> None:
    _offline()
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        _fail(f"{run_dir}: no such folder")
    if not (run_dir / "manifest.json").is_file():
        _fail(f"{run_dir}: not a run dir (no manifest.json)")
    from .figures import export_figures

    try:
        import kaleido  # noqa: F401  PNG export
    except ImportError:
        _fail("PNG export needs kaleido: pip install 'interp[png]' (and Chromium)")
    paths = export_figures(run_dir, args.out, width=args.width)
    for p in paths:
        print(p)
    print(f"{len(paths)} PNG files written", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS + ("-h", "--help"):
        argv = ["serve"] + argv  # ``python -m interp.view --runs X``: serve
    args = parser().parse_args(argv)
    (export if args.command == "export" else serve)(args)


if __name__ == "__main__":
    main()
