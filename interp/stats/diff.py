"""How much each component changes between the two sentences of a pair, streamed over all pairs.

For every hooked site (hook point x layer) and every component ``c`` (a dimension, a head
dimension or a neuron), with ``d = act(a) - act(b)``:

- position modes: ``edit`` (the edited token), ``last`` (the last token), ``after`` (mean over the
  tokens after the edit; pairs whose edit is the last token have none and are left out);
- per mode, the moments over pairs of ``d`` and of ``|d|`` (``after``: mean of ``|d|`` over the
  tokens), kept per group (category) so that per-category and contrast statistics need no
  second pass;
- the component's own spread: the moments of its activation over every sentence token of the
  run (BOS excluded, the prefix shared by a pair counted once).

The normalized score ``mean |d| / spread`` makes components of different scales comparable; the
rank orders components from the most stable (smallest normalized change) up. All state is
float64 power sums about a fixed shift (``stats.Sums``), read as ``Moments``; it grows by
in-place additions batch after batch and merges exactly across shards.
"""

from __future__ import annotations

import weakref

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..engine import Batch
from ..hooks import HOOK_POINTS, HookSite, head_summary
from . import registry as reg
from .moments import Moments, Sums, compact_counts
from .significance import bh_qvalues, welch

HIST_LO, HIST_HI, HIST_BINS = -12.0, 8.0, 2000  # log10 |activation| histogram: 0.01 decades a bin
MEDIAN_EVERY = 8  # the layer's median |activation| is taken over every 8th pair (run-wide index)
POSITION_MODES = reg.MODES  # edit, last, after: the order of the per-pair values' mode axis
CHANNELS = tuple(c.name for c in reg.CHANNELS)  # every channel, in slot order (``interp.stats.registry``)


def reduce_groups(m: Moments) -> Moments:
    """Merge the group axis (dim 0) of a grouped ``Moments`` into one."""
    out = Moments(m.n[0], m.mean[0], m.m2[0])
    for g in range(1, m.n.shape[0]):
        out = out.merge(Moments(m.n[g], m.mean[g], m.m2[g]))
    return out


