"""Digests of a run dir's numbers: one sha256 per table and per tensor, for bit-identity checks.

``python tests/golden/digest.py RUN_DIR > FILE.json`` records them; the golden test compares a
fresh run of the same command with the recorded file. Parquet tables are hashed by their content
(column names, dtypes, values in row order), not their file bytes (which carry library versions),
with a file path in ``source`` reduced to its file name (the checkout may lie anywhere);
tensors by dtype, shape and bytes; the manifest by its config, counts, accuracy and hooks.

Bits are a property of the machine as well as of the code: the same float32 run on another CPU
(another vector unit, another BLAS code path) rounds differently. So a golden file holds, beside
the first reference's digests, the digests of every platform (``platform_key``) a reference was
recorded on, and ``summary``: per table column and per tensor the count, NaN count, sum, sum of
absolute values and sum of squares (platform-independent up to rounding). On a recorded platform
the check is bit-identity; on any other, the summaries must agree to rounding (``summary_diff``).

    python tests/golden/digest.py RUN_DIR                  # digests of a run (JSON)
    python tests/golden/digest.py RUN_DIR --add GOLDEN     # add this platform's digests (and the
                                                           # summary, if the file has none) to GOLDEN
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

TABLES = ["pairs", "stability", "stability_by_category", "contrast", "divergence", "pair_profile",
          "pair_components"]
TENSORS = ["stats", "activations", "patterns"]
# The columns each table had when the reference was recorded, in their order. Later columns (the matched
# nulls' and the clustered statistics') are left out of the digest, so the reference pins that the
# numbers a run already produced stay bit-identical; the flag then named ``massive`` is ``offset_dim``
# since ``massive`` means Sun et al.'s massive activation.
LEGACY_COLUMNS = {
    "pairs": ["pair_index", "pair_id", "category", "type", "a", "b", "source", "line", "n_tokens", "n_tokens_b",
              "edit_pos", "edit_end_a", "edit_end_b", "token_a", "token_b", "token_id_a", "token_id_b", "logprob_a",
              "logprob_b", "margin", "correct"],
    "stability": ["hook", "hook_name", "layer", "component", "position", "n_pairs", "mean_diff", "std_diff",
                  "mean_abs_diff", "std_abs_diff", "act_mean", "spread", "normalized", "normalized_std", "constant",
                  "massive", "mean_control_diff", "control_normalized", "ratio", "ratio_pair_mean", "ratio_pair_std",
                  "delta_normalized", "t_stat", "p_value", "head", "head_dim", "rank", "q_value", "rank_calibrated"],
    "contrast": ["hook", "layer", "component", "position", "group_a", "group_b", "quantity", "n_a", "n_b", "mean_a",
                 "mean_b", "effect", "t_stat", "p_value", "q_value"],
    "divergence": ["hook", "layer", "category", "offset", "n_pairs", "normalized", "normalized_median"],
    "pair_profile": ["pair_id", "hook", "layer", "position", "offset", "diff_norm", "a_norm"],
    "pair_components": ["pair_id", "hook", "layer", "kind", "order", "component", "abs_diff", "normalized"],
}
LEGACY_COLUMNS["stability_by_category"] = LEGACY_COLUMNS["stability"] + ["category"]
LEGACY_STATE = ("diff/", "spread/", "profile/")  # stats.safetensors keys of the reference (not absmax/abshist)
LEGACY_CONTROLS = ("n", "seed", "pool", "test")
NEW_COUNTS = ("duplicate_pairs",)

MANIFEST_KEYS = ["config", "config_hash", "hooks", "positions", "groups", "group_types", "counts", "controls",
                 "accuracy", "excluded", "notes"]


def platform_key() -> str:
    """The machine and libraries a float32 CPU run's bits depend on: torch's version and vector
    unit, and the CPU's vendor, family, model and name."""
    import torch

    cpu = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            k, _, v = line.partition(":")
            k = k.strip()
            if k in ("vendor_id", "cpu family", "model", "model name") and k not in cpu:
                cpu[k] = v.strip()
    except OSError:
        import platform

        cpu["processor"] = platform.processor()
    return " | ".join([f"torch {torch.__version__}", torch.backends.cpu.get_cpu_capability(),
                       *(cpu[k] for k in sorted(cpu))])


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def frame_digest(df) -> str:
    import pandas as pd

    h = hashlib.sha256()
    h.update(json.dumps([[str(c), str(t)] for c, t in df.dtypes.items()]).encode())
    h.update(pd.util.hash_pandas_object(df, index=False).values.tobytes())
    return h.hexdigest()


def tensor_digest(t) -> str:
    import torch

    return _sha(str(t.dtype).encode() + str(list(t.shape)).encode()
                + t.contiguous().view(-1).view(torch.uint8).numpy().tobytes())


def _tables(run: Path):
    """(name, the reference's columns of the table or None)."""
    import pandas as pd

    for name in TABLES:
        p = run / f"{name}.parquet"
        df = pd.read_parquet(p) if p.exists() else None
        if df is not None and "offset_dim" in df:
            df = df.drop(columns="massive").rename(columns={"offset_dim": "massive"})
        if df is not None:
            df = df[[c for c in LEGACY_COLUMNS[name] if c in df]]
        if df is not None and "source" in df:  # where the checkout lies is not a number of the run
            df = df.assign(source=df["source"].map(lambda s: Path(s).name if s else s))
        yield name, df


