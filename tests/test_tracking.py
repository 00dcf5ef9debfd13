"""Experiment tracking (``tracking=mlflow|wandb|tensorboard``, ``interp.tracking``), offline, on the
tiny random Llama: what each tracker run holds (params, metrics equal to the manifest's, files),
one tracker run per sweep job, the causal checks added to the same tracker run, a tracker failure
that leaves the run complete, a failed job logged as failed, and ``tracking`` outside the run's
config identity. MLflow writes to a file store under tmp; W&B runs offline with every folder under
tmp (nothing in ~/.config, no network); TensorBoard is read back with its EventAccumulator."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import PAIR_ROWS, run_command, tokenizer_overrides

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["model=tiny", "pairs=grammar", "pairs.limit=2", "device=cpu", "dtype=float32", "progress=false",
        "analysis.png=false", *tokenizer_overrides()]


@pytest.fixture(scope="module")
def wandb_env(tmp_path_factory):
    """W&B offline, silent, without git, every folder it writes under tmp (this process and the
    commands it starts)."""
    home = tmp_path_factory.mktemp("wandb_home")
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DISABLE_GIT": "true",
           "WANDB_DISABLE_CODE": "true", "WANDB_CONFIG_DIR": str(home / "config"),
           "WANDB_CACHE_DIR": str(home / "cache"), "WANDB_DATA_DIR": str(home / "data"),
           "WANDB_ARTIFACT_DIR": str(home / "artifacts")}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    try:
        import wandb
        wandb.teardown()
    except Exception:
        pass
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _env(extra: dict | None = None) -> dict:
    """The variables the tracking tests' commands set over this process's environment."""
    return {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            "INTERP_CACHE_DIR": os.environ.get("INTERP_CACHE_DIR", os.path.expanduser("~/.cache/interp")),
            **(extra or {})}


def _cli(module: str, args: list[str], extra: dict | None = None) -> subprocess.CompletedProcess:
    return run_command(args, _env(extra), module=module)


def _client(uri: str):
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def _artifacts(client, run_id: str, path: str | None = None) -> set[str]:
    out = set()
    for a in client.list_artifacts(run_id, path):
        out |= _artifacts(client, run_id, a.path) if a.is_dir else {a.path}
    return out


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """A tiny run logged to MLflow by the command (a file store under tmp)."""
    tmp = tmp_path_factory.mktemp("tracked")
    uri = (tmp / "mlruns").as_uri()
    p = _cli("interp.run", [*TINY, "tracking=mlflow", f"tracking.tracking_uri={uri}", "tracking.experiment=tests",
                            f"hydra.run.dir={tmp / 'run'}"])
    assert p.returncode == 0, p.stderr[-3000:]
    return tmp / "run", uri, p


def _copy_run(run_dir: Path, to: Path) -> Path:
    shutil.copytree(run_dir, to, ignore=shutil.ignore_patterns("tracking.json", "causal"))
    return to


# ------------------------------------------------------------------ MLflow through the command


def test_mlflow_run_holds_the_config_the_manifests_numbers_and_the_files(tracked):
    from interp import load_run
    from interp.tracking import read_record

    run_dir, uri, p = tracked
    rec = read_record(run_dir)["mlflow"]
    assert f"tracking: mlflow run {rec['run_id']}" in p.stdout
    assert rec["status"] == "complete" and rec["location"]["tracking_uri"] == uri
    client = _client(uri)
    run = client.get_run(rec["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    m = json.loads((run_dir / "manifest.json").read_text())
    assert rec["run_created"] == m["created"] and rec["config_hash"] == m["config_hash"]

    params = run.data.params
    assert params["model.name"] == "tiny-llama" and params["pairs.limit"] == "2"
    assert params["analysis.controls.n"] == "3" and params["analysis.rule"] == "equivalence"
    assert params["hooks.points"] == '["resid_post"]' and params["batch_size"] == "32"
    assert params["analysis.contrast"] == '["grammar", "semantic"]' and params["device"] == "cpu"
    assert not any(k.startswith(("tracking", "hydra")) for k in params)
    tags = run.data.tags
    assert tags["interp.status"] == "complete" and tags["interp.config_hash"] == m["config_hash"]
    assert tags["interp.run_dir"] == str(run_dir) and "pairs.limit=2" in tags["interp.overrides"]

    got = run.data.metrics
    c = m["counts"]
    assert got["counts/kept"] == c["kept"] == 14 and got["counts/loaded"] == c["pairs_loaded"]
    assert got["counts/rejected"] == c["rejected"] and got["counts/failed"] == c["failed_in_forward"]
    acc = {a["category"]: a["accuracy"] for a in m["accuracy"] if a["accuracy"] is not None}
    assert len(acc) == 7 and all(got[f"accuracy/{k}"] == pytest.approx(v) for k, v in acc.items())
    r = load_run(run_dir)
    for pos in ("edit", "last", "after"):
        stab = r.stability[(r.stability["hook"] == "resid_post") & (r.stability["position"] == pos)]
        assert got[f"stable/resid_post/{pos}"] == int(r.stable_mask(stab).sum())
        assert got[f"tested/resid_post/{pos}"] == stab["q_value"].notna().sum() == 128
    assert got["null/k"] == m["controls"]["k"] and got["null/median_dist_ab"] == pytest.approx(
        m["controls"]["median_dist_ab"])
    assert got["timings/total_s"] == pytest.approx(m["timings"]["total_s"])

    files = _artifacts(client, rec["run_id"])
    figures = {f"figures/{f}" for f in m["figures"]["html"]}
    assert len(figures) >= 4 and figures <= files
    assert {"manifest.json", "pairs.parquet", "stability.parquet", "rejected.jsonl", "hydra/overrides.yaml",
            "summary/stability_summary.json", "summary/metrics.json", "summary/artifacts.json"} <= files
    assert not any(f.endswith(".safetensors") for f in files)
    tensors = {f.name for f in run_dir.glob("*.safetensors")}
    assert "activations.safetensors" in tensors and {s["path"] for s in rec["skipped_files"]} == tensors
    local = Path(client.download_artifacts(rec["run_id"], "manifest.json", str(run_dir.parent / "dl")))
    assert json.loads(local.read_text()) == m
    summary = json.loads(Path(client.download_artifacts(rec["run_id"], "summary/stability_summary.json",
                                                        str(run_dir.parent / "dl"))).read_text())
    assert {(s["hook"], s["position"]) for s in summary} == {("resid_post", p) for p in ("edit", "last", "after")}


def test_tracking_is_not_part_of_the_run_config_identity(tracked):
    from interp.config import compose
    from interp.run import check_run_dir
    from interp.run.checkpoint import Checkpoint
    from interp.run.manifest import config_hash

    run_dir, _, _ = tracked
    m = json.loads((run_dir / "manifest.json").read_text())
    assert "tracking" not in m["config"]  # the manifest records the run's config, tracked or not
    plain = compose([*TINY])
    for extra in (["tracking=mlflow"], ["tracking=wandb", "tracking.project=x"], ["tracking=tensorboard"]):
        cfg = compose([*TINY, *extra])
        assert config_hash(cfg) == config_hash(plain) == m["config_hash"]
        assert check_run_dir(cfg, run_dir).hash == m["config_hash"]  # the same run: replaced or resumed, not refused
        assert Checkpoint(run_dir, config_hash(cfg)).hash == Checkpoint(run_dir, config_hash(plain)).hash


# ------------------------------------------------------------------ W&B offline, the command in-process


def _wandb_records(path: Path):
    """The records of an offline run's ``.wandb`` file (W&B's header, then LevelDB-log records of
    ``wandb_internal_pb2.Record``; W&B's own protobuf messages)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, buf = 32768, 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if n == 0 and kind == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + n], pos + 7 + n
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):  # FULL, LAST
            rec = pb.Record()
            rec.ParseFromString(buf)
            yield rec


