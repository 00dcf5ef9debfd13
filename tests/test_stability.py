"""The calibrated stability method on the tiny model: it must find what is planted, and stay quiet
(within the FDR level) when there is nothing to find."""

import itertools
import json
import random

import numpy as np
import pandas as pd
import pytest
import torch

from interp.stats import bh_qvalues
from interp.controls import build_pool
from interp.pairs.validate import check_pair
from interp.run import run
from tests.conftest import make_cfg

NOUNS = ["soup", "room", "car", "house", "dog", "city", "book", "road", "garden", "water", "coffee", "movie"]
ADJS = ["hot", "cold", "big", "small", "old", "new", "long", "short", "happy", "sad", "dark", "bright"]


def template_pairs(tok, n: int, seed: int = 0):
    """``n`` one-token semantic edits "The NOUN was ADJ today." with two different adjectives."""
    rng = random.Random(seed)
    combos = [(nn, a1, a2) for nn in NOUNS for a1, a2 in itertools.permutations(ADJS, 2)]
    rng.shuffle(combos)
    out = []
    for nn, a1, a2 in combos:
        a, b = f"The {nn} was {a1} today.", f"The {nn} was {a2} today."
        v = check_pair(tok, a, b)
        if v.ok:
            out.append((a, b, v.tokens))
        if len(out) == n:
            return out
    raise AssertionError("not enough template pairs")


def write_pairs(path, rows, category="adjective", type_="semantic", cats=None):
    with open(path, "w") as f:
        for i, (a, b, _) in enumerate(rows):
            c = cats[i] if cats else category
            f.write(json.dumps({"a": a, "b": b, "category": c, "type": type_}) + "\n")
    return path


def tiny_run(tmp_path, pairs_path, *extra, name="run", lm=None):
    cfg = make_cfg("model=tiny", "device=cpu", "pairs=file", f"pairs.path={pairs_path}", "hooks=all",
                   "batch_size=16", "analysis.figures=false", "analysis.n_saved_pairs=0",
                   "analysis.detail_pairs=0", *extra)
    out = run(cfg, tmp_path / name, lm=lm)
    return pd.read_parquet(out / "stability.parquet"), out


def test_bh_qvalues_match_the_textbook_procedure():
    p = np.array([0.01, 0.04, 0.03, 0.2, np.nan, 0.005])
    q = bh_qvalues(p)
    # sorted p: .005 .01 .03 .04 .2 (m=5) -> p*m/rank: .025 .025 .05 .05 .2 -> monotone from the top
    np.testing.assert_allclose(q[[5, 0, 2, 1, 3]], [0.025, 0.025, 0.05, 0.05, 0.2])
    assert np.isnan(q[4])


def test_a_planted_component_that_ignores_real_edits_but_not_control_edits_is_found(tiny_lm, tmp_path):
    rows = template_pairs(tiny_lm.tokenizer, 40)
    edit_tokens = {tp.ids_a[tp.edit_pos] for *_, tp in rows} | {tp.ids_b[tp.edit_pos] for *_, tp in rows}
    DIM = 7
    gen = torch.Generator().manual_seed(1)
    code = torch.randn(tiny_lm.info["d_vocab"], generator=gen) * 10
    code[list(edit_tokens)] = 0.0  # the planted dimension is blind to the real edits' tokens
    ids = {}

    def grab(x, hook):
        ids["t"] = x

    def plant(x, hook):
        x = x.clone()
        x[..., DIM] = code[ids["t"]]
        return x

    with tiny_lm.bridge.hooks(fwd_hooks=[("embed.hook_in", grab), ("blocks.0.hook_resid_post", plant)]):
        stab, _ = tiny_run(tmp_path, write_pairs(tmp_path / "p.jsonl", rows), lm=tiny_lm)
    edit = stab[(stab.position == "edit")]
    planted = edit[(edit.hook == "resid_post") & (edit.layer == 0) & (edit.component == DIM)].iloc[0]
    assert planted["mean_abs_diff"] == pytest.approx(0.0, abs=1e-6)
    assert planted["q_value"] < 1e-3 and planted["ratio"] < 1e-3
    top2 = edit.nsmallest(2, "rank_calibrated")  # the same tensor under two names
    assert set(zip(top2.hook, top2.layer, top2.component)) == {("resid_post", 0, DIM), ("resid_pre", 1, DIM)}
    # the planted dimension is not what the naive score finds special: it is a null-baseline result
    assert planted["control_normalized"] > 0.5


