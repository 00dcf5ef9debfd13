"""Well-conditioned activation patching (interp.causal.patching): the denominator and post_edit_margin,
category rows as a ratio of means with a bootstrap CI, pairs left out for a small denominator,
positions=modes (edit / after blocks), pairs patched together, and the figures of both settings."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from interp.causal import patching as P
from interp.pairs.validate import check_pair
from tests.test_patching import GRAMMAR, pair_tokens, patch_cfg

pytestmark = pytest.mark.usefixtures("one_thread")


def grammar_pairs(lm):
    tps = [check_pair(lm.tokenizer, a, b).tokens for a, b, _ in GRAMMAR]
    pairs = pd.DataFrame({"pair_id": [f"p{i}" for i in range(len(GRAMMAR))],
                          "category": [c for _, _, c in GRAMMAR], "a": [a for a, _, _ in GRAMMAR],
                          "b": [b for _, b, _ in GRAMMAR]})
    return pairs, tps


def run_table(lm, *overrides: str) -> pd.DataFrame:
    pairs, tps = grammar_pairs(lm)
    return P.run_patching(patch_cfg(*overrides), lm, pairs, tps)


@pytest.fixture(scope="module")
def modes(tiny_lm):
    """The defaults (positions=modes, margin, both directions, resid_pre), the 8 grammar pairs."""
    return run_table(tiny_lm, "patching.metrics=[margin,logprob]")


@pytest.fixture(scope="module")
def each(tiny_lm):
    return run_table(tiny_lm, "patching.positions=each", "patching.heads=true")


def pair_rows(t):
    return t[t["level"] == "pair"]


def cat_rows(t):
    return t[t["level"] == "category"]


# ---------------------------------------------------------------- the table

def test_the_table_has_the_documented_columns_and_cells(modes, each, tiny_lm):
    assert list(modes.columns) == P.COLUMNS and list(each.columns) == P.COLUMNS
    L = tiny_lm.bridge.cfg.n_layers
    pr = pair_rows(modes)
    assert set(pr["positions"]) == {"edit", "after"} and pr["position"].isna().all()
    assert (pr.loc[pr["positions"] == "edit", "offset"] == 0).all() and pr.loc[pr["positions"] == "after", "offset"].isna().all()
    # per pair: 2 directions x 2 metrics x layers x 2 cells, every pair of the run
    assert (pr.groupby("pair_id").size() == 2 * 2 * L * 2).all() and pr["pair_id"].nunique() == len(GRAMMAR)
    assert set(cat_rows(modes)["category"]) == {"article", "preposition", "agreement", "all"}
    assert {t.replace(" ", "") for t in pr.loc[pr["positions"] == "edit", "token"]} == {"an/a", "at/in", "is/are", "are/is"}
    ep = pair_rows(each)
    assert set(ep.loc[ep["kind"] == "resid_pre", "positions"]) == {"each"}
    assert set(ep.loc[ep["kind"] == "z", "positions"]) == {"all"} and ep.loc[ep["kind"] == "z", "head"].notna().all()
    assert ep.loc[ep["offset"] < 0, "normalized"].abs().max() < 1e-4  # before the edit: nothing to patch
    for t in (modes, each):
        assert cat_rows(t)["normalized_lo"].notna().all() and pair_rows(t)["normalized_lo"].isna().all()


def test_patching_pairs_together_gives_the_numbers_of_each_pair_alone(modes, each, tiny_lm):
    """run_patching stacks the pairs of one length and both directions into the same passes."""
    for table, positions, kinds in ((modes, "modes", ("resid_pre",)), (each, "each", ("resid_pre", "z"))):
        for pid, (a, b, _) in zip(["p0", "p2", "p5"], [GRAMMAR[0], GRAMMAR[2], GRAMMAR[5]]):
            ta, tb, edit = pair_tokens(tiny_lm, a, b)
            alone = P.patch_pair(tiny_lm.bridge, ta, tb, edit, kinds=kinds, positions=positions,
                                 metrics=("margin", "logprob") if positions == "modes" else ("margin",))
            mine = pair_rows(table)[pair_rows(table)["pair_id"] == pid]
            assert len(mine) == len(alone)
            np.testing.assert_allclose(mine["patched"], alone["patched"], atol=1e-4)
            np.testing.assert_allclose(mine["normalized"], alone["normalized"], atol=1e-4)
            assert list(mine["positions"]) == list(alone["positions"])


# ---------------------------------------------------------------- (e) the denominator

def test_the_denominator_is_the_post_edit_margin_up_to_sign(modes, tiny_lm):
    """source - base: the edited token's own log-prob cancels; only the tokens after the edit remain."""
    from interp.causal.atp import post_edit_logprobs

    pr = pair_rows(modes)
    np.testing.assert_allclose(pr["denominator"], pr["source"] - pr["base"], atol=1e-9)
    m = pr[pr["metric"] == "margin"]
    np.testing.assert_allclose(m["denominator"], -m["post_edit_margin"], atol=2e-4)  # both directions
    lp = pr[pr["metric"] == "logprob"]
    sign = np.where(lp["direction"] == "denoising", 1.0, -1.0)
    np.testing.assert_allclose(lp["denominator"], sign * lp["post_edit_margin"], atol=2e-4)
    # post_edit_margin by hand, from the unpatched logits of the pair
    ta, tb, edit = pair_tokens(tiny_lm, *GRAMMAR[0][:2])
    T, e, last = len(ta), torch.tensor([edit]), torch.tensor([len(ta) - 1])
    with torch.inference_mode():
        la, lb = tiny_lm.bridge(ta[None]), tiny_lm.bridge(tb[None])
    pem = float(post_edit_logprobs(la, ta[None], e, last) - post_edit_logprobs(lb, tb[None], e, last))
    np.testing.assert_allclose(pr.loc[pr["pair_id"] == "p0", "post_edit_margin"], pem, atol=2e-4)
    assert T > edit + 1 and abs(pem) > 0.5


