"""The wheel: built from the repository, installed into a fresh folder, it runs from any directory.

The build runs on a copy of the checkout (nothing is written into it); the wheel is installed with
``pip install --no-deps --target SITE`` and every command runs with ``PYTHONPATH=SITE`` from a
working directory outside the checkout, so the wheel's copy of ``interp`` (and its ``interp/conf``)
is what runs, not the editable checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.packaging

ROOT = Path(__file__).resolve().parents[1]
NOT_SOURCES = (".git", ".venv", "outputs", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
               "multirun", "test-artifacts", ".whl", ".cache")
BENCHMARK_ONLY_CONF = {"benchmark.yaml"}  # the benchmarks' config stays in the checkout

RUN = ["model=tiny", "pairs=grammar", "pairs.limit=2", "hooks=resid_post", "device=cpu", "dtype=float32",
       "analysis.figures=false", "progress=false"]
# Each command writes a run dir at {out}; a new way to make one (the Python API...) is one more line.
COMMANDS = {
    "cli": [sys.executable, "-m", "interp.run", *RUN, "hydra.run.dir={out}"],
    "api": [sys.executable, "-c", "import interp; interp.analyze(interp.load_model('tiny', device='cpu', "
            "dtype='float32'), [('She is good at math.', 'She is good in math.'), ('They bought an old car.', "
            "'They bought a old car.')], figures=False).save(r'{out}')"],
}


def _sh(cmd: list[str], cwd: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A copy of the checkout without what git ignores (the build writes build/ and egg-info in it)."""
    src = tmp_path_factory.mktemp("wheel") / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(*NOT_SOURCES))
    return src


@pytest.fixture(scope="module")
def wheel(source) -> Path:
    dist = source.parent / "dist"
    r = _sh([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", dist, source],
            cwd=source.parent)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    (whl,) = dist.glob("interp-*.whl")
    return whl


@pytest.fixture(scope="module")
def site(wheel, tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("site")
    r = _sh([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "-q", "--target", site, wheel],
            cwd=site)
    assert r.returncode == 0, r.stderr[-3000:]
    return site


@pytest.fixture(scope="module")
def outside(site, tmp_path_factory) -> tuple[Path, dict]:
    """A working directory outside the checkout and an environment that imports the wheel's copy."""
    cwd = tmp_path_factory.mktemp("elsewhere")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(site), HF_HUB_OFFLINE="1", PYTHONDONTWRITEBYTECODE="1")
    return cwd, env


def test_the_wheel_holds_the_package_configs_and_data_and_nothing_else(wheel, source):
    names = set(zipfile.ZipFile(wheel).namelist())
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"interp"}, tops  # no benchmarks/, tests/, conf/
    conf = {f"interp/conf/{p.relative_to(source / 'conf').as_posix()}" for p in (source / "conf").rglob("*.yaml")
            if p.name not in BENCHMARK_ONLY_CONF}
    assert "interp/conf/config.yaml" in conf and any(c.startswith("interp/conf/hooks/") for c in conf)
    assert conf <= names, sorted(conf - names)
    assert not {n for n in names if n.startswith("interp/conf/") and Path(n).name in BENCHMARK_ONLY_CONF}
    sources = {p.relative_to(source).as_posix() for p in (source / "interp").rglob("*") if p.is_file()}
    assert sources <= names, sorted(sources - names)  # every module, the bank, templates, static, py.typed
    assert {"interp/py.typed", "interp/viewer/templates/base.html"} <= names
    assert any(n.startswith("interp/pairs/bank/") and n.endswith(".jsonl") for n in names)
    dist_info = next(t for t in tops if t.endswith(".dist-info"))
    assert f"{dist_info}/licenses/LICENSE" in names
    scripts = zipfile.ZipFile(wheel).read(f"{dist_info}/entry_points.txt").decode()
    for name in ("run", "patch", "view", "figures", "compare", "merge", "shards", "generate"):
        assert f"interp-{name} = interp." in scripts, name


def test_the_core_modules_import_no_optional_extra(outside):
    """flask, circuitsvis (viewer), kaleido (png) and openai (generate) are extras: what a run, the
    API and the other commands import at module level must not need them."""
    cwd, env = outside
    extras = ["flask", "circuitsvis", "kaleido", "openai"]
    core = ["interp", "interp.run", "interp.api", "interp.result", "interp.patch", "interp.figures",
            "interp.compare", "interp.merge", "interp.shards", "interp.generate"]
    code = (f"import importlib, sys\nfor m in {core!r}: importlib.import_module(m)\n"
            f"print(sorted({{k.split('.')[0] for k in sys.modules}} & set({extras!r})))")
    r = _sh([sys.executable, "-c", code], cwd, env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == "[]"


def test_the_installed_wheel_is_what_runs_outside_the_checkout(outside, site):
    cwd, env = outside
    r = _sh([sys.executable, "-c", "import interp, interp.config as c; print(interp.__file__); print(c.conf_dir())"],
            cwd, env)
    assert r.returncode == 0, r.stderr[-3000:]
    package, conf = r.stdout.split()
    assert Path(package).parent == site / "interp"
    assert Path(conf) == site / "interp" / "conf"


def test_every_console_script_resolves_to_a_main_that_takes_no_argument_and_returns_none(outside, site):
    cwd, env = outside
    # a console script exits with sys.exit(main()): main is called without arguments and returns None
    code = ("import importlib.metadata as m, inspect\n"
            "eps = [e for e in m.distribution('interp').entry_points if e.group == 'console_scripts']\n"
            "print(len(eps))\n"
            "for e in eps:\n"
            "    s = inspect.signature(e.load())\n"
            "    print(e.name, all(p.default is not p.empty for p in s.parameters.values()),"
            " s.return_annotation in (None, 'None'))")
    r = _sh([sys.executable, "-c", code], cwd, env)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().split("\n")
    assert int(lines[0]) == 8 and all(ln.endswith(" True True") for ln in lines[1:]), r.stdout
    r = _sh([site / "bin" / "interp-merge", "--help"], cwd, env)  # a generated script runs
    assert r.returncode == 0 and "usage: interp-merge" in r.stdout, r.stderr[-3000:]


@pytest.mark.parametrize("name", COMMANDS)
def test_a_tiny_analysis_from_the_installed_wheel_writes_a_complete_run_dir(outside, name, tmp_path):
    cwd, env = outside
    out = tmp_path / "run"
    r = _sh([c.format(out=out) for c in COMMANDS[name]], cwd, env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["counts"]["kept"] > 0
    for table in ("pairs.parquet", "stability.parquet", "divergence.parquet", "activations.safetensors"):
        assert (out / table).is_file(), table
    assert not (out / "stats.safetensors").exists()  # the mergeable state: written by shards (analysis.save_state)
    assert not list(cwd.iterdir()), "the run wrote into the working directory"