class DiffStats:
    """The consumer that turns each batch's activations into running difference statistics.

    Per hook point (stacked over its layers) and per group it keeps:
    - ``diff``: moments over pairs of the channels of ``interp.stats.registry`` x position modes x
      components (today ``diff`` = a - b, ``abs`` = |a - b|, and with K control edits ``ctrl`` =
      mean_k |a - c_k|, ``delta`` = abs - ctrl, the paired difference the t-test uses, and
      ``ratio`` = abs / ctrl);
    - ``profile``: moments of |a - b| at each token offset 0..max_offset from the edit;
    and over all sentences (a and b, not the controls) ``spread``: the component's own moments.

    The hooks only keep a reference to each activation during the forward pass; ``consume()``
    then works through the layers of a hook point ``chunk`` at a time: first the per-pair values
    (each channel at each position mode, |a - b| at each offset, NaN where a pair has none; the
    spread's sums), then their per-group sums, added into the state in place. With ``fused`` (on a
    GPU, ``analysis.fused``) both steps are Triton kernels (``interp.kernels.statistics``: one read
    of each activation, no atomics); otherwise PyTorch ops, the reference the kernels are tested
    against. The table columns come from the registry's ``Column`` specs.

    Groups: by default one per category (``groups`` are the category names), which the
    per-category tables need. With ``members`` (group name -> its categories; the run does not
    write per-category tables, ``analysis.by_category``) a group is a block of categories, and the
    state is as many times smaller: statistics over a set of categories (the contrast's sides, the
    grammar pairs of ``directions``) need every category of the set to be a union of blocks
    (``group_index``).
    """

    def __init__(self, sites: list[HookSite], groups: list[str], positions=POSITION_MODES,
                 device: torch.device | str = "cpu", n_controls: int = 0, max_offset: int = 15,
                 detail_pairs: int = 0, detail_k: int = 5, chunk: int = 8, fused: bool = False,
                 keep_values: dict[str, list[str]] | None = None, value_capacity: int = 0,
                 members: dict[str, list[str]] | None = None):
        bad = [p for p in positions if p not in POSITION_MODES]
        if bad:
            raise ValueError(f"analysis.positions: {bad} not in {POSITION_MODES}")
        self.sites = sites
        self.point_sites: dict[str, list[HookSite]] = {}
        for site in sites:
            self.point_sites.setdefault(site.point, []).append(site)
        # one score per attention head (points with a per-head view, ``z``: ``z_head``): the norm of
        # the head's change over its d_head dimensions
        self.derived: dict[str, list[HookSite]] = {}
        self.head_points = {p: head_summary(p) for p in self.point_sites if p in HOOK_POINTS and HOOK_POINTS[p].heads}
        for p, d in self.head_points.items():
            self.derived[d] = [HookSite(d, x.layer, x.name, "head") for x in self.point_sites[p]]
        self.groups = list(groups)
        # group -> its categories (None: each group is the category of its name)
        self.members = None if members is None else {g: list(members[g]) for g in self.groups}
        self.positions = list(positions)
        self.device = device
        self.n_controls = int(n_controls)
        self.channels = reg.channel_names(self.n_controls)
        self.max_offset = int(max_offset)
        self.detail_pairs = int(detail_pairs) if int(detail_pairs) >= 0 else 2 ** 62  # < 0: every pair
        self.detail_k = int(detail_k)
        self.chunk = max(1, int(chunk))
        self.fused = bool(fused)  # per-pair values from the Triton kernels instead of PyTorch ops
        self.diff: dict[str, Sums | Moments] = {}  # per point: [L, G, CH, M, C] (Moments only as loaded)
        self.profile: dict[str, Sums | Moments] = {}  # [L, G, O, C]
        self.spread: dict[str, Sums | Moments] = {}  # [L, C]
        self.shapes: dict[str, tuple[int, ...]] = {}  # component shape per point, e.g. (H, d_head)
        self._unshifted: dict[tuple[str, str], set[int]] = {}  # layers of a state still without a shift
        self.details: list[dict] = []  # staged per-pair drill-down tensors
        self._captured: tuple[Batch, dict] | None = None  # what hooks() filled, for consume()
        # on the CPU the hooks copy each activation into buffers kept from batch to batch (``_Arena``)
        self.arena = torch.device(device).type == "cpu"
        self._arena = _Arena()
        # per-pair values kept for the clustered statistics and pair_values.parquet: hook point ->
        # position modes (of ``positions``); per point a list of (first layer, pair indices [B],
        # float32 [B, S, 2, M', C]: |a - b| and the control mean)
        self.keep_values = {p: [m for m in self.positions if m in ms]
                            for p, ms in (keep_values or {}).items() if self.n_controls}
        self.values: dict[str, list[tuple[int, np.ndarray, np.ndarray]]] = {}
        self._pv_cache: dict[str, tuple[int, tuple[np.ndarray, np.ndarray]]] = {}
        self.value_capacity = int(value_capacity)  # pairs this state will see (GPU: pinned staging size)
        self._staged: dict[tuple[str, int], dict] = {}  # GPU: (point, first layer) -> pinned rows
        # massive activations (Sun et al. 2024), over every token of a and b, BOS included: per
        # point the max |activation| per component [L, C] and a histogram of log10 |activation| per
        # layer [L, HIST_BINS] (its median is the layer's median magnitude)
        self.absmax: dict[str, Tensor] = {}
        self.abshist: dict[str, Tensor] = {}

    def _empty(self) -> "DiffStats":
        """An empty state with the same layout and settings."""
        return DiffStats(self.sites, self.groups, self.positions, self.device, self.n_controls,
                         self.max_offset, self.detail_pairs, self.detail_k, self.chunk, self.fused,
                         self.keep_values, self.value_capacity, self.members)

    @property
    def per_category(self) -> bool:
        """Whether the groups are the categories (per-category tables can be computed)."""
        return self.members is None

    @property
    def categories(self) -> list[str]:
        """Every category of the state: the groups, or (blocks of categories) the members, sorted as
        a run orders its categories."""
        if self.members is None:
            return list(self.groups)
        return sorted(c for g in self.groups for c in self.members[g])

    def group_index(self, categories: list[str]) -> list[int]:
        """The groups that together hold exactly ``categories`` (category names, in the order they
        first appear); ``ValueError`` when a group holds some of them and other categories too."""
        if self.members is None:
            return [self.groups.index(c) for c in categories]
        owner = {c: i for i, g in enumerate(self.groups) for c in self.members[g]}
        want = set(categories)
        out: list[int] = []
        for c in categories:
            i = owner[c]
            if i not in out:
                if not set(self.members[self.groups[i]]) <= want:
                    raise ValueError(f"the statistics keep {self.groups[i]!r} = {self.members[self.groups[i]]} "
                                     f"as one group; {sorted(want)} splits it (analysis.by_category=true keeps "
                                     "every category)")
                out.append(i)
        return out

    def _get(self, kind: str, site: HookSite) -> Moments | None:
        m = getattr(self, kind).get(site.point)
        if m is None:
            return None
        i = {**self.point_sites, **self.derived}[site.point].index(site)
        return Moments(m.n[i], m.mean[i], m.m2[i])

    def _spread(self, site: HookSite) -> tuple[Tensor, Tensor]:
        """(mean, std) of the component over sentence tokens. For a head (``z_head``): the norm of
        its mean vector and sqrt(sum of its dimensions' variances), exact from the ``z`` moments."""
        point = next((p for p, d in self.head_points.items() if d == site.point), None)
        if point is None:
            sp = self._get("spread", site)
            return sp.mean, sp.std
        sp = self._get("spread", HookSite(point, site.layer, site.name, HOOK_POINTS[point].unit))
        dh = self.shapes[point][-1]
        var = torch.nan_to_num(sp.var).reshape(-1, dh).sum(-1)
        return sp.mean.reshape(-1, dh).norm(dim=-1), var.sqrt()

    # ------------------------------------------------------------ streaming
    def capture(self, batch: Batch) -> tuple[list[tuple[str, callable]], tuple[Batch, dict]]:
        """Temporary hooks that keep a reference to each activation of this batch, and the capture
        they fill, to be folded in later by ``consume(capture)``."""
        acts = _Captured({p: [None] * len(ss) for p, ss in self.point_sites.items()})
        keep = self._arena.claim(acts) if self.arena else None

        def make(point: str, i: int):
            def hook(act: Tensor, hook=None):
                acts[point][i] = act.detach() if keep is None or act.device.type != "cpu" else keep((point, i), act)
                return None
            return hook

        hooks = [(s.name, make(p, i)) for p, ss in self.point_sites.items() for i, s in enumerate(ss)]
        return hooks, (batch, acts)

    def hooks(self, batch: Batch) -> list[tuple[str, callable]]:
        """``capture(batch)``, the capture kept here for the next ``consume()``."""
        hooks, self._captured = self.capture(batch)
        return hooks

    def consume(self, captured: tuple[Batch, dict] | None = None) -> None:
        """Fold the kept activations of the batch into the running state, in place, then drop them.

        Per hook point, ``chunk`` layers at a time: per-pair values (the fused kernel on a GPU, the
        PyTorch ops otherwise), then their sums per group added into the float64 state."""
        if captured is None:
            captured, self._captured = self._captured, None
        if captured is None:
            raise RuntimeError("consume() without hooks(batch) and a forward pass")
        batch, acts = captured
        try:
            self._consume(batch, acts)
        finally:
            self._arena.release(acts)

    def release(self, captured: tuple[Batch, dict]) -> None:
        """Give a capture's activation buffers back without taking its statistics (a failed batch)."""
        self._arena.release(captured[1])

    def drop_buffers(self) -> None:
        """Free the activation buffers (after the last batch; later captures make new ones)."""
        self._arena = _Arena()

    def _consume(self, batch: Batch, acts: dict) -> None:
        if batch.n_variants != 2 + self.n_controls:
            raise ValueError(f"a batch of {batch.n_variants} sentences per pair, but the statistics expect "
                             f"2 + {self.n_controls} controls")
        kern = None
        if self.fused:
            from ..kernels import statistics as kern  # imports Triton
        plan = kern.BatchPlan(batch, len(self.groups)) if kern is not None else None
        seg = plan.seg if plan is not None else None
        picked = median_rows(batch)
        if picked is not None:  # once per batch, not per chunk
            picked = picked.to(batch.mask.device, non_blocking=True)
        for point, ss in self.point_sites.items():
            missing = [s.name for s, a in zip(ss, acts[point]) if a is None]
            if missing:
                raise RuntimeError(f"hooks did not fire for {missing[:3]}")
            self.shapes.setdefault(point, tuple(acts[point][0].shape[2:]))
            heads = self.head_points.get(point)
            kernel = self.fused and heads is None  # per-head norms (z_head) take the PyTorch path
            for c0 in range(0, len(ss), self.chunk):
                chunk = [a.flatten(2) for a in acts[point][c0:c0 + self.chunk]]
                if kernel:  # the kernel's pass also gives each pair's largest |activation|, folded with the spread
                    vals, prof, detail = self._values_fused(point, c0, len(ss), chunk, batch, plan)
                    self._magnitudes(point, c0, len(ss), chunk, batch, picked, fused=True)
                    self._fold(point, c0, vals, prof, detail, batch, seg)
                    continue
                self._magnitudes(point, c0, len(ss), chunk, batch, picked)
                X = chunk[0][None] if len(chunk) == 1 else torch.stack(chunk)  # [S, VB, T, C]
                self._fold(point, c0, *self._values(point, c0, X, batch), batch, seg)
                if heads is not None:
                    self._fold(heads, c0, *self._values(heads, c0, X, batch, head_dim=self.shapes[point][-1]),
                               batch, seg)
                del X

    def _magnitude_state(self, point: str, L: int, C: int) -> Tensor:
        """The running max |activation| of a hook point [L, C] (with its histogram, made on first use)."""
        if point not in self.absmax:
            self.absmax[point] = torch.zeros((L, C), dtype=torch.float32, device=self.device)
            self.abshist[point] = torch.zeros((L, HIST_BINS), dtype=torch.float64, device=self.device)
        return self.absmax[point]

    def _magnitudes(self, point: str, c0: int, L: int, chunk: list[Tensor], batch: Batch,
                    picked: Tensor | None, fused: bool = False) -> None:
        """Fold the chunk's |activation| over every real token of a and b (BOS included) into the
        running max per component, and that of every ``MEDIAN_EVERY``-th pair (by run-wide index,
        so shards and one pass take the same pairs) into the per-layer histogram of log10
        |activation| whose median the massive flag compares with (``picked``: their a and b rows,
        ``median_rows``). Masked by value, not by index: no device sync. With ``fused`` the maximum
        is already folded (``_values_fused``: the pair kernel finds each pair's largest |activation|
        in its own pass) and the histogram is counted by ``kernels.statistics.abs_histogram_`` (the
        same bins as ``torch.histc`` on CUDA, from the activations in place)."""
        B = batch.size
        live = batch.mask[:2 * B, :, None]  # [2B, T, 1]
        self._magnitude_state(point, L, chunk[0].shape[-1])
        rows = picked  # on the batch's device (``_consume`` moved it once per batch)
        S = len(chunk)
        if not fused:
            for j, x in enumerate(chunk):
                mx = torch.where(live, x[:2 * B].abs(), 0).amax((0, 1)).float()
                self.absmax[point][c0 + j] = torch.maximum(self.absmax[point][c0 + j], mx.to(self.absmax[point].device))
        if rows is None:
            return
        if fused:  # one kernel reads the rows and counts their bins
            from ..kernels.statistics import abs_histogram_

            abs_histogram_(self.abshist[point][c0:c0 + S], chunk, rows, batch.mask, HIST_LO, HIST_HI,
                           10 ** HIST_LO, HIST_HI - 1e-3)
            return
        # the chunk's layers at once (the same operations per element); one histogram per layer
        v = torch.stack([x[:2 * B].index_select(0, rows) for x in chunk]).float().abs_()  # [S, R, T, C]
        # padding goes below the histogram's range, which histc leaves out
        lg = torch.where(live.index_select(0, rows), v.clamp_(min=10 ** HIST_LO).log10_().clamp_(max=HIST_HI - 1e-3),
                         HIST_LO - 1.0)
        h = torch.stack([torch.histc(lg[j], HIST_BINS, HIST_LO, HIST_HI) for j in range(S)])
        self.abshist[point][c0:c0 + S] += h.to(torch.float64).to(self.abshist[point].device)

    def _keep(self, point: str, c0: int, vals: Tensor, batch: Batch) -> None:
        """Stage the chunk's per-pair |a - b| and control mean at the kept position modes. On a GPU
        they go to pinned host memory by an asynchronous copy (no device sync: the batch loop keeps
        its overlap); ``pair_values`` waits for the copies before reading them."""
        modes = self.keep_values.get(point)
        if not modes:
            return
        ch = [self.channels.index("abs"), self.channels.index("ctrl")]
        mi = torch.tensor([self.positions.index(m) for m in modes], device=vals.device)
        v = vals[:, :, ch].index_select(3, mi).float()  # [B, S, 2, M', C]
        idx = batch.index.cpu().numpy().copy()
        if not v.is_cuda:
            self.values.setdefault(point, []).append((c0, idx, v.numpy().copy()))
            return
        slot = self._staged.get((point, c0))
        need = (slot["off"] if slot else 0) + v.shape[0]
        if slot is None or need > slot["buf"].shape[0]:  # first use, or more pairs than planned: a new buffer
            if slot is not None:
                self._flush_staged(point, c0)
            rows = max(self.value_capacity, v.shape[0])
            slot = self._staged[(point, c0)] = {
                "buf": torch.empty((rows, *v.shape[1:]), dtype=torch.float32, pin_memory=True), "off": 0, "idx": []}
        slot["buf"][slot["off"]:slot["off"] + v.shape[0]].copy_(v, non_blocking=True)
        slot["off"] += v.shape[0]
        slot["idx"].append(idx)

    def _flush_staged(self, point: str, c0: int) -> None:
        """Move a pinned staging buffer's rows into ``values`` (after the copies are done)."""
        slot = self._staged.pop((point, c0), None)
        if slot and slot["off"]:
            torch.cuda.synchronize()
            rows = slot["buf"][:slot["off"]].numpy()
            self.values.setdefault(point, []).append((c0, np.concatenate(slot["idx"]), rows))

    def flush_values(self) -> None:
        """Move every staged (GPU) chunk of per-pair values into ``values``: before anything reads
        ``values`` as a whole (the run's file, a checkpoint, a merge)."""
        for key in list(self._staged):
            self._flush_staged(*key)

    def pair_values(self, point: str) -> tuple[np.ndarray, np.ndarray] | None:
        """The kept per-pair values of a hook point: (pair indices [N] ascending, float32
        [N, L, 2, M', C]: |a - b| and the control mean at ``keep_values[point]``), or None."""
        for key in [k for k in self._staged if k[0] == point]:
            self._flush_staged(*key)
        parts = self.values.get(point)
        if not parts:
            return None
        cached = self._pv_cache.get(point)
        if cached is not None and cached[0] == len(parts):
            return cached[1]
        L = len(self.point_sites.get(point) or self.derived[point])
        index = np.unique(np.concatenate([idx for _, idx, _ in parts]))
        first = parts[0][2]
        out = np.full((len(index), L, *first.shape[2:]), np.nan, dtype=np.float32)
        for c0, idx, v in parts:  # chunks of layers (a run) or whole blocks (a checkpoint, a shard)
            out[np.searchsorted(index, idx), c0:c0 + v.shape[1]] = v
        self.values[point] = [(0, index, out)]  # one block from now on: the chunks' memory is freed
        self._pv_cache[point] = (1, (index, out))
        return index, out

    def pair_value_state(self) -> dict[str, Tensor]:
        """The kept per-pair values as tensors (checkpoints; ``load_pair_value_state`` reads them)."""
        out = {}
        self.flush_values()
        for point in self.values:
            index, v = self.pair_values(point)
            out[f"{point}/index"] = torch.from_numpy(index)
            out[f"{point}/values"] = torch.from_numpy(v)
        return out

    def load_pair_value_state(self, state: dict[str, Tensor]) -> None:
        for key in state:
            if key.endswith("/index"):
                point = key[:-len("/index")]
                self.values[point] = [(0, state[key].numpy(), state[f"{point}/values"].numpy())]
                self._pv_cache.pop(point, None)

    def _sums(self, kind: str, point: str, lo: int, hi: int, shape: tuple[int, ...], shift) -> Sums:
        """The running sums of ``kind`` at ``point`` (full shape ``shape``), created on first use or
        converted from loaded moments. ``shift()`` gives the layers ``lo:hi`` their shift while
        they are still empty (a grouped state shares one shift over its groups)."""
        state = getattr(self, kind)
        cur = state.get(point)
        grouped = kind != "spread"
        if not isinstance(cur, Sums):
            if cur is None:
                cur = Sums.zeros(shape, torch.zeros((shape[0], 1, *shape[2:]) if grouped else shape,
                                                    dtype=torch.float64, device=self.device))
                self._unshifted[(kind, point)] = set(range(shape[0]))
            else:  # loaded: about the mean over the groups
                n = cur.n.sum(1, keepdim=True) if grouped else cur.n
                mean = ((cur.n * cur.mean).sum(1, keepdim=True) / n.clamp(min=1e-300)) if grouped else cur.mean
                cur = Sums.zeros(shape, mean.to(self.device)).merge(cur.to(self.device))
            state[point] = cur
        todo = self._unshifted.get((kind, point))
        if todo and lo in todo:
            cur.shift[lo:hi] = shift().to(torch.float64)
            todo.difference_update(range(lo, hi))
        return cur

    def _fold(self, point: str, c0: int, vals: Tensor, prof: Tensor, detail, batch: Batch, seg) -> None:
        """Add one chunk's per-pair values into the state: vals [B, S, CH, 3, C] (modes ``POSITION_MODES``),
        prof [B, S, O, C], both NaN where a pair has no value (the spread is already folded);
        ``detail()``: (a, a - b) of the drill-down pairs, staged now that the spread includes
        this batch."""
        S = vals.shape[1]
        L = len(self.point_sites[point] if point in self.point_sites else self.derived[point])
        G = len(self.groups)
        if detail is not None:
            self._stage_detail(point, c0, batch, batch.index < self.detail_pairs, *detail())
        if self.positions != list(POSITION_MODES):
            vals = vals.index_select(3, torch.tensor([POSITION_MODES.index(m) for m in self.positions], device=vals.device))
        self._keep(point, c0, vals, batch)

        def first(x: Tensor, full: tuple[int, ...]):  # the chunk's shift: the batch's mean value (0 where none)
            def shift():
                m = torch.nan_to_num(x.nanmean(0))  # [S, *R]
                out = torch.zeros((S, *full), dtype=m.dtype, device=m.device)
                out[(slice(None), *(slice(0, k) for k in m.shape[1:]))] = m
                return out.unsqueeze(1)
            return shift

        O = self.max_offset + 1
        for kind, x, full in (("diff", vals, vals.shape[2:]), ("profile", prof, (O, prof.shape[-1]))):
            st = self._sums(kind, point, c0, c0 + S, (L, G, *full), first(x, tuple(full)))
            if seg is not None:  # fused: the kernels are imported
                from ..kernels.statistics import group_sums_, leading_block

                if leading_block(x, st):
                    group_sums_(st, c0, x, seg)
                    continue
            st.add_grouped_(c0, x, batch.group, G)

    def _spread_state(self, point: str, c0: int, S: int, C: int, a_last) -> Sums:
        """The running spread sums of the layers ``c0:c0 + S`` (``C`` components). ``a_last()``
        [S, B, C]: sentence a's activation at its last token; its mean over the batch is the shift of
        layers not seen before (called only then). The batch's sums are added about a centre near
        the data: ``Sums.add_sums_`` (PyTorch) or ``kernels.statistics.fold_spread_`` (fused)."""
        return self._sums("spread", point, c0, c0 + S, (len(self.point_sites[point]), C),
                          lambda: a_last().float().mean(1))

    def _values_fused(self, point: str, c0: int, L: int, acts: list[Tensor], batch: Batch, plan):
        """``_values`` through the fused kernel (``interp.kernels.statistics``): each activation is
        read once. The kernel's spread sums and each pair's largest |activation| are folded into the
        state here (``fold_spread_``: the massive flag's running maximum, ``_magnitudes``'s part).
        ``plan``: the batch's ``kernels.statistics.BatchPlan``."""
        from ..kernels.statistics import fold_spread_, pair_values

        B, S, C = batch.size, len(acts), acts[0].shape[-1]
        st = self._spread_state(point, c0, S, C, lambda: torch.stack(
            [x[torch.arange(B, device=x.device), batch.last] for x in acts]))
        ref = st.shift[c0:c0 + S].float()  # the state's own shift: no per-batch centre to compute
        vals, prof, spread, amax = pair_values(acts, batch, self.n_controls, self.max_offset, ref, last_b=plan.last_b)
        fold_spread_(st, c0, spread, plan.count, self._magnitude_state(point, L, C), amax)
        detail = None
        if bool((batch.index < self.detail_pairs).any()):  # host check: no device sync
            def detail():
                rows = (batch.index < self.detail_pairs).nonzero()[:, 0].to(vals.device)
                a = torch.stack([x[rows] for x in acts]).float()
                b = torch.stack([x[B + rows] for x in acts]).float()
                if batch.b_index is not None:
                    b = b[:, torch.arange(len(rows), device=b.device)[:, None], batch.b_index[rows]]
                return a, a - b
        return vals, prof, detail

    def _values(self, point: str, c0: int, X: Tensor, batch: Batch, head_dim: int | None = None):
        """Per-pair values of ``S`` layers of one hook point, X: [S, V*B, T, C], with PyTorch ops:
        the reference for the fused kernel, and the path on the CPU. Returns vals
        [B, S, CH, 3, C] (channels ``channels``, modes ``POSITION_MODES``) and prof [B, S, O, C]
        (NaN where a pair has no value), and the drill-down callback; the spread's sums are folded
        into the state here, about its shift, as the kernel path does.

        With ``head_dim`` the units are heads: every change is the norm of the head's change vector
        (``diff`` and ``abs`` channels alike), and the spread is left to ``_spread``."""
        B, K, T = batch.size, self.n_controls, batch.seq_len
        dev = X.device
        ar = torch.arange(B, device=dev)
        after = batch.after_mask().to(torch.float32)  # [B, T]
        n_after = after.sum(1)
        has_after = (n_after > 0)[None, :, None]

        def at_modes(v: Tensor) -> Tensor:
            """[S, B, T, C] per-token values -> [S, B, 3, C] at edit, last, after (NaN: none)."""
            aft = (after[None, :, None, :] @ v).squeeze(2) / n_after.clamp(min=1)[:, None]  # [S, B, C]
            return torch.stack([v[:, ar, batch.edit], v[:, ar, batch.last],
                                torch.where(has_after, aft, float("nan"))], 2)

        if head_dim:
            def mag(v: Tensor) -> Tensor:
                return v.unflatten(-1, (-1, head_dim)).norm(dim=-1)
        else:
            mag = torch.abs
        a = X[:, :B].float()
        b = X[:, B:2 * B].float()
        b_al = b if batch.b_index is None else b[:, ar[:, None], batch.b_index]  # b on a's positions
        d = a - b_al  # [S, B, T, C]
        ad = mag(d)
        absval = at_modes(ad)
        ctrl = None
        if K:
            ctrl = mag(a - X[:, 2 * B:3 * B].float())
            for k in range(1, K):  # the modes are linear in the per-token values: one at_modes for the mean
                ctrl += mag(a - X[:, (2 + k) * B:(3 + k) * B].float())
            ctrl = at_modes(ctrl) / K
        mv = reg.ModeValues(absval if head_dim else at_modes(d), absval, ctrl)
        chans = [c.per_pair(mv) for c in reg.channels(K)]  # in slot order
        vals = torch.stack(chans, 2).movedim(1, 0).contiguous()  # [B, S, CH, 3, C]
        # offsets reachable in this batch (edit >= 1, so edit + o <= T - 1 needs o <= T - 2); the
        # state's later offsets get nothing from it
        off_pos = batch.edit[:, None] + torch.arange(min(self.max_offset + 1, T - 1), device=dev)[None, :]  # [B, O']
        prof = ad[:, ar[:, None], off_pos.clamp(max=T - 1)]  # [S, B, O, C]
        prof = torch.where((off_pos <= batch.last[:, None])[None, :, :, None], prof, float("nan")).movedim(1, 0).contiguous()
        if head_dim:
            return vals, prof, None
        # spread: sums over a's tokens and b's own tokens from the edit on (the shared prefix counted
        # once), about the batch's mean of a at its last token (near the data: float32 sums; a centre
        # that depends on the batch alone, so shards and a single pass sum the same numbers)
        a_last = a[:, ar, batch.last]
        st = self._spread_state(point, c0, a_last.shape[0], a_last.shape[-1], lambda: a_last)
        ref = a_last.mean(1)
        distinct = batch.distinct_mask()[:2 * B].to(torch.float32)  # [2B, T]
        s1 = torch.zeros_like(ref)
        s2 = torch.zeros_like(ref)
        for x, w in ((a, distinct[:B]), (b, distinct[B:])):
            y = (x - ref[:, None, None, :]).flatten(1, 2)  # [S, B*T, C]
            wv = w.reshape(1, 1, -1)
            s1 += (wv @ y).squeeze(1)
            s2 += (wv @ y.mul_(y)).squeeze(1)
        st.add_sums_(c0, distinct.sum().to(torch.float64), s1, s2, center=ref)
        detail = None
        if bool((batch.index < self.detail_pairs).any()):  # host check: no device sync
            sel = (batch.index < self.detail_pairs).to(dev)
            detail = lambda: (a[:, sel], d[:, sel])  # noqa: E731
        return vals, prof, detail

    def _stage_detail(self, point: str, c0: int, batch: Batch, detail: Tensor, a: Tensor, d: Tensor) -> None:
        """Per-pair drill-down of the pairs ``detail`` (host bool [B]); a, d: [S, n_detail, T, C].
        ||a-b|| and ||a|| at every position; the top-k most changed and most stable components at the
        edit, normalized by the spread estimated from the pairs so far (this batch included)."""
        S, nd = a.shape[0], a.shape[1]
        sel = detail.to(a.device)
        edit = batch.edit[sel]
        est = self.spread[point].std[c0:c0 + S].float()[:, None]  # [S, 1, C]: the running spread
        live = est > 0
        e = d[:, torch.arange(nd, device=d.device), edit].abs()  # [S, nd, C]
        z = torch.where(live, e / est.clamp(min=1e-30), float("nan"))
        k = min(self.detail_k, int(live.sum(-1).min()))
        top = torch.where(live, z, float("-inf")).topk(k, -1)
        low = torch.where(live, z, float("inf")).topk(k, -1, largest=False)
        self.details.append({
            "sites": self.point_sites[point][c0:c0 + S], "index": batch.index[detail],
            "edit": edit, "last": batch.last[sel],
            "diff_norm": d.norm(dim=-1), "a_norm": a.norm(dim=-1),
            "top_idx": top.indices, "top_val": top.values,
            "top_abs": e.gather(-1, top.indices),
            "low_idx": low.indices, "low_val": low.values,
            "low_abs": e.gather(-1, low.indices),
        })

    def all_sites(self) -> list[HookSite]:
        """The hooked sites and the derived ones (``z_head``: one unit per attention head)."""
        return self.sites + [x for ss in self.derived.values() for x in ss]

    # ------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Tensor]:
        """The mergeable state: per kind and point the float64 sums (``Sums.state_dict``), the
        counts ``n`` compact where they are the same for every component (``compact_counts``: its
        component axis of size 1, broadcast back exactly on load), and the magnitudes."""
        out = {}
        for kind in ("diff", "spread", "profile"):
            for point, m in getattr(self, kind).items():
                part = m.state_dict(f"{kind}/{point}/")
                part[f"{kind}/{point}/n"] = compact_counts(part[f"{kind}/{point}/n"])
                out.update(part)
        for kind in ("absmax", "abshist"):
            for point, t in getattr(self, kind).items():
                out[f"{kind}/{point}"] = t
        return out

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for point in [*self.point_sites, *self.derived]:
            for kind in ("diff", "spread", "profile"):
                if f"{kind}/{point}/n" in state:
                    getattr(self, kind)[point] = Sums.from_state_dict(state, f"{kind}/{point}/").to(self.device)
            for kind in ("absmax", "abshist"):  # runs before these were kept have none
                if f"{kind}/{point}" in state:
                    getattr(self, kind)[point] = state[f"{kind}/{point}"].to(self.device)

    def merge(self, other: "DiffStats") -> "DiffStats":
        if (other.groups, other.members, other.positions, other.n_controls, other.max_offset, other.sites) != \
                (self.groups, self.members, self.positions, self.n_controls, self.max_offset, self.sites):
            raise ValueError("cannot merge statistics of runs with different groups, position modes, "
                             "control counts, offsets or hook sites")
        if self.keep_values != other.keep_values:
            raise ValueError("cannot merge statistics that kept per-pair values of different hook points or "
                             f"position modes ({self.keep_values} vs {other.keep_values})")
        out = self._empty()
        out.shapes = {**other.shapes, **self.shapes}
        out.details = self.details + other.details
        self.flush_values()
        other.flush_values()
        for point in set(self.values) | set(other.values):
            out.values[point] = self.values.get(point, []) + other.values.get(point, [])
        for point in set(self.absmax) | set(other.absmax):
            if point in self.absmax and point in other.absmax:
                out.absmax[point] = torch.maximum(self.absmax[point], other.absmax[point].to(self.absmax[point].device))
                out.abshist[point] = self.abshist[point] + other.abshist[point].to(self.abshist[point].device)
            else:
                src = self if point in self.absmax else other
                out.absmax[point], out.abshist[point] = src.absmax[point], src.abshist[point]
        for kind in ("diff", "spread", "profile"):
            mine, theirs, dest = getattr(self, kind), getattr(other, kind), getattr(out, kind)
            for name in set(mine) | set(theirs):
                if name in mine and name in theirs:
                    dest[name] = mine[name].merge(theirs[name])
                else:
                    dest[name] = (mine if name in mine else theirs)[name]
        return out

    # ------------------------------------------------------------ results
    def _moments(self, name: HookSite, groups: list[str] | None = None) -> Moments:
        """The site's diff moments merged over the categories ``groups`` (all when None): [CH, M, C]."""
        g = self._get("diff", name)
        idx = range(len(self.groups)) if groups is None else self.group_index(groups)
        return reduce_groups(Moments(g.n[list(idx)], g.mean[list(idx)], g.m2[list(idx)]))

    def table(self, group: str | None = None, offset_factor: float = 20.0, offset_cv: float = 0.25,
              massive_ratio: float = 1000.0, massive_min: float = 100.0, pair_info: "PairInfo | None" = None,
              level: float = 0.95, rule: str = "equivalence", alpha: float = 0.05, stable_ratio: float = 0.5
              ) -> pd.DataFrame:
        """One row per site x component x position mode (all groups merged unless ``group``).

        Columns: the registry's (``interp.stats.registry``; README "Run directory"), among them the
        moments of a - b and |a - b|, the component's mean and spread, ``normalized`` and ``rank``;
        with controls the ratio of means and its confidence interval at ``level``, the iid paired
        test (``t_stat``, ``p_value``, ``q_value``) and, where the run kept per-pair values and
        ``pair_info`` gives their clusters and embedding distances, the cluster-robust statistics
        (``interp.stats.clustered``). Flags: ``constant`` (spread 0); ``offset_dim`` (rms above
        ``offset_factor`` x the site's median rms and spread below ``offset_cv`` x |mean|);
        ``massive`` (max |activation| over every token, BOS included, >= ``massive_ratio`` x the
        layer's median |activation| and >= ``massive_min``). ``stable``: the rule ``rule``
        (``interp.rules.stable_mask``); ``stable_layers``: in how many layers the same component
        index of the hook point is stable at that position mode.
        """
        frames = []
        for s in self.all_sites():
            if s.point not in self.diff:
                continue
            m = self._moments(s, None if group is None else [group])
            sp_mean, sp_std = self._spread(s)
            spread = sp_std.cpu().numpy()
            act_mean = sp_mean.cpu().numpy()
            rms = np.sqrt(act_mean ** 2 + np.nan_to_num(spread) ** 2)
            med = np.median(rms) if rms.size else np.nan
            offset = (rms > offset_factor * med) & (np.nan_to_num(spread) < offset_cv * np.abs(act_mean))
            constant = ~(np.nan_to_num(spread) > 0)
            max_abs, massive = self._massive(s, len(spread), massive_ratio, massive_min)
            C = spread.shape[0]
            shape = self.shapes.get(s.point, (C,))
            mean, std, n = m.mean.cpu().numpy(), m.std.cpu().numpy(), m.n.cpu().numpy()
            kept = self._site_values(s, group, pair_info)
            for k, mode in enumerate(self.positions):
                at = reg.SiteMode(self.channels, mean, std, n, k, act_mean, spread, constant, offset, massive,
                                  max_abs, level)
                cols = {"hook": s.point, "hook_name": s.name, "layer": s.layer, "component": np.arange(C),
                        "position": mode, **reg.site_columns(at, self.n_controls)}
                if self.n_controls:
                    cols.update(self._clustered(kept, mode, spread, level))
                df = pd.DataFrame(cols)
                if s.point in self.head_points:  # head x d_head
                    df["head"] = df["component"] // shape[1]
                    df["head_dim"] = df["component"] % shape[1]
                elif s.point in self.head_points.values():
                    df["head"] = df["component"]
                frames.append(df)
        if not frames:
            return pd.DataFrame()
        out = pd.concat(frames, ignore_index=True)
        # rank 1 = most stable (smallest normalized change), per position mode over all components;
        # components that never move (spread 0, normalized NaN) get no rank; q-values over the table
        out = reg.add_table_columns(out, self.n_controls)
        from ..rules import stable_mask

        out["stable"] = stable_mask(out, alpha, rule, stable_ratio)
        out["stable_layers"] = out.groupby(["hook", "component", "position"])["stable"].transform("sum").astype(np.int64)
        return out

    def _massive(self, s: HookSite, C: int, ratio: float, floor: float) -> tuple[np.ndarray, np.ndarray]:
        """(max |activation| per component, the massive flag) of a hooked site; NaN/False for derived
        sites and for statistics saved before magnitudes were kept."""
        if s.point not in self.absmax:
            return np.full(C, np.nan), np.zeros(C, dtype=bool)
        i = self.point_sites[s.point].index(s)
        mx = self.absmax[s.point][i].cpu().numpy().astype(np.float64)
        med = _hist_median(self.abshist[s.point][i].cpu().numpy())
        return mx, (mx >= ratio * med) & (mx >= floor)

    def _kept(self, point: str):
        """(position modes, pair indices, values [N, L, 2, M', C], sites) of a point that kept
        per-pair values, or None."""
        modes = self.keep_values.get(point)
        got = self.pair_values(point) if modes else None
        if got is None:
            return None
        return modes, got[0], got[1], self.point_sites.get(point) or self.derived[point]

    def _site_values(self, s: HookSite, group: str | None, info: "PairInfo | None"):
        """The kept per-pair values of one site (restricted to ``group``'s pairs) with their pairs'
        clusters and distances: (modes, values [N, 2, M', C], info rows) or None."""
        kept = self._kept(s.point) if info is not None else None
        if kept is None:
            return None
        modes, index, v, sites = kept
        rows = info.rows(index)
        keep = np.ones(len(index), dtype=bool) if group is None else (info.group[rows] == group)
        return modes, v[keep, sites.index(s)], rows[keep], info

    def _clustered(self, kept, mode: str, spread: np.ndarray, level: float) -> dict[str, np.ndarray]:
        """The cluster-robust columns of one site at one position mode (NaN where not kept)."""
        from . import clustered as cl

        C = spread.shape[0]
        if kept is None or mode not in kept[0]:
            return {"n_clusters": np.full(C, -1, dtype=np.int64), **{c: np.full(C, np.nan) for c in cl.COLUMNS},
                    "se_method": "iid"}
        modes, v, rows, info = kept
        A, R = v[:, 0, modes.index(mode)], v[:, 1, modes.index(mode)]
        g = info.cluster[rows]
        out = cl.paired(A, R, g, level)
        if not np.isfinite(info.x_ab[rows]).any():  # the run recorded no embedding distances
            adj = {c: np.full(C, np.nan) for c in ("adj_coef", "adj_lo", "adj_hi")}
        else:
            adj = cl.adjusted_effect(A, R, info.x_ab[rows], info.x_ac[rows], g, level)
        with np.errstate(divide="ignore", invalid="ignore"):
            adj["adj_normalized"] = np.where(spread > 0, adj["adj_coef"] / spread, np.nan)
        return {**out, **adj, "se_method": f"cluster:{info.kind}"}

    def contrast(self, side_a: list[str], side_b: list[str], names: tuple[str, str],
                 pair_info: "PairInfo | None" = None) -> pd.DataFrame:
        """Welch's two-sample t-test per component between two sets of groups, on the per-pair
        control-adjusted change ``delta`` (or ``|a-b|`` without controls). ``effect`` is the
        difference of means over the component's spread (negative: more stable in ``group_a``).
        Where the run kept per-pair values (and ``pair_info`` gives their clusters), the same
        difference with a cluster-robust two-sided test: ``n_clusters``, ``se_cluster``,
        ``t_cluster``, ``p_cluster``, ``q_cluster`` (``interp.stats.clustered.contrast``)."""
        from . import clustered as cl

        qty = reg.contrast_channel(self.n_controls)
        q = self.channels.index(qty)
        frames = []
        for s in self.all_sites():
            if s.point not in self.diff:
                continue
            ma, mb = self._moments(s, side_a), self._moments(s, side_b)
            spread = self._spread(s)[1].cpu().numpy()
            kept = self._site_values(s, None, pair_info)
            for k, mode in enumerate(self.positions):
                na, nb = ma.n[q, k].cpu().numpy(), mb.n[q, k].cpu().numpy()
                xa, xb = ma.mean[q, k].cpu().numpy(), mb.mean[q, k].cpu().numpy()
                va, vb = ma.var[q, k].cpu().numpy(), mb.var[q, k].cpu().numpy()
                t, p = welch(na, xa, va, nb, xb, vb)
                with np.errstate(divide="ignore", invalid="ignore"):
                    effect = np.where(spread > 0, (xa - xb) / spread, np.nan)
                cols = {
                    "hook": s.point, "layer": s.layer, "component": np.arange(len(spread)), "position": mode,
                    "group_a": names[0], "group_b": names[1], "quantity": qty, "n_a": na.astype(np.int64),
                    "n_b": nb.astype(np.int64), "mean_a": xa, "mean_b": xb, "effect": effect, "t_stat": t,
                    "p_value": p,
                }
                C = len(spread)
                if kept is not None and mode in kept[0]:
                    modes, v, rows, info = kept
                    groups = info.group[rows]
                    on = np.isin(groups, side_a) | np.isin(groups, side_b)
                    D = v[on, 0, modes.index(mode)] - v[on, 1, modes.index(mode)]
                    cols.update(cl.contrast(D, np.isin(groups[on], side_a), info.cluster[rows][on]))
                else:
                    cols.update({"n_clusters": np.full(C, -1, dtype=np.int64), "se_cluster": np.full(C, np.nan),
                                 "t_cluster": np.full(C, np.nan), "p_cluster": np.full(C, np.nan)})
                frames.append(pd.DataFrame(cols))
        out = pd.concat(frames, ignore_index=True)
        out["q_value"] = bh_qvalues(out["p_value"].to_numpy())
        out["q_cluster"] = bh_qvalues(out["p_cluster"].to_numpy(dtype=float))
        return out

    def directions(self, stab: pd.DataFrame, group_types: dict[str, str], pair_info: "PairInfo | None" = None,
                   share: float = 0.9) -> pd.DataFrame:
        """How many distinct directions the stable set spans, and the mean-difference direction.

        One row per hook point x layer x position mode, and one per hook point x position mode over
        all its layers (``layer`` = -1). ``n_stable``: stable rows of ``stab`` (its ``stable``
        column); ``n_distinct``: distinct component indices among them (the residual stream shares
        its basis across layers, so one dimension stable in 20 layers is one direction);
        ``n_pcs``: principal components that explain ``share`` of the variance of the stable
        components' per-pair |a - b| / spread (where the run kept per-pair values; NA otherwise).
        Per layer, the difference-in-means direction of a - b (correct minus wrong: over the grammar
        pairs, else every pair; ``pairs_used``): ``mean_diff_norm`` = ||mean(a - b)||,
        ``spread_norm`` = ||spread||, ``mean_diff_relative`` = their ratio, and ``mean_diff_snr`` =
        ||mean(a - b)|| / sqrt(sum of the components' variances of a - b) (NaN for per-head units)."""
        if stab is None or stab.empty or "stable" not in stab:
            return pd.DataFrame()
        grammar = [g for g in self.categories if group_types.get(g) == "grammar"]
        used = grammar or None
        by_site = dict(iter(stab.groupby(["hook", "layer", "position"], sort=False)))
        empty = stab.iloc[:0]
        rows = []
        for s in self.all_sites():
            if s.point not in self.diff:
                continue
            m = self._moments(s, used)
            spread = np.nan_to_num(self._spread(s)[1].cpu().numpy())
            signed = s.point not in self.head_points.values()
            for k, mode in enumerate(self.positions):
                sel = by_site.get((s.point, s.layer, mode), empty)
                comps = sel.loc[sel["stable"], "component"].to_numpy()
                di = self.channels.index("diff")
                mean = np.nan_to_num(m.mean[di, k].cpu().numpy())
                var = np.nan_to_num(m.var[di, k].cpu().numpy())
                norm = float(np.linalg.norm(mean)) if signed else np.nan
                sn = float(np.linalg.norm(spread))
                rows.append({"hook": s.point, "layer": s.layer, "position": mode, "n_components": len(sel),
                             "n_stable": len(comps), "n_distinct": len(set(comps.tolist())),
                             "n_pcs": self._n_pcs(s, mode, {s.layer: comps}, spread_of={s.layer: spread},
                                                  info=pair_info, share=share),
                             "pairs_used": "grammar" if used else "all", "mean_diff_norm": norm, "spread_norm": sn,
                             "mean_diff_relative": norm / sn if sn > 0 else np.nan,
                             "mean_diff_snr": norm / float(np.sqrt(var.sum())) if signed and var.sum() > 0 else np.nan})
        out = pd.DataFrame(rows)
        if out.empty:
            return out
        pooled = []
        for (hook, mode), sel in stab[stab["stable"]].groupby(["hook", "position"]):
            by_layer = {int(layer): g["component"].to_numpy() for layer, g in sel.groupby("layer")}
            site = next(x for x in self.all_sites() if x.point == hook)
            spreads = {x.layer: np.nan_to_num(self._spread(x)[1].cpu().numpy()) for x in self.all_sites()
                       if x.point == hook and x.layer in by_layer}
            pooled.append({"hook": hook, "layer": -1, "position": mode,
                           "n_components": int(((stab["hook"] == hook) & (stab["position"] == mode)).sum()),
                           "n_stable": len(sel), "n_distinct": sel["component"].nunique(),
                           "n_pcs": self._n_pcs(site, mode, by_layer, spreads, pair_info, share),
                           "pairs_used": "grammar" if used else "all"})
        if pooled:
            out = pd.concat([out, pd.DataFrame(pooled)], ignore_index=True)
        out["n_pcs"] = out["n_pcs"].astype("Int64")
        return out

    def _n_pcs(self, site: HookSite, mode: str, comps: dict[int, np.ndarray], spread_of: dict[int, np.ndarray],
               info: "PairInfo | None", share: float):
        """Principal components explaining ``share`` of the variance of the stable components'
        per-pair |a - b| / spread (``comps``: layer -> component indices); None without values."""
        kept = self._kept(site.point) if info is not None and any(len(c) for c in comps.values()) else None
        if kept is None or mode not in kept[0]:
            return None
        modes, _, v, sites = kept
        layer_pos = {x.layer: i for i, x in enumerate(sites)}
        cols = []
        for layer, c in comps.items():
            if len(c):
                sp = spread_of[layer][c]
                cols.append(v[:, layer_pos[layer], 0, modes.index(mode)][:, c] / np.where(sp > 0, sp, 1.0))
        X = np.concatenate(cols, 1).astype(np.float64)
        X = X[np.isfinite(X).all(1)]
        if X.shape[0] < 2:
            return None
        X -= X.mean(0)
        sv = np.linalg.svd(X, compute_uv=False) ** 2
        if sv.sum() <= 0:
            return 0
        return int(np.searchsorted(np.cumsum(sv) / sv.sum(), share) + 1)

    def divergence(self) -> pd.DataFrame:
        """How quickly the edit is absorbed: per site, category and offset from the edit, the mean
        over components of mean |a-b| / spread (components with spread 0 left out). Rows per
        category when the groups are the categories (``per_category``); the ``all`` rows always."""
        rows = []
        for s in self.all_sites():
            if s.point not in self.profile:
                continue
            prof = self._get("profile", s)
            spread = self._spread(s)[1]
            live = spread > 0
            norm = prof.mean[..., live] / spread[live]  # [G, O, C']
            for gi, g in enumerate((self.groups if self.per_category else []) + ["all"]):
                if g == "all":
                    m = reduce_groups(prof)
                    nm, n = (m.mean[..., live] / spread[live]), m.n[..., 0]
                else:
                    nm, n = norm[gi], prof.n[gi, :, 0]
                for o in range(nm.shape[0]):
                    if n[o] > 0:
                        rows.append({"hook": s.point, "layer": s.layer, "category": g, "offset": o,
                                     "n_pairs": int(n[o]), "normalized": float(nm[o].mean()),
                                     "normalized_median": float(nm[o].median())})
        return pd.DataFrame(rows)

    def detail_tables(self, pair_ids: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Per-pair drill-down tables: change per site and position; top changed / stable components.
        Rows in the order site, pair, position (and site, pair, kind, order), built as whole arrays
        per staged chunk: a checkpoint of thousands of pairs x sites takes no per-row Python."""
        prof, comp = [], []
        for d in self.details:
            ids = np.asarray(pair_ids, dtype=object)[d["index"].cpu().numpy()]  # [n]
            dn, an = d["diff_norm"].cpu().numpy(), d["a_norm"].cpu().numpy()  # [S, n, T]
            edit, last = d["edit"].cpu().numpy(), d["last"].cpu().numpy()
            points = np.array([s.point for s in d["sites"]], dtype=object)
            layers = np.array([s.layer for s in d["sites"]], dtype=np.int64)
            S, n, T = dn.shape
            t = np.arange(T)
            si, j, pos = np.nonzero(np.broadcast_to((t >= 1) & (t <= last[:, None]), (S, n, T)))
            prof.append(pd.DataFrame({
                "pair_id": ids[j], "hook": points[si], "layer": layers[si], "position": pos.astype(np.int64),
                "offset": (pos - edit[j]).astype(np.int64), "diff_norm": dn[si, j, pos], "a_norm": an[si, j, pos],
            }))
            # [S, n, kind, k]: kinds most_changed (top), most_stable (low)
            arr = {x: np.stack([d[f"top_{x}"].cpu().numpy(), d[f"low_{x}"].cpu().numpy()], 2) for x in ("idx", "val", "abs")}
            si, j, kind, order = (g.reshape(-1) for g in np.indices(arr["idx"].shape))
            comp.append(pd.DataFrame({
                "pair_id": ids[j], "hook": points[si], "layer": layers[si],
                "kind": np.array(["most_changed", "most_stable"], dtype=object)[kind], "order": (order + 1).astype(np.int64),
                "component": arr["idx"].reshape(-1), "abs_diff": arr["abs"].reshape(-1), "normalized": arr["val"].reshape(-1),
            }))
        cat = lambda fs: pd.concat(fs, ignore_index=True) if fs else pd.DataFrame()  # noqa: E731
        return cat(prof), cat(comp)


def median_rows(batch: Batch) -> Tensor | None:
    """The a and b rows of the batch's pairs whose run-wide index is a multiple of ``MEDIAN_EVERY``
    (the pairs the layer's median |activation| is taken over), or None; from the batch's index,
    which is on the host."""
    picked = (batch.index.cpu() % MEDIAN_EVERY == 0).nonzero()[:, 0]
    return torch.cat([picked, picked + batch.size]) if len(picked) else None


def _hist_median(h: np.ndarray) -> float:
    """The median |activation| from a histogram of log10 |activation| (``HIST_BINS`` bins)."""
    total = h.sum()
    if total <= 0:
        return float("nan")
    i = int(np.searchsorted(np.cumsum(h), total / 2))
    width = (HIST_HI - HIST_LO) / HIST_BINS
    return float(10 ** (HIST_LO + (i + 0.5) * width))


class PairInfo:
    """What the clustered statistics need of the kept pairs, by run-wide pair index: the cluster
    of each pair (``analysis.cluster``), its category, and the embedding distances of its real edit
    (``dist_ab``) and of its controls (``dist_ac_mean``)."""

    def __init__(self, pairs: pd.DataFrame, kind: str = "swap"):
        from .clustered import cluster_keys

        self.kind = kind
        self.pair_index = pairs["pair_index"].to_numpy(np.int64)
        self.cluster = cluster_keys(pairs, kind)
        self.group = pairs["category"].to_numpy(object)
        nan = np.full(len(pairs), np.nan)
        self.x_ab = pairs["dist_ab"].to_numpy(np.float64) if "dist_ab" in pairs else nan
        self.x_ac = pairs["dist_ac_mean"].to_numpy(np.float64) if "dist_ac_mean" in pairs else nan
        self._order = np.argsort(self.pair_index, kind="stable")

    def rows(self, index: np.ndarray) -> np.ndarray:
        """Row positions of the pairs with these run-wide indices."""
        at = np.searchsorted(self.pair_index, index, sorter=self._order)
        found = self._order[np.minimum(at, len(self._order) - 1)]
        if (self.pair_index[found] != index).any():
            raise KeyError("per-pair values of a pair that is not in the pairs table")
        return found


class _Captured(dict):
    """The activations of one batch by hook point (a dict that a weak reference can point to)."""


class _Arena:
    """Buffers for a batch's hooked activations on the CPU, reused from batch to batch.

    Keeping references to the model's own activation tensors until ``consume()`` pins about 90 x
    3 MB per batch of the embedded model; glibc serves such tensors with fresh memory maps and
    gives them back when they are freed, so every batch faulted the memory in again (about twice
    the page faults of a bare forward pass, and the model's temporaries, such as the MLP's
    ``silu`` output, ran several times slower for it: ``benchmarks/README.md``). A hook instead
    copies the activation into a buffer of its own that lives from batch to batch, and the model's
    tensor is freed as in a forward pass without hooks. Each capture claims a set of buffers until
    its ``consume()`` (or ``release()``, for a failed batch) gives it back, or the capture is
    dropped; a capture made while another is still unconsumed gets a second set, so no buffer is
    overwritten before its statistics are taken. Buffers are normal tensors made outside inference
    mode and filled without autograd, whatever mode the forward pass runs in."""

    def __init__(self):
        self.sets: list[list] = []  # [weak reference to the owning capture or None, {slot: buffer}]

    def claim(self, owner: _Captured):
        for entry in self.sets:
            if entry[0] is None or entry[0]() is None:
                break
        else:
            entry = [None, {}]
            self.sets.append(entry)
        entry[0] = weakref.ref(owner)
        bufs: dict = entry[1]

        def keep(slot, act: Tensor) -> Tensor:
            n = act.numel()
            buf = bufs.get(slot)
            if buf is None or buf.numel() < n or buf.dtype != act.dtype:
                with torch.inference_mode(False):  # a normal tensor, writable in and out of inference mode
                    buf = torch.empty(n + n // 4, dtype=act.dtype)  # room for a somewhat longer batch
                bufs[slot] = buf
            with torch.no_grad():
                return buf[:n].view(act.shape).copy_(act.detach())
        return keep

    def release(self, owner) -> None:
        for entry in self.sets:
            if entry[0] is not None and entry[0]() is owner:
                entry[0] = None
