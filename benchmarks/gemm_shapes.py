"""The matrix products of one decoder layer at a batch's token count: separate vs fused.

    python -m benchmarks.gemm_shapes model=llama3_8b_shape device=cuda +tokens=5760
    python -m benchmarks.gemm_shapes device=cpu +tokens=1440           # embedded model, fp32

Reads the layer shapes from the model config (``conf/model``; no weights are loaded) and times, on
random matrices in the run's dtype, ``tokens`` x hidden inputs through: q, k, v and o projections and
gate, up and down projections as Hugging Face's Llama runs them (one product each), and the fused
forms (q|k|v as one product, gate|up as one). Prints one JSON line: per product the seconds and
TFLOP/s, the layer's total both ways and their ratio, and the fraction of the 8192^3 product rate
(the roofline's numerator in ``benchmarks.throughput``) each reaches. A fused form would need the
weights concatenated (copied, or the loaded parameters re-pointed into one buffer); this measures
what it could gain before anything is built.
"""

from __future__ import annotations

import json
import time

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from benchmarks.throughput import matmul_tflops, per_call
from interp.model import resolve_device, resolve_dtype


def shapes(mc) -> dict[str, tuple[int, int]]:
    """(in, out) of each product of a layer, from the model config (``config:`` of conf/model)."""
    d, inter = int(mc.hidden_size), int(mc.intermediate_size)
    hd = int(mc.get("head_dim") or d // int(mc.num_attention_heads))
    q, kv = int(mc.num_attention_heads) * hd, int(mc.num_key_value_heads) * hd
    return {"q": (d, q), "k": (d, kv), "v": (d, kv), "o": (q, d), "gate": (d, inter), "up": (d, inter),
            "down": (inter, d), "qkv": (d, q + 2 * kv), "gate_up": (d, 2 * inter)}


def layer_setup(cfg: DictConfig):
    """(device, dtype, the layer's config) of a benchmark run: ``config:`` of conf/model, or for the
    embedded model (which has none) SmolLM2-135M's layer."""
    device = resolve_device(str(cfg.device))
    dtype = resolve_dtype(str(cfg.dtype), device)
    mc = cfg.model.get("config")
    if mc is None:
        mc = OmegaConf.create({"hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9,
                               "num_key_value_heads": 3})
    return device, dtype, mc


SEPARATE = ("q", "k", "v", "o", "gate", "up", "down")  # the products as Hugging Face's Llama runs them


def layer_products_s(mc, n: int, device, dtype, reps: int) -> dict[str, float]:
    """Seconds per call of each product of ``shapes(mc)`` on ``n`` x in random inputs."""
    x = {k: torch.randn(n, k, device=device, dtype=dtype) for k in {i for i, _ in shapes(mc).values()}}
    secs = {}
    for name, (i, o) in shapes(mc).items():
        w = torch.randn(o, i, device=device, dtype=dtype)
        secs[name] = per_call(lambda: torch.nn.functional.linear(x[i], w), device, reps)
        del w
    return secs


@hydra.main(config_path="../conf", config_name="benchmark", version_base="1.3")
def main(cfg: DictConfig) -> None:
    device, dtype, mc = layer_setup(cfg)
    n = int(cfg.get("tokens", 5760))
    reps = int(cfg.get("reps", 20 if device.type == "cuda" else 5))
    out = {"model": str(cfg.model.name), "device": str(device), "dtype": str(dtype).replace("torch.", ""), "tokens": n}
    secs = layer_products_s(mc, n, device, dtype, reps)
    for name, (i, o) in shapes(mc).items():
        out[f"{name}_ms"] = round(secs[name] * 1e3, 3)
        out[f"{name}_tflops"] = round(2 * n * i * o / secs[name] / 1e12, 3)
    sep = sum(secs[k] for k in SEPARATE)
    fus = sum(secs[k] for k in ("qkv", "o", "gate_up", "down"))
    rate = matmul_tflops(device, 8192 if device.type == "cuda" else 2048, reps, dtype)
    flop = 2 * n * sum(i * o for k, (i, o) in shapes(mc).items() if k in SEPARATE)
    out.update({"layer_separate_ms": round(sep * 1e3, 3), "layer_fused_ms": round(fus * 1e3, 3),
                "fused_speedup": round(sep / fus, 4), "square_tflops": round(rate, 3),
                "separate_fraction_of_square_rate": round(flop / sep / 1e12 / rate, 4),
                "fused_fraction_of_square_rate": round(flop / fus / 1e12 / rate, 4)})
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
