"""The run as a whole: config groups, the run-dir contract, sweeps, resume, clear errors."""

import json

import pandas as pd
import pytest
from safetensors.torch import load_file

from interp import rundir as R
from interp.model import ModelLoadError, load_model
from interp.run import RunConfigMismatch, run
from tests.conftest import CONF, REPO, make_cfg, run_command

GROUPS = {g: sorted(p.stem for p in (CONF / g).glob("*.yaml")) for g in ("model", "pairs", "hooks", "analysis")}


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_every_config_group_option_composes(group, option):
    extra = {"pairs": {"file": ["pairs.path=x.jsonl"]}, "model": {"hf": ["model.name=org/model"]}}
    cfg = make_cfg(f"{group}={option}", *extra.get(group, {}).get(option, []))
    assert cfg[group] is not None
    if group == "hooks":
        assert len(cfg.hooks.points) >= 1
    if group == "model":
        assert cfg.model.source in ("gguf", "hf", "random")


def test_device_dtype_and_batch_size_are_settable_from_the_command_line():
    cfg = make_cfg("device=cpu", "dtype=bfloat16", "batch_size=7")
    assert (cfg.device, cfg.dtype, cfg.batch_size) == ("cpu", "bfloat16", 7)


def test_a_tiny_run_writes_the_documented_run_dir(pairs_file, tmp_path):
    bad = tmp_path / "mixed.jsonl"
    bad.write_text(pairs_file.read_text() + '{"a": "She walked home.", "b": "She has walked home."}\nnot json\n')
    cfg = make_cfg("model=tiny", "device=cpu", "pairs=file", f"pairs.path={bad}", "hooks=all",
                   "batch_size=3", "analysis.png=false")
    out = run(cfg, tmp_path / "run")
    m = R.read_manifest(out)
    assert m["status"] == "complete"
    assert m["counts"]["kept"] == 8 and m["counts"]["rejected"] == 1 and m["counts"]["unreadable_lines"] == 1
    assert m["counts"]["rejected_by_reason"] == {"length_mismatch": 1, "bad_json": 1}
    assert m["model"]["n_layers"] == 2 and m["versions"]["transformer-lens"].startswith("4.")
    assert "bos" in m["excluded"] and m["config"]["batch_size"] == 3
    pairs = pd.read_parquet(out / "pairs.parquet")
    for col in ("pair_id", "category", "a", "b", "edit_pos", "logprob_a", "logprob_b", "margin",
                "n_tokens", "token_a", "token_b"):
        assert col in pairs.columns
    assert (pairs["margin"] - (pairs["logprob_a"] - pairs["logprob_b"])).abs().max() < 1e-9
    assert (pairs["logprob_a"] < 0).all()
    stab = pd.read_parquet(out / "stability.parquet")
    for col in ("hook", "layer", "component", "position", "mean_abs_diff", "normalized", "rank"):
        assert col in stab.columns
    assert set(stab["position"]) == {"edit", "last", "after"}
    assert len(stab) == 5 * 2 * 64 * 3
    edit = stab[stab.position == "edit"]
    assert sorted(edit["rank"].dropna().astype(int)) == list(range(1, edit["rank"].notna().sum() + 1))
    best = edit.loc[edit["rank"] == 1].iloc[0]
    assert best["normalized"] == pytest.approx(edit["normalized"].min())
    rej = R.read_jsonl(out / "rejected.jsonl")
    assert {r["reason"] for r in rej} == {"length_mismatch", "bad_json"} and all(r["line"] for r in rej)
    acts = load_file(str(out / "activations.safetensors"))
    assert acts["tokens"].shape[:2] == (8, 2)
    assert acts["blocks.1.hook_resid_post"].shape[:2] == (8, 2) and acts["blocks.1.hook_resid_post"].shape[-1] == 64
    assert (acts["tokens"][:, :, 0] == m["model"]["bos_token_id"]).all()
    pats = load_file(str(out / "patterns.safetensors"))
    assert pats["blocks.0.attn.hook_pattern"].shape[:3] == (8, 2, 4)
    assert (out / "figures" / "heatmap_resid_post_edit.html").exists()
    assert (out / "figures" / "plotly.min.js").exists()
    assert "cdn.plot.ly" not in (out / "figures" / "ranking_edit.html").read_text()
    assert not (out / "checkpoint").exists()


