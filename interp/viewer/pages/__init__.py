"""The viewer's pages, one Flask blueprint per page; a page's endpoints are ``<module>.<view>``
(e.g. ``url_for("pairs.pair", run=..., pair_id=...)``)."""

from __future__ import annotations

from . import causal, compare, component, divergence, head, index, layer, pairs, rejected, run, table, vendor

BLUEPRINTS = [m.bp for m in (vendor, index, compare, run, table, rejected, pairs, layer, head, component, causal,
                             divergence)]