def _wandb_run(folder: Path) -> dict:
    """What an offline run's records say; W&B's service writes them a moment after ``finish``
    returns, so this waits (up to a minute) for the exit record."""
    import time

    for _ in range(600):
        kinds = {r.WhichOneof("record_type") for r in _wandb_records(next(folder.glob("run-*.wandb")))}
        if "exit" in kinds:
            break
        time.sleep(0.1)
    config, summary, files, out = {}, {}, set(), {}
    for rec in _wandb_records(next(folder.glob("run-*.wandb"))):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out.update(run_id=rec.run.run_id, name=rec.run.display_name, group=rec.run.run_group,
                       project=rec.run.project)
            config.update({u.key: json.loads(u.value_json) for u in rec.run.config.update})
        elif kind == "config":
            config.update({u.key: json.loads(u.value_json) for u in rec.config.update})
        elif kind == "summary":
            for u in rec.summary.update:
                key = u.key or "/".join(u.nested_key)
                summary[key] = json.loads(u.value_json)
        elif kind == "files":
            files |= {f.path for f in rec.files.files}
        elif kind == "exit":
            out["exit_code"] = rec.exit.exit_code
    return {**out, "config": config, "summary": summary, "files": files}


def test_wandb_offline_run_holds_config_summary_and_files(tmp_path, wandb_env, capsys):
    from interp.run import main
    from interp.tracking import read_record

    run_dir = tmp_path / "run"
    main([*TINY, "tracking=wandb", f"tracking.dir={tmp_path / 'wb'}", "tracking.max_artifact_mb=0.3",
          f"hydra.run.dir={run_dir}"])
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "complete"
    rec = read_record(run_dir)["wandb"]
    assert f"tracking: wandb run {rec['run_id']}" in capsys.readouterr().out
    folders = list((tmp_path / "wb" / "wandb").glob(f"offline-run-*-{rec['run_id']}"))
    assert len(folders) == 1 and Path(rec["files_dir"]) == folders[0]
    got = _wandb_run(folders[0])
    m = json.loads((run_dir / "manifest.json").read_text())
    assert got["run_id"] == rec["run_id"] and got["name"] == "run" and got["project"] == "interp"
    assert got["exit_code"] == 0
    cfg = got["config"]
    assert cfg["model"]["name"] == "tiny-llama" and cfg["pairs"]["limit"] == 2
    assert cfg["analysis"]["controls"]["n"] == 3 and cfg["hooks"]["points"] == ["resid_post"]
    assert "tracking" not in cfg and cfg["interp_run"]["interp.config_hash"] == m["config_hash"]
    s = got["summary"]
    assert s["counts/kept"] == m["counts"]["kept"] and s["counts/rejected"] == m["counts"]["rejected"]
    for a in m["accuracy"]:
        assert s[f"accuracy/{a['category']}"] == pytest.approx(a["accuracy"])
    assert "stable/resid_post/edit" in s and "timings/total_s" in s
    # files: a copy in the run's files/, each announced to W&B; over max_artifact_mb: listed, not copied
    files = folders[0] / "files"
    assert json.loads((files / "manifest.json").read_text()) == m
    assert {"manifest.json", "pairs.parquet", "summary/artifacts.json"} <= got["files"]
    assert {f"figures/{f}" for f in m["figures"]["html"]} <= got["files"]
    skipped = {s["path"]: s["reason"] for s in rec["skipped_files"]}
    assert "larger than tracking.max_artifact_mb=0.3" in skipped["stability_by_category.parquet"]
    assert "figures/plotly.min.js" in skipped and not (files / "stability_by_category.parquet").exists()
    index = json.loads((files / "summary" / "artifacts.json").read_text())
    assert {s["path"] for s in index["skipped"]} == set(skipped) and "manifest.json" in index["logged"]


