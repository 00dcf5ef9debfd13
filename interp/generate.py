"""Generate minimal pairs with an OpenAI-compatible chat-completions API.

    export OPENAI_API_KEY=...
    python -m interp.generate categories=[tense] n_pairs=50 \\
        base_url=https://api.openai.com/v1 api_model=gpt-4o-mini

``model`` is the config group of the *target* model (the one the pairs are for, default
``smollm2_135m``; ``model=tiny`` borrows the same tokenizer); ``api_model`` is the model that writes
the pairs. Any OpenAI-compatible server works through ``base_url`` (vLLM, llama.cpp, a proxy...).

For each category of ``categories`` (described in ``category_specs``: a description, a ``type``
``grammar`` - sentence ``a`` correct, ``b`` with one error - or ``semantic`` - a meaning change, no
correct side - and a few examples), requests of ``pairs_per_request`` pairs are sent in turn, with a
JSON-schema response format (``{"pairs": [{"a": ..., "b": ...}]}``, strict), until ``n_pairs`` pairs
are kept per category. Every returned pair is checked with ``interp.pairs.validate.check_pair``
against the target model's tokenizer: only one-token edits (same length, one position differs) are
kept, and duplicates (within the run, or of pairs an earlier run wrote to the same ``out_dir``) are
rejected.

Files in ``out_dir`` (default: Hydra's run dir):

- ``pairs.jsonl``: ``pair_id, a, b, category, type, source="openai:<api_model>"``, readable by
  ``interp.pairs.files.read_pair_file``. An existing file is extended, and its pairs count towards
  ``n_pairs`` (run again with the same ``out_dir`` to resume or to get more pairs).
- ``rejected.jsonl``: one line per rejection with its ``reason`` (``bad_json``, ``missing_field``,
  ``length_mismatch``, ``multi_token_edit``, ``identical_tokens``, ``duplicate``, ``empty``,
  ``too_long``, ``refusal``, ``bad_response``) and ``detail``; also extended.
- ``report.json``: requests, HTTP requests, cache hits, retries, kept and rejected per category and
  per reason, and why the run stopped (``stop_reason``: ``targets_reached``, ``budget``,
  ``no_progress``, ``api_error``; ``stopped_by_budget``).

Raw answers are cached in ``cache_dir``, keyed by a SHA-256 of the full request (base URL, model,
messages, schema, temperature, seed and request index), so a rerun with the same config sends no
HTTP request and writes the same pairs. Delete the cache folder to ask again.

``max_requests`` is a budget of requests for the whole run; answers from the cache count too, so that
a run is a pure function of config and cache. Retries do not count: a request that fails with 408,
409, 429, a 5xx or a connection error is retried up to ``max_retries`` times with exponential backoff
(``backoff_base * 2**(n-1)`` seconds, capped at ``backoff_max``, minus a random jitter; a
``Retry-After`` header is honoured up to the cap). A request that still fails, or fails with another
status (401, 400...), stops the run; what was kept so far is written, and the report says why.

The key is read from ``OPENAI_API_KEY`` only; it is never logged or written (any text written is
scrubbed of it, error messages included).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import random
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import hydra
from omegaconf import DictConfig

from interp.cli import fail
from interp.config import conf_dir, one_line
from interp.pairs.files import read_pair_file
from interp.pairs.records import PAIR_TYPES
from interp.pairs.validate import check_pair

log = logging.getLogger(__name__)

API_KEY_ENV = "OPENAI_API_KEY"
SCHEMA_NAME = "minimal_pairs"
PAIR_SCHEMA: dict = {
    "type": "object",
    "properties": {
        "pairs": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "a": {"type": "string", "description": "the first sentence"},
                    "b": {"type": "string", "description": "the same sentence with one word changed"},
                },
                "required": ["a", "b"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["pairs"],
    "additionalProperties": False,
}
RESPONSE_FORMAT: dict = {
    "type": "json_schema",
    "json_schema": {"name": SCHEMA_NAME, "strict": True, "schema": PAIR_SCHEMA},
}
RETRY_STATUSES = (408, 409, 429)  # plus every 5xx
RAW_SNIPPET = 1000  # characters of a malformed answer kept in rejected.jsonl

SYSTEM_PROMPT = """\
You write minimal pairs of English sentences for a study of how a language model processes them.
A minimal pair is two sentences that are identical except for exactly ONE word.
Rules:
- Change exactly one word. Keep every other word, the word order, capitalisation, spacing and
  punctuation identical. Do not add or remove words.
