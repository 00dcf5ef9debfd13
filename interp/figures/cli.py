"""The command line of ``python -m interp.figures``: redraw the figures of a run dir from its tables."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import rundir as R


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m interp.figures",
        description="Redraw the figures of a run dir from its tables: RUN_DIR/figures/ (heatmaps, ranking, "
                    "scatter, divergence, margins) as offline HTML and, when kaleido finds Chromium, PNG. "
                    "With --causal: the causal test figures in RUN_DIR/causal/figures/ instead.")
    ap.add_argument("run_dir", help="a run directory (holding manifest.json)")
    ap.add_argument("--no-png", action="store_true", help="HTML only (no kaleido)")
    ap.add_argument("--top-k", type=int, default=20, help="components in the ranking [20]")
    ap.add_argument("--causal", action="store_true",
                    help="redraw RUN_DIR/causal/figures/ (the tables of python -m interp.patch)")
    return ap


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        sys.exit(_error(f"{run_dir}: no such folder"))
    if not (run_dir / R.MANIFEST).is_file():
        sys.exit(_error(f"{run_dir}: not a run dir (no {R.MANIFEST})"))
    if args.causal:
        from .causal import write_causal_figures

        if not (run_dir / "causal").is_dir():
            sys.exit(_error(f"{run_dir}: no causal/ folder (python -m interp.patch writes it)"))
        out = write_causal_figures(run_dir / "causal", png=not args.no_png)
    else:
        from .export import write_run_figures

        out = write_run_figures(run_dir, top_k=args.top_k, png=not args.no_png)
    for k, v in out.items():
        print(k, v)


def _error(message: str) -> int:
    print(f"python -m interp.figures: error: {message}", file=sys.stderr)
    return 2
