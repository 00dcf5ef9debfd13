"""Batches of pairs and the one forward pass per batch that feeds every consumer.

A batch of ``B`` pairs becomes one input of ``V * B`` rows: the ``a`` sentences, then the ``b``
sentences, then (when the analysis asks for them) ``K`` control variants of ``a`` (``V = 2 + K``).
Every row starts with BOS and is right-padded to the longest sentence of the batch, with an
attention mask. Pairs are sorted by length so batches carry little padding. Consumers attach
temporary hooks for the duration of one forward pass (``model.hooks(...)``, the interface of
``interp.backends.base.Forward``: the bridge or the plain tree) and reduce what they see to
running statistics: no activation outlives its batch.

Positions in a batch (model-input positions, BOS = 0), in sentence ``a``'s coordinates:
- ``edit[i]``: the (first) edited token of pair ``i`` (sentence token ``edit_pos`` + 1);
- ``edit_end[i]``: the last token of the edit span (= ``edit`` for one-token edits);
- ``last[i]``: the last real token of ``a``.
For one-token edits both sentences have the same length and positions correspond one to one. For
pairs kept by ``pairs.alignment=span`` the sentences differ in length: ``b_index[i, t]`` is the
position of ``b`` that corresponds to position ``t`` of ``a`` (the prefix one to one, the suffix
aligned from the end, the edit span onto ``b``'s span), and differences are taken on that map.
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
    edit_end: Int[Tensor, "B"] | None = None  # None: one-token edits (= edit)
    b_index: Int[Tensor, "B T"] | None = None  # None: b's positions are a's
    host_group: Int[Tensor, "B"] | None = None  # ``group`` on the host (no device sync to read it)
    scored: "Scored | None" = None  # the predictions the a and b log-probabilities sum (built on the host)

    def __post_init__(self):
        if self.edit_end is None:
            self.edit_end = self.edit

    def scored_slots(self) -> "Scored":
        """``scored``, built here (one host copy of the mask) when the batch was made without it."""
        if self.scored is None:
            self.scored = Scored.build(self.mask.cpu(), self.edit.cpu(), self.tokens.device)
        return self.scored

    @property
    def size(self) -> int:
        return int(self.edit.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.tokens.shape[1])

    def positions(self) -> Int[Tensor, "1 T"]:
        return torch.arange(self.seq_len, device=self.tokens.device)[None, :]

    def after_mask(self) -> Bool[Tensor, "B T"]:
        """Tokens after the edit (span), up to the last real token of ``a``."""
        t = self.positions()
        return (t > self.edit_end[:, None]) & (t <= self.last[:, None])

    def rows(self, lo: int, hi: int) -> "Batch":
        """The pairs ``lo:hi`` of this batch, all variants (for retrying a failed batch in parts)."""
        B = self.size
        r = torch.cat([torch.arange(v * B + lo, v * B + hi) for v in range(self.n_variants)]).to(self.tokens.device)
        return Batch(self.index[lo:hi], self.tokens[r], self.mask[r], self.edit[lo:hi], self.last[lo:hi],
                     self.group[lo:hi], self.n_variants, self.edit_end[lo:hi],
                     None if self.b_index is None else self.b_index[lo:hi],
                     None if self.host_group is None else self.host_group[lo:hi])  # ``scored`` rebuilt on use

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


@dataclass
class Scored:
    """The next-token predictions that make up the log-probabilities of a batch's a and b sentences.

    Position ``t`` of row ``r`` predicts token ``t + 1``. Sentence a needs every prediction of a real
    token; sentence b only those from its edit on (``t >= edit - 1``): before the edit b's tokens
    and their context are a's, so those predictions are a's and are counted for b from a's row
    (``shared``). Built on the host when the batch is made, so scoring needs no device sync.
    """
    flat: Int[Tensor, "N"]  # r * T + t into the a and b rows' positions
    owner: Int[Tensor, "N"]  # the row (0..2B-1) each prediction counts for
    shared: Int[Tensor, "M"]  # indices into ``flat``: a's predictions inside the shared prefix
    shared_owner: Int[Tensor, "M"]  # B + j: the b row that counts them too

    @classmethod
    def build(cls, mask: Bool[Tensor, "VB T"], edit: Int[Tensor, "B"], device) -> "Scored":
        B, T = edit.shape[0], mask.shape[1]
        t = torch.arange(T - 1)[None, :]
        real = mask[:2 * B, 1:]  # slot t predicts a real token t + 1
        need = torch.cat([real[:B], real[B:] & (t >= edit[:, None] - 1)])
        r, pos = need.nonzero(as_tuple=True)
        shared = ((r < B) & (pos < edit[r.clamp(max=B - 1)] - 1)).nonzero()[:, 0]
        out = [r * T + pos, r, shared, r[shared] + B]
        return cls(*(x.to(device, non_blocking=True) for x in out))

    @property
    def n(self) -> int:
        return int(self.flat.shape[0])


FULL_BATCH_TOKENS = 32  # batch_tokens=null: batches of sentences up to this long hold batch_size pairs


def batch_token_budget(batch_tokens: int | None, batch_size: int, rows_per_pair: int) -> int:
    """Padded tokens one forward pass may hold (every row of the batch: a, b and the controls):
    ``batch_tokens``, or where it is None ``batch_size`` pairs of ``FULL_BATCH_TOKENS``-token
    sentences, so that a batch of long sentences holds fewer pairs and needs no more memory than a
    full batch of 32-token ones."""
    return int(batch_tokens) if batch_tokens else batch_size * rows_per_pair * FULL_BATCH_TOKENS


def _padded_len(tokenized: list[TokenizedPair], idx: list[int]) -> int:
    """The padded length of a batch of the pairs ``idx``: BOS and the longest sentence."""
    return 1 + max(max(tokenized[i].n_tokens, tokenized[i].n_tokens_b) for i in idx)


def _cuts(order: list[int], tokenized: list[TokenizedPair], batch_size: int, rows: int,
          budget: int | None) -> list[int]:
    """Batch boundaries in ``order`` (pairs sorted by length): equal sizes of at most ``batch_size``
    pairs (no small last batch, so the batch of the longest sentences is as full as any other and
    peak memory does not depend on how the pair count divides); then each batch whose padded
    tokens (``rows`` x pairs x its longest sentence) pass ``budget`` is cut into equal parts that fit."""
    n_batches = -(-len(order) // batch_size)
    cuts = [round(k * len(order) / n_batches) for k in range(n_batches + 1)] if order else [0]
    if not budget:
        return cuts
    out = [0]
    for start, stop in zip(cuts[:-1], cuts[1:]):
        T = _padded_len(tokenized, order[start:stop])
        per_pass = max(1, budget // (rows * T))  # pairs of this length one pass may hold
        parts = -(-(stop - start) // per_pass)
        out += [start + round(k * (stop - start) / parts) for k in range(1, parts + 1)]
    return out


def make_batches(tokenized: list[TokenizedPair], groups: list[int], bos_id: int, pad_id: int,
                 batch_size: int, device: torch.device | str = "cpu",
                 controls: list[list[list[int]]] | None = None, max_tokens: int | None = None) -> list[Batch]:
    """Sort pairs by length (stable) and cut them into padded batches of equal sizes, at most
    ``batch_size`` pairs each and, where ``max_tokens`` is given, at most that many padded tokens
    over all rows (``batch_token_budget``): long sentences make smaller batches.

    ``controls[i]`` optionally holds K token-id lists for pair ``i``: ``a`` with the edited token
    replaced; they become variants 2..K+1 of the batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(tokenized)), key=lambda i: (tokenized[i].n_tokens, i))
    n_controls = len(controls[0]) if controls else 0
    cuts = _cuts(order, tokenized, batch_size, 2 + n_controls, max_tokens)
    batches = []
    for start, stop in zip(cuts[:-1], cuts[1:]):
        idx = order[start:stop]
        B = len(idx)
        T = _padded_len(tokenized, idx)
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
        edit_end, b_index = None, None
        if not all(tokenized[i].one_token for i in idx):
            edit_end = torch.tensor([tokenized[i].edit_end_a + 1 for i in idx], dtype=torch.long)
            end_b = torch.tensor([tokenized[i].edit_end_b + 1 for i in idx], dtype=torch.long)
            shift = torch.tensor([tokenized[i].n_tokens_b - tokenized[i].n_tokens for i in idx], dtype=torch.long)
            t = torch.arange(T)[None, :]
            b_index = torch.where(t > edit_end[:, None], t + shift[:, None], torch.minimum(t, end_b[:, None]))
            b_index = b_index.clamp(0, T - 1).to(device)
            edit_end = edit_end.to(device)
        batches.append(Batch(torch.tensor(idx), tokens.to(device), mask.to(device), edit.to(device),
                             last.to(device), group.to(device), V, edit_end, b_index, group,
                             Scored.build(mask, edit, device)))
    return batches


