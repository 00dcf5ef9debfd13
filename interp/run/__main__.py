"""``python -m interp.run``: the Hydra command of ``interp.run.cli``."""

from .cli import main

main()
