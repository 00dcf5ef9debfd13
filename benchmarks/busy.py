"""How busy the GPU is during a forward pass, and on what: matrix products or everything else.

    python -m benchmarks.busy model=llama3_8b_shape device=cuda n_pairs=512 batch_size=128 [analysis.compile=true]

For a few batches it measures, for the bare Hugging Face forward pass (sdpa attention and eager
attention), the bridge's forward pass and the analysis step as a run does it (forward with the
hooks of the chosen backend, then ``consume()``), each synchronised: the wall time, the time the GPU
spent in kernels (PyTorch profiler, device time summed over kernels), and how that kernel time
splits into matrix products (cuBLAS/CUTLASS GEMM kernels), attention kernels and the rest
(normalisation, rotary, activation, copies, the statistics). ``gemm_tflops`` is the model's matrix
FLOP (``throughput.matmul_flop``) over the GEMM kernels' time: how close the products
themselves run to the chip's rate. A busy fraction well below 1 means the host (Python, kernel
launches) bounds the step, not the GPU. Prints one JSON line.
"""

from __future__ import annotations

import json
import re
import time

import hydra
from omegaconf import DictConfig
from torch.profiler import ProfilerActivity, profile

from benchmarks.throughput import _sync, bare_model, bare_pass, matmul_flop, pipeline, prepare, warm_batches
from interp.engine import pair_logprobs
from interp.run import get_model

GEMM = re.compile(r"gemm|nvjet|xmma|cutlass|cublas|sm90_", re.I)
ATTENTION = re.compile(r"flash|fmha|attention|softmax|sdpa", re.I)


def kernel_split(prof) -> dict[str, float]:
    """Seconds of GPU kernel time: total, GEMM, attention, other."""
    out = {"kernel": 0.0, "gemm": 0.0, "attention": 0.0}
    for e in prof.key_averages():
        t = e.self_device_time_total / 1e6
        if t <= 0 or e.device_type.name != "CUDA":
            continue
        out["kernel"] += t
        if ATTENTION.search(e.key):  # first: fused attention kernels' names can look like GEMMs' (sm90_...)
            out["attention"] += t
        elif GEMM.search(e.key):
            out["gemm"] += t
    out["other"] = out["kernel"] - out["gemm"] - out["attention"]
    return out


@hydra.main(config_path="../conf", config_name="benchmark", version_base="1.3")
def main(cfg: DictConfig) -> None:
    lm = get_model(cfg)
    if lm.device.type != "cuda":
        raise SystemExit("benchmarks.busy needs a CUDA device")
    kept, groups, batches, n_controls = prepare(cfg, lm, int(cfg.n_pairs))
    stats, pipe, facts = pipeline(cfg, lm, kept, groups, n_controls)
    model = pipe.model

    def analysis(b):
        pair_logprobs(model, b, stats.hooks(b), fused=stats.fused)
        stats.consume()

    timed_batches = batches[1:]
    steps = {"bare": bare_model(lm, "sdpa"), "bare_eager": bare_model(lm, "eager"), "bridge": lm.bridge}
    out = {"model": lm.info["name"], "batch_size_pairs": int(cfg.batch_size), "batches": len(timed_batches),
           "analysis_forward": facts}
    for name, step in [*((k, (lambda m: lambda b: bare_pass(m, b))(m)) for k, m in steps.items()),
                       ("analysis", analysis)]:
        with profile(activities=[ProfilerActivity.CUDA]):  # compiled code may specialise on the profiler too
            for b in warm_batches(batches, 1, facts["compiled"]):
                step(b)  # warm-up (and compilation)
            _sync(lm.device)
        wall = 0.0
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for b in timed_batches:
                t = time.perf_counter()
                step(b)
                _sync(lm.device)
                wall += time.perf_counter() - t
        k = kernel_split(prof)
        if name == "bare":
            out["top_kernels"] = [(e.key[:60], round(e.self_device_time_total / 1e6, 3)) for e in
                                  sorted(prof.key_averages(), key=lambda e: -e.self_device_time_total)[:8]]
        flop = matmul_flop(lm, timed_batches, name == "analysis", facts["backend"] == "bridge")
        out.update({f"{name}_wall_s": round(wall, 3), f"{name}_busy_fraction": round(k["kernel"] / wall, 3),
                    **{f"{name}_{part}_s": round(v, 3) for part, v in k.items()},
                    f"{name}_gemm_tflops": round(flop / k["gemm"] / 1e12, 1) if k["gemm"] else None})
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
