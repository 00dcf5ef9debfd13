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
        """Moments of one batch along dim 0. ``w`` broadcasts against ``x`` (e.g. ``[batch, 1, ...]``)."""
        x = x.to(torch.float64)
        if w is None:
            n = torch.full(x.shape[1:], float(x.shape[0]), dtype=torch.float64, device=x.device)
            mean = x.mean(0)
            m2 = ((x - mean) ** 2).sum(0)
            return Moments(n, mean, m2)
        w = w.to(torch.float64)
        while w.ndim < x.ndim:
            w = w.unsqueeze(-1)
        n = w.expand_as(x).sum(0)
        mean = (w * x).sum(0) / n.clamp(min=1e-300)
        m2 = (w * (x - mean) ** 2).sum(0)
        return Moments(n, torch.where(n > 0, mean, 0.0), m2)

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