def test_a_constant_dimension_a_zeroed_head_and_an_offset_dimension_are_flagged(tiny_lm, tmp_path):
    rows = template_pairs(tiny_lm.tokenizer, 24)
    CONST, OFFSET, HEAD = 3, 11, 2

    def const_and_massive(x, hook):
        x = x.clone()
        x[..., CONST] = 1.5
        x[..., OFFSET] = 400.0 + 0.01 * x[..., OFFSET]
        return x

    def zero_head(z, hook):
        z = z.clone()
        z[:, :, HEAD] = 0.0
        return z

    with tiny_lm.bridge.hooks(fwd_hooks=[("blocks.0.hook_resid_post", const_and_massive),
                                         ("blocks.1.attn.hook_z", zero_head)]):
        stab, out = tiny_run(tmp_path, write_pairs(tmp_path / "p.jsonl", rows), "hooks.points=[resid_post,z]",
                             lm=tiny_lm)
    e = stab[stab.position == "edit"]
    rp0 = e[(e.hook == "resid_post") & (e.layer == 0)].set_index("component")
    assert rp0.loc[CONST, "constant"] and np.isnan(rp0.loc[CONST, "normalized"]) and pd.isna(rp0.loc[CONST, "rank"])
    assert not (rp0.loc[CONST, "q_value"] < 0.05)
    # a large offset on every token: offset_dim (and never stable), whatever the massive flag says
    assert rp0.loc[OFFSET, "offset_dim"] and rp0["offset_dim"].sum() == 1 and not rp0.loc[OFFSET, "stable"]
    z1 = e[(e.hook == "z") & (e.layer == 1)]
    assert z1[z1["head"] == HEAD]["constant"].all() and not z1[z1["head"] != HEAD]["constant"].any()
    assert z1[z1["head"] == HEAD]["q_value"].isna().all()
    heads = e[(e.hook == "z_head") & (e.layer == 1)].set_index("component")  # one row per head
    assert list(heads.index) == [0, 1, 2, 3] and heads.loc[HEAD, "constant"] and heads["constant"].sum() == 1
    assert heads.loc[HEAD, "mean_abs_diff"] == 0 and (heads.drop(HEAD)["normalized"] > 0).all()


def test_when_the_edits_are_themselves_control_edits_the_method_finds_almost_nothing(tiny_lm, tmp_path):
    tok = tiny_lm.tokenizer
    pool = build_pool(tok, 500)
    rng = random.Random(3)
    rows = []
    for a, _, tp in template_pairs(tok, 60, seed=5):
        ids = list(tp.ids_a)
        ids[tp.edit_pos] = rng.choice([t for t in pool.space if t != ids[tp.edit_pos]])
        b = tok.decode(ids)
        v = check_pair(tok, a, b)
        if v.ok and v.tokens.edit_pos == tp.edit_pos:
            rows.append((a, b, v.tokens))
    assert len(rows) >= 50
    stab, _ = tiny_run(tmp_path, write_pairs(tmp_path / "p.jsonl", rows), "analysis.controls.n=4")
    q = stab["q_value"].dropna()
    assert len(q) > 1000
    assert (q < 0.05).mean() <= 0.05


def test_a_contrast_of_random_halves_of_one_category_stays_within_the_fdr_level(tiny_lm, tmp_path):
    rows = template_pairs(tiny_lm.tokenizer, 60, seed=7)
    cats = ["half_a" if i % 2 else "half_b" for i in range(len(rows))]
    random.Random(0).shuffle(cats)
    _, out = tiny_run(tmp_path, write_pairs(tmp_path / "p.jsonl", rows, cats=cats),
                      "analysis.contrast=[half_a,half_b]")
    con = pd.read_parquet(out / "contrast.parquet")
    for col in ("hook", "layer", "component", "position", "group_a", "group_b", "effect", "p_value", "q_value"):
        assert col in con.columns
    assert set(con.group_a) == {"half_a"} and (con.n_a + con.n_b == 60).all()
    assert con["p_value"].notna().mean() > 0.9
    assert (con["q_value"] < 0.05).mean() <= 0.05