HookFn = Callable[[Tensor, object], Tensor | None]


def forward(bridge, batch: Batch, fwd_hooks: list[tuple[str, HookFn]] | None = None) -> Float[Tensor, "R T vocab"]:
    """One forward pass of the batch with temporary hooks; returns the logits of every row and
    position (``pair_logprobs`` computes the a and b log-probabilities without them)."""
    with torch.inference_mode():
        with bridge.hooks(fwd_hooks=list(fwd_hooks or [])):
            return bridge(batch.tokens, attention_mask=batch.mask.long(), return_type="logits")


def pair_logprobs(model, batch: Batch, fwd_hooks: list[tuple[str, HookFn]] | None = None,
                  chunk: int | None = None, fused: bool | None = None) -> Float[Tensor, "2B"]:
    """One forward pass of the batch with temporary hooks; returns log P(sentence | BOS) of the a and
    b sentences (rows ``0..2B-1``), float64, as ``sentence_logprobs`` of their full logits would.

    Only the predictions in ``batch.scored_slots()`` are unembedded (``chunk`` at a time, from the
    final normalized residual stream ``ln_final.hook_out``; by default 1,024 on a GPU and on the CPU
    as many as keep a chunk's logits within 16 MB, which the allocator then reuses instead of
    mapping fresh memory for every batch): the real tokens of a, and b from its edit
    on, its shared prefix counted from a's row. Neither padding, nor the control rows, nor b's prefix
    costs a vocabulary-sized product, and the margin log P(a) - log P(b) has no rounding noise from
    the tokens the two sentences share. ``fused``: ``slot_logprobs``'s (a run passes its
    ``analysis.fused``).
    """
    sc = batch.scored_slots()
    n = 2 * batch.size
    kept: dict[str, Tensor] = {}

    def keep_final(x: Tensor, hook=None) -> None:
        kept["h"] = x[:n].flatten(0, 1).index_select(0, sc.flat)

    with torch.inference_mode():
        with model.hooks(fwd_hooks=list(fwd_hooks or []) + [("ln_final.hook_out", keep_final)]):
            # no logits from the pass itself: the plain tree runs its decoder alone; the bridge runs
            # the Hugging Face model, which computes the last position's only
            model(batch.tokens, attention_mask=batch.mask.long(), return_type=None, logits_to_keep=1)
        target = batch.tokens.flatten().index_select(0, sc.flat + 1)
        lp = slot_logprobs(model, kept["h"], target, chunk, fused)
        out = torch.zeros(n, dtype=torch.float64, device=lp.device).index_add_(0, sc.owner, lp)
        return out.index_add_(0, sc.shared_owner, lp.index_select(0, sc.shared))


