"""The forward pass and its statistics on the tiny random Llama: invariants that must hold."""

import json

import pandas as pd
import pytest
import torch
from omegaconf import open_dict
from safetensors.torch import load_file

from interp.stats import DiffStats
from interp.engine import Scored, forward, make_batches, pair_logprobs, sentence_logprobs
from interp.hooks import HOOK_POINTS, resolve
from interp.pairs import load_pairs, validate_pairs
from interp.run import run
from tests.conftest import bridge_vs_hf, hf_reference, make_cfg


def _kept(lm, pairs_file):
    cfg = make_cfg("model=tiny", "pairs=file", f"pairs.path={pairs_file}")
    kept, rejected = validate_pairs(load_pairs(cfg.pairs).pairs, lm.tokenizer)
    assert not rejected
    return kept


@pytest.mark.parametrize("n,bs", [(10, 4), (12, 4), (1, 8), (17, 16)])
def test_batches_hold_every_pair_once_sorted_by_length_in_equal_sizes(n, bs):
    from interp.pairs.validate import TokenizedPair

    lengths = [(7 * i) % 5 + 2 for i in range(n)]
    tps = [TokenizedPair(list(range(1, k + 1)), list(range(2, k + 2)), 0, "a", "b") for k in lengths]
    batches = make_batches(tps, [0] * n, 0, 0, bs)
    sizes = [b.size for b in batches]
    assert max(sizes) <= bs and max(sizes) - min(sizes) <= 1 and len(batches) == -(-n // bs)
    order = [i for b in batches for i in b.index.tolist()]
    assert sorted(order) == list(range(n))
    assert [lengths[i] for i in order] == sorted(lengths)


def test_a_token_budget_makes_batches_of_long_sentences_smaller_and_leaves_short_ones_alone():
    from interp.engine import batch_token_budget
    from interp.pairs.validate import TokenizedPair

    lengths = [8] * 40 + [20] * 10 + [60] * 7 + [100] * 3  # a long tail
    tps = [TokenizedPair(list(range(1, k + 1)), list(range(2, k + 2)), 0, "a", "b") for k in lengths]
    budget = batch_token_budget(None, 16, 2)
    assert budget == 16 * 2 * 32
    batches = make_batches(tps, [0] * len(tps), 0, 0, 16, max_tokens=budget)
    assert all(b.tokens.numel() <= budget for b in batches)  # rows x padded length
    order = [i for b in batches for i in b.index.tolist()]
    assert sorted(order) == list(range(len(tps))) and [lengths[i] for i in order] == sorted(lengths)
    plain = make_batches(tps, [0] * len(tps), 0, 0, 16)
    short = [b for b in plain if b.seq_len <= 33]  # under the budget: the same batches as without one
    assert [b.index.tolist() for b in batches[:len(short)]] == [b.index.tolist() for b in short]
    assert max(b.tokens.numel() for b in plain) > budget  # without it, the long tail's batch is larger
    assert [b.size for b in make_batches(tps[-3:], [0] * 3, 0, 0, 16, max_tokens=10)] == [1, 1, 1]  # at least one pair


def test_positions_before_the_edit_are_identical_in_both_sentences(tiny_lm, pairs_file):
    kept = _kept(tiny_lm, pairs_file)
    batch = make_batches([tp for _, tp in kept], [0] * len(kept), tiny_lm.bos_token_id, tiny_lm.pad_token_id, 16)[0]
    names = [s.name for s in resolve(list(HOOK_POINTS), tiny_lm.info["n_layers"])]
    _, cache = tiny_lm.bridge.run_with_cache(batch.tokens, attention_mask=batch.mask.long(),
                                             names_filter=lambda n: n in names)
    B = batch.size
    checked = 0
    for name in names:
        act = cache[name]
        for j in range(B):
            e = int(batch.edit[j])
            torch.testing.assert_close(act[j, :e], act[B + j, :e], rtol=0, atol=1e-5)
            # and the edit itself does change something
            assert (act[j, e] - act[B + j, e]).abs().max() > 1e-4 or name.endswith("resid_pre") and "blocks.0" not in name
            checked += 1
    assert checked == len(names) * B


def test_resid_post_equals_hf_hidden_states_and_logprobs_equal_plain_hf(tiny_lm, pairs_file):
    kept = _kept(tiny_lm, pairs_file)
    batch = make_batches([tp for _, tp in kept], [0] * len(kept), tiny_lm.bos_token_id, tiny_lm.pad_token_id, 16)[0]
    logits, hf = bridge_vs_hf(tiny_lm, batch, atol=1e-5)
    ours = sentence_logprobs(logits, batch.tokens, batch.mask)
    lp = torch.log_softmax(hf.logits.double(), -1)
    for r in range(batch.tokens.shape[0]):
        n = int(batch.mask[r].sum())
        ref = sum(lp[r, t - 1, batch.tokens[r, t]].item() for t in range(1, n))
        assert ours[r].item() == pytest.approx(ref, abs=1e-3)


@pytest.mark.parametrize("backend", ["bridge", "plain"])
def test_pair_logprobs_equal_the_full_logits_log_probabilities(tiny_lm, pairs_file, backend):
    """Only a's predictions and b's from its edit on are unembedded; the sums equal log P(sentence)
    from the reference model's full logits, for one-token edits (with control rows) and for a
    span-aligned pair whose b is one token longer."""
    from interp.controls import build_pool, control_ids
    from interp.pairs.validate import check_pair
    from tests.test_alignment import SPLIT

    kept = _kept(tiny_lm, pairs_file)
    tps = [tp for _, tp in kept] + [check_pair(tiny_lm.tokenizer, *SPLIT, alignment="span").tokens]
    pool = build_pool(tiny_lm.tokenizer, 200)
    ctrl = [control_ids(pool, tp.ids_a, tp.edit_pos, tp.token_a, set(), 2, 0, str(i)) for i, tp in enumerate(tps)]
    batches = make_batches(tps, [0] * len(tps), tiny_lm.bos_token_id, tiny_lm.pad_token_id, 8, controls=ctrl)
    model = tiny_lm.bridge if backend == "bridge" else tiny_lm.plain
    ref_model = hf_reference(tiny_lm)
    assert any(b.b_index is not None for b in batches)
    shapes = []  # inputs of the unembedding: the packed predictions only, never the model's own call
    handle = model.original_model.get_output_embeddings().register_forward_hook(
        lambda mod, args, out: shapes.append(tuple(args[0].shape)))
    for b in batches:
        n = 2 * b.size
        sc = b.scored
        # b's own predictions start at its edit; every a prediction of a real token is there
        assert sc.n < int(b.mask[:n, 1:].sum()) and sc.n == Scored.build(b.mask.cpu(), b.edit.cpu(), "cpu").n
        ours = pair_logprobs(model, b, chunk=4096)
        chunked = pair_logprobs(model, b, chunk=7)  # the unembedding 7 predictions at a time: the same sums
        torch.testing.assert_close(chunked, ours, rtol=1e-6, atol=1e-5)  # products of other row counts round differently
        with torch.no_grad():
            hf = ref_model(b.tokens, attention_mask=b.mask.long()).logits
        ref = sentence_logprobs(hf[:n], b.tokens[:n], b.mask[:n])
        assert ours.dtype == torch.float64 and ours.shape == (n,)
        torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-4)
    handle.remove()
    if backend == "plain":  # the decoder alone: no logits for the last position of every row
        d = tiny_lm.info["d_model"]
        assert shapes == [x for b in batches for x in [(b.scored.n, d)] + [(min(7, b.scored.n - i), d)
                                                                           for i in range(0, b.scored.n, 7)]]
    # a batch made elsewhere (no host-built slots) builds them on first use
    b = batches[0]
    bare = type(b)(b.index, b.tokens, b.mask, b.edit, b.last, b.group, b.n_variants, b.edit_end, b.b_index)
    torch.testing.assert_close(pair_logprobs(model, bare), pair_logprobs(model, b), rtol=0, atol=0)


