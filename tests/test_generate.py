"""`python -m interp.generate` against a real HTTP server on 127.0.0.1 (tests/fake_openai_server.py).

The client is the real ``openai`` package talking HTTP; only the server's answers are scripted.
The target tokenizer is SmolLM2's (``conf/model/tiny.yaml``), loaded once for the module.
"""

from __future__ import annotations

import json
import logging
import random
import subprocess
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from fake_openai_server import (FakeOpenAIServer, chat_reply, drop_connection, error_reply,
                                pairs_reply)
from interp.generate import RESPONSE_FORMAT, GenerateError, backoff_delay, generate
from interp.pairs.files import read_pair_file
from tests.conftest import run_command

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-test-DISTINCTIVE-7f3a9c2e51d04b86"

# One-token edits under the SmolLM2 tokenizer.
GOOD = [("She is good at math.", "She is good in math."),
        ("She ate an apple.", "She ate a apple."),
        ("He walks home.", "He walked home."),
        ("The cat is on the mat.", "The cat are on the mat."),
        ("They were here.", "They was here.")]
SEMANTIC = [("The boy is tall.", "The boy is short."), ("The water was hot.", "The water was cold.")]
LENGTH_CHANGE = [("She walked home.", "She has walked home."),        # a word added
                 ("The dogs bark loudly.", "The dogs barks loudly.")]  # 'barks' is two tokens
TWO_TOKENS = ("He runs fast.", "She ran fast.")                       # two positions differ
SAME_TOKENS = ("The cat sat.", "The cat sat.")


@pytest.fixture(scope="module")
def tokenizer():
    from interp.model import load_tokenizer
    return load_tokenizer(OmegaConf.load(ROOT / "conf" / "model" / "tiny.yaml"))


@pytest.fixture(scope="module")
def base_cfg():
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="generate", overrides=["model=tiny"])


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    return KEY


@pytest.fixture
def run(base_cfg, tokenizer, tmp_path, api_key):
    """run(server, **overrides) -> (report, out_dir): one generate() call with test defaults."""

    def _run(server, **over):
        cfg = OmegaConf.merge(base_cfg, {
            "base_url": server.base_url, "api_model": "fake-model", "categories": ["tense"],
            "n_pairs": 3, "pairs_per_request": 3, "max_requests": 10, "max_retries": 3,
            "backoff_base": 0.01, "backoff_max": 0.05, "out_dir": str(tmp_path / "out"),
            "cache_dir": str(tmp_path / "cache")}, over)
        report = generate(cfg, tokenizer=tokenizer)
        return report, Path(cfg.out_dir)

    return _run


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ---------------------------------------------------------------- the happy path

def test_good_pairs_are_kept_and_written_in_a_file_that_read_pair_file_reads(run):
    with FakeOpenAIServer([pairs_reply(GOOD[:3])]) as server:
        report, out = run(server)
    assert len(server.requests) == 1
    pairs, problems = read_pair_file(out / "pairs.jsonl")
    assert problems == []
    assert [(p.a, p.b) for p in pairs] == GOOD[:3]
    assert {p.category for p in pairs} == {"tense"} and {p.type for p in pairs} == {"grammar"}
    assert {p.meta["source"] for p in pairs} == {"openai:fake-model"}
    assert len({p.pair_id for p in pairs}) == 3
    assert read_jsonl(out / "rejected.jsonl") == []
    assert report["kept"] == 3 and report["rejected"] == 0
    assert report["stop_reason"] == "targets_reached" and report["stopped_by_budget"] is False
    assert report["requests"] == report["http_requests"] == 1 and report["cache_hits"] == 0
    assert report["categories"]["tense"]["kept"] == 3
    assert json.loads((out / "report.json").read_text()) == report


