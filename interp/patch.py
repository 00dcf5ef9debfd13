"""The command ``python -m interp.patch run=RUN_DIR k=[1,5,10,20]`` (Hydra, ``conf/patch.yaml``;
console script ``interp-patch``): a thin layer over ``interp.causal.run_causal``.

Causal tests of the components a run ranked (``interp.causal`` explains the methods):

1. **Ablation.** Take the top-k components by stability (rank read at ``position``, default the
   edit token), ablate them in both sentences of every grammar pair (``mean`` / ``resample`` /
   ``zero``, at ``where`` = ``edit`` / ``after`` / ``all``) and measure the change of the
   error-detection margin and accuracy per category. Controls: k random components drawn from the
   same hook points and layers as the stable ones (stratified, ``ablation.seeds`` seeds) and the k
   least stable components. One forward pass per batch of pairs per ablation.
2. **Activation patching** between the two sentences of a few pairs: residual stream per
   layer x position and attention heads (``hook_z``) per layer x head, denoising and noising, with
   the normalized metric; per pair and averaged over each category (positions aligned on the edit:
   ``offset`` = position - edit position).

Writes ``RUN_DIR/causal/``: ``ablation.parquet`` (one row per selection x k x seed x mode x where x
category, plus category ``all``), ``ablation_summary.parquet`` (mean and spread over seeds),
``ablation_pairs.parquet`` (per-pair margins), ``selections.parquet`` (which components each
selection ablated), ``patching.parquet``, ``figures/`` and ``manifest.json`` (written last).
A run logged to an experiment tracker (``RUN_DIR/tracking.json``, ``interp.tracking``) gets the
causal summaries and files in the same tracker run.
The settings and the run dir are checked before the model loads; a mistake is one line on stderr
and exit code 2.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from .causal import RunDirError, run_causal, summary_text
from .config import conf_dir


@hydra.main(config_path=str(conf_dir()), config_name="patch", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    from .cli import fail
    from .config import ConfigError
    from .model import ModelLoadError

    try:
        result = run_causal(cfg)
    except (RunDirError, ConfigError, ModelLoadError) as err:
        fail("interp.patch", str(err))
    print(summary_text(result), flush=True)
    from .tracking import track_causal

    track_causal(result["manifest"]["run_dir"], result["dir"])  # to the run's tracker runs (RUN/tracking.json)


def main() -> None:
    """``python -m interp.patch run=RUN_DIR ...`` (console script ``interp-patch``); ``--help`` lists the keys."""
    _hydra_main()


if __name__ == "__main__":
    main()
