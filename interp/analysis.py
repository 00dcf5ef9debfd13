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
from scipy import stats as scipy_stats
from torch import Tensor

from .engine import Batch
from .hooks import HookSite
from .stats import Moments

POSITION_MODES = ("edit", "last", "after")
CHANNELS = ("diff", "abs", "ctrl", "delta", "ratio")


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
    """The consumer that turns each batch's activations into running difference statistics.

    Per site it keeps, per group (category):
    - ``diff``: moments over pairs of the channels ``CHANNELS`` x position modes x components, where
      ``diff`` = a - b, ``abs`` = |a - b|, and with K control edits ``ctrl`` = mean_k |a - c_k|,
      ``delta`` = abs - ctrl (the paired difference the t-test uses) and ``ratio`` = abs / ctrl;
    - ``profile``: moments of |a - b| at each token offset 0..max_offset from the edit;
    and over all sentences (a and b, not the controls) ``spread``: the component's own moments.
    """

    def __init__(self, sites: list[HookSite], groups: list[str], positions=POSITION_MODES,
                 device: torch.device | str = "cpu", n_controls: int = 0, max_offset: int = 15,
                 detail_pairs: int = 0, detail_k: int = 5):
        bad = [p for p in positions if p not in POSITION_MODES]
        if bad:
            raise ValueError(f"analysis.positions: {bad} not in {POSITION_MODES}")
        self.sites = sites
        self.groups = list(groups)
        self.positions = list(positions)
        self.device = device
        self.n_controls = int(n_controls)
        self.channels = CHANNELS if self.n_controls else CHANNELS[:2]
        self.max_offset = int(max_offset)
        self.detail_pairs = int(detail_pairs)  # per-pair drill-down rows for pairs with idx < this
        self.detail_k = int(detail_k)
        self.diff: dict[str, Moments] = {}  # [G, CH, M, C]
        self.profile: dict[str, Moments] = {}  # [G, O, C]
        self.spread: dict[str, Moments] = {}  # [C]
        self.shapes: dict[str, tuple[int, ...]] = {}  # component shape per site, e.g. (H, d_head)
        self.prior: "DiffStats | None" = None  # running state, for the spread estimate of details
        self.details: list[dict[str, Tensor]] = []  # staged per-pair drill-down tensors

    def like(self) -> "DiffStats":
        """An empty state with the same layout (a batch is staged in one, then merged)."""
        out = DiffStats(self.sites, self.groups, self.positions, self.device, self.n_controls,
                        self.max_offset, self.detail_pairs, self.detail_k)
        out.prior = self
        return out

    # ------------------------------------------------------------ streaming
    def hooks(self, batch: Batch) -> list[tuple[str, callable]]:
        after = batch.after_mask().to(torch.float32)  # [B, T]
        n_after = after.sum(1)  # [B]
        has_after = (n_after > 0).float()
        ones = torch.ones_like(n_after)
        distinct = batch.distinct_mask()
        distinct[2 * batch.size:] = False  # control sentences do not define a component's spread
        B, K, T = batch.size, self.n_controls, batch.seq_len
        ar = torch.arange(B, device=batch.tokens.device)
        offsets = torch.arange(self.max_offset + 1, device=batch.tokens.device)
        off_pos = batch.edit[:, None] + offsets[None, :]  # [B, O]
        off_w = (off_pos <= batch.last[:, None]).float()
        off_pos = off_pos.clamp(max=T - 1)
        detail = batch.index.to(batch.tokens.device) < self.detail_pairs  # [B]

        def at_modes(v: Tensor) -> tuple[Tensor, Tensor]:
            """[B, T, C] per-token values -> [B, M, C] at each mode, and weights [B, M]."""
            vals, ws = [], []
            for mode in self.positions:
                if mode == "edit":
                    vals.append(v[ar, batch.edit]), ws.append(ones)
                elif mode == "last":
                    vals.append(v[ar, batch.last]), ws.append(ones)
                else:  # after: mean over the tokens after the edit
                    vals.append(torch.einsum("btc,bt->bc", v, after) / n_after.clamp(min=1)[:, None])
                    ws.append(has_after)
            return torch.stack(vals, 1), torch.stack(ws, 1)

        def make(site: HookSite):
            def hook(act: Tensor, hook=None):
                if site.name not in self.shapes:
                    self.shapes[site.name] = tuple(act.shape[2:])
                x = act.detach().flatten(2).float()  # [VB, T, C]
                a = x[:B]
                d = a - x[B:2 * B]  # [B, T, C]
                signed, w = at_modes(d)
                absval, _ = at_modes(d.abs())
                chans, cw = [signed, absval], [w, w]
                if K:
                    ctrl = sum(at_modes((a - x[(2 + k) * B:(3 + k) * B]).abs())[0] for k in range(K)) / K
                    chans += [ctrl, absval - ctrl, torch.where(ctrl > 0, absval / ctrl.clamp(min=1e-30), 0.0)]
                    cw += [w, w, w]
                vals = torch.stack(chans, 1)  # [B, CH, M, C]
                wts = torch.stack(cw, 1)  # [B, CH, M]
                if K:  # the per-pair ratio is defined where the control moved the component
                    wts = wts[..., None].expand_as(vals).clone()
                    wts[:, -1] *= (ctrl > 0).float()
                m = group_moments(vals, wts, batch.group, len(self.groups))
                self.diff[site.name] = self.diff[site.name].merge(m) if site.name in self.diff else m
                tok = Moments.of_batch(x[distinct])  # [C]
                self.spread[site.name] = self.spread[site.name].merge(tok) if site.name in self.spread else tok
                prof = group_moments(d.abs().gather(1, off_pos[..., None].expand(-1, -1, d.shape[-1])),
                                     off_w, batch.group, len(self.groups))  # [G, O, C]
                self.profile[site.name] = self.profile[site.name].merge(prof) if site.name in self.profile else prof
                if detail.any():
                    self._stage_detail(site, batch, a, d, tok, detail)
                return None
            return hook

        return [(s.name, make(s)) for s in self.sites]

    def _stage_detail(self, site: HookSite, batch: Batch, a: Tensor, d: Tensor, tok: Moments,
                      detail: Tensor) -> None:
        """Per-pair drill-down: ||a-b|| and ||a|| at every position; the top-k most changed and most
        stable components at the edit, normalized by the spread estimated from the pairs so far."""
        prior = self.prior.spread.get(site.name) if self.prior is not None else None
        est = (prior.merge(tok) if prior is not None else tok).std.float()  # [C]
        live = est > 0
        e = d[torch.arange(batch.size, device=d.device), batch.edit].abs()  # [B, C]
        z = torch.where(live, e / est.clamp(min=1e-30), float("nan"))
        k = min(self.detail_k, int(live.sum()))
        top = torch.where(live, z, float("-inf")).topk(k, -1)
        low = torch.where(live, z, float("inf")).topk(k, -1, largest=False)
        self.details.append({
            "site": site, "index": batch.index[detail.cpu()], "edit": batch.edit[detail],
            "last": batch.last[detail], "diff_norm": d[detail].norm(dim=-1), "a_norm": a[detail].norm(dim=-1),
            "top_idx": top.indices[detail], "top_val": top.values[detail],
            "top_abs": e[detail].gather(1, top.indices[detail]),
            "low_idx": low.indices[detail], "low_val": low.values[detail],
            "low_abs": e[detail].gather(1, low.indices[detail]),
        })

    # ------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Tensor]:
        out = {}
        for name, m in self.diff.items():
            out.update(m.state_dict(f"diff/{name}/"))
            out.update(self.spread[name].state_dict(f"spread/{name}/"))
            out.update(self.profile[name].state_dict(f"profile/{name}/"))
        return out

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for s in self.sites:
            if f"diff/{s.name}/n" in state:
                for kind in ("diff", "spread", "profile"):
                    getattr(self, kind)[s.name] = Moments.from_state_dict(state, f"{kind}/{s.name}/").to(self.device)

    def merge(self, other: "DiffStats") -> "DiffStats":
        if (other.groups, other.positions, other.n_controls, other.max_offset) != \
                (self.groups, self.positions, self.n_controls, self.max_offset):
            raise ValueError("cannot merge statistics of runs with different groups, position modes, "
                             "control counts or offsets")
        out = DiffStats(self.sites, self.groups, self.positions, self.device, self.n_controls,
                        self.max_offset, self.detail_pairs, self.detail_k)
        out.shapes = {**other.shapes, **self.shapes}
        for kind in ("diff", "spread", "profile"):
            mine, theirs, dest = getattr(self, kind), getattr(other, kind), getattr(out, kind)
            for name in set(mine) | set(theirs):
                if name in mine and name in theirs:
                    dest[name] = mine[name].merge(theirs[name])
                else:
                    dest[name] = (mine if name in mine else theirs)[name]
        return out

    # ------------------------------------------------------------ results
    def _moments(self, name: str, groups: list[str] | None = None) -> Moments:
        """The site's diff moments merged over ``groups`` (all when None): [CH, M, C]."""
        g = self.diff[name]
        idx = range(len(self.groups)) if groups is None else [self.groups.index(x) for x in groups]
        return reduce_groups(Moments(g.n[list(idx)], g.mean[list(idx)], g.m2[list(idx)]))

    def table(self, group: str | None = None, massive_factor: float = 20.0, massive_cv: float = 0.25
              ) -> pd.DataFrame:
        """One row per site x component x position mode (all groups merged unless ``group``).

        Columns: the moments of a - b and |a - b|; the component's mean and spread; ``normalized`` =
        mean |a-b| / spread and ``rank`` (1 = smallest). With controls: ``control_normalized``,
        ``ratio`` = mean |a-b| / mean |a-c|, ``ratio_pair_mean``/``ratio_pair_std`` (per-pair
        ratio across pairs), ``t_stat`` and the one-sided ``p_value`` of the paired t-test
        "|a-b| < |a-c|" over pairs, ``q_value`` (Benjamini-Hochberg over every row of the table) and
        ``rank_calibrated`` (1 = strongest evidence of changing less than a control edit).
        ``constant``: the component never moves (spread 0); ``massive``: magnitude above
        ``massive_factor`` x the site's median and spread below ``massive_cv`` x |mean|.
        """
        ch = {c: i for i, c in enumerate(self.channels)}
        frames = []
        for s in self.sites:
            if s.name not in self.diff:
                continue
            m = self._moments(s.name, None if group is None else [group])
            sp = self.spread[s.name]
            spread = sp.std.cpu().numpy()
            act_mean = sp.mean.cpu().numpy()
            rms = np.sqrt(act_mean ** 2 + np.nan_to_num(spread) ** 2)
            med = np.median(rms) if rms.size else np.nan
            massive = (rms > massive_factor * med) & (np.nan_to_num(spread) < massive_cv * np.abs(act_mean))
            constant = ~(np.nan_to_num(spread) > 0)
            C = spread.shape[0]
            shape = self.shapes.get(s.name, (C,))
            mean, std, n = m.mean.cpu().numpy(), m.std.cpu().numpy(), m.n.cpu().numpy()
            for k, mode in enumerate(self.positions):
                a_ = ch["abs"]
                with np.errstate(divide="ignore", invalid="ignore"):
                    normalized = np.where(spread > 0, mean[a_, k] / spread, np.nan)
                    norm_std = np.where(spread > 0, std[a_, k] / spread, np.nan)
                cols = {
                    "hook": s.point, "hook_name": s.name, "layer": s.layer, "component": np.arange(C),
                    "position": mode, "n_pairs": n[a_, k].astype(np.int64),
                    "mean_diff": mean[ch["diff"], k], "std_diff": std[ch["diff"], k],
                    "mean_abs_diff": mean[a_, k], "std_abs_diff": std[a_, k],
                    "act_mean": act_mean, "spread": spread, "normalized": normalized, "normalized_std": norm_std,
                    "constant": constant, "massive": massive,
                }
                if self.n_controls:
                    c_, d_, r_ = ch["ctrl"], ch["delta"], ch["ratio"]
                    nd = n[d_, k]
                    with np.errstate(divide="ignore", invalid="ignore"):
                        t = mean[d_, k] / (std[d_, k] / np.sqrt(nd))
                        cols.update({
                            "mean_control_diff": mean[c_, k],
                            "control_normalized": np.where(spread > 0, mean[c_, k] / spread, np.nan),
                            "ratio": np.where(mean[c_, k] > 0, mean[a_, k] / mean[c_, k], np.nan),
                            "ratio_pair_mean": mean[r_, k], "ratio_pair_std": std[r_, k],
                            "delta_normalized": np.where(spread > 0, mean[d_, k] / spread, np.nan),
                            "t_stat": t,
                            "p_value": np.where(np.isfinite(t) & (nd > 1), scipy_stats.t.cdf(t, np.maximum(nd - 1, 1)), np.nan),
                        })
                df = pd.DataFrame(cols)
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
        if self.n_controls:
            out["q_value"] = bh_qvalues(out["p_value"].to_numpy())
            out["rank_calibrated"] = out.groupby("position")["t_stat"].rank(method="first").astype("Int64")
        return out

    def contrast(self, side_a: list[str], side_b: list[str], names: tuple[str, str]) -> pd.DataFrame:
        """Welch's two-sample t-test per component between two sets of groups, on the per-pair
        control-adjusted change ``delta`` (or ``|a-b|`` without controls). ``effect`` is the
        difference of means over the component's spread (negative: more stable in ``group_a``)."""
        qty = "delta" if self.n_controls else "abs"
        q = self.channels.index(qty)
        frames = []
        for s in self.sites:
            if s.name not in self.diff:
                continue
            ma, mb = self._moments(s.name, side_a), self._moments(s.name, side_b)
            spread = self.spread[s.name].std.cpu().numpy()
            for k, mode in enumerate(self.positions):
                na, nb = ma.n[q, k].cpu().numpy(), mb.n[q, k].cpu().numpy()
                xa, xb = ma.mean[q, k].cpu().numpy(), mb.mean[q, k].cpu().numpy()
                va, vb = ma.var[q, k].cpu().numpy(), mb.var[q, k].cpu().numpy()
                with np.errstate(divide="ignore", invalid="ignore"):
                    se2 = va / na + vb / nb
                    t = (xa - xb) / np.sqrt(se2)
                    df_w = se2 ** 2 / ((va / na) ** 2 / (na - 1) + (vb / nb) ** 2 / (nb - 1))
                    p = np.where(np.isfinite(t) & np.isfinite(df_w), 2 * scipy_stats.t.sf(np.abs(t), df_w), np.nan)
                    effect = np.where(spread > 0, (xa - xb) / spread, np.nan)
                frames.append(pd.DataFrame({
                    "hook": s.point, "layer": s.layer, "component": np.arange(len(spread)), "position": mode,
                    "group_a": names[0], "group_b": names[1], "quantity": qty, "n_a": na.astype(np.int64),
                    "n_b": nb.astype(np.int64), "mean_a": xa, "mean_b": xb, "effect": effect, "t_stat": t,
                    "p_value": p,
                }))
        out = pd.concat(frames, ignore_index=True)
        out["q_value"] = bh_qvalues(out["p_value"].to_numpy())
        return out

    def divergence(self) -> pd.DataFrame:
        """How quickly the edit is absorbed: per site, category and offset from the edit, the mean
        over components of mean |a-b| / spread (components with spread 0 left out)."""
        rows = []
        for s in self.sites:
            if s.name not in self.profile:
                continue
            prof = self.profile[s.name]
            spread = self.spread[s.name].std
            live = spread > 0
            norm = prof.mean[..., live] / spread[live]  # [G, O, C']
            for gi, g in enumerate(self.groups + ["all"]):
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
        """Per-pair drill-down tables: change per site and position; top changed / stable components."""
        prof, comp = [], []
        for d in self.details:
            s = d["site"]
            idx = d["index"].tolist()
            dn, an = d["diff_norm"].cpu().numpy(), d["a_norm"].cpu().numpy()
            edit, last = d["edit"].cpu().numpy(), d["last"].cpu().numpy()
            for j, i in enumerate(idx):
                T = int(last[j]) + 1
                prof.append(pd.DataFrame({
                    "pair_id": pair_ids[i], "hook": s.point, "layer": s.layer, "position": np.arange(1, T),
                    "offset": np.arange(1, T) - int(edit[j]), "diff_norm": dn[j, 1:T], "a_norm": an[j, 1:T],
                }))
                for kind, key in (("most_changed", "top"), ("most_stable", "low")):
                    ci, cv, ca = (d[f"{key}_{x}"][j].cpu().numpy() for x in ("idx", "val", "abs"))
                    comp.append(pd.DataFrame({
                        "pair_id": pair_ids[i], "hook": s.point, "layer": s.layer, "kind": kind,
                        "order": np.arange(1, len(ci) + 1), "component": ci, "abs_diff": ca, "normalized": cv,
                    }))
        cat = lambda fs: pd.concat(fs, ignore_index=True) if fs else pd.DataFrame()  # noqa: E731
        return cat(prof), cat(comp)


def bh_qvalues(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values); NaN p-values stay NaN and are not counted."""
    p = np.asarray(p, dtype=float)
    q = np.full_like(p, np.nan)
    ok = np.isfinite(p)
    m = int(ok.sum())
    if m == 0:
        return q
    pv = p[ok]
    order = np.argsort(pv)
    ranked = pv[order] * m / np.arange(1, m + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.clip(ranked, 0, 1)
    q[ok] = out
    return q
