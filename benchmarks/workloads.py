"""Pair sets the throughput benchmark runs (``workload=``).

- ``bank``: the built-in bank (``pairs`` of ``conf/benchmark.yaml``), 8.7 tokens per sentence.
- ``realistic``: what researchers bring. BLiMP (every paradigm in ``realistic.blimp_path``, default
  ``../shared/data/blimp``) plus a file of pairs with a long tail of lengths: each of its pairs is a
  BLiMP pair whose sentences follow ``k`` context sentences (grammatical BLiMP sentences of other
  pairs), ``k`` drawn from a geometric distribution (``realistic.context_p``), at most
  ``realistic.max_context``. The edit stays one token, so the pair is as minimal as before; the
  lengths run from BLiMP's 10 tokens to past 100. The file is written as JSON lines into the
  benchmark's output folder and read back through ``pairs=file``'s reader, as a user's file would be.

Categories: BLiMP's paradigms (67) and ``context_<k>`` for the tail, as ``pairs=blimp`` and a
user's file would give them; ``realistic.category=one`` puts BLiMP's pairs in one category and the
tail in another (what the per-category statistics cost is the difference).

Both sets are validated under the model's tokenizer (``validate_pairs``) by the caller.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from interp.pairs import Pair, load_pairs
from interp.pairs.files import read_pair_file

WORKLOADS = ("bank", "realistic")


def blimp_pairs(rcfg: DictConfig) -> list[Pair]:
    """Every pair of every BLiMP paradigm in the folder (``pairs=blimp``'s reader)."""
    pcfg = OmegaConf.create({"source": "blimp", "path": rcfg.get("blimp_path"), "paradigms": None,
                             "strict": False, "types": None, "categories": None, "limit": None, "seed": 0})
    return load_pairs(pcfg).pairs


def long_tail_records(base: list[Pair], n: int, p: float, max_context: int, seed: int,
                      category: str | None = None) -> list[dict]:
    """``n`` records: a pair of ``base`` after ``k ~ Geometric(p)`` (``k`` = failures before the
    first success: P(k=0) = p) context sentences, capped at ``max_context``; category
    ``context_<k>`` (3 and more: ``context_3+``) unless ``category`` is given."""
    rng = random.Random(seed)
    goods = [q.a for q in base]
    out = []
    for i in range(n):
        q = rng.choice(base)
        k = 0
        while rng.random() > p and k < max_context:
            k += 1
        context = " ".join(rng.choice(goods) for _ in range(k))
        pre = f"{context} " if context else ""
        out.append({"a": pre + q.a, "b": pre + q.b, "category": category or f"context_{min(k, 3)}{'+' if k >= 3 else ''}",
                    "id": f"tail-{i}", "k_context": k})
    return out


def realistic_pairs(cfg: DictConfig, out_dir: Path) -> tuple[list[Pair], dict]:
    """BLiMP's pairs (a seeded sample of ``realistic.blimp_pairs``) and ``realistic.tail_pairs``
    long-tail pairs read back from the file written to ``out_dir``; with facts for the JSON line."""
    rcfg = cfg.realistic
    blimp = blimp_pairs(rcfg)
    if not blimp:
        raise SystemExit(f"workload=realistic: no BLiMP pairs in {rcfg.get('blimp_path') or '../shared/data/blimp'}")
    rng = random.Random(int(cfg.seed))
    rng.shuffle(blimp)
    sample = blimp[:int(rcfg.blimp_pairs)]
    one = str(rcfg.get("category", "paradigm")) == "one"  # one group each: what per-category statistics cost
    if one:
        for p in sample:
            p.category = "blimp"
    records = long_tail_records(blimp, int(rcfg.tail_pairs), float(rcfg.context_p), int(rcfg.max_context),
                                int(cfg.seed), "long_tail" if one else None)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "long_tail_pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    tail, problems = read_pair_file(path)
    facts = {"blimp_pairs_loaded": len(blimp), "blimp_sample": len(sample), "tail_file": str(path),
             "tail_pairs": len(tail), "tail_unreadable": len(problems)}
    return sample + tail, facts


def workload_pairs(cfg: DictConfig, out_dir: Path) -> tuple[list[Pair], dict]:
    """The pairs of ``cfg.workload`` (before tokenizer validation) and facts about them."""
    kind = str(cfg.get("workload", "bank"))
    if kind == "bank":
        return load_pairs(cfg.pairs).pairs, {}
    if kind == "realistic":
        return realistic_pairs(cfg, out_dir)
    raise SystemExit(f"workload={kind!r} is not one of {', '.join(WORKLOADS)}")
