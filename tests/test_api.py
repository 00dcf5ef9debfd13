"""The public API: ``interp.load_model``, ``interp.analyze``, ``Result``, ``interp.load_run``.

The same pairs give the same tables through the command line and through the API, for every model
form (the loader's model, a TransformerBridge, a Hugging Face model with its tokenizer) and every
pairs form (a file, tuples, dicts, a DataFrame, a ``datasets.Dataset``); a saved Result reads back
equal; the library prints nothing and raises instead of exiting.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

import interp
from interp import rundir as R
from interp.config import ConfigError
from interp.result import RunDirError
from interp.run import NoPairsError
from tests.conftest import make_cfg, tokenizer_overrides, write_pairs

TABLES = ("stability", "stability_by_category", "contrast", "divergence", "pair_profile", "pair_components")
PAIR_COLUMNS = ["pair_id", "category", "type", "a", "b", "n_tokens", "edit_pos", "token_a", "token_b",
                "token_id_a", "token_id_b", "logprob_a", "logprob_b", "margin", "correct"]
OPTIONS = dict(batch_size=3, figures=False, n_saved_pairs=2)


def _records(pairs_file) -> list[dict]:
    return [json.loads(line) for line in pairs_file.read_text().splitlines()]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, tiny_lm):
    """The reference: ``interp.run.run`` (what the command runs) on the pairs file."""
    from interp.run import run

    folder = tmp_path_factory.mktemp("cli")
    path = write_pairs(folder / "pairs.jsonl")
    cfg = make_cfg("model=tiny", "device=cpu", "dtype=float32", "pairs=file", f"pairs.path={path}",
                   "batch_size=3", "analysis.figures=false", "analysis.n_saved_pairs=2", *tokenizer_overrides())
    return path, interp.load_run(run(cfg, folder / "run", lm=tiny_lm))


def assert_same_tables(api: interp.Result, cli: interp.Result) -> None:
    """Bit for bit: every statistics table, and the pair rows but for where they were read from."""
    pd.testing.assert_frame_equal(api.pairs[PAIR_COLUMNS], cli.pairs[PAIR_COLUMNS], check_exact=True)
    for name in TABLES:
        a, c = api.table(name), cli.table(name)
        assert (a is None) == (c is None), name
        if a is not None:
            pd.testing.assert_frame_equal(a.reset_index(drop=True), c.reset_index(drop=True), check_exact=True,
                                          obj=name)
    assert api.manifest["counts"]["kept"] == cli.manifest["counts"]["kept"]
    pd.testing.assert_frame_equal(pd.DataFrame(api.manifest["accuracy"]), pd.DataFrame(cli.manifest["accuracy"]))


def test_the_loaders_model_gives_the_commands_tables(cli_run, tiny_lm):
    path, cli = cli_run
    r = interp.analyze(tiny_lm, path, **OPTIONS)
    assert_same_tables(r, cli)
    assert r.run_dir is None and r.manifest["run_dir"] is None  # nothing written
    assert r.manifest["config"]["model"]["name"] == "tiny-llama"


def test_load_model_by_config_name_is_the_same_model(tiny_lm):
    lm = interp.load_model("tiny", device="cpu", dtype="float32", **_tokenizer_model_overrides())
    assert lm.info == tiny_lm.info


def _tokenizer_model_overrides() -> dict:
    over = tokenizer_overrides()
    if not over:
        return {}
    return {"tokenizer": {"source": "hf", "path": over[1].split("=", 1)[1]}}


def test_a_bridge_gives_the_commands_tables(cli_run, tiny_lm):
    path, cli = cli_run
    r = interp.analyze(tiny_lm.bridge, path, bos_token="<|endoftext|>", **OPTIONS)
    assert r.manifest["forward"]["backend"] == "bridge"
    assert_same_tables(r, cli)


def test_a_hugging_face_model_and_tokenizer_give_the_commands_tables(cli_run, tiny_lm):
    path, cli = cli_run
    hf = tiny_lm.plain.original_model  # the model as loaded (shares the weights; untouched by the bridge)
    before = {n: type(m) for n, m in hf.named_modules()}
    hf.train()  # even its training flag is left as the caller set it (the analysis runs twins in eval mode)
    try:
        r = interp.analyze((hf, tiny_lm.tokenizer), path, bos_token="<|endoftext|>", **OPTIONS)
    finally:
        training = hf.training
        hf.eval()
    assert_same_tables(r, cli)
    assert {n: type(m) for n, m in hf.named_modules()} == before  # the caller's model is not rewired
    assert training


@pytest.mark.parametrize("form", ["tuples", "dicts", "dataframe", "dataset"])
def test_every_pairs_form_gives_the_commands_tables(cli_run, tiny_lm, form):
    path, cli = cli_run
    recs = _records(path)
    if form == "tuples":
        pairs = [(r["a"], r["b"], r["category"], r["type"]) for r in recs]
    elif form == "dicts":
        pairs = recs
    elif form == "dataframe":
        pairs = pd.DataFrame(recs)
    else:
        datasets = pytest.importorskip("datasets")
        pairs = datasets.Dataset.from_list(recs)
    r = interp.analyze(tiny_lm, pairs, **OPTIONS)
    assert_same_tables(r, cli)
    assert set(r.pairs["source"]) == {"<list>" if form in ("tuples", "dicts") else
                                      "<DataFrame>" if form == "dataframe" else "<datasets.Dataset>"}


def test_save_and_load_run_round_trip(tiny_lm, tmp_path, cli_run):
    path, _ = cli_run
    r = interp.analyze(tiny_lm, path, hooks=["resid_post", "z"], controls={"n": 2}, positions=["edit", "last"],
                       layers=[1], batch_size=4, figures=False, save_state=True)
    out = r.save(tmp_path / "saved")
    assert R.is_complete(out)
    back = interp.load_run(out)
    for name in ("pairs", *TABLES):
        a, b = r.table(name), back.table(name)
        assert (a is None) == (b is None), name
        if a is not None:
            pd.testing.assert_frame_equal(a, b, check_exact=True, obj=name)
    pd.testing.assert_frame_equal(r.rejected, back.rejected)
    assert back.manifest == json.loads((out / R.MANIFEST).read_text())
    assert back.manifest["config"]["hooks"]["layers"] == [1]
    assert set(back.stability["hook"]) == {"resid_post", "z", "z_head"}
    assert set(back.stability["position"]) == {"edit", "last"}
    assert back.manifest["controls"]["n"] == 2
    # a saved Result is a run dir the commands read: its figures redraw from it alone
    assert "stable at 'edit'" in back.summary() and "null: common (2 control edits per pair" in back.summary()
    with pytest.raises(FileExistsError):  # another complete run is never overwritten
        interp.analyze(tiny_lm, path, batch_size=4, figures=False).save(out)
    copy = back.save(tmp_path / "copy")  # a loaded run saved elsewhere keeps its tensors
    for f in (R.STATS, R.ACTIVATIONS, R.PATTERNS):
        assert (copy / f).read_bytes() == (out / f).read_bytes()


def test_the_library_prints_nothing(tiny_lm, cli_run, capsys):
    path, _ = cli_run
    interp.analyze(tiny_lm, path, batch_size=8, figures=False, controls={"n": 0})
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


@pytest.mark.parametrize("options,message", [
    ({"positions": ["middle"]}, "analysis.positions='middle' is not one of edit, last, after"),
    ({"backend": "gpu"}, "analysis.backend='gpu' is not one of auto, bridge, hf"),
    ({"batch_size": -1}, "batch_size=-1 must be a whole number >= 1"),
    ({"controls": {"n": -2}}, "analysis.controls.n=-2 must be a whole number >= 0"),
    ({"no_such_option": 1}, "unknown option 'no_such_option'"),
    ({"alpha": "high"}, "analysis.alpha"),
])
def test_bad_options_raise_config_errors_before_the_model_runs(tiny_lm, options, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        interp.analyze(tiny_lm, [("She is good at math.", "She is good in math.")], **options)


@pytest.mark.parametrize("options,message", [
    ({"device": "cuda"}, "interp.load_model(spec, device=...)"),
    ({"dtype": "bfloat16"}, "interp.load_model(spec, dtype=...)"),
    ({"checkpoint_every": 1}, "checkpoints belong to run dirs"),
    ({"shard": {"index": 1, "count": 2}}, "shards belong to"),
    ({"path": "x.jsonl"}, "the pairs argument"),
    ({"overrides": ["model=llama3_8b"]}, "the model argument"),
    ({"bos_token": "<|endoftext|>"}, "a loaded model has its own"),
    ({"layers": [9]}, "out of range for a model with 2 layers"),
    ({"pattern_pairs": ["nope"]}, "hooks.pattern_pairs: no kept pair"),
    ({"categories": ["nope"]}, "pairs.categories: no pairs of category"),
])
def test_settings_analyze_cannot_honour_are_refused(tiny_lm, options, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        interp.analyze(tiny_lm, [("She is good at math.", "She is good in math.")], figures=False, **options)


def test_a_result_saved_twice_counts_its_analysis_time_once(tiny_lm, tmp_path):
    r = interp.analyze(tiny_lm, [("She is good at math.", "She is good in math.")], figures=False,
                       controls={"n": 0})
    base = r.manifest["timings"]["total_s"]
    import time

    first = r.save(tmp_path / "a")
    t0 = time.time()
    second = r.save(tmp_path / "b")
    took = time.time() - t0
    t2 = interp.load_run(second).manifest["timings"]["total_s"]
    assert base <= t2 <= base + took  # the first save's writing is not counted again
    assert list(r.rejected.columns)[:3] == ["source", "line", "reason"] and r.rejected.empty
    with pytest.raises(FileExistsError):  # refused before the work
        interp.analyze(tiny_lm, [("She is good at math.", "She is good in math.")], save=first)


def test_bad_inputs_say_what_they_need(tiny_lm, tmp_path):
    with pytest.raises(TypeError, match=r"\(model, tokenizer\)"):
        interp.analyze(tiny_lm.plain.original_model, [("a b", "a c")])
    with pytest.raises(TypeError, match="pairs must be"):
        interp.analyze(tiny_lm, 42)
    with pytest.raises(NoPairsError, match="no pair passed validation"):
        interp.analyze(tiny_lm, [("She is good at math.", "She is very good in math.")])
    r = interp.analyze(tiny_lm, [("She is good at math.", "She is good in math."), ("x",)], figures=False,
                       controls={"n": 0}, contrast=None)
    assert r.rejected[["line", "reason"]].values.tolist() == [[2, "bad_tuple"]]
    with pytest.raises(RunDirError, match="not a run directory"):
        interp.load_run(tmp_path)


def test_model_specs_resolve_to_model_configs(tmp_path):
    from interp.api import model_config

    assert model_config("tiny").source == "random"
    assert model_config("meta-llama/Meta-Llama-3-8B").name == "meta-llama/Meta-Llama-3-8B"
    local = model_config(str(tmp_path))
    assert (local.source, local.path) == ("hf", str(tmp_path))
    assert model_config("tiny", seed=3).seed == 3
    with pytest.raises(ConfigError, match="not a config option"):
        model_config("nonsense")
