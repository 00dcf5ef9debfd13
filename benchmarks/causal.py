"""The causal stage of ``python -m interp.patch`` against bare forward passes and the analysis pass.

    python -m benchmarks.causal                                  # embedded model, CPU or GPU
    python -m benchmarks.causal n_pairs=64                       # the README's CPU numbers
    python -m benchmarks.causal model=tiny n_pairs=16 batch_size=4 repeats=1 device=cpu   # seconds

In one process and on the same pairs (a seeded sample of the bank's grammar pairs, cycled to
``n_pairs``; every one a one-token edit, as the causal stage needs) it times:

1. ``bare``: the model the causal stage runs (``interp.causal.atp._model``: the plain Hugging Face
   module tree, else the bridge) without hooks, ``return_type="logits"``, over exactly the rows the
   ablation stage feeds it: per batch the a and b rows stacked ``C`` times, ``C =
   rows_per_pass // (2 * batch_size)`` (the conditions ``run_ablation`` puts in one pass);
2. ``ablation``: ``run_conditions`` on the same rows with ``C`` realistic conditions: mean
   ablation (means 0, as ``group_components`` gives without means) at ``edit`` of ``k`` components
   each; the first condition ``k`` random rows of a candidate table of every component of the
   hook points (``resid_post``, ``attn_out``, ``mlp_out`` at every layer, each with a random spread),
   the others ``matched_random`` draws matched to it, as the run's random selections are. It is
   given the batch's unablated metrics as ``run_ablation`` gives them (made before the timing), so
   only the predictions after the edit are unembedded.
   ``ablation_forward`` is the same forward pass with the same hooks (``condition_hooks``) but
   without the metrics (``pair_metrics``), to split what the hooks and the metrics cost;
3. ``patching``: ``patch_group`` (``positions="modes"``, ``resid_pre``, both directions) over
   ``patching.n_pairs`` pairs, grouped as ``run_patching`` groups them (``pair_groups``: by length,
   ``group_size`` at a time), on the model ``run_patching`` uses (``patch_model``: the plain tree,
   else the bridge; ``patching_backend``). Rows are the forward rows patching ran (the
   source/base cache runs and every stacked patch pass, counted by a thin wrapper of
   ``run_with_hooks`` and of the model's call); ``patching_bare`` runs the same shapes (rows x length, same tokens, no
   attention mask, as patching passes none) through the bare model of 1. without hooks, and
   ``patching_bridge_bare`` through the bridge without hooks;
4. ``atp``: ``atp_table`` (what ``interp.patch`` runs: ``attribution`` over every batch, hook points
   ``resid_post``/``attn_out``/``mlp_out``, modes ``edit`` and ``after``, the accumulation and the
   table) against ``analysis``: ``interp.analyze`` on the same pairs with the same hook points, 3
   control sentences per pair and the same batch size, i.e. ``interp.run``'s analysis pass as one
   call (``interp.run.pipeline.execute``: validation, controls, the batch loop with the statistics
   and the final tables; no files written). ``analysis.compile`` is ``analysis_compile`` (false by
   default: on the CPU ``auto`` is false below 5,000 pairs anyway, on a GPU a compile would count).

Per batch (ablation) and per group (patching) the variants run one after the other, so a change of
machine load hits all alike; AtP and the analysis alternate (their order swaps every repeat).
Everything is warmed up once, then timed ``repeats`` times; each variant's **best (shortest)**
time over the repeats is kept (noise on a shared machine only adds time). It prints a table, then
one JSON line (last): ``bare_rows_per_s``, ``ablation_rows_per_s``, ``ablation_share`` (ablation
over bare rows/s, target >= 0.8), ``patching_rows_per_s``, ``patching_share`` (target >= 0.8),
``atp_cost_ratio`` (AtP seconds over analysis seconds, target <= 4), and the wall times.
"""

from __future__ import annotations

import json
import time

import hydra
import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from benchmarks.throughput import sample_pairs, timed
from interp.causal.ablation import Condition, _act_dtype, condition_hooks, group_components, run_conditions
from interp.causal.atp import _model, atp_table, batches_of
from interp.causal.metrics import stacked_metrics
from interp.causal.patching import n_layers, pair_groups, patch_group, patch_model
from interp.causal.selection import matched_random
from interp.hooks import HOOK_POINTS, resolve
from interp.pairs import load_pairs, validate_pairs
from interp.run import get_model

ABLATED_POINTS = ("resid_post", "attn_out", "mlp_out")


# ------------------------------------------------------------------ pairs and conditions