class Unembedding:
    """The final norm's output -> logits as the Hugging Face model computes them: its output embedding,
    then the family's own last step where it has one (Gemma 2/3: ``final_logit_softcapping``, tanh
    soft-capping; Granite: division by ``logits_scaling``; Cohere: times ``logit_scale``). Every
    log-probability of the toolkit is computed through it."""

    def __init__(self, hf_model):
        self.linear = hf_model.get_output_embeddings()
        self.weight = self.linear.weight
        c = hf_model.config
        c = getattr(c, "text_config", None) or c
        self.softcap = getattr(c, "final_logit_softcapping", None)
        scale = 1.0
        if getattr(c, "logits_scaling", None):
            scale /= float(c.logits_scaling)
        if getattr(c, "logit_scale", None) is not None and c.model_type.startswith("cohere"):
            scale *= float(c.logit_scale)
        self.scale = scale

    def __call__(self, h: Tensor) -> Tensor:
        x = self.linear(h)
        if self.scale != 1.0:
            x = x * self.scale
        if self.softcap:
            x = torch.tanh(x / self.softcap) * self.softcap
        return x


def slot_logprobs(model, h: Float[Tensor, "S d_model"], target: Int[Tensor, "S"],
                  chunk: int | None = None, fused: bool | None = None) -> Float[Tensor, "S"]:
    """log p(target) of the final norm's output ``h`` at ``S`` slots: unembedded
    (``Unembedding`` of ``original_model``) and log-softmaxed in float32 ``chunk`` slots at a
    time (``pair_logprobs`` and activation patching's metric: 1,024 on a GPU, on the CPU as many as keep a chunk's
    logits within 16 MB), float64. ``fused`` (None: on a CUDA device with Triton) takes the
    log-softmax at the targets in one pass over the logits (``interp.kernels.logprobs``; the same
    up to float32 rounding) instead of PyTorch's several."""
    unembed = Unembedding(model.original_model)
    if chunk is None:
        chunk = 1024 if h.is_cuda else max(16, (1 << 22) // unembed.weight.shape[0])
    if fused is None:
        from .kernels import use_fused

        fused = use_fused("auto", h.device)
    own = getattr(model, "private_unembedding", False)  # the bridge's unembedding hands its output to hook points
    out = torch.empty(h.shape[0], dtype=torch.float64, device=h.device)
    for i in range(0, h.shape[0], chunk):
        raw = unembed(h[i:i + chunk])
        if fused:  # reads the logits once and writes nothing over them
            from .kernels.logprobs import target_logprobs

            out[i:i + chunk] = target_logprobs(raw, target[i:i + chunk])
            continue
        lg = raw.float()
        if lg is raw and not own:  # a caller's hook may keep that tensor: do not overwrite it
            lg = lg.clone()
        out[i:i + chunk] = logsoftmax_at_(lg, target[i:i + chunk])
    return out


def logsoftmax_at_(lg: Float[Tensor, "S V"], target: Int[Tensor, "S"]) -> Float[Tensor, "S"]:
    """log p(target) per row of float32 logits ``lg``, PyTorch's way (``slot_logprobs`` off the GPU
    kernel); the log-sum-exp runs in place on ``lg``: no second vocabulary-sized tensor."""
    tgt = lg.gather(-1, target[:, None])[:, 0]
    top = lg.amax(-1, keepdim=True)
    return tgt - lg.sub_(top).exp_().sum(-1).log_().add_(top[:, 0])


def sentence_logprobs(logits: Float[Tensor, "R T vocab"], tokens: Int[Tensor, "R T"],
                      mask: Bool[Tensor, "R T"], chunk: int = 16) -> Float[Tensor, "R"]:
    """log P(sentence | BOS): sum over real tokens 1..last of log p(token_t | tokens_<t), float64.
    Rows go in chunks so the float32 temporaries stay small next to the logits."""
    out = []
    for r0 in range(0, logits.shape[0], chunk):
        lg = logits[r0:r0 + chunk, :-1].float()
        target = tokens[r0:r0 + chunk, 1:]
        lp = lg.gather(-1, target[..., None])[..., 0] - lg.logsumexp(-1)
        out.append((lp.to(torch.float64) * mask[r0:r0 + chunk, 1:]).sum(-1))
    return torch.cat(out)