- Use short, common words, and make the changed word a short common word in both sentences, so that
  a tokenizer splits each into a single token.
- Keep sentences short (4 to 12 words), natural and varied in vocabulary and structure.
- Every pair must differ from the other pairs and from the pairs listed as already collected.
Answer with JSON only, following the given schema: {"pairs": [{"a": "...", "b": "..."}, ...]}."""

TYPE_RULES = {
    "grammar": ("Sentence a must be correct, natural English. Sentence b must be the same sentence "
                "with exactly one error of this kind, made by changing one word."),
    "semantic": ("Both sentences must be correct, natural English. Changing the one word changes "
                 "the meaning; neither sentence is wrong."),
}


class GenerateError(RuntimeError):
    """A problem with the config or the environment; the message says what to do about it."""


class RequestFailed(RuntimeError):
    """A request that failed for good (after its retries, or with a status that is not retried)."""


# ---------------------------------------------------------------- small helpers

class Redactor:
    """Replaces the API key in any text by ``***``."""

    def __init__(self, secret: str):
        self.secret = secret

    def __call__(self, text: str) -> str:
        return text.replace(self.secret, "***") if self.secret else text


def backoff_delay(attempt: int, base: float, cap: float, jitter: float,
                  rng: random.Random, retry_after: float | None = None) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based).

    ``base * 2**(attempt-1)`` capped at ``cap``, shortened by a random fraction in ``[0, jitter)``
    so that many clients do not retry in lockstep. A server's ``Retry-After`` raises it, up to ``cap``.
    """
    delay = min(cap, base * 2 ** (attempt - 1)) * (1.0 - jitter * rng.random())
    if retry_after is not None:
        delay = max(delay, min(cap, retry_after))
    return max(0.0, delay)


def _retry_after(err: Exception) -> float | None:
    response = getattr(err, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def request_key(base_url: str, body: dict, index: int) -> str:
    """SHA-256 of the full request: endpoint, body (model, messages, schema, temperature, seed), index."""
    blob = json.dumps({"base_url": base_url.rstrip("/"), "body": body, "request_index": index},
                      sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ResponseCache:
    """Raw API answers on disk, one JSON file per request key."""

    def __init__(self, root: Path, redact: Redactor):
        self.root = root
        self.redact = redact

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            return entry["response"] if isinstance(entry.get("response"), dict) else None
        except (OSError, ValueError, AttributeError):
            log.warning("cache entry %s is unreadable; asking again", path)
            return None

    def put(self, key: str, request: dict, response: dict) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"key": key, "request": request, "response": response},
                          ensure_ascii=False, indent=1)
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        tmp.write_text(self.redact(text), encoding="utf-8")
        tmp.replace(path)  # atomic: a reader sees the old file or the whole new one


def parse_answer(data: Any) -> tuple[list | None, str, str, str | None]:
    """``(items, reason, detail, raw_content)`` of a chat-completion answer; items None = rejected."""
    try:
        message = data["choices"][0]["message"]
    except (KeyError, IndexError, TypeError):
        return None, "bad_response", "the answer has no choices[0].message", None
    if not isinstance(message, dict):
        return None, "bad_response", "choices[0].message is not an object", None
    content = message.get("content")
    if message.get("refusal"):
        return None, "refusal", str(message["refusal"])[:RAW_SNIPPET], None
    if not isinstance(content, str) or not content.strip():
        return None, "bad_response", "the message has no text content", None
    try:
        obj = json.loads(content)
    except json.JSONDecodeError as err:
        finish = data["choices"][0].get("finish_reason") if isinstance(data["choices"][0], dict) else None
        more = " (finish_reason=length: the answer was cut off)" if finish == "length" else ""
        return None, "bad_json", f"{err.msg} at char {err.pos}{more}", content[:RAW_SNIPPET]
    if not isinstance(obj, dict) or not isinstance(obj.get("pairs"), list):
        return None, "missing_field", 'the JSON has no "pairs" array', content[:RAW_SNIPPET]
    return obj["pairs"], "", "", content


