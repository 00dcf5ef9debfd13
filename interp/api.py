"""The public Python API: ``load_model`` and ``analyze``, one call each, results in memory.

    >>> import interp
    >>> lm = interp.load_model()                               # the embedded SmolLM2-135M
    >>> r = interp.analyze(lm, [("She is good at math.", "She is good of math.")],
    ...                    hooks=["resid_post", "z"], controls={"n": 5}, positions=["edit"])
    >>> r.stability.nsmallest(10, "rank_calibrated")
    >>> r.save("outputs/runs/notebook")                         # a run dir for the viewer

``analyze`` takes the model as ``load_model`` returns it, as a TransformerLens
``TransformerBridge``, or as a Hugging Face model with its tokenizer (``(model, tokenizer)``);
the pairs as ``(a, b)`` tuples, dicts (``a``, ``b``, optional ``category``, ``type``, ``pair_id``),
a pandas DataFrame, a ``datasets.Dataset`` or a file path; and the options under the names of the
Hydra config (``python -m interp.run``), so a notebook and the command line compute the same
tables from the same settings. Nothing is written unless ``Result.save`` is called.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf, open_dict

from .config import ConfigError, compose, conf_dir, set_option, validate
from .model import LoadedModel, ModelLoadError, wrap_model
from .pairs import PairSet, edit_limits
from .result import Result

log = logging.getLogger(__name__)

_MODELS: dict[str, LoadedModel] = {}  # the last two models of this process, reused by a sweep's jobs


def model_config(spec: str = "smollm2_135m", **overrides: Any) -> DictConfig:
    """The ``model`` config of ``spec``: a config group option of ``conf/model`` (``smollm2_135m``,
    ``tiny``, ``llama3_8b``...), a local directory of weights, or a Hugging Face hub name; with
    ``overrides`` set on it (``seed=1``, ``bos_token=...``, ``device_map="auto"``...)."""
    group = conf_dir() / "model"
    options = sorted(p.stem for p in group.glob("*.yaml"))
    if spec in options:
        mcfg = OmegaConf.load(group / f"{spec}.yaml")
    elif Path(spec).expanduser().is_dir():
        mcfg = OmegaConf.load(group / "hf.yaml")
        mcfg.name, mcfg.path = Path(spec).name, str(Path(spec).expanduser())
    elif "/" in spec and not spec.startswith((".", "/", "~")):
        mcfg = OmegaConf.load(group / "hf.yaml")
        mcfg.name = spec
    else:
        raise ConfigError(f"model {spec!r} is not a config option ({', '.join(options)}), an existing "
                          "directory, or a hub name of the form ORG/NAME")
    for key, value in overrides.items():
        with open_dict(mcfg):
            mcfg[key] = value
    return mcfg


def cached_model(mcfg: DictConfig, device: str = "auto", dtype: str = "auto") -> LoadedModel:
    """``load_model`` of a model config, remembering the last two (a Hydra sweep reuses them)."""
    from .model import load_model as load, resolve_device, resolve_dtype

    dev = resolve_device(device)
    key = json.dumps([OmegaConf.to_container(mcfg, resolve=True), str(dev), str(resolve_dtype(dtype, dev))],
                     sort_keys=True)
    if key not in _MODELS:
        while len(_MODELS) >= 2:  # keep the two most recent (a sweep alternates at most a few)
            _MODELS.pop(next(iter(_MODELS)))
        _MODELS[key] = load(mcfg, device, dtype)
    else:
        _MODELS[key] = _MODELS.pop(key)  # most recent last
    return _MODELS[key]


def load_model(spec: str = "smollm2_135m", device: str = "auto", dtype: str = "auto",
               **overrides: Any) -> LoadedModel:
    """Load a model for ``analyze``: a config option of ``conf/model`` (default: the embedded
    SmolLM2-135M-Instruct), a local directory of Hugging Face weights, or a hub name. ``device``:
    ``auto`` (CUDA if present), ``cpu``, ``cuda``; ``dtype``: ``auto`` (bfloat16 on CUDA, float32
    on the CPU), ``float32``, ``bfloat16``, ``float16``. ``overrides`` set keys of the model config
    (see ``conf/model/*.yaml``)."""
    mcfg = model_config(spec, **overrides)
    return cached_model(mcfg, device, dtype)


# ------------------------------------------------------------------ inputs


def as_loaded_model(model: Any, bos_token: str | None = None) -> LoadedModel:
    """``model`` as the pipeline needs it: a ``LoadedModel`` as is; a ``TransformerBridge``; a
    Hugging Face model with its tokenizer as ``(model, tokenizer)``."""
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, tuple) and len(model) == 2:
        return wrap_model(model[0], model[1], bos_token=bos_token)
    from transformer_lens.model_bridge import TransformerBridge

    if isinstance(model, TransformerBridge):
        return wrap_model(model, getattr(model, "tokenizer", None), bos_token=bos_token)
    if hasattr(model, "config") and hasattr(model, "forward"):
        raise TypeError("a Hugging Face model needs its tokenizer: pass (model, tokenizer)")
    raise TypeError(f"model must be what interp.load_model returns, a TransformerBridge, or (hf_model, tokenizer); "
                    f"got {type(model).__name__}")


def as_pair_set(pairs: Any, strict: bool = False, alignment: str | None = None,
                max_edit_tokens: int | None = None) -> tuple[PairSet, dict]:
    """``pairs`` as a ``PairSet`` and the ``pairs`` config that describes where they came from.
    Accepts a file path (JSONL, CSV, parquet or a JSON array), a list of ``(a, b)`` tuples or of dicts, a pandas DataFrame,
    a ``datasets.Dataset`` (read as ``pairs=hf`` reads a split: BLiMP's ``UID`` as the category, None
    cells left out; pick a split of a ``DatasetDict``), any iterable of dicts. CausalGym records
    (``base``/``src``) become pairs in every form; ``alignment``/``max_edit_tokens`` (``pairs.*``): what
    their words must meet (``interp.pairs.causalgym``)."""
    from .pairs import records_to_pairs
    from .pairs.files import read_pair_file

    limits = {"alignment": alignment, "max_edit_tokens": max_edit_tokens}
    if isinstance(pairs, (str, Path)):
        path = Path(pairs)
        got, problems = read_pair_file(path, strict=strict, **limits)
        return PairSet(got, problems), {"source": "file", "path": str(path)}
    if isinstance(pairs, pd.DataFrame):
        return records_to_pairs(pairs.to_dict("records"), "<DataFrame>", strict, **limits), {"source": "python",
                                                                                            "path": "<DataFrame>"}
    kind = type(pairs).__name__
    from_datasets = type(pairs).__module__.startswith("datasets.") and hasattr(pairs, "column_names")
    if from_datasets and kind.endswith("DatasetDict"):
        raise TypeError(f"pairs: a {kind} holds several splits ({', '.join(pairs)}); pass one: pairs['train']")
    if isinstance(pairs, Mapping) or not isinstance(pairs, Iterable):
        raise TypeError(f"pairs must be a file path, a list of (a, b) or dicts, a DataFrame or a Dataset; got {kind}")
    source = f"<{type(pairs).__module__.split('.')[0]}.{kind}>" if kind != "list" else "<list>"
    if from_datasets:
        from .pairs.hf import dataset_pairs
        return dataset_pairs(pairs, source, strict=strict, **limits), {"source": "python", "path": source}
    return records_to_pairs(list(pairs), source, strict, **limits), {"source": "python", "path": source}


def analysis_config(hooks: str | list[str] = "resid_post", overrides: Iterable[str] = (),
                    **options: Any) -> DictConfig:
    """The run config ``analyze`` uses: the Hydra defaults, ``hooks`` (a ``conf/hooks`` option or a
    list of hook points), Hydra ``overrides`` (``["analysis.controls.pool=edits"]``), then each
    option by name (``batch_size=8``, ``controls={"n": 0}``, ``layers=[0, 5]``...)."""
    hook_group = sorted(p.stem for p in (conf_dir() / "hooks").glob("*.yaml"))
    # pairs: the neutral ``file`` settings (no type or category filter); analyze fills in the source
    over = ["pairs=file", "pairs.path=python", *overrides]
    if isinstance(hooks, str) and hooks in hook_group:
        over.insert(2, f"hooks={hooks}")
    cfg = compose(over)
    if not (isinstance(hooks, str) and hooks in hook_group):
        set_option(cfg, "hooks.points", [hooks] if isinstance(hooks, str) else list(hooks))
    for key, value in options.items():
        set_option(cfg, key, value)
    return cfg


# settings of the command that analyze takes from its arguments instead, and where to give them
_RUN_ONLY = {
    "device": "the model's device: interp.load_model(spec, device=...)",
    "dtype": "the model's dtype: interp.load_model(spec, dtype=...)",
    "model": "the model argument (interp.load_model(spec, **overrides) for a model config)",
    "path": "the pairs argument", "source": "the pairs argument",
    "checkpoint_every": "checkpoints belong to run dirs: python -m interp.run, or interp.run.run(cfg, dir)",
    "shard": "shards belong to python -m interp.run / interp.shards",
    "overwrite": "Result.save(dir, overwrite=True)",
}


def _refuse_run_only(options: dict, overrides: Iterable[str], model: Any, bos_token: str | None) -> None:
    """``ConfigError`` for a setting ``analyze`` would not honour (it comes from another argument)."""
    keys = [*options, *(o.lstrip("+~").split("=")[0] for o in overrides)]
    for key in keys:
        parts = key.split(".")
        head = parts[1] if parts[0] == "pairs" and len(parts) > 1 else parts[0]
        if head in _RUN_ONLY and (parts[0] != "pairs" or head in ("path", "source")):
            raise ConfigError(f"analyze does not take {key!r}: it comes from {_RUN_ONLY[head]}")
    if bos_token is not None and isinstance(model, LoadedModel):
        raise ConfigError("bos_token applies to a model analyze wraps; a loaded model has its own: "
                          "interp.load_model(spec, bos_token=...)")


def analyze(model: Any, pairs: Any, hooks: str | list[str] = "resid_post", *, bos_token: str | None = None,
            overrides: Iterable[str] = (), progress: bool = False, save: str | Path | None = None,
            **options: Any) -> Result:
    """Analyse minimal pairs with a model; return a ``Result`` (tables in memory).

    ``model``: ``interp.load_model(...)``, a ``TransformerBridge``, or ``(hf_model, tokenizer)``
    (its BOS token: ``bos_token``, else the tokenizer's BOS, else its EOS).
    ``pairs``: a file path, a list of ``(a, b)`` tuples or of dicts, a DataFrame, a ``datasets.Dataset``
    (BLiMP rows: ``UID`` is the category); CausalGym records (``base``/``src``) in any of these forms.
    ``hooks``: a ``conf/hooks`` option (``resid_post``, ``standard``, ``z``, ``mlp_post``...) or a
    list of hook points. ``options``: any key of the run config by name (``positions``, ``controls``,
    ``alpha``, ``contrast``, ``batch_size``, ``layers``, ``limit``, ``categories``, ``seed``...;
    dict values merge into groups, ``controls={"n": 0}``); ``overrides``: Hydra override strings.
    ``save``: also write the run directory there. Errors in the settings raise ``ConfigError``
    before the model runs."""
    from .result import check_target
    from .run.pipeline import execute

    t0 = time.time()
    _refuse_run_only(options, overrides, model, bos_token)
    if save is not None:
        check_target(Path(save))  # before the work, not after it
    cfg = analysis_config(hooks, overrides, progress=progress, **options)
    lm = as_loaded_model(model, bos_token)
    pair_set, pairs_cfg = as_pair_set(pairs, strict=bool(cfg.pairs.get("strict", False)), **edit_limits(cfg.pairs))
    with open_dict(cfg):
        keep = {k: cfg.pairs.get(k) for k in ("types", "categories", "limit", "seed", "strict", "alignment",
                                                "max_edit_tokens", "duplicates")}
        cfg.pairs = {**keep, **pairs_cfg}
        cfg.model = (OmegaConf.to_container(lm.model_config, resolve=True) if lm.model_config is not None
                     else {"source": "python", "name": lm.name})
        cfg.device, cfg.dtype = str(lm.device), str(lm.dtype).replace("torch.", "")
    validate(cfg, check_files=False)
    from .pairs import select_pairs

    pair_set = select_pairs(pair_set, cfg.pairs)
    result = execute(cfg, lm, pair_set, None, {"load_model_s": 0.0}, t0)
    if save is not None:
        result.save(save)
    return result


__all__ = ["load_model", "analyze", "model_config", "analysis_config", "ModelLoadError", "ConfigError"]
