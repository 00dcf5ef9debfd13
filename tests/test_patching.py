"""Ablation and activation patching (interp.causal, interp.patch) on the tiny random Llama."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

from interp.causal import ablation as A
from interp.causal import patching as P
from interp import rundir as R
from interp.engine import forward, make_batches, sentence_logprobs
from interp.pairs.validate import check_pair
from tests.conftest import CONF, REPO, make_cfg, run_command

GRAMMAR = [
    ("She ate an apple today.", "She ate a apple today.", "article"),
    ("They bought an old car.", "They bought a old car.", "article"),
    ("He ate an egg for breakfast.", "He ate a egg for breakfast.", "article"),
    ("She is good at math.", "She is good in math.", "preposition"),
    ("He is good at chess.", "He is good in chess.", "preposition"),
    ("He was at home.", "He was in home.", "preposition"),
    ("The cat is on the mat.", "The cat are on the mat.", "agreement"),
    ("The dogs are barking loudly.", "The dogs is barking loudly.", "agreement"),
]
AN, AT = 354, 418  # SmolLM2 ids of " an" and " at": the "correct" tokens of the planted component


pytestmark = pytest.mark.usefixtures("one_thread")


def patch_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="patch", overrides=["progress=false", *overrides])


def tokenized(lm, rows=GRAMMAR):
    return [check_pair(lm.tokenizer, a, b).tokens for a, b, _ in rows]


def pair_tokens(lm, a: str, b: str):
    tp = check_pair(lm.tokenizer, a, b).tokens
    bos = [lm.bos_token_id]
    return torch.tensor(bos + tp.ids_a), torch.tensor(bos + tp.ids_b), tp.edit_pos + 1


@pytest.fixture(scope="module")
def batch(tiny_lm):
    tps = tokenized(tiny_lm)
    return make_batches(tps, [0] * len(tps), tiny_lm.bos_token_id, tiny_lm.pad_token_id, 16)[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_lm):
    from interp.run import run

    tmp = tmp_path_factory.mktemp("causal")
    rows = [{"a": a, "b": b, "category": c, "type": "grammar"} for a, b, c in GRAMMAR]
    rows.append({"a": "The soup was hot.", "b": "The soup was cold.", "category": "antonym", "type": "semantic"})
    path = tmp / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = make_cfg("model=tiny", "device=cpu", "dtype=float32", "pairs=file", f"pairs.path={path}",
                   "hooks.points=[resid_pre,resid_post,z,mlp_post]", "analysis.figures=false",
                   "analysis.n_saved_pairs=0", "batch_size=4")
    return run(cfg, tmp / "run")


# ============================================================================ activation patching

def test_patching_a_sentence_with_its_own_activations_changes_nothing(tiny_lm):
    bridge = tiny_lm.bridge
    ta, _, _ = pair_tokens(tiny_lm, "She ate an apple today.", "She ate a apple today.")
    names = [f"blocks.{l}.{h}" for l in range(2) for h in ("hook_resid_pre", "hook_resid_post", "attn.hook_z")]
    logits, own = P.run_with_source_cache(bridge, ta[None], names)
    metric = P.logprob_metric(ta)
    base = float(metric(logits)[0])
    for point, axes, setter in [("resid_pre", ("layer", "pos"), P.pos_setter), ("z", ("layer", "head"), P.head_setter),
                                ("z", ("layer", "pos", "head"), P.head_pos_setter),
                                ("resid_post", ("layer",), P.all_setter)]:
        vals = P.generic_patch(bridge, ta[None], own, metric, setter, point, axes, rows_per_pass=16)
        sizes = {"layer": 2, "pos": len(ta), "head": 4}
        assert vals.shape == tuple(sizes[a] for a in axes) + (1,)
        np.testing.assert_allclose(vals.numpy(), base, atol=1e-4)
    # the whole residual at every position: the logits themselves are unchanged
    patched = bridge.run_with_hooks(ta[None], fwd_hooks=[
        ("blocks.0.hook_resid_post", lambda act, hook: own["blocks.0.hook_resid_post"].clone())])
    torch.testing.assert_close(patched, logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_patching_the_full_last_residual_recovers_the_other_sentences_logits_exactly(tiny_lm, direction):
    bridge = tiny_lm.bridge
    ta, tb, edit = pair_tokens(tiny_lm, "She ate an apple today.", "She ate a apple today.")
    base, source = (tb, ta) if direction == "denoising" else (ta, tb)
    last = f"blocks.{bridge.cfg.n_layers - 1}.hook_resid_post"
    src_logits, src = P.run_with_source_cache(bridge, source[None], [last])
    base_logits, _ = P.run_with_source_cache(bridge, base[None], [])
    patched = bridge.run_with_hooks(base[None], fwd_hooks=[(last, lambda act, hook: src[last].clone())])
    torch.testing.assert_close(patched, src_logits, atol=1e-5, rtol=0)
    assert (base_logits - src_logits).abs().max() > 0.1  # the two sentences do differ
    # through generic_patch and the normalized metric: full recovery = 1
    metric = P.logprob_metric(base)
    vals = P.generic_patch(bridge, base[None], src, metric, P.all_setter, "resid_post", ("layer",),
                           layers=[bridge.cfg.n_layers - 1])
    norm = P.normalized_effect(vals[0, 0], metric(base_logits)[0], metric(src_logits)[0])
    assert abs(float(norm) - 1.0) < 1e-5


def test_generic_patch_gives_the_same_numbers_as_transformer_lens_patching(tiny_lm):
    """transformer_lens.patching (TL 4.3) runs on a TransformerBridge: ours must agree with it."""
    import transformer_lens.patching as tlp

    bridge = tiny_lm.bridge
    # two pairs of the same length, so TL's unmasked batch has no padding
    a1, b1, _ = pair_tokens(tiny_lm, "She ate an apple today.", "She ate a apple today.")
    a2, b2, _ = pair_tokens(tiny_lm, "They bought an old car.", "They bought a old car.")
    clean, corrupt = torch.stack([a1, a2]), torch.stack([b1, b2])
    _, cache = bridge.run_with_cache(clean)
    names = [f"blocks.{l}.{h}" for l in range(2) for h in ("hook_resid_pre", "attn.hook_z")]
    _, ours_cache = P.run_with_source_cache(bridge, clean, names)
    per_row = lambda logits: sentence_logprobs(logits, corrupt, torch.ones_like(corrupt, dtype=torch.bool))
    scalar = lambda logits: per_row(logits).mean()
    tl_resid = tlp.get_act_patch_resid_pre(bridge, corrupt, cache, scalar)
    ours_resid = P.generic_patch(bridge, corrupt, ours_cache, per_row, P.pos_setter, "resid_pre",
                                 rows_per_pass=6).mean(-1)
    assert ours_resid.shape == tl_resid.shape == (2, corrupt.shape[1])
    torch.testing.assert_close(ours_resid.double(), tl_resid.double().cpu(), atol=1e-4, rtol=0)
    tl_heads = tlp.get_act_patch_attn_head_out_all_pos(bridge, corrupt, cache, scalar)
    ours_heads = P.generic_patch(bridge, corrupt, ours_cache, per_row, P.head_setter, "z", ("layer", "head")).mean(-1)
    assert ours_heads.shape == tl_heads.shape == (2, 4)
    torch.testing.assert_close(ours_heads.double(), tl_heads.double().cpu(), atol=1e-4, rtol=0)
    assert tl_resid.std() > 0.1  # not a trivially flat grid


def test_patch_pair_aligns_positions_on_the_edit(tiny_lm):
    ta, tb, edit = pair_tokens(tiny_lm, "She ate an apple today.", "She ate a apple today.")
    df = P.patch_pair(tiny_lm.bridge, ta, tb, edit, kinds=("resid_pre", "z"), metrics=("margin", "logprob"))
    assert set(df["direction"]) == {"denoising", "noising"} and set(df["kind"]) == {"resid_pre", "z"}
    r = df[df["kind"] == "resid_pre"]
    assert len(r) == 2 * 2 * 2 * len(ta)  # directions x metrics x layers x positions
    # before the edit both runs are identical: no effect; layer 0 at the edit = swapping the token: full effect
    assert r.loc[r["offset"] < 0, "normalized"].abs().max() < 1e-4
    at_edit = r[(r["layer"] == 0) & (r["offset"] == 0)]
    np.testing.assert_allclose(at_edit["normalized"], 1.0, atol=1e-4)
    # margin and logprob differ by sign and a constant: identical normalized values, different raw ones
    m = r[r["metric"] == "margin"].reset_index(drop=True)
    lp = r[r["metric"] == "logprob"].reset_index(drop=True)
    np.testing.assert_allclose(m["normalized"], lp["normalized"], atol=1e-4)
    assert not np.allclose(m["patched"], lp["patched"])
    z = df[df["kind"] == "z"]
    assert z["head"].notna().all() and z["position"].isna().all() and len(z) == 2 * 2 * 2 * 4


# ============================================================================ ablation

def planted_hooks(lm, tps, dim: int = 7, value: float = 10.0, beta: float = 8.0):
    """A component that carries the edit: ``blocks.1.hook_resid_post`` dimension ``dim`` is ``value``
    from the correct token (" an" / " at") on and 0 elsewhere; a readout adds ``beta * dim/value`` to
    the logits of the tokens that follow the edits, and hands the rest of the model the natural value
    of ``dim`` (so the plant changes nothing else)."""
    E = lm.hf_model.model.embed_tokens.weight.detach()
    correct = E[[AN, AT]]
    follow = sorted({t for tp in tps for t in tp.ids_a[tp.edit_pos + 1:]})
    state = {}

    def detect(act, hook):
        hit = (act[:, :, None, :] == correct[None, None]).all(-1).any(-1)
        state["on"] = hit.long().cummax(1).values.to(act.dtype)

    def write(act, hook):
        act = act.clone()
        state["natural"] = act[..., dim].clone()
        act[..., dim] = value * state["on"]
        return act

    def read(act, hook):
        act = act.clone()
        state["signal"] = act[..., dim] / value
        act[..., dim] = state["natural"]
        return act

    def readout(logits, hook):
        logits = logits.clone()
        logits[..., follow] += beta * state["signal"][..., None]
        return logits

    return [("hook_embed", detect), ("blocks.1.hook_resid_post", write), ("ln_final.hook_in", read),
            ("hook_unembed", readout)]


def test_ablating_a_planted_component_moves_the_margin_and_random_components_do_not(tiny_lm, batch):
    bridge, D, site = tiny_lm.bridge, 7, "blocks.1.hook_resid_post"
    planted_pairs = [i for i, (_, _, c) in enumerate(GRAMMAR) if c != "agreement"]
    rows = torch.tensor([int((batch.index == i).nonzero()) for i in planted_pairs])
    m0 = A.pair_margins(forward(bridge, batch), batch)
    with bridge.hooks(fwd_hooks=planted_hooks(tiny_lm, tokenized(tiny_lm), D)):
        m1 = A.pair_margins(forward(bridge, batch), batch)
        boost = m1 - m0
        assert boost[rows].min() > 10  # the plant raises log P(correct) a lot ...
        others = torch.ones(batch.size, dtype=torch.bool)
        others[rows] = False
        assert boost[others].abs().max() < 1e-4  # ... and only where the correct token is " an" / " at"
        clean = {}
        forward(bridge, batch, A.capture_hooks([site], clean))
        means = {site: clean[site][batch.sentence_mask()].mean(0)}

        planted = A.group_components(pd.DataFrame({"hook_name": [site], "component": [D]}), {site: torch.zeros(64)})
        # zero ablation everywhere removes exactly what the plant added
        torch.testing.assert_close(A.ablated_margins(bridge, batch, planted, "zero", "all"), m0, atol=1e-4, rtol=0)
        # at the edit only: the boost of the first following token goes (beta = 8 nats, minus saturation)
        edit_change = A.ablated_margins(bridge, batch, planted, "zero", "edit") - m1
        assert (edit_change[rows] < -5).all() and edit_change[others].abs().max() < 1e-4
        # mean ablation (mean over the batch's tokens) moves it strongly too
        planted_mean = A.group_components(pd.DataFrame({"hook_name": [site], "component": [D]}), means)
        mean_change = (A.ablated_margins(bridge, batch, planted_mean, "mean", "all") - m1)[rows]
        assert (mean_change < -5).all()

        rng = np.random.default_rng(0)
        pool = np.array([c for c in range(64) if c != D])
        planted_effect = float((A.ablated_margins(bridge, batch, planted_mean, "mean", "all") - m1).abs().mean())
        for _ in range(5):
            comps = rng.choice(pool, size=5, replace=False)
            random_sites = A.group_components(pd.DataFrame({"hook_name": site, "component": comps}), means)
            change = A.ablated_margins(bridge, batch, random_sites, "mean", "all") - m1
            assert float(change.abs().mean()) < 0.15 * planted_effect, comps


def test_zero_ablation_of_a_component_that_is_already_zero_changes_nothing(tiny_lm, batch):
    bridge, site, D = tiny_lm.bridge, "blocks.0.hook_resid_post", 11

    def kill(act, hook):
        act = act.clone()
        act[..., D] = 0
        return act

    with bridge.hooks(fwd_hooks=[(site, kill)]):
        before = forward(bridge, batch)
        sites = A.group_components(pd.DataFrame({"hook_name": [site], "component": [D]}))
        for where in A.WHERE:
            after = forward(bridge, batch, A.ablation_hooks(sites, A.where_mask(batch, where), "zero"))
            assert torch.equal(after, before)
    # without the kill hook the same ablation does change the output
    after = forward(bridge, batch, A.ablation_hooks(sites, A.where_mask(batch, "all"), "zero"))
    assert (after - forward(bridge, batch)).abs().max() > 1e-3


def test_resample_ablation_is_seeded_and_reproducible(tiny_lm, batch):
    bridge = tiny_lm.bridge
    comps = pd.DataFrame({"hook_name": ["blocks.0.hook_resid_post"] * 3 + ["blocks.1.mlp.hook_post"] * 2,
                          "component": [3, 12, 40, 5, 77]})
    sites = A.group_components(comps)
    base = A.pair_margins(forward(bridge, batch), batch)
    r0 = A.ablated_margins(bridge, batch, sites, "resample", "all", seed=0)
    r0_again = A.ablated_margins(bridge, batch, sites, "resample", "all", seed=0)
    r1 = A.ablated_margins(bridge, batch, sites, "resample", "all", seed=1)
    assert torch.equal(r0, r0_again)
    assert not torch.allclose(r0, r1) and not torch.allclose(r0, base)
    # donors: another pair, with a real token at that position; -1 only where none exists
    donor = A.draw_donors(batch, 0)
    VB, T = batch.tokens.shape
    pair = torch.arange(VB) % batch.size
    real = donor >= 0
    t = torch.arange(T)[None, :].expand(VB, T)
    assert (pair[donor[real]] != pair[:, None].expand(VB, T)[real]).all()
    assert real.sum() > 0.9 * batch.mask.sum()
    assert batch.mask[donor[real], t[real]].all()
    assert torch.equal(donor, A.draw_donors(batch, 0)) and not torch.equal(donor, A.draw_donors(batch, 1))


def test_ablating_z_components_of_a_head_equals_zeroing_that_head_by_hand(tiny_lm, batch):
    """Component index of hook_z = head * d_head + dim (as in stability.parquet)."""
    bridge, head, d_head = tiny_lm.bridge, 2, 16
    name = "blocks.1.attn.hook_z"
    sites = A.group_components(pd.DataFrame({"hook_name": name, "component": np.arange(head * d_head, (head + 1) * d_head)}))
    ours = forward(bridge, batch, A.ablation_hooks(sites, A.where_mask(batch, "all"), "zero"))
    sent = A.where_mask(batch, "all")

    def by_hand(act, hook):
        act = act.clone()
        act[:, :, head][sent] = 0
        return act

    hand = forward(bridge, batch, [(name, by_hand)])
    torch.testing.assert_close(ours, hand, atol=1e-6, rtol=0)
    assert (ours - forward(bridge, batch)).abs().max() > 1e-3


# ============================================================================ the entry point

def test_patch_writes_the_documented_causal_dir(run_dir):
    from interp.causal import run_causal as patch
    from interp.causal.ablation import ABLATION_COLUMNS

    cfg = patch_cfg(f"run={run_dir}", "k=[1,3]", "ablation.seeds=3", "ablation.split=null", "ablation.random=site", "ablation.modes=[mean,resample,zero]",
                    "ablation.where=[edit,all]", "patching.n_pairs=1", "figures.png=false", "figures.n_pairs=1")
    out = patch(cfg)
    assert out["manifest"]["patching"] == {"backend": "hf"}  # patched on the plain tree
    cdir = run_dir / "causal"
    abl = pd.read_parquet(cdir / "ablation.parquet")
    assert list(abl.columns) == ABLATION_COLUMNS
    for col in ("selection", "k", "seed", "mode", "where", "category", "margin_change", "accuracy",
                "accuracy_change", "n_pairs"):
        assert col in abl.columns
    assert set(abl["k"]) == {1, 3}
    assert set(abl["selection"]) == {"stable", "random", "least_stable"}
    assert set(abl["mode"]) == {"mean", "resample", "zero"} and set(abl["where"]) == {"edit", "all"}
    assert set(abl["category"]) == {"article", "preposition", "agreement", "all"}  # grammar only
    n = abl.groupby(["selection", "mode"])["seed"].nunique()
    assert (n.loc["random"] == 3).all()
    assert n.loc[("stable", "mean")] == 1 and n.loc[("stable", "zero")] == 1 and n.loc[("stable", "resample")] == 3
    rnd = abl[(abl["selection"] == "random") & (abl["category"] == "all")]
    assert (rnd.groupby(["k", "mode", "where"]).size() == 3).all()
    spread = rnd.groupby(["k", "mode", "where"])["margin_change"].std()
    assert (spread > 0).sum() >= len(spread) - 1  # seeds pick different components
    # an ablation at the edit cannot change the edited token's own probability (it depends on the prefix
    # only): the whole margin moves exactly as post_edit_margin does; ablating every token can differ
    pp = pd.read_parquet(cdir / "ablation_pairs.parquet")
    at_edit = pp[pp["where"] == "edit"]
    np.testing.assert_allclose(at_edit["margin_change"], at_edit["post_edit_margin_change"], atol=2e-4)
    everywhere = pp[pp["where"] == "all"]
    assert (everywhere["margin_change"] - everywhere["post_edit_margin_change"]).abs().max() > 1e-3
    assert abl["post_edit_margin_change_se"].notna().all() and abl["baseline_post_edit_margin"].notna().all()
    summ = pd.read_parquet(cdir / "ablation_summary.parquet")
    assert (summ.loc[summ["selection"] == "random", "n_seeds"] == 3).all()
    assert summ.loc[summ["selection"] == "random", "margin_change_std"].notna().all()

    # counts and baselines agree with the run's own pairs table
    pairs = R.read_table(run_dir, R.PAIRS)
    g = pairs[pairs["type"] == "grammar"]
    for cat, d in g.groupby("category"):
        rows = abl[abl["category"] == cat]
        assert (rows["n_pairs"] == len(d)).all()
        np.testing.assert_allclose(rows["baseline_margin"], d["margin"].mean(), atol=1e-4)
        np.testing.assert_allclose(rows["baseline_accuracy"], (d["margin"] > 0).mean())
    assert (abl.loc[abl["category"] == "all", "n_pairs"] == len(g)).all()
    np.testing.assert_allclose(abl["accuracy_change"], abl["accuracy"] - abl["baseline_accuracy"])
    assert (abl["n_components"] == abl["k"]).all()

    # selections: stable = top ranks, random = same (hook, layer) sites, not the stable ones
    sel = pd.read_parquet(cdir / "selections.parquet")
    stab = R.read_table(run_dir, R.STABILITY)
    ranked = stab[(stab["position"] == "edit") & stab[out["rank_column"]].notna()]
    ranked = ranked[~(ranked["offset_dim"] | ranked["massive"] | ranked["constant"])]  # never candidates
    ranked = ranked[~((ranked["hook"] == "resid_pre") & (ranked["layer"] >= 1))]  # dedupe: = resid_post[l-1]
    top3 = ranked.nsmallest(3, out["rank_column"])
    s3 = sel[(sel["selection"] == "stable") & (sel["k"] == 3)]
    assert set(zip(s3["hook_name"], s3["component"])) == set(zip(top3["hook_name"], top3["component"]))
    for seed, r in sel[(sel["selection"] == "random") & (sel["k"] == 3)].groupby("seed"):
        assert sorted(zip(r["hook_name"], r["layer"])) == sorted(zip(s3["hook_name"], s3["layer"]))
        assert not set(zip(r["hook_name"], r["component"])) & set(zip(s3["hook_name"], s3["component"]))
    least = sel[(sel["selection"] == "least_stable") & (sel["k"] == 1)]
    assert float(least["rank_value"].iloc[0]) == float(ranked[out["rank_column"]].max())

    pt = pd.read_parquet(cdir / "patching.parquet")
    for col in ("level", "pair_id", "category", "hook", "layer", "position", "offset", "head", "direction",
                "metric", "normalized"):
        assert col in pt.columns
    assert set(pt["level"]) == {"pair", "category"} and set(pt["direction"]) == {"denoising", "noising"}
    assert set(pt["hook"]) == {"resid_pre"}  # patching.heads=false by default
    assert pt.loc[pt["level"] == "pair", "pair_id"].nunique() == 3  # n_pairs=1 per grammar category
    # positions=modes by default: per layer the edit token and the tokens after it; at layer 0 the edit
    # cell swaps the edited token's embedding, the whole effect
    assert set(pt["positions"]) == {"edit", "after"} and pt["position"].isna().all()
    first = pt[(pt["level"] == "pair") & (pt["layer"] == 0) & (pt["positions"] == "edit")]
    np.testing.assert_allclose(first["normalized"], 1.0, atol=1e-4)
    for col in ("normalized_lo", "normalized_hi", "n_excluded", "denominator", "post_edit_margin"):
        assert col in pt.columns
    assert set(pt.loc[pt["level"] == "category", "category"]) == {"article", "preposition", "agreement", "all"}

    # attribution patching for every component of the run's hook points, the stability columns beside it
    atp = pd.read_parquet(cdir / "atp.parquet")
    for col in ("hook", "layer", "component", "position", "atp_mean", "atp_lo", "atp_hi", "n_pairs", "rank",
                "ratio", "ratio_hi", "stable"):
        assert col in atp.columns
    assert set(atp["position"]) == {"edit", "after"}
    assert set(atp["hook"]) <= set(stab["hook"]) and len(atp) > 0
    assert (atp["n_pairs"] == len(g)).all()  # every grammar pair
    keys = ["hook", "layer", "component", "position"]
    joined = atp[keys + ["ratio"]].merge(stab[keys + ["ratio"]], on=keys, how="left", suffixes=("", "_stab"))
    np.testing.assert_array_equal(joined["ratio"], joined["ratio_stab"])  # joined on hook, layer, component, position
    assert atp["normalized"].notna().any()
    man = json.loads((cdir / "manifest.json").read_text())
    assert man["atp"]["metric"] == "post_edit_margin" and man["atp"]["validated_components"] == 20
    assert np.isfinite(man["atp"]["pearson"]) and len(pd.read_parquet(cdir / "atp_validation.parquet")) == 20
    assert man["status"] == "complete" and man["config"]["k"] == [1, 3]
    figs = {p.name for p in (cdir / "figures").iterdir()}
    assert "plotly.min.js" in figs and "effect_vs_k_mean_edit.html" in figs
    assert any(f.startswith("patch_resid_pre_category_") for f in figs)
    html = (cdir / "figures" / "effect_vs_k_mean_edit.html").read_text()
    assert 'src="plotly.min.js"' in html and "cdn.plot.ly" not in html


def test_patch_picks_ratio_hi_unless_rank_by_is_set(run_dir):
    from interp.causal.selection import rank_column

    stab = pd.DataFrame({"rank": [1, 2], "rank_calibrated": [2, 1], "q_value": [0.1, 0.2], "ratio_hi": [0.3, 0.9]})
    assert rank_column(stab, None, {"analysis": {}}) == "ratio_hi"
    assert rank_column(stab, "rank_calibrated", {"analysis": {}}) == "rank_calibrated"
    stab = stab.drop(columns="ratio_hi")
    assert rank_column(stab, None, {"analysis": {}}) == "rank_calibrated"
    assert rank_column(stab.drop(columns="rank_calibrated"), None, {}) == "rank"
    assert rank_column(stab, None, {"analysis": {"rank_by": "rank"}}) == "rank"
    assert rank_column(stab, "q_value", {"analysis": {"rank_by": "rank"}}) == "q_value"


def test_the_cli_runs_on_a_tiny_run_dir_and_an_unknown_run_dir_gives_a_clear_error(run_dir, tmp_path):
    env = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    out = tmp_path / "cli"
    ok = run_command([f"run={run_dir}", f"out={out}", "k=[2]", "ablation.seeds=2", "ablation.modes=[zero]",
                      "ablation.split=null", "patching.n_pairs=1", "patching.heads=false", "figures.enabled=false",
                      "progress=false"], env, module="interp.patch", timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    abl = pd.read_parquet(out / "ablation.parquet")
    assert set(abl["k"]) == {2} and set(abl["mode"]) == {"zero"}
    assert (abl[abl["selection"] == "random"].groupby("category")["seed"].nunique() == 2).all()
    assert (out / "manifest.json").exists() and not (REPO / "patch.log").exists()

    missing = tmp_path / "no_such_run"
    bad = run_command([f"run={missing}"], env, module="interp.patch", timeout=120)
    assert bad.returncode != 0
    assert f"run directory {missing} does not exist" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert not missing.exists()


def test_patch_refuses_a_directory_that_is_not_a_finished_run(tmp_path):
    from interp.causal import RunDirError, run_causal as patch

    with pytest.raises(RunDirError, match="holds no manifest.json"):
        patch(patch_cfg(f"run={tmp_path}"))
    R.write_json(tmp_path / R.MANIFEST, {"status": "running"})
    with pytest.raises(RunDirError, match="not complete"):
        patch(patch_cfg(f"run={tmp_path}"))
    with pytest.raises(RunDirError, match="no run directory given"):
        patch(patch_cfg())


@pytest.mark.parametrize("positions", ["modes", "each"])
def test_patching_on_the_plain_tree_equals_patching_on_the_bridge(tiny_lm, positions):
    """``run_patching`` runs on the plain tree (``patch_model``); its table is the bridge's up to float32
    rounding, for the residual and the per-head cells, both directions and metrics."""
    from types import SimpleNamespace

    model, backend = P.patch_model(tiny_lm, ["resid_pre", "z"])
    assert backend == "hf" and model is tiny_lm.plain
    assert P.patch_model(SimpleNamespace(plain=None, bridge=tiny_lm.bridge), ["resid_pre"]) == (tiny_lm.bridge, "bridge")
    rows = [pair_tokens(tiny_lm, a, b) for a, b, _ in GRAMMAR[:2]]
    ta, tb = torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])
    edit = torch.tensor([r[2] for r in rows])
    kw = dict(kinds=("resid_pre", "z", "z_pos") if positions == "each" else ("resid_post", "z"),
              metrics=("margin", "logprob"), positions=positions, rows_per_pass=32)
    plain = P.patch_group(tiny_lm.plain, ta, tb, edit, **kw)
    bridge = P.patch_group(tiny_lm.bridge, ta, tb, edit, **kw)
    assert len(plain) == len(bridge) > 0
    keys = [c for c in plain.columns if plain[c].dtype == object or str(plain[c].dtype) in ("Int64", "int64")]
    pd.testing.assert_frame_equal(plain[keys], bridge[keys])
    for c in ("patched", "base", "source", "denominator", "post_edit_margin"):
        np.testing.assert_allclose(plain[c], bridge[c], atol=2e-4, rtol=1e-5, err_msg=c)
    ok = bridge["denominator"].abs() > 0.05
    np.testing.assert_allclose(plain["normalized"][ok], bridge["normalized"][ok], atol=2e-3, err_msg="normalized")
    assert (plain["patched"] != plain["base"]).any()


def test_skipping_cells_the_patch_would_not_change_gives_the_same_numbers(tiny_lm):
    bridge = tiny_lm.bridge
    ta, tb, edit = pair_tokens(tiny_lm, "They bought an old car.", "They bought a old car.")
    names = [f"blocks.{l}.hook_resid_pre" for l in range(2)]
    la, ca = P.run_with_source_cache(bridge, ta[None], names)
    lb, cb = P.run_with_source_cache(bridge, tb[None], names)
    metric = P.logprob_metric(tb)
    full = P.generic_patch(bridge, tb[None], ca, metric, P.pos_setter, "resid_pre")
    fast = P.generic_patch(bridge, tb[None], ca, metric, P.pos_setter, "resid_pre", base_cache=cb,
                           base_value=metric(lb))
    torch.testing.assert_close(fast, full, atol=1e-4, rtol=0)
    assert torch.equal(fast[:, :edit], metric(lb).float().expand(2, edit, 1))  # not run: the base value


def test_reference_means_are_the_mean_over_sentence_tokens_without_bos(tiny_lm):
    from interp.causal.selection import reference_means

    sentences = ["She ate an apple today.", "He was at home."]
    names = {"blocks.0.hook_resid_post", "blocks.1.attn.hook_z"}
    means = reference_means(tiny_lm, sentences, names, batch_size=2)
    acts = {n: [] for n in names}
    for s in sentences:
        ids = torch.tensor([[tiny_lm.bos_token_id] + tiny_lm.tokenizer(s, add_special_tokens=False)["input_ids"]])
        _, cache = tiny_lm.bridge.run_with_cache(ids)
        for n in names:
            acts[n].append(cache[n][0, 1:].reshape(ids.shape[1] - 1, -1))
    for n in names:
        torch.testing.assert_close(means[n], torch.cat(acts[n]).mean(0), atol=1e-5, rtol=0)
    assert means["blocks.1.attn.hook_z"].shape == (4 * 16,)


def test_ablating_every_mlp_post_neuron_equals_zeroing_the_mlp_output(tiny_lm, batch):
    """mlp_post components are neurons: all of them zeroed = no MLP output (Llama's down_proj has no bias)."""
    bridge = tiny_lm.bridge
    sites = A.group_components(pd.DataFrame({"hook_name": "blocks.1.mlp.hook_post", "component": np.arange(128)}))
    sent = A.where_mask(batch, "after")
    ours = forward(bridge, batch, A.ablation_hooks(sites, sent, "zero"))

    def by_hand(act, hook):
        return torch.where(sent[..., None], torch.zeros_like(act), act)

    hand = forward(bridge, batch, [("blocks.1.hook_mlp_out", by_hand)])
    torch.testing.assert_close(ours, hand, atol=1e-5, rtol=0)
    assert (ours - forward(bridge, batch)).abs().max() > 1e-3


def test_flagged_components_are_never_ablation_candidates():
    from interp.causal.selection import candidates

    stab = pd.DataFrame({"hook": "resid_post", "hook_name": "blocks.0.hook_resid_post", "layer": 0,
                         "component": range(5), "position": "edit", "rank_calibrated": [1, 2, 3, 4, 5],
                         "constant": False, "offset_dim": [True, False, False, False, False],
                         "massive": [False, True, False, False, False]})
    c = candidates(stab, "edit", "rank_calibrated")
    assert list(c["component"]) == [2, 3, 4] and c.attrs["flagged_excluded"] == 2
    older = stab.drop(columns=["offset_dim"]).assign(massive=[True, False, False, False, False])  # old tables
    assert list(candidates(older, "edit", "rank_calibrated")["component"]) == [1, 2, 3, 4]


def test_pair_groups_are_pairs_of_one_length_a_full_pass_at_a_time(tiny_lm):
    """``run_patching``'s grouping (and ``benchmarks.causal``'s): per length in order of first
    appearance, ``group_size`` pairs at a time, BOS first, the edit's model-input position."""
    tps = tokenized(tiny_lm)
    chosen = [5, 0, 1, 3, 2, 6, 7, 4]
    L = 2
    groups = list(P.pair_groups(tps, chosen, tiny_lm.bos_token_id, "cpu", L, 2, "modes", 16))
    assert sorted(i for g, *_ in groups for i in g) == sorted(chosen)
    lengths = [len(tps[i].ids_a) for i in chosen]
    group_lengths = [len(tps[g[0]].ids_a) for g, *_ in groups]
    assert list(dict.fromkeys(group_lengths)) == list(dict.fromkeys(lengths))  # lengths in order of appearance
    assert len(groups) > len(set(lengths))  # some length takes more than one pass
    seen = []
    for g, ta, tb, edit in groups:
        n = len(tps[g[0]].ids_a)
        assert all(len(tps[i].ids_a) == n for i in g)
        assert len(g) <= P.group_size(L, n + 1, 2, "modes", 16)
        assert ta.shape == tb.shape == (len(g), n + 1) and (ta[:, 0] == tiny_lm.bos_token_id).all()
        assert ta[:, 1:].tolist() == [tps[i].ids_a for i in g] and tb[:, 1:].tolist() == [tps[i].ids_b for i in g]
        assert edit.tolist() == [tps[i].edit_pos + 1 for i in g]
        seen += g
    # within a length the order given is kept
    for n in set(lengths):
        assert [i for i in seen if len(tps[i].ids_a) == n] == [i for i in chosen if len(tps[i].ids_a) == n]
