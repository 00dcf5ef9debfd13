"""Model families (issue 23): the six tiny random families (``conf/model/tiny_<family>.yaml``) end to
end: hook values against the Hugging Face model's own modules, the plain backend against the
bridge, log-probs against HF logits, runs from ``interp.analyze`` and the command line, AtP, the
viewer, family specifics, a family without a module layout, and the BOS rules.

Where each hook point lives in each family's Hugging Face module tree is written out by hand here
(``TREES``), not read from ``interp.hooks.LAYOUTS``: the bridge must equal those modules' values, and
the plain backend (which reads ``LAYOUTS``) must equal the bridge, so a wrong layout entry fails.

Tolerances (float32, activations of these random models reach |x| ~ 25): the bridge and the plain
tree run the same Hugging Face modules, but with other attention code (the bridge's eager attention,
its split of GPT-2's fused ``c_attn``; the plain tree's ``sdpa``), so sums run in another order.
float32's unit roundoff is 6e-8; reductions of <= 128 terms through two layers give relative errors
~1e-6, observed at most 1.7e-5 absolute. ``ATOL = 1e-4`` (plus ``RTOL = 1e-5``) leaves a margin of
~5x and is four orders below what a wrong module, or the input of a module taken for its output
(a norm applied or not, a residual added or not: differences of order 1), changes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import interp
from interp import rundir as R
from interp.backends.hf import UnsupportedHook
from interp.config import ConfigError
from interp.engine import make_batches
from interp.hooks import HOOK_POINTS
from interp.model import ModelLoadError, choose_bos, load_model
from interp.pairs.validate import check_pair
from tests.conftest import PAIR_ROWS, REPO, hf_reference, make_cfg, tokenizer_overrides

pytestmark = pytest.mark.usefixtures("one_thread")

FAMILIES = ["gpt2", "pythia", "gemma", "qwen2", "mistral", "llama"]
ATOL, RTOL = 1e-4, 1e-5  # see the module docstring
ROWS = PAIR_ROWS[:4]  # one-token grammar edits: a few sentences, short and long (6 to 8 tokens)


# ---------------------------------------------------------------- module trees, by hand

@dataclass(frozen=True)
class Tree:
    """Where a family's Hugging Face module tree keeps each hook point, written out by hand: per
    point, (module under the decoder layer, "out" = its output (first element of a tuple) | "in" =
    its first input); "" = the decoder layer itself."""

    layers: str
    where: dict[str, tuple[str, str]]


GPT2 = Tree("transformer.h", {
    "resid_post": ("", "out"),
    "attn_out": ("attn", "out"),
    "z": ("attn.c_proj", "in"),  # the heads' outputs side by side, before W_O
    "resid_mid": ("ln_2", "in"),
    "mlp_post": ("mlp.c_proj", "in"),  # GELU(c_fc x)
    "mlp_out": ("mlp", "out"),
})
NEOX_SEQUENTIAL = Tree("gpt_neox.layers", {
    "resid_post": ("", "out"),
    "attn_out": ("attention", "out"),
    "z": ("attention.dense", "in"),
    "resid_mid": ("post_attention_layernorm", "in"),  # x + attn(ln1(x)), only without parallel attention
    "mlp_post": ("mlp.dense_4h_to_h", "in"),
    "mlp_out": ("mlp", "out"),
})
# parallel attention and MLP (Pythia): post_attention_layernorm reads the block's input, no resid_mid
NEOX_PARALLEL = Tree("gpt_neox.layers", {k: v for k, v in NEOX_SEQUENTIAL.where.items() if k != "resid_mid"})
LLAMA_LIKE = Tree("model.layers", {
    "resid_post": ("", "out"),
    "attn_out": ("self_attn", "out"),
    "z": ("self_attn.o_proj", "in"),
    "resid_mid": ("post_attention_layernorm", "in"),
    "mlp_post": ("mlp.down_proj", "in"),  # act(gate_proj x) * up_proj x
    "mlp_out": ("mlp", "out"),
})
TREES = {"gpt2": GPT2, "pythia": NEOX_PARALLEL, "gemma": LLAMA_LIKE, "qwen2": LLAMA_LIKE, "mistral": LLAMA_LIKE,
         "llama": LLAMA_LIKE}
LAYOUT = {"gpt2": "gpt2", "pythia": "gpt_neox", "gemma": "llama", "qwen2": "llama", "mistral": "llama",
          "llama": "llama"}
FACTS = {  # family: (model_type, norm, positions, parallel_attn_mlp, n_kv_heads)
    "gpt2": ("gpt2", "LayerNorm", "learned", False, 4),
    "pythia": ("gpt_neox", "LayerNorm", "rotary", True, 4),
    "gemma": ("gemma", "RMSNorm", "rotary", False, 1),
    "qwen2": ("qwen2", "RMSNorm", "rotary", False, 2),
    "mistral": ("mistral", "RMSNorm", "rotary", False, 2),
    "llama": ("llama", "RMSNorm", "rotary", False, 2),
}


def family_cfg(fam: str, *overrides: str):
    return make_cfg(f"model=tiny_{fam}", "device=cpu", "dtype=float32", *tokenizer_overrides(), *overrides)


def load(fam: str, *overrides: str):
    """A fresh model (not ``interp.run.get_model``'s cache, which ``tiny_lm`` shares for tiny_llama)."""
    return load_model(family_cfg(fam, *overrides).model, "cpu", "float32")


@pytest.fixture(scope="module", params=FAMILIES)
def fam(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def lm(fam):
    return load(fam)


def batch_of(lm):
    """The a and b sentences of ``ROWS``: 8 rows, BOS first, right-padded to 9 tokens."""
    tps = [check_pair(lm.tokenizer, a, b).tokens for a, b, _, _ in ROWS]
    b = make_batches(tps, [0] * len(tps), lm.bos_token_id, lm.pad_token_id, len(tps))[0]
    assert (~b.mask).any() and (b.tokens[:, 0] == lm.bos_token_id).all()  # padding present, BOS first
    return b


def close(got, want, msg: str):
    assert got.shape == want.shape, (msg, got.shape, want.shape)
    torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL, msg=msg)


def names_of(lm) -> list[str]:
    return [HOOK_POINTS[p].name(layer) for layer in range(lm.info["n_layers"]) for p in lm.hook_points]


# ---------------------------------------------------------------- 1, 2: hooks = HF = plain

def by_hand(ref, tree: Tree, n_layers: int, batch):
    """The reference model's activations at ``tree``'s modules (plain PyTorch hooks) and its output."""
    got, handles = {}, []

    def out_hook(key):
        def hook(module, args, output):
            got[key] = (output[0] if isinstance(output, tuple) else output).detach().clone()
        return hook

    def in_hook(key):
        def hook(module, args):
            got[key] = args[0].detach().clone()
        return hook

    try:
        for layer in range(n_layers):
            for point, (sub, io) in tree.where.items():
                module = ref.get_submodule(f"{tree.layers}.{layer}" + (f".{sub}" if sub else ""))
                handles.append(module.register_forward_hook(out_hook((point, layer))) if io == "out"
                               else module.register_forward_pre_hook(in_hook((point, layer))))
        with torch.no_grad():
            out = ref(batch.tokens, attention_mask=batch.mask.long(), output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    return got, out


def assert_bridge_equals_hf(lm, tree: Tree):
    b = batch_of(lm)
    L, H = lm.info["n_layers"], lm.info["n_heads"]
    assert set(lm.hook_points) == {"resid_pre", *tree.where}  # the points the model has, by hand
    names = names_of(lm) + ["ln_final.hook_out"]
    logits, cache = lm.bridge.run_with_cache(b.tokens, attention_mask=b.mask.long(),
                                             names_filter=lambda n: n in names)
    got, out = by_hand(hf_reference(lm), tree, L, b)
    m = b.mask  # real tokens only
    hs = out.hidden_states
    assert len(hs) == L + 1
    for layer in range(L):
        close(cache[f"blocks.{layer}.hook_resid_pre"][m], hs[layer][m], f"resid_pre {layer}")
        if layer < L - 1:  # HF's last hidden state is after the final norm
            close(cache[f"blocks.{layer}.hook_resid_post"][m], hs[layer + 1][m], f"resid_post {layer}")
    close(cache["ln_final.hook_out"][m], hs[L][m], "ln_final")
    assert set(got) == {(p, layer) for p in tree.where for layer in range(L)}  # every hand hook fired
    for (point, layer), v in got.items():
        if point == "z":
            v = v.unflatten(-1, (H, -1))  # [batch, pos, head, d_head]
        close(cache[HOOK_POINTS[point].name(layer)][m], v[m], f"{point} {layer}")
    close(logits[m], out.logits[m], "logits")


def assert_plain_equals_bridge(lm):
    b = batch_of(lm)
    names = names_of(lm) + ["ln_final.hook_out"]
    _, cache = lm.bridge.run_with_cache(b.tokens, attention_mask=b.mask.long(), names_filter=lambda n: n in names)
    with torch.no_grad():
        want_logits = hf_reference(lm)(b.tokens, attention_mask=b.mask.long()).logits
    m = b.mask
    before = lm.plain.attn
    try:
        for attn in ("eager", "sdpa"):
            lm.plain.set_attention(attn)
            got = {}

            def keep(name):
                def hook(x, hook):
                    got[name] = x.detach().clone()
                return hook

            with torch.no_grad(), lm.plain.hooks([(n, keep(n)) for n in names]):
                logits = lm.plain(b.tokens, attention_mask=b.mask.long())
            assert set(got) == set(names), attn
            for n in names:
                close(got[n][m], cache[n][m], f"{attn} {n}")
            close(logits[m], want_logits[m], f"{attn} logits")
    finally:
        lm.plain.set_attention(before)


def test_hooks_equal_the_hugging_face_models_own_values(fam, lm):
    assert_bridge_equals_hf(lm, TREES[fam])


def test_the_plain_backend_equals_the_bridge_at_every_point_and_hf_logits(fam, lm):
    assert lm.plain is not None and lm.plain_reason is None
    assert lm.plain.layout.family == LAYOUT[fam]
    assert lm.plain.layout.points() == lm.hook_points  # the plain tree offers exactly the model's points
    assert_plain_equals_bridge(lm)


# ---------------------------------------------------------------- 3, 4, 6: a run, its log-probs, the viewer

def hooks_for(lm) -> list[str]:
    return ["resid_post", "z", "mlp_post"] + (["resid_mid"] if "resid_mid" in lm.hook_points else [])


@pytest.fixture(scope="module")
def result(fam, lm, tmp_path_factory):
    """``interp.analyze`` on the family, saved as a run dir (``runs/<fam>``) for the viewer."""
    root = tmp_path_factory.mktemp(f"runs_{fam}")
    r = interp.analyze(lm, ROWS, hooks=hooks_for(lm), figures=False, batch_size=4, save=root / fam)
    return r, root


def test_the_runs_logprobs_equal_hf_log_softmax_sums(fam, lm, result):
    r, _ = result
    ref = hf_reference(lm)
    p = r.pairs.set_index("a")
    assert len(p) == len(ROWS)
    for a, b, _, _ in ROWS:
        for side, text in (("a", a), ("b", b)):
            ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
            tokens = torch.tensor([[lm.bos_token_id, *ids]])  # one sentence: no padding at all
            with torch.no_grad():
                lp = torch.log_softmax(ref(tokens).logits[0, :-1].double(), -1)  # position t predicts t + 1
            want = float(lp[torch.arange(len(ids)), torch.tensor(ids)].sum())
            assert int(p.loc[a, "n_tokens" if side == "a" else "n_tokens_b"]) == len(ids)
            # float32 logits: ~1e-6 relative per token, sums of <= 8 tokens of |log p| ~ 11
            assert float(p.loc[a, f"logprob_{side}"]) == pytest.approx(want, rel=1e-5, abs=1e-4), (side, text)


def test_analyze_gives_rows_for_every_hook_on_the_plain_backend(fam, lm, result):
    r, root = result
    L = lm.info["n_layers"]
    hooks = hooks_for(lm)
    got = set(map(tuple, r.stability[["hook", "layer"]].drop_duplicates().itertuples(index=False)))
    assert got == {(h, layer) for h in [*hooks, "z_head"] for layer in range(L)}
    assert r.manifest["forward"]["backend"] == "hf" and r.manifest["forward"]["layout"] == LAYOUT[fam]
    assert "why_bridge" not in r.manifest["forward"]
    assert r.manifest["model"]["family"] == FACTS[fam][0] and r.manifest["hooks"]
    assert R.is_complete(root / fam)


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    """One ``python -m interp.run`` per family, all started at once (their start-up, mostly imports,
    overlaps); each test waits for its own."""
    root = tmp_path_factory.mktemp("cli")
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "INTERP_CACHE_DIR": os.environ.get("INTERP_CACHE_DIR", os.path.expanduser("~/.cache/interp"))}
    procs = {}
    for f in FAMILIES:
        args = [f"model=tiny_{f}", "pairs=grammar", "pairs.limit=1", "hooks=resid_post", "device=cpu",
                "dtype=float32", "analysis.figures=false", "progress=false", *tokenizer_overrides(),
                f"hydra.run.dir={root / f}"]
        with open(root / f"{f}.out", "w") as out, open(root / f"{f}.err", "w") as err:  # files: no pipe fills up
            procs[f] = subprocess.Popen([sys.executable, "-m", "interp.run", *args], cwd=REPO, env=env,
                                        stdout=out, stderr=err)
    yield root, procs
    for p in procs.values():
        if p.poll() is None:
            p.kill()
            p.wait()


def test_the_command_line_runs_the_family(fam, cli_runs):
    root, procs = cli_runs
    rc = procs[fam].wait(timeout=600)
    out, err = ((root / f"{fam}.{k}").read_text() for k in ("out", "err"))
    assert rc == 0, err[-3000:]
    run_dir = root / fam
    assert "run dir:" in out and R.is_complete(run_dir)
    for name in ("manifest.json", "pairs.parquet", "stability.parquet", "run.log"):
        assert (run_dir / name).is_file(), name
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["forward"]["backend"] == "hf" and manifest["forward"]["layout"] == LAYOUT[fam]
    assert manifest["model"]["name"] == f"tiny-{fam}" and manifest["model"]["family"] == FACTS[fam][0]
    assert manifest["counts"]["kept"] == len(pd.read_parquet(run_dir / "pairs.parquet")) >= 1
    stab = pd.read_parquet(run_dir / "stability.parquet")
    assert set(stab["hook"]) == {"resid_post"} and set(stab["layer"]) == {0, 1}


def test_the_viewer_shows_the_familys_run(fam, lm, result):
    from interp.viewer import create_app

    _, root = result
    client = create_app(root).test_client()
    last = lm.info["n_layers"] - 1
    for url in (f"/run/{fam}", f"/run/{fam}/-/layer/{last}", f"/run/{fam}/-/head/{last}/{lm.info['n_heads'] - 1}",
                f"/run/{fam}/-/neuron/{last}/{lm.info['d_mlp'] - 1}"):
        r = client.get(url)
        assert r.status_code == 200, (url, r.status_code, r.get_data(as_text=True)[:500])


# ---------------------------------------------------------------- 5: AtP

def test_atp_is_finite_and_the_first_order_term_of_real_patching(fam, lm):
    from interp.causal import atp as A

    tps = [check_pair(lm.tokenizer, a, b).tokens for a, b, _, _ in ROWS]
    points = ["resid_pre", "resid_post", "attn_out", "mlp_out", "z", "mlp_post"]  # resid_mid cannot be set
    table = A.atp_table(lm, tps, points, batch_size=4, modes=("edit", "after"))
    L = lm.info["n_layers"]
    assert table.attrs["n_pairs"] == len(ROWS) and np.isfinite(table["atp_mean"]).all()
    assert set(table["hook"]) == {*points, "z_head"} and set(table["layer"]) == set(range(L))
    assert table["atp_abs_mean"].max() > 0
    # AtP is the derivative of real patching at eps = 0 (the metric is linear to first order):
    # central differences of patching act_b + eps (act_a - act_b) equal it up to O(eps^2)
    b = make_batches(tps, [0] * len(tps), lm.bos_token_id, lm.pad_token_id, len(tps))[0]
    atp = A.attribution(lm, b, [("resid_post", 0)], modes=("after",))[("resid_post", 0, "after")]
    c = int(atp.abs().sum(0).argmax())
    eps = 1e-2  # as tests/test_atp.py: truncation O(eps^2); float32 noise of the log-prob sums / 2 eps
    up = A.patch_effect(lm, b, "resid_post", 0, c, "after", eps=eps)
    down = A.patch_effect(lm, b, "resid_post", 0, c, "after", eps=-eps)
    v = atp[:, c].double()
    scale = float(v.abs().max())
    assert scale > 1e-3
    np.testing.assert_allclose(((up - down) / (2 * eps)).numpy(), v.numpy(), rtol=0, atol=3e-3 * scale + 2e-3)


# ---------------------------------------------------------------- 7: family specifics

def test_the_familys_architecture_facts(fam, lm):
    model_type, norm, positions, parallel, n_kv = FACTS[fam]
    yaml_tied = bool(family_cfg(fam).model.config.tie_word_embeddings)
    info = lm.info
    assert (info["family"], info["layout"], info["norm"], info["positions"]) == (model_type, LAYOUT[fam], norm,
                                                                               positions)
    assert info["parallel_attn_mlp"] is parallel and info["n_kv_heads"] == n_kv
    assert info["tied_embeddings"] is yaml_tied
    hf = lm.plain.original_model
    assert (hf.get_output_embeddings().weight is hf.get_input_embeddings().weight) is yaml_tied
    assert info["bos_token"] == "<|endoftext|>" and info["bos_rule"] == "model.bos_token"
    assert ("resid_mid" in lm.hook_points) is not parallel


def test_pythia_has_no_resid_mid_and_a_run_asking_for_it_is_refused():
    lm = load("pythia")
    assert "resid_mid" not in lm.hook_points and "resid_post" in lm.hook_points
    with pytest.raises(UnsupportedHook, match="resid_mid"), lm.plain.hooks([("blocks.0.hook_resid_mid", print)]):
        pass
    assert "blocks.0.hook_resid_mid" not in lm.bridge.hook_dict
    with pytest.raises(ConfigError, match="resid_mid"):
        interp.analyze(lm, ROWS[:1], hooks=["resid_post", "resid_mid"], figures=False)


def test_gpt_neox_without_parallel_attention_has_resid_mid_on_both_backends():
    lm = load("pythia", "model.config.use_parallel_residual=false")
    assert "resid_mid" in lm.hook_points and lm.info["parallel_attn_mlp"] is False
    assert lm.plain.layout.family == "gpt_neox" and lm.plain.layout.points() == lm.hook_points
    assert_bridge_equals_hf(lm, NEOX_SEQUENTIAL)  # resid_mid = post_attention_layernorm's input
    assert_plain_equals_bridge(lm)


# ---------------------------------------------------------------- 8: a family without a layout

GPTJ = {"model_type": "gptj", "vocab_size": 49152, "n_embd": 64, "n_inner": 128, "n_layer": 2, "n_head": 4,
        "rotary_dim": 8, "n_positions": 256, "bos_token_id": 0, "eos_token_id": 0, "tie_word_embeddings": False,
        "initializer_range": 0.2}


def test_a_family_without_a_module_layout_runs_on_the_bridge_and_says_why():
    from omegaconf import open_dict

    mcfg = family_cfg("gpt2").model
    with open_dict(mcfg):
        mcfg.name, mcfg.config = "tiny-gptj", GPTJ
    lm = load_model(mcfg, "cpu", "float32")
    assert lm.info["family"] == "gptj" and lm.info["layout"] is None
    assert lm.plain is None and "no module layout" in lm.plain_reason
    r = interp.analyze(lm, ROWS[:2], hooks=["resid_post", "mlp_post"], figures=False)
    fwd = r.manifest["forward"]
    assert fwd["backend"] == "bridge" and "no module layout" in fwd["why_bridge"] and "gptj" in fwd["why_bridge"]
    assert set(r.stability["hook"]) == {"resid_post", "mlp_post"} and np.isfinite(r.pairs["logprob_a"]).all()


def test_the_causal_checks_run_on_the_bridge_for_a_family_without_a_layout(tmp_path):
    """``interp.patch`` on a GPT-J run (no plain tree): ablation, activation patching and AtP all run on
    the bridge, and the causal manifest says patching ran there."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from interp.causal import run_causal
    from tests.conftest import CONF

    mcfg = family_cfg("gpt2").model
    with open_dict(mcfg):
        mcfg.name, mcfg.config = "tiny-gptj", GPTJ
    lm = load_model(mcfg, "cpu", "float32")
    run_dir = interp.analyze(lm, ROWS, hooks=["resid_post", "mlp_out"], figures=False).save(tmp_path / "gptj")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="patch", overrides=[
            "progress=false", f"run={run_dir}", "k=[2]", "ablation.split=null", "ablation.limit=4",
            "ablation.seeds=2", "patching.n_pairs=1", "atp.validate=2", "figures.enabled=false"])
    run_causal(cfg)
    causal = Path(run_dir) / "causal"
    man = json.loads((causal / "manifest.json").read_text())
    assert man["patching"]["backend"] == "bridge", man["patching"]
    for name in ("ablation.parquet", "patching.parquet", "atp.parquet"):
        assert len(pd.read_parquet(causal / name)) > 0, name
    assert np.isfinite(pd.read_parquet(causal / "atp.parquet")["atp_mean"]).all()


# ---------------------------------------------------------------- 9: BOS rules

class FakeTokenizer:
    """What ``choose_bos`` reads of a Hugging Face tokenizer; unknown tokens map to ``unk`` (or None)."""

    def __init__(self, vocab: dict[str, int], bos: str | None = None, eos: str | None = None,
                 unk: str | None = None):
        self.vocab = vocab
        self.bos_token, self.eos_token, self.unk_token = bos, eos, unk
        self.bos_token_id, self.eos_token_id, self.unk_token_id = (vocab.get(t) if t else None for t in (bos, eos, unk))

    def get_vocab(self) -> dict[str, int]:
        return dict(self.vocab)

    def convert_tokens_to_ids(self, token: str):
        return self.vocab.get(token, self.unk_token_id)


def test_bos_rules():
    llama = FakeTokenizer({"<unk>": 0, "<s>": 1, "</s>": 2, "<|endoftext|>": 3, "hi": 4}, bos="<s>", eos="</s>",
                          unk="<unk>")
    assert choose_bos(llama, "<|endoftext|>") == (3, "model.bos_token")  # explicit, over the tokenizer's BOS
    assert choose_bos(llama, "<unk>") == (0, "model.bos_token")  # the unknown token itself, asked for by name
    assert choose_bos(llama, None) == (1, "the tokenizer's BOS token")
    qwen = FakeTokenizer({"hi": 0, "<|endoftext|>": 151643, "<|im_end|>": 151645}, eos="<|im_end|>")
    tid, rule = choose_bos(qwen, None)
    assert tid == 151643 and "<|endoftext|>" in rule  # the document separator, not EOS <|im_end|>
    bare = FakeTokenizer({"hi": 0, "</s>": 7}, eos="</s>")
    tid, rule = choose_bos(bare, None)
    assert tid == 7 and "EOS" in rule
    with pytest.raises(ModelLoadError, match="set model.bos_token"):
        choose_bos(FakeTokenizer({"hi": 0}), None)  # nothing to prepend
    for tok in (llama, qwen):  # an unknown token: mapped to <unk> (llama) or to None (qwen: no unk token)
        with pytest.raises(ModelLoadError, match="<nope>"):
            choose_bos(tok, "<nope>")


def test_bos_rules_on_the_borrowed_tokenizer():
    from interp.model import load_tokenizer

    tok = load_tokenizer(family_cfg("qwen2").model)  # SmolLM2's: BOS <|im_start|>; <|endoftext|> is its unk
    assert choose_bos(tok, "<|endoftext|>") == (0, "model.bos_token")
    assert choose_bos(tok, None) == (tok.bos_token_id, "the tokenizer's BOS token")
    with pytest.raises(ModelLoadError, match="not a token of the model's tokenizer"):
        choose_bos(tok, "<nope>")


@pytest.mark.parametrize("family", ["gpt2", "pythia"])
def test_a_saved_folder_of_another_family_loads_through_model_hf(family, tmp_path):
    """``model=hf model.path=DIR``: a folder written by ``save_pretrained`` (weights, config,
    tokenizer), as a researcher's downloaded checkpoint is, loads with its family's layout on the
    plain tree and gives the same logits as the model it was saved from."""
    src = load(family)
    model = src.plain.original_model
    model.save_pretrained(tmp_path)
    src.tokenizer.save_pretrained(tmp_path)
    cfg = make_cfg("model=hf", f"model.path={tmp_path}", "model.name=local", "model.bos_token='<|endoftext|>'",
                   "device=cpu", "dtype=float32")
    lm = load_model(cfg.model, "cpu", "float32")
    assert lm.plain_reason is None and lm.plain.layout.family == src.plain.layout.family
    assert lm.info["family"] == src.info["family"] and lm.info["source"] == "hf"
    tokens = torch.tensor([[lm.bos_token_id, 422, 314, 1234, 56]])
    with torch.no_grad():
        torch.testing.assert_close(lm.plain(tokens), model(tokens).logits, rtol=0, atol=0)


def test_log_probs_follow_a_familys_final_logit_soft_capping():
    """Gemma 2 soft-caps its logits (tanh(x / cap) * cap) after the unembedding; the run's log-probs,
    computed from the final norm's output, equal the Hugging Face model's own (a small cap, so that
    leaving it out would show)."""
    from omegaconf import open_dict

    mcfg = family_cfg("gemma").model
    with open_dict(mcfg):
        mcfg.name = "tiny-gemma2"
        mcfg.config.model_type = "gemma2"
        mcfg.config.final_logit_softcapping = 2.0
        mcfg.config.attn_logit_softcapping = None
        mcfg.config.query_pre_attn_scalar = 16
    lm = load_model(mcfg, "cpu", "float32")
    assert lm.info["family"] == "gemma2" and lm.plain is None  # no layout: the bridge runs it
    r = interp.analyze(lm, ROWS[:2], hooks=["resid_post"], figures=False, controls={"n": 0}, contrast=None)
    ref = lm.hf_model  # the bridge runs it (asserted above): the Hugging Face model is the reference
    for row in r.pairs.itertuples():
        ids = torch.tensor([[lm.bos_token_id, *lm.tokenizer(row.a, add_special_tokens=False)["input_ids"]]])
        with torch.no_grad():
            logits = ref(ids).logits.float()
        want = logits[0, :-1].log_softmax(-1).gather(-1, ids[0, 1:, None]).sum().item()
        assert abs(row.logprob_a - want) < 1e-3, (row.logprob_a, want)
        assert logits.abs().max() <= 2.0 + 1e-4  # the cap is what the model computes
