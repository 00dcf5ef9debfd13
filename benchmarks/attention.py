"""Attention alone (after the projections) at a batch's shape: the kernels the plain tree can use.

    python -m benchmarks.attention model=llama3_8b_shape device=cuda +rows=640 +tokens=9
    python -m benchmarks.attention device=cpu +rows=160 +tokens=9        # embedded model, fp32

Reads the head layout from the model config (no weights are loaded) and times one layer's attention
on random q, k, v in the run's dtype, ``rows`` sentences of ``tokens`` tokens with Hugging Face's causal
additive mask, the last quarter of the sentences with their first keys masked too (the mask path
for every key, as left padding would give; the toolkit pads on the right, where causality alone hides
the padding):
Hugging Face's ``eager`` and ``sdpa`` functions and ``interp.kernels.attention``'s ``short`` (the Triton
kernel on CUDA; eager attention on the CPU), each uncompiled and under ``torch.compile`` (as the
compiled tree runs them). Prints one JSON line:
milliseconds per call, each compiled kernel's speed relative to compiled eager, the largest
difference of each from float32 eager attention on the same inputs, and, for scale, one layer's
matrix products at the same token count (``benchmarks.gemm_shapes``'s separate products).
"""

from __future__ import annotations

import json

import hydra
import torch
from omegaconf import DictConfig
from torch import nn

from benchmarks.gemm_shapes import SEPARATE, layer_products_s, layer_setup
from benchmarks.throughput import per_call
from interp.kernels.attention import short_attention_forward


class _Module(nn.Module):
    """What the attention functions read from the attention module."""

    def __init__(self, groups: int):
        super().__init__()
        self.num_key_value_groups = groups
        self.is_causal = True
        self.eval()


def causal_mask(rows: int, t: int, pad: int, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks [rows, 1, t, t], causal, the last quarter of the rows with their first ``pad`` keys masked: boolean
    (True = attend, as Hugging Face gives ``sdpa``) and additive (as it gives ``eager``)."""
    keep = torch.ones(t, t, dtype=torch.bool, device=device).tril()[None].repeat(rows, 1, 1)
    keep[rows - rows // 4:, :, :pad] = False
    keep |= torch.eye(t, dtype=torch.bool, device=device)  # a padded query still sees itself (no NaN)
    add = torch.zeros(keep.shape, dtype=dtype, device=device).masked_fill(~keep, torch.finfo(dtype).min)
    return keep[:, None], add[:, None]


@hydra.main(config_path="../conf", config_name="benchmark", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.models.llama.modeling_llama import eager_attention_forward

    device, dtype, mc = layer_setup(cfg)
    h, hkv = int(mc.num_attention_heads), int(mc.num_key_value_heads)
    d = int(mc.get("head_dim") or int(mc.hidden_size) // h)
    rows, t = int(cfg.get("rows", 640)), int(cfg.get("tokens", 9))
    reps = int(cfg.get("reps", 50 if device.type == "cuda" else 10))
    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(rows, h, t, d, device=device, dtype=dtype, generator=g)
    k = torch.randn(rows, hkv, t, d, device=device, dtype=dtype, generator=g)
    v = torch.randn(rows, hkv, t, d, device=device, dtype=dtype, generator=g)
    keep, mask = causal_mask(rows, t, min(2, t - 1), dtype, device)
    mod = _Module(h // hkv).to(device)
    scale = d ** -0.5
    fns = {"eager": eager_attention_forward, "sdpa": sdpa_attention_forward, "short": short_attention_forward}
    with torch.no_grad():
        ref = eager_attention_forward(mod, q.float(), k.float(), v.float(), mask.float(), scaling=scale)[0]
        out = {"model": str(cfg.model.name), "device": str(device), "dtype": str(dtype).replace("torch.", ""),
               "rows": rows, "tokens": t, "heads": h, "kv_heads": hkv, "head_dim": d}
        ms = {}
        for name, fn in fns.items():
            for compiled in (False, True):
                f = torch.compile(fn, dynamic=False) if compiled else fn
                m = keep if name == "sdpa" else mask
                call = lambda f=f, m=m: f(mod, q, k, v, m, scaling=scale)[0]  # noqa: E731
                key = f"{name}{'_compiled' if compiled else ''}"
                ms[key] = per_call(call, device, reps) * 1e3
                out[f"{key}_ms"] = round(ms[key], 4)
                out[f"{key}_max_abs_diff"] = float((call().float() - ref).abs().max())
        for name in ("sdpa", "short"):
            out[f"{name}_compiled_speedup_vs_eager_compiled"] = round(ms["eager_compiled"] / ms[f"{name}_compiled"], 3)
        secs = layer_products_s(mc, rows * t, device, dtype, reps)
        gemm = sum(secs[k] for k in SEPARATE)
        out["layer_products_ms"] = round(gemm * 1e3, 4)
        out["eager_compiled_vs_products"] = round(ms["eager_compiled"] / 1e3 / gemm, 4)
        out["short_compiled_vs_products"] = round(ms["short_compiled"] / 1e3 / gemm, 4)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
