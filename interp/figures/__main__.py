"""``python -m interp.figures``: see ``interp.figures.cli``."""

from .cli import main

main()