def test_a_planted_group_difference_is_found_by_the_contrast(tiny_lm, tmp_path):
    tok = tiny_lm.tokenizer
    loud_adjs, plain_adjs = ADJS[8:], ADJS[:8]
    rows, cats = [], []
    for i, (nn, a1, a2) in enumerate((nn, a1, a2) for nn in NOUNS for a1, a2 in itertools.permutations(plain_adjs, 2)):
        group = "loud" if i % 2 else "quiet"
        b_adj = loud_adjs[i % len(loud_adjs)] if group == "loud" else a2
        a, b = f"The {nn} was {a1} today.", f"The {nn} was {b_adj} today."
        v = check_pair(tok, a, b)
        if v.ok:
            rows.append((a, b, v.tokens))
            cats.append(group)
        if len(rows) == 40:
            break
    loud_tokens = [tok(" " + w, add_special_tokens=False)["input_ids"][0] for w in loud_adjs]
    DIM = 5
    ids = {}

    def grab(x, hook):
        ids["t"] = x

    def plant(x, hook):  # dimension DIM jumps on the loud group's edit tokens only
        x = x.clone()
        x[..., DIM] = x[..., DIM] + 30.0 * torch.isin(ids["t"], torch.tensor(loud_tokens))
        return x

    with tiny_lm.bridge.hooks(fwd_hooks=[("embed.hook_in", grab), ("blocks.1.hook_resid_post", plant)]):
        _, out = tiny_run(tmp_path, write_pairs(tmp_path / "p.jsonl", rows, cats=cats),
                          "analysis.contrast=[loud,quiet]", "hooks.points=[resid_post]", lm=tiny_lm)
    con = pd.read_parquet(out / "contrast.parquet")
    e = con[(con.position == "edit")]
    best = e.nsmallest(1, "p_value").iloc[0]
    assert (best.layer, best.component) == (1, DIM) and best.q_value < 1e-3 and best.effect > 0


def test_the_divergence_profile_is_zero_before_layer_mixing_and_per_category(tiny_lm, pairs_file, tmp_path):
    _, out = tiny_run(tmp_path, pairs_file)
    div = pd.read_parquet(out / "divergence.parquet")
    emb = div[(div.hook == "resid_pre") & (div.layer == 0)]
    # the embedding differs only at the edited token: offset 0 moves, later offsets do not
    assert (emb[emb.offset == 0].normalized > 0).all()
    assert np.allclose(emb[emb.offset > 0].normalized, 0.0)
    later = div[(div.hook == "resid_post") & (div.layer == 1) & (div.offset > 0)]
    assert (later.normalized > 0).any()
    assert {"all", "preposition", "subject"} <= set(div.category)


def test_the_edits_control_pool_draws_only_tokens_that_other_pairs_edit(tiny_lm, tmp_path):
    from interp.controls import control_ids, edits_pool

    rows = template_pairs(tiny_lm.tokenizer, 30)
    tps = [tp for *_, tp in rows]
    pool = edits_pool(tps)
    edited = {tp.ids_a[tp.edit_pos] for tp in tps} | {tp.ids_b[tp.edit_pos] for tp in tps}
    assert set(pool.space) | set(pool.bare) == edited
    tp = tps[0]
    own = {tp.ids_a[tp.edit_pos], tp.ids_b[tp.edit_pos]}
    ctrl = control_ids(pool, tp.ids_a, tp.edit_pos, tp.token_a, own, 3, 0, "x")
    assert ctrl == control_ids(pool, tp.ids_a, tp.edit_pos, tp.token_a, own, 3, 0, "x")  # seeded
    for ids in ctrl:
        diff = [i for i, (x, y) in enumerate(zip(ids, tp.ids_a)) if x != y]
        assert diff == [tp.edit_pos] and ids[tp.edit_pos] in edited - own
    stab, out = tiny_run(tmp_path, write_pairs(tmp_path / "p.jsonl", rows), "analysis.controls.pool=edits")
    assert stab["p_value"].notna().any()
    import json as _json
    assert _json.loads((out / "manifest.json").read_text())["controls"]["pool"] == "edits"