# ---------------------------------------------------------------- (a) ratio of means

def test_category_normalized_is_the_ratio_of_means_of_the_pair_rows(modes):
    pr, cr = pair_rows(modes), cat_rows(modes)
    for cat in ("article", "preposition", "agreement", "all"):
        d = pr if cat == "all" else pr[pr["category"] == cat]
        d = d[d["denominator"].abs() >= 0.5]
        keys = ["layer", "positions", "direction", "metric"]
        s = np.sign(d["source"] - d["base"])  # each pair oriented so that its denominator is positive
        d = d.assign(num=s * (d["patched"] - d["base"]), den=s * (d["source"] - d["base"]))
        hand = d.groupby(keys).apply(lambda g: g["num"].mean() / g["den"].mean(), include_groups=False)
        got = cr[cr["category"] == cat].set_index(keys)["normalized"]
        np.testing.assert_allclose(got.loc[hand.index], hand, atol=1e-9)
        means = d.groupby(keys)[["patched", "base", "source"]].mean()
        np.testing.assert_allclose(cr[cr["category"] == cat].set_index(keys).loc[means.index, ["patched", "base", "source"]],
                                   means, atol=1e-9)
        assert (cr.loc[cr["category"] == cat, "n_pairs"] == d["pair_id"].nunique()).all()


def constructed(dens, nums, category="c") -> pd.DataFrame:
    """Pair rows of one cell: base 0, source = denominator, patched = numerator."""
    n = len(dens)
    return pd.DataFrame({"pair_id": [f"q{i}" for i in range(n)], "category": category, "hook": "resid_pre",
                         "kind": "resid_pre", "layer": 0, "positions": "edit", "offset": pd.array([0] * n, dtype="Int64"),
                         "head": pd.array([pd.NA] * n, dtype="Int64"), "direction": "denoising", "metric": "margin",
                         "patched": nums, "base": 0.0, "source": dens, "denominator": dens,
                         "post_edit_margin": np.negative(dens)})


