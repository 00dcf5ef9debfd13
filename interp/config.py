"""The run configuration: its typed schema (the one place defaults live), composing it, checking it.

``conf/`` (Hydra config groups) holds the choices a researcher switches between: ``model``,
``pairs``, ``hooks``, ``analysis``. Every key of the top level, ``hooks`` and ``analysis`` is
declared here, with its type and default, and registered with Hydra's ConfigStore as the schema
``conf/config.yaml`` starts from; the group files only set what an option changes. ``validate``
checks what the schema cannot (choices, ranges, files) before any model loads, and raises
``ConfigError`` with one line naming the key and the reason.

``conf_dir()`` finds the configs: inside an installed wheel they ship as ``interp/conf/``; in a
checkout they are the repository's ``conf/``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from .tracking import TrackingConfig, validate_tracking

# ``dtype``'s names and the torch dtype each means (``interp.model.DTYPES`` maps them to torch's; the
# names live here so that checking a config needs no torch)
DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
               "bfloat16": "bfloat16", "bf16": "bfloat16", "float64": "float64"}

POSITION_MODES = ("edit", "last", "after")
BACKENDS = ("auto", "bridge", "hf")
ATTENTION_KERNELS = ("eager", "short", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")
ATTENTION = ("auto", *ATTENTION_KERNELS)
MLP_KERNELS = ("compiled", "fused")
CONTROL_POOLS = ("common", "edits", "matched", "nearest", "grammatical")
CLUSTERS = ("swap", "template", "none")
STABLE_RULES = ("equivalence", "significance")
ALIGNMENTS = ("strict", "same_length", "span")
DUPLICATE_POLICIES = ("keep", "drop")
PAIR_SOURCES = ("bank", "file", "blimp", "hf", "python")
MODEL_SOURCES = ("gguf", "hf", "random", "python")


class ConfigError(ValueError):
    """A setting a user gave is not usable; the message is one line that names the key."""


def conf_dir() -> Path:
    """The Hydra config folder: ``interp/conf`` in an installed wheel, else the checkout's ``conf/``."""
    here = Path(__file__).resolve().parent
    for d in (here / "conf", here.parent / "conf"):
        if (d / "config.yaml").is_file():
            return d
    raise ConfigError(f"no Hydra configs found (looked for {here / 'conf'} and {here.parent / 'conf'}); "
                      "reinstall the package")


# ------------------------------------------------------------------ the schema


@dataclass
class ControlsConfig:
    """The null edit each real edit is compared with (``interp.controls``)."""

    n: int = 3  # control sentences per pair (0 = no baseline, no p-values; grammatical: one per pair)
    # common = frequent whole-word tokens; edits = tokens other pairs edit; matched = same shape class,
    # matched to the real edit's embedding distance and log-frequency bin by bin; nearest = the tokens
    # nearest the edited token in the embedding; grammatical = the pair's ``alt`` (a grammatical
    # alternative at the same position; pairs without one are rejected and reported)
    pool: str = "common"
    pool_size: int = 500  # common: draw from the N most common whole-word tokens of each shape
    words: Optional[list[str]] = None  # or a fixed list of words (each must be one token)
    bins: int = 10  # matched: log-frequency bins of equal width (distance is matched by caliper)


@dataclass
class OffsetConfig:
    """``offset_dim``: a large, nearly constant offset: rms > factor x the site's median rms and
    spread < max_cv x |mean| (BOS excluded)."""

    factor: float = 20.0
    max_cv: float = 0.25


@dataclass
class MassiveConfig:
    """``massive`` (Sun et al. 2024): max |activation| over every token, BOS and delimiters included,
    >= ratio x the layer's median |activation| and >= min_abs."""

    ratio: float = 1000.0
    min_abs: float = 100.0


@dataclass
class PairValuesConfig:
    """What a run keeps per pair (``pair_values.parquet``): |a - b| and the control mean per pair x
    component x position mode, from which the clustered statistics are computed."""

    hooks: Optional[list[str]] = None  # null = every recorded hook point except mlp_post; [] = none
    positions: list[str] = field(default_factory=lambda: list(POSITION_MODES))
    max_mb: int = 1024  # bound: position modes (last first), then hook points, are dropped to fit


