"""Saved inspection data: raw activations and attention patterns of a few pairs, for the viewer.

The first ``analysis.n_saved_pairs`` kept pairs (or those named by ``hooks.pattern_pairs``) are run
again through the bridge, in separate passes, and kept whole: activations at the run's hook
points, attention patterns of every layer, both sentences, and the patterns' a - b.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch

from .. import rundir as R
from ..config import ConfigError
from ..engine import make_batches
from ..hooks import PATTERN


@dataclass
class Inspection:
    n_pairs: int = 0
    activations: dict = field(default_factory=dict)  # name -> [pair, sentence, pos, ...]
    patterns: dict = field(default_factory=dict)  # name -> [pair, sentence, head, query, key]
    meta: dict = field(default_factory=dict)
    pattern_meta: dict = field(default_factory=dict)

    def files(self) -> dict[str, tuple[dict, dict]]:
        """Run-dir file name -> (tensors, metadata); empty when no pair was saved."""
        if not self.n_pairs:
            return {}
        return {R.ACTIVATIONS: (self.activations, self.meta), R.PATTERNS: (self.patterns, self.pattern_meta)}


def _pad_positions(t: torch.Tensor, dims: tuple[int, ...], size: int) -> torch.Tensor:
    """Right-pad ``t`` with zeros along ``dims`` (position axes) to ``size``."""
    pad = []
    for d in reversed(range(t.ndim)):
        pad += [0, size - t.shape[d]] if d in dims else [0, 0]
    return torch.nn.functional.pad(t, pad)


def keep_dtype(t: torch.Tensor) -> torch.Tensor:
    """A saved activation: 16-bit floats as they are (exact, half the bytes of float32), else float32."""
    return t if t.dtype in (torch.bfloat16, torch.float16) else t.float()


def capture_inspection(lm, kept, sites, n: int, pair_ids: list[str] | None = None, chunk: int = 32) -> Inspection:
    """Raw activations and attention patterns of the first ``n`` kept pairs (``n < 0``: all), or of
    the pairs named by ``pair_ids`` (``hooks.pattern_pairs``), in separate passes of ``chunk`` pairs;
    patterns also as a - b. Tensors are ``[pair, sentence, pos, ...]``, right-padded with zeros."""
    if pair_ids:
        index = {p.pair_id: i for i, (p, _) in enumerate(kept)}
        unknown = [x for x in pair_ids if x not in index]
        if unknown:
            raise ConfigError(f"hooks.pattern_pairs: no kept pair with id {unknown[:5]}")
        sub = [kept[index[x]] for x in pair_ids]
    else:
        sub = kept if n < 0 else kept[:n]
    if not sub:
        return Inspection()
    n_layers = lm.info["n_layers"]
    pnames = [PATTERN.name(layer) for layer in range(n_layers)]
    names = {s.name for s in sites} | set(pnames)
    parts: dict[str, list[torch.Tensor]] = {}
    for c0 in range(0, len(sub), chunk):
        part = sub[c0:c0 + chunk]
        batch = make_batches([tp for _, tp in part], [0] * len(part), lm.bos_token_id, lm.pad_token_id,
                             len(part), lm.device)[0]
        order = torch.argsort(batch.index.to(batch.tokens.device))  # make_batches sorts by length
        with torch.inference_mode():
            _, cache = lm.bridge.run_with_cache(batch.tokens, attention_mask=batch.mask.long(),
                                                names_filter=lambda name: name in names)
        B = batch.size

        def pairwise(t: torch.Tensor) -> torch.Tensor:  # [2B, ...] -> [B, 2, ...] in the order of sub
            return torch.stack([t[:B][order], t[B:2 * B][order]], 1).cpu()

        # in the model's dtype where it is a 16-bit float (bf16 on a GPU: the values are those bits, and
        # float32 copies only doubled the file), else float32
        got = {s.name: pairwise(keep_dtype(cache[s.name])) for s in sites}
        got.update({x: pairwise(cache[x].to(torch.float16)) for x in pnames})
        got["tokens"] = pairwise(batch.tokens)
        got["mask"] = pairwise(batch.mask.to(torch.uint8))
        for k, v in got.items():
            parts.setdefault(k, []).append(v)
        del cache
    T = max(t.shape[2] for t in parts["tokens"])
    joined = {k: torch.cat([_pad_positions(t, (3, 4) if k in pnames else (2,), T) for t in v])
              for k, v in parts.items()}
    strs = [[lm.tokenizer.convert_ids_to_tokens(row) for row in (
        [lm.bos_token_id] + tp.ids_a, [lm.bos_token_id] + tp.ids_b)] for _, tp in sub]
    meta = {"pair_ids": json.dumps([p.pair_id for p, _ in sub]), "token_strs": json.dumps(strs),
            "layout": "[pair, sentence(a,b), pos, ...]"}
    pats = {k: joined[k] for k in pnames + ["tokens", "mask"]}
    for x in pnames:  # where the two sentences attend differently
        pats[x + "_diff"] = (joined[x][:, 0].float() - joined[x][:, 1].float()).to(torch.float16)
    return Inspection(len(sub), {k: v for k, v in joined.items() if k not in pnames}, pats, meta,
                      {**meta, "layout": "[pair, sentence(a,b), head, query, key]; *_diff: [pair, head, query, key], a - b"})