def test_ratio_of_means_differs_from_the_mean_of_ratios():
    d = constructed([1.0, 10.0], [1.0, 0.0])  # a pair with a small denominator fully recovered, one not at all
    r = P.category_rows(d, min_denominator=0.5, n_boot=200, seed=0, pooled=None)
    assert len(r) == 1
    assert r["normalized"].iloc[0] == pytest.approx(1 / 11)  # ratio of means
    assert (d["patched"] / d["denominator"]).mean() == pytest.approx(0.5)  # the mean of ratios
    assert r["n_pairs"].iloc[0] == 2 and r["n_excluded"].iloc[0] == 0
    # denominators of opposite signs (post-edit margins of opposite signs): the pairs are oriented
    # first, so a fully and a half recovered pair give 1.6 / 2.2, not (1 - 0.6) / (1 - 1.2) = -2
    d = constructed([1.0, -1.2], [1.0, -0.6])
    r = P.category_rows(d, min_denominator=0.5, n_boot=200, seed=0, pooled=None)
    assert r["normalized"].iloc[0] == pytest.approx(1.6 / 2.2) and r["denominator"].iloc[0] == pytest.approx(1.1)
    w = d["denominator"].abs()
    assert r["normalized"].iloc[0] == pytest.approx((w * d["patched"] / d["denominator"]).sum() / w.sum())


# ---------------------------------------------------------------- (b) small denominators

def test_pairs_with_a_small_denominator_are_left_out_and_counted(modes, tiny_lm):
    pr = pair_rows(modes)
    small = pr.groupby("pair_id")["denominator"].apply(lambda s: s.abs().min() < 2.0)
    assert 0 < small.sum() < len(small)  # the threshold splits the pairs
    t2 = run_table(tiny_lm, "patching.min_denominator=2.0", "patching.metrics=[margin,logprob]")
    pr2, cr2 = pair_rows(t2), cat_rows(t2)
    np.testing.assert_array_equal(pr2["n_excluded"], (pr2["denominator"].abs() < 2.0).astype(int))
    np.testing.assert_array_equal(pr2["n_pairs"] + pr2["n_excluded"], 1)
    for cat, g in pr2.groupby("category"):
        n_small = int(small[g["pair_id"].unique()].sum())
        rows = cr2[cr2["category"] == cat]
        assert (rows["n_excluded"] == n_small).all() and (rows["n_pairs"] == g["pair_id"].nunique() - n_small).all()
        kept = g[g["denominator"].abs() >= 2.0]
        if len(kept):
            first = rows.iloc[0]
            cell = kept[(kept["layer"] == first["layer"]) & (kept["positions"] == first["positions"])
                        & (kept["direction"] == first["direction"]) & (kept["metric"] == first["metric"])]
            s = np.sign(cell["denominator"])
            assert first["normalized"] == pytest.approx((s * (cell["patched"] - cell["base"])).sum()
                                                        / cell["denominator"].abs().sum())
    allrows = cr2[cr2["category"] == "all"]
    assert (allrows["n_excluded"] == small.sum()).all()
    # a category whose every pair is left out: NaN, n_excluded = n
    none = P.category_rows(pr2, min_denominator=100.0, n_boot=50)
    assert none["normalized"].isna().all() and none["normalized_lo"].isna().all()
    n = pr2.groupby("category")["pair_id"].nunique()
    for cat, k in n.items():
        assert (none.loc[none["category"] == cat, "n_excluded"] == k).all()
    assert (none["n_pairs"] == 0).all()
    d = constructed([0.1, 0.2, 3.0], [0.1, 0.0, 3.0])
    r = P.category_rows(d, min_denominator=0.5, n_boot=100, pooled=None)
    assert r["normalized"].iloc[0] == pytest.approx(1.0) and r["n_excluded"].iloc[0] == 2 and r["n_pairs"].iloc[0] == 1


# ---------------------------------------------------------------- (c) the bootstrap