@dataclass
class AnalysisConfig:
    # where a - b is measured (after = mean over the tokens after the edit)
    positions: list[str] = field(default_factory=lambda: list(POSITION_MODES))
    # null baseline: a's edited token replaced by other single tokens
    controls: ControlsConfig = field(default_factory=ControlsConfig)
    alpha: float = 0.05  # FDR level of q-values (the significance rule and the contrast)
    # what "stable" means: equivalence = the ratio's upper confidence limit < stable_ratio;
    # significance = q < alpha and t < 0 (the rule before clustered inference)
    rule: str = "equivalence"
    stable_ratio: float = 0.5
    ci: float = 0.95  # confidence level of every interval
    # clusters of the cluster-robust statistics: swap = (token_a, token_b); template = sentence a
    # with its edited token masked; none = every pair its own cluster
    cluster: str = "swap"
    # two pair types or categories to compare (skipped if one is absent)
    contrast: Optional[list[str]] = field(default_factory=lambda: ["grammar", "semantic"])
    offset: OffsetConfig = field(default_factory=OffsetConfig)
    massive: MassiveConfig = field(default_factory=MassiveConfig)
    pair_values: PairValuesConfig = field(default_factory=PairValuesConfig)
    max_offset: int = 15  # divergence profile: token offsets 0..max_offset after the edit
    detail_pairs: int = 2000  # per-pair drill-down tables for the first N kept pairs (-1 = all)
    detail_k: int = 5  # most changed / most stable components listed per pair and site
    # how the batch loop runs the model: hf = the Hugging Face modules with plain PyTorch hooks;
    # bridge = TransformerBridge (eager attention, every hook); auto = hf when every hook point
    # allows it (not attention patterns) and no hooks are attached to the bridge
    backend: str = "auto"
    # attention kernel of the hf backend: auto = short on CUDA (one Triton program per sentence and
    # key-value head), eager elsewhere; eager (uncompiled: the bridge's numbers bit for bit), short, sdpa
    attn: str = "auto"
    # hf backend: torch.compile each layer's norms, attention and MLP (auto: on CUDA, and on the CPU
    # for runs of at least compile_cpu_min_pairs pairs; never with z or mlp_post hooks)
    compile: Any = "auto"
    compile_cpu_min_pairs: int = 5000  # CPU: from about this many pairs on, compiling pays for itself
    # the compiled tree's MLP: compiled (torch.compile: cuBLAS products and one elementwise kernel) or
    # fused (gate and up products with silu(g) * u in one Triton kernel, interp/kernels/mlp.py; gated
    # SiLU MLPs in bf16 or fp16 on a Hopper GPU; opt-in: the whole pass ran 9-10% slower with it on
    # one H100; benchmarks.fused_mlp says whether it pays on a given GPU)
    mlp: str = "compiled"
    overlap: bool = True  # GPU: host one batch ahead; statistics on a side stream
    chunk_layers: Any = "auto"  # layers of a hook point reduced together (auto: 16 on a GPU, 1 on the CPU)
    # Triton kernels for the per-pair values (one per site) and the a and b log-probabilities at the
    # targets (auto: on CUDA; true: required; false: PyTorch ops)
    fused: Any = "auto"
    top_k: int = 20  # components listed in the summary and the bar chart
    n_saved_pairs: int = 8  # first N kept pairs: raw activations and attention patterns saved (-1 = all)
    # stats.safetensors, the mergeable running statistics (the input of interp.merge): auto = when the
    # run is a shard (shard.count > 1); true / false. Checkpoints keep their own copy either way.
    save_state: Any = "auto"
    # stability_by_category.parquet (and per-category divergence rows): auto = when the table has at
    # most by_category_max_rows rows (components x layers x positions x categories, known before the
    # run); true / false. Without it the statistics keep only the groups of pairs that the contrast
    # and the directions need, not every category.
    by_category: Any = "auto"
    by_category_max_rows: int = 1_000_000
    figures: bool = True
    png: bool = True  # static PNG next to each HTML figure (needs Chromium for kaleido)


