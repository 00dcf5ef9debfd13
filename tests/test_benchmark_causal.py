"""benchmarks.causal runs end to end on the tiny model and prints its JSON line last (no timing
threshold: the numbers are checked for presence and sanity only)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from tests.conftest import run_command

ROOT = Path(__file__).resolve().parents[1]

KEYS = ["model", "device", "dtype", "n_pairs", "batch_size", "tokens_per_sentence", "conditions_per_pass",
        "bare_rows_per_s", "ablation_rows_per_s", "ablation_share", "patching_rows_per_s",
        "patching_bare_rows_per_s", "patching_share", "atp_cost_ratio", "bare_s", "ablation_s", "patching_s",
        "patching_bare_s", "atp_s", "analysis_s", "wall_s"]


def test_benchmark_causal_tiny():
    # one intra-op thread: the test machine's 2 cores are shared (tests/conftest.py's one_thread)
    r = run_command(["model=tiny", "n_pairs=16", "batch_size=4", "repeats=1", "device=cpu"],
                    {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}, module="benchmarks.causal", cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    out = json.loads(lines[-1])
    missing = [k for k in KEYS if k not in out]
    assert not missing, missing
    assert out["model"] == "tiny-llama" and out["device"] == "cpu"
    assert out["n_pairs"] == 16 and out["batch_size"] == 4
    assert out["patching_backend"] == "hf"  # run_patching's model: the plain tree
    assert out["conditions_per_pass"] == 256 // (2 * 4)
    for k in ("bare_rows_per_s", "ablation_rows_per_s", "patching_rows_per_s", "ablation_share",
              "patching_share", "atp_cost_ratio"):
        assert math.isfinite(out[k]) and out[k] > 0, (k, out[k])
    assert "atp_cost_ratio" in "\n".join(lines[:-1])  # the human-readable table comes before it
