"""How busy the GPU is during a bare forward pass and during the analysis, per batch.

    python -m benchmarks.busy model=llama3_8b_shape device=cuda n_pairs=512 batch_size=128

For a few batches it measures the wall time of (1) the bare Hugging Face forward pass and (2) the
forward pass with the analysis hooks followed by ``consume()``, each synchronised, and the time
the GPU spent in kernels during each (PyTorch profiler, device time summed over kernels). A busy
fraction well below 1 means the host (Python, kernel launches) bounds the step, not the GPU.
Prints one JSON line.
"""

from __future__ import annotations

import json
import time

import hydra
from omegaconf import DictConfig
from torch.profiler import ProfilerActivity, profile

from benchmarks.throughput import _sync, bare_pass, new_stats, prepare
from interp.engine import forward
from interp.runner import get_model


def _kernel_seconds(prof) -> float:
    return sum(e.self_device_time_total for e in prof.key_averages()) / 1e6


@hydra.main(config_path="../conf", config_name="benchmark", version_base="1.3")
def main(cfg: DictConfig) -> None:
    lm = get_model(cfg)
    if lm.device.type != "cuda":
        raise SystemExit("benchmarks.busy needs a CUDA device")
    kept, groups, batches, n_controls = prepare(cfg, lm, int(cfg.n_pairs))
    stats = new_stats(cfg, lm, groups, n_controls)

    def analysis(b):
        forward(lm.bridge, b, stats.hooks(b), score_rows=2 * b.size)
        stats.consume()

    out = {"model": lm.info["name"], "batch_size_pairs": int(cfg.batch_size), "batches": len(batches) - 1}
    for name, step in (("bare", lambda b: bare_pass(lm, b)), ("analysis", analysis)):
        step(batches[0])  # warm-up
        _sync(lm.device)
        wall = 0.0
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for b in batches[1:]:
                t = time.perf_counter()
                step(b)
                _sync(lm.device)
                wall += time.perf_counter() - t
        busy = _kernel_seconds(prof)
        out.update({f"{name}_wall_s": round(wall, 3), f"{name}_kernel_s": round(busy, 3),
                    f"{name}_busy_fraction": round(busy / wall, 3)})
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
