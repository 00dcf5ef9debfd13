"""Where the analysis spends its time, phase by phase (device synchronised between phases).

    python -m benchmarks.phases model=llama3_8b_shape device=cuda n_pairs=1024 batch_size=128

Prints one JSON line: seconds summed over batches for the bare Hugging Face forward (sdpa), the
forward with the analysis hooks (which only keep references) and the a and b sentences'
log-probabilities (``engine.pair_logprobs``) on the model a run would choose (``analysis.backend``),
``consume()`` (the statistics, added into the
running state in place), and the per-pair rows, and the minor page faults per batch of each phase
(fresh memory touched: freed memory that the allocator gave back and faults in again). With ``+profile=N`` it also runs the
PyTorch profiler over N batches and prints the operations of ``consume()`` that took the most time:
on a GPU the device time (a table), on the CPU the host time per batch of the operations run inside
``consume()`` alone, the forward passes left out (a JSON line, ``python`` = the Python between them).
With ``+kernels=N`` it profiles N batches phase by phase (each phase under its own profiler,
synchronised): the compiled decoder without hooks (the plain tree, when the run would use it), the
forward pass with the hooks and the log-probabilities, and ``consume()``, and prints per phase the
kernel time per batch and the kernels that took most of it (one JSON line): where the analysis's
GPU time goes beyond the bare decoder's (on the CPU: the operations' host time).
"""

from __future__ import annotations

import json
import time

import hydra
import torch
from omegaconf import DictConfig

from benchmarks.throughput import _sync, bare_model, bare_pass, minor_faults, pipeline, prepare, warm_batches
from interp.engine import pair_logprobs
from interp.run import get_model
from interp.run.pipeline import _pair_rows


def kernel_times(profs, n_batches: int, top: int = 25, cuda: bool = True) -> dict:
    """GPU kernel time per batch over the profilers ``profs`` (one phase): the total, the number of
    kernels, and the ``top`` kernels by time as (name, calls per batch, ms per batch). With
    ``cuda=False``: the host's self time of the operations instead (a CPU run)."""
    tot: dict[str, list] = {}
    for prof in profs:
        for e in prof.key_averages():
            ms = (e.self_device_time_total if cuda else e.self_cpu_time_total) / 1e3
            if (e.device_type.name == "CUDA") != cuda or ms <= 0:
                continue
            t = tot.setdefault(e.key, [0, 0.0])
            t[0] += e.count
            t[1] += ms
    rows = sorted(tot.items(), key=lambda kv: -kv[1][1])
    return {"ms_per_batch": round(sum(ms for _, ms in tot.values()) / n_batches, 3),
            "kernels_per_batch": round(sum(c for c, _ in tot.values()) / n_batches),
            "top": [(k[:90], round(c / n_batches, 1), round(ms / n_batches, 3)) for k, (c, ms) in rows[:top]]}


def phase_kernels(lm, model, stats, batches) -> dict:
    """Per phase (compiled decoder alone, forward with hooks and log-probabilities, ``consume()``),
    each batch's phase under its own profiler after a device sync: ``kernel_times`` of each."""
    from torch.profiler import ProfilerActivity, profile

    from interp.backends.hf import PlainModel

    cuda = lm.device.type == "cuda"
    activity = ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU

    def profiled(fn):
        _sync(lm.device)
        with profile(activities=[activity]) as prof, torch.inference_mode():
            fn()
            _sync(lm.device)
        return prof

    profs: dict[str, list] = {"decoder_no_hooks": [], "forward_hooks_logprobs": [], "consume": []}
    for b in batches:
        if isinstance(model, PlainModel):  # the plain tree: its decoder alone (the bridge has no such pass)
            profs["decoder_no_hooks"].append(profiled(
                lambda: model(b.tokens, attention_mask=b.mask.long(), return_type=None)))
        profs["forward_hooks_logprobs"].append(
            profiled(lambda: pair_logprobs(model, b, stats.hooks(b), fused=stats.fused)))
        profs["consume"].append(profiled(stats.consume))
    return {k: kernel_times(v, len(batches), cuda=cuda) for k, v in profs.items() if v}


def consume_ops(prof, n_batches: int, top: int = 25) -> list[tuple[str, int, float]]:
    """(operation, calls, self CPU ms) per batch of the operations under the profiler's
    ``consume`` ranges, largest first; ``python`` is the range's own time (the Python between them)."""
    tot: dict[str, list] = {}
    for e in prof.events():
        p = e.cpu_parent
        while p is not None and p.name != "consume":
            p = p.cpu_parent
        name = "python" if e.name == "consume" else e.name if p is not None else None
        if name is not None:
            t = tot.setdefault(name, [0, 0.0])
            t[0] += 1
            t[1] += e.self_cpu_time_total / 1e3
    rows = sorted(tot.items(), key=lambda kv: -kv[1][1])[:top]
    return [(k, round(c / n_batches), round(ms / n_batches, 2)) for k, (c, ms) in rows]


@hydra.main(config_path="../conf", config_name="benchmark", version_base="1.3")
def main(cfg: DictConfig) -> None:
    lm = get_model(cfg)
    kept, groups, batches, n_controls = prepare(cfg, lm, int(cfg.n_pairs))
    stats, pipe, facts = pipeline(cfg, lm, kept, groups, n_controls)
    model = pipe.model
    bare = bare_model(lm)
    tot: dict[str, float] = {}
    faults: dict[str, int] = {}

    def phase(name, fn):
        _sync(lm.device)
        f0 = minor_faults()
        t = time.perf_counter()
        out = fn()
        _sync(lm.device)
        tot[name] = tot.get(name, 0.0) + time.perf_counter() - t
        faults[name] = faults.get(name, 0) + minor_faults() - f0
        return out

    warm = warm_batches(batches, 1, facts["compiled"])  # with compilation: one batch of every length
    for i, b in enumerate(warm + batches):
        if i == len(warm):
            tot.clear()  # warm-up done
            faults.clear()
        phase("bare_forward", lambda: bare_pass(bare, b))
        lp = phase("forward_hooks_logprobs", lambda: pair_logprobs(model, b, stats.hooks(b), fused=stats.fused))
        phase("consume", stats.consume)  # per-pair values and their sums, added into the state
        phase("pair_rows", lambda: _pair_rows(b, lp, kept))
    n_kern = int(cfg.get("kernels", 0))
    if n_kern:
        print(json.dumps({"kernels": phase_kernels(lm, model, stats, batches[:n_kern])}), flush=True)
    n_prof = int(cfg.get("profile", 0))
    if n_prof:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if lm.device.type == "cuda" else [])
        with profile(activities=acts) as prof:
            for b in batches[:n_prof]:
                pair_logprobs(model, b, stats.hooks(b), fused=stats.fused)
                _sync(lm.device)
                with torch.profiler.record_function("consume"):
                    stats.consume()
                _sync(lm.device)
        if lm.device.type == "cuda":
            print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=30,
                                            max_name_column_width=60), flush=True)
        else:  # the host's time in the operations that consume() ran (the forward passes left out)
            print(json.dumps({"consume_ops_per_batch_ms": consume_ops(prof, n_prof)}), flush=True)
    print(json.dumps({"model": lm.info["name"], "device": str(lm.device), "batches": len(batches),
                      "analysis_forward": facts,
                      **{k: round(v, 3) for k, v in tot.items()},
                      "page_faults_per_batch": {k: round(v / len(batches)) for k, v in faults.items()}}), flush=True)


if __name__ == "__main__":
    main()
