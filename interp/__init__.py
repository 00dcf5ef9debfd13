"""interp: minimal-pair activation analysis of language models with TransformerLens.

Feed a model two sentences that differ in one token, record activations at chosen hook points, and
measure how much each component changes, against null baselines, with the model's own
error-detection signal and causal checks. The public API:

- ``load_model(spec="smollm2_135m", device="auto", dtype="auto", **overrides)``: a model config
  option, a local directory of weights or a hub name, loaded and booted as a TransformerBridge.
- ``analyze(model, pairs, hooks="resid_post", **options) -> Result``: the whole analysis in memory.
- ``Result``: ``.pairs``, ``.stability``, ``.divergence``, ``.contrast``, ``.rejected`` (DataFrames),
  ``.manifest``, ``.summary()``, ``.save(dir)``; ``load_run(dir) -> Result``.
- ``figures``: the figure library (plotly figures of a Result or a DataFrame).
- ``tracking``: a run logged to MLflow, W&B or TensorBoard (``tracking.log_run(result_or_dir, backend=...)``).

The commands (``python -m interp.run``, ``interp.patch``, ``interp.view``...) are layers on it.
See README.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import config as _config  # noqa: F401  registers the typed config schema with Hydra's ConfigStore
from .result import Result, load_run

__version__ = "0.1.0"
__all__ = ["load_model", "analyze", "load_run", "Result", "figures", "tracking", "ConfigError", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from . import figures, tracking
    from .api import analyze, load_model
    from .config import ConfigError

_LAZY = {"load_model": ("api", "load_model"), "analyze": ("api", "analyze"), "ConfigError": ("config", "ConfigError")}


def __getattr__(name: str) -> Any:
    """The API's heavier parts (torch, transformers, Hydra, plotly) load on first use."""
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    if name in ("figures", "tracking"):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'interp' has no attribute {name!r}")