@dataclass
class Category:
    name: str
    type: str
    description: str
    examples: list
    target: int
    existing: int = 0
    kept: int = 0
    requests: int = 0
    surplus: int = 0
    no_progress: int = 0  # requests in a row that added no pair
    rejected: Counter = field(default_factory=Counter)
    recent: list = field(default_factory=list)  # (a, b) of kept pairs, for the prompt
    stop: str | None = None

    @property
    def total(self) -> int:
        return self.existing + self.kept


def build_messages(cat: Category, k: int, recent: int) -> list[dict]:
    lines = [f"Category: {cat.name} ({cat.type}). {cat.description}", TYPE_RULES[cat.type]]
    if cat.examples:
        lines.append("Examples:")
        lines += [f'- a: "{a}" | b: "{b}"' for a, b in cat.examples]
    shown = cat.recent[-recent:] if recent > 0 else []
    if shown:
        lines.append("Already collected (do not repeat these):")
        lines += [f'- a: "{a}" | b: "{b}"' for a, b in shown]
    lines.append(f"Write {k} new pair{'s' if k != 1 else ''}.")
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "\n".join(lines)}]


def _category_specs(cfg) -> list[tuple[str, str, str, list]]:
    names = cfg.get("categories")
    if isinstance(names, str):
        names = [names]
    names = list(names or [])
    if not names:
        raise GenerateError("categories is empty; name at least one, e.g. categories=[tense]")
    specs = cfg.get("category_specs") or {}
    out = []
    for name in names:
        name = str(name)
        spec = specs.get(name)
        if spec is None:
            raise GenerateError(
                f"category {name!r} is not in category_specs (known: {', '.join(sorted(specs))}); add "
                f"one with '+category_specs.{name}={{type: grammar, description: \"...\"}}'")
        ptype = spec.get("type", "grammar")
        if ptype not in PAIR_TYPES:
            raise GenerateError(f"category_specs.{name}.type={ptype!r} is not one of {PAIR_TYPES}")
        desc = str(spec.get("description") or "").strip()
        if not desc:
            raise GenerateError(f"category_specs.{name}.description is empty; describe the edit")
        examples = [(str(e[0]), str(e[1])) for e in (spec.get("examples") or []) if len(e) == 2]
        out.append((name, ptype, desc, examples))
    if len({n for n, *_ in out}) != len(out):
        raise GenerateError(f"categories lists a name twice: {names}")
    return out


def _positive_int(cfg, key: str, allow_none: bool = False, minimum: int = 1) -> int | None:
    value = cfg.get(key)
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise GenerateError(f"{key}={value!r} must be an integer >= {minimum}"
                            + (" or null" if allow_none else ""))
    return value


def _resolve_out_dir(cfg) -> Path:
    if cfg.get("out_dir"):
        return Path(str(cfg.out_dir))
    try:
        from hydra.core.hydra_config import HydraConfig
        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:
        raise GenerateError("out_dir is null and no Hydra run is active; set out_dir=DIR") from None


# ---------------------------------------------------------------- the run