def _tensors(run: Path):
    """(name, {key: tensor} of the reference's keys, safetensors metadata), or (name, None, None)."""
    from safetensors import safe_open

    for name in TENSORS:
        p = run / f"{name}.safetensors"
        if not p.exists():
            yield name, None, None
            continue
        with safe_open(str(p), framework="pt") as f:
            meta = {k: v for k, v in (f.metadata() or {}).items()}
            keys = [k for k in sorted(f.keys()) if name != "stats" or k.startswith(LEGACY_STATE)]
            tensors = {k: f.get_tensor(k) for k in keys}
        if name == "stats":  # counts saved compact (one per site where every component has the same):
            from interp.stats.moments import expand_counts  # the numbers are those of the full tensor

            tensors = {k: expand_counts(t, tensors[k[:-1] + "s1"].shape) if k.endswith("/n") and
                       k[:-1] + "s1" in tensors else t for k, t in tensors.items()}
        yield name, tensors, meta


def _moments(x) -> list[float]:
    """[count, non-finite count, sum, sum |x|, sum x^2] of the finite values, in float64."""
    import numpy as np

    x = np.asarray(x, dtype=np.float64).ravel()
    ok = np.isfinite(x)
    y = x[ok]
    return [float(x.size), float((~ok).sum()), float(y.sum()), float(np.abs(y).sum()), float((y * y).sum())]


def summary(run_dir: str | Path) -> dict:
    """Per table column and per tensor: ``_moments`` of numbers (booleans counted as 0/1), the
    digest of anything else (text: the same on every platform)."""
    import pandas as pd

    run = Path(run_dir)
    out: dict = {}
    for name, df in _tables(run):
        for c in ([] if df is None else df.columns):
            col = df[c]
            if pd.api.types.is_bool_dtype(col) or pd.api.types.is_numeric_dtype(col):
                out[f"{name}/{c}"] = _moments(col.astype("float64"))
            else:
                out[f"{name}/{c}"] = frame_digest(col.to_frame())
    for name, tensors, _ in _tensors(run):
        for k, t in (tensors or {}).items():
            out[f"{name}/{k}"] = _moments(t.double().numpy())
    return out


def summary_diff(got: dict, want: dict, rtol: float = 1e-3) -> list[str]:
    """Where two summaries differ beyond rounding: keys present in one only, text digests, counts
    (exact), and sums: |sum - sum'| <= rtol x sum|x| + 1e-9 (likewise sum |x| and sum x^2)."""
    bad = [f"{k}: only in {'the run' if k in got else 'the reference'}" for k in sorted(set(got) ^ set(want))]
    for k in sorted(set(got) & set(want)):
        g, w = got[k], want[k]
        if isinstance(g, str) or isinstance(w, str):
            if g != w:
                bad.append(f"{k}: values differ")
            continue
        if g[:2] != w[:2]:
            bad.append(f"{k}: count / non-finite {g[:2]} != {w[:2]}")
            continue
        scale = max(abs(g[3]), abs(w[3]))
        for i, what in ((2, "sum"), (3, "sum |x|"), (4, "sum x^2")):
            s = max(abs(g[4]), abs(w[4])) if i == 4 else scale
            if abs(g[i] - w[i]) > rtol * s + 1e-9:
                bad.append(f"{k}: {what} {g[i]!r} != {w[i]!r}")
    return bad


def digest(run_dir: str | Path) -> dict:
    run = Path(run_dir)
    out: dict = {}
    for name, df in _tables(run):
        out[name] = frame_digest(df) if df is not None else None
    for name, tensors, meta in _tensors(run):
        if tensors is None:
            out[name] = None
            continue
        out[name] = {k: tensor_digest(t) for k, t in tensors.items()}
        out[name]["__metadata__"] = _sha(json.dumps(meta, sort_keys=True).encode())
    rej = run / "rejected.jsonl"
    out["rejected"] = _sha(rej.read_bytes()) if rej.exists() else None
    man = json.loads((run / "manifest.json").read_text())
    if man.get("counts"):  # counts added since the reference: not in it
        man["counts"] = {k: v for k, v in man["counts"].items() if k not in NEW_COUNTS}
    if man.get("controls"):
        man["controls"] = {k: v for k, v in man["controls"].items() if k in LEGACY_CONTROLS}
    out["manifest"] = {k: _sha(json.dumps(man.get(k), sort_keys=True, default=str).encode()) for k in MANIFEST_KEYS}
    return out


def add_platform(run_dir: str | Path, golden: str | Path) -> None:
    """Record this platform's digests of ``run_dir`` (and the summary, where the file has none) in
    ``golden``: for a run of the reference command whose numbers agree with the reference's
    summary (checked here) on a platform the reference was not recorded on."""
    path = Path(golden)
    ref = json.loads(path.read_text())
    summ = summary(run_dir)
    if "summary" in ref:
        bad = summary_diff(summ, ref["summary"])
        if bad:
            raise SystemExit("the run's numbers differ from the reference beyond rounding:\n" + "\n".join(bad[:20]))
    else:
        ref["summary"] = summ
    ref.setdefault("platforms", {})[platform_key()] = digest(run_dir)
    path.write_text(json.dumps(ref, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[2] == "--add":
        add_platform(sys.argv[1], sys.argv[3])
    else:
        json.dump(digest(sys.argv[1]), sys.stdout, indent=1, sort_keys=True)
        print()