def test_the_bootstrap_interval_holds_the_estimate_and_is_reproducible(modes, tiny_lm):
    cr = cat_rows(modes)
    ok = cr["normalized"].notna()
    assert ok.all()
    assert (cr.loc[ok, "normalized_lo"] <= cr.loc[ok, "normalized"] + 1e-9).all()
    assert (cr.loc[ok, "normalized"] <= cr.loc[ok, "normalized_hi"] + 1e-9).all()
    assert (cr["normalized_hi"] - cr["normalized_lo"]).max() > 0.01  # not collapsed
    pr = pair_rows(modes)
    again = P.category_rows(pr, 0.5, 1000, 0.95, seed=0)
    np.testing.assert_array_equal(again["normalized_lo"].to_numpy(), cr["normalized_lo"].to_numpy())
    np.testing.assert_array_equal(again["normalized_hi"].to_numpy(), cr["normalized_hi"].to_numpy())
    other = P.category_rows(pr, 0.5, 1000, 0.95, seed=1)
    assert not np.allclose(other["normalized_lo"], cr["normalized_lo"])
    narrow = P.category_rows(pr, 0.5, 1000, 0.5, seed=0)
    assert (narrow["normalized_hi"] - narrow["normalized_lo"] <= cr["normalized_hi"].to_numpy()
            - cr["normalized_lo"].to_numpy() + 1e-12).all()
    # the vectorized bootstrap equals resampling one cell by hand with the same draws
    import zlib

    d = pr[pr["category"] == "article"]
    cell = d[(d["layer"] == 1) & (d["positions"] == "after") & (d["direction"] == "denoising") & (d["metric"] == "margin")]
    pids = list(pd.factorize(d["pair_id"].astype(str))[1])
    cell = cell.set_index("pair_id").loc[pids]
    rng = np.random.default_rng([0, zlib.crc32(b"article")])
    idx = rng.integers(0, len(pids), size=(1000, len(pids)))
    s = np.sign(cell["denominator"]).to_numpy()
    num, den = s * (cell["patched"] - cell["base"]).to_numpy(), np.abs(cell["denominator"].to_numpy())
    boot = np.array([num[i].sum() / den[i].sum() for i in idx])
    row = cr[(cr["category"] == "article") & (cr["layer"] == 1) & (cr["positions"] == "after")
             & (cr["direction"] == "denoising") & (cr["metric"] == "margin")].iloc[0]
    np.testing.assert_allclose([row["normalized_lo"], row["normalized_hi"]], np.percentile(boot, [2.5, 97.5]), atol=1e-12)


# ---------------------------------------------------------------- (d) positions=modes

@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_the_edit_and_after_blocks_together_recover_the_source_at_every_layer(tiny_lm, direction):
    """Positions before the edit are the same in both runs: patching edit..last at any layer is
    patching the whole residual stream there, the patched run is the source run."""
    bridge = tiny_lm.bridge
    ta, tb, edit = pair_tokens(tiny_lm, "They bought an old car.", "They bought a old car.")
    base, source = (tb, ta) if direction == "denoising" else (ta, tb)
    names = [f"blocks.{l}.hook_resid_pre" for l in range(bridge.cfg.n_layers)]
    src_logits, src = P.run_with_source_cache(bridge, source[None], names)
    base_logits, _ = P.run_with_source_cache(bridge, base[None], [])
    metric = P.logprob_metric(base)
    masks = P.position_blocks(len(ta), torch.tensor([edit]))

    def edit_and_after(act, index, source_act):  # a test-only cell: both blocks of positions=modes at once
        m = masks[0] | masks[1]
        act[m] = source_act[m]
        return act

    vals = P.generic_patch(bridge, base[None], src, metric, edit_and_after, "resid_pre", ("layer",))
    norm = P.normalized_effect(vals[:, 0], metric(base_logits)[0], metric(src_logits)[0])
    np.testing.assert_allclose(norm.numpy(), 1.0, atol=1e-4)
    # each block alone does not (layer 1: the edit has already moved into the later positions)
    blocks = P.generic_patch(bridge, base[None], src, metric, P.block_setter(masks), "resid_pre",
                             ("layer", "block"), axis_values={"block": [0, 1]})
    alone = P.normalized_effect(blocks[..., 0], metric(base_logits)[0], metric(src_logits)[0])
    assert abs(float(alone[1, 1]) - 1) > 0.05 and abs(float(alone[1, 0]) - 1) > 0.05
    assert abs(float(alone[0, 0]) - 1) < 1e-4 and abs(float(alone[0, 1])) < 1e-4  # layer 0: the token alone


