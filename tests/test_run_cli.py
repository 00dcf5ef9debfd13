"""``python -m interp.run`` as a user meets it: the reference run's numbers bit for bit, and every
known mistake answered with one line on stderr and exit code 2, before any model loads and without
leaving a run dir behind."""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import pytest

from tests.conftest import REPO, command, run_command, run_many, tokenizer_overrides
from tests.golden.digest import digest, platform_key, summary, summary_diff

# The command whose digests tests/golden/tiny.json recorded before the library restructuring; a run
# writes its mergeable statistics (stats.safetensors) only as a shard now, so the command asks for them
# (analysis.save_state=true: which files are written, no number of the run)
GOLDEN = ["model=tiny", "pairs=all", "pairs.limit=3", "hooks.points=[resid_post,attn_out,z,mlp_post]",
          "device=cpu", "dtype=float32", "analysis.figures=false", "progress=false", "analysis.n_saved_pairs=2",
          "analysis.save_state=true"]


def _cli(args, tmp_path, env_extra=None):
    return run_command(args, {"INTERP_CACHE_DIR": str(tmp_path / "cache"), **(env_extra or {})})


@pytest.mark.skipif(bool(tokenizer_overrides()), reason="the reference run uses the embedded tokenizer")
def test_the_reference_run_is_bit_identical_to_before_the_restructuring(tmp_path):
    """Bit-identical to the reference on every platform it was recorded on (``tests/golden/digest.py``:
    another CPU rounds float32 differently); elsewhere, equal to its summary up to rounding."""
    env = {"INTERP_CACHE_DIR": os.environ.get("INTERP_CACHE_DIR", os.path.expanduser("~/.cache/interp"))}
    p = _cli([*GOLDEN, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, env)
    assert p.returncode == 0, p.stderr[-2000:]
    golden = json.loads((REPO / "tests" / "golden" / "tiny.json").read_text())
    got = digest(tmp_path / "run")
    refs = [{k: v for k, v in golden.items() if k not in ("summary", "platforms")},
            *golden.get("platforms", {}).values()]
    # the typed schema added keys (hooks.layers...; analysis.rule, pair_values...): not numbers; the
    # exclusions' text now says where BOS is counted (max_abs, massive)
    for d in (got, *refs):
        for key in ("config", "config_hash", "excluded"):
            d["manifest"].pop(key, None)
    if any(got == ref for ref in refs):
        return
    here = platform_key()
    if here in golden.get("platforms", {}):  # a platform of the reference: its bits, exactly
        assert got == golden["platforms"][here]
    bad = summary_diff(summary(tmp_path / "run"), golden["summary"])
    assert not bad, "the reference run's numbers moved beyond rounding:\n" + "\n".join(bad[:20])
    assert got["rejected"] == refs[0]["rejected"]  # no number in it to round
    warnings.warn(f"the reference's bits were not recorded on this platform ({here}); its numbers agree "
                  "to rounding. `python tests/golden/digest.py RUN --add tests/golden/tiny.json` records them",
                  stacklevel=1)


MISTAKES = [
    (["analysis.nope=1"], "Could not override 'analysis.nope'"),
    (["pairs=file", "pairs.path=/nonexistent/pairs.jsonl"], "pairs.path=/nonexistent/pairs.jsonl: no such file"),
    (["pairs=file"], "pairs=file needs pairs.path=FILE"),
    (["pairs=file", "pairs.path={tmp}"], "not a file"),
    (["pairs=file", "pairs.path={tmp}/pairs.parquet"], "cannot be read as parquet"),
    (["analysis.contrast=[grammar,grammar]"], "analysis.contrast compares a group with itself"),
    (["pairs.categories=[nope]"], "pairs.categories: 'nope' is not a category of the bank"),
    (["pairs.path=my_pairs.jsonl"], "is not read by the built-in bank; use pairs=file"),
    (["analysis.positions=[middle]"], "analysis.positions='middle' is not one of edit, last, after"),
    (["analysis.backend=gpu"], "analysis.backend='gpu' is not one of auto, bridge, hf"),
    (["batch_size=-4"], "batch_size=-4 must be a whole number >= 1"),
    (["analysis.controls.n=-1"], "analysis.controls.n=-1 must be a whole number >= 0"),
    (["batch_size=many"], "batch_size=many"),
    (["hooks.points=[resid_posts]"], "hooks.points='resid_posts' is not one of"),
    (["model=hf"], "model=hf needs model.name=ORG/NAME"),
    (["pairs=nope"], "Could not find 'pairs/nope'"),
    (["-m", "pairs=grammar,semantic", "batch_size=0"], "batch_size=0 must be a whole number >= 1"),
]


def _mistake_dir(base: Path, i: int) -> Path:
    d = base / f"m{i}"
    d.mkdir()
    (d / "pairs.parquet").write_bytes(b"PAR1")
    return d


@pytest.fixture(scope="module")
def mistakes(tmp_path_factory):
    """Every command of ``MISTAKES``, two at a time (``run_many``): per case its folder and result."""
    base = tmp_path_factory.mktemp("mistakes")
    dirs = [_mistake_dir(base, i) for i in range(len(MISTAKES))]
    cmds = []
    for d, (args, _) in zip(dirs, MISTAKES):
        args = [a.replace("{tmp}", str(d)) for a in args]
        cmds.append(command([*args, f"hydra.run.dir={d / 'run'}", f"hydra.sweep.dir={d / 'sweep'}"],
                            {"INTERP_CACHE_DIR": str(d / "cache")}))
    return list(zip(dirs, run_many(cmds, timeout=600)))


@pytest.mark.parametrize("i", range(len(MISTAKES)), ids=[" ".join(a) for a, _ in MISTAKES])
def test_a_mistake_is_one_line_and_exit_2_before_the_model_loads(mistakes, i):
    message = MISTAKES[i][1]
    d, p = mistakes[i]
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interp.run: error: "), p.stderr
    assert message in lines[0]
    assert "Traceback" not in p.stderr
    assert not (d / "run").exists() and not (d / "sweep").exists()  # no empty run dir
    assert not (d / "cache").exists()  # the embedded model was not even converted


def test_hooks_layers_works_as_the_readme_shows(tmp_path):
    p = _cli(["model=tiny", "pairs=grammar", "pairs.limit=1", "hooks.layers=[1]", "device=cpu", "dtype=float32",
              "analysis.figures=false", "progress=false", *tokenizer_overrides(), f"hydra.run.dir={tmp_path / 'r'}"],
             tmp_path, {"INTERP_CACHE_DIR": os.environ.get("INTERP_CACHE_DIR",
                                                           os.path.expanduser("~/.cache/interp"))})
    assert p.returncode == 0, p.stderr[-2000:]
    import pandas as pd

    assert set(pd.read_parquet(tmp_path / "r" / "stability.parquet")["layer"]) == {1}
    assert "run dir:" in p.stdout


def test_help_says_what_the_command_does():
    p = run_command(["--help"], timeout=120)
    assert p.returncode == 0
    assert "python -m interp.run" in p.stdout and "analysis:" in p.stdout and "hooks.layers" in p.stdout


def test_main_takes_the_overrides_as_a_list_in_process(tmp_path, monkeypatch, capsys):
    """A notebook's sys.argv (``-f kernel.json``) is not read when the overrides are given."""
    from interp.run import main

    monkeypatch.setattr(sys, "argv", ["ipykernel_launcher.py", "-f", "/tmp/kernel.json"])
    main(["model=tiny", "pairs=grammar", "pairs.limit=1", "hooks=resid_post", "device=cpu", "dtype=float32",
          "analysis.figures=false", "progress=false", *tokenizer_overrides(), f"hydra.run.dir={tmp_path / 'r'}"])
    assert (tmp_path / "r" / "manifest.json").exists()
    assert sys.argv == ["ipykernel_launcher.py", "-f", "/tmp/kernel.json"]
    assert "run dir:" in capsys.readouterr().out


def test_run_takes_a_bridge_the_caller_holds(tmp_path, tiny_lm, tiny_cfg):
    from omegaconf import open_dict

    from interp.run import run

    cfg = tiny_cfg.copy()
    with open_dict(cfg):
        cfg.pairs.limit, cfg.analysis.figures = 1, False
    out = run(cfg, tmp_path / "r", lm=tiny_lm.bridge)
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "complete" and m["forward"]["backend"] == "bridge"


@pytest.mark.parametrize("args,message", [
    (["run=/nonexistent"], "run directory /nonexistent does not exist"),
    (["run={run}", "ablation.modes=[foo]"], "ablation.modes: 'foo' is not one of mean, resample, zero"),
    (["run={run}", "k=[0]"], "k=0 must be a whole number >= 1"),
])
def test_patch_mistakes_are_one_line_and_exit_2_before_the_model_loads(tmp_path, args, message):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for f in ("manifest.json", "pairs.parquet", "stability.parquet"):
        (run_dir / f).write_text("{\"status\": \"complete\"}" if f == "manifest.json" else "")
    args = [a.replace("{run}", str(run_dir)) for a in args]
    p = run_command(args, {"INTERP_CACHE_DIR": str(tmp_path / "cache")}, module="interp.patch", timeout=300)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interp.patch: error: ") and message in lines[0], p.stderr
    assert not (run_dir / "causal").exists() and not (tmp_path / "cache").exists()


TINY = ["model=tiny", "pairs=grammar", "pairs.limit=1", "device=cpu", "dtype=float32", "analysis.figures=false",
        "progress=false"]


def _cache_env():
    return {"INTERP_CACHE_DIR": os.environ.get("INTERP_CACHE_DIR", os.path.expanduser("~/.cache/interp"))}


KNOWN_MISTAKES = [
    (["hooks.layers=[5]"], "layers [5] out of range for a model with 2 layers"),
    (["hooks.pattern_pairs=[nope]"], "hooks.pattern_pairs: no kept pair with id ['nope']"),
    (["analysis.contrast=[grammar,tense]"], "analysis.contrast: grammar and tense overlap"),
]


@pytest.mark.parametrize("i", range(len(KNOWN_MISTAKES)), ids=[m for _, m in KNOWN_MISTAKES])
def test_a_mistake_found_once_the_model_is_known_is_one_line_too(known_mistakes, i):
    run_dir, p = known_mistakes[i]
    assert p.returncode == 2, p.stderr[-2000:]
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and KNOWN_MISTAKES[i][1] in lines[0], p.stderr
    assert not run_dir.exists()


@pytest.fixture(scope="module")
def known_mistakes(tmp_path_factory):
    """Every command of ``KNOWN_MISTAKES``, two at a time: per case its run dir and result."""
    base = tmp_path_factory.mktemp("known")
    runs = [base / f"k{i}" / "run" for i in range(len(KNOWN_MISTAKES))]
    done = run_many([command([*TINY, *tokenizer_overrides(), *args, f"hydra.run.dir={r}"], _cache_env())
                     for r, (args, _) in zip(runs, KNOWN_MISTAKES)])
    return list(zip(runs, done))


def test_the_same_command_again_into_the_same_run_dir_replaces_the_run(tmp_path):
    args = [*TINY, *tokenizer_overrides(), f"hydra.run.dir={tmp_path / 'run'}"]
    first = _cli(args, tmp_path, _cache_env())
    assert first.returncode == 0, first.stderr[-2000:]
    before = digest(tmp_path / "run")
    again = _cli(args, tmp_path, _cache_env())
    assert again.returncode == 0, again.stderr[-2000:]
    assert digest(tmp_path / "run") == before
