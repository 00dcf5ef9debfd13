"""What CUDA graphs could win for the analysis: host cost against GPU time at one batch shape.

    python -m benchmarks.graphs model=llama3_8b_shape device=cuda n_pairs=512 batch_size=128

A CUDA graph replays a recorded pass without the host launching its kernels one by one; it can
only help where the host, not the GPU, bounds the loop (or where the GPU waits between kernels).
On the run's forward configuration (``analysis.*``: the plain tree, compiled, its attention kernel)
and the most common batch shape of the benchmark pairs, this measures:

- ``host_ms``: the host's time to issue one pass with an empty queue (no synchronisation inside):
  Python, the compiled regions' guards, hooks, kernel launches;
- ``eager_ms``: time per pass over back-to-back passes (the queue full, as in a run), and
  ``kernel_ms``, the GPU's kernel time per pass (PyTorch profiler over back-to-back passes):
  ``eager_ms - kernel_ms`` is the GPU idle between kernels, the most a CUDA graph could remove
  while the host keeps ahead (``host_ms`` below ``eager_ms``);
- ``graph_ms``: time per replay of the same pass captured in a CUDA graph (``torch.cuda.graph``),
  and the largest difference of its hooked activations from the pass launched kernel by kernel;

for the forward pass without hooks and with the analysis's hooks (which keep a reference to each
activation, as in a run), and the host time of the rest of an analysis step (log-probabilities and
``consume()``, issued without waiting) against the step's GPU time. ``+uncompiled=true`` measures
the tree without ``torch.compile``. Prints one JSON line.
"""

from __future__ import annotations

import contextlib
import json
import time
import traceback

import hydra
import torch
from omegaconf import DictConfig
from torch.profiler import ProfilerActivity, profile

from benchmarks.busy import kernel_split
from benchmarks.throughput import _sync, per_call, pipeline, prepare
from interp.engine import pair_logprobs
from interp.backends.hf import PlainModel
from interp.run import get_model


def host_s(fn, device) -> float:
    """Seconds the host spends issuing ``fn`` after the queue has drained (not waiting for the GPU)."""
    _sync(device)
    t = time.perf_counter()
    fn()
    out = time.perf_counter() - t
    _sync(device)
    return out


def kernel_s(fn, device, reps: int) -> float:
    """GPU kernel seconds per call of ``fn`` over ``reps`` back-to-back calls (PyTorch profiler)."""
    fn()
    _sync(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        _sync(device)
    return kernel_split(prof)["kernel"] / reps


def graphed(fn, warmup: int = 3) -> torch.cuda.CUDAGraph:
    """``fn`` captured in a CUDA graph after ``warmup`` calls on a side stream."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g


@hydra.main(config_path="../conf", config_name="benchmark", version_base="1.3")
def main(cfg: DictConfig) -> None:
    lm = get_model(cfg)
    dev = lm.device
    if dev.type != "cuda":
        raise SystemExit("benchmarks.graphs needs a CUDA device")
    kept, groups, batches, n_controls = prepare(cfg, lm, int(cfg.n_pairs))
    stats, pipe, facts = pipeline(cfg, lm, kept, groups, n_controls)
    model = pipe.model
    if not isinstance(model, PlainModel):
        raise SystemExit(f"the analysis runs the bridge here ({facts}); graphs are measured on the plain tree")
    if cfg.get("uncompiled", False):
        model.uncompile()
        facts = {**facts, "compiled": False}
    shapes = [(b.size, b.seq_len) for b in batches]
    b = batches[max(range(len(batches)), key=lambda i: shapes.count(shapes[i]))]
    tokens, mask = b.tokens.clone(), b.mask.long()
    reps = int(cfg.get("reps", 10))
    out = {"model": lm.info["name"], "analysis_forward": facts, "rows": int(tokens.shape[0]),
           "tokens": int(tokens.shape[1]), "batches_of_this_shape": shapes.count((b.size, b.seq_len)),
           "reps": reps}

    for name, with_hooks in (("forward", False), ("forward_hooks", True)):
        hooks, (_, acts) = stats.capture(b)

        def fwd():
            with torch.inference_mode(), (model.hooks(hooks) if with_hooks else contextlib.nullcontext()):
                model(tokens, attention_mask=mask, return_type=None)

        eager = per_call(fwd, dev, reps)
        host = min(host_s(fwd, dev) for _ in range(3))
        reference = {k: [a.clone() for a in v] for k, v in acts.items()} if with_hooks else None
        kern = kernel_s(fwd, dev, reps)
        row = {"host_ms": round(host * 1e3, 2), "eager_ms": round(eager * 1e3, 2), "kernel_ms": round(kern * 1e3, 2),
               "gpu_idle_fraction": round(1 - kern / eager, 4)}
        try:
            g = graphed(fwd)
            row["graph_ms"] = round(per_call(g.replay, dev, reps) * 1e3, 2)
            row["eager_vs_graph"] = round(eager / (row["graph_ms"] / 1e3), 4)
            if with_hooks:  # the graph's activations (its own memory, refilled by every replay)
                g.replay()
                _sync(dev)
                row["graph_max_abs_diff"] = max(float((x.float() - y.float()).abs().max())
                                                for k in acts for x, y in zip(acts[k], reference[k]))
            del g
        except Exception as err:  # noqa: BLE001  (a pass that cannot be captured is a finding too)
            row["graph_error"] = f"{type(err).__name__}: {err}"[:300]
            row["graph_error_at"] = [f"{f.filename}:{f.lineno} {f.name}"
                                     for f in traceback.extract_tb(err.__traceback__)][-8:]
        out[name] = row
        del reference, acts, hooks
        torch.cuda.empty_cache()

    # the rest of an analysis step: how long the host takes to issue it, against its GPU time
    def step():
        hooks, captured = stats.capture(b)
        pair_logprobs(model, b, hooks, fused=stats.fused)
        stats.consume(captured)

    step_gpu = per_call(step, dev, reps)
    step_host = min(host_s(step, dev) for _ in range(3))
    step_kernel = kernel_s(step, dev, reps)
    out["step"] = {"host_ms": round(step_host * 1e3, 2), "back_to_back_ms": round(step_gpu * 1e3, 2),
                   "kernel_ms": round(step_kernel * 1e3, 2), "gpu_idle_fraction": round(1 - step_kernel / step_gpu, 4),
                   "host_fraction_of_gpu": round(step_host / step_gpu, 4)}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