class _Run:
    def __init__(self, cfg, tokenizer, api_key: str, out_dir: Path):
        import openai

        self.openai = openai
        self.cfg = cfg
        self.tok = tokenizer
        self.redact = Redactor(api_key)
        self.base_url = str(cfg.base_url)
        self.api_model = str(cfg.api_model)
        self.source = f"openai:{self.api_model}"
        self.max_retries = _positive_int(cfg, "max_retries", minimum=0)
        self.backoff = (float(cfg.get("backoff_base", 1.0)), float(cfg.get("backoff_max", 30.0)),
                        float(cfg.get("backoff_jitter", 0.5)))
        self.rng = random.Random(cfg.get("seed") or 0)
        self.client = openai.OpenAI(base_url=self.base_url, api_key=api_key, max_retries=0,
                                    timeout=float(cfg.get("timeout") or 60))
        cache_dir = cfg.get("cache_dir")
        self.cache = ResponseCache(Path(str(cache_dir)), self.redact) if cache_dir else None
        self.out_dir = out_dir
        self.pairs_path = out_dir / "pairs.jsonl"
        self.rejected_path = out_dir / "rejected.jsonl"
        self.requests = self.http_requests = self.cache_hits = self.retries = 0
        self.usage: Counter = Counter()
        self.errors: list[str] = []
        self.seen: dict[tuple[str, str], str] = {}  # (a, b) -> pair_id
        self.used_ids: set[str] = set()

    # -- files

    def _append(self, path: Path, rec: dict) -> None:
        with open(path, "a", encoding="utf-8") as f:
            f.write(self.redact(json.dumps(rec, ensure_ascii=False)) + "\n")

    def load_existing(self, cats: dict[str, Category]) -> int:
        if not self.pairs_path.is_file():
            return 0
        raw = self.pairs_path.read_bytes()
        if raw and not raw.endswith(b"\n"):
            with open(self.pairs_path, "ab") as f:
                f.write(b"\n")
        pairs, problems = read_pair_file(self.pairs_path)
        for prob in problems:
            log.warning("ignoring a line of the existing %s: %s", self.pairs_path, prob)
        for p in pairs:
            self.seen.setdefault((p.a, p.b), p.pair_id)
            self.used_ids.add(p.pair_id)
            if p.category in cats:
                cats[p.category].existing += 1
                cats[p.category].recent.append((p.a, p.b))
        return len(pairs)

    def _new_id(self, category: str, n: int) -> str:
        while f"{category}-{n:05d}" in self.used_ids:
            n += 1
        pid = f"{category}-{n:05d}"
        self.used_ids.add(pid)
        return pid

    def reject(self, cat: Category, reason: str, detail: str, key: str, a=None, b=None, raw=None) -> None:
        cat.rejected[reason] += 1
        rec = {"category": cat.name, "type": cat.type, "reason": reason, "detail": detail,
               "a": a, "b": b, "request": key[:16], "source": self.source}
        if raw is not None:
            rec["raw"] = raw
        self._append(self.rejected_path, rec)

    def keep(self, cat: Category, a: str, b: str) -> None:
        cat.kept += 1
        pid = self._new_id(cat.name, cat.total)
        self.seen[(a, b)] = pid
        cat.recent.append((a, b))
        self._append(self.pairs_path, {"pair_id": pid, "a": a, "b": b, "category": cat.name,
                                       "type": cat.type, "source": self.source})

    # -- HTTP

    def post(self, body: dict, label: str) -> dict | None:
        """One request with retries. The answer's JSON, or None when its body is not JSON."""
        openai = self.openai
        base, cap, jitter = self.backoff
        for attempt in range(self.max_retries + 1):
            self.http_requests += 1
            try:
                raw = self.client.chat.completions.with_raw_response.create(**body)
            except openai.APIStatusError as err:
                failure, status = err, err.status_code
                what = f"HTTP {status}: {self.redact(str(err.message))[:300]}"
                retryable = status in RETRY_STATUSES or status >= 500
            except openai.APIConnectionError as err:
                failure = err
                what = f"{type(err).__name__}: {self.redact(str(err))[:300]}"
                retryable = True
            else:
                usage = None
                try:
                    data = json.loads(raw.text)
                    usage = data.get("usage") if isinstance(data, dict) else None
                except ValueError:
                    return None
                for k in ("prompt_tokens", "completion_tokens", "total_tokens"):
                    if isinstance(usage, dict) and isinstance(usage.get(k), int):
                        self.usage[k] += usage[k]
                return data if isinstance(data, dict) else None
            if not retryable:
                raise RequestFailed(f"{label}: {what} (not retried)")
            if attempt == self.max_retries:
                raise RequestFailed(f"{label}: {what} (gave up after {self.max_retries} retries)")
            delay = backoff_delay(attempt + 1, base, cap, jitter, self.rng, _retry_after(failure))
            self.retries += 1
            log.warning("%s: %s; retry %d/%d in %.2f s", label, what, attempt + 1, self.max_retries, delay)
            time.sleep(delay)
        raise AssertionError("unreachable")

    # -- one request of one category

    def request(self, cat: Category, per_request: int, recent: int) -> bool:
        """Ask for pairs of ``cat``, check them, write them. False when the request failed for good."""
        index = cat.requests
        cat.requests += 1
        self.requests += 1
        k = max(1, min(per_request, cat.target - cat.total))
        body: dict[str, Any] = {"model": self.api_model, "messages": build_messages(cat, k, recent),
                                "response_format": RESPONSE_FORMAT}
        if self.cfg.get("temperature") is not None:
            body["temperature"] = float(self.cfg.temperature)
        if self.cfg.get("seed") is not None:
            body["seed"] = int(self.cfg.seed) + index
        key = request_key(self.base_url, body, index)
        label = f"{cat.name} #{index}"
        data = self.cache.get(key) if self.cache else None
        origin = "cache"
        if data is not None:
            self.cache_hits += 1
        else:
            origin = "api"
            try:
                data = self.post(body, label)
            except RequestFailed as err:
                self.errors.append(str(err))
                log.error("%s", err)
                return False
            if data is None:
                self.reject(cat, "bad_response", "the HTTP body is not a JSON object", key)
                cat.no_progress += 1
                return True
            if self.cache:
                self.cache.put(key, {"base_url": self.base_url, "body": body, "request_index": index}, data)

        before_kept, before_rej = cat.kept, sum(cat.rejected.values())
        items, reason, detail, raw = parse_answer(data)
        if items is None:
            self.reject(cat, reason, detail, key, raw=raw)
        else:
            for item in items:
                a, b = (item.get("a"), item.get("b")) if isinstance(item, dict) else (None, None)
                if not isinstance(a, str) or not isinstance(b, str):
                    missing = [f for f in ("a", "b") if not isinstance(item, dict) or
                               not isinstance(item.get(f), str)]
                    self.reject(cat, "missing_field", f"pair without text field(s) {missing}", key,
                                raw=json.dumps(item, ensure_ascii=False)[:RAW_SNIPPET])
                    continue
                a, b = a.strip(), b.strip()
                verdict = check_pair(self.tok, a, b)
                if not verdict.ok:
                    self.reject(cat, verdict.reason, verdict.detail, key, a, b)
                elif (a, b) in self.seen:
                    self.reject(cat, "duplicate", f"same pair as {self.seen[(a, b)]}", key, a, b)
                elif cat.total >= cat.target:
                    cat.surplus += 1
                else:
                    self.keep(cat, a, b)
        got = cat.kept - before_kept
        cat.no_progress = 0 if got else cat.no_progress + 1
        log.info("%s (%s): asked %d, kept %d, rejected %d; %s has %d/%d", label, origin, k, got,
                 sum(cat.rejected.values()) - before_rej, cat.name, cat.total, cat.target)
        return True


