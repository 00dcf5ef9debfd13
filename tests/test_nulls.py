"""The nulls and the clustered statistics on planted components (the tiny Llama, embedding planted).

At layer 0, ``resid_pre`` is the token embedding itself, so planting rows of the input embedding
plants components whose change is known:

- every real edit ``a -> b`` swaps ``a`` for a token a small step away in the embedding, and each
  ``a`` has 24 planted neighbours just as far away: a dimension of the residual stream then changes
  with the embedding distance of the swap, whatever the edit means;
- dimension 0 ignores the edit: ``a`` and ``b`` share its value, every other token differs there;
- the BOS row carries a huge value in dimension 5: a massive activation (Sun et al. 2024) that sits
  on BOS only, so it is no constant offset.

Random control words (``common``) are far from ``a``: against them the distance-tracking dimensions
look stable. Controls matched on embedding distance, and the nearest tokens, are as close as the
real edit: against them they are not. Dimension 0 is stable under every null.
"""

import copy

import numpy as np
import pandas as pd
import pytest
import torch

import interp

WORDS = ("cat dog car bus tree house book pen king queen river lake chair table apple bread shirt shoe cup plate "
         "door window bird fish horse cow milk tea coat hat road street").split()
FRAMES = ("I saw the {} today.", "We like the {} a lot.", "They found a {} there.", "She wants the {} now.")
SWAPS = [(WORDS[2 * i], WORDS[2 * i + 1]) for i in range(10)]
ALTS = WORDS[20:30]
IGNORES, MASSIVE = 0, 5
OPTIONS = dict(hooks=["resid_pre"], layers=[0], positions=["edit"], figures=False, batch_size=16,
               bos_token="<|endoftext|>", contrast=None)


