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
``Moments`` and merges exactly across shards.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .engine import Batch
from .hooks import HookSite
from .stats import Moments

POSITION_MODES = ("edit", "last", "after")


def group_moments(x: Tensor, w: Tensor, group: Tensor, n_groups: int) -> Moments:
    """Moments of ``x`` [B, *shape] per group, weights ``w`` [B, *wshape] broadcasting to x.

    Returns a ``Moments`` of shape [n_groups, *shape], computed with two scatter passes.
    """
    x = x.to(torch.float64)
    w = w.to(torch.float64)
    while w.ndim < x.ndim:
        w = w.unsqueeze(-1)
    w = w.expand_as(x)
    shape = (n_groups,) + tuple(x.shape[1:])
    n = torch.zeros(shape, dtype=torch.float64, device=x.device).index_add_(0, group, w)
    s = torch.zeros(shape, dtype=torch.float64, device=x.device).index_add_(0, group, w * x)
    mean = torch.where(n > 0, s / n.clamp(min=1e-300), 0.0)
    dev = x - mean[group]
    m2 = torch.zeros(shape, dtype=torch.float64, device=x.device).index_add_(0, group, w * dev * dev)
    return Moments(n, mean, m2)


def reduce_groups(m: Moments) -> Moments:
    """Merge the group axis (dim 0) of a grouped ``Moments`` into one."""
    out = Moments(m.n[0], m.mean[0], m.m2[0])
    for g in range(1, m.n.shape[0]):
        out = out.merge(Moments(m.n[g], m.mean[g], m.m2[g]))
    return out


class DiffStats:
    """The consumer that turns each batch's activations into running difference statistics."""

    def __init__(self, sites: list[HookSite], groups: list[str], positions=POSITION_MODES,
                 device: torch.device | str = "cpu"):
        bad = [p for p in positions if p not in POSITION_MODES]
        if bad:
            raise ValueError(f"analysis.positions: {bad} not in {POSITION_MODES}")
        self.sites = sites
        self.groups = list(groups)
        self.positions = list(positions)
        self.device = device
        self.diff: dict[str, Moments] = {}  # [G, 2M, C]: signed d per mode, then |d| per mode
        self.spread: dict[str, Moments] = {}  # [C]
        self.shapes: dict[str, tuple[int, ...]] = {}  # component shape per site, e.g. (H, d_head)

    # ------------------------------------------------------------ streaming
    def hooks(self, batch: Batch) -> list[tuple[str, callable]]:
        after = batch.after_mask().to(torch.float32)  # [B, T]
        n_after = after.sum(1)  # [B]
        distinct = batch.distinct_mask()
        B = batch.size
        ar = torch.arange(B, device=batch.tokens.device)

        def make(site: HookSite):
            def hook(act: Tensor, hook=None):
                if site.name not in self.shapes:
                    self.shapes[site.name] = tuple(act.shape[2:])
                x = act.detach().flatten(2).float()  # [VB, T, C]
                d = x[:B] - x[B:2 * B]  # [B, T, C]
                signed, absval, weights = [], [], []
                for mode in self.positions:
                    if mode == "edit":
                        v = d[ar, batch.edit]
                        signed.append(v), absval.append(v.abs()), weights.append(torch.ones_like(n_after))
                    elif mode == "last":
                        v = d[ar, batch.last]
                        signed.append(v), absval.append(v.abs()), weights.append(torch.ones_like(n_after))
                    else:  # after: mean over the tokens after the edit
                        denom = n_after.clamp(min=1)[:, None]
                        signed.append(torch.einsum("btc,bt->bc", d, after) / denom)
                        absval.append(torch.einsum("btc,bt->bc", d.abs(), after) / denom)
                        weights.append((n_after > 0).float())
                vals = torch.stack(signed + absval, 1)  # [B, 2M, C]
                w = torch.stack(weights + weights, 1)  # [B, 2M]
                m = group_moments(vals, w, batch.group, len(self.groups))
                self.diff[site.name] = self.diff[site.name].merge(m) if site.name in self.diff else m
                tok = Moments.of_batch(x[distinct])  # [C]
                self.spread[site.name] = self.spread[site.name].merge(tok) if site.name in self.spread else tok
                return None
            return hook

        return [(s.name, make(s)) for s in self.sites]

    # ------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Tensor]:
        out = {}
        for name, m in self.diff.items():
            out.update(m.state_dict(f"diff/{name}/"))
            out.update(self.spread[name].state_dict(f"spread/{name}/"))
        return out

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for s in self.sites:
            if f"diff/{s.name}/n" in state:
                self.diff[s.name] = Moments.from_state_dict(state, f"diff/{s.name}/").to(self.device)
                self.spread[s.name] = Moments.from_state_dict(state, f"spread/{s.name}/").to(self.device)

    def merge(self, other: "DiffStats") -> "DiffStats":
        if other.groups != self.groups or other.positions != self.positions:
            raise ValueError("cannot merge statistics of runs with different groups or position modes")
        out = DiffStats(self.sites, self.groups, self.positions, self.device)
        out.shapes = {**other.shapes, **self.shapes}
        for name in set(self.diff) | set(other.diff):
            if name in self.diff and name in other.diff:
                out.diff[name] = self.diff[name].merge(other.diff[name])
                out.spread[name] = self.spread[name].merge(other.spread[name])
            else:
                src = self if name in self.diff else other
                out.diff[name], out.spread[name] = src.diff[name], src.spread[name]
        return out

    # ------------------------------------------------------------ results
    def table(self, group: str | None = None) -> pd.DataFrame:
        """One row per site x component x position mode (all groups merged unless ``group``)."""
        M = len(self.positions)
        frames = []
        for s in self.sites:
            if s.name not in self.diff:
                continue
            g = self.diff[s.name]
            m = reduce_groups(g) if group is None else Moments(*(t[self.groups.index(group)] for t in (g.n, g.mean, g.m2)))
            sp = self.spread[s.name]
            spread = sp.std.cpu().numpy()
            C = spread.shape[0]
            shape = self.shapes.get(s.name, (C,))
            for k, mode in enumerate(self.positions):
                n = m.n[k].cpu().numpy()
                mean_abs = m.mean[M + k].cpu().numpy()
                with np.errstate(divide="ignore", invalid="ignore"):
                    normalized = np.where(spread > 0, mean_abs / spread, np.nan)
                    norm_std = np.where(spread > 0, m.std[M + k].cpu().numpy() / spread, np.nan)
                df = pd.DataFrame({
                    "hook": s.point, "hook_name": s.name, "layer": s.layer,
                    "component": np.arange(C),
                    "position": mode, "n_pairs": n.astype(np.int64),
                    "mean_diff": m.mean[k].cpu().numpy(), "std_diff": m.std[k].cpu().numpy(),
                    "mean_abs_diff": mean_abs, "std_abs_diff": m.std[M + k].cpu().numpy(),
                    "act_mean": sp.mean.cpu().numpy(), "spread": spread,
                    "normalized": normalized, "normalized_std": norm_std,
                })
                if len(shape) == 2:  # z: head x d_head
                    df["head"] = df["component"] // shape[1]
                    df["head_dim"] = df["component"] % shape[1]
                frames.append(df)
        if not frames:
            return pd.DataFrame()
        out = pd.concat(frames, ignore_index=True)
        # rank 1 = most stable (smallest normalized change), per position mode over all components;
        # components that never move (spread 0, normalized NaN) get no rank.
        out["rank"] = out.groupby("position")["normalized"].rank(method="first").astype("Int64")
        return out
