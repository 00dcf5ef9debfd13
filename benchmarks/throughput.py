"""Throughput of the full analysis against a bare forward pass of the same model, same batches.

    python -m benchmarks.throughput                                   # embedded model, CPU or GPU
    python -m benchmarks.throughput model=llama3_8b_shape n_pairs=2048 batch_size=128 device=cuda
    python -m benchmarks.throughput model=tiny memory_check=true      # peak memory, 1k vs 10k pairs

In one process and on the same padded batches (sentence a, sentence b and the control sentences
of every pair, exactly the rows ``interp.run`` feeds the model), it times:

1. ``bare``: the Hugging Face model as loaded (its own module tree, untouched by the bridge, which
   replaces the modules of the model it wraps; ``interp.backends.hf`` keeps a second tree sharing the
   weights), no hooks, logits discarded, with Hugging Face's default attention kernel (``sdpa``);
   ``bare_eager`` the same with eager attention;
2. ``bridge``: the TransformerBridge forward pass, no hooks; ``hf_in_bridge``: the Hugging Face
   model object after the bridge replaced its modules (what earlier versions of this benchmark
   called bare);
3. ``analysis``: what ``interp.run`` does per batch: the forward pass the run would choose
   (``analysis.backend``: plain hooks on the Hugging Face modules, or the bridge) with temporary
   hooks at every layer of the configured hook points, the streaming statistics, and the per-pair
   log-probabilities (``interp.run.pipeline.BatchPipeline``), plus the final tables.

Timings are interleaved batch by batch, so a change in machine load affects all alike; then bare
and analysis are also timed as whole loops (``ratio_loop``), as a run goes, where the statistics of
one batch can overlap the next forward pass on a GPU. With ``analysis.compile=true`` the analysis
runs a ``torch.compile``d tree (warmed up on batches of every distinct length first, compile time
reported apart) and ``bare_compiled`` times that tree without hooks, ``bare_decoder`` its decoder
alone (no unembedding: the analysis's forward pass before its hooks, statistics and
log-probabilities; ``bare_decoder_fraction_of_sustained_roofline`` is the ceiling the analysis loop's
fraction sits under). It prints one JSON line (last
line: peak memory): model, device, dtype, batch size, tokens per sentence, pairs, sentences per
pair, the workload (with ``workload=realistic`` its facts from ``benchmarks.workloads``:
``blimp_pairs_loaded``, ``blimp_sample``, ``tail_file``, ``tail_pairs``, ``tail_unreadable``),
``bare_pairs_per_s``, ``analysis_pairs_per_s``, their ``ratio`` (and against eager
attention), the minor page faults per batch of both loops, and peak RSS (and peak GPU memory on a GPU). On a GPU it also measures the bf16 matrix
product rate and reports the time a perfect run would need (``matmul_flop``: 2 x parameters FLOP per
computed token slot, padding included; for the analysis, which unembeds only the predictions its
log-probabilities sum, its own smaller count) as a fraction of each variant's time; the rate is
that of a burst of ten 8192^3 products (``matmul_tflops``), and ``*_fraction_of_sustained_roofline``
divides by the rate held for as long as the analysis loop ran, measured straight after it
(``matmul_tflops_sustained``: under a long load the chip holds its power limit at a lower clock). With ``memory_check=true`` it runs the
analysis at ``memory_pairs`` (1,000 and 10,000), both with the compilation setting ``analysis.compile``
gives the larger run, and prints both peaks and their ratio.
"""

from __future__ import annotations

import contextlib
import json
import resource
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from interp.stats import DiffStats
from interp.engine import batch_token_budget, make_batches
from interp.hooks import resolve
from interp.pairs import validate_pairs
from interp.backends import analysis_model
from interp.run import get_model
from interp import controls as C
from interp.run.pipeline import BatchPipeline
from interp.run.pipeline import new_stats as runner_stats

