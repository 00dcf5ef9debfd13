"""Running an analysis from a config: ``run(cfg, out_dir)`` and the command ``python -m interp.run``.

``run`` loads the configured model and pairs, runs ``pipeline.execute`` with checkpoints in
``out_dir`` (so the same command resumes an interrupted run) and saves the ``Result`` there. The
command (``cli.main``) is a thin Hydra layer over it: it checks the whole config before any model
loads and turns a user's mistake into one line on stderr with exit code 2.
"""

from __future__ import annotations

import time
from pathlib import Path

from omegaconf import DictConfig

from .checkpoint import Checkpoint, RunConfigMismatch
from .manifest import config_hash

__all__ = ["run", "run_result", "main", "RunConfigMismatch", "NoPairsError", "get_model"]


def get_model(cfg: DictConfig):
    """The model of ``cfg.model`` on ``cfg.device`` / ``cfg.dtype`` (the last two are kept loaded)."""
    from ..api import cached_model

    return cached_model(cfg.model, cfg.device, cfg.dtype)


def run(cfg: DictConfig, out_dir: str | Path, lm=None) -> Path:
    """Run the analysis described by ``cfg``; write the run directory ``out_dir``; return it.
    (``run_result`` is the same, returning the ``Result``.)"""
    return run_result(cfg, out_dir, lm).run_dir


def check_run_dir(cfg: DictConfig, run_dir: Path) -> Checkpoint:
    """Refuse (``RunConfigMismatch``) a run dir that holds a checkpoint of another config, or a
    finished run of another config unless ``overwrite=true`` (which replaces it entirely). The same
    config again resumes its checkpoint, or replaces its finished run. Returns the run dir's
    ``Checkpoint``."""
    from .. import rundir as R

    ckpt = Checkpoint(run_dir, config_hash(cfg))
    ckpt.check()
    if R.is_complete(run_dir) and not cfg.get("overwrite", False):
        try:
            found = R.read_manifest(run_dir).get("config_hash")
        except R.SchemaVersionError as err:  # a finished run of a newer interp: not replaced unasked
            raise RunConfigMismatch(f"{err}; use another hydra.run.dir, or overwrite=true to replace it") from None
        if found != ckpt.hash:
            raise RunConfigMismatch(
                f"{run_dir} holds a finished run of another config (hash {found}, this one {ckpt.hash}); "
                "use another hydra.run.dir, or overwrite=true to replace it")
    return ckpt


def run_result(cfg: DictConfig, out_dir: str | Path, lm=None):
    """Run the analysis described by ``cfg``; write the run directory ``out_dir``; return the Result.

    ``lm`` overrides the model of ``cfg.model`` (a model already loaded, perhaps with hooks of the
    caller's attached: tests plant structure this way). A run dir holding a checkpoint of the same
    config resumes from it; one of another config is refused (``RunConfigMismatch``)."""
    from .. import rundir as R
    from ..config import validate
    from ..pairs import load_pairs
    from .pipeline import NoPairsError, execute

    t0 = time.time()
    validate(cfg)  # every setting that needs no model, before anything loads or is written
    run_dir = Path(out_dir)
    ckpt = check_run_dir(cfg, run_dir)  # a checkpoint or finished run of another config: refused, nothing touched
    run_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    import torch

    torch.manual_seed(int(cfg.seed))
    if lm is None:
        lm = get_model(cfg)
    else:  # a model the caller holds: the loader's, a TransformerBridge, or (hf_model, tokenizer)
        from ..api import as_loaded_model
        lm = as_loaded_model(lm, cfg.model.get("bos_token"))
    timings["load_model_s"] = time.time() - t0
    t = time.time()
    pair_set = load_pairs(cfg.pairs)
    timings["pairs_s"] = time.time() - t
    try:
        result = execute(cfg, lm, pair_set, ckpt, timings, t0)
    except NoPairsError as err:
        R.write_jsonl(run_dir / R.REJECTED, err.rejected_rows)
        raise NoPairsError(f"{err}; see {run_dir / R.REJECTED}", err.rejected_rows) from None
    result.save(run_dir, overwrite=True)  # the same command again into the same folder replaces it
    ckpt.remove()
    return result


def __getattr__(name: str):
    """``NoPairsError`` from ``pipeline``, imported when asked for: the command's config check
    (``python -m interp.run`` imports this package) needs neither torch nor the statistics."""
    if name == "NoPairsError":
        from .pipeline import NoPairsError

        return NoPairsError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv: list[str] | None = None) -> None:
    """``python -m interp.run`` (``argv``: the overrides; default ``sys.argv[1:]``): see ``interp.run.cli``."""
    from .cli import main as cli_main

    cli_main(argv)
