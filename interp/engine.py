"""Batches of pairs and the one forward pass per batch that feeds every consumer.

A batch of ``B`` pairs becomes one input of ``V * B`` rows: the ``a`` sentences, then the ``b``
sentences, then (when the analysis asks for them) ``K`` control variants of ``a`` (``V = 2 + K``).
Every row starts with BOS and is right-padded to the longest sentence of the batch, with an
attention mask. Pairs are sorted by length so batches carry little padding. Consumers attach
temporary hooks for the duration of one forward pass (``bridge.hooks(...)``) and reduce what they
see to running statistics: no activation outlives its batch.

Positions in a batch (model-input positions, BOS = 0):
- ``edit[i]``: the edited token of pair ``i`` (sentence token ``edit_pos`` + 1);
- ``last[i]``: the last real token (= number of sentence tokens).
Both sentences of a pair have the same length, so ``last`` is shared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from .pairs.validate import TokenizedPair


@dataclass
class Batch:
    index: Int[Tensor, "B"]  # positions of these pairs in the run's kept-pair list (cpu)
    tokens: Int[Tensor, "VB T"]  # variant-major: rows [v*B:(v+1)*B] are variant v
    mask: Bool[Tensor, "VB T"]  # real tokens, BOS included
    edit: Int[Tensor, "B"]
    last: Int[Tensor, "B"]
    group: Int[Tensor, "B"]  # group (category) index of each pair
    n_variants: int = 2

    @property
    def size(self) -> int:
        return int(self.edit.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.tokens.shape[1])

    def positions(self) -> Int[Tensor, "1 T"]:
        return torch.arange(self.seq_len, device=self.tokens.device)[None, :]

    def after_mask(self) -> Bool[Tensor, "B T"]:
        """Tokens after the edit, up to the last real token."""
        t = self.positions()
        return (t > self.edit[:, None]) & (t <= self.last[:, None])

    def sentence_mask(self) -> Bool[Tensor, "VB T"]:
        """Real tokens without BOS: the tokens a sentence's statistics are taken over."""
        m = self.mask.clone()
        m[:, 0] = False
        return m

    def distinct_mask(self) -> Bool[Tensor, "VB T"]:
        """Sentence tokens, counting the prefix shared by all variants of a pair once (in ``a``)."""
        m = self.sentence_mask()
        before = self.positions() < self.edit[:, None]  # [B, T]
        for v in range(1, self.n_variants):
            m[v * self.size:(v + 1) * self.size] &= ~before
        return m


def make_batches(tokenized: list[TokenizedPair], groups: list[int], bos_id: int, pad_id: int,
                 batch_size: int, device: torch.device | str = "cpu",
                 controls: list[list[list[int]]] | None = None) -> list[Batch]:
    """Sort pairs by length (stable) and cut them into padded batches.

    ``controls[i]`` optionally holds K token-id lists for pair ``i``: ``a`` with the edited token
    replaced; they become variants 2..K+1 of the batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(tokenized)), key=lambda i: (tokenized[i].n_tokens, i))
    n_controls = len(controls[0]) if controls else 0
    batches = []
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        B = len(idx)
        T = 1 + max(tokenized[i].n_tokens for i in idx)
        V = 2 + n_controls
        tokens = torch.full((V * B, T), pad_id, dtype=torch.long)
        mask = torch.zeros((V * B, T), dtype=torch.bool)
        for j, i in enumerate(idx):
            tp = tokenized[i]
            rows = [tp.ids_a, tp.ids_b] + (list(controls[i]) if controls else [])
            for v, ids in enumerate(rows):
                r = v * B + j
                tokens[r, 0] = bos_id
                tokens[r, 1:1 + len(ids)] = torch.tensor(ids, dtype=torch.long)
                mask[r, :1 + len(ids)] = True
        edit = torch.tensor([tokenized[i].edit_pos + 1 for i in idx], dtype=torch.long)
        last = torch.tensor([tokenized[i].n_tokens for i in idx], dtype=torch.long)
        group = torch.tensor([groups[i] for i in idx], dtype=torch.long)
        batches.append(Batch(torch.tensor(idx), tokens.to(device), mask.to(device), edit.to(device),
                             last.to(device), group.to(device), V))
    return batches


HookFn = Callable[[Tensor, object], Tensor | None]


def forward(bridge, batch: Batch, fwd_hooks: list[tuple[str, HookFn]] | None = None
            ) -> Float[Tensor, "VB T vocab"]:
    """One forward pass of the batch with temporary hooks; returns the logits."""
    with torch.inference_mode():
        with bridge.hooks(fwd_hooks=fwd_hooks or []):
            return bridge(batch.tokens, attention_mask=batch.mask.long(), return_type="logits")


def sentence_logprobs(logits: Float[Tensor, "R T vocab"], tokens: Int[Tensor, "R T"],
                      mask: Bool[Tensor, "R T"]) -> Float[Tensor, "R"]:
    """log P(sentence | BOS): sum over real tokens 1..last of log p(token_t | tokens_<t), float64."""
    logits = logits[:, :-1].float()
    target = tokens[:, 1:]
    lp = logits.gather(-1, target[..., None])[..., 0] - logits.logsumexp(-1)
    return (lp.to(torch.float64) * mask[:, 1:]).sum(-1)