def _one(tok, word: str) -> int:
    ids = tok(" " + word, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1, word
    return ids[0]


@pytest.fixture(scope="module")
def planted(tiny_lm):
    """(hf model with the planted embedding, tokenizer, pairs)."""
    tok = tiny_lm.tokenizer
    hf = copy.deepcopy(tiny_lm.plain.original_model if tiny_lm.plain is not None else tiny_lm.hf_model)
    E = hf.get_input_embeddings().weight
    g = torch.Generator().manual_seed(0)
    used = {_one(tok, w) for w in WORDS}
    # neighbours: lowercase whole words with a leading space that no pair uses, of about b's frequency
    # (the log-frequency proxy is the token id: the 24 spare ids nearest b's)
    spare = [t for t in range(1000, len(tok)) if t not in used and (s := tok.decode([t])).startswith(" ")
             and s[1:].isascii() and s[1:].isalpha() and s[1:].islower() and len(s) > 3]
    taken: set[int] = set()

    def step(base, size, dim0):
        """base + a random step of Euclidean length ``size`` that moves dimension 0 by ``dim0``."""
        u = torch.randn(E.shape[1], generator=g)
        u[IGNORES] = 0
        v = u / u.norm() * (size ** 2 - dim0 ** 2) ** 0.5
        v[IGNORES] = dim0
        return base + v

    with torch.no_grad():
        E[tiny_lm.bos_token_id, MASSIVE] = 1e4
        for wa, wb in SWAPS:
            ta, tb = _one(tok, wa), _one(tok, wb)
            size = float(0.25 * E[ta].norm())
            E[tb] = step(E[ta], size, 0.0)  # the real edit leaves dimension 0 alone ...
            near = sorted((t for t in spare if t not in taken), key=lambda t: abs(t - tb))[:24]
            taken.update(near)
            for t in near:  # ... every neighbour, as far from a, moves it
                E[t] = step(E[ta], size, 0.5 * size)
    pairs = [{"a": f.format(wa), "b": f.format(wb), "category": "nouns", "alt": ALTS[i]}
             for i, (wa, wb) in enumerate(SWAPS) for f in FRAMES]
    return hf, tok, pairs


def _run(planted, pool: str, **options):
    hf, tok, pairs = planted
    return interp.analyze((hf, tok), pairs, controls={"pool": pool, "n": 3}, **{**OPTIONS, **options})


@pytest.fixture(scope="module")
def runs(planted):
    return {pool: _run(planted, pool) for pool in ("common", "matched", "nearest", "grammatical", "edits")}


def test_matched_and_nearest_controls_are_as_close_as_the_real_edit(runs):
    for pool in ("matched", "nearest"):
        p = runs[pool].pairs
        assert (p["dist_ac_mean"] < 2 * p["dist_ab"]).all(), pool
    common = runs["common"].pairs
    assert (common["dist_ac_mean"] > 5 * common["dist_ab"]).all()


def test_a_component_that_tracks_the_substitution_size_is_stable_only_against_random_words(runs):
    tracks = lambda st: st[~st["component"].isin([IGNORES, MASSIVE])]  # noqa: E731
    assert tracks(runs["common"].stability)["stable"].mean() > 0.9
    for pool in ("matched", "nearest"):
        st = tracks(runs[pool].stability)
        assert not st["stable"].any(), pool
        assert (st["ratio_hi"] > 0.5).all() and st["ratio"].median() > 0.7, pool


def test_a_component_that_ignores_the_edit_is_stable_under_every_null(runs):
    for pool, r in runs.items():
        row = r.stability.set_index("component").loc[IGNORES]
        assert row["stable"] and row["ratio_hi"] < 0.5, pool
        assert row["se_method"] == "cluster:swap" and row["n_clusters"] == len(SWAPS), pool
    for pool in ("matched", "nearest"):  # beyond its size: the regression's real-edit coefficient is negative
        row = runs[pool].stability.set_index("component").loc[IGNORES]
        assert row["adj_hi"] < 0 and row["adj_coef"] < 0, pool


def test_massive_on_bos_is_flagged_apart_from_offsets_and_never_stable(runs):
    st = runs["common"].stability.set_index("component")
    assert st.loc[MASSIVE, "massive"] and not st.loc[MASSIVE, "offset_dim"]
    assert st["massive"].sum() == 1 and st.loc[MASSIVE, "max_abs"] == pytest.approx(1e4, rel=1e-3)
    assert not st.loc[MASSIVE, "stable"]


def test_the_run_says_which_null_and_rule_it_used(runs):
    text = runs["matched"].summary()
    assert "null: matched (3 control edits per pair" in text
    assert "rule: equivalence: ratio_hi < 0.5" in text
    assert "cluster:swap" in text
    assert "null: grammatical (1 control edit per pair" in runs["grammatical"].summary()
    assert runs["grammatical"].manifest["controls"]["k"] == 1


def test_cluster_robust_standard_error_equals_a_direct_computation_from_pair_values(runs, tmp_path):
    r = runs["matched"]
    out = r.save(tmp_path / "run")
    pv = pd.read_parquet(out / "pair_values.parquet",
                         filters=[("hook", "==", "resid_pre"), ("layer", "==", 0), ("position", "==", "edit")])
    pairs = pd.read_parquet(out / "pairs.parquet")
    stab = pd.read_parquet(out / "stability.parquet").set_index("component")
    swap = pairs.set_index("pair_index")[["token_id_a", "token_id_b"]].apply(tuple, axis=1)
    pv["cluster"] = pv["pair_index"].map(swap)
    pv["delta"] = pv["abs_diff"].astype(float) - pv["control_diff"].astype(float)
    for c in (IGNORES, 1, 17, 63):
        d = pv[pv["component"] == c]
        n, G = len(d), d["cluster"].nunique()
        e = d["delta"] - d["delta"].mean()
        meat = e.groupby(d["cluster"]).sum().pow(2).sum()
        assert stab.loc[c, "se_cluster"] == pytest.approx(np.sqrt(G / (G - 1) * meat) / n, rel=1e-9)
        assert stab.loc[c, "n_clusters"] == G
        assert stab.loc[c, "mean_abs_diff"] == pytest.approx(d["abs_diff"].mean(), rel=1e-5)
    # and the file reads back through the API
    again = interp.load_run(out).pair_values("resid_pre", 0, "edit")
    assert len(again) == len(pairs) * 64


@pytest.mark.parametrize("pool", ["common", "edits", "matched", "nearest", "grammatical"])
def test_random_halves_of_one_category_rarely_differ(planted, pool):
    """A contrast between two random halves of the same pairs: under every null, at most 1% of the
    components reach q < 0.05 (iid or cluster-robust)."""
    hf, tok, pairs = planted
    rng = np.random.default_rng(1)
    halves = [dict(p, category=("half_a" if h else "half_b")) for p, h in zip(pairs, rng.permutation(len(pairs)) % 2)]
    r = interp.analyze((hf, tok), halves, controls={"pool": pool, "n": 3},
                       **{**OPTIONS, "layers": None, "contrast": ["half_a", "half_b"]})
    ct = r.contrast
    assert len(ct) == 2 * 64
    assert (ct["q_value"] < 0.05).mean() <= 0.01
    assert (ct["q_cluster"] < 0.05).mean() <= 0.01
    assert (ct["n_clusters"] > 1).all()


def test_directions_count_the_stable_set_and_measure_the_mean_difference(runs):
    r = runs["common"]
    st, dr = r.stability, r.directions
    row = dr[(dr["layer"] == 0) & (dr["position"] == "edit")].iloc[0]
    stable = st[st["stable"]]
    assert row["n_stable"] == len(stable) > 10 and row["n_distinct"] == stable["component"].nunique()
    assert 1 <= row["n_pcs"] <= row["n_stable"]  # from the per-pair values of the stable components
    assert row["pairs_used"] == "grammar"
    assert row["mean_diff_norm"] == pytest.approx(float(np.sqrt((st["mean_diff"] ** 2).sum())), rel=1e-6)
    assert row["mean_diff_relative"] == pytest.approx(row["mean_diff_norm"] / np.sqrt((st["spread"] ** 2).sum()),
                                                      rel=1e-6)
    pooled = dr[dr["layer"] == -1].iloc[0]  # one layer: pooling changes nothing
    assert (pooled["n_stable"], pooled["n_distinct"], pooled["n_pcs"]) == (row["n_stable"], row["n_distinct"],
                                                                            row["n_pcs"])
    assert (st["stable_layers"] == st["stable"].astype(int)).all()  # one layer: 1 where stable
