"""Fair ablation (interp.causal.ablation, selection, metrics): batched conditions, matched random
selections, the comparison against them, and a selection made on one half tested on the other."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from interp import rundir as R
from interp.causal import ablation as A
from interp.causal import atp as AT
from interp.causal import metrics as M
from interp.causal.selection import matched_random, split_pairs
from interp.engine import forward, make_batches, sentence_logprobs
from interp.stats.clustered import cluster_keys, mean_ci, paired
from tests.conftest import make_cfg
from tests.test_atp import PLANT_ROWS, planted, tokenized
from tests.test_patching import GRAMMAR, patch_cfg

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def batch(tiny_lm):
    tps = tokenized(tiny_lm, [(a, b) for a, b, _ in GRAMMAR])
    return make_batches(tps, [0] * len(tps), tiny_lm.bos_token_id, tiny_lm.pad_token_id, 16)[0]


def site(name, comps, mean=None):
    comps = np.asarray(comps)
    return A.SiteAblation(name, torch.tensor(comps), torch.zeros(len(comps)) if mean is None else torch.as_tensor(mean))


# ============================================================================ the metrics

def test_pair_metrics_equal_the_separate_definitions(tiny_lm, batch):
    logits = forward(tiny_lm.plain, batch)
    got = M.pair_metrics(logits, batch)
    B = batch.size
    lp = sentence_logprobs(logits[:2 * B], batch.tokens[:2 * B], batch.mask[:2 * B])
    np.testing.assert_allclose(got["margin"], (lp[:B] - lp[B:]).numpy(), atol=1e-4)
    np.testing.assert_allclose(got["post_edit_margin"], AT.post_edit_margin(logits, batch).numpy(), atol=1e-4)
    np.testing.assert_allclose(got["downstream_divergence"], M.downstream_divergence(logits, batch).numpy(), atol=1e-6)
    # the divergence by hand: KL(p_a || p_b) of each prediction after the edit, averaged per pair
    for i in range(B):
        e, last = int(batch.edit[i]), int(batch.last[i])
        la = logits[i, e:last].float().log_softmax(-1)
        lb = logits[B + i, e:last].float().log_softmax(-1)
        kl = torch.nn.functional.kl_div(lb, la, log_target=True, reduction="none").sum(-1).mean()
        assert got["downstream_divergence"][i] == pytest.approx(float(kl), abs=1e-5)
        assert got["downstream_divergence"][i] > 0
    # identical sentences: no divergence, no margin
    same = forward(tiny_lm.plain, batch).clone()
    same[B:2 * B] = same[:B]
    assert np.abs(M.downstream_divergence(same, batch).numpy()).max() < 1e-6


# ============================================================================ batched conditions

@pytest.mark.parametrize("mode", ["mean", "zero", "resample"])
def test_stacked_conditions_equal_each_ablation_alone(tiny_lm, batch, mode):
    """Many conditions in one pass give, row for row, what each condition gives in its own pass."""
    model = tiny_lm.plain
    names = ["blocks.0.hook_resid_post", "blocks.1.attn.hook_z", "blocks.0.mlp.hook_post"]
    rng = np.random.default_rng(0)
    conds = []
    for i in range(4):
        sites = [site(n, rng.choice(64, size=3 + i, replace=False), rng.normal(size=3 + i)) for n in names[: 1 + i % 3]]
        conds.append(A.Condition("random", 3, i, mode, "after" if i % 2 else "edit", i, sites))
    for where in ("edit", "after"):
        cs = [c for c in conds if c.where == where]
        clean: dict = {}
        forward(model, batch, A.capture_hooks(names, clean))
        got = A.run_conditions(model, batch, cs, clean=clean, batch_seed=5)
        for j, c in enumerate(cs):
            donor = A.draw_donors(batch, c.draw * 1_000_003 + 5) if mode == "resample" else None
            alone = forward(model, batch, A.ablation_hooks(c.sites, A.where_mask(batch, where), mode, donor=donor,
                                                           clean=clean))
            want = M.pair_metrics(alone, batch)
            for m in A.METRICS:
                np.testing.assert_allclose(got[m][j], want[m], atol=2e-4, rtol=1e-4, err_msg=f"{mode} {where} {m}")
        base = M.pair_metrics(forward(model, batch), batch)
        assert np.abs(got["post_edit_margin"] - base["post_edit_margin"]).max() > 1e-3  # the ablations act


def _old_condition_hook(conds, batch, name, act, clean=None, batch_seed=0):
    """The hook ``condition_hooks`` made before it wrote in place: a ``torch.where`` over the whole
    activation with a selection mask and a mean vector rebuilt per call."""
    mode, where = conds[0].mode, conds[0].where
    B2 = 2 * batch.size
    pos = A.where_mask(batch, where)[:B2]
    entries = [(ci, s) for ci, c in enumerate(conds) for s in c.sites if s.hook_name == name]
    donors = [A.draw_donors(batch, c.draw * 1_000_003 + batch_seed) for c in conds] if mode == "resample" else None
    shape = act.shape
    flat = act.reshape(len(conds), B2, shape[1], -1)
    n = flat.shape[-1]
    sel = torch.zeros((len(conds), n), dtype=torch.bool)
    mean = torch.zeros(n, dtype=flat.dtype)
    for ci, s in entries:
        sel[ci, s.index] = True
        mean[s.index] = s.mean.to(flat.dtype)
    m = sel[:, None, None, :] & pos[None, :, :, None]
    if mode == "zero":
        value = torch.zeros((), dtype=flat.dtype)
    elif mode == "mean":
        value = mean
    else:
        src = clean[name].reshape(B2, shape[1], -1).to(flat.dtype)
        t = torch.arange(shape[1])[None, :]
        value = torch.stack([torch.where((d[:B2] >= 0)[..., None], src[d[:B2].clamp(min=0), t], mean)
                             for d in donors])
    return torch.where(m, value, flat).reshape(shape)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("where", A.WHERE)
@pytest.mark.parametrize("mode", A.MODES)
def test_condition_hooks_write_exactly_what_the_where_over_the_whole_activation_wrote(batch, mode, where, dtype):
    """The in-place hooks equal, bit for bit, the former ``torch.where`` formula on random activations
    (a residual point [R, T, d] and a per-head point [R, T, head, d_head]), several conditions per
    pass, overlapping components, one condition without components at one hook."""
    g = torch.Generator().manual_seed(0)
    B2, T, C = 2 * batch.size, batch.seq_len, 3
    shapes = {"blocks.0.hook_resid_post": (64,), "blocks.1.attn.hook_z": (4, 16)}
    rng = np.random.default_rng(1)
    means = {n: torch.randn(int(np.prod(s)), generator=g) for n, s in shapes.items()}
    conds = []
    for i in range(C):
        sites = [site(n, idx, means[n][idx]) for n in shapes if not (i == 1 and n.endswith("hook_z"))
                 for idx in [np.sort(rng.choice(int(np.prod(shapes[n])), size=5 + 3 * i, replace=False))]]
        conds.append(A.Condition("random", 3, i, mode, where, 7 + i, sites))
    clean = {n: torch.randn((B2, T, *s), generator=g).to(dtype) for n, s in shapes.items()}
    hooks = dict(A.condition_hooks(conds, batch, clean=clean, batch_seed=3, dtype=dtype))
    assert set(hooks) == set(shapes)
    for name, s in shapes.items():
        act = torch.randn((C * B2, T, *s), generator=g).to(dtype)
        want = _old_condition_hook(conds, batch, name, act.clone(), clean=clean, batch_seed=3)
        got = hooks[name](act.clone())
        assert got.shape == act.shape and got.dtype == dtype
        assert torch.equal(got, want), f"{mode} {where} {name}"
        assert not torch.equal(got, act)  # something was ablated


def test_stacked_metrics_equal_pair_metrics_of_the_full_logits(tiny_lm, batch):
    """The metrics from the unembedded slots only equal those of the full logits (float rounding);
    with the unablated metrics as ``base``, ``run_conditions`` at edit/after (after-edit slots only)
    equals it without."""
    model = tiny_lm.plain
    want = M.pair_metrics(forward(model, batch), batch)
    got = M.stacked_metrics(model, batch, 2)
    for m in A.METRICS:
        assert got[m].shape == (2, batch.size)
        np.testing.assert_allclose(got[m][0], want[m], atol=1e-5, rtol=1e-5, err_msg=m)
        np.testing.assert_array_equal(got[m][0], got[m][1])
    names = ["blocks.0.hook_resid_post", "blocks.1.mlp.hook_post"]
    rng = np.random.default_rng(3)
    for where in ("edit", "after"):
        conds = [A.Condition("random", 4, i, "mean", where, i,
                             [site(n, rng.choice(64, size=4, replace=False), rng.normal(size=4)) for n in names])
                 for i in range(3)]
        full = A.run_conditions(model, batch, conds)
        fast = A.run_conditions(model, batch, conds, base={m: v[0] for m, v in got.items()})
        for m in A.METRICS:
            np.testing.assert_allclose(fast[m], full[m], atol=1e-5, rtol=1e-5, err_msg=f"{where} {m}")


# ============================================================================ a planted component

def test_ablating_a_planted_component_moves_post_edit_margin_beyond_every_random_seed(tiny_lm):
    tps = tokenized(tiny_lm, PLANT_ROWS)
    b = make_batches(tps, [0] * len(tps), tiny_lm.bos_token_id, tiny_lm.pad_token_id, 16)[0]
    name = "blocks.0.hook_resid_post"
    spread = np.linspace(0.5, 2.0, 64)
    cands = pd.DataFrame({"hook": "resid_post", "hook_name": name, "layer": 0, "component": np.arange(64),
                          "spread": spread, "act_mean": 0.0, "normalized": 0.0, "_rank": np.arange(64.0)})
    with planted(tiny_lm, tps) as dim:
        top = cands[cands["component"] == dim]
        stable = A.Condition("stable", 1, 0, "mean", "all", 0, A.group_components(top))
        randoms = [A.Condition("random", 1, s, "mean", "all", s, A.group_components(matched_random(cands, top, s, 10)))
                   for s in range(100)]
        conds = [stable] + randoms
        base = M.pair_metrics(forward(tiny_lm.plain, b), b)
        vals = {m: np.zeros((len(conds), b.size)) for m in A.METRICS}
        for start in range(0, len(conds), 25):
            got = A.run_conditions(tiny_lm.plain, b, conds[start:start + 25])
            for m in A.METRICS:
                vals[m][start:start + 25] = got[m]
        # patching it from a into b recovers most of what the plant adds after the edit
        recovered = AT.patch_effect(tiny_lm, b, "resid_post", 0, dim, "all")
        atp = AT.atp_table(tiny_lm, tps, ["resid_post"], batch_size=8, modes=("all",))
    pairs = pd.DataFrame({"pair_id": [f"p{i}" for i in range(b.size)], "category": "article"})
    vs = A.vs_random(conds, pairs, vals, base, np.arange(b.size))
    row = vs[(vs["metric"] == "post_edit_margin") & (vs["category"] == "all")].iloc[0]
    assert base["post_edit_margin"].mean() > 1.0
    assert row["n_seeds"] == 100 and row["change"] < -1.0  # removing the plant removes what it carries
    assert row["beyond_all_random"] and row["change"] < row["random_min"]
    assert row["p_perm"] == pytest.approx(1 / 101)
    assert row["diff_hi"] < 0 and row["share_random_below"] == 0.0
    # the random selections: one per seed, never the planted dimension, close to it in spread
    picks = [int(c.sites[0].index[0]) for c in randoms]
    assert dim not in picks and len(set(picks)) > 5
    assert np.abs(spread[picks] - spread[dim]).max() <= 6 * 1.5 / 63 + 1e-9  # among the 10 nearest in spread
    assert float(recovered.mean()) > 0.5 * float(base["post_edit_margin"].mean())
    top_atp = atp[(atp["layer"] == 0)].sort_values("rank_in_hook").iloc[0]
    assert int(top_atp["component"]) == dim


# ============================================================================ matched random, the comparison

def test_matched_random_matches_spread_within_each_site_and_is_seeded():
    rng = np.random.default_rng(1)
    rows = []
    for layer in range(3):
        for c in range(200):
            rows.append({"hook": "resid_post", "hook_name": f"blocks.{layer}.hook_resid_post", "layer": layer,
                         "component": c, "spread": float(np.exp(rng.normal(0, 1.5)))})
    cands = pd.DataFrame(rows)
    top = cands.nlargest(12, "spread")  # the widest components: a site-random draw would be far narrower
    a, b = matched_random(cands, top, 3, 10), matched_random(cands, top, 3, 10)
    pd.testing.assert_frame_equal(a, b)
    assert not matched_random(cands, top, 4, 10).equals(a)
    assert sorted(a["layer"]) == sorted(top["layer"])  # as many per site as the stable set has there
    assert not set(zip(a["hook_name"], a["component"])) & set(zip(top["hook_name"], top["component"]))
    lr = np.log(a["spread"].median() / top["spread"].median())
    site_random = cands[~cands.index.isin(top.index)].sample(12, random_state=0)
    assert abs(lr) < abs(np.log(site_random["spread"].median() / top["spread"].median())) / 3


def test_vs_random_statistics_by_hand():
    rng = np.random.default_rng(2)
    N, S = 40, 30
    base = {m: np.zeros(N) for m in A.METRICS}
    stable = rng.normal(-0.5, 1, N)
    random = rng.normal(0, 1, (S, N))
    conds = [A.Condition("stable", 5, 0, "mean", "edit", 0, [])] + [
        A.Condition("random", 5, s, "mean", "edit", s, []) for s in range(S)]
    vals = {m: np.concatenate([stable[None], random]) for m in A.METRICS}
    pairs = pd.DataFrame({"pair_id": range(N), "category": ["x"] * 20 + ["y"] * 20})
    g = np.repeat(np.arange(10), 4)
    vs = A.vs_random(conds, pairs, vals, base, g)
    r = vs[(vs["category"] == "all") & (vs["metric"] == "margin")].iloc[0]
    d = mean_ci(stable - random.mean(0), g)
    assert r["diff_vs_random"] == pytest.approx(stable.mean() - random.mean())
    assert (r["diff_lo"], r["diff_hi"], r["n_clusters"]) == (pytest.approx(d["lo"]), pytest.approx(d["hi"]), 10)
    rbar = random.mean(1)
    far = np.abs(rbar - rbar.mean()) >= abs(stable.mean() - rbar.mean())
    assert r["p_perm"] == pytest.approx((1 + far.sum()) / (S + 1))
    assert r["random_sd"] == pytest.approx(rbar.std(ddof=1)) and r["n_seeds"] == S
    assert set(vs["category"]) == {"x", "y", "all"} and set(vs["metric"]) == set(A.METRICS)


def test_mean_ci_is_the_cluster_robust_interval():
    from scipy import stats

    rng = np.random.default_rng(3)
    x, g = rng.normal(size=30), np.repeat(np.arange(6), 5)
    got = mean_ci(x, g)
    S = np.array([(x[g == k] - x.mean()).sum() for k in range(6)])
    se = np.sqrt(6 / 5 * (S ** 2).sum()) / 30
    assert got["se"] == pytest.approx(se)
    assert got["hi"] == pytest.approx(x.mean() + stats.t.ppf(0.975, 5) * se)
    one = mean_ci(x, np.arange(30))  # one cluster per pair: the iid interval, up to the factor G / (G - 1)
    assert one["se"] == pytest.approx(x.std(ddof=1) / np.sqrt(30), rel=1e-9)


# ============================================================================ held-out selection

@pytest.fixture(scope="module")
def split_run(tmp_path_factory, tiny_lm):
    """A run of 24 grammar pairs in 2 categories, clustered by template (each pair its own cluster)."""
    from interp.run import run

    tmp = tmp_path_factory.mktemp("heldout")
    nouns = ["apple", "egg", "orange", "owl", "idea", "hour", "igloo", "elephant", "onion", "umbrella", "ant", "eel"]
    rows = [{"a": f"She saw an {n} today.", "b": f"She saw a {n} today.", "category": "article", "type": "grammar"}
            for n in nouns]
    places = ["home", "school", "work", "church", "sea", "night", "noon", "dawn", "lunch", "dinner", "rest", "peace"]
    rows += [{"a": f"He was at {p} again.", "b": f"He was in {p} again.", "category": "preposition",
              "type": "grammar"} for p in places]
    path = tmp / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = make_cfg("model=tiny", "device=cpu", "dtype=float32", "pairs=file", f"pairs.path={path}",
                   "hooks.points=[resid_post,mlp_post]", "analysis.figures=false", "analysis.n_saved_pairs=0",
                   "analysis.cluster=template", "batch_size=8")
    return run(cfg, tmp / "run")


def test_split_keeps_whole_clusters_on_one_side():
    pairs = pd.DataFrame({"category": ["a"] * 10 + ["b"] * 10, "token_id_a": [1, 1, 1, 2, 2, 3, 3, 3, 4, 4] + [5] * 4 + [6] * 6,
                          "token_id_b": [9, 9, 9, 8, 8, 7, 7, 7, 6, 6] + [9] * 4 + [9] * 6})
    pairs["a"] = pairs["b"] = "x"
    sel = split_pairs(pairs, "swap", 0.5, 0)
    g = cluster_keys(pairs, "swap")
    for c in set(g):
        assert len(set(sel[g == c])) == 1  # a swap is selected on or tested on, never both
    assert 0 < sel[:10].sum() < 10
    assert np.array_equal(sel, split_pairs(pairs, "swap", 0.5, 0))
    two = pd.DataFrame({"category": "c", "token_id_a": [1] * 10 + [2] * 11, "token_id_b": [9] * 10 + [8] * 11})
    two["a"] = two["b"] = "x"
    for seed in range(5):  # two clusters: one selects, the other is tested
        assert split_pairs(two, "swap", 0.5, seed).sum() in (10, 11)
    with pytest.raises(ValueError, match="share of pairs"):
        split_pairs(pairs, "swap", 1.0, 0)


def test_a_selection_made_on_one_half_is_tested_on_the_other(split_run, tmp_path):
    from interp.causal import run_causal

    out = tmp_path / "causal"
    cfg = patch_cfg(f"run={split_run}", f"out={out}", "k=[2,5]", "ablation.seeds=20", "ablation.limit=null",
                    "ablation.modes=[mean]", "ablation.where=[edit,after]", "patching.enabled=false",
                    "atp.enabled=false", "figures.enabled=false", "batch_size=8")
    res = run_causal(cfg)
    man = json.loads((out / "manifest.json").read_text())
    facts = man["ablation"]
    pairs = R.read_table(split_run, R.PAIRS)
    sel = split_pairs(pairs, "template", 0.5, 0)
    assert facts["selection"] == "held_out" and facts["select_pairs"] == int(sel.sum()) and 0 < sel.sum() < len(pairs)
    assert facts["hooks_without_values"] == ["mlp_post"]  # no per-pair values kept: not ranked held-out
    tested = set(pd.read_parquet(out / "ablation_pairs.parquet")["pair_id"])
    assert tested == set(pairs.loc[~sel, "pair_id"]) and not tested & set(pairs.loc[sel, "pair_id"])
    assert man["counts"]["ablation_pairs"] == int((~sel).sum())

    # the stable selection is the ranking of the selecting half, recomputed from pair_values.parquet
    v = pd.read_parquet(split_run / R.PAIR_VALUES, filters=[("position", "==", "edit")])
    v = v[v["pair_index"].isin(pairs.loc[sel, "pair_index"])]
    stab = R.read_table(split_run, R.STABILITY)
    flagged = stab[(stab["position"] == "edit") & (stab["constant"] | stab["offset_dim"] | stab["massive"])]
    best = []
    for (hook, layer), d in v.groupby(["hook", "layer"]):
        A_ = d.pivot(index="pair_index", columns="component", values="abs_diff")
        R_ = d.pivot(index="pair_index", columns="component", values="control_diff")
        g = cluster_keys(pairs.set_index("pair_index").loc[A_.index].reset_index(), "template")
        hi = paired(A_.to_numpy(), R_.to_numpy(), g)["ratio_hi"]
        best += [(hi[c], hook, layer, c) for c in A_.columns
                 if not ((flagged["hook"] == hook) & (flagged["layer"] == layer) & (flagged["component"] == c)).any()]
    best = sorted(b for b in best if np.isfinite(b[0]))
    chosen = pd.read_parquet(out / "selections.parquet")
    s5 = chosen[(chosen["selection"] == "stable") & (chosen["k"] == 5)]
    assert list(zip(s5["hook"], s5["layer"], s5["component"])) == [(h, l, c) for _, h, l, c in best[:5]]
    np.testing.assert_allclose(s5["rank_value"], [b[0] for b in best[:5]])
    # the run-wide ranking (all pairs) is a different order: selection and test really are apart
    full = stab[(stab["position"] == "edit") & (stab["hook"] == "resid_post")].nsmallest(5, "ratio_hi")
    assert list(zip(full["layer"], full["component"])) != list(zip(s5["layer"], s5["component"]))

    vs = pd.read_parquet(out / "ablation_vs_random.parquet")
    assert list(vs.columns) == A.VS_RANDOM_COLUMNS and set(vs["pairs"]) == {"held_out"}
    assert set(vs["selection"]) == {"stable"} and (vs["n_seeds"] == 20).all()
    assert set(vs["where"]) == {"edit", "after"} and set(vs["metric"]) == set(A.METRICS)
    assert ((vs["p_perm"] >= 1 / 21) & (vs["p_perm"] <= 1)).all()
    assert ((vs["diff_lo"] <= vs["diff_vs_random"]) & (vs["diff_vs_random"] <= vs["diff_hi"])).all()
    at_edit = vs[(vs["where"] == "edit") & (vs["metric"] != "downstream_divergence")]
    for _, d in at_edit.groupby(["selection", "k", "category"]):  # at the edit, margin moves as post_edit_margin
        assert d["change"].nunique() == 1 or np.ptp(d["change"]) < 2e-4
    rnd = pd.read_parquet(out / "selections.parquet").query("selection == 'random' and k == 5")
    assert rnd["seed"].nunique() == 20 and (rnd.groupby("seed").size() == 5).all()
    assert "held-out" in __import__("interp.causal", fromlist=["summary_text"]).summary_text(res)


def test_split_needs_per_pair_values(split_run, tmp_path):
    from interp.causal import run_causal
    from interp.causal.selection import RunDirError

    cfg = patch_cfg(f"run={split_run}", f"out={tmp_path}", "hook_points=[mlp_post]", "patching.enabled=false",
                    "atp.enabled=false", "figures.enabled=false")
    with pytest.raises(RunDirError, match="ablation.split=null"):
        run_causal(cfg)


def test_bad_ablation_settings_are_refused_before_the_model_loads(split_run):
    from interp.causal.checks import check_config
    from interp.config import ConfigError

    for bad, msg in (("ablation.split=1.5", "ablation.split"), ("ablation.random=nearest", "ablation.random"),
                     ("ablation.match_pool=0", "match_pool"), ("ablation.rows_per_pass=0", "rows_per_pass")):
        with pytest.raises(ConfigError, match=msg):
            check_config(patch_cfg(f"run={split_run}", bad))
