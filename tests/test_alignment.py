"""pairs.alignment: multi-token edits kept on request, with positions aligned on prefix and suffix."""

import json

import pandas as pd
import torch

from interp.stats import DiffStats
from interp.engine import forward, make_batches
from interp.hooks import resolve
from interp.pairs.validate import check_pair
from interp.run import run
from tests.conftest import make_cfg

SPLIT = ("The dogs bark loudly at night.", "The dogs barks loudly at night.")  # " barks" is two tokens
TWO = ("She is good at math today.", "She was good in math today.")  # same length, two positions


def test_strict_keeps_one_token_edits_only_and_the_other_modes_say_what_they_keep(tiny_lm):
    tok = tiny_lm.tokenizer
    assert check_pair(tok, *SPLIT).reason == "length_mismatch"
    assert check_pair(tok, *TWO).reason == "multi_token_edit"
    v = check_pair(tok, *TWO, alignment="same_length")
    assert v.ok and v.tokens.edit_end_a == v.tokens.edit_end_b > v.tokens.edit_pos
    assert check_pair(tok, *SPLIT, alignment="same_length").reason == "length_mismatch"
    v = check_pair(tok, *SPLIT, alignment="span")
    assert v.ok and v.tokens.n_tokens_b == v.tokens.n_tokens + 1
    tp = v.tokens
    assert tp.edit_end_a == tp.edit_pos and tp.edit_end_b == tp.edit_pos + 1
    assert tp.token_a.strip() == "bark" and tp.token_b.strip() == "barks"
    assert tp.ids_a[tp.edit_end_a + 1:] == tp.ids_b[tp.edit_end_b + 1:]  # common suffix
    assert check_pair(tok, "She walked home.", "She has walked home.", alignment="span").reason == "insertion"
    assert check_pair(tok, "A cat sat.", "A big old grey dog sat.", alignment="span", max_edit_tokens=2).reason \
        == "edit_too_long"


def test_span_alignment_compares_the_suffix_token_for_token(tiny_lm):
    tok = tiny_lm.tokenizer
    tp_split = check_pair(tok, *SPLIT, alignment="span").tokens
    tp_one = check_pair(tok, "She is good at math.", "She is good in math.").tokens
    sites = resolve(["resid_post"], tiny_lm.info["n_layers"])
    st = DiffStats(sites, ["all"], positions=["edit", "last", "after"], device="cpu")
    (b,) = make_batches([tp_split, tp_one], [0, 0], tiny_lm.bos_token_id, tiny_lm.pad_token_id, 2)
    assert b.b_index is not None
    forward(tiny_lm.bridge, b, st.hooks(b))
    st.consume()
    name = sites[-1].name
    _, cache = tiny_lm.bridge.run_with_cache(b.tokens, attention_mask=b.mask.long(), names_filter=[name])
    x = cache[name]
    j = int((b.index == 0).nonzero())  # the split pair's row
    la, lb = tp_split.n_tokens, tp_split.n_tokens_b
    e = tp_split.edit_pos + 1
    torch.testing.assert_close(x[j, :e], x[b.size + j, :e], rtol=0, atol=1e-5)  # the prefix is shared
    k = 1 - j
    ek, lk = tp_one.edit_pos + 1, tp_one.n_tokens
    last = ((x[j, la] - x[b.size + j, lb]).abs() + (x[k, lk] - x[b.size + k, lk]).abs()) / 2
    after_j = (x[j, e + 1:la + 1] - x[b.size + j, e + 2:lb + 1]).abs().mean(0)  # suffix aligned from the end
    after_k = (x[k, ek + 1:lk + 1] - x[b.size + k, ek + 1:lk + 1]).abs().mean(0)
    t = st.table()
    row = lambda pos: torch.tensor(t[(t.hook_name == name) & (t.position == pos)].sort_values("component")["mean_abs_diff"].to_numpy())  # noqa: E731
    torch.testing.assert_close(row("last"), last.double(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(row("after"), ((after_j + after_k) / 2).double(), rtol=1e-5, atol=1e-6)


def test_a_span_run_keeps_split_word_pairs_and_records_their_spans(tmp_path):
    p = tmp_path / "p.jsonl"
    rows = [SPLIT, TWO, ("She is good at math.", "She is good in math."), ("She walked home.", "She has walked home.")]
    p.write_text("".join(json.dumps({"a": a, "b": b, "category": "mixed"}) + "\n" for a, b in rows))
    out = run(make_cfg("model=tiny", "device=cpu", "pairs=file", f"pairs.path={p}", "pairs.alignment=span",
                       "analysis.figures=false", "batch_size=4"), tmp_path / "run")
    pairs = pd.read_parquet(out / "pairs.parquet")
    assert len(pairs) == 3
    split = pairs[pairs.a == SPLIT[0]].iloc[0]
    assert split.n_tokens_b == split.n_tokens + 1 and split.edit_end_b == split.edit_pos + 1
    assert (pairs.logprob_a < 0).all() and (pairs.logprob_b < 0).all()
    rej = [json.loads(x) for x in (out / "rejected.jsonl").read_text().splitlines()]
    assert [r["reason"] for r in rej] == ["insertion"]
    # strict (the default) keeps only the one-token edit
    out = run(make_cfg("model=tiny", "device=cpu", "pairs=file", f"pairs.path={p}", "analysis.figures=false"),
              tmp_path / "strict")
    assert len(pd.read_parquet(out / "pairs.parquet")) == 1