from .workloads import workload_pairs


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _out_dir():
    """This benchmark run's output folder: Hydra's run dir (kept); outside Hydra a temporary folder,
    removed when the ``with`` block ends."""
    from pathlib import Path

    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        yield Path(HydraConfig.get().runtime.output_dir)
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="interp-benchmark-") as tmp:
        yield Path(tmp)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sample_pairs(kept: list, seed: int, sample: int, n_pairs: int) -> list:
    """A seeded sample of at most ``sample`` of the validated ``(Pair, TokenizedPair)`` list ``kept``
    (shuffled in place), cycled to ``n_pairs``, each copy with a unique ``pair_id`` (``id#i``)."""
    import random

    random.Random(int(seed)).shuffle(kept)
    kept = kept[:int(sample)]
    kept = [kept[i % len(kept)] for i in range(n_pairs)]
    for i, (p, _) in enumerate(kept):  # unique ids so controls differ per copy
        p = type(p)(**{**vars(p), "pair_id": f"{p.pair_id}#{i}"})
        kept[i] = (p, kept[i][1])
    return kept


def prepare(cfg: DictConfig, lm, n_pairs: int, facts: dict | None = None):
    """Bank pairs validated under the model's tokenizer, in batches: a seeded sample of at most
    ``sample_pairs`` pairs, cycled to ``n_pairs``, so that runs of different sizes see the same
    sentence lengths (peak memory depends on the longest batch, not on the number of pairs).
    ``facts``: a dict to receive ``workload_pairs``' facts about the pair set (none for the bank;
    for ``realistic`` the BLiMP pairs loaded and sampled, the tail file and its pairs read and
    unreadable), for the JSON line; ``tail_file`` is None when the file was written to a temporary
    folder (outside Hydra), removed once the pairs are read."""
    with _out_dir() as out:  # the pairs are read whole: nothing refers to the folder afterwards
        pairs, wfacts = workload_pairs(cfg, out)
    if facts is not None:
        if wfacts.get("tail_file") is not None and not Path(wfacts["tail_file"]).exists():
            wfacts = {**wfacts, "tail_file": None}
        facts.update(wfacts)
    kept, _ = validate_pairs(pairs, lm.tokenizer, int(cfg.max_tokens))
    if not kept:
        raise SystemExit("no valid pairs")
    kept = sample_pairs(kept, cfg.seed, cfg.get("sample_pairs", 1000), n_pairs)
    # the groups a run keeps its statistics per (per category, or blocks where per-category tables are off)
    from interp.run.assemble import contrast_sides
    from interp.run.pipeline import plan_groups

    categories = sorted({p.category for p, _ in kept})
    types = {p.category: p.type for p, _ in kept}
    sites = resolve(list(cfg.hooks.points), lm.info["n_layers"])
    names, members, group_of, _ = plan_groups(cfg.analysis, sites, lm.info, categories, types,
                                              contrast_sides(cfg.analysis.contrast, types, categories))
    groups = (names, members)
    cs = C.build_controls(cfg, lm.tokenizer, C.input_embedding(lm), kept, list(range(len(kept))))
    n_controls = cs.k
    batches = make_batches([tp for _, tp in kept], [group_of[p.category] for p, _ in kept],
                           lm.bos_token_id, lm.pad_token_id, int(cfg.batch_size), lm.device, cs.ids,
                           batch_token_budget(cfg.get("batch_tokens"), int(cfg.batch_size), 2 + cs.k))
    return kept, groups, batches, n_controls


def new_stats(cfg, lm, groups, n_controls, n_pairs: int = 1000) -> DiffStats:
    """The run's statistics object for this benchmark's hooks (``n_controls`` follows the config),
    keeping per-pair values as a run of ``n_pairs`` pairs would (``analysis.pair_values``);
    ``groups``: (names, members) as ``prepare`` plans them, as the run would."""
    from interp.run.pipeline import plan_pair_values

    sites = resolve(list(cfg.hooks.points), lm.info["n_layers"])
    keep, _ = plan_pair_values(cfg, sites, lm.info, n_pairs)
    names, members = groups
    return runner_stats(cfg, sites, names, lm.device, keep_values=keep, n_pairs=n_pairs, members=members)  # per-pair values kept as a run keeps them


def bare_model(lm, attn: str = "sdpa"):
    """The Hugging Face model as loaded, with attention kernel ``attn``, no hooks: a module tree
    of its own that shares the loaded weights (``interp.backends.hf.twin``)."""
    from interp.backends.hf import PlainModel, twin

    if lm.plain is None:
        raise SystemExit(f"no plain Hugging Face module tree for this model: {lm.plain_reason}")
    return PlainModel(twin(lm.plain.original_model), attn)


