"""The ``bridge`` backend: TransformerLens's TransformerBridge, its eager attention and every hook.

The bridge runs the Hugging Face model it rewired in place, with TransformerLens hook points on
every module (attention scores and patterns included) and ``hooks`` / ``run_with_hooks``. It is
the reference the ``hf`` backend is tested against, and the only one that runs hooks a caller
attached to the bridge or to the model it rewired (``caller_hooks``).
"""

from __future__ import annotations


def caller_hooks(lm) -> str | None:
    """Where a caller attached hooks that only the bridge's forward pass would run, or None: on a
    bridge hook point, on a module of the bridge or of the model object it rewired (hooks that
    TransformerLens or transformers install themselves do not count), or global module hooks."""
    from torch.nn.modules import module as nn_module
    from transformer_lens.hook_points import HookPoint

    if nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks:
        return "global module hooks are registered"
    own = ("transformer_lens", "transformers", "torch")
    for tree in (lm.bridge, lm.hf_model):
        for name, m in tree.named_modules():
            for fn in [*m._forward_hooks.values(), *m._forward_pre_hooks.values()]:
                if isinstance(m, HookPoint) or not str(getattr(fn, "__module__", "")).startswith(own):
                    return f"hooks are attached to the bridge ({name or type(m).__name__})"
    return None


class BridgeBackend:
    """TransformerBridge as a ``Backend``: every hook name, eager attention, never compiled."""

    name = "bridge"

    def why_not(self, lm, hook_names: list[str]) -> str | None:
        return None

    def prepare(self, lm, acfg=None, hook_names: list[str] = (), n_pairs: int = 0):
        return lm.bridge, {"backend": "bridge", "attention": "eager (TransformerBridge)", "compiled": False}
