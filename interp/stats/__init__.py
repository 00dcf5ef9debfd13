"""Statistics of how components change between the two sentences of a pair, streamed over all pairs.

- ``moments``: mergeable float64 moments (``Moments``, ``Sums``), the state everything accumulates;
- ``registry``: the statistics themselves, as small specs (per-pair channels with their kernel
  slots, the stability table's columns); ``registry.value_columns()`` lists the columns a viewer
  can colour by;
- ``diff``: ``DiffStats``, the consumer that folds each batch's activations into the state and
  writes the tables;
- ``significance``: tests from moments (paired t, Welch, Benjamini-Hochberg q-values).
"""

from .diff import CHANNELS, POSITION_MODES, DiffStats, reduce_groups
from .moments import Moments, Sums
from .registry import value_columns
from .significance import bh_qvalues

__all__ = ["CHANNELS", "POSITION_MODES", "DiffStats", "Moments", "Sums", "bh_qvalues", "reduce_groups",
           "value_columns"]
