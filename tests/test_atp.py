"""Attribution patching (interp.causal.atp) on the tiny random Llama."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from interp.causal import atp as A
from interp.engine import make_batches, sentence_logprobs
from interp.pairs.validate import check_pair
from tests.conftest import PAIR_ROWS

# one-token edits whose correct token (" an" / " at") appears in no b sentence and in a only at the edit
PLANT_ROWS = [
    ("She ate an apple today.", "She ate a apple today."),
    ("They bought an old car.", "They bought a old car."),
    ("He ate an egg for breakfast.", "He ate a egg for breakfast."),
    ("She is good at math.", "She is good in math."),
    ("He is good at chess.", "He is good in chess."),
    ("He was at home.", "He was in home."),
]
AN, AT = 354, 418  # SmolLM2 ids of " an" and " at"
SITES = [("resid_pre", 1), ("resid_post", 0), ("resid_post", 1), ("attn_out", 0), ("mlp_out", 1), ("z", 1),
         ("mlp_post", 0)]


pytestmark = pytest.mark.usefixtures("one_thread")


def tokenized(lm, rows):
    return [check_pair(lm.tokenizer, r[0], r[1]).tokens for r in rows]


@pytest.fixture(scope="module")
def tps(tiny_lm):
    return tokenized(tiny_lm, PAIR_ROWS)


@pytest.fixture(scope="module")
def batch(tiny_lm, tps):
    return make_batches(tps, [0] * len(tps), tiny_lm.bos_token_id, tiny_lm.pad_token_id, 16)[0]


@contextlib.contextmanager
def planted(lm, tps, dim: int = 7, value: float = 10.0, beta: float = 4.0):
    """A component that carries the edit, as plain PyTorch hooks on the HF tree: residual dimension
    ``dim`` after layer 0 gets ``value`` added from the correct token (" an" / " at") on, and the final
    norm's output gets ``beta * x[dim] / value`` times the direction of the tokens that follow the
    edits (so the post-edit log-probs read that dimension of the final residual stream)."""
    model = lm.plain.original_model
    W = model.get_output_embeddings().weight.detach()
    follow = sorted({t for tp in tps for t in tp.ids_a[tp.edit_pos + 1:]})
    w = W[follow].sum(0)
    w = beta * w / w.norm()
    state = {}

    def detect(module, args, output):
        ids = args[0] if args else None
        state["on"] = ((ids == AN) | (ids == AT)).long().cummax(1).values.to(output.dtype)

    def write(module, args, output):
        h = output[0] if isinstance(output, tuple) else output
        h = h + value * torch.nn.functional.one_hot(torch.tensor(dim), h.shape[-1]).to(h) * state["on"][..., None]
        return (h, *output[1:]) if isinstance(output, tuple) else h

    def read(module, args, output):
        return output + (args[0][..., dim] / value)[..., None] * w

    handles = [model.model.embed_tokens.register_forward_hook(detect),
               model.model.layers[0].register_forward_hook(write),
               model.model.norm.register_forward_hook(read)]
    try:
        yield dim
    finally:
        for h in handles:
            h.remove()


# ============================================================================ the metric

def test_post_edit_margin_is_the_post_edit_part_of_sentence_logprobs(tiny_lm, batch):
    B = batch.size
    with torch.no_grad():
        logits = tiny_lm.plain(batch.tokens, attention_mask=batch.mask.long())
    after = batch.after_mask()  # tokens edit+1..last: sentence_logprobs counts them from their predictions
    direct = (sentence_logprobs(logits[:B], batch.tokens[:B], after)
              - sentence_logprobs(logits[B:2 * B], batch.tokens[B:2 * B], after))
    torch.testing.assert_close(A.post_edit_margin(logits, batch), direct)
    # the whole-sentence margin = the edit token's own term + the post-edit margin (the prefix cancels)
    whole = (sentence_logprobs(logits[:B], batch.tokens[:B], batch.mask[:B])
             - sentence_logprobs(logits[B:2 * B], batch.tokens[B:2 * B], batch.mask[B:2 * B]))
    lp = logits.float().log_softmax(-1)
    i = torch.arange(B)
    own = (lp[i, batch.edit - 1, batch.tokens[i, batch.edit]]
           - lp[B + i, batch.edit - 1, batch.tokens[B + i, batch.edit]]).double()
    torch.testing.assert_close(whole, own + direct, atol=1e-4, rtol=0)
    # the unembedding of the post-edit predictions only (as AtP runs it) gives the same numbers
    lp_b = A.base_logprobs(tiny_lm, batch)
    torch.testing.assert_close(lp_b, sentence_logprobs(logits[B:2 * B], batch.tokens[B:2 * B], after), atol=1e-4, rtol=0)


def test_patching_before_the_edit_changes_nothing(tiny_lm, batch):
    before = batch.positions() < batch.edit[:, None]
    for hook, layer in SITES:
        eff = A.patch_effect(tiny_lm, batch, hook, layer, None, before)
        assert float(eff.abs().max()) < 1e-6, (hook, layer)
    # and at the edit it does (the two runs differ there)
    assert float(A.patch_effect(tiny_lm, batch, "resid_pre", 1, None, "edit").abs().max()) > 0.1


# ============================================================================ AtP = first-order patching

def test_atp_is_the_first_order_term_of_real_patching(tiny_lm, batch):
    """(patch(act_b + eps (act_a - act_b)) - patch(act_b - eps (...))) / 2 eps -> AtP as eps -> 0."""
    out = A.attribution(tiny_lm, batch, SITES, modes=("edit", "after", "all"))
    assert set(k[0] for k in out) == {"resid_pre", "resid_post", "attn_out", "mlp_out", "z", "z_head", "mlp_post"}
    assert out[("z", 1, "edit")].shape == (batch.size, 64) and out[("z_head", 1, "edit")].shape == (batch.size, 4)
    torch.testing.assert_close(out[("z_head", 1, "after")], out[("z", 1, "after")].unflatten(-1, (4, 16)).sum(-1))
    torch.testing.assert_close(out[("resid_pre", 1, "after")], out[("resid_post", 0, "after")])  # one tensor
    torch.testing.assert_close(out[("resid_pre", 1, "all")],
                               out[("resid_pre", 1, "edit")] + out[("resid_pre", 1, "after")])
    checked = 0
    eps = 1e-2  # central differences: truncation O(eps^2); 2e-3 absolute = float32 noise of the lp sums / 2 eps
    for (hook, layer, mode), v in out.items():
        if mode == "all":
            continue
        for c in (int(v.abs().sum(0).argmax()), 3):
            atp = v[:, c].double()
            up = A.patch_effect(tiny_lm, batch, hook, layer, c, mode, eps=eps)
            down = A.patch_effect(tiny_lm, batch, hook, layer, c, mode, eps=-eps)
            scale = float(atp.abs().max())
            assert scale > 1e-3, (hook, layer, mode, c)
            np.testing.assert_allclose(((up - down) / (2 * eps)).numpy(), atp.numpy(), rtol=0, atol=3e-3 * scale + 2e-3,
                                       err_msg=f"{hook} {layer} {mode} {c}")
            checked += 1
    assert checked == 2 * 2 * (len(SITES) + 1)
    # the token embedding after the edit is the same in both runs: no AtP there
    emb = A.attribution(tiny_lm, batch, [("resid_pre", 0)], modes=("after",))[("resid_pre", 0, "after")]
    assert float(emb.abs().max()) == 0.0


# ============================================================================ the table, a planted component

def test_a_planted_component_ranks_first_and_patching_it_moves_the_margin(tiny_lm):
    tps = tokenized(tiny_lm, PLANT_ROWS)
    with planted(tiny_lm, tps) as dim:
        table = A.atp_table(tiny_lm, tps, ["resid_pre", "resid_post", "z", "mlp_post"], batch_size=4,
                            modes=("edit", "after"))
        b = make_batches(tps, [0] * len(tps), tiny_lm.bos_token_id, tiny_lm.pad_token_id, 16)[0]
        with torch.no_grad():
            margin = A.post_edit_margin(tiny_lm.plain(b.tokens, attention_mask=b.mask.long()), b)
        planted_effect = A.patch_effect(tiny_lm, b, "resid_post", 0, dim, "after").mean()
        rng = np.random.default_rng(0)
        others = [int(c) for c in rng.choice([c for c in range(64) if c != dim], 10, replace=False)]
        random_effects = [float(A.patch_effect(tiny_lm, b, "resid_post", 0, c, "after").mean()) for c in others]
        check = A.validate(tiny_lm, tps, table, n=12, seed=0, batch_size=4)
    assert float(margin.mean()) > 1.0  # the plant makes a's post-edit tokens likelier
    assert table.attrs["n_pairs"] == len(tps) and (table["n_pairs"] == len(tps)).all()
    cols = {"hook", "layer", "component", "position", "atp_mean", "atp_se", "atp_lo", "atp_hi", "atp_abs_mean",
            "n_pairs", "rank", "rank_in_hook", "head", "head_dim"}
    assert cols <= set(table.columns)
    assert len(table) == 2 * (2 * 64 * 2 + 2 * 64 + 2 * 4 + 2 * 128)  # modes x (resid x2, z, z_head, mlp_post)
    assert (table["atp_lo"] <= table["atp_mean"]).all() and (table["atp_mean"] <= table["atp_hi"]).all()
    assert (table["atp_abs_mean"] >= table["atp_mean"].abs() - 1e-12).all()
    for hook in ("resid_pre", "resid_post"):
        top = table[(table["hook"] == hook) & (table["position"] == "after") & (table["rank_in_hook"] == 1)]
        assert int(top["component"].iloc[0]) == dim, hook
        assert float(top["atp_lo"].iloc[0]) > 0  # the interval excludes zero
    row = table[(table["hook"] == "resid_post") & (table["layer"] == 0) & (table["component"] == dim)
                & (table["position"] == "after")]
    assert int(row["rank_in_hook"].iloc[0]) <= 2  # resid_post 1 carries the same dimension
    # patched for real, it moves b's post-edit log-probs towards a's, more than any random dimension
    assert float(planted_effect) > 0.5
    assert float(planted_effect) > 5 * max(abs(e) for e in random_effects)
    # the validation sample: top components and random ones, real patching agrees with AtP
    comps = check["components"]
    assert check["n_components"] == 12 and check["n_pairs"] == len(tps)
    assert set(comps["chosen"]) == {"top", "random"}
    assert ((comps["hook"].isin(["resid_pre", "resid_post"])) & (comps["component"] == dim)).any()
    assert check["pearson"] > 0.8 and check["spearman"] > 0.5


def test_span_pairs_are_left_out_and_counted(tiny_lm, tps):
    table = A.atp_table(tiny_lm, [("p", tp) for tp in tps[:3]], ["resid_post"], batch_size=2, modes=("edit",),
                        layers=[1])
    assert table.attrs["n_pairs"] == 3 and table.attrs["skipped_span_pairs"] == 0
    assert len(table) == 64 and set(table["rank"]) == set(range(1, 65))
    with pytest.raises(ValueError, match="position modes"):
        A.attribution(tiny_lm, make_batches(tps[:2], [0, 0], tiny_lm.bos_token_id, tiny_lm.pad_token_id, 2)[0],
                      [("resid_post", 1)], modes=("before",))


def test_non_finite_scores_stay_nan_unranked_and_counted(tiny_lm, monkeypatch):
    """An overflowed backward pass (gradients past float32's range, as in a deep random Gemma) gives
    non-finite scores: the table keeps them as NaN without ranks, counts them, and ranks the rest."""
    tps = tokenized(tiny_lm, PLANT_ROWS[:4])
    real = A.attribution

    def overflowing(*args, **kwargs):
        out = real(*args, **kwargs)
        key = next(k for k in out if k[0] == "resid_post" and k[1] == 0)
        out[key] = out[key].clone()
        out[key][:, 0] = float("inf")
        return out

    monkeypatch.setattr(A, "attribution", overflowing)
    table = A.atp_table(tiny_lm, tps, ["resid_post"], batch_size=4, modes=("edit",))
    bad = (table["hook"] == "resid_post") & (table["layer"] == 0) & (table["component"] == 0)
    assert table.loc[bad, "atp_mean"].isna().all() and table.loc[bad, "rank"].isna().all()
    assert table.attrs["non_finite"] == int(bad.sum()) == 1
    good = table[~bad]
    assert good["atp_mean"].notna().all()
    assert sorted(good["rank"].astype(int)) == list(range(1, len(good) + 1))