def prepare(cfg: DictConfig, lm) -> list:
    """One-token bank pairs validated under the model's tokenizer: a seeded sample of at most
    ``sample_pairs``, cycled to ``n_pairs`` with unique ids (``benchmarks.throughput.sample_pairs``).
    Returns ``[(Pair, TokenizedPair)]``."""
    kept, _ = validate_pairs(load_pairs(cfg.pairs).pairs, lm.tokenizer, int(cfg.max_tokens))
    kept = [(p, tp) for p, tp in kept if tp.one_token]
    if not kept:
        raise SystemExit("no valid one-token pairs")
    return sample_pairs(kept, cfg.seed, cfg.sample_pairs, int(cfg.n_pairs))


def candidates(lm, seed: int) -> pd.DataFrame:
    """Every component of ``ABLATED_POINTS`` at every layer, with a random (log-normal) spread: the
    shape of the candidate table ``run_ablation`` selects from."""
    rng = np.random.default_rng(seed)
    frames = []
    for s in resolve(list(ABLATED_POINTS), lm.info["n_layers"]):
        n = lm.info["d_model"]
        frames.append(pd.DataFrame({"hook": s.point, "hook_name": s.name, "layer": s.layer,
                                    "component": np.arange(n), "spread": rng.lognormal(0.0, 1.0, n)}))
    return pd.concat(frames, ignore_index=True)


def conditions(lm, n: int, k: int, seed: int) -> list[Condition]:
    """``n`` mean-ablation conditions at ``edit`` of ``k`` components each (means 0): a random
    selection spread over the hook points and layers, then ``matched_random`` draws matched to it."""
    cands = candidates(lm, seed)
    top = cands.sample(n=min(k, len(cands)), random_state=seed)
    chosen = [top] + [matched_random(cands, top, seed + i) for i in range(1, n)]
    return [Condition("stable" if i == 0 else "random", k, seed + i, "mean", "edit", seed + i,
                      group_components(d, None, lm.device)) for i, d in enumerate(chosen)]


# ------------------------------------------------------------------ the passes

def bare_stacked(model, batch, C: int) -> None:
    """A forward pass without hooks over the a and b rows of ``batch`` stacked ``C`` times."""
    B2 = 2 * batch.size
    with torch.inference_mode():
        model(batch.tokens[:B2].repeat(C, 1), attention_mask=batch.mask[:B2].repeat(C, 1).long(),
              return_type="logits")


def ablation_forward(model, batch, conds) -> None:
    """``run_conditions``' forward pass with its hooks, without the metrics (full logits, as ``bare``)."""
    C, B2 = len(conds), 2 * batch.size
    with torch.inference_mode(), model.hooks(fwd_hooks=condition_hooks(conds, batch, dtype=_act_dtype(model))):
        model(batch.tokens[:B2].repeat(C, 1), attention_mask=batch.mask[:B2].repeat(C, 1).long(),
              return_type="logits")


class CountingBridge:
    """The model patching runs on (the plain tree or the bridge), recording the shape of every
    forward pass's input (the rows patching runs): ``run_with_hooks`` (the cache runs) and calls
    (the patch passes, which attach their hooks with ``hooks`` and read no logits)."""

    def __init__(self, bridge):
        self._bridge = bridge
        self.shapes: list[tuple[int, int]] = []

    def __getattr__(self, name):
        return getattr(self._bridge, name)

    def run_with_hooks(self, tokens, *args, **kwargs):
        self.shapes.append(tuple(tokens.shape))
        return self._bridge.run_with_hooks(tokens, *args, **kwargs)

    def __call__(self, tokens, *args, **kwargs):
        self.shapes.append(tuple(tokens.shape))
        return self._bridge(tokens, *args, **kwargs)


def patch_groups(cfg: DictConfig, lm, kept, model) -> list[dict]:
    """The first ``patching.n_pairs`` distinct pairs, grouped as ``run_patching`` groups them
    (``interp.causal.patching.pair_groups``)."""
    pcfg = cfg.patching
    seen, chosen = set(), []
    for _, tp in kept:
        key = (tuple(tp.ids_a), tuple(tp.ids_b))
        if key not in seen:
            seen.add(key)
            chosen.append(tp)
        if len(chosen) == int(pcfg.n_pairs):
            break
    return [{"a": ta, "b": tb, "edit": edit}
            for _, ta, tb, edit in pair_groups(chosen, range(len(chosen)), lm.bos_token_id, lm.device,
                                               n_layers(model), 2, "modes", int(pcfg.rows_per_pass))]


def run_patch(cfg, bridge, g) -> pd.DataFrame:
    return patch_group(bridge, g["a"], g["b"], g["edit"], kinds=[str(cfg.patching.resid)],
                       directions=("denoising", "noising"), metrics=("margin",), positions="modes",
                       rows_per_pass=int(cfg.patching.rows_per_pass))


