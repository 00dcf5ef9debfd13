"""Forward backends: the ways one batch runs through the model with temporary hooks.

- ``bridge`` (``interp.backends.bridge``): TransformerLens's TransformerBridge, every hook point;
- ``hf`` (``interp.backends.hf``): the Hugging Face module tree as loaded, sharing the bridge's
  weights, with plain PyTorch hooks where ``interp.hooks.HOOK_POINTS`` puts them, an attention
  kernel of choice and ``torch.compile``.

Both give a ``base.Forward`` that ``interp.engine`` runs. ``select`` (also ``analysis_model``)
resolves ``analysis.backend``: ``auto`` takes ``hf`` when it can run every hook and the caller
attached no hooks of their own to the bridge, and the bridge otherwise.
"""

from __future__ import annotations

import logging

from ..config import BACKENDS
from .base import Backend, Forward
from .bridge import BridgeBackend, caller_hooks
from .hf import HFBackend, PlainModel, UnsupportedHook, compile_wanted

log = logging.getLogger(__name__)

REGISTRY: dict[str, Backend] = {"bridge": BridgeBackend(), "hf": HFBackend()}


def select(lm, acfg, hook_names: list[str], n_pairs: int = 0) -> tuple[Forward, dict]:
    """The model the batch loop runs, and how: ``(forward, facts)``.

    ``analysis.backend``: ``bridge`` runs TransformerBridge (its eager attention; every hook);
    ``hf`` runs the untouched Hugging Face module tree with plain PyTorch hooks, attention kernel
    ``analysis.attn`` (``auto``: ``interp.kernels.attention``'s kernel on CUDA, eager elsewhere),
    ``torch.compile``d where ``analysis.compile`` says (``auto``: on CUDA, and on the CPU for runs
    of at least ``analysis.compile_cpu_min_pairs`` pairs (``n_pairs``), where the compiled pass's
    gain outweighs the compilation; never with hooks inside the attention or MLP, ``z`` and
    ``mlp_post``), and fails if a hook needs the bridge; ``auto`` picks ``hf`` when it can and the
    bridge otherwise (also when the caller attached hooks to the bridge, which only the bridge
    would run)."""
    backend = str(acfg.backend)
    if backend not in BACKENDS:
        raise ValueError(f"analysis.backend={backend!r} is not one of {BACKENDS}")
    hf, bridge = REGISTRY["hf"], REGISTRY["bridge"]
    why = hf.why_not(lm, hook_names)
    caller = caller_hooks(lm) if why is None else None
    if backend == "auto" and caller:
        why = caller
    if backend == "bridge" or (backend == "auto" and why):
        model, facts = bridge.prepare(lm, acfg, hook_names, n_pairs)
        return model, {**facts, **({"why_bridge": why} if backend == "auto" else {})}
    if why:
        raise ValueError(f"analysis.backend=hf is not possible here: {why}; use analysis.backend=bridge or auto")
    model, facts = hf.prepare(lm, acfg, hook_names, n_pairs)
    if caller:
        log.warning("analysis.backend=hf: %s; they do not run in the plain forward pass", caller)
        facts = {"backend": "hf", "ignored": caller, **{k: v for k, v in facts.items() if k != "backend"}}
    return model, facts


def describe_forward(facts: dict) -> str:
    """One line saying which backend runs the analysis and why (the manifest's ``forward``)."""
    if facts.get("backend") == "hf":
        how = f"plain Hugging Face tree ({facts.get('layout')} module layout), attention {facts.get('attention')}"
        how += ", compiled" if facts.get("compiled") else ""
        return how + (f"; not compiled: {facts['compile_skipped']}" if facts.get("compile_skipped") else "")
    why = facts.get("why_bridge")
    return "TransformerLens bridge" + (f" ({why})" if why else " (analysis.backend=bridge)")


analysis_model = select  # the name the run code has called it by

__all__ = ["BACKENDS", "describe_forward", "REGISTRY", "Backend", "BridgeBackend", "Forward", "HFBackend", "PlainModel",
           "UnsupportedHook", "analysis_model", "caller_hooks", "compile_wanted", "select"]