@dataclass
class HooksConfig:
    points: list[str] = MISSING  # hook points, e.g. [resid_post, z]
    layers: Optional[list[int]] = None  # restrict to these layers (null = every layer)
    pattern_pairs: Optional[list[str]] = None  # pair ids whose attention patterns are saved


@dataclass
class ShardConfig:
    index: int = 0
    count: int = 1


@dataclass
class RunConfig:
    """The whole run: config groups (``model``, ``pairs``, ``hooks``, ``analysis``) and top-level keys."""

    model: Any = MISSING
    pairs: Any = MISSING
    hooks: HooksConfig = field(default_factory=HooksConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    device: str = "auto"  # auto = cuda if present, else cpu
    dtype: str = "auto"  # auto = bfloat16 on cuda, float32 on cpu
    batch_size: int = 32  # pairs per forward pass (each pass runs 2 x batch_size sentences + controls)
    # padded tokens per forward pass over all its rows; null = batch_size x rows per pair x 32: batches
    # of longer sentences hold fewer pairs (the memory of a full batch of 32-token sentences)
    batch_tokens: Optional[int] = None
    seed: int = 0
    progress: bool = True  # progress bar on stderr
    checkpoint_every: int = 20  # batches between checkpoints (resume after a crash); 0 = never
    overwrite: bool = False  # replace a finished run of another config in the run dir (else refused)
    max_tokens: int = 256  # longer sentences are rejected
    # analyse every count-th kept pair from index; python -m interp.merge combines shards
    shard: ShardConfig = field(default_factory=ShardConfig)
    # where the run is logged besides its run dir (conf/tracking: none, mlflow, wandb, tensorboard);
    # not part of the run's config identity (interp.tracking)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


SCHEMA_NAME = "interp_schema"
ConfigStore.instance().store(name=SCHEMA_NAME, node=RunConfig)
# conf/analysis/default.yaml (and every config that picks it, such as conf/benchmark.yaml) starts from this
ConfigStore.instance().store(name="analysis_schema", node=AnalysisConfig)

# Top-level keys that ``interp.analyze(**options)`` takes by name, and the groups searched after them.
OPTION_GROUPS = ("analysis", "pairs", "hooks")


# ------------------------------------------------------------------ composing


def compose(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The main config as ``python -m interp.run OVERRIDES`` composes it (no run dir, no logging)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():  # inside a Hydra app or an earlier compose
        GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=list(overrides))
    except Exception as err:  # Hydra's errors: unknown group option, key, bad value type
        raise ConfigError(one_line(err)) from err


def one_line(err: BaseException) -> str:
    """An exception's message as one line (Hydra and OmegaConf messages run over several lines and
    keep the reason in a chained exception)."""
    parts = []
    e: BaseException | None = err
    while e is not None and len(parts) < 3:
        lines = [ln.strip() for ln in str(e).split("\n") if ln.strip()]
        keep = [ln for ln in lines if not ln.startswith(("full_key:", "object_type=", "reference_type=", "To append",
                                                         "Set the env")) and "$VALUE" not in ln]
        if keep and keep[-1].startswith("Available options") is False and any(
                ln.startswith("Available options") for ln in keep):
            at = next(i for i, ln in enumerate(keep) if ln.startswith("Available options"))
            rest = keep[at + 1:]
            rest = rest[:next((i for i, ln in enumerate(rest) if ln.startswith("Config search path")), len(rest))]
            keep = keep[:at] + [keep[at] + " " + ", ".join(rest)]
        for ln in keep[:2]:
            if ln not in parts:
                parts.append(ln)
        e = e.__cause__ or e.__context__
    return ": ".join(parts) if parts else type(err).__name__


def set_option(cfg: DictConfig, key: str, value: Any) -> None:
    """Set ``key`` (a top-level key, a key of ``analysis``/``pairs``/``hooks``, or a dotted path)
    in ``cfg``; an unknown key or a value of the wrong type raises ``ConfigError``."""
    if "." in key:
        path = key
    elif key in cfg and key not in ("model", "pairs", "hooks", "analysis"):
        path = key
    else:
        owner = next((g for g in OPTION_GROUPS if key in cfg[g]), None)
        if owner is None:
            known = sorted({k for k in cfg if k not in ("model", "pairs", "hooks", "analysis")}
                           | {k for g in OPTION_GROUPS for k in cfg[g]})
            raise ConfigError(f"unknown option {key!r}; known options: {', '.join(known)}")
        path = f"{owner}.{key}"
    parent_path, _, leaf = path.rpartition(".")
    parent = OmegaConf.select(cfg, parent_path) if parent_path else cfg
    if parent is None or leaf not in parent:
        raise ConfigError(f"unknown option {path!r}")
    try:
        if isinstance(value, dict) and isinstance(parent[leaf], DictConfig):
            merged = OmegaConf.merge(parent[leaf], value)
            parent[leaf] = merged
        else:
            parent[leaf] = value
    except Exception as err:
        raise ConfigError(f"option {path}={value!r}: {one_line(err)}") from err


# ------------------------------------------------------------------ checking


def _choice(value, choices, key: str) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(map(str, choices))}")