def check(cfg: DictConfig) -> tuple[str, list[tuple[str, str, str, list]]]:
    """Check the environment and the config before anything is written or loaded; return the API key
    and the categories. Raises ``GenerateError`` with one line that says what to change."""
    api_key = os.environ.get(API_KEY_ENV, "").strip()
    if not api_key:
        raise GenerateError(
            f"{API_KEY_ENV} is not set: export {API_KEY_ENV}=... (the key of the API at base_url) "
            "and run again. The key is read from the environment only, never from the config.")
    if importlib.util.find_spec("openai") is None:
        raise GenerateError("the openai package is not installed: pip install 'interp[generate]'")
    specs = _category_specs(cfg)
    _positive_int(cfg, "n_pairs")
    _positive_int(cfg, "pairs_per_request")
    _positive_int(cfg, "max_requests", allow_none=True)
    _positive_int(cfg, "patience", allow_none=True)
    _positive_int(cfg, "recent_in_prompt", allow_none=True, minimum=0)
    _positive_int(cfg, "max_retries", minimum=0)
    return api_key, specs


def generate(cfg: DictConfig, tokenizer=None) -> dict:
    """Generate pairs as ``cfg`` says, write ``pairs.jsonl``, ``rejected.jsonl``, ``report.json``.

    ``tokenizer``: the target model's tokenizer, loaded from ``cfg.model`` when not given.
    Returns the report (also written to ``report.json``).
    """
    t0 = time.monotonic()
    api_key, specs = check(cfg)
    n_pairs = _positive_int(cfg, "n_pairs")
    per_request = _positive_int(cfg, "pairs_per_request")
    max_requests = _positive_int(cfg, "max_requests", allow_none=True)
    patience = _positive_int(cfg, "patience", allow_none=True)
    recent = _positive_int(cfg, "recent_in_prompt", allow_none=True, minimum=0) or 0
    out_dir = _resolve_out_dir(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    if tokenizer is None:
        from interp.model import load_tokenizer
        tokenizer = load_tokenizer(cfg.model)

    run = _Run(cfg, tokenizer, api_key, out_dir)
    cats = {name: Category(name, ptype, desc, ex, n_pairs) for name, ptype, desc, ex in specs}
    existing = run.load_existing(cats)
    if existing:
        log.info("%s already holds %d pairs; they count towards n_pairs and are not repeated",
                 run.pairs_path, existing)
    run.rejected_path.touch()
    run.pairs_path.touch()
    target_model = cfg.model.get("name") if cfg.get("model") is not None else None

    stop_reason = "interrupted"
    stopped_by_budget = False
    try:
        for cat in cats.values():
            if cat.total >= cat.target:
                cat.stop = "target_reached"
        while True:
            pending = [c for c in cats.values() if c.stop is None]
            if not pending:
                gave_up = any(c.stop == "no_progress" for c in cats.values())
                stop_reason = "no_progress" if gave_up else "targets_reached"
                break
            failed = False
            for cat in pending:
                if max_requests is not None and run.requests >= max_requests:
                    stopped_by_budget = True
                    break
                if not run.request(cat, per_request, recent):
                    failed = True
                    break
                if cat.total >= cat.target:
                    cat.stop = "target_reached"
                elif patience is not None and cat.no_progress >= patience:
                    cat.stop = "no_progress"
                    log.warning("%s: %d requests in a row added no pair; giving this category up",
                                cat.name, cat.no_progress)
            if stopped_by_budget or failed:
                stop_reason = "budget" if stopped_by_budget else "api_error"
                for c in cats.values():
                    if c.stop is None:
                        c.stop = stop_reason
                if stopped_by_budget:
                    log.warning("stopped at the budget of max_requests=%d requests", max_requests)
                break
    finally:
        by_reason: Counter = Counter()
        for c in cats.values():
            by_reason.update(c.rejected)
        report = {
            "api_model": run.api_model,
            "base_url": run.base_url,
            "source": run.source,
            "target_model": target_model,
            "out_dir": str(out_dir),
            "pairs_file": str(run.pairs_path),
            "rejected_file": str(run.rejected_path),
            "cache_dir": str(run.cache.root) if run.cache else None,
            "n_pairs": n_pairs,
            "pairs_per_request": per_request,
            "max_requests": max_requests,
            "stop_reason": stop_reason,
            "stopped_by_budget": stopped_by_budget,
            "requests": run.requests,
            "http_requests": run.http_requests,
            "cache_hits": run.cache_hits,
            "retries": run.retries,
            "failed_requests": len(run.errors),
            "errors": run.errors,
            "existing": sum(c.existing for c in cats.values()),
            "kept": sum(c.kept for c in cats.values()),
            "rejected": sum(by_reason.values()),
            "rejected_by_reason": dict(sorted(by_reason.items())),
            "categories": {
                c.name: {"type": c.type, "target": c.target, "existing": c.existing, "kept": c.kept,
                         "total": c.total, "requests": c.requests, "surplus": c.surplus,
                         "rejected": sum(c.rejected.values()),
                         "rejected_by_reason": dict(sorted(c.rejected.items())), "stop": c.stop}
                for c in cats.values()},
            "usage": dict(run.usage),
            "elapsed_s": round(time.monotonic() - t0, 3),
        }
        (out_dir / "report.json").write_text(
            run.redact(json.dumps(report, indent=2, ensure_ascii=False)) + "\n", encoding="utf-8")
    log.info("kept %d pairs (%s), rejected %d %s; %d requests (%d HTTP, %d from the cache, %d retries); "
             "stop: %s; wrote %s", report["kept"],
             ", ".join(f"{c.name} {c.total}/{c.target}" for c in cats.values()), report["rejected"],
             report["rejected_by_reason"], run.requests, run.http_requests, run.cache_hits, run.retries,
             stop_reason, out_dir)
    return report


# ---------------------------------------------------------------- the command

NAME = "interp.generate"


def _fail(err: BaseException) -> NoReturn:
    """One line on stderr, exit code 2; the API key, should a message hold it, is scrubbed."""
    fail(NAME, Redactor(os.environ.get(API_KEY_ENV, "").strip())(str(err)))


def _help() -> str:
    conf = conf_dir()
    options = (conf / "generate.yaml").read_text(encoding="utf-8").split("\nhydra:")[0].rstrip()
    models = ", ".join(sorted(p.stem for p in (conf / "model").glob("*.yaml")))
    return (f"usage: python -m {NAME} [KEY=VALUE ...]   (console script: interp-generate)\n\n"
            f"{__doc__.strip()}\n\nTarget models (model=NAME): {models}\n\n"
            f"Options (KEY=VALUE on the command line; the defaults, from {conf / 'generate.yaml'}):\n\n"
            f"{options}\n\nHydra's own flags: --hydra-help, --cfg job (print the composed config).\n")


def _compose(overrides: list[str]) -> DictConfig:
    """The config the command line asks for, composed without starting Hydra (no run dir)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            return compose(config_name="generate", overrides=overrides)
    except Exception as err:  # Hydra's errors: an unknown key or group option, a bad value
        raise GenerateError(one_line(err)) from err
    finally:
        GlobalHydra.instance().clear()


def _remove_if_empty(run_dir: Path) -> None:
    """Remove a Hydra run dir that holds nothing but Hydra's own files (the job stopped at once)."""
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {".hydra", "generate.log"}:
        shutil.rmtree(run_dir, ignore_errors=True)


@hydra.main(config_path=str(conf_dir()), config_name="generate", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    try:
        report = generate(cfg)
    except GenerateError as err:
        _remove_if_empty(Path(HydraConfig.get().runtime.output_dir))
        _fail(err)
    if report["stop_reason"] == "api_error":
        sys.exit(1)


def main() -> None:
    """The command: ``--help``; the config and the key checked before Hydra starts (a mistake is one
    line on stderr and exit code 2, no run dir); then Hydra runs ``generate``."""
    argv = sys.argv[1:]
    if any(a in ("-h", "--help") for a in argv):
        print(_help(), end="", flush=True)
        return
    if not any(a.startswith("-") for a in argv):  # Hydra's own flags (--cfg, -m, ...): Hydra answers
        try:
            check(_compose([a for a in argv if not a.lstrip("+~").startswith("hydra")]))
        except GenerateError as err:
            _fail(err)
    _hydra_main()


if __name__ == "__main__":
    main()