def bare_pass(model, b) -> None:
    """One forward pass without hooks (``model``: a ``PlainModel``, the bridge, or an HF model)."""
    with torch.inference_mode():
        if hasattr(model, "hooks"):
            model(b.tokens, attention_mask=b.mask.long())
        else:
            model(input_ids=b.tokens, attention_mask=b.mask.long(), use_cache=False)


def timed(fn, device) -> float:
    _sync(device)
    t = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t


def minor_faults() -> int:
    """Minor page faults of this process so far (fresh memory touched: pages the allocator gave
    back to the system and faults in again)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def pipeline(cfg, lm, kept, groups, n_controls, empty_cache: bool = True):
    """The statistics and the batch loop of a run, on the model the run would choose. The previous
    call's statistics are freed first (at the 8B shape with many categories they hold gigabytes);
    with ``empty_cache`` the CUDA allocator's cached blocks go back to the device too, so the next
    loop allocates afresh (``False``: they stay cached, as for a loop that ran before)."""
    import gc

    gc.collect()
    if lm.device.type == "cuda" and empty_cache:
        torch.cuda.empty_cache()
    stats = new_stats(cfg, lm, groups, n_controls, len(kept))
    model, facts = analysis_model(lm, cfg.analysis, [s.name for s in stats.sites], n_pairs=len(kept))
    pipe = BatchPipeline(lm, stats, kept, [], overlap=bool(cfg.analysis.get("overlap", True)), model=model)
    return stats, pipe, facts


def time_interleaved(cfg, lm, kept, groups, batches, n_controls, bare: dict) -> dict:
    """Per batch: every model of ``bare`` (no hooks), then the full analysis, one after the other,
    so that a change in machine load hits all alike. Returns total seconds of each and finalization."""
    stats, pipe, facts = pipeline(cfg, lm, kept, groups, n_controls)
    counts = lm.plain.counts if facts["compiled"] else None
    tot = dict.fromkeys([*bare, "analysis"], 0.0)
    tot["graph_calls"] = []  # per batch: calls of compiled graphs during its analysis (compiled runs)
    for b in batches:
        for name, model in bare.items():
            tot[name] += timed(lambda: bare_pass(model, b), lm.device)
        before = counts.graph_calls if counts else 0
        tot["analysis"] += timed(lambda: (pipe.submit(b), pipe.flush()), lm.device)
        tot["graph_calls"].append(counts.graph_calls - before if counts else 0)
    tot["finalize"] = timed(stats.table, lm.device)
    return tot


def compiled_share(graph_calls: list[int], per_pass: int) -> float:
    """The share of batches whose analysis ran compiled: every compiled module called a compiled
    graph (``per_pass`` calls at least; a module ``torch._dynamo`` gave up on runs its own forward)."""
    return sum(c >= per_pass for c in graph_calls) / max(1, len(graph_calls))


def time_analysis(cfg, lm, kept, groups, batches, n_controls) -> tuple[float, float]:
    stats, pipe, _ = pipeline(cfg, lm, kept, groups, n_controls)
    loop = timed(lambda: ([pipe.submit(b) for b in batches], pipe.flush()), lm.device)
    return loop, timed(stats.table, lm.device)


def warm_batches(batches, n: int, compiled: bool):
    """The first ``n`` batches; with a compiled model one batch of every distinct length, so that
    no compilation falls into the timed passes."""
    if not compiled:
        return batches[:n]
    seen, out = set(), []
    for b in batches:
        if b.seq_len not in seen:
            seen.add(b.seq_len)
            out.append(b)
    return out


def matmul_flop(lm, batches, scored_only: bool = False, last_position: bool = False,
                unembed: bool = True) -> float:
    """Matrix-product FLOP of a forward pass over ``batches``: 2 x (weights used in products) per
    computed token slot, padding included (an embedding lookup is no product). With ``scored_only``
    the unembedding counts only what the analysis computes: the predictions its log-probabilities
    sum (``engine.Scored``), plus with ``last_position`` the last position of every row (the
    bridge's own logits, ``logits_to_keep=1``; the plain tree runs its decoder alone). With
    ``unembed=False`` the decoder's products alone."""
    emb_in, emb_out = lm.hf_model.get_input_embeddings().weight, lm.hf_model.get_output_embeddings().weight
    body = lm.info["n_params"] - emb_in.numel() - (0 if emb_in is emb_out else emb_out.numel())
    flop = 0.0
    for b in batches:
        rows = b.tokens.shape[0]
        unembedded = rows * last_position + b.scored_slots().n if scored_only else rows * b.seq_len
        flop += 2 * (b.seq_len * rows * body + unembed * unembedded * emb_out.numel())
    return flop


class DecoderOnly:
    """The compiled tree's decoder alone (its final norm included, no unembedding, no hooks): the
    part of the analysis's forward pass before its log-probabilities, timed as ``bare_decoder``, the
    ceiling that the analysis loop's statistics and log-probabilities are added to."""

    def __init__(self, plain):
        self.plain = plain
        self.hooks = plain.hooks  # ``bare_pass`` calls a model with hooks as the plain tree

    def __call__(self, tokens, attention_mask=None):
        return self.plain(tokens, attention_mask=attention_mask, return_type=None)


def workload_facts(kept, batches) -> dict:
    """Lengths of the pairs' sentences (BOS included) and of the padded batches."""
    import numpy as np

    lengths = np.array([tp.n_tokens + 1 for _, tp in kept])
    return {"tokens_p50_p90_p99_max": [int(np.percentile(lengths, q)) for q in (50, 90, 99)] + [int(lengths.max())],
            "distinct_padded_lengths": len({b.seq_len for b in batches})}


def per_call(fn, device, reps: int, warmup: int = 3) -> float:
    """Seconds per call of ``fn`` over ``reps`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    return timed(lambda: [fn() for _ in range(reps)], device) / reps


def matmul_tflops(device: torch.device, n: int = 8192, reps: int = 10, dtype=torch.bfloat16) -> float:
    """Measured n^3 matrix-product rate (TFLOP/s) of this device in ``dtype``, the roofline's numerator."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n ** 3 / per_call(lambda: a @ b, device, reps) / 1e12


def sustained_matmul_tflops(device: torch.device, seconds: float, n: int = 8192, dtype=torch.bfloat16) -> float:
    """The n^3 product rate held for ``seconds`` of back-to-back products: a GPU at its power limit
    lowers its clock under a long load, which a burst of ten products (``matmul_tflops``) hardly sees."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    count, t = 0, time.perf_counter()
    while True:
        for _ in range(10):
            a @ b
        count += 10
        _sync(device)
        elapsed = time.perf_counter() - t
        if elapsed >= seconds:
            return 2 * n ** 3 * count / elapsed / 1e12


def measure(cfg: DictConfig) -> dict:
    lm = get_model(cfg)
    wfacts: dict = {}  # workload_pairs' facts (realistic: BLiMP pairs loaded and sampled, the tail file)
    kept, groups, batches, n_controls = prepare(cfg, lm, int(cfg.n_pairs), wfacts)
    bare = {"bare": bare_model(lm, "sdpa"), "bare_eager": bare_model(lm, "eager"), "bridge": lm.bridge,
            "hf_in_bridge": lm.hf_model}
    facts = pipeline(cfg, lm, kept, groups, n_controls)[2]  # compiles the tree if asked
    # the compiled modules (each layer's two norms, attention and MLP, the final norm): a pass that ran
    # compiled calls a graph of each (counted now: a failed compilation empties the tree's list)
    per_pass = lm.plain.n_compiled if facts["compiled"] else 0
    if facts["compiled"]:
        bare["bare_compiled"] = lm.plain
        bare["bare_decoder"] = DecoderOnly(lm.plain)
    t = time.perf_counter()
    warm = warm_batches(batches, int(cfg.warmup_batches), facts["compiled"])
    graphs_first = None
    if warm:
        if facts["compiled"]:  # the first length compiles every module once; later lengths may recompile
            time_interleaved(cfg, lm, kept, groups, warm[:1], n_controls, bare)
            graphs_first = lm.plain.counts.graphs
        time_interleaved(cfg, lm, kept, groups, warm, n_controls, bare)
    warmup_s = time.perf_counter() - t
    if lm.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(lm.device)
    runs = [time_interleaved(cfg, lm, kept, groups, batches, n_controls, bare) for _ in range(int(cfg.repeats))]
    best = min(runs, key=lambda r: r["analysis"])
    # the same work as whole loops (no synchronisation between batches, as in a run): on a GPU the
    # statistics of one batch overlap the next forward pass (analysis.overlap)
    f0 = minor_faults()
    bare_loop = min(timed(lambda: [bare_pass(bare["bare"], b) for b in batches], lm.device)
                    for _ in range(int(cfg.repeats)))
    f1 = minor_faults()
    an_loop = min(time_analysis(cfg, lm, kept, groups, batches, n_controls)[0] for _ in range(int(cfg.repeats)))
    f2 = minor_faults()
    # the product rate held as long as the analysis loop runs, straight after it (the GPU as warm)
    held = sustained_matmul_tflops(lm.device, an_loop) * 1e12 if lm.device.type == "cuda" else None
    per_batch = int(cfg.repeats) * len(batches)
    n = len(kept)
    rows_per_pair = 2 + n_controls
    tokens = sum(tp.n_tokens + 1 for _, tp in kept) / n
    an = best["analysis"]
    out = {
        "model": lm.info["name"], "device": str(lm.device), "dtype": lm.info["dtype"],
        "gpu": torch.cuda.get_device_name(lm.device) if lm.device.type == "cuda" else None,
        "threads": torch.get_num_threads(), "batch_size_pairs": int(cfg.batch_size),
        "sentences_per_pair": rows_per_pair, "tokens_per_sentence": round(tokens, 2),
        "padded_tokens_per_sentence": round(sum(b.seq_len * b.size for b in batches) / n, 2),
        "workload": str(cfg.get("workload", "bank")), **wfacts, **workload_facts(kept, batches),
        "categories": len({p.category for p, _ in kept}), "statistics_groups": len(groups[0]),
        "pairs": n, "hooks": list(cfg.hooks.points), "n_hook_sites": len(resolve(list(cfg.hooks.points), lm.info["n_layers"])),
        "analysis_forward": facts, "warmup_s": round(warmup_s, 2),
        **{f"{k}_s": round(best[k], 3) for k in bare}, "analysis_s": round(an, 3),
        "finalize_s": round(best["finalize"], 3),
        **{f"{k}_vs_bare": round(best["bare"] / best[k], 4) for k in bare if k != "bare"},
        "bare_pairs_per_s": round(n / best["bare"], 2), "analysis_pairs_per_s": round(n / an, 2),
        "bare_sentences_per_s": round(n * rows_per_pair / best["bare"], 1),
        "ratio": round(best["bare"] / an, 4), "ratio_vs_eager": round(best["bare_eager"] / an, 4),
        "bare_loop_s": round(bare_loop, 3), "analysis_loop_s": round(an_loop, 3),
        "ratio_loop": round(bare_loop / an_loop, 4),
        "bare_loop_page_faults_per_batch": round((f1 - f0) / per_batch),
        "analysis_loop_page_faults_per_batch": round((f2 - f1) / per_batch),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    if facts["compiled"]:
        from torch._dynamo import config as dynamo_config

        out.update({"graphs_compiled": lm.plain.counts.graphs,
                    "recompiles": lm.plain.counts.graphs - (graphs_first or 0),
                    "recompile_limit": dynamo_config.recompile_limit,
                    "compiled_batch_share": round(compiled_share(best["graph_calls"], per_pass), 4)})
    if lm.device.type == "cuda":
        out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(lm.device) / 2 ** 20, 1)
        # roofline: every sentence token costs 2 x (parameters) FLOP in matrix products
        time.sleep(2.0)  # idle first: the burst's rate is the chip's at its boost clock, not as the load left it
        rate = matmul_tflops(lm.device) * 1e12
        roof_s, roof_an = (matmul_flop(lm, batches) / rate,
                             matmul_flop(lm, batches, True, facts["backend"] == "bridge") / rate)
        out.update({"matmul_tflops": round(rate / 1e12, 1), "roofline_s": round(roof_s, 3),
                    "analysis_roofline_s": round(roof_an, 3),
                    # (the decoder alone computes no unembedding: its fraction is the sustained one below)
                    **{f"{k}_fraction_of_roofline": round(roof_s / best[k], 4) for k in bare if k != "bare_decoder"},
                    "analysis_fraction_of_roofline": round(roof_an / an, 4),
                    "analysis_loop_fraction_of_roofline": round(roof_an / an_loop, 4),
                    # against the rate held for as long (the chip at its power limit, see benchmarks/README.md)
                    "matmul_tflops_sustained": round(held / 1e12, 1),
                    **({"bare_compiled_fraction_of_sustained_roofline": round(roof_s * rate / held / best["bare_compiled"], 4),
                        "bare_decoder_fraction_of_sustained_roofline":
                            round(matmul_flop(lm, batches, unembed=False) / held / best["bare_decoder"], 4)}
                       if "bare_compiled" in best else {}),
                    "analysis_loop_fraction_of_sustained_roofline": round(roof_an * rate / held / an_loop, 4)})
    return out


def memory_check(cfg: DictConfig) -> dict:
    """Peak memory of the analysis loop at two pair counts, each in a fresh subprocess."""
    import subprocess
    import sys

    from interp.model import resolve_device
    from interp.backends import compile_wanted

    # one forward configuration for every size: analysis.compile=auto would compile the larger run
    # only (on the CPU from compile_cpu_min_pairs), and the compiler's memory is no growth with pairs
    compiled = compile_wanted(cfg.analysis, resolve_device(str(cfg.device)), max(int(n) for n in cfg.memory_pairs))
    peaks = {}
    for n in cfg.memory_pairs:
        code = ("import json,sys; from benchmarks.throughput import _one_memory; "
                f"print(json.dumps(_one_memory(sys.argv[1:], {int(n)})))")
        overrides = [o for o in sys.argv[1:] if not o.startswith(("memory_check", "n_pairs", "analysis.compile="))]
        overrides.append(f"analysis.compile={str(compiled).lower()}")
        r = subprocess.run([sys.executable, "-c", code, *overrides], capture_output=True, text=True, check=True)
        peaks[int(n)] = json.loads(r.stdout.strip().splitlines()[-1])
    a, b = (peaks[int(n)] for n in cfg.memory_pairs)
    out = {"memory_check": True, "model": a["model"], "device": a["device"], "compiled": compiled, "pairs": list(peaks),
           "peak_rss_mb": [p["peak_rss_mb"] for p in peaks.values()],
           "rss_ratio": round(b["peak_rss_mb"] / a["peak_rss_mb"], 4)}
    if "peak_gpu_mb" in a:
        out["peak_gpu_mb"] = [p["peak_gpu_mb"] for p in peaks.values()]
        out["gpu_ratio"] = round(b["peak_gpu_mb"] / a["peak_gpu_mb"], 4)
    return out


def _one_memory(overrides: list[str], n_pairs: int) -> dict:
    """One analysis pass over ``n_pairs`` pairs (batches built lazily so they do not count)."""
    from hydra import compose, initialize_config_dir
    from pathlib import Path

    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"):
        cfg = compose(config_name="benchmark", overrides=list(overrides))
    lm = get_model(cfg)
    kept, groups, batches, n_controls = prepare(cfg, lm, n_pairs)
    if lm.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(lm.device)
    base = peak_rss_mb()
    loop, _ = time_analysis(cfg, lm, kept, groups, batches, n_controls)
    out = {"model": lm.info["name"], "device": str(lm.device), "pairs": n_pairs, "analysis_s": round(loop, 2),
           "peak_rss_mb": round(peak_rss_mb(), 1), "rss_before_loop_mb": round(base, 1)}
    if lm.device.type == "cuda":
        out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(lm.device) / 2 ** 20, 1)
    return out


@hydra.main(config_path="../conf", config_name="benchmark", version_base="1.3")
def main(cfg: DictConfig) -> None:
    print(json.dumps(memory_check(cfg) if cfg.memory_check else measure(cfg)), flush=True)


if __name__ == "__main__":
    main()
