"""Experiment tracking: a run logged to MLflow, Weights & Biases or TensorBoard.

    python -m interp.run tracking=mlflow pairs=grammar             # conf/tracking/*.yaml
    python -m interp.run -m tracking=wandb pairs=grammar,semantic   # one tracker run per job, grouped
    >>> interp.tracking.log_run("outputs/runs/RUN", backend="mlflow")   # from a notebook: the run id

A tracked run gets
- **params**: the run's resolved config (``manifest.json``'s ``config``), as dotted keys
  (``analysis.controls.n``); MLflow: lists as JSON, values longer than MLflow's limit cut with a
  note (the whole config is in the ``manifest.json`` artifact); W&B: the nested config;
  TensorBoard: hparams and the config as text.
- **metrics**: ``counts/...`` (loaded, kept, rejected and by reason, failed, ...),
  ``accuracy/CATEGORY`` (the manifest's ``accuracy``), ``mean_margin/CATEGORY``,
  ``grammar_accuracy``, ``stable/HOOK/POSITION`` and ``tested/HOOK/POSITION`` (components stable
  beyond the control baseline under the run's rule, and those with a test), ``null/...`` (the
  control draw's facts), ``timings/...``; and once ``python -m interp.patch`` ran, ``causal/...``
  (ablation summaries and the comparison with random selections for category ``all``, activation
  patching's normalized effect per layer as the metric's step, AtP's agreement with patching).
- **artifacts**: ``manifest.json``, ``rejected.jsonl``, the run's parquet tables, ``figures/``, the
  Hydra config (``hydra/``), ``causal/`` and ``summary/`` (``stability_summary.json``,
  ``metrics.json``, ``artifacts.json``: what was logged and what was not); files over
  ``max_artifact_mb`` and tensor files (``*.safetensors``) are skipped and listed. TensorBoard
  stores no files: PNG figures become images, the rest is listed as text (the files stay in the
  run dir beside the logs).

Where the tracker run is, is recorded in ``RUN/tracking.json`` (one entry per backend), so that
``python -m interp.patch`` adds the causal summaries to the same tracker run (or, where that run
cannot be reopened, to a new one linked by the tag ``interp.linked_run``). The ``tracking`` key is
not part of a run's config identity: ``config_hash``, resume and the run-dir checks ignore it, and
``manifest.json`` does not record it.

The command logs at the end of each Hydra job (``interp.callbacks.Tracking``): a completed job as
complete, a job that raised as failed (params and the error only); an error of the tracker never
fails a finished run, it is one warning on stderr.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from . import rundir as R
from .rules import grammar_accuracy

BACKENDS = ("none", "mlflow", "wandb", "tensorboard")
PACKAGES = {"mlflow": "mlflow", "wandb": "wandb", "tensorboard": "tensorboard"}  # backend -> module
WANDB_MODES = ("offline", "online", "disabled")
TRACKING_FILE = "tracking.json"  # RUN/tracking.json: where each backend's tracker run is
INSTALL = "pip install interp[tracking]"
DEFAULT_STORE = "outputs/.tracking"  # MLflow's file store and W&B's folder (a dot folder: the viewer skips it)
MLFLOW_PARAM_MAX = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
MLFLOW_TAG_MAX = 8000
TENSORBOARD_DIR = "tensorboard"  # default TensorBoard log dir inside the run dir
PATCHING_STEP = "causal/patching/layer"  # W&B: the step axis of the patching curves


@dataclass
class TrackingConfig:
    """``tracking``: where a run is logged besides its run dir (``conf/tracking/*.yaml``). Not part of
    the run's config identity."""

    backend: str = "none"  # none | mlflow | wandb | tensorboard
    name: Optional[str] = None  # tracker run name (null: the run dir's name; in a sweep the job dir's)
    group: Optional[str] = None  # null: in a sweep, the sweep dir's name (W&B group; MLflow/TensorBoard tag)
    tags: dict[str, str] = field(default_factory=dict)  # extra tags (MLflow tags, W&B tags, TensorBoard text)
    max_artifact_mb: float = 50.0  # files larger than this are not logged (listed instead); 0 = no files
    # MLflow: null = $MLFLOW_TRACKING_URI, else a file store in outputs/.tracking/mlruns (mlflow-skinny
    # has no database backend; sqlite:///FILE or http://HOST need the full mlflow or a server)
    tracking_uri: Optional[str] = None
    experiment: str = "interp"  # MLflow experiment
    project: str = "interp"  # W&B project
    entity: Optional[str] = None  # W&B entity (team or user; null: the default)
    mode: str = "offline"  # W&B: offline (wandb sync uploads later) | online | disabled
    dir: str = DEFAULT_STORE  # W&B: its wandb/ folder goes here
    log_dir: Optional[str] = None  # TensorBoard: null = RUN_DIR/tensorboard; else LOG_DIR/[GROUP/]NAME


OPTIONS = tuple(f.name for f in dataclasses.fields(TrackingConfig))


# ------------------------------------------------------------------ settings


def validate_tracking(t: Any) -> None:
    """Check the ``tracking`` settings (a ``TrackingConfig``, dict or DictConfig; None: none);
    ``ConfigError`` with one line at the first problem, a backend whose package is missing included."""
    from .config import ConfigError

    if t is None:
        return
    get = t.get if isinstance(t, Mapping) or hasattr(t, "get") else (lambda k, d=None: getattr(t, k, d))
    backend = get("backend", "none")
    if backend not in BACKENDS:
        raise ConfigError(f"tracking.backend={backend!r} is not one of {', '.join(BACKENDS)}")
    cap = get("max_artifact_mb", 0)
    if isinstance(cap, bool) or not isinstance(cap, (int, float)) or not cap >= 0:
        raise ConfigError(f"tracking.max_artifact_mb={cap!r} must be a number >= 0")
    if get("mode", "offline") not in WANDB_MODES:
        raise ConfigError(f"tracking.mode={get('mode')!r} is not one of {', '.join(WANDB_MODES)} (W&B)")
    if backend != "none" and importlib.util.find_spec(PACKAGES[backend]) is None:
        raise ConfigError(f"tracking={backend}: package {PACKAGES[backend]} not installed: {INSTALL}")


def _options(backend: str | None, options: Mapping[str, Any]) -> TrackingConfig:
    from .config import ConfigError

    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"tracking: unknown option {unknown[0]!r} (options: {', '.join(OPTIONS)})")
    values = {k: v for k, v in options.items() if v is not None or k in ("name", "group", "tracking_uri",
                                                                             "entity", "log_dir")}
    if backend is not None:
        values["backend"] = backend
    t = TrackingConfig(**values)
    t.tags = {str(k): str(v) for k, v in dict(t.tags or {}).items()}
    validate_tracking(t)
    if t.backend == "none":
        raise ConfigError("tracking: no backend; use backend='mlflow', 'wandb' or 'tensorboard'")
    return t


# ------------------------------------------------------------------ what is logged


def flatten(config: Mapping, prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted keys; lists stay values."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _param_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _run_config(config: Mapping) -> dict:
    """The config a tracker records: the run's, without Hydra's node and the tracking settings."""
    return {k: v for k, v in dict(config).items() if k not in ("hydra", "tracking")}


def stability_summary(result) -> list[dict]:
    """Per hook point and position mode: components, those with a test against the control
    baseline, those stable under the run's rule and their distinct component indices."""
    stab = result.stability
    if stab is None or stab.empty:
        return []
    tested = stab["q_value"].notna() if "q_value" in stab else None
    stable = result.stable_mask(stab) if tested is not None else None
    rows = []
    for (hook, pos), idx in stab.groupby(["hook", "position"], sort=True).groups.items():
        row = {"hook": str(hook), "position": str(pos), "n_components": int(len(idx))}
        if tested is not None:
            s = stable.loc[idx]
            row.update(n_tested=int(tested.loc[idx].sum()), n_stable=int(s.sum()),
                       n_stable_distinct=int(stab.loc[idx][s]["component"].nunique()))
        rows.append(row)
    return rows


def run_metrics(result, summary: list[dict] | None = None) -> dict[str, float]:
    """The scalar metrics of a run (module docstring): counts, accuracy, stability summaries (the
    run's ``stability_summary``, computed unless given), the null's facts, timings."""
    m = result.manifest
    out: dict[str, Any] = {}
    c = m.get("counts") or {}
    for key, name in (("pairs_loaded", "loaded"), ("kept", "kept"), ("rejected", "rejected"),
                      ("failed_in_forward", "failed"), ("unreadable_lines", "unreadable_lines"),
                      ("duplicate_pairs", "duplicate_pairs"), ("batches", "batches"),
                      ("resumed_from_batch", "resumed_from_batch")):
        if key in c:
            out[f"counts/{name}"] = c[key]
    for reason, n in (c.get("rejected_by_reason") or {}).items():
        out[f"counts/rejected/{reason}"] = n
    for a in m.get("accuracy") or []:
        cat = a.get("category")
        out[f"n_pairs/{cat}"] = a.get("n_pairs")
        out[f"mean_margin/{cat}"] = a.get("mean_margin")
        if a.get("accuracy") is not None:
            out[f"accuracy/{cat}"] = a["accuracy"]
    grammar = grammar_accuracy(m.get("accuracy"))
    if grammar is not None:
        out["grammar_accuracy"] = grammar  # as the sweep summary
    for row in stability_summary(result) if summary is None else summary:
        key = f"{row['hook']}/{row['position']}"
        out[f"components/{key}"] = row["n_components"]
        if "n_stable" in row:
            out[f"tested/{key}"] = row["n_tested"]
            out[f"stable/{key}"] = row["n_stable"]
            out[f"stable_distinct/{key}"] = row["n_stable_distinct"]
    for k, v in (m.get("controls") or {}).items():
        if k not in ("n", "seed"):  # config, logged as params
            out[f"null/{k}"] = v
    for k, v in (m.get("timings") or {}).items():
        out[f"timings/{k}"] = v
    return _numbers(out)


def _numbers(d: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of ``d`` as floats (strings, None, NaN left out)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, bool):
            v = int(v)
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            out[k] = f
    return out


def complete_causal(run_dir: Path | None, causal_dir: Path | None = None) -> tuple[Path, dict] | None:
    """The causal checks' folder of a run (``RUN/causal``, or ``causal_dir``) and its manifest, read
    once, if that manifest is complete (None: missing, unreadable or not complete)."""
    d = Path(causal_dir) if causal_dir is not None else (Path(run_dir) / "causal" if run_dir else None)
    if d is None:
        return None
    try:
        cm = R.read_manifest(d, check=False)
    except (OSError, ValueError):
        return None
    return (d, cm) if cm.get("status") == "complete" else None


def _causal_manifest(causal_dir: str | Path) -> dict:
    return R.read_manifest(causal_dir, check=False)


def causal_metrics(causal_dir: str | Path, manifest: Mapping | None = None
                   ) -> tuple[dict[str, float], dict[int, dict[str, float]]]:
    """The causal checks' summaries: scalars, and the patching curves per layer (the metrics' step).
    ``manifest``: ``causal_dir``'s manifest where already read (None: read here).

    Scalars: ``causal/counts/...``, ``causal/timings/...``, ``causal/atp/...`` (Pearson and Spearman
    against real patching, mean |AtP| of stable and other components), per selection x k x mode x
    where of category ``all``: ``causal/ablation/.../{margin,post_edit_margin,accuracy}_change`` and
    ``causal/vs_random/.../METRIC/{change,random_mean,diff_vs_random,diff_lo,diff_hi,p_perm}``.
    Curves: ``causal/patching/HOOK/DIRECTION/METRIC/BLOCK`` (normalized effect, category ``all``)."""
    import pandas as pd

    d = Path(causal_dir)
    cm = manifest if manifest is not None else _causal_manifest(d)
    files = set(cm.get("files") or [])
    out: dict[str, Any] = {}
    for k, v in (cm.get("counts") or {}).items():
        out[f"causal/counts/{k}"] = v
    for k, v in (cm.get("timings") or {}).items():
        out[f"causal/timings/{k}"] = v
    atp = cm.get("atp") or {}
    for k in ("pearson", "spearman", "n_pairs", "validated_components"):
        if k in atp:
            out[f"causal/atp/{k}"] = atp[k]
    for k, v in (atp.get("mean_abs_atp") or {}).items():
        out[f"causal/atp/mean_abs/{k}"] = v

    def table(name: str):
        return pd.read_parquet(d / name) if name in files and (d / name).exists() else None

    summ = table("ablation_summary.parquet")
    if summ is not None:
        for r in summ[summ["category"] == "all"].to_dict("records"):
            base = f"causal/ablation/{r['selection']}/k{r['k']}/{r['mode']}/{r['where']}"
            for col in ("margin_change_mean", "post_edit_margin_change_mean", "accuracy_change_mean",
                        "margin_change_std"):
                if col in r:
                    out[f"{base}/{col}"] = r[col]
    vs = table("ablation_vs_random.parquet")
    if vs is not None:
        for r in vs[vs["category"] == "all"].to_dict("records"):
            base = f"causal/vs_random/{r['selection']}/k{r['k']}/{r['mode']}/{r['where']}/{r['metric']}"
            for col in ("change", "random_mean", "diff_vs_random", "diff_lo", "diff_hi", "p_perm"):
                if col in r:
                    out[f"{base}/{col}"] = r[col]
    curves: dict[int, dict[str, Any]] = {}
    pt = table("patching.parquet")
    if pt is not None and not pt.empty:
        cat = pt[(pt["level"] == "category") & (pt["category"] == "all")]
        for r in cat.to_dict("records"):
            block = _block(r)
            key = f"causal/patching/{r['hook']}/{r['direction']}/{r['metric']}/{block}"
            curves.setdefault(int(r["layer"]), {})[key] = r["normalized"]
    return _numbers(out), {layer: _numbers(v) for layer, v in sorted(curves.items())}


def _block(r: Mapping) -> str:
    """A patching row's position block: ``edit``/``after`` (positions=modes), ``headH``, ``offsetO``."""
    def given(v):
        return v is not None and not (isinstance(v, float) and math.isnan(v)) and str(v) not in ("<NA>", "nan")

    if given(r.get("head")):
        return f"head{int(r['head'])}"
    if given(r.get("positions")):
        return str(r["positions"])
    if given(r.get("offset")):
        return f"offset{int(r['offset'])}"
    return "all"


# ------------------------------------------------------------------ artifacts


ROOT_SUFFIXES = (".json", ".jsonl", ".parquet", ".log")
FILE_DIRS = {"figures": "figures", ".hydra": "hydra"}


def artifact_plan(run_dir: Path | None, max_mb: float, causal_dir: Path | None = None,
                  run_files: bool = True, causal_manifest: Mapping | None = None
                  ) -> tuple[list[tuple[Path, str]], list[dict]]:
    """The files a tracker run gets, as (file, folder in the tracker run), and those left out, with
    the reason. ``run_files=False``: only the causal checks' files. ``causal_manifest``:
    ``causal_dir``'s manifest where already read (None: read here)."""
    files: list[tuple[Path, str]] = []
    skipped: list[dict] = []
    cap = float(max_mb) * 2 ** 20

    def consider(p: Path, folder: str) -> None:
        rel = f"{folder}/{p.name}" if folder else p.name
        size = p.stat().st_size
        if p.suffix == ".safetensors":
            skipped.append({"path": rel, "mb": round(size / 2 ** 20, 3), "reason": "tensors (not logged)"})
        elif size > cap:
            skipped.append({"path": rel, "mb": round(size / 2 ** 20, 3),
                            "reason": f"larger than tracking.max_artifact_mb={max_mb:g}"})
        else:
            files.append((p, folder))

    if run_dir is not None and run_files:
        for p in sorted(Path(run_dir).iterdir()):
            if p.is_file() and not p.is_symlink() and p.name != TRACKING_FILE and (
                    p.suffix in ROOT_SUFFIXES or p.suffix == ".safetensors"):
                consider(p, "")
            elif p.is_dir() and p.name in FILE_DIRS and not p.is_symlink():
                for q in sorted(p.iterdir()):
                    if q.is_file() and not q.is_symlink():
                        consider(q, FILE_DIRS[p.name])
    if causal_dir is not None:
        cm = causal_manifest if causal_manifest is not None else _causal_manifest(causal_dir)
        for name in ["manifest.json", *(cm.get("files") or [])]:
            p = Path(causal_dir) / name
            if p.is_file() and not p.is_symlink():
                consider(p, "causal")
        fig = Path(causal_dir) / "figures"
        if fig.is_dir() and not fig.is_symlink():
            for q in sorted(fig.iterdir()):
                if q.is_file() and not q.is_symlink():
                    consider(q, "causal/figures")
    return files, skipped


# ------------------------------------------------------------------ backends


def _key(name: str) -> str:
    """A metric or tag key every backend accepts (MLflow: letters, digits, _ - . space / :)."""
    return re.sub(r"[^A-Za-z0-9_\-./: ]", "_", str(name))[:250]


def _abs_uri(uri: str | None) -> str:
    """The MLflow tracking URI, a local path made absolute (default: the file store in outputs/)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or f"file:{DEFAULT_STORE}/mlruns"
    if uri.startswith("file:"):
        rest = uri[len("file:"):]
        if rest.startswith("//"):
            rest = rest[2:]
        return Path(rest).expanduser().absolute().as_uri()
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", uri) or uri in ("databricks",) or uri.startswith("sqlite:"):
        return uri
    return Path(uri).expanduser().absolute().as_uri()  # a plain path


class _Tracker:
    """One tracker run of a backend, started or reopened (``resume``: a recorded run id) by the
    constructor ``(settings, name, group, run_dir, resume, replace)``."""

    backend = ""
    run_id = ""

    def location(self) -> dict:
        """Where the run is (the store, experiment or project, folder), as ``tracking.json`` keeps it."""
        raise NotImplementedError

    def log_params(self, config: Mapping) -> None:
        """The run's config (nested)."""
        raise NotImplementedError

    def set_tags(self, tags: Mapping[str, str]) -> None:
        raise NotImplementedError

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Scalars; ``step``: a point of a curve (the layer of a patching curve)."""
        raise NotImplementedError

    def log_file(self, path: Path, folder: str) -> None:
        """A file, under ``folder`` of the tracker run."""
        raise NotImplementedError

    def finish(self, status: str) -> None:
        """End the run as ``complete`` or ``failed``."""
        raise NotImplementedError


class _MLflow(_Tracker):
    backend = "mlflow"

    def __init__(self, t: TrackingConfig, name: str, group: str | None, run_dir: Path | None,
                 resume: str | None = None, replace: bool = False):
        self.uri = _abs_uri(t.tracking_uri)
        if self.uri.startswith("file:"):  # MLflow 3 keeps the file store behind an opt-in
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(self.uri)
        self.experiment = t.experiment
        exp = self.client.get_experiment_by_name(t.experiment)
        self.experiment_id = exp.experiment_id if exp is not None else self.client.create_experiment(t.experiment)
        self.logged_params: dict[str, str] = {}
        if resume:
            run = self.client.get_run(resume)
            self.run_id = run.info.run_id
            self.logged_params = dict(run.data.params)
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            self.run_id = self.client.create_run(self.experiment_id, run_name=name).info.run_id

    def location(self) -> dict:
        return {"tracking_uri": self.uri, "experiment": self.experiment, "experiment_id": self.experiment_id}

    def log_params(self, config: Mapping) -> None:
        from mlflow.entities import Param

        params = []
        for k, v in flatten(config).items():
            text = _param_text(v)
            if len(text) > MLFLOW_PARAM_MAX:
                note = (f"... ({len(v)} items" if isinstance(v, (list, tuple)) else f"... ({len(text)} characters")
                note += "; the whole value: manifest.json)"
                text = text[:MLFLOW_PARAM_MAX - len(note)] + note
            if k not in self.logged_params:  # a resumed run keeps its params (MLflow's are immutable)
                params.append(Param(_key(k), text))
        for i in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        rows = [RunTag(_key(k), str(v)[:MLFLOW_TAG_MAX]) for k, v in tags.items()]
        for i in range(0, len(rows), 100):
            self.client.log_batch(self.run_id, tags=rows[i:i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        rows = [Metric(_key(k), float(v), now, int(step or 0)) for k, v in metrics.items()]
        for i in range(0, len(rows), 1000):
            self.client.log_batch(self.run_id, metrics=rows[i:i + 1000])

    def log_file(self, path: Path, folder: str) -> None:
        self.client.log_artifact(self.run_id, str(path), folder or None)

    def finish(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status="FINISHED" if status == "complete" else "FAILED")


class _WandB(_Tracker):
    backend = "wandb"

    def __init__(self, t: TrackingConfig, name: str, group: str | None, run_dir: Path | None,
                 resume: str | None = None, replace: bool = False):
        import wandb

        self.dir = Path(t.dir).expanduser().absolute()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.project, self.entity, self.mode = t.project, t.entity, t.mode
        kwargs: dict[str, Any] = dict(project=t.project, entity=t.entity, dir=str(self.dir), mode=t.mode,
                                      name=name, group=group, tags=[f"{k}={v}"[:64] for k, v in t.tags.items()]
                                      or None, notes=f"interp run dir {run_dir}" if run_dir else None,
                                      settings=wandb.Settings(silent=True, console="off"))
        if resume:
            kwargs.update(id=resume, resume="allow")
        try:
            self.run = wandb.init(reinit="create_new", **kwargs)  # never ends a run the caller holds
        except (TypeError, ValueError):  # wandb < 0.19: no "create_new"
            self.run = wandb.init(reinit=True, **kwargs)
        self.run_id = self.run.id
        self.files_dir = Path(self.run.dir)
        self._curves_defined = False

    def location(self) -> dict:
        return {"project": self.project, "entity": self.entity, "mode": self.mode, "dir": str(self.dir)}

    def log_params(self, config: Mapping) -> None:
        self.run.config.update(dict(config), allow_val_change=True)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.run.config.update({"interp_run": dict(tags)}, allow_val_change=True)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if step is None:
            self.run.summary.update(dict(metrics))
            return
        if not self._curves_defined:
            self.run.define_metric(PATCHING_STEP)
            self.run.define_metric("causal/patching/*", step_metric=PATCHING_STEP)
            self._curves_defined = True
        self.run.log({PATCHING_STEP: step, **metrics})

    def log_file(self, path: Path, folder: str) -> None:
        dest = self.files_dir / folder / path.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)  # a copy in the run's files/: the run dir may change before a sync
        self.run.save(str(dest), base_path=str(self.files_dir), policy="now")

    def finish(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "complete" else 1)


class _TensorBoard(_Tracker):
    backend = "tensorboard"

    def __init__(self, t: TrackingConfig, name: str, group: str | None, run_dir: Path | None,
                 resume: str | None = None, replace: bool = False):
        """``replace``: the whole run is logged, so this run's earlier events (the log dir in the run
        dir, or the recorded one) are removed first; events in any other folder are never touched."""
        from .config import ConfigError

        self.replace = replace

        default = _tensorboard_dir(None, name, group, run_dir)
        log_dir = Path(resume) if resume else _tensorboard_dir(t.log_dir, name, group, run_dir)
        if log_dir is None:
            raise ConfigError("tracking=tensorboard: a Result that is not saved needs log_dir=DIR")
        if self.replace and (resume or log_dir == default) and log_dir.is_dir():
            for old in log_dir.glob("events.out.tfevents.*"):  # this run's own log: logged whole again
                old.unlink()
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = log_dir
        self.writer = SummaryWriter(str(log_dir))
        self.run_id = str(log_dir)
        self.files: list[str] = []

    def location(self) -> dict:
        return {"log_dir": str(self.log_dir)}

    def log_params(self, config: Mapping) -> None:
        from torch.utils.tensorboard.summary import hparams

        flat = {k: v if isinstance(v, (int, float, str, bool)) else _param_text(v)
                for k, v in flatten(config).items()}
        self._hparams = flat
        self.writer.add_text("config", "\n".join(f"    {k}: {_param_text(v)}" for k, v in flatten(config).items()))
        exp, ssi, sei = hparams(flat, {"counts/kept": 0.0})
        fw = self.writer._get_file_writer()
        for s in (exp, ssi, sei):
            fw.add_summary(s)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.writer.add_text("interp/tags", "\n".join(f"    {k}: {v}" for k, v in tags.items()))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(_key(k), float(v), int(step or 0))

    def log_file(self, path: Path, folder: str) -> None:
        rel = f"{folder}/{path.name}" if folder else path.name
        self.files.append(rel)
        if path.suffix == ".png":  # an image, as the PNG's own bytes
            from tensorboard.compat.proto.summary_pb2 import Summary

            data = path.read_bytes()
            if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 24:
                w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
                img = Summary.Image(height=h, width=w, colorspace=4, encoded_image_string=data)
                self.writer._get_file_writer().add_summary(
                    Summary(value=[Summary.Value(tag=_key(rel.rsplit(".", 1)[0]), image=img)]))

    def finish(self, status: str) -> None:
        if self.files:
            self.writer.add_text("artifacts", "files beside this log (not copied):\n\n"
                                 + "\n".join(f"    {f}" for f in self.files))
        self.writer.add_text("interp/status", status)
        self.writer.close()


_BACKENDS = {"mlflow": _MLflow, "wandb": _WandB, "tensorboard": _TensorBoard}


def _open(t: TrackingConfig, name: str, group: str | None, run_dir: Path | None,
          resume: str | None = None, replace: bool = False) -> tuple[_Tracker, str | None]:
    """Start (or reopen ``resume``) a tracker run; returns it and the id it links to when the
    reopening failed and a new run was started instead. ``replace``: the whole run is logged."""
    cls = _BACKENDS[t.backend]
    if resume:
        try:
            return cls(t, name, group, run_dir, resume, replace), None
        except Exception as err:  # the recorded run is gone (deleted, another store): a linked new one
            _warn("interp.tracking", f"could not reopen {t.backend} run {resume} ({_one_line(err)}); "
                                     "logging to a new run linked to it")
            return cls(t, name, group, run_dir, None, replace), resume
    return cls(t, name, group, run_dir, None, replace), None


# ------------------------------------------------------------------ the run dir's record


def read_record(run_dir: str | Path | None) -> dict:
    """``RUN/tracking.json``: per backend, the tracker run that holds the run (``{}`` if none)."""
    if run_dir is None:
        return {}
    try:
        data = json.loads((Path(run_dir) / TRACKING_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_record(run_dir: Path, backend: str, entry: dict) -> None:
    record = read_record(run_dir)
    record[backend] = entry
    R.write_json(Path(run_dir) / TRACKING_FILE, record)


def _resumable(entry: dict | None, location: dict, config_hash: str | None, created: str | None) -> str | None:
    """The recorded tracker run to continue: the same store, the same config, and the same run
    (or a failed attempt of it, which a resumed job completes)."""
    if not isinstance(entry, dict) or not _match(entry, location) or entry.get("config_hash") != config_hash:
        return None
    if entry.get("run_created") == created or entry.get("status") == "failed":
        return entry.get("run_id")
    return None


def _location(t: TrackingConfig, name: str, group: str | None, run_dir: Path | None) -> dict:
    """Where a tracker run of these settings is (the key a recorded run must match to be reopened)."""
    if t.backend == "mlflow":
        return {"tracking_uri": _abs_uri(t.tracking_uri), "experiment": t.experiment}
    if t.backend == "wandb":
        return {"project": t.project, "entity": t.entity, "mode": t.mode,
                "dir": str(Path(t.dir).expanduser().absolute())}
    log_dir = _tensorboard_dir(t.log_dir, name, group, run_dir)
    return {"log_dir": str(log_dir) if log_dir is not None else None}


def _tensorboard_dir(log_dir: str | None, name: str, group: str | None, run_dir: Path | None) -> Path | None:
    """A TensorBoard run's log dir: ``LOG_DIR/[GROUP/]NAME`` where ``tracking.log_dir`` is set, else
    ``RUN_DIR/tensorboard`` (None: neither)."""
    if log_dir:
        return Path(log_dir).expanduser().absolute() / (group or "") / name
    return Path(run_dir).absolute() / TENSORBOARD_DIR if run_dir is not None else None


def describe(entry: Mapping) -> str:
    """Where a recorded tracker run is, in words (what the command prints)."""
    loc = entry.get("location") or {}
    if entry.get("backend") == "mlflow":
        return f"{loc.get('tracking_uri')}, experiment {loc.get('experiment')}"
    if entry.get("backend") == "wandb":
        if loc.get("mode") == "offline" and entry.get("files_dir"):
            return f"offline: wandb sync {entry['files_dir']}"
        return f"project {loc.get('project')}"
    return f"tensorboard --logdir {loc.get('log_dir')}"


def _match(entry: dict | None, loc: dict) -> bool:
    got = dict((entry or {}).get("location") or {})
    got.pop("experiment_id", None)
    return got == loc


# ------------------------------------------------------------------ logging


def _meta(manifest: Mapping, run_dir: Path | None, status: str) -> dict[str, str]:
    cfg = manifest.get("config") or {}
    hooks = (cfg.get("hooks") or {}).get("points") or []
    inference = manifest.get("inference") or {}
    controls = manifest.get("controls") or {}
    meta = {
        "interp.status": status,
        "interp.run_dir": str(Path(run_dir).absolute()) if run_dir else "",
        "interp.config_hash": manifest.get("config_hash") or "",
        "interp.created": manifest.get("created") or "",
        "interp.model": (manifest.get("model") or {}).get("name") or (cfg.get("model") or {}).get("name") or "",
        "interp.pairs": str((cfg.get("pairs") or {}).get("source") or ""),
        "interp.hooks": ",".join(map(str, hooks)),
        "interp.rule": str(inference.get("rule") or ""),
        "interp.null": str(controls.get("pool") or ""),
    }
    return {k: v for k, v in meta.items() if v}


def log_run(run: Any, backend: str = "mlflow", *, meta: Mapping[str, str] | None = None,
            causal: bool = True, **options: Any) -> str:
    """Log a run to a tracker; return the tracker's run id (MLflow run id, W&B run id, TensorBoard
    log dir).

    ``run``: a ``Result`` (``interp.analyze``'s, saved or not; files are logged once it is saved)
    or a run dir. ``backend``: ``mlflow``, ``wandb`` or ``tensorboard``. ``options``: the keys of
    ``conf/tracking`` (``TrackingConfig``): ``tracking_uri``, ``experiment`` (MLflow); ``project``,
    ``entity``, ``mode``, ``dir`` (W&B); ``log_dir`` (TensorBoard); ``name``, ``group``, ``tags``,
    ``max_artifact_mb``. ``meta``: more tags (the command adds the job's overrides). ``causal``:
    also the causal checks' summaries and files when ``RUN/causal`` is complete.

    A saved run records the tracker run in ``RUN/tracking.json``; logging the same run again to the
    same store continues that tracker run instead of starting another. Errors raise (the command
    turns them into a warning)."""
    from .result import Result, load_run

    result = run if isinstance(run, Result) else load_run(run)
    t = _options(backend, options)
    run_dir = Path(result.run_dir) if result.run_dir is not None else None
    m = result.manifest
    name = t.name or (run_dir.name if run_dir else "interp")
    loc = _location(t, name, t.group, run_dir)
    entry = read_record(run_dir).get(t.backend)
    resume = _resumable(entry, loc, m.get("config_hash"), m.get("created"))
    tracker, linked = _open(t, name, t.group, run_dir, resume, replace=True)
    found = complete_causal(run_dir) if causal else None
    try:
        tags = {**_meta(m, run_dir, "complete"), **(dict(meta) if meta else {}), **t.tags}
        if t.group:
            tags["interp.group"] = t.group
        if linked:
            tags["interp.linked_run"] = linked
        tracker.set_tags(tags)
        tracker.log_params(_run_config(result.config))
        summary = stability_summary(result)
        metrics = run_metrics(result, summary)
        tracker.log_metrics(metrics)
        causal_info = None
        if found is not None:
            causal_info = _log_causal_metrics(tracker, found)
            metrics.update(causal_info.pop("metrics"))
        skipped = _log_files(tracker, run_dir, t.max_artifact_mb, found, summary={
            "stability_summary.json": summary, "metrics.json": metrics})
        tracker.finish("complete")
    except BaseException:
        _finish_quietly(tracker)
        raise
    if run_dir is not None:
        entry = {"backend": t.backend, "run_id": tracker.run_id, "name": name, "group": t.group,
                 "status": "complete", "location": tracker.location(), "config_hash": m.get("config_hash"),
                 "run_created": m.get("created"), "logged": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                 "max_artifact_mb": t.max_artifact_mb, "skipped_files": skipped,
                 **({"linked_run": linked} if linked else {})}
        if isinstance(tracker, _WandB):
            entry["files_dir"] = str(tracker.files_dir.parent)
        if causal_info is not None:
            entry["causal"] = causal_info
        _write_record(run_dir, t.backend, entry)
    return tracker.run_id


def _finish_quietly(tracker: _Tracker) -> None:
    try:
        tracker.finish("failed")
    except Exception:
        pass


def _log_causal_metrics(tracker: _Tracker, causal: tuple[Path, dict]) -> dict:
    cdir, cm = causal
    scalars, curves = causal_metrics(cdir, cm)
    tracker.log_metrics(scalars)
    for layer, values in curves.items():
        tracker.log_metrics(values, step=layer)
    return {"dir": str(cdir.absolute()), "created": cm.get("created"), "metrics": scalars,
            "n_metrics": len(scalars), "n_curves": len({k for v in curves.values() for k in v})}


def _log_files(tracker: _Tracker, run_dir: Path | None, max_mb: float, causal: tuple[Path, dict] | None,
               summary: dict | None = None, run_files: bool = True, index: str = "artifacts.json") -> list[dict]:
    """Log the run's files (``artifact_plan``; ``causal``: ``complete_causal``'s folder and manifest)
    and the ``summary/`` files (``summary`` and ``index``, the list of what was logged and skipped);
    return those skipped. ``max_mb`` 0: no file at all."""
    if max_mb <= 0:
        return [{"path": "*", "reason": "tracking.max_artifact_mb=0"}]
    cdir, cm = causal if causal is not None else (None, None)
    files, skipped = artifact_plan(run_dir, max_mb, cdir, run_files, cm)
    for path, folder in files:
        tracker.log_file(path, folder)
    with tempfile.TemporaryDirectory(prefix="interp-tracking-") as tmp:
        listing = {"logged": [f"{folder}/{p.name}" if folder else p.name for p, folder in files], "skipped": skipped}
        for fname, obj in {**(summary or {}), index: listing}.items():
            p = Path(tmp) / fname
            p.write_text(json.dumps(obj, indent=1, default=str) + "\n")
            tracker.log_file(p, "summary")
    return skipped


def log_failure(config: Any, run_dir: str | Path | None, error: BaseException | str | None = None,
                backend: str | None = None, *, meta: Mapping[str, str] | None = None, **options: Any) -> str:
    """Log a job that did not finish: its config as params, the error as a tag, the tracker run
    ended as failed (MLflow ``FAILED``, W&B exit code 1). ``config``: the job's config (a mapping
    or DictConfig; ``hydra`` and ``tracking`` are left out). Returns the tracker run id; a later
    run of the same config in ``run_dir`` (a resume) continues that tracker run."""
    from omegaconf import DictConfig, OmegaConf

    from .run.manifest import config_hash

    conf = _run_config(OmegaConf.to_container(config, resolve=True) if isinstance(config, DictConfig)
                       else dict(config))
    t = _options(backend, options)
    run_dir = Path(run_dir) if run_dir is not None else None
    name = t.name or (run_dir.name if run_dir else "interp")
    chash = config_hash(OmegaConf.create(conf))
    tracker, _ = _open(t, name, t.group, run_dir, None, replace=True)
    try:
        tags = {"interp.status": "failed", "interp.config_hash": chash,
                "interp.error": _one_line(error) if error is not None else "unknown",
                **({"interp.run_dir": str(run_dir.absolute())} if run_dir else {}),
                **({"interp.group": t.group} if t.group else {}), **(dict(meta) if meta else {}), **t.tags}
        tracker.set_tags(tags)
        tracker.log_params(conf)
    finally:
        tracker.finish("failed")
    if run_dir is not None and run_dir.is_dir():
        _write_record(run_dir, t.backend, {
            "backend": t.backend, "run_id": tracker.run_id, "name": name, "group": t.group, "status": "failed",
            "location": tracker.location(), "config_hash": chash, "run_created": None,
            "error": tags["interp.error"], "logged": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return tracker.run_id


def log_causal(run_dir: str | Path, causal_dir: str | Path | None = None) -> dict[str, str]:
    """Add the causal checks' summaries and files (``RUN/causal``, or ``causal_dir``) to every tracker
    run ``RUN/tracking.json`` records for this run (one per backend; a record of an earlier run in
    the same folder is left alone). Returns backend -> tracker run id (empty: nothing recorded)."""
    run_dir = Path(run_dir)
    found = complete_causal(run_dir, Path(causal_dir) if causal_dir is not None else None)
    if found is None:
        return {}
    created = R.read_manifest(run_dir).get("created")
    done = {}
    for backend, entry in read_record(run_dir).items():
        if not isinstance(entry, dict) or entry.get("status") != "complete" or entry.get("run_created") != created \
                or backend not in _BACKENDS:
            continue
        loc = dict(entry.get("location") or {})
        loc.pop("experiment_id", None)
        opts = {k: v for k, v in loc.items() if k in OPTIONS}
        cap = entry.get("max_artifact_mb", TrackingConfig.max_artifact_mb)
        t = _options(backend, {**opts, "max_artifact_mb": cap})
        name = entry.get("name") or run_dir.name
        tracker, linked = _open(t, name, entry.get("group"), run_dir, entry.get("run_id"))
        try:
            if linked:
                tracker.set_tags({"interp.linked_run": linked, "interp.run_dir": str(run_dir.absolute())})
            info = _log_causal_metrics(tracker, found)
            info.pop("metrics")
            info["skipped_files"] = _log_files(tracker, run_dir, t.max_artifact_mb, found, run_files=False,
                                               index="causal_artifacts.json")
            if isinstance(tracker, _WandB):
                info["files_dir"] = str(tracker.files_dir.parent)
            tracker.finish("complete")
        except BaseException:
            _finish_quietly(tracker)
            raise
        entry = {**entry, "causal": info}
        if linked:
            entry.update(run_id=tracker.run_id, linked_run=linked, location=tracker.location())
        _write_record(run_dir, backend, entry)
        done[backend] = tracker.run_id
    return done


# ------------------------------------------------------------------ the commands' calls (never raise)


def _one_line(err: Any) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if isinstance(err, str) else f"{type(err).__name__}: {text}"


def _warn(prog: str, message: str) -> None:
    print(f"{prog}: warning: {' '.join(message.split())}", file=sys.stderr, flush=True)


def track_job(config: Any, job_return: Any) -> str | None:
    """The end of a Hydra job of ``python -m interp.run`` (``interp.callbacks.Tracking``): a complete
    run logged with ``log_run``, a job that raised with ``log_failure``. Never raises: a tracker
    error is one warning on stderr and the run dir stays as the job left it."""
    from omegaconf import OmegaConf, open_dict, read_write

    t = OmegaConf.select(config, "tracking")
    backend = t.get("backend", "none") if t is not None else "none"
    if backend == "none":
        return None
    try:
        from hydra.core.utils import JobStatus

        run_dir = Path(config.hydra.runtime.output_dir)
        opts = OmegaConf.to_container(t, resolve=True)
        opts.pop("backend")
        meta = {}
        mode = OmegaConf.select(config, "hydra.mode")
        if getattr(mode, "name", str(mode)) == "MULTIRUN":
            opts["group"] = opts.get("group") or Path(str(config.hydra.sweep.dir)).name
            meta["interp.sweep_dir"] = str(Path(str(config.hydra.sweep.dir)).absolute())
            meta["interp.job"] = str(config.hydra.job.get("num", ""))
        overrides = [o for o in OmegaConf.to_container(config.hydra.overrides.task) if not o.startswith("tracking")]
        meta["interp.overrides"] = " ".join(overrides)
        if job_return.status == JobStatus.COMPLETED and R.is_complete(run_dir):
            rid = log_run(run_dir, backend, meta=meta, **opts)
            entry = read_record(run_dir).get(backend) or {}
            print(f"tracking: {backend} run {rid} ({describe(entry)})", flush=True)
        else:
            error = getattr(job_return, "_return_value", None)
            task = copy.deepcopy(config)  # the task's config, as Hydra hands it to the job
            with read_write(task), open_dict(task):
                del task["hydra"]
            rid = log_failure(task, run_dir, error if isinstance(error, BaseException) else "the job did not finish",
                              backend, meta=meta, **opts)
            print(f"tracking: {backend} run {rid} (failed)", flush=True)
        return rid
    except Exception as err:
        _warn("interp.run", f"tracking ({backend}) failed, the run dir is as the job left it "
                            f"({getattr(config.hydra.runtime, 'output_dir', '?')}): {_one_line(err)}")
        return None


def track_causal(run_dir: str | Path, causal_dir: str | Path | None = None) -> dict[str, str]:
    """``python -m interp.patch``'s call: ``log_causal``, a tracker error one warning on stderr."""
    try:
        done = log_causal(run_dir, causal_dir)
    except Exception as err:
        _warn("interp.patch", f"tracking failed, the causal results in {causal_dir or run_dir} are complete: "
                              f"{_one_line(err)}")
        return {}
    for backend, rid in done.items():
        print(f"tracking: causal summaries -> {backend} run {rid}", flush=True)
    return done


__all__ = ["TrackingConfig", "log_run", "log_causal", "log_failure", "run_metrics", "causal_metrics",
           "stability_summary", "artifact_plan", "read_record", "validate_tracking", "BACKENDS", "TRACKING_FILE"]