def test_pair_logprobs_leave_the_logits_a_callers_hook_keeps_intact(tiny_lm, pairs_file):
    """The log-sum-exp runs in place on the logits, but never on a tensor the bridge handed to a hook."""
    kept = _kept(tiny_lm, pairs_file)
    b = make_batches([tp for _, tp in kept], [0] * len(kept), tiny_lm.bos_token_id, tiny_lm.pad_token_id, 8)[0]
    seen = []
    with tiny_lm.bridge.hooks(fwd_hooks=[("unembed.hook_out", lambda x, hook: seen.append(x))]):
        lp = pair_logprobs(tiny_lm.bridge, b)
    torch.testing.assert_close(lp, pair_logprobs(tiny_lm.plain, b), rtol=1e-6, atol=1e-5)
    hid = {}
    with torch.no_grad(), tiny_lm.plain.hooks([("ln_final.hook_out", lambda x, hook: hid.setdefault("h", x.clone()))]):
        tiny_lm.plain(b.tokens, attention_mask=b.mask.long(), return_type=None)
    want = tiny_lm.plain.original_model.get_output_embeddings()(hid["h"][:2 * b.size].flatten(0, 1)[b.scored.flat])
    chunks = torch.cat([x for x in seen if x.dim() == 2])  # the scored predictions' logits, as the hook saw them
    torch.testing.assert_close(chunks, want, rtol=1e-5, atol=1e-5)


