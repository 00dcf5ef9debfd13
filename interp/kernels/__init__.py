"""Triton kernels, and whether they can run here. This module never imports Triton.

- ``interp.kernels.statistics``: a batch's per-pair statistics and their per-group sums (the GPU
  form of ``interp.stats.DiffStats``'s PyTorch path);
- ``interp.kernels.logprobs``: log p(target) from a chunk of logits in one pass (``engine.slot_logprobs``
  on CUDA);
- ``interp.kernels.short_attention``: the short-sentence attention kernel, and
  ``interp.kernels.attention``: that kernel as a Hugging Face attention implementation (``short``).

The kernel modules import Triton when they are imported, so only the code that runs a kernel
imports them: ``import interp``, or a run on the CPU without ``analysis.fused`` and ``short``
attention, never loads Triton. On CUDA the kernels are compiled; with ``TRITON_INTERPRET=1`` set
before Triton is imported they run on CPU tensors through Triton's interpreter (how the unit tests
exercise them).
"""

from __future__ import annotations

import importlib.util
import os

import torch

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


_HAVE_TRITON = importlib.util.find_spec("triton") is not None  # looked up, not imported


def have_triton() -> bool:
    """Whether Triton is installed (CPU builds of PyTorch may lack it)."""
    return _HAVE_TRITON


def available(device: torch.device | str) -> bool:
    """Whether a kernel can run on tensors of ``device`` (CUDA with Triton, or the interpreter)."""
    if not have_triton():
        return False
    kind = torch.device(device).type
    return kind == "cuda" or (INTERPRET and kind == "cpu")


def use_fused(setting, device: torch.device | str) -> bool:
    """``analysis.fused``: ``auto`` (on a CUDA device with Triton), ``true`` (required: CUDA, or
    the CPU under ``TRITON_INTERPRET=1``) or ``false`` (the PyTorch path)."""
    if setting in (False, "false", "off", None):
        return False
    if setting in ("auto",):
        return have_triton() and torch.device(device).type == "cuda"
    if not available(device):
        raise RuntimeError(f"analysis.fused=true needs Triton and a CUDA device (device {device}, "
                           f"triton {'present' if have_triton() else 'missing'}); use analysis.fused=auto")
    return True