def test_the_json_schema_the_model_and_the_category_are_sent_in_the_request(run):
    with FakeOpenAIServer([pairs_reply(GOOD[:1])]) as server:
        run(server, n_pairs=1, temperature=0.7, seed=11)
    (req,) = server.requests
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["authorization"] == f"Bearer {KEY}"
    body = req["body"]
    assert body["model"] == "fake-model"
    assert body["response_format"] == RESPONSE_FORMAT
    fmt = body["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    items = fmt["json_schema"]["schema"]["properties"]["pairs"]["items"]
    assert items["required"] == ["a", "b"] and items["additionalProperties"] is False
    assert body["temperature"] == 0.7 and body["seed"] == 11
    user = body["messages"][-1]["content"]
    assert "Category: tense (grammar)" in user and "Tense error" in user and "Write 1 new pair." in user


def test_pairs_beyond_the_target_are_counted_as_surplus_and_not_written(run):
    with FakeOpenAIServer([pairs_reply(GOOD[:3])]) as server:
        report, out = run(server, n_pairs=2, pairs_per_request=2)
    assert "Write 2 new pairs." in server.requests[0]["body"]["messages"][-1]["content"]
    assert report["kept"] == 2 and report["categories"]["tense"]["surplus"] == 1
    assert len(read_pair_file(out / "pairs.jsonl")[0]) == 2


def test_several_categories_take_turns_share_the_budget_and_get_their_own_type(run):
    def by_category(body):
        user = body["messages"][-1]["content"]
        return pairs_reply([SEMANTIC.pop(0)] if "Category: antonym" in user else [GOOD.pop(0)])

    saved = (list(GOOD), list(SEMANTIC))
    try:
        with FakeOpenAIServer([by_category] * 3) as server:
            report, out = run(server, categories=["tense", "antonym"], n_pairs=2, pairs_per_request=1,
                              max_requests=3)
    finally:
        GOOD[:], SEMANTIC[:] = saved
    asked = [r["body"]["messages"][-1]["content"].split("\n")[0] for r in server.requests]
    assert [s.split()[1] for s in asked] == ["tense", "antonym", "tense"]
    pairs, _ = read_pair_file(out / "pairs.jsonl")
    assert [(p.category, p.type) for p in pairs] == [("tense", "grammar"), ("antonym", "semantic"),
                                                     ("tense", "grammar")]
    assert report["categories"]["tense"]["stop"] == "target_reached"
    assert report["categories"]["antonym"]["stop"] == "budget"
    assert report["stopped_by_budget"] is True


# ---------------------------------------------------------------- rejections

def test_malformed_model_output_is_recorded_as_a_rejection_not_a_crash(run):
    script = [
        chat_reply('{"pairs": [{"a": "She ate an apple.", '),                  # cut-off JSON
        chat_reply("Sure! Here are some pairs: ..."),                         # not JSON at all
        chat_reply(json.dumps({"items": []})),                                # no "pairs" array
        chat_reply(None),                                                     # no content
        chat_reply(json.dumps({"pairs": [{"a": "He walks home."}, "text", {"a": 1, "b": 2},
                                         {"a": GOOD[0][0], "b": GOOD[0][1]}]})),
    ]
    with FakeOpenAIServer(script) as server:
        report, out = run(server, n_pairs=1, patience=None)
    assert len(server.requests) == 5
    assert report["kept"] == 1
    assert report["rejected_by_reason"] == {"bad_json": 2, "missing_field": 4, "bad_response": 1}
    rejected = read_jsonl(out / "rejected.jsonl")
    assert [r["reason"] for r in rejected] == ["bad_json", "bad_json", "missing_field", "bad_response",
                                               "missing_field", "missing_field", "missing_field"]
    assert rejected[1]["raw"].startswith("Sure!")
    assert all(r["category"] == "tense" and r["detail"] for r in rejected)
    pairs, problems = read_pair_file(out / "pairs.jsonl")
    assert [(p.a, p.b) for p in pairs] == [GOOD[0]] and problems == []


def test_pairs_that_are_not_one_token_edits_or_repeat_are_rejected_with_the_reason(run):
    answer = [GOOD[0], *LENGTH_CHANGE, TWO_TOKENS, SAME_TOKENS, GOOD[0], GOOD[1]]
    with FakeOpenAIServer([pairs_reply(answer)]) as server:
        report, out = run(server, n_pairs=2)
    assert report["kept"] == 2
    assert report["rejected_by_reason"] == {"duplicate": 1, "identical_tokens": 1,
                                            "length_mismatch": 2, "multi_token_edit": 1}
    rejected = {(r["a"], r["b"]): r for r in read_jsonl(out / "rejected.jsonl")}
    assert rejected[LENGTH_CHANGE[0]]["reason"] == "length_mismatch"
    assert "4 vs 5 tokens" in rejected[LENGTH_CHANGE[0]]["detail"]
    assert rejected[LENGTH_CHANGE[1]]["reason"] == "length_mismatch"
    assert rejected[TWO_TOKENS]["reason"] == "multi_token_edit"
    assert rejected[SAME_TOKENS]["reason"] == "identical_tokens"
    assert rejected[GOOD[0]]["reason"] == "duplicate" and "tense-00001" in rejected[GOOD[0]]["detail"]
    pairs, _ = read_pair_file(out / "pairs.jsonl")
    assert [(p.a, p.b) for p in pairs] == GOOD[:2]


# ---------------------------------------------------------------- retries, budget

def test_a_429_is_retried_with_backoff_and_the_pair_is_kept(run, caplog):
    caplog.set_level(logging.INFO)
    script = [error_reply(429, "rate limited", {"Retry-After": "0"}), pairs_reply(GOOD[:1])]
    with FakeOpenAIServer(script) as server:
        report, out = run(server, n_pairs=1)
    assert len(server.requests) == 2
    assert report["retries"] == 1 and report["http_requests"] == 2 and report["requests"] == 1
    assert report["kept"] == 1 and report["stop_reason"] == "targets_reached"
    assert "HTTP 429" in caplog.text and "retry 1/3" in caplog.text
    assert [p.a for p in read_pair_file(out / "pairs.jsonl")[0]] == [GOOD[0][0]]


def test_a_dropped_connection_and_a_503_are_retried_too(run):
    script = [drop_connection(), error_reply(503), pairs_reply(GOOD[:1])]
    with FakeOpenAIServer(script) as server:
        report, _ = run(server, n_pairs=1)
    assert len(server.requests) == 3
    assert report["retries"] == 2 and report["kept"] == 1 and report["errors"] == []


def test_500s_are_retried_up_to_max_retries_then_the_run_stops_and_reports_it(run):
    script = [pairs_reply(GOOD[:1])] + [error_reply(500, "boom")] * 3
    with FakeOpenAIServer(script, default=pairs_reply(GOOD[1:2])) as server:
        report, out = run(server, n_pairs=2, pairs_per_request=1, max_retries=2)
    assert len(server.requests) == 1 + 3  # one good request, then 1 try + 2 retries
    assert report["stop_reason"] == "api_error" and report["stopped_by_budget"] is False
    assert report["failed_requests"] == 1 and report["retries"] == 2
    assert "HTTP 500" in report["errors"][0] and "gave up after 2 retries" in report["errors"][0]
    assert report["categories"]["tense"]["stop"] == "api_error"
    assert report["kept"] == 1 and len(read_pair_file(out / "pairs.jsonl")[0]) == 1
    assert json.loads((out / "report.json").read_text())["stop_reason"] == "api_error"


def test_the_run_stops_at_the_request_budget_and_the_report_says_so(run):
    with FakeOpenAIServer([pairs_reply([p]) for p in GOOD]) as server:
        report, out = run(server, n_pairs=10, pairs_per_request=1, max_requests=2)
    assert len(server.requests) == 2
    assert report["stopped_by_budget"] is True and report["stop_reason"] == "budget"
    assert report["requests"] == 2 and report["kept"] == 2 and report["max_requests"] == 2
    assert report["categories"]["tense"]["stop"] == "budget"
    assert len(read_pair_file(out / "pairs.jsonl")[0]) == 2


def test_a_category_that_adds_nothing_is_given_up_after_patience_requests(run):
    with FakeOpenAIServer([pairs_reply([TWO_TOKENS])] * 5) as server:
        report, _ = run(server, n_pairs=1, patience=2)
    assert len(server.requests) == 2
    assert report["stop_reason"] == "no_progress" and report["categories"]["tense"]["stop"] == "no_progress"


def test_backoff_doubles_is_capped_and_jittered():
    rng = random.Random(0)
    assert [backoff_delay(n, 1.0, 30.0, 0.0, rng) for n in (1, 2, 3, 4, 5, 6, 9)] == [1, 2, 4, 8, 16, 30, 30]
    jittered = [backoff_delay(3, 1.0, 30.0, 0.5, rng) for _ in range(200)]
    assert all(2.0 <= d <= 4.0 for d in jittered) and len(set(jittered)) > 100
    assert backoff_delay(1, 1.0, 30.0, 0.0, rng, retry_after=7) == 7
    assert backoff_delay(1, 1.0, 30.0, 0.0, rng, retry_after=600) == 30


# ---------------------------------------------------------------- cache and reruns

def test_a_rerun_with_the_same_config_makes_no_http_request_and_gives_identical_output(run):
    script = [pairs_reply([GOOD[0], LENGTH_CHANGE[0]]), pairs_reply([GOOD[1], TWO_TOKENS, GOOD[2]])]
    with FakeOpenAIServer(script) as server:
        first, out1 = run(server, n_pairs=3, pairs_per_request=2)
    assert len(server.requests) == 2 and first["http_requests"] == 2
    # The server is gone: any HTTP request now would fail with a connection error.
    second, out2 = run(server, n_pairs=3, pairs_per_request=2, out_dir=str(out1.parent / "out2"))
    assert second["http_requests"] == 0 and second["cache_hits"] == 2 and second["requests"] == 2
    assert second["errors"] == [] and second["stop_reason"] == "targets_reached"
    for name in ("pairs.jsonl", "rejected.jsonl"):
        assert (out2 / name).read_bytes() == (out1 / name).read_bytes()
    drop = {"out_dir", "pairs_file", "rejected_file", "http_requests", "cache_hits", "usage", "elapsed_s"}
    assert {k: v for k, v in first.items() if k not in drop} == {k: v for k, v in second.items() if k not in drop}
    # Again into the first out_dir: its pairs already meet the target, nothing is asked or added.
    before = (out1 / "pairs.jsonl").read_bytes(), (out1 / "rejected.jsonl").read_bytes()
    third, _ = run(server, n_pairs=3, pairs_per_request=2)
    assert third["requests"] == third["http_requests"] == 0 and third["existing"] == 3
    assert ((out1 / "pairs.jsonl").read_bytes(), (out1 / "rejected.jsonl").read_bytes()) == before


def test_a_rerun_into_the_same_out_dir_resumes_without_repeating_earlier_pairs(run):
    with FakeOpenAIServer([pairs_reply([GOOD[0]])]) as server:
        run(server, n_pairs=1)
    with FakeOpenAIServer([pairs_reply([GOOD[0], GOOD[1]])]) as server:
        report, out = run(server, n_pairs=2)
    assert report["existing"] == 1 and report["kept"] == 1
    assert report["rejected_by_reason"] == {"duplicate": 1}
    assert f'"{GOOD[0][0]}"' in server.requests[0]["body"]["messages"][-1]["content"]  # "do not repeat"
    pairs, problems = read_pair_file(out / "pairs.jsonl")
    assert problems == [] and [(p.a, p.b) for p in pairs] == GOOD[:2]
    assert [p.pair_id for p in pairs] == ["tense-00001", "tense-00002"]


# ---------------------------------------------------------------- the key

def test_the_api_key_never_appears_in_outputs_cache_or_logs(run, tmp_path, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    script = [error_reply(429), pairs_reply(GOOD[:1]),
              error_reply(401, f"Incorrect API key provided: {KEY}.")]  # a server that echoes it
    with FakeOpenAIServer(script) as server:
        report, out = run(server, n_pairs=2, pairs_per_request=1)
    assert all(r["headers"]["authorization"] == f"Bearer {KEY}" for r in server.requests)  # it was used
    assert report["stop_reason"] == "api_error" and "HTTP 401" in report["errors"][0]
    assert "not retried" in report["errors"][0] and len(server.requests) == 3
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"pairs.jsonl", "rejected.jsonl", "report.json"}
    assert any(p.suffix == ".json" and "cache" in p.parts for p in files)
    for path in files:
        assert KEY not in path.read_text(encoding="utf-8"), path
    assert "***" in (out / "report.json").read_text()
    captured = capsys.readouterr()
    assert caplog.text and KEY not in caplog.text
    assert KEY not in captured.out and KEY not in captured.err


def test_a_missing_api_key_raises_one_clear_error_before_any_request(base_cfg, tokenizer, tmp_path,
                                                                      monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeOpenAIServer() as server:
        cfg = OmegaConf.merge(base_cfg, {"base_url": server.base_url, "out_dir": str(tmp_path / "out")})
        with pytest.raises(GenerateError, match="OPENAI_API_KEY is not set"):
            generate(cfg, tokenizer=tokenizer)
    assert server.requests == [] and not (tmp_path / "out").exists()


def test_an_unknown_category_names_the_known_ones(base_cfg, tokenizer, tmp_path, api_key):
    cfg = OmegaConf.merge(base_cfg, {"categories": ["tenses"], "out_dir": str(tmp_path / "out")})
    with pytest.raises(GenerateError, match=r"'tenses' is not in category_specs .*tense"):
        generate(cfg, tokenizer=tokenizer)


# ---------------------------------------------------------------- the command line

def _cli(args: list[str], env: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    """``python -m interp.generate ARGS`` into ``tmp_path/run``, no API key but what ``env`` gives."""
    return run_command([*args, f"hydra.run.dir={tmp_path / 'run'}"],
                       {"OPENAI_API_KEY": None, "HF_HUB_OFFLINE": "1", **env}, module="interp.generate", timeout=300)


def test_the_command_line_writes_to_the_hydra_run_dir_and_never_prints_the_key(tmp_path):
    script = [error_reply(500), pairs_reply(GOOD[:1])]
    with FakeOpenAIServer(script) as server:
        proc = _cli(["model=tiny", "categories=[tense]", "n_pairs=1", "api_model=fake-model",
                     f"base_url={server.base_url}", f"cache_dir={tmp_path / 'cache'}",
                     "backoff_base=0.01"], {"OPENAI_API_KEY": KEY}, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_dir = tmp_path / "run"
    report = json.loads((run_dir / "report.json").read_text())
    assert report["kept"] == 1 and report["retries"] == 1 and report["out_dir"] == str(run_dir)
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert "retry 1/5" in (run_dir / "generate.log").read_text()
    assert KEY not in proc.stdout + proc.stderr
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert KEY not in path.read_text(encoding="utf-8"), path


def test_the_command_line_without_a_key_exits_with_one_clear_message(tmp_path):
    proc = _cli(["categories=[tense]", "base_url=http://127.0.0.1:9/v1"], {}, tmp_path)
    assert proc.returncode == 2
    output = proc.stdout + proc.stderr
    assert output.count("OPENAI_API_KEY is not set") == 1 and "Traceback" not in output
