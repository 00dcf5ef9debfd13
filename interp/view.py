"""``python -m interp.view``: browse run directories in a web browser; export the figures as PNG.

    python -m interp.view [--runs outputs] [--host 127.0.0.1] [--port 8050]
    python -m interp.view export RUN_DIR [--out DIR] [--width 1100]

The server reads every run dir (a folder holding ``manifest.json``) under ``--runs``; when
``--runs`` is itself a run dir, its parent folder is served. Nothing is fetched from the network:
plotly.js and the CircuitsVis bundle come from the installed packages, token strings from a
tokenizer file already on this machine (otherwise token ids are shown).

``export`` writes the viewer's figures of one run (accuracy, margins, heatmaps of every hook and
position, rankings, scatter plots, layer profiles, causal results when present) as PNG through
kaleido, all in one browser session; the default folder is ``RUN_DIR/figures/viewer``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _offline() -> None:
    # the viewer never downloads: keep the Hugging Face libraries off the network too
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def serve(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m interp.view", description="Browse run directories.")
    ap.add_argument("--runs", default="outputs", help="folder searched (recursively) for run dirs [outputs]")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on [127.0.0.1]")
    ap.add_argument("--port", type=int, default=8050, help="port [8050]")
    ap.add_argument("--no-tokenizer", action="store_true", help="show token ids instead of token strings")
    ap.add_argument("--debug", action="store_true", help="Flask debug mode (reloader, debugger)")
    args = ap.parse_args(argv)
    _offline()
    root = Path(args.runs)
    if not root.is_dir():
        raise SystemExit(f"--runs {root}: no such folder")
    if (root / "manifest.json").is_file():
        root = root.resolve().parent
    from .viewer import create_app

    app = create_app(root, decode_tokens=not args.no_tokenizer)
    print(f"interp viewer: runs under {root.resolve()} at http://{args.host}:{args.port}/", flush=True)
    app.run(host=args.host, port=args.port, debug=args.debug, threaded=True)


def export(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m interp.view export",
                                 description="Write the viewer's figures of one run as PNG (kaleido).")
    ap.add_argument("run_dir", help="a run directory (holding manifest.json)")
    ap.add_argument("--out", default=None, help="output folder [RUN_DIR/figures/viewer]")
    ap.add_argument("--width", type=int, default=1100, help="image width in pixels [1100]")
    args = ap.parse_args(argv)
    _offline()
    from .viewer import export_figures

    try:
        paths = export_figures(args.run_dir, args.out, width=args.width)
    except FileNotFoundError as err:
        raise SystemExit(str(err))
    for p in paths:
        print(p)
    print(f"{len(paths)} PNG files written", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "export":
        export(argv[1:])
    else:
        serve(argv)


if __name__ == "__main__":
    main()
