"""Streaming, mergeable moments: count, mean and sum of squared deviations (M2), per element.

Statistics over a dataset are accumulated batch by batch and never need the data again. The
running state is ``Sums``: float64 power sums about a fixed shift, to which each batch's sums are
added. ``Moments`` (n, mean, M2) is how a state is read, and two states merge with the parallel
update of Chan, Golub and LeVeque (1979)::

    n   = n_a + n_b
    d   = mean_b - mean_a
    mean = mean_a + d * n_b / n
    M2  = M2_a + M2_b + d**2 * n_a * n_b / n

so statistics of shards run in separate processes merge into exactly the statistics of one pass
(up to float rounding). State is float64 and lives on the device of the data: no host transfer
per batch. A per-pair value that does not exist (NaN) is left out of the count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor


@dataclass
class Moments:
    """Per-element moments of shape ``shape``; ``n`` may differ per element (values left out)."""

    n: Float[Tensor, "*shape"]
    mean: Float[Tensor, "*shape"]
    m2: Float[Tensor, "*shape"]

    def merge(self, other: "Moments") -> "Moments":
        """Chan et al. parallel combination; exact for the count and, in float64, for mean and M2."""
        n = self.n + other.n
        safe = n.clamp(min=1e-300)
        d = other.mean - self.mean
        mean = torch.where(n > 0, self.mean + d * other.n / safe, 0.0)
        m2 = self.m2 + other.m2 + d * d * self.n * other.n / safe
        return Moments(n, mean, m2)

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
        onehot = torch.nn.functional.one_hot(group, n_groups).T if x.is_cuda else None  # [G, B]

        def fold(v: Tensor) -> Tensor:  # [B, N] -> [S, G, *R]: per-group sums over the pairs
            if onehot is not None:  # a one-hot product: deterministic on the GPU (index_add_ uses atomics there)
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
        """Sums saved by ``state_dict``, or moments (``Moments.state_dict``) as they were saved. A
        count saved compact (``compact_counts``: trailing axes of size 1) is broadcast back to the
        shape of the sums, exactly."""
        if f"{prefix}s1" not in state:
            return Moments.from_state_dict(state, prefix)
        shift, n, s1, s2 = (state[f"{prefix}{k}"].to(torch.float64) for k in ("shift", "n", "s1", "s2"))
        return cls(shift, expand_counts(n, s1.shape), s1, s2)

    def to(self, device) -> "Sums":
        return Sums(self.shift.to(device), self._n.to(device), self.s1.to(device), self.s2.to(device))


def compact_counts(n: Tensor) -> Tensor:
    """A count tensor as saved: its last (component) axis stored with size 1 when every count along
    it is the same (every component of a site sees the same pairs unless an activation is NaN), else
    as it is. Lossless: ``expand_counts`` gives the tensor back bit for bit, and a reader tells the
    two forms apart by the shape alone (the sums keep the full shape)."""
    if n.ndim == 0 or n.shape[-1] <= 1 or not bool((n == n[..., :1]).all()):
        return n
    return n[..., :1].clone()


def expand_counts(n: Tensor, shape: torch.Size | tuple[int, ...]) -> Tensor:
    """The full count tensor of sums of ``shape`` from a saved one (``compact_counts``); a new tensor
    that in-place updates may write to."""
    if tuple(n.shape) == tuple(shape):
        return n
    if n.ndim != len(shape) or n.shape[:-1] != tuple(shape)[:-1] or n.shape[-1] != 1:
        raise ValueError(f"a saved count of shape {list(n.shape)} does not fit sums of shape {list(shape)}")
    return n.expand(*shape).clone()