def test_pad_tokens_never_enter_a_statistic(tiny_cfg, pairs_file, tmp_path):
    """A pair's results do not depend on the batch it is in (pairs differ in length -> padding)."""
    outs = []
    for bs in (1, 3, 8):
        cfg = make_cfg("model=tiny", "device=cpu", "pairs=file", f"pairs.path={pairs_file}", "hooks=all",
                       f"batch_size={bs}", "analysis.figures=false", "analysis.n_saved_pairs=0")
        outs.append(run(cfg, tmp_path / f"bs{bs}"))
    ref_p = pd.read_parquet(outs[0] / "pairs.parquet")
    ref_s = pd.read_parquet(outs[0] / "stability.parquet")
    for o in outs[1:]:
        p = pd.read_parquet(o / "pairs.parquet")
        pd.testing.assert_series_equal(p["pair_id"], ref_p["pair_id"])
        pd.testing.assert_series_equal(p["logprob_a"], ref_p["logprob_a"], atol=1e-4, rtol=1e-5)
        s = pd.read_parquet(o / "stability.parquet")
        for col in ("mean_abs_diff", "std_abs_diff", "mean_diff", "spread", "normalized"):
            pd.testing.assert_series_equal(s[col], ref_s[col], atol=1e-5, rtol=1e-4)


def test_statistics_merged_from_two_halves_equal_one_pass(tiny_lm, pairs_file):
    kept = _kept(tiny_lm, pairs_file)
    groups = sorted({p.category for p, _ in kept})
    g = [groups.index(p.category) for p, _ in kept]
    sites = resolve(["resid_post", "z", "mlp_post"], tiny_lm.info["n_layers"])

    batches = make_batches([tp for _, tp in kept], g, tiny_lm.bos_token_id, tiny_lm.pad_token_id, 2)

    def stats_of(bs):
        st = DiffStats(sites, groups, device="cpu")
        for b in bs:
            forward(tiny_lm.bridge, b, st.hooks(b))
            st.consume()
        return st

    # same batches either way, so the forward numerics are identical; only the reduction differs
    whole = stats_of(batches)
    merged = stats_of(batches[:1]).merge(stats_of(batches[1:]))
    a, b = whole.table(), merged.table()
    assert len(a) == len(b) > 0
    for col in ("n_pairs", "mean_diff", "std_diff", "mean_abs_diff", "std_abs_diff", "spread", "act_mean"):
        pd.testing.assert_series_equal(a[col], b[col], check_dtype=False, atol=1e-12, rtol=1e-10)
    ca, cb = whole.table(group=groups[0]), merged.table(group=groups[0])
    pd.testing.assert_series_equal(ca["mean_abs_diff"], cb["mean_abs_diff"], atol=1e-9, rtol=1e-7)


def test_stats_equal_a_direct_computation_from_cached_activations(tiny_lm, pairs_file):
    """The streamed mean |a-b| at the edit and the spread equal numbers computed by hand."""
    kept = _kept(tiny_lm, pairs_file)
    sites = resolve(["mlp_out"], tiny_lm.info["n_layers"])
    st = DiffStats(sites, ["all"], device="cpu")
    batches = make_batches([tp for _, tp in kept], [0] * len(kept), tiny_lm.bos_token_id, tiny_lm.pad_token_id, 3)
    diffs, tokens = [], []
    name = sites[-1].name
    for b in batches:
        forward(tiny_lm.bridge, b, st.hooks(b))
        st.consume()
        _, cache = tiny_lm.bridge.run_with_cache(b.tokens, attention_mask=b.mask.long(), names_filter=[name])
        act = cache[name]
        B = b.size
        for j in range(B):
            e, last = int(b.edit[j]), int(b.last[j])
            diffs.append((act[j, e] - act[B + j, e]).abs())
            tokens.append(act[j, 1:last + 1])
            tokens.append(act[B + j, e:last + 1])
    t = st.table()
    row = t[(t.hook_name == name) & (t.position == "edit")].sort_values("component")
    torch.testing.assert_close(torch.tensor(row["mean_abs_diff"].to_numpy()), torch.stack(diffs).mean(0).double(), rtol=1e-5, atol=1e-6)
    spread = torch.cat(tokens).double().std(0)
    torch.testing.assert_close(torch.tensor(row["spread"].to_numpy()), spread, rtol=1e-5, atol=1e-6)