def _at_least(value, low: int, key: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"{key}={value!r} must be a whole number >= {low}")


def validate(cfg: DictConfig, check_files: bool = True) -> None:
    """Check every setting that can be checked without the model; raise ``ConfigError`` (one line,
    naming the key) at the first problem. ``check_files``: also check that input files exist."""
    from .hooks import HOOK_POINTS

    a = cfg.analysis
    for p in a.positions:
        _choice(p, POSITION_MODES, "analysis.positions")
    if not a.positions:
        raise ConfigError("analysis.positions is empty; use some of edit, last, after")
    _choice(a.backend, BACKENDS, "analysis.backend")
    _choice(a.attn, ATTENTION, "analysis.attn")
    _choice(a.compile, ("auto", True, False), "analysis.compile")
    _choice(a.mlp, MLP_KERNELS, "analysis.mlp")
    _choice(a.fused, ("auto", True, False), "analysis.fused")
    if a.chunk_layers != "auto":
        _at_least(a.chunk_layers, 1, "analysis.chunk_layers")
    _at_least(a.controls.n, 0, "analysis.controls.n")
    _at_least(a.controls.pool_size, 1, "analysis.controls.pool_size")
    if not a.controls.words:
        _choice(a.controls.pool, CONTROL_POOLS, "analysis.controls.pool")
    if not 0 < a.alpha < 1:
        raise ConfigError(f"analysis.alpha={a.alpha} must lie between 0 and 1")
    if a.contrast is not None and len(a.contrast) not in (0, 2):
        raise ConfigError(f"analysis.contrast needs two groups (pair types or categories), got {list(a.contrast)}")
    if a.contrast and a.contrast[0] == a.contrast[1]:
        raise ConfigError(f"analysis.contrast compares a group with itself: {list(a.contrast)}")
    for key in ("max_offset", "detail_k", "top_k", "compile_cpu_min_pairs"):
        _at_least(a[key], 0, f"analysis.{key}")
    for key in ("detail_pairs", "n_saved_pairs"):
        _at_least(a[key], -1, f"analysis.{key}")
    if a.offset.factor <= 0 or a.offset.max_cv < 0:
        raise ConfigError("analysis.offset.factor must be > 0 and analysis.offset.max_cv >= 0")
    if a.massive.ratio <= 0 or a.massive.min_abs < 0:
        raise ConfigError("analysis.massive.ratio must be > 0 and analysis.massive.min_abs >= 0")
    _choice(a.rule, STABLE_RULES, "analysis.rule")
    _choice(a.cluster, CLUSTERS, "analysis.cluster")
    if not a.stable_ratio > 0:
        raise ConfigError(f"analysis.stable_ratio={a.stable_ratio} must be > 0")
    if not 0 < a.ci < 1:
        raise ConfigError(f"analysis.ci={a.ci} must lie between 0 and 1")
    _at_least(a.controls.bins, 1, "analysis.controls.bins")
    for p in a.pair_values.positions:
        _choice(p, POSITION_MODES, "analysis.pair_values.positions")
    for p in a.pair_values.hooks or []:
        _choice(p, sorted(HOOK_POINTS) + ["z_head"], "analysis.pair_values.hooks")
    _at_least(a.pair_values.max_mb, 0, "analysis.pair_values.max_mb")
    _choice(a.save_state, ("auto", True, False), "analysis.save_state")
    _choice(a.by_category, ("auto", True, False), "analysis.by_category")
    _at_least(a.by_category_max_rows, 0, "analysis.by_category_max_rows")

    _at_least(cfg.batch_size, 1, "batch_size")
    if cfg.get("batch_tokens") is not None:
        _at_least(cfg.batch_tokens, 1, "batch_tokens")
    _at_least(cfg.checkpoint_every, 0, "checkpoint_every")
    _at_least(cfg.max_tokens, 2, "max_tokens")
    if cfg.device not in ("auto", "cpu") and not str(cfg.device).startswith("cuda"):
        raise ConfigError(f"device={cfg.device!r} is not one of auto, cpu, cuda, cuda:N")
    _choice(cfg.dtype, ("auto", *DTYPE_NAMES), "dtype")
    _at_least(cfg.shard.count, 1, "shard.count")
    if not 0 <= cfg.shard.index < cfg.shard.count:
        raise ConfigError(f"shard.index={cfg.shard.index} must lie in 0..shard.count-1 ({cfg.shard.count - 1})")
    validate_tracking(cfg.get("tracking"))

    if not cfg.hooks.points:
        raise ConfigError("hooks.points is empty; name at least one hook point")
    for p in cfg.hooks.points:
        _choice(p, sorted(HOOK_POINTS), "hooks.points")
    for layer in cfg.hooks.layers or []:
        _at_least(layer, 0, "hooks.layers")

    m = cfg.model
    _choice(m.get("source"), MODEL_SOURCES, "model.source")
    if m.source == "hf" and not (m.get("path") or (m.get("name") and m.name != "???")):
        raise ConfigError("model=hf needs model.name=ORG/NAME (hub) or model.path=DIR (local weights)")
    if check_files and m.source == "hf" and m.get("path") and not Path(m.path).is_dir():
        raise ConfigError(f"model.path={m.path}: no such directory")
    _validate_pairs(cfg.pairs, check_files)


