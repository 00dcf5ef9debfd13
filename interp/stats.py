"""Streaming, mergeable moments: count, mean and sum of squared deviations (M2), per element.

Statistics over a dataset are accumulated batch by batch and never need the data again. Each
batch is reduced to its own (n, mean, M2) and folded into the running state with the parallel
update of Chan, Golub and LeVeque (1979)::

    n   = n_a + n_b
    d   = mean_b - mean_a
    mean = mean_a + d * n_b / n
    M2  = M2_a + M2_b + d**2 * n_a * n_b / n

The same formula merges two whole states, so statistics of shards run in separate processes
merge into exactly the statistics of one pass (up to float rounding). State is float64 and lives on
the device of the data: no host transfer per batch.

Weights are 0/1 masks in practice (which pairs have tokens after the edit, which tokens are real),
but any non-negative weights give the weighted moments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor


@dataclass
class Moments:
    """Per-element running moments of shape ``shape``; ``n`` may differ per element (weights)."""

    n: Float[Tensor, "*shape"]
    mean: Float[Tensor, "*shape"]
    m2: Float[Tensor, "*shape"]

    @classmethod
    def zeros(cls, shape: tuple[int, ...], device: torch.device | str = "cpu") -> "Moments":
        z = lambda: torch.zeros(shape, dtype=torch.float64, device=device)  # noqa: E731
        return cls(z(), z(), z())

    @staticmethod
    def of_batch(x: Float[Tensor, "batch *shape"], w: Float[Tensor, "batch *wshape"] | None = None
                 ) -> "Moments":
        """Moments of one batch along dim 0. ``w`` broadcasts against ``x`` (e.g. ``[batch, 1, ...]``).

        Sums run in float32 (float64 for float64 data) on data shifted by the batch mean (so a "massive" component with a huge
        mean and a tiny spread keeps its spread), then become float64 moments.
        """
        if w is None:
            w = torch.ones(x.shape[:1], device=x.device)
        group = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        m = grouped_moments(x, w, group, 1)
        return Moments(m.n[0], m.mean[0], m.m2[0])

    def merge(self, other: "Moments") -> "Moments":
        """Chan et al. parallel combination; exact for the count and, in float64, for mean and M2."""
        n = self.n + other.n
        safe = n.clamp(min=1e-300)
        d = other.mean - self.mean
        mean = torch.where(n > 0, self.mean + d * other.n / safe, 0.0)
        m2 = self.m2 + other.m2 + d * d * self.n * other.n / safe
        return Moments(n, mean, m2)

    def update(self, x: Tensor, w: Tensor | None = None) -> None:
        """Fold a batch (dim 0 = samples) into this state, in place."""
        m = self.merge(Moments.of_batch(x, w))
        self.n, self.mean, self.m2 = m.n, m.mean, m.m2

    @property
    def var(self) -> Tensor:
        """Sample variance (ddof = 1); NaN where fewer than two samples."""
        return torch.where(self.n > 1, self.m2 / (self.n - 1).clamp(min=1e-300), float("nan"))

    @property
    def std(self) -> Tensor:
        return self.var.clamp(min=0).sqrt()

    def state_dict(self, prefix: str = "") -> dict[str, Tensor]:
        return {f"{prefix}n": self.n, f"{prefix}mean": self.mean, f"{prefix}m2": self.m2}

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor], prefix: str = "") -> "Moments":
        return cls(state[f"{prefix}n"].to(torch.float64), state[f"{prefix}mean"].to(torch.float64),
                   state[f"{prefix}m2"].to(torch.float64))

    def to(self, device) -> "Moments":
        return Moments(self.n.to(device), self.mean.to(device), self.m2.to(device))


def grouped_moments(x: Float[Tensor, "batch *shape"], w: Float[Tensor, "batch *wshape"],
                    group: Tensor, n_groups: int) -> Moments:
    """Moments of ``x`` per group (``group[i]`` in 0..n_groups-1), weights ``w`` broadcasting to x.

    Sums of the data shifted by its weighted batch mean, contracted over the batch with one-hot
    group weights (matrix products): a few passes over the data whatever the number of groups, no
    host synchronisation, and weights that are constant along trailing dimensions (a mask per pair
    or per token) are never expanded to the data's size. Returns ``Moments`` [n_groups, *shape].
    """
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32  # sums at least in float32
    x = x.to(cdt)
    w = w.to(cdt)
    while w.ndim < x.ndim:
        w = w.unsqueeze(-1)
    B = x.shape[0]
    # leading dims along which w varies (J) and trailing dims where it is constant (R)
    k = x.ndim - 1
    while k > 0 and w.shape[k] == 1:
        k -= 1
    J = math.prod(x.shape[1:k + 1])
    R = math.prod(x.shape[k + 1:])
    xj = x.reshape(B, J, R)
    wj = w.expand(*x.shape[:k + 1], *w.shape[k + 1:]).reshape(B, J)
    onehot = torch.nn.functional.one_hot(group, n_groups).to(cdt)  # [B, G]
    wsum = wj.sum(0)  # [J]
    ref = torch.einsum("bj,bjr->jr", wj, xj) / wsum.clamp(min=1e-30)[:, None]  # the shift
    y = xj - ref
    n = (onehot.T @ wj)[:, :, None].expand(n_groups, J, R)  # [G, J, R]
    if R == 1:  # weights vary everywhere: weight the data, then one product over the batch
        wy = (wj[:, :, None] * y).reshape(B, -1)
        s1 = (onehot.T @ wy).reshape(n_groups, J, R)
        s2 = (onehot.T @ (wy * y.reshape(B, -1))).reshape(n_groups, J, R)
    else:  # per-(group, j) weights: a batched product over j, no expanded copy of the weights
        gw = onehot[:, None, :] * wj[:, :, None]  # [B, J, G]
        s1 = torch.einsum("bjg,bjr->gjr", gw, y)
        s2 = torch.einsum("bjg,bjr->gjr", gw, y * y)
    n, s1, s2 = n.double(), s1.double(), s2.double()
    safe = n.clamp(min=1e-300)
    mean = torch.where(n > 0, ref.double()[None] + s1 / safe, 0.0)
    m2 = torch.where(n > 0, (s2 - s1 * s1 / safe).clamp(min=0), 0.0)
    shape = (n_groups,) + tuple(x.shape[1:])
    return Moments(n.reshape(shape).contiguous(), mean.reshape(shape), m2.reshape(shape))


class Sums:
    """Running power sums about a fixed shift, the accumulating form of ``Moments``.

    ``n``, ``s1 = sum w (x - shift)`` and ``s2 = sum w (x - shift)^2`` in float64, where ``shift``
    (broadcasting against ``n``; shared by the groups of a grouped state) is fixed when the state
    is created. Adding a batch is then additions into the state: no per-batch merge of whole
    states. ``n``, ``mean`` and ``m2`` read like a ``Moments`` (derived once and cached until the
    next update), so readers need not know which form they hold; ``state_dict`` writes the
    sums, and ``merge`` re-expresses the other state (sums or moments) about this shift, exactly::

        d = mean_b - shift;  n += n_b;  s1 += n_b d;  s2 += m2_b + n_b d^2
    """

    def __init__(self, shift: Tensor, n: Tensor, s1: Tensor, s2: Tensor):
        self.shift, self._n, self.s1, self.s2 = shift, n, s1, s2
        self._cache: Moments | None = None

    @classmethod
    def zeros(cls, shape: tuple[int, ...], shift: Tensor) -> "Sums":
        z = lambda: torch.zeros(shape, dtype=torch.float64, device=shift.device)  # noqa: E731
        return cls(shift.to(torch.float64), z(), z(), z())

    def moments(self) -> Moments:
        if self._cache is None:
            n = self._n
            safe = n.clamp(min=1e-300)
            mean = torch.where(n > 0, self.shift + self.s1 / safe, 0.0)
            m2 = torch.where(n > 0, (self.s2 - self.s1 * self.s1 / safe).clamp(min=0), 0.0)
            self._cache = Moments(n, mean, m2)
        return self._cache

    @property
    def n(self) -> Tensor:
        return self._n

    @property
    def mean(self) -> Tensor:
        return self.moments().mean

    @property
    def m2(self) -> Tensor:
        return self.moments().m2

    @property
    def var(self) -> Tensor:
        return self.moments().var

    @property
    def std(self) -> Tensor:
        return self.moments().std

    def touched(self) -> None:
        """Call after changing the sums in place (the derived moments are recomputed)."""
        self._cache = None

    def add_moments_(self, lo: int, m: "Moments | Sums") -> None:
        """Fold moments ``m`` into the slice ``[lo:lo + len(m)]`` of dim 0, in place."""
        hi = lo + m.n.shape[0]
        shift = self.shift.expand_as(self._n)[lo:hi]
        d = torch.where(m.n > 0, m.mean - shift, 0.0)
        self._n[lo:hi] += m.n
        self.s1[lo:hi] += m.n * d
        self.s2[lo:hi] += m.m2 + m.n * d * d
        self.touched()

    def add_sums_(self, lo: int, n: Tensor, s1: Tensor, s2: Tensor, center: Tensor) -> None:
        """Fold sums taken about ``center`` (count ``n``, broadcasting) into ``[lo:lo + len(s1)]``,
        re-expressed about this state's shift (exact: nothing moves when ``center`` is the shift)."""
        hi = lo + s1.shape[0]
        delta = center.to(torch.float64) - self.shift.expand_as(self._n)[lo:hi]
        s1, s2 = s1.to(torch.float64), s2.to(torch.float64)
        self._n[lo:hi] += n
        self.s1[lo:hi] += s1 + n * delta
        self.s2[lo:hi] += s2 + 2 * delta * s1 + n * delta * delta
        self.touched()

    def add_grouped_(self, lo: int, x: Tensor, group: Tensor, n_groups: int) -> None:
        """Fold per-pair values ``x`` [B, S, *R] (NaN = no value) into ``[lo:lo + S, group]`` of a
        grouped state laid out [L, G, *R'], in place (the PyTorch form of ``fused.group_sums_``);
        where ``R`` is smaller than ``R'`` the values go to the leading block (the first offsets).

        The batch's sums are one-hot matrix products over the pairs, in float64 like the state (the
        per-pair ratio is heavy-tailed: float32 sums of its squares would lose small variances)."""
        B, S = x.shape[:2]
        block = (slice(lo, lo + S), slice(None), *(slice(0, k) for k in x.shape[2:]))
        y = x.reshape(B, -1).to(torch.float64, copy=True)
        ok = y == y  # not NaN
        y.sub_(self.shift[block].reshape(1, -1)).masked_fill_(~ok, 0.0)  # in place: few passes
        onehot = torch.nn.functional.one_hot(group, n_groups).T  # [G, B]

        def fold(v: Tensor) -> Tensor:  # [B, N] -> [S, G, *R]: per-group sums over the pairs
            if v.is_cuda:  # a one-hot product: deterministic on the GPU (index_add_ uses atomics there)
                out = onehot.to(v.dtype) @ v
            else:  # on the CPU index_add_ is sequential and much faster than a skinny matrix product
                out = torch.zeros((n_groups, v.shape[1]), dtype=v.dtype).index_add_(0, group, v)
            return out.view(n_groups, S, *x.shape[2:]).movedim(0, 1)

        self._n[block] += fold(ok.to(torch.float32))  # counts: exact in float32
        self.s1[block] += fold(y)
        self.s2[block] += fold(y.mul_(y))
        self.touched()

    def merge(self, other: "Moments | Sums") -> "Sums":
        """The two states together, expressed about this state's shift (exact in float64)."""
        shift = self.shift.expand_as(self._n)
        d = torch.where(other.n > 0, other.mean - shift, 0.0)
        out = Sums(self.shift, self._n + other.n, self.s1 + other.n * d, self.s2 + other.m2 + other.n * d * d)
        return out

    def state_dict(self, prefix: str = "") -> dict[str, Tensor]:
        """The sums themselves (so that a resumed run continues bit for bit)."""
        return {f"{prefix}shift": self.shift, f"{prefix}n": self._n, f"{prefix}s1": self.s1, f"{prefix}s2": self.s2}

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor], prefix: str = "") -> "Sums | Moments":
        """Sums saved by ``state_dict``, or moments (``Moments.state_dict``) as they were saved."""
        if f"{prefix}s1" not in state:
            return Moments.from_state_dict(state, prefix)
        return cls(*(state[f"{prefix}{k}"].to(torch.float64) for k in ("shift", "n", "s1", "s2")))

    def to(self, device) -> "Sums":
        return Sums(self.shift.to(device), self._n.to(device), self.s1.to(device), self.s2.to(device))