def test_the_edit_cell_is_patching_the_edit_position(modes, each):
    """modes' edit block is the one position of each's offset 0, at every layer and direction; at
    layer 0 of resid_pre (the embedding of the edited token) it recovers the source run fully."""
    keys = ["pair_id", "layer", "direction", "metric"]
    m = pair_rows(modes)
    m = m[(m["positions"] == "edit") & (m["metric"] == "margin")].set_index(keys)
    e = pair_rows(each)
    e = e[(e["kind"] == "resid_pre") & (e["offset"] == 0)].set_index(keys)
    assert len(m) == len(e) > 0
    np.testing.assert_allclose(m["patched"], e.loc[m.index, "patched"], atol=1e-4)
    np.testing.assert_allclose(m.xs(0, level="layer")["normalized"], 1.0, atol=1e-4)
    cm, ce = cat_rows(modes), cat_rows(each)
    cm = cm[(cm["positions"] == "edit") & (cm["metric"] == "margin")].set_index(["category", "layer", "direction"])
    ce = ce[(ce["kind"] == "resid_pre") & (ce["offset"] == 0)].set_index(["category", "layer", "direction"])
    np.testing.assert_allclose(cm["normalized"], ce.loc[cm.index, "normalized"], atol=1e-4)
    np.testing.assert_array_equal(cm["n_pairs"], ce.loc[cm.index, "n_pairs"])


def test_unknown_positions_are_refused(tiny_lm):
    with pytest.raises(ValueError, match="patching.positions"):
        run_table(tiny_lm, "patching.positions=some")


# ---------------------------------------------------------------- figures and the viewer

def test_figures_and_viewer_panels_draw_both_settings_with_the_ci_in_the_hover(modes, each):
    from interp.figures import patching_heatmap, patching_panels
    from interp.viewer.web import patching_specs

    fig = patching_heatmap(modes, "resid_pre", category="article")
    heat = [t for t in fig.data if t.type == "heatmap"]
    assert len(heat) == 2 and list(heat[0].x) == ["edit", "after"] and np.asarray(heat[0].z).shape == (2, 2)
    assert "CI" in heat[0].hovertemplate and "excluded" in heat[0].hovertemplate
    fig = patching_heatmap(modes, "resid_pre", pair_id="p0")
    assert list(fig.data[0].x)[0].startswith("edit")
    fig = patching_heatmap(each, "resid_pre", category="all")
    assert min(int(x) for x in fig.data[0].x) <= 0 <= max(int(x) for x in fig.data[0].x)
    assert patching_heatmap(each, "z", pair_id="p1").data[0].x is not None
    cat = modes[(modes["level"] == "category") & (modes["category"] == "all")]
    panels = patching_panels(cat)
    assert [n for n, _ in panels] == ["patch-resid_pre-logprob", "patch-resid_pre-margin"]
    h = panels[0][1].data[0]
    assert list(h.x) == ["edit", "after"] and "CI" in h.hovertemplate and np.asarray(h.customdata).shape[-1] >= 4
    assert {s["name"] for s in patching_specs(each[each["pair_id"] == "p0"])} == {"patch-resid_pre-margin",
                                                                                  "patch-z-margin"}
    assert patching_specs(modes[modes["pair_id"] == "p0"])
    # an older table (no positions / CI columns) still draws
    old = each.drop(columns=["positions", "normalized_lo", "normalized_hi", "n_excluded", "denominator",
                             "post_edit_margin"])
    assert patching_panels(old[old["level"] == "category"]) and patching_heatmap(old, "resid_pre", category="article")


def test_the_defaults_take_little_time_on_the_tiny_model(tiny_lm):
    import time

    t = time.perf_counter()
    table = run_table(tiny_lm)
    elapsed = time.perf_counter() - t
    assert len(table) and set(table["metric"]) == {"margin"}
    assert elapsed < 30, elapsed