def _validate_pairs(p: DictConfig, check_files: bool) -> None:
    _choice(p.get("source"), PAIR_SOURCES, "pairs.source")
    _choice(p.get("alignment") or "strict", ALIGNMENTS, "pairs.alignment")
    _choice(p.get("duplicates") or "keep", DUPLICATE_POLICIES, "pairs.duplicates")
    _at_least(p.get("max_edit_tokens", 4), 1, "pairs.max_edit_tokens")
    if p.get("limit") is not None:
        _at_least(p.limit, 1, "pairs.limit")
    from .pairs import PAIR_TYPES
    for t in p.get("types") or []:
        _choice(t, PAIR_TYPES, "pairs.types")
    if p.source == "bank" and p.get("path"):
        raise ConfigError(f"pairs.path={p.path} is not read by the built-in bank; use pairs=file pairs.path=FILE")
    if p.source == "bank" and p.get("categories"):
        from .pairs import bank_categories
        known = bank_categories()
        bad = [c for c in p.categories if c not in known]
        if bad:
            raise ConfigError(f"pairs.categories: {bad[0]!r} is not a category of the bank ({', '.join(sorted(known))})")
    if p.source == "file":
        if OmegaConf.is_missing(p, "path") or not p.get("path"):
            raise ConfigError("pairs=file needs pairs.path=FILE (JSONL, CSV, parquet or a JSON array)")
        if check_files:
            from .pairs.files import check_pair_file
            check_pair_file(p.path)
    if p.source == "blimp" and check_files:
        from .pairs.blimp import blimp_dir
        folder = blimp_dir(p)
        if not folder.is_dir():
            raise ConfigError(f"pairs.path={folder}: no BLiMP folder there")
    if p.source == "hf":  # datasets installed, the dataset, its split and mapped columns (interp/pairs/hf.py)
        from .pairs.hf import check_hf_source
        check_hf_source(p, check_files)

