"""The argparse and Hydra entry points outside interp.run: ``--help`` and one-line user errors.

Every command says what it does and its options on ``--help`` (exit 0); a user's mistake (a missing
folder, a folder that is no run dir, a bad number, an unknown option) is one line on stderr,
``interp.NAME: error: ...``, exit code 2, and no traceback.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from interp import merge, model, shards
from tests.conftest import run_command

ROOT = Path(__file__).resolve().parents[1]


def _one_line_error(err: str, name: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{name}: error: "), err
    assert "Traceback" not in err
    return lines[0]


def _exit(main, argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    return info.value.code, out, err


@pytest.mark.parametrize("main,says", [
    (merge.main, ["Merge shard run dirs", "SHARD_DIR", "--out"]),
    (shards.main, ["One command for several GPUs", "--n", "--devices", "OVERRIDE"]),
    (model.main, ["Prepare the embedded model", "--prepare"]),
])
def test_help_says_what_the_command_does_and_its_options(main, says, capsys):
    code, out, err = _exit(main, ["--help"], capsys)
    assert code == 0 and not err
    assert out.startswith("usage: ")
    for s in says:
        assert s in out


def test_merge_refuses_a_missing_dir_and_a_dir_that_is_no_run(tmp_path, capsys):
    code, _, err = _exit(merge.main, [str(tmp_path / "nope"), "--out", str(tmp_path / "m")], capsys)
    assert code == 2 and "nope: no such directory" in _one_line_error(err, "interp.merge")
    (tmp_path / "empty").mkdir()
    code, _, err = _exit(merge.main, [str(tmp_path / "empty"), "--out", str(tmp_path / "m")], capsys)
    assert code == 2 and "not a complete run dir" in _one_line_error(err, "interp.merge")
    assert not (tmp_path / "m").exists()
    code, _, err = _exit(merge.main, [str(tmp_path / "empty")], capsys)  # --out missing
    assert code == 2 and "--out" in _one_line_error(err, "interp.merge")


@pytest.mark.parametrize("argv,says", [
    (["--n", "0"], "--n: '0' must be at least 1"),
    (["--n", "two"], "--n: 'two' is not an integer"),
    (["--n", "2", "--devices", "0"], "--devices names 1 GPU(s) for 2 shards"),
    (["--n", "2", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_shards_refuses_bad_numbers_and_options_before_starting_anything(argv, says, tmp_path, capsys):
    code, _, err = _exit(shards.main, [*argv, "--out", str(tmp_path / "sh")], capsys)
    assert code == 2 and says in _one_line_error(err, "interp.shards")
    assert not (tmp_path / "sh").exists()


def test_shards_checks_the_run_overrides_before_starting_a_shard(tmp_path, capsys):
    argv = ["--n", "2", "--out", str(tmp_path / "sh"), "--", "model=tiny", "pairs=no_such_pairs"]
    code, _, err = _exit(shards.main, argv, capsys)
    line = _one_line_error(err, "interp.shards")
    assert code == 2 and "interp.run refuses the overrides" in line and "no_such_pairs" in line
    assert not (tmp_path / "sh").exists()


def test_model_without_an_action_says_what_to_pass(capsys):
    code, _, err = _exit(model.main, [], capsys)
    assert code == 2 and "--prepare" in _one_line_error(err, "interp.model")


def _python_m(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``python -m ARGS`` (the module first) in ``cwd``."""
    return run_command(args[1:], module=args[0], timeout=300, cwd=cwd)


@pytest.mark.parametrize("args,name", [
    (["interp.merge", "no_such_shard", "--out", "merged"], "interp.merge"),
    (["interp.shards", "--n", "-1", "--out", "sh"], "interp.shards"),
    (["interp.model", "--prepare=yes"], "interp.model"),
])
def test_a_user_error_from_the_command_line_is_one_line_and_exit_2(args, name, tmp_path):
    r = _python_m(args, tmp_path)
    assert r.returncode == 2, r.stderr
    _one_line_error(r.stderr, name)
    assert not list(tmp_path.iterdir())


def test_generate_help_names_its_options(tmp_path):
    r = _python_m(["interp.generate", "--help"], tmp_path)
    assert r.returncode == 0, r.stderr
    for s in ("interp.generate", "OPENAI_API_KEY", "categories", "n_pairs", "api_model", "base_url"):
        assert s in r.stdout, s
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("args,says", [
    ([], "OPENAI_API_KEY is not set"),
    (["n_pairs=0"], "n_pairs=0 must be an integer >= 1"),
    (["categories=[nope]"], "nope"),
    (["no_such_key=1"], "no_such_key"),
])
def test_generate_user_errors_are_one_line_exit_2_and_leave_no_run_dir(args, says, tmp_path):
    env = {"OPENAI_API_KEY": "sk-test-not-used" if args else None}  # unset without arguments
    r = run_command(["model=tiny", *args], env, module="interp.generate", timeout=300, cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert says in _one_line_error(r.stderr, "interp.generate")
    assert not list(tmp_path.iterdir()), list(tmp_path.rglob("*"))


def test_generate_without_openai_names_the_extra_to_install(monkeypatch):
    import importlib.util

    from interp import generate

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openai" else real(name, *a))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-used")
    with pytest.raises(generate.GenerateError, match=r"pip install 'interp\[generate\]'"):
        generate.check(OmegaConf.create({"categories": ["tense"]}))