def test_a_file_of_only_bad_pairs_fails_with_a_message_pointing_at_rejected_jsonl(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"a": "She walked home.", "b": "She has walked home."}\n')
    cfg = make_cfg("model=tiny", "device=cpu", "pairs=file", f"pairs.path={p}")
    with pytest.raises(ValueError, match="rejected.jsonl"):
        run(cfg, tmp_path / "run")
    assert R.read_jsonl(tmp_path / "run" / "rejected.jsonl")[0]["reason"] == "length_mismatch"


def test_an_unreachable_hub_model_fails_with_one_message_about_model_path(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = make_cfg("model=llama3_8b", "device=cpu")
    with pytest.raises(ModelLoadError, match="model.path=DIR"):
        load_model(cfg.model, "cpu", "float32")
    cfg = make_cfg("model=llama3_8b", "model.path=/nonexistent/weights", "device=cpu")
    with pytest.raises(ModelLoadError, match="model.path=/nonexistent/weights"):
        load_model(cfg.model, "cpu", "float32")


def test_hub_failures_are_told_apart(monkeypatch):
    """A name that does not exist, one that is not a hub name, and a hub out of reach: three messages."""
    from interp.model import _hub_error, hub_failure

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # the messages of a process that may reach the hub

    def chain(*names):  # transformers' OSError caused by the hub client's errors, innermost last
        err = None
        for name in reversed(names):
            new = type(name, (Exception,), {})(f"{name} happened")
            new.__cause__ = err
            err = new
        return err

    cases = {"missing": chain("OSError", "RepositoryNotFoundError"),
             "invalid": chain("OSError", "HFValidationError"),
             "offline": chain("OSError", "LocalEntryNotFoundError", "ConnectError", "gaierror")}
    msgs = {}
    for kind, err in cases.items():
        assert hub_failure(err) == kind
        msgs[kind] = str(_hub_error(make_cfg("model=hf", "model.name=org/none").model, err))
    assert "does not exist on the Hugging Face hub" in msgs["missing"]
    assert "is not a hub name" in msgs["invalid"]
    assert "cannot reach the Hugging Face hub" in msgs["offline"] and "model.path=DIR" in msgs["offline"]


def test_a_checkpoint_of_another_config_is_refused(pairs_file, tmp_path):
    cfg = make_cfg("model=tiny", "device=cpu", "pairs=file", f"pairs.path={pairs_file}", "batch_size=1",
                   "checkpoint_every=1", "analysis.figures=false")
    ck = tmp_path / "run" / "checkpoint"
    ck.mkdir(parents=True)
    (ck / "progress.json").write_text(json.dumps({"config_hash": "0000", "batches_done": 0}))
    with pytest.raises(RunConfigMismatch, match="another config"):
        run(cfg, tmp_path / "run")


def _cli(*args, cwd=REPO, timeout=600):
    return run_command(list(args), timeout=timeout, cwd=cwd)


def test_a_two_job_multirun_gives_one_complete_run_dir_per_job(tmp_path):
    r = _cli("-m", "model=tiny", "device=cpu", "pairs=grammar,semantic", "pairs.limit=3", "progress=false",
             "analysis.png=false", f"hydra.sweep.dir={tmp_path}/sweep")
    assert r.returncode == 0, r.stderr[-3000:]
    dirs = sorted(p.parent for p in (tmp_path / "sweep").glob("*/manifest.json"))
    assert len(dirs) == 2
    types = set()
    for d in dirs:
        m = R.read_manifest(d)
        assert m["status"] == "complete"
        types |= set(pd.read_parquet(d / "pairs.parquet")["type"])
    assert types == {"grammar", "semantic"}


def test_a_token_budget_changes_the_batches_but_no_number(pairs_file, tmp_path):
    """batch_tokens cuts batches of long sentences smaller; pairs do not depend on their batch."""
    common = ["model=tiny", "device=cpu", "pairs=file", f"pairs.path={pairs_file}", "hooks=resid_post",
              "batch_size=8", "analysis.figures=false", "analysis.n_saved_pairs=0", "analysis.controls.n=2"]
    one = run(make_cfg(*common), tmp_path / "one")
    cut = run(make_cfg(*common, "batch_tokens=40"), tmp_path / "cut")  # 4 rows x 10 tokens: one pair a pass
    assert R.read_manifest(one)["counts"]["batches"] == 1 and R.read_manifest(cut)["counts"]["batches"] == 8
    for table in ("pairs.parquet", "stability.parquet"):
        a, b = pd.read_parquet(one / table), pd.read_parquet(cut / table)
        num = a.select_dtypes("float").columns
        pd.testing.assert_frame_equal(a[num], b[num], rtol=1e-4, atol=1e-5)
