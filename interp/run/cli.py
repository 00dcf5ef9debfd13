"""The command ``python -m interp.run`` (console script ``interp-run``): Hydra over ``interp.run.run``.

    python -m interp.run pairs=grammar hooks=resid_post
    python -m interp.run -m pairs=grammar,semantic hooks=resid_post,mlp_out   # a sweep
    python -m interp.run --help                                              # every option

Before Hydra starts (and so before any run dir exists or any model loads) the config of every job
is composed and checked (``interp.config.validate``); a mistake (an unknown option, a bad value, a
missing pairs file, a negative size) ends the command with one line on stderr and exit code 2. Errors
a user can fix that show only while running (no pair passed validation, weights not found, a run
dir holding another config) end the same way, and an empty run dir is removed.
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ..cli import fail
from ..config import ConfigError, compose, conf_dir, validate

NAME = "interp.run"
log = logging.getLogger(__name__)
# Hydra flags after which Hydra itself answers (help, printing the config...): no pre-check then
_HYDRA_FLAGS = ("-h", "--help", "--hydra-help", "-c", "--cfg", "-i", "--info", "--version", "--shell-completion",
                "-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir", "-p", "--package",
                "--resolve", "--experimental-rerun", "-r", "--run")


def user_error_types() -> tuple[type[BaseException], ...]:
    from ..model import ModelLoadError
    from ..pairs import PairFileError
    from .checkpoint import CheckpointError, RunConfigMismatch
    from .pipeline import NoPairsError

    return ConfigError, ModelLoadError, PairFileError, RunConfigMismatch, CheckpointError, NoPairsError


def job_overrides(argv: list[str]) -> list[list[str]] | None:
    """The overrides of every job the command line asks for (a sweep expanded), without Hydra's
    own (``hydra.*``); None where Hydra itself answers (``--help``, ``--cfg``...)."""
    if any(a.split("=")[0] in _HYDRA_FLAGS for a in argv):
        return None
    multirun = any(a in ("-m", "--multirun") for a in argv)
    overrides = [a for a in argv if a not in ("-m", "--multirun") and not a.lstrip("+~").startswith("hydra")]
    if not multirun:
        return [overrides]
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        batches = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    except Exception as err:
        from ..config import one_line
        raise ConfigError(one_line(err)) from err
    return [list(job) for batch in batches for job in batch]


def precheck(argv: list[str]) -> None:
    """Compose and check the config of every job; raise ``ConfigError`` at the first problem. A
    single run into a named ``hydra.run.dir`` that holds a checkpoint or a finished run of another
    config is refused here, before Hydra writes anything there (its ``.hydra/`` files included)."""
    jobs = job_overrides(argv)
    for overrides in jobs or []:
        cfg = compose(overrides)
        try:
            validate(cfg)
        except ConfigError as err:
            if len(jobs) > 1:
                raise ConfigError(f"sweep job {' '.join(overrides)}: {err}") from None
            raise
    named = [a.split("=", 1)[1] for a in argv if a.startswith("hydra.run.dir=")]
    if jobs and len(jobs) == 1 and named and "${" not in named[-1]:
        from . import check_run_dir
        from .checkpoint import RunConfigMismatch

        try:
            check_run_dir(compose(jobs[0]), Path(named[-1]))
        except RunConfigMismatch as err:
            raise ConfigError(str(err)) from None


def _remove_if_empty(run_dir: Path) -> None:
    """Remove a run dir that holds nothing but Hydra's own files (the job stopped before any result)."""
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {".hydra", "run.log"}:
        shutil.rmtree(run_dir, ignore_errors=True)


@hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    from . import run_result

    out = Path(HydraConfig.get().runtime.output_dir)
    try:
        result = run_result(cfg, out)  # it validates the config first
    except user_error_types() as err:
        _remove_if_empty(out)
        fail(NAME, str(err))
    print(result.summary(), flush=True)


def main(argv: list[str] | None = None) -> None:
    """The command: check every job's config, then let Hydra run (and sweep) ``interp.run.run``.
    ``argv`` (the overrides, as on the command line) replaces ``sys.argv[1:]``, so a notebook can
    call ``interp.run.main(["pairs=grammar"])`` (there ``interp.analyze`` is the better fit)."""
    if argv is not None:
        saved, sys.argv = sys.argv, [sys.argv[0] if sys.argv else NAME, *argv]
        try:
            return main()
        finally:
            sys.argv = saved
    try:
        precheck(sys.argv[1:])
    except ConfigError as err:
        fail(NAME, str(err))
    _hydra_main()


if __name__ == "__main__":
    main()
