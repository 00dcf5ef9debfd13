"""The throughput benchmark's realistic workload: BLiMP plus a file with a long tail of lengths."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from benchmarks.throughput import compiled_share
from benchmarks.workloads import long_tail_records, workload_pairs
from interp.pairs import Pair
from interp.pairs.blimp import default_blimp_dir


def test_long_tail_pairs_keep_the_edit_and_have_a_long_tail_of_context():
    base = [Pair(f"The cat {i} sleeps.", f"The cat {i} sleep.", "agreement") for i in range(50)]
    recs = long_tail_records(base, 2000, p=0.35, max_context=8, seed=0)
    assert recs == long_tail_records(base, 2000, p=0.35, max_context=8, seed=0)  # seeded
    ks = [r["k_context"] for r in recs]
    assert min(ks) == 0 and max(ks) == 8
    assert 0.3 < ks.count(0) / len(ks) < 0.4  # P(k=0) = p
    for r in recs:
        pre_a, pre_b = r["a"][:-len("sleeps.")], r["b"][:-len("sleep.")]
        assert pre_a == pre_b and r["a"].endswith("sleeps.") and r["b"].endswith("sleep.")  # one edit, at the end
        assert pre_a.count("sleeps.") == r["k_context"]  # k grammatical context sentences before it


@pytest.mark.skipif(not default_blimp_dir().is_dir(), reason="needs ../shared/data/blimp")
def test_the_realistic_workload_reads_blimp_and_its_tail_file_back(tmp_path):
    cfg = OmegaConf.create({"seed": 0, "workload": "realistic", "pairs": {},
                            "realistic": {"blimp_path": None, "blimp_pairs": 100, "tail_pairs": 40,
                                          "context_p": 0.35, "max_context": 8}})
    pairs, facts = workload_pairs(cfg, tmp_path)
    assert len(pairs) == 140 and facts["tail_pairs"] == 40 and facts["tail_unreadable"] == 0
    rows = [json.loads(x) for x in (tmp_path / "long_tail_pairs.jsonl").read_text().splitlines()]
    assert [p.a for p in pairs[100:]] == [r["a"] for r in rows]  # through the pair-file reader
    assert len({p.category for p in pairs[:100]}) > 20  # paradigms as categories


def test_compiled_share_counts_batches_whose_modules_all_ran_compiled():
    assert compiled_share([9, 9, 7, 9], per_pass=9) == 0.75
    assert compiled_share([18, 9], per_pass=9) == 1.0  # graph breaks: more graphs per pass


def test_the_phase_profile_names_each_phase_and_its_largest_operations():
    """``benchmarks.phases +kernels=N``: per phase (the plain tree's decoder alone, the forward with
    the hooks and log-probabilities, ``consume()``) the time per batch and its largest operations (on
    the CPU the host's operations; on a GPU its kernels)."""
    from hydra import compose, initialize_config_dir

    from benchmarks.phases import phase_kernels
    from benchmarks.throughput import pipeline, prepare
    from interp.run import get_model
    from tests.conftest import CONF, tokenizer_overrides

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("benchmark", ["model=tiny", "n_pairs=8", "batch_size=4", *tokenizer_overrides()])
    lm = get_model(cfg)
    kept, groups, batches, n_controls = prepare(cfg, lm, 8)
    stats, pipe, _ = pipeline(cfg, lm, kept, groups, n_controls)
    out = phase_kernels(lm, pipe.model, stats, batches[:2])
    assert list(out) == ["decoder_no_hooks", "forward_hooks_logprobs", "consume"]
    for phase in out.values():
        assert phase["ms_per_batch"] > 0 and phase["kernels_per_batch"] > 0
        names = [name for name, _, _ in phase["top"]]
        ms = [t for _, _, t in phase["top"]]
        assert len(set(names)) == len(names) and ms == sorted(ms, reverse=True)
    assert any("mm" in n for n, _, _ in out["decoder_no_hooks"]["top"])  # the layers' matrix products


def test_the_decoder_alone_counts_no_unembedding_and_runs_without_logits():
    """``benchmarks.throughput``'s ``bare_decoder``: the plain tree's decoder alone (no logits), and
    its FLOP count the layers' products only (the unembedding's share left out)."""
    from hydra import compose, initialize_config_dir

    from benchmarks.throughput import DecoderOnly, bare_pass, matmul_flop, prepare
    from interp.run import get_model
    from tests.conftest import CONF, tokenizer_overrides

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("benchmark", ["model=tiny", "n_pairs=8", "batch_size=4", *tokenizer_overrides()])
    lm = get_model(cfg)
    _, _, batches, _ = prepare(cfg, lm, 8)
    vocab, d = lm.hf_model.get_output_embeddings().weight.shape
    slots = sum(b.tokens.shape[0] * b.seq_len for b in batches)
    assert matmul_flop(lm, batches) - matmul_flop(lm, batches, unembed=False) == 2 * slots * vocab * d
    seen = []
    handle = lm.plain.original_model.get_output_embeddings().register_forward_hook(lambda *a: seen.append(1))
    try:
        bare_pass(DecoderOnly(lm.plain), batches[0])
    finally:
        handle.remove()
    assert seen == []  # no unembedding ran


def test_the_loop_parts_time_each_step_of_the_analysis_over_the_same_batches(monkeypatch):
    """``benchmarks.loop_parts``: the decoder, then hooks, log-probabilities and the whole analysis, each
    a loop over the same batches: the hook loops fire a hook at every site of every batch (the keeping
    one holds each activation until its batch is done), the log-probabilities run once a batch, and the
    analysis loop folds every batch into fresh statistics."""
    import contextlib

    from hydra import compose, initialize_config_dir

    import benchmarks.loop_parts as parts
    from benchmarks.throughput import prepare
    from interp.backends.hf import PlainModel
    from interp.hooks import resolve
    from interp.run import get_model
    from tests.conftest import CONF, tokenizer_overrides

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("benchmark", ["model=tiny", "n_pairs=8", "batch_size=4", "repeats=1", *tokenizer_overrides()])
    lm = get_model(cfg)
    kept, groups, batches, n_controls = prepare(cfg, lm, 8)
    loops, facts = parts.variants(cfg, lm, kept, groups, batches, n_controls)
    assert list(loops) == ["decoder", "hooks_noop", "hooks_keep", "logprobs", "analysis"]  # no CUDA stream here
    n_sites = len(resolve(list(cfg.hooks.points), lm.info["n_layers"]))  # the statistics' sites

    fired, held = [], []
    own_hooks = PlainModel.hooks

    @contextlib.contextmanager
    def counting(self, fwd_hooks=()):
        def wrap(fn):
            def hook(act, hook=None):
                fired.append(1)
                out = fn(act, hook)
                held.append(len(kept_now()))
                return out
            return hook
        with own_hooks(self, [(n, wrap(fn)) for n, fn in fwd_hooks]) as m:
            yield m

    def kept_now():  # the activations the keeping hooks hold
        return loops["hooks_keep"][1].kept

    monkeypatch.setattr(PlainModel, "hooks", counting)
    for name, per_hook in (("hooks_noop", 0), ("hooks_keep", 1)):
        fired.clear(), held.clear()
        loops[name][1](None)
        assert len(fired) == n_sites * len(batches), name
        # the keeping hooks hold every activation of the batch so far (let go when it is done); the others none
        assert held == [per_hook * (i % n_sites + 1) for i in range(len(held))], name
        assert kept_now() == []
    monkeypatch.setattr(PlainModel, "hooks", own_hooks)
    scored = []
    real = parts.pair_logprobs
    monkeypatch.setattr(parts, "pair_logprobs", lambda *a, **k: scored.append(1) or real(*a, **k))
    loops["logprobs"][1](None)
    assert len(scored) == len(batches)

    setup, loop = loops["analysis"]
    p = setup()
    folded = []
    consume = p.stats.consume
    p.stats.consume = lambda *a: folded.append(1) or consume(*a)
    loop(p)
    assert len(folded) == len(batches) == 2
    assert setup() is not p  # every timed loop starts from fresh statistics
    out = parts.measure(cfg)
    assert set(out["seconds"]) == set(loops) and all(s > 0 for s in out["seconds"].values())
    assert out["batches"] == 2 and set(out["vs_decoder"]) == set(loops) and out["vs_decoder"]["decoder"] == 1.0
