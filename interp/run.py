"""Entry point: ``python -m interp.run pairs=grammar hooks=resid_post`` (Hydra; ``-m`` sweeps).

The work happens in ``interp.runner.run(cfg, out_dir)``; this module only lets Hydra compose the
config and choose the run directory (``hydra.run.dir=DIR`` places it).
"""

from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from .runner import run


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
