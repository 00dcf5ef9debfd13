"""Shared fixtures: seeded RNGs, the tiny random Llama (unit tier), the embedded model (integration)."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig, open_dict

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if not torch.cuda.is_available():  # the fused statistics kernel runs through Triton's interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def restore_environ():
    """Each test leaves the process environment as it found it: a command's ``main`` run in-process
    may set variables for its process (``interp.view`` sets ``HF_HUB_OFFLINE=1``), which would change
    later tests of the same worker depending on the order the tests run in."""
    saved = dict(os.environ)
    yield
    if dict(os.environ) != saved:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(autouse=True)
def no_closed_log_streams():
    """An in-process Hydra run (``interp.run``'s ``main``) attaches logging handlers to the streams of
    its test's output capture, closed when that test ends: a later log record would print a
    "Logging error" into the next test's captured stderr. Such handlers are removed first."""
    import logging

    loggers = [logging.getLogger(), *(x for x in logging.Logger.manager.loggerDict.values()
                                      if isinstance(x, logging.Logger))]
    for logger in loggers:
        for h in list(logger.handlers):
            if getattr(getattr(h, "stream", None), "closed", False):
                logger.removeHandler(h)
    yield


@pytest.fixture(scope="module")
def one_thread():
    """The test machine's 2 cores are shared: one intra-op thread is many times faster here
    (``pytestmark = pytest.mark.usefixtures("one_thread")`` in a module)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_cfg(*overrides: str) -> DictConfig:
    """Compose the main config like ``python -m interp.run`` does, with the given overrides."""
    from interp.config import compose as compose_config  # registers the typed schema the configs start from

    cfg = compose_config(list(overrides))
    with open_dict(cfg):
        cfg.progress = False
    return cfg


@pytest.fixture(scope="session")
def tiny_cfg() -> DictConfig:
    return make_cfg("model=tiny", "device=cpu", "dtype=float32", *tokenizer_overrides())


def tokenizer_overrides() -> list[str]:
    """Where the embedded package is not installed (the GPU machine), the tiny model's tokenizer
    comes from the folder named by ``INTERP_TOKENIZER_DIR``."""
    tok = os.environ.get("INTERP_TOKENIZER_DIR")
    return ["model.tokenizer.source=hf", f"+model.tokenizer.path={tok}"] if tok else []


@pytest.fixture(scope="session")
def tiny_lm(tiny_cfg):
    from interp.run import get_model

    return get_model(tiny_cfg)


@pytest.fixture(scope="session")
def smol_lm():
    from interp.model import load_model

    cfg = make_cfg("device=cpu", "dtype=float32")
    return load_model(cfg.model, "cpu", "float32")


# One-token edits under the SmolLM2 tokenizer, of two categories and types: (a, b, category, type)
PAIR_ROWS = [
    ('She is good at math.', 'She is good in math.', 'preposition', 'grammar'),
    ('She ate an apple today.', 'She ate a apple today.', 'article', 'grammar'),
    ('He is afraid of dogs at night.', 'He is afraid from dogs at night.', 'preposition', 'grammar'),
    ('They bought an old car.', 'They bought a old car.', 'article', 'grammar'),
    ('She loves coffee.', 'He loves coffee.', 'subject', 'semantic'),
    ('We met in Paris last year.', 'We met in Berlin last year.', 'location', 'semantic'),
    ('The soup was hot.', 'The soup was cold.', 'adjective', 'semantic'),
    ('My brother lives in a small house near the river.', 'My sister lives in a small house near the river.', 'subject', 'semantic'),
]


def write_pairs(path: Path) -> Path:
    """``PAIR_ROWS`` as a JSONL pairs file at ``path``."""
    import json

    path.write_text("".join(json.dumps({"a": a, "b": b, "category": c, "type": t}) + "\n" for a, b, c, t in PAIR_ROWS))
    return path


@pytest.fixture
def pairs_file(tmp_path) -> Path:
    """A small JSONL of one-token edits under the SmolLM2 tokenizer, of two categories and types."""
    return write_pairs(tmp_path / "pairs.jsonl")


def hf_reference(lm, attn: str = "eager"):
    """The Hugging Face model as loaded (not the module tree the bridge rewired): a fresh twin of
    the plain tree, sharing the weights, with attention kernel ``attn``."""
    from interp.backends.hf import twin

    ref = twin(lm.plain.original_model)
    ref.set_attn_implementation(attn)
    return ref


def bridge_vs_hf(lm, batch, atol: float):
    """Run a batch through the bridge (caching every resid_post) and through the Hugging Face model
    as loaded (eager attention, modules untouched by the bridge); assert the cached residual stream
    equals HF's hidden states at every real token (every layer but the last, where HF applies the
    final norm). Returns (bridge logits, HF output)."""
    import torch

    L = lm.info["n_layers"]
    names = [f"blocks.{l}.hook_resid_post" for l in range(L)]
    logits, cache = lm.bridge.run_with_cache(batch.tokens, attention_mask=batch.mask.long(),
                                             names_filter=lambda n: n in names)
    with torch.no_grad():
        hf = hf_reference(lm)(batch.tokens, attention_mask=batch.mask.long(), output_hidden_states=True)
    m = batch.mask[..., None]
    for l in range(L - 1):
        torch.testing.assert_close(cache[names[l]] * m, hf.hidden_states[l + 1] * m, rtol=atol, atol=atol)
    return logits, hf


def command(args: list[str], env_extra: dict | None = None, module: str = "interp.run") -> tuple[list[str], dict]:
    """``python -m MODULE ARGS`` as (argv, env) for ``run_many`` or ``run_command``: this process's
    environment, unbuffered output, plus ``env_extra`` (a variable whose value is None is unset)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return [sys.executable, "-m", module, *args], {k: v for k, v in env.items() if v is not None}


def _run(argv: list[str], env: dict, timeout: int, cwd=None):
    import subprocess

    return subprocess.run(argv, cwd=cwd or REPO, env=env, capture_output=True, text=True, timeout=timeout)


def run_command(args: list[str], env_extra: dict | None = None, module: str = "interp.run", timeout: int = 600,
                cwd=None):
    """Run ``command(...)`` in ``cwd`` (default: the repository root); its ``CompletedProcess`` (text
    output captured)."""
    return _run(*command(args, env_extra, module), timeout, cwd)


def run_many(commands: list[tuple[list[str], dict]], jobs: int = 2, timeout: int = 600) -> list:
    """Run command lines (``(argv, env)``) ``jobs`` at a time; their ``CompletedProcess``es in
    order. Each runs one torch thread (``OMP_NUM_THREADS=1``): most of a short command is its
    single-threaded start, so two at a time on two cores take about half the time of one after another."""
    from concurrent.futures import ThreadPoolExecutor

    def one(cmd):
        argv, env = cmd
        return _run(argv, {**env, "OMP_NUM_THREADS": "1"}, timeout)

    with ThreadPoolExecutor(jobs) as pool:
        return list(pool.map(one, commands))