# ------------------------------------------------------------------ TensorBoard


def _png(path: Path, w: int = 3, h: int = 2) -> None:
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff)

    raw = b"".join(b"\x00" + b"\xff\x00\x00\xff" * w for _ in range(h))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 6, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_tensorboard_scalars_hparams_and_images_are_readable(tracked, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from interp.tracking import log_run, read_record

    run_dir = _copy_run(tracked[0], tmp_path / "run")
    _png(run_dir / "figures" / "ranking_edit.png")
    log_dir = log_run(run_dir, backend="tensorboard")
    assert Path(log_dir) == run_dir / "tensorboard" and read_record(run_dir)["tensorboard"]["run_id"] == log_dir
    m = json.loads((run_dir / "manifest.json").read_text())
    ea = EventAccumulator(log_dir, size_guidance={"tensors": 0, "images": 0, "scalars": 0})
    ea.Reload()
    tags = ea.Tags()
    assert ea.Scalars("counts/kept")[0].value == m["counts"]["kept"]
    for a in m["accuracy"]:
        assert ea.Scalars(f"accuracy/{a['category']}")[0].value == pytest.approx(a["accuracy"])
    assert "stable/resid_post/edit" in tags["scalars"]
    assert "figures/ranking_edit" in tags["images"]
    assert {"config/text_summary", "interp/status/text_summary", "artifacts/text_summary"} <= set(tags["tensors"])
    config = ea.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "pairs.limit: 2" in config and "model.name: tiny-llama" in config
    # logged again: the same run's log dir is replaced, not doubled
    assert log_run(run_dir, backend="tensorboard") == log_dir
    assert len(list(Path(log_dir).glob("events.out.tfevents.*"))) == 1


# ------------------------------------------------------------------ sweeps, failures, bad settings


def test_a_sweep_gives_one_tracker_run_per_job_grouped_by_the_sweep(tmp_path):
    uri = (tmp_path / "mlruns").as_uri()
    sweep = tmp_path / "sweep"
    p = _cli("interp.run", ["-m", *[a for a in TINY if not a.startswith("pairs.limit")], "pairs.limit=1,2",
                            "analysis.figures=false", "tracking=mlflow", f"tracking.tracking_uri={uri}",
                            f"hydra.sweep.dir={sweep}"])
    assert p.returncode == 0, p.stderr[-3000:]
    client = _client(uri)
    exp = client.get_experiment_by_name("interp")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 2
    jobs = sorted(d for d in sweep.iterdir() if d.is_dir() and not d.name.startswith("."))
    assert sorted(r.info.run_name for r in runs) == [d.name for d in jobs]
    assert {r.data.tags["interp.group"] for r in runs} == {"sweep"}
    assert {r.data.tags["interp.sweep_dir"] for r in runs} == {str(sweep)}
    assert {r.info.status for r in runs} == {"FINISHED"}
    by_name = {r.info.run_name: r for r in runs}
    for d in jobs:
        rec = json.loads((d / "tracking.json").read_text())["mlflow"]
        kept = json.loads((d / "manifest.json").read_text())["counts"]["kept"]
        assert by_name[d.name].info.run_id == rec["run_id"] and by_name[d.name].data.metrics["counts/kept"] == kept
    summary = pd.read_csv(sweep / "sweep_summary.csv")
    assert set(summary["tracking"]) == {f"mlflow:{by_name[d.name].info.run_id}" for d in jobs}


def test_a_tracker_failure_warns_and_leaves_the_run_complete(tmp_path, capsys):
    from interp.run import main

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    run_dir = tmp_path / "run"
    main([*TINY, "analysis.figures=false", "tracking=mlflow", f"tracking.tracking_uri={(blocker / 'mlruns').as_uri()}",
          f"hydra.run.dir={run_dir}"])
    err = capsys.readouterr().err
    warnings = [ln for ln in err.splitlines() if "tracking" in ln]
    assert len(warnings) == 1 and warnings[0].startswith("interp.run: warning: tracking (mlflow) failed"), err
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "complete"
    assert not (run_dir / "tracking.json").exists()


def test_a_failed_job_is_logged_as_failed_and_its_resume_completes_that_tracker_run(tracked, tmp_path):
    from hydra.core.utils import JobReturn, JobStatus
    from omegaconf import OmegaConf

    from interp.callbacks import Tracking
    from interp.tracking import log_run, read_record

    uri = (tmp_path / "mlruns").as_uri()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    m = json.loads((tracked[0] / "manifest.json").read_text())
    config = OmegaConf.create({**m["config"], "tracking": {"backend": "mlflow", "tracking_uri": uri},
                               "hydra": {"runtime": {"output_dir": str(run_dir)}, "mode": "RUN",
                                         "overrides": {"task": ["pairs.limit=2"]}}})
    Tracking().on_job_end(config=config, job_return=JobReturn(status=JobStatus.FAILED,
                                                              _return_value=RuntimeError("CUDA out of memory")))
    rec = read_record(run_dir)["mlflow"]
    assert rec["status"] == "failed" and rec["config_hash"] == m["config_hash"]
    client = _client(uri)
    run = client.get_run(rec["run_id"])
    assert run.info.status == "FAILED" and run.data.tags["interp.status"] == "failed"
    assert "CUDA out of memory" in run.data.tags["interp.error"] and run.data.params["pairs.limit"] == "2"
    assert not run.data.metrics  # nothing of a run that did not finish
    # the same config finishes there later (a resume): the same tracker run, now complete
    shutil.copytree(tracked[0], run_dir, dirs_exist_ok=True, ignore=shutil.ignore_patterns("tracking.json", "causal"))
    assert log_run(run_dir, backend="mlflow", tracking_uri=uri) == rec["run_id"]
    run = client.get_run(rec["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["interp.status"] == "complete"
    assert run.data.metrics["counts/kept"] == m["counts"]["kept"]


@pytest.mark.parametrize("args,message", [
    (["tracking=neptune"], "Could not find 'tracking/neptune'"),
    (["tracking.backend=neptune"], "tracking.backend='neptune' is not one of none, mlflow, wandb, tensorboard"),
    (["tracking=wandb", "tracking.mode=sometimes"], "tracking.mode='sometimes' is not one of offline, online"),
    (["tracking=mlflow", "tracking.max_artifact_mb=-1"], "tracking.max_artifact_mb=-1.0 must be a number >= 0"),
])
def test_a_bad_tracking_setting_is_one_line_and_exit_2(tmp_path, args, message):
    run_dir = tmp_path / "run"
    p = _cli("interp.run", [*TINY, *args, f"hydra.run.dir={run_dir}"])
    assert p.returncode == 2, p.stderr[-2000:]
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], p.stderr
    assert not run_dir.exists()


def test_a_tracker_package_that_is_not_installed_is_a_config_error(monkeypatch):
    import importlib.util

    from interp.config import ConfigError, compose, validate

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    message = r"^tracking=wandb: package wandb not installed: pip install interp\[tracking\]$"
    with pytest.raises(ConfigError, match=message):
        validate(compose(["model=tiny", "tracking=wandb"]))
    validate(compose(["model=tiny", "tracking=mlflow"]))


# ------------------------------------------------------------------ the API from a notebook


def test_log_run_from_a_notebook_after_result_save(tiny_lm, tmp_path):
    import interp

    uri = (tmp_path / "mlruns").as_uri()
    r = interp.analyze(tiny_lm, PAIR_ROWS, controls={"n": 2}, figures=False)
    unsaved = interp.tracking.log_run(r, backend="mlflow", tracking_uri=uri, name="nb")
    client = _client(uri)
    run = client.get_run(unsaved)
    assert run.data.metrics["counts/kept"] == r.manifest["counts"]["kept"]
    assert _artifacts(client, unsaved) == {"summary/stability_summary.json", "summary/metrics.json",
                                           "summary/artifacts.json"}  # nothing saved yet: no run files
    r.save(tmp_path / "nb")
    rid = interp.tracking.log_run(r, backend="mlflow", tracking_uri=uri)
    assert rid != unsaved and client.get_run(rid).info.run_name == "nb"
    assert {"manifest.json", "pairs.parquet"} <= _artifacts(client, rid)
    assert interp.tracking.read_record(tmp_path / "nb")["mlflow"]["run_id"] == rid
    # the same run logged again continues its tracker run; a loaded run dir is the same run
    assert interp.tracking.log_run(interp.load_run(tmp_path / "nb"), backend="mlflow", tracking_uri=uri) == rid
    acc = {a["category"]: a["accuracy"] for a in r.manifest["accuracy"] if pd.notna(a["accuracy"])}
    assert set(acc) == {"preposition", "article"}  # grammar categories: semantic ones have no accuracy
    assert {k: client.get_run(rid).data.metrics[f"accuracy/{k}"] for k in acc} == pytest.approx(acc)


def test_long_param_values_are_cut_to_mlflows_limit(tmp_path):
    from interp.tracking import MLFLOW_PARAM_MAX, TrackingConfig, _MLflow

    uri = (tmp_path / "mlruns").as_uri()
    tracker = _MLflow(TrackingConfig(backend="mlflow", tracking_uri=uri), "long", None, None)
    words = [f"word{i}" for i in range(3000)]
    tracker.log_params({"analysis": {"controls": {"words": words, "n": 3}}, "pairs": {"categories": ["a", "b"]}})
    tracker.finish("complete")
    params = _client(uri).get_run(tracker.run_id).data.params
    assert len(params["analysis.controls.words"]) == MLFLOW_PARAM_MAX
    assert params["analysis.controls.words"].startswith('["word0", "word1"')
    assert params["analysis.controls.words"].endswith("... (3000 items; the whole value: manifest.json)")
    assert params["pairs.categories"] == '["a", "b"]' and params["analysis.controls.n"] == "3"


# ------------------------------------------------------------------ causal checks, same tracker run


def test_patch_adds_the_causal_summaries_to_the_same_tracker_run(tracked):
    from interp.tracking import read_record

    run_dir, uri, _ = tracked
    before = read_record(run_dir)["mlflow"]["run_id"]
    p = _cli("interp.patch", [f"run={run_dir}", "k=[2]", "ablation.seeds=2", "ablation.modes=[zero]",
                              "ablation.split=null", "patching.n_pairs=1", "patching.n_boot=10", "atp.limit=1",
                              "atp.validate=0", "figures.png=false", "figures.n_pairs=1", "progress=false"])
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"tracking: causal summaries -> mlflow run {before}" in p.stdout
    rec = read_record(run_dir)["mlflow"]
    assert rec["run_id"] == before and rec["causal"]["n_metrics"] > 0
    client = _client(uri)
    run = client.get_run(before)
    assert run.info.status == "FINISHED"
    got = run.data.metrics
    cdir = run_dir / "causal"
    vs = pd.read_parquet(cdir / "ablation_vs_random.parquet")
    row = vs[(vs["category"] == "all") & (vs["selection"] == "stable") & (vs["metric"] == "post_edit_margin")].iloc[0]
    assert got["causal/vs_random/stable/k2/zero/edit/post_edit_margin/diff_vs_random"] == pytest.approx(
        row["diff_vs_random"])
    summ = pd.read_parquet(cdir / "ablation_summary.parquet")
    row = summ[(summ["category"] == "all") & (summ["selection"] == "random")].iloc[0]
    assert got["causal/ablation/random/k2/zero/edit/margin_change_mean"] == pytest.approx(row["margin_change_mean"])
    assert got["causal/counts/patched_pairs"] == json.loads((cdir / "manifest.json").read_text())["counts"][
        "patched_pairs"]
    pt = pd.read_parquet(cdir / "patching.parquet")
    cat = pt[(pt["level"] == "category") & (pt["category"] == "all") & (pt["direction"] == "denoising")
             & (pt["positions"] == "edit")].sort_values("layer")
    history = client.get_metric_history(before, "causal/patching/resid_pre/denoising/margin/edit")
    assert [h.step for h in sorted(history, key=lambda h: h.step)] == cat["layer"].tolist()
    assert [h.value for h in sorted(history, key=lambda h: h.step)] == pytest.approx(cat["normalized"].tolist())
    files = _artifacts(client, before)
    assert {"causal/manifest.json", "causal/ablation_vs_random.parquet", "causal/patching.parquet",
            "manifest.json"} <= files
    assert any(f.startswith("causal/figures/") for f in files)
    assert got["counts/kept"] == 14  # the run's own metrics are still there
