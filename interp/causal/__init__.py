"""Causal checks of the components a run ranked: do they matter for the model's error detection?

Stability is a correlation; these checks intervene. ``python -m interp.patch`` (``run_causal``)
writes ``RUN_DIR/causal/``.

- ``selection``: the run dir checked; candidate components ranked by the run's stability table;
  the stable / random / least-stable selections; the pairs re-tokenized as in the run;
- ``ablation``: components replaced (mean, resample, zero) in both sentences of every pair, and the
  margin's change;
- ``patching``: activation patching between a pair's two sentences (denoising, noising);
- ``checks``: the whole of it as one call, the files and their manifest.
"""

from .checks import run_causal, summary_text
from .selection import RunDirError, check_run_dir

__all__ = ["run_causal", "summary_text", "RunDirError", "check_run_dir"]
