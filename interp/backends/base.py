"""What a forward backend is: the small interface the batch loop runs, and what a backend declares.

Two roles, as Protocols (structural: the TransformerBridge satisfies ``Forward`` as it is):

- ``Forward``: the object one batch runs through (``interp.engine.forward`` and
  ``pair_logprobs``): a ``hooks(fwd_hooks)`` context manager that attaches ``(TransformerLens hook
  name, fn(act, hook))`` pairs for one pass, a call ``(tokens, attention_mask, return_type,
  logits_to_keep)`` that returns logits (or None for ``return_type=None``: the decoder alone,
  hooks fired), and ``original_model``, the Hugging Face model whose unembedding scores the
  sentences. An optional ``private_unembedding = True`` says no hook sees that unembedding's
  output, so it may be reused in place.
- ``Backend``: a named way to get a ``Forward`` for a loaded model: which hook names it cannot
  run and why (``why_not``), and ``prepare`` -> ``(forward, facts)``, the facts going into the
  run's manifest (``forward``: backend, attention kernel, compiled...).

``interp.backends.select`` picks one from ``analysis.backend``.
"""

from __future__ import annotations

from typing import Callable, ContextManager, Iterable, Protocol, runtime_checkable

from torch import Tensor, nn

HookFn = Callable[[Tensor, object], "Tensor | None"]


@runtime_checkable
class Forward(Protocol):
    original_model: nn.Module

    def hooks(self, fwd_hooks: Iterable[tuple[str, HookFn]] = ...) -> ContextManager: ...

    def __call__(self, tokens: Tensor, attention_mask: Tensor | None = None, return_type: str | None = "logits",
                 logits_to_keep: int = 0) -> Tensor | None: ...


class Backend(Protocol):
    name: str

    def why_not(self, lm, hook_names: list[str]) -> str | None:
        """Why this backend cannot run these hooks for ``lm`` (None: it can)."""

    def prepare(self, lm, acfg, hook_names: list[str], n_pairs: int = 0) -> tuple[Forward, dict]:
        """The ``Forward`` to run and the facts about it for the manifest."""