def bare_shapes(model, g, shapes) -> None:
    """Forward passes without hooks of ``shapes`` (rows x length) of the group's a and b tokens."""
    src = torch.cat([g["a"], g["b"]])
    with torch.inference_mode():
        for rows, T in shapes:
            tokens = src.repeat(-(-rows // len(src)), 1)[:rows]
            assert tokens.shape[1] == T
            model(tokens, return_type="logits")  # the bridge and the plain tree take the same call


def analysis_records(kept) -> list[dict]:
    return [{"a": p.a, "b": p.b, "category": p.category, "type": p.type, "pair_id": p.pair_id} for p, _ in kept]


def run_analysis(cfg, lm, records, points):
    import interp

    return interp.analyze(lm, records, hooks=list(points), controls={"n": int(cfg.controls)},
                          batch_size=int(cfg.batch_size), progress=False,
                          compile=cfg.analysis_compile)


# ------------------------------------------------------------------ measure

def measure(cfg: DictConfig) -> dict:
    t_start = time.perf_counter()
    lm = get_model(cfg)
    dev = lm.device
    model = _model(lm)
    kept = prepare(cfg, lm)
    batches, _ = batches_of(lm, kept, int(cfg.batch_size))
    rows_per_pass = int(cfg.rows_per_pass)
    per = [max(1, rows_per_pass // (2 * b.size)) for b in batches]
    conds = conditions(lm, max(per), int(cfg.k), int(cfg.seed))
    # the batches' unablated metrics, which run_ablation passes to run_conditions (made before the timing,
    # as run_ablation makes them in its own pass)
    base = [stacked_metrics(model, b, 1) for b in batches]
    base = [{m: v[0] for m, v in d.items()} for d in base]
    pmodel, pbackend = patch_model(lm, [str(cfg.patching.resid)])  # what run_patching runs on
    groups = patch_groups(cfg, lm, kept, pmodel)
    atp_points = [p for p in cfg.hooks.points if HOOK_POINTS[p].settable]
    records = analysis_records(kept)
    counting = CountingBridge(pmodel)
    t_prepared = time.perf_counter()

    # warm-up: every kind of pass once (first-call costs: allocator, kernels, the controls' embedding)
    warm: dict[str, float] = {}
    t = time.perf_counter()
    b0, c0 = batches[0], per[0]
    warm["ablation"] = timed(lambda: (bare_stacked(model, b0, c0),
                                      run_conditions(model, b0, conds[:c0], base=base[0]),
                                      ablation_forward(model, b0, conds[:c0])), dev)
    shapes = []
    t1 = time.perf_counter()
    for g in groups:  # records the forward shapes of each group's patching
        counting.shapes = []
        run_patch(cfg, counting, g)
        shapes.append(list(counting.shapes))
        bare_shapes(model, g, shapes[-1][:1])
        bare_shapes(lm.bridge, g, shapes[-1][:1])
    warm["patching"] = time.perf_counter() - t1
    warm["atp"] = timed(lambda: atp_table(lm, kept[:int(cfg.batch_size)], atp_points, int(cfg.batch_size),
                                          list(cfg.atp_modes)), dev)
    warm["analysis"] = timed(lambda: run_analysis(cfg, lm, records[:2 * int(cfg.batch_size)], cfg.hooks.points), dev)
    warmup_s = time.perf_counter() - t

    names = ["bare", "ablation", "ablation_forward", "patching_bare", "patching_bridge_bare", "patching",
             "atp", "analysis"]
    runs = []
    for r in range(int(cfg.repeats)):
        tot = dict.fromkeys(names, 0.0)
        for b, C, b0 in zip(batches, per, base):
            tot["bare"] += timed(lambda: bare_stacked(model, b, C), dev)
            tot["ablation"] += timed(lambda: run_conditions(model, b, conds[:C], base=b0), dev)
            tot["ablation_forward"] += timed(lambda: ablation_forward(model, b, conds[:C]), dev)
        for g, sh in zip(groups, shapes):
            tot["patching_bare"] += timed(lambda: bare_shapes(model, g, sh), dev)
            tot["patching_bridge_bare"] += timed(lambda: bare_shapes(lm.bridge, g, sh), dev)
            tot["patching"] += timed(lambda: run_patch(cfg, pmodel, g), dev)
        order = ["atp", "analysis"] if r % 2 == 0 else ["analysis", "atp"]
        for name in order:
            if name == "atp":
                tot["atp"] = timed(lambda: atp_table(lm, kept, atp_points, int(cfg.batch_size),
                                                     list(cfg.atp_modes)), dev)
            else:
                tot["analysis"] = timed(lambda: run_analysis(cfg, lm, records, cfg.hooks.points), dev)
        runs.append(tot)
    best = {k: min(r[k] for r in runs) for k in names}

    abl_rows = sum(C * 2 * b.size for b, C in zip(batches, per))
    patch_rows = sum(rows for sh in shapes for rows, _ in sh)
    patch_slots = sum(rows * T for sh in shapes for rows, T in sh)
    n = len(kept)

    def rate(rows, key):
        return round(rows / best[key], 2)

    out = {
        "model": lm.info["name"], "device": str(dev), "dtype": lm.info["dtype"],
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "threads": torch.get_num_threads(), "n_pairs": n, "batch_size": int(cfg.batch_size),
        "n_batches": len(batches), "rows_per_pass": rows_per_pass, "conditions_per_pass": max(per),
        "k": int(cfg.k), "tokens_per_sentence": round(sum(tp.n_tokens + 1 for _, tp in kept) / n, 2),
        "padded_tokens_per_sentence": round(sum(b.seq_len * b.size for b in batches) / n, 2),
        "repeats": int(cfg.repeats), "timing": "best of repeats",
        "ablation_rows": abl_rows,
        "bare_rows_per_s": rate(abl_rows, "bare"),
        "ablation_rows_per_s": rate(abl_rows, "ablation"),
        "ablation_forward_rows_per_s": rate(abl_rows, "ablation_forward"),
        "ablation_share": round(best["bare"] / best["ablation"], 4),
        "ablation_forward_share": round(best["bare"] / best["ablation_forward"], 4),
        "patching_backend": pbackend,
        "patching_pairs": sum(len(g["a"]) for g in groups), "patching_groups": len(groups),
        "patching_passes": sum(len(sh) for sh in shapes), "patching_rows": patch_rows,
        "patching_tokens_per_row": round(patch_slots / patch_rows, 2),
        "patching_rows_per_s": rate(patch_rows, "patching"),
        "patching_bare_rows_per_s": rate(patch_rows, "patching_bare"),
        "patching_bridge_bare_rows_per_s": rate(patch_rows, "patching_bridge_bare"),
        "patching_share": round(best["patching_bare"] / best["patching"], 4),
        "patching_share_vs_bridge": round(best["patching_bridge_bare"] / best["patching"], 4),
        "atp_hook_points": atp_points, "atp_modes": list(cfg.atp_modes), "analysis_controls": int(cfg.controls),
        "atp_cost_ratio": round(best["atp"] / best["analysis"], 4),
        **{f"{k}_s": round(v, 3) for k, v in best.items()},
        "warmup_s": round(warmup_s, 2), "warmup_parts_s": {k: round(v, 2) for k, v in warm.items()},
        "load_and_prepare_s": round(t_prepared - t_start, 2),
    }
    out["wall_s"] = round(time.perf_counter() - t_start, 2)
    return out


def table(out: dict) -> str:
    rows = [
        ("bare forward (ablation rows)", out["bare_s"], out["bare_rows_per_s"], 1.0, ""),
        ("ablation: run_conditions", out["ablation_s"], out["ablation_rows_per_s"], out["ablation_share"], ">= 0.8"),
        ("  its forward pass + hooks only", out["ablation_forward_s"], out["ablation_forward_rows_per_s"],
         out["ablation_forward_share"], ""),
        ("bare forward (patching shapes)", out["patching_bare_s"], out["patching_bare_rows_per_s"], 1.0, ""),
        ("  bridge, no hooks (same shapes)", out["patching_bridge_bare_s"], out["patching_bridge_bare_rows_per_s"],
         round(out["patching_bare_s"] / out["patching_bridge_bare_s"], 4), ""),
        (f"patching: patch_group ({out['patching_backend']})", out["patching_s"], out["patching_rows_per_s"], out["patching_share"], ">= 0.8"),
    ]
    lines = [f"{out['model']} on {out['device']} ({out['dtype']}, {out['threads']} threads): {out['n_pairs']} pairs, "
             f"batch {out['batch_size']}, {out['conditions_per_pass']} conditions x k={out['k']} per pass, "
             f"{out['tokens_per_sentence']} tokens/sentence; best of {out['repeats']}",
             f"{'':34s} {'seconds':>9s} {'rows/s':>9s} {'vs bare':>8s}  target"]
    for name, s, r, share, target in rows:
        lines.append(f"{name:34s} {s:9.3f} {r:9.1f} {share:8.3f}  {target}")
    lines.append(f"{'AtP (atp_table)':34s} {out['atp_s']:9.3f}")
    lines.append(f"{'analysis pass (interp.analyze)':34s} {out['analysis_s']:9.3f}")
    lines.append(f"atp_cost_ratio = {out['atp_cost_ratio']:.3f}  (target <= 4)")
    return "\n".join(lines)


@hydra.main(config_path="../conf", config_name="benchmark_causal", version_base="1.3")
def main(cfg: DictConfig) -> None:
    out = measure(cfg)
    print(table(out), flush=True)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