def test_the_per_head_score_is_the_norm_of_the_head_change_over_its_spread(tiny_lm, pairs_file):
    kept = _kept(tiny_lm, pairs_file)
    sites = resolve(["z"], tiny_lm.info["n_layers"])
    st = DiffStats(sites, ["all"], device="cpu")
    name = sites[0].name
    norms, tokens = [], []
    for b in make_batches([tp for _, tp in kept], [0] * len(kept), tiny_lm.bos_token_id, tiny_lm.pad_token_id, 4):
        forward(tiny_lm.bridge, b, st.hooks(b))
        st.consume()
        _, cache = tiny_lm.bridge.run_with_cache(b.tokens, attention_mask=b.mask.long(), names_filter=[name])
        z = cache[name]  # [VB, T, H, dh]
        for j in range(b.size):
            e, last = int(b.edit[j]), int(b.last[j])
            norms.append((z[j, e] - z[b.size + j, e]).norm(dim=-1))
            tokens += [z[j, 1:last + 1], z[b.size + j, e:last + 1]]
    t = st.table()
    heads = t[(t.hook == "z_head") & (t.layer == 0) & (t.position == "edit")].sort_values("component")
    torch.testing.assert_close(torch.tensor(heads["mean_abs_diff"].to_numpy()), torch.stack(norms).mean(0).double(),
                               rtol=1e-5, atol=1e-6)
    spread = torch.cat(tokens).double().var(0).sum(-1).sqrt()  # sqrt of the summed variances per head
    torch.testing.assert_close(torch.tensor(heads["spread"].to_numpy()), spread, rtol=1e-5, atol=1e-6)


def test_hooks_pattern_stores_the_selected_pairs_patterns_and_their_difference(pairs_file, tmp_path):
    cfg = make_cfg("model=tiny", "device=cpu", "pairs=file", f"pairs.path={pairs_file}", "hooks=pattern",
                   "analysis.figures=false", "hooks.pattern_pairs=[subject-00005,article-00002]")
    out = run(cfg, tmp_path / "pat")
    pats = load_file(str(out / "patterns.safetensors"))
    p = pats["blocks.1.attn.hook_pattern"]
    assert p.shape[:3] == (2, 2, 4)
    torch.testing.assert_close(pats["blocks.1.attn.hook_pattern_diff"].float(), (p[:, 0].float() - p[:, 1].float()),
                               atol=1e-3, rtol=0)
    from safetensors import safe_open

    with safe_open(str(out / "patterns.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["pair_ids"]) == ["subject-00005", "article-00002"]
    stab = pd.read_parquet(out / "stability.parquet")
    assert set(stab.hook) == {"z", "z_head"}
    with pytest.raises(ValueError, match="pattern_pairs"):
        run(make_cfg("model=tiny", "device=cpu", "pairs=file", f"pairs.path={pairs_file}", "hooks=pattern",
                     "analysis.figures=false", "hooks.pattern_pairs=[nope]"), tmp_path / "bad")


def test_every_pair_can_be_saved_for_drill_down_in_chunks_padded_to_the_longest(pairs_file, tmp_path):
    cfg = make_cfg("model=tiny", "device=cpu", "pairs=file", f"pairs.path={pairs_file}", "hooks=resid_post",
                   "analysis.figures=false", "analysis.n_saved_pairs=-1", "analysis.detail_pairs=-1", "batch_size=3")
    out = run(cfg, tmp_path / "all")
    acts = load_file(str(out / "activations.safetensors"))
    pairs = pd.read_parquet(out / "pairs.parquet")
    T = int(pairs["n_tokens"].max()) + 1
    assert acts["tokens"].shape == (8, 2, T) and acts["blocks.1.hook_resid_post"].shape == (8, 2, T, 64)
    assert (acts["mask"].sum(-1)[:, 0] == torch.tensor(pairs["n_tokens"].to_numpy() + 1)).all()
    pats = load_file(str(out / "patterns.safetensors"))
    assert pats["blocks.0.attn.hook_pattern"].shape == (8, 2, 4, T, T)
    assert set(pd.read_parquet(out / "pair_profile.parquet")["pair_id"]) == set(pairs["pair_id"])


def test_head_and_neuron_hooks_give_one_row_per_head_dimension_and_neuron(tiny_cfg, pairs_file, tmp_path):
    cfg = make_cfg("model=tiny", "device=cpu", "pairs=file", f"pairs.path={pairs_file}", "hooks=z",
                   "analysis.figures=false")
    with open_dict(cfg):
        cfg.hooks.points = ["z", "mlp_post"]
    out = run(cfg, tmp_path / "drill")
    s = pd.read_parquet(out / "stability.parquet")
    c = cfg.model.config
    z = s[(s.hook == "z") & (s.position == "edit")]
    assert len(z) == c.num_hidden_layers * c.num_attention_heads * c.head_dim
    assert set(z["head"].unique()) == set(range(c.num_attention_heads))
    mlp = s[(s.hook == "mlp_post") & (s.position == "edit")]
    assert len(mlp) == c.num_hidden_layers * c.intermediate_size
    acts = load_file(str(out / "activations.safetensors"))
    assert acts["blocks.0.attn.hook_z"].shape[:2] == (8, 2) and acts["blocks.0.attn.hook_z"].shape[-2:] == (4, 16)
