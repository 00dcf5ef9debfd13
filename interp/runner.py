"""The analysis run: pairs -> validation -> batched forward passes with hooks -> run directory.

``run(cfg, out_dir)`` is what ``python -m interp.run`` calls after Hydra composed the config; tests
call it directly. It never holds more than one batch of activations. Progress is checkpointed every
``checkpoint_every`` batches, so a run started again in the same directory with the same config
continues from its last finished batch (a different config there is refused).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from . import attention
from . import results as R
from .analysis import DiffStats
from .controls import control_ids, make_pool
from .engine import Batch, make_batches, pair_logprobs
from .fused import use_fused
from .hooks import PATTERN, resolve
from .model import LoadedModel, load_model, resolve_device, resolve_dtype
from .pairs import Problem, load_pairs, validate_pairs

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
_MODELS: dict[str, LoadedModel] = {}  # the last two models of this process, reused by the jobs of a sweep


class RunConfigMismatch(RuntimeError):
    """The run dir holds a checkpoint of a run with another config."""


def get_model(cfg: DictConfig) -> LoadedModel:
    dev = resolve_device(cfg.device)
    key = json.dumps([OmegaConf.to_container(cfg.model, resolve=True), str(dev), str(resolve_dtype(cfg.dtype, dev))],
                     sort_keys=True)
    if key not in _MODELS:
        while len(_MODELS) >= 2:  # keep the two most recent (a sweep alternates at most a few)
            _MODELS.pop(next(iter(_MODELS)))
        _MODELS[key] = load_model(cfg.model, cfg.device, cfg.dtype)
    else:
        _MODELS[key] = _MODELS.pop(key)  # most recent last
    return _MODELS[key]


def config_hash(cfg: DictConfig) -> str:
    """Hash of what determines a run's numbers (not progress bars or output placement)."""
    c = OmegaConf.to_container(cfg, resolve=True)
    for k in ("progress", "hydra", "checkpoint_every"):
        c.pop(k, None)
    return hashlib.sha256(json.dumps(c, sort_keys=True, default=str).encode()).hexdigest()[:16]


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for pkg in ("interp", "torch", "transformers", "transformer-lens", "numpy", "pandas", "hydra-core"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _pair_rows(batch: Batch, lp: torch.Tensor, kept) -> list[dict]:
    B = batch.size
    lp_a, lp_b = lp[:B].cpu().tolist(), lp[B:2 * B].cpu().tolist()
    rows = []
    for j, i in enumerate(batch.index.tolist()):
        p, tp = kept[i]
        margin = lp_a[j] - lp_b[j]
        rows.append({
            "pair_index": i, "pair_id": p.pair_id, "category": p.category, "type": p.type, "a": p.a, "b": p.b,
            "source": p.source, "line": p.line, "n_tokens": tp.n_tokens, "n_tokens_b": tp.n_tokens_b,
            "edit_pos": tp.edit_pos, "edit_end_a": tp.edit_end_a, "edit_end_b": tp.edit_end_b,
            "token_a": tp.token_a, "token_b": tp.token_b,
            "token_id_a": tp.ids_a[tp.edit_pos], "token_id_b": tp.ids_b[tp.edit_pos],
            "logprob_a": lp_a[j], "logprob_b": lp_b[j], "margin": margin,
            "correct": (margin > 0) if p.type == "grammar" else None,
        })
        rows[-1].update({f"meta_{k}": v for k, v in p.meta.items()})
    return rows


class Checkpoint:
    """Atomic progress files in ``run_dir/checkpoint``: finished pair rows, stats, rejected pairs."""

    def __init__(self, run_dir: Path, cfg_hash: str):
        self.dir = run_dir / CHECKPOINT_DIR
        self.hash = cfg_hash

    def load(self) -> tuple[int, list[dict], list[dict], dict] | None:
        meta_path = self.dir / "progress.json"
        if not meta_path.exists():
            return None
        meta = json.loads(meta_path.read_text())
        if meta["config_hash"] != self.hash:
            raise RunConfigMismatch(
                f"{self.dir.parent} holds a run with another config (hash {meta['config_hash']}, this "
                f"one {self.hash}); use another hydra.run.dir or start the same config again")
        from safetensors.torch import load_file

        done = meta["batches_done"]
        rows = pd.read_parquet(self.dir / "pairs.parquet").to_dict("records") if done else []
        state = load_file(str(self.dir / "stats.safetensors")) if done else {}
        details = [(pd.read_parquet(self.dir / "pair_profile.parquet"),
                    pd.read_parquet(self.dir / "pair_components.parquet"))] if done else []
        return done, rows, meta.get("failed", []), state, details, meta.get("forward_parts", [])

    def save(self, batches_done: int, rows: list[dict], failed: list[dict], state: dict, details,
             forward_parts: list[dict]) -> None:
        R.write_parquet(self.dir / "pairs.parquet", pd.DataFrame(rows))
        R.write_safetensors(self.dir / "stats.safetensors", state)
        R.write_parquet(self.dir / "pair_profile.parquet", pd.concat([d[0] for d in details], ignore_index=True))
        R.write_parquet(self.dir / "pair_components.parquet", pd.concat([d[1] for d in details], ignore_index=True))
        # progress.json last: it names what the other two files hold
        R.write_json(self.dir / "progress.json",
                     {"config_hash": self.hash, "batches_done": batches_done, "failed": failed,
                      "forward_parts": forward_parts})


def combine_forward(parts: list[dict]) -> dict:
    """How the model ran over several parts (the parts of a resumed run, or shards): one record if
    they agree, else every part's (``mixed``)."""
    return parts[0] if all(f == parts[0] for f in parts) else {"mixed": parts}


_SIDE_STREAMS: dict[str, "torch.cuda.Stream"] = {}


def side_stream(device: torch.device):
    """A second CUDA stream for the statistics, so they overlap the next batch's forward pass
    (``analysis.overlap``); None on the CPU."""
    if device.type != "cuda":
        return None
    key = str(device)
    if key not in _SIDE_STREAMS:
        _SIDE_STREAMS[key] = torch.cuda.Stream(device)
    return _SIDE_STREAMS[key]


def wait_for_statistics(device: torch.device) -> None:
    """Before reading the running statistics on the host: let the side stream finish."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StatisticsError(Exception):
    """The statistics failed while being updated in place: the run stops (not retried per pair);
    ``checkpoint_every`` keeps what was finished before."""


class BatchPipeline:
    """Runs the batches of a run: forward pass, log-probabilities, statistics, pair rows.

    Nothing of a batch is committed unless its forward pass succeeds and every log-probability is
    finite; a failing batch is split until the failing pair is found, which is recorded in
    ``failed`` (not fatal). With ``overlap`` on a GPU the host stays one batch ahead: batch i's
    forward pass is queued before batch i-1 is checked (its log-probabilities come back through a
    pinned copy and an event, not a device-wide sync), and batch i-1's activations are folded into
    the statistics on a side stream while batch i's forward pass runs. ``submit`` returns the pair
    rows of the batches finished so far; ``flush`` finishes the one in flight.
    """

    def __init__(self, lm: LoadedModel, stats: DiffStats, kept, failed: list[dict], overlap: bool = False,
                 pipelined: bool | None = None, model=None):
        self.lm, self.stats, self.kept, self.failed = lm, stats, kept, failed
        self.model = lm.bridge if model is None else model  # the bridge or an interp.plain.PlainModel
        self.side = side_stream(lm.device) if overlap else None
        self.pipelined = self.side is not None if pipelined is None else pipelined  # one batch in flight
        self.pending = None

    def submit(self, batch: Batch) -> list[dict]:
        if not self.pipelined:
            return self._now(batch)
        try:
            launched = self._launch(batch)
        except (RuntimeError, IndexError) as err:
            return self.flush() + self._split(batch, err)
        rows = self.flush()
        self.pending = launched
        return rows

    def flush(self) -> list[dict]:
        """Finish the batch in flight (if any) and return its pair rows."""
        if self.pending is None:
            return []
        launched, self.pending = self.pending, None
        return self._finish(launched)

    def _now(self, batch: Batch) -> list[dict]:
        """Run one batch to the end (a failing one is split)."""
        try:
            launched = self._launch(batch)
        except (RuntimeError, IndexError) as err:
            return self._split(batch, err)
        return self._finish(launched)

    def _launch(self, batch: Batch):
        hooks, captured = self.stats.capture(batch)
        try:
            lp = pair_logprobs(self.model, batch, hooks)  # a and b only; control rows only feed the hooks
        except BaseException:
            self.stats.release(captured)  # its buffers are free for the split halves
            raise
        done = None
        if lp.is_cuda:  # back to the host without waiting for work queued after this batch
            host = torch.empty(lp.shape, dtype=lp.dtype, pin_memory=True)
            host.copy_(lp, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
            lp = host
        return batch, captured, lp, done

    def _finish(self, launched) -> list[dict]:
        batch, captured, lp, done = launched
        if done is not None:
            done.synchronize()
        if not torch.isfinite(lp).all():
            self.stats.release(captured)
            return self._split(batch, FloatingPointError("non-finite log-probability"))
        try:
            if self.side is None:
                self.stats.consume(captured)
            else:
                self.side.wait_event(done)
                for acts in captured[1].values():
                    for a in acts:
                        a.record_stream(self.side)  # the activations live until the side stream is done with them
                with torch.cuda.stream(self.side):
                    self.stats.consume(captured)
        except Exception as err:
            raise StatisticsError(f"updating the statistics failed on a batch of {batch.size} pairs: "
                                  f"{type(err).__name__}: {err}") from err
        return _pair_rows(batch, lp, self.kept)

    def _split(self, batch: Batch, err: Exception) -> list[dict]:
        if isinstance(err, RunConfigMismatch):
            raise err
        if batch.size == 1:
            i = int(batch.index[0])
            p = self.kept[i][0]
            self.failed.append({"pair_index": i, "pair_id": p.pair_id, "category": p.category, "a": p.a, "b": p.b,
                                "source": p.source, "line": p.line, "reason": "forward_failed",
                                "detail": f"{type(err).__name__}: {err}"[:500]})
            log.warning("pair %s failed: %s", p.pair_id, err)
            return []
        h = batch.size // 2
        return self._now(batch.rows(0, h)) + self._now(batch.rows(h, batch.size))


BACKENDS = ("auto", "bridge", "hf")


def _caller_hooks(lm: LoadedModel) -> str | None:
    """Where a caller attached hooks that only the bridge's forward pass would run, or None: on a
    bridge hook point, on a module of the bridge or of the model object it rewired (hooks that
    TransformerLens or transformers install themselves do not count), or global module hooks."""
    from torch.nn.modules import module as nn_module
    from transformer_lens.hook_points import HookPoint

    if nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks:
        return "global module hooks are registered"
    own = ("transformer_lens", "transformers", "torch")
    for tree in (lm.bridge, lm.hf_model):
        for name, m in tree.named_modules():
            for fn in [*m._forward_hooks.values(), *m._forward_pre_hooks.values()]:
                if isinstance(m, HookPoint) or not str(getattr(fn, "__module__", "")).startswith(own):
                    return f"hooks are attached to the bridge ({name or type(m).__name__})"
    return None


def compile_wanted(acfg, device: torch.device, n_pairs: int) -> bool:
    """``analysis.compile`` resolved: ``auto`` compiles on CUDA, and on the CPU for runs of at least
    ``analysis.compile_cpu_min_pairs`` pairs."""
    comp = acfg.get("compile", "auto")
    if comp not in ("auto", True, False):
        raise ValueError(f"analysis.compile={comp!r} is not one of auto, true, false")
    if comp != "auto":
        return comp
    return device.type == "cuda" or n_pairs >= int(acfg.get("compile_cpu_min_pairs", 5000))


def analysis_model(lm: LoadedModel, acfg, hook_names: list[str], n_pairs: int = 0):
    """The model the batch loop runs, and how: ``(model, facts)``.

    ``analysis.backend``: ``bridge`` runs TransformerBridge (its eager attention; every hook);
    ``hf`` runs the untouched Hugging Face module tree with plain PyTorch hooks (``interp.plain``),
    attention kernel ``analysis.attn`` (``auto``: ``interp.attention``'s kernel on CUDA, eager
    elsewhere), ``torch.compile``d where ``analysis.compile`` says (``auto``:
    on CUDA, and on the CPU for runs of at least ``analysis.compile_cpu_min_pairs`` pairs (``n_pairs``),
    where the compiled pass's gain outweighs the compilation; never with hooks inside the attention or
    MLP, ``z`` and ``mlp_post``), and fails if a hook needs the bridge; ``auto`` picks ``hf`` when it
    can and the bridge otherwise (also when the caller attached hooks to the bridge, which only the
    bridge would run)."""
    from .plain import INNER, supported

    backend = str(acfg.get("backend", "auto"))
    if backend not in BACKENDS:
        raise ValueError(f"analysis.backend={backend!r} is not one of {BACKENDS}")
    why = lm.plain_reason
    if why is None:
        bad = [n for n in hook_names if not supported(n)]
        if bad:
            why = f"hook {bad[0]} needs the bridge"
    caller = _caller_hooks(lm) if why is None else None
    if backend == "auto" and caller:
        why = caller
    if backend == "bridge" or (backend == "auto" and why):
        return lm.bridge, {"backend": "bridge", "attention": "eager (TransformerBridge)", "compiled": False,
                           **({"why_bridge": why} if backend == "auto" else {})}
    if why:
        raise ValueError(f"analysis.backend=hf is not possible here: {why}; use analysis.backend=bridge or auto")
    facts: dict = {"backend": "hf"}
    if caller:
        log.warning("analysis.backend=hf: %s; they do not run in the plain forward pass", caller)
        facts["ignored"] = caller
    lm.plain.set_attention(attention.resolve(acfg.get("attn", "auto"), lm.device))
    want = compile_wanted(acfg, lm.device, n_pairs)
    inner = [n for n in hook_names if n.endswith(INNER)]
    if want and inner:
        facts["compile_skipped"] = f"hook {inner[0]} is inside the attention or MLP that compilation fuses"
    if want and not inner:
        lm.plain.compile()  # kept as it is when already compiled
    else:
        lm.plain.uncompile()
    return lm.plain, {**facts, "attention": lm.plain.attn, "compiled": lm.plain.compiled}


def _pad_positions(t: torch.Tensor, dims: tuple[int, ...], size: int) -> torch.Tensor:
    """Right-pad ``t`` with zeros along ``dims`` (position axes) to ``size``."""
    pad = []
    for d in reversed(range(t.ndim)):
        pad += [0, size - t.shape[d]] if d in dims else [0, 0]
    return torch.nn.functional.pad(t, pad)


def save_inspection(lm: LoadedModel, kept, sites, n: int, run_dir: Path, pair_ids: list[str] | None = None,
                    chunk: int = 32) -> dict:
    """Raw activations and attention patterns of the first ``n`` kept pairs (``n < 0``: all), or of
    the pairs named by ``pair_ids`` (``hooks.pattern_pairs``), in separate passes of ``chunk`` pairs;
    patterns also as a - b. Tensors are ``[pair, sentence, pos, ...]``, right-padded with zeros."""
    if pair_ids:
        index = {p.pair_id: i for i, (p, _) in enumerate(kept)}
        unknown = [x for x in pair_ids if x not in index]
        if unknown:
            raise ValueError(f"hooks.pattern_pairs: no kept pair with id {unknown[:5]}")
        sub = [kept[index[x]] for x in pair_ids]
    else:
        sub = kept if n < 0 else kept[:n]
    if not sub:
        return {"n_saved_pairs": 0}
    n_layers = lm.info["n_layers"]
    pnames = [PATTERN.name(layer) for layer in range(n_layers)]
    names = {s.name for s in sites} | set(pnames)
    parts: dict[str, list[torch.Tensor]] = {}
    for c0 in range(0, len(sub), chunk):
        part = sub[c0:c0 + chunk]
        batch = make_batches([tp for _, tp in part], [0] * len(part), lm.bos_token_id, lm.pad_token_id,
                             len(part), lm.device)[0]
        order = torch.argsort(batch.index.to(batch.tokens.device))  # make_batches sorts by length
        with torch.inference_mode():
            _, cache = lm.bridge.run_with_cache(batch.tokens, attention_mask=batch.mask.long(),
                                                names_filter=lambda name: name in names)
        B = batch.size

        def pairwise(t: torch.Tensor) -> torch.Tensor:  # [2B, ...] -> [B, 2, ...] in the order of sub
            return torch.stack([t[:B][order], t[B:2 * B][order]], 1).cpu()

        got = {s.name: pairwise(cache[s.name].float()) for s in sites}
        got.update({x: pairwise(cache[x].to(torch.float16)) for x in pnames})
        got["tokens"] = pairwise(batch.tokens)
        got["mask"] = pairwise(batch.mask.to(torch.uint8))
        for k, v in got.items():
            parts.setdefault(k, []).append(v)
        del cache
    T = max(t.shape[2] for t in parts["tokens"])
    joined = {k: torch.cat([_pad_positions(t, (3, 4) if k in pnames else (2,), T) for t in v])
              for k, v in parts.items()}
    strs = [[lm.tokenizer.convert_ids_to_tokens(row) for row in (
        [lm.bos_token_id] + tp.ids_a, [lm.bos_token_id] + tp.ids_b)] for _, tp in sub]
    meta = {"pair_ids": json.dumps([p.pair_id for p, _ in sub]), "token_strs": json.dumps(strs),
            "layout": "[pair, sentence(a,b), pos, ...]"}
    R.write_safetensors(run_dir / R.ACTIVATIONS, {k: v for k, v in joined.items() if k not in pnames}, meta)
    pats = {k: joined[k] for k in pnames + ["tokens", "mask"]}
    for x in pnames:  # where the two sentences attend differently
        pats[x + "_diff"] = (joined[x][:, 0].float() - joined[x][:, 1].float()).to(torch.float16)
    R.write_safetensors(run_dir / R.PATTERNS, pats, {**meta, "layout": "[pair, sentence(a,b), head, query, key]; "
                                                            "*_diff: [pair, head, query, key], a - b"})
    return {"n_saved_pairs": len(sub)}


def contrast_sides(spec, types: dict[str, str], groups: list[str]):
    """``analysis.contrast`` -> ((name, categories), (name, categories)), or a note why it is skipped."""
    if not spec:
        return None
    if len(spec) != 2:
        raise ValueError(f"analysis.contrast needs two groups, got {list(spec)}")
    out = []
    for side in spec:
        cats = [c for c in groups if types[c] == side] if side in ("grammar", "semantic") else \
            ([side] if side in groups else [])
        if not cats:
            return f"skipped: no kept pairs of {side!r} in this run"
        out.append((str(side), cats))
    if set(out[0][1]) & set(out[1][1]):
        raise ValueError(f"analysis.contrast: {spec[0]} and {spec[1]} overlap")
    return out


def summarize(pairs_df: pd.DataFrame) -> pd.DataFrame:
    """Per category: pairs, mean margin, error-detection accuracy (grammar: share with margin > 0)."""
    if pairs_df.empty:
        return pd.DataFrame(columns=["category", "type", "n_pairs", "mean_margin", "accuracy"])
    g = pairs_df.groupby(["category", "type"], sort=True)
    out = g.agg(n_pairs=("pair_id", "size"), mean_margin=("margin", "mean")).reset_index()
    acc = pairs_df[pairs_df["type"] == "grammar"].groupby("category")["margin"].apply(lambda m: float((m > 0).mean()))
    out["accuracy"] = out["category"].map(acc)
    return out


def shard_indices(n: int, shard) -> list[int]:
    """Kept-pair indices of one shard: every ``count``-th pair from ``index`` (deterministic)."""
    index, count = (int(shard.index), int(shard.count)) if shard else (0, 1)
    if not (count >= 1 and 0 <= index < count):
        raise ValueError(f"shard.index={index} shard.count={count}: need 0 <= index < count")
    return list(range(index, n, count))


def run(cfg: DictConfig, out_dir: str | Path, lm: LoadedModel | None = None) -> Path:
    """Run the analysis described by ``cfg``; write the run directory ``out_dir``; return it.

    With ``shard.count > 1`` the run analyses every ``count``-th kept pair from ``shard.index``
    and writes a complete run dir of its own; ``python -m interp.merge`` combines shards.
    ``lm`` overrides the model of ``cfg.model`` (a model already loaded, perhaps with hooks of the
    caller's attached: tests plant structure this way).
    """
    t0 = time.time()
    run_dir = Path(out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(int(cfg.seed))
    timings: dict[str, float] = {}

    lm = lm or get_model(cfg)
    timings["load_model_s"] = time.time() - t0

    t = time.time()
    pair_set = load_pairs(cfg.pairs)
    max_tokens = int(cfg.get("max_tokens", 256))
    kept, rejected = validate_pairs(pair_set.pairs, lm.tokenizer, max_tokens=max_tokens,
                                    alignment=str(cfg.pairs.get("alignment") or "strict"),
                                    max_edit_tokens=int(cfg.pairs.get("max_edit_tokens", 4)))
    problems: list[Problem] = list(pair_set.problems)
    timings["pairs_s"] = time.time() - t
    rejected_rows = [dict(vars(p)) for p in problems + rejected]
    if not kept:
        R.write_jsonl(run_dir / R.REJECTED, rejected_rows)
        raise ValueError(f"no pair passed validation ({len(rejected)} rejected, {len(problems)} unreadable lines); "
                         f"see {run_dir / R.REJECTED}")

    # groups, types and controls are fixed from the whole pair set, so shards agree on them
    groups = sorted({p.category for p, _ in kept})
    group_types = {p.category: p.type for p, _ in kept}
    sites = resolve(list(cfg.hooks.points), lm.info["n_layers"], cfg.hooks.get("layers"))
    acfg = cfg.analysis
    mine = shard_indices(len(kept), cfg.get("shard"))
    controls = build_controls(cfg, lm.tokenizer, kept, mine)
    stats = new_stats(cfg, sites, groups, lm.device)
    batches = make_batches([kept[i][1] for i in mine], [groups.index(kept[i][0].category) for i in mine],
                           lm.bos_token_id, lm.pad_token_id, int(cfg.batch_size), lm.device, controls)
    for b in batches:  # batch positions -> run-wide kept indices
        b.index = torch.tensor([mine[j] for j in b.index.tolist()])

    ckpt = Checkpoint(run_dir, config_hash(cfg))
    resumed = ckpt.load()
    start, pair_rows, failed, details, earlier = 0, [], [], [], []
    if resumed:  # earlier: how the model ran in the parts before (a resumed run may run differently)
        start, pair_rows, failed, state, details, earlier = resumed
        stats.load_state_dict(state)
        log.info("resuming %s at batch %d of %d", run_dir, start, len(batches))
    every = int(cfg.get("checkpoint_every", 20))
    crash_after = int(os.environ.get("INTERP_CRASH_AFTER_BATCH", "0"))  # tests: simulate a kill

    t = time.time()
    from tqdm.auto import tqdm

    pair_ids = [p.pair_id for p, _ in kept]
    bar = tqdm(total=len(mine), initial=sum(b.size for b in batches[:start]), unit="pair",
               disable=not cfg.get("progress", True), desc="pairs", file=sys.stderr)
    model, forward_facts = analysis_model(lm, acfg, [s.name for s in sites], n_pairs=len(mine))
    pipe = BatchPipeline(lm, stats, kept, failed, overlap=bool(acfg.get("overlap", True)), model=model)
    for bi in range(start, len(batches)):
        pair_rows += pipe.submit(batches[bi])
        bar.update(batches[bi].size)
        if every and (bi + 1) % every == 0 and bi + 1 < len(batches):
            pair_rows += pipe.flush()
            wait_for_statistics(lm.device)
            details.append(stats.detail_tables(pair_ids))
            stats.details = []
            ckpt.save(bi + 1, pair_rows, failed, stats.state_dict(), details, earlier + [forward_facts])
        if crash_after and bi + 1 == crash_after:
            os._exit(17)
    pair_rows += pipe.flush()
    stats.drop_buffers()  # the CPU activation buffers: not needed for the results
    bar.close()
    if model is lm.plain and lm.plain.compile_error:  # compilation was given up during the run
        forward_facts.update(compiled=False, compile_error=lm.plain.compile_error)
    forward_facts = combine_forward(earlier + [forward_facts])
    timings["forward_s"] = time.time() - t
    if not pair_rows:  # every pair failed: a bug or a bad setting, not bad pairs
        raise RuntimeError(f"every pair failed in the forward pass; first error: {failed[0]['detail']}")
    wait_for_statistics(lm.device)
    details.append(stats.detail_tables(pair_ids))

    t = time.time()
    shard = cfg.get("shard")
    is_first = not shard or int(shard.index) == 0
    inspect = save_inspection(lm, kept, sites, int(acfg.n_saved_pairs) if is_first else 0, run_dir,
                              list(cfg.hooks.get("pattern_pairs") or []) if is_first else None,
                              chunk=int(cfg.batch_size))
    timings["inspect_s"] = time.time() - t
    facts = {
        "model": lm.info, "forward": forward_facts, "group_types": group_types, "pairs_loaded": len(pair_set.pairs),
        "unreadable_lines": len(problems), "rejected": len(rejected), "batches": len(batches),
        "resumed_from_batch": start, "inspect": inspect, "shard": OmegaConf.to_container(shard) if shard else None,
    }
    return finalize(run_dir, cfg, stats, pd.DataFrame(pair_rows), rejected_rows, failed,
                    [d[0] for d in details], [d[1] for d in details], facts, timings, t0)


def build_controls(cfg: DictConfig, tokenizer, kept, indices: list[int]) -> list[list[list[int]]] | None:
    """Control sentences (token ids) of the kept pairs at ``indices``; None without controls.
    The pool is drawn from the whole pair set, so shards agree on it."""
    acfg = cfg.analysis
    n = int(acfg.controls.n) if acfg.get("controls") else 0
    if not n:
        return None
    pool = make_pool(tokenizer, acfg.controls.get("pool", "common"), int(acfg.controls.pool_size),
                     acfg.controls.get("words"), [tp for _, tp in kept])
    out = []
    for i in indices:
        p, tp = kept[i]
        own = {tp.ids_a[tp.edit_pos], tp.ids_b[tp.edit_pos]}
        out.append(control_ids(pool, tp.ids_a, tp.edit_pos, tp.token_a, own, n, int(cfg.seed), p.pair_id))
    return out


def chunk_layers(value, device) -> int:
    """Layers of a hook point reduced together: ``auto`` = 8 on a GPU (fewer, larger launches), 1
    on the CPU (stacking layers there only copies memory; per-layer ops are large enough)."""
    if value == "auto":
        return 8 if torch.device(device).type == "cuda" else 1
    return int(value)


def new_stats(cfg: DictConfig, sites, groups: list[str], device) -> DiffStats:
    acfg = cfg.analysis
    return DiffStats(sites, groups, list(acfg.positions), device,
                     n_controls=int(acfg.controls.n) if acfg.get("controls") else 0,
                     max_offset=int(acfg.get("max_offset", 15)), detail_pairs=int(acfg.get("detail_pairs", 0)),
                     detail_k=int(acfg.get("detail_k", 5)), chunk=chunk_layers(acfg.get("chunk_layers", "auto"), device),
                     fused=use_fused(acfg.get("fused", "auto"), device))


def finalize(run_dir: Path, cfg: DictConfig, stats: DiffStats, pairs_df: pd.DataFrame, rejected_rows: list[dict],
             failed: list[dict], profiles: list[pd.DataFrame], components: list[pd.DataFrame], facts: dict,
             timings: dict, t0: float) -> Path:
    """Write every table, figure and the manifest of a run dir from its statistics (runs and merges)."""
    t = time.time()
    acfg = cfg.analysis
    groups = stats.groups
    pairs_df = pairs_df.sort_values("pair_index").reset_index(drop=True)
    mcfg = acfg.get("massive", {})
    table_kw = {"massive_factor": float(mcfg.get("factor", 20)), "massive_cv": float(mcfg.get("max_cv", 0.25))}
    stab = stats.table(**table_kw)
    R.write_parquet(run_dir / R.PAIRS, pairs_df)
    R.write_parquet(run_dir / R.STABILITY, stab)
    per_cat = [stats.table(group=g, **table_kw).assign(category=g) for g in groups] if len(groups) > 1 else []
    if per_cat:
        R.write_parquet(run_dir / R.STABILITY_BY_CATEGORY, pd.concat(per_cat, ignore_index=True))
    notes: dict = {}
    sides = contrast_sides(acfg.get("contrast"), facts["group_types"], groups)
    if isinstance(sides, str):
        notes["contrast"] = sides
    elif sides:
        R.write_parquet(run_dir / R.CONTRAST, stats.contrast(sides[0][1], sides[1][1], (sides[0][0], sides[1][0])))
    R.write_parquet(run_dir / R.DIVERGENCE, stats.divergence())
    profiles = [p for p in profiles if not p.empty]
    if profiles:
        R.write_parquet(run_dir / R.PAIR_PROFILE, pd.concat(profiles, ignore_index=True))
        R.write_parquet(run_dir / R.PAIR_COMPONENTS, pd.concat([c for c in components if not c.empty], ignore_index=True))
    R.write_jsonl(run_dir / R.REJECTED, rejected_rows + failed)
    R.write_safetensors(run_dir / R.STATS, stats.state_dict(),
                        {"groups": json.dumps(groups), "group_types": json.dumps(facts["group_types"]),
                         "positions": json.dumps(stats.positions), "n_controls": str(stats.n_controls),
                         "max_offset": str(stats.max_offset),
                         "shapes": json.dumps({k: list(v) for k, v in stats.shapes.items()}),
                         "sites": json.dumps([vars(x) for x in stats.sites])})
    timings["write_s"] = time.time() - t

    summary = summarize(pairs_df)
    blimp_lines: list[str] = []
    if cfg.pairs.source == "blimp":  # per-paradigm/phenomenon tables, manifest notes["blimp"], summary lines
        from .pairs.blimp import write_blimp_report
        blimp_lines = write_blimp_report(run_dir, pairs_df, rejected_rows + failed, cfg.pairs, notes)
    figure_info = {}
    if acfg.get("figures", True):
        t = time.time()
        from .figures import write_run_figures

        figure_info = write_run_figures(run_dir, stab, pairs_df, top_k=int(acfg.top_k),
                                        png=bool(acfg.get("png", True)))
        timings["figures_s"] = time.time() - t
    timings["total_s"] = time.time() - t0

    reasons: dict[str, int] = {}
    for r in rejected_rows + failed:
        reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    n_controls = stats.n_controls
    manifest = {
        "status": "complete",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "run_dir": str(run_dir.resolve()),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "config_hash": config_hash(cfg),
        "model": facts["model"],
        "forward": facts.get("forward"),
        "versions": versions(),
        "hooks": [vars(s) for s in stats.sites],
        "positions": stats.positions,
        "groups": groups,
        "group_types": facts["group_types"],
        "shard": facts.get("shard"),
        "merged_from": facts.get("merged_from"),
        "counts": {
            "pairs_loaded": facts["pairs_loaded"], "unreadable_lines": facts["unreadable_lines"],
            "kept": len(pairs_df), "rejected": facts["rejected"], "failed_in_forward": len(failed),
            "rejected_by_reason": reasons, "batches": facts["batches"],
            "resumed_from_batch": facts["resumed_from_batch"], **facts["inspect"],
        },
        "controls": {"n": n_controls, "seed": int(cfg.seed),
                     "pool": (("words" if acfg.controls.get("words") else acfg.controls.get("pool", "common"))
                              if n_controls else None),
                     "test": "one-sided paired t-test over pairs of |a-b| - mean_k |a-c_k|; BH q-values over all rows"},
        "notes": notes,
        "excluded": {
            "bos": "the BOS position is excluded from every statistic",
            "padding": "pad positions are masked out of every statistic and log-probability",
            "shared_prefix": "in the component spread, the prefix shared by both sentences is counted once",
        },
        "accuracy": summary.to_dict("records"),
        "figures": figure_info,
        "timings": timings,
    }
    R.write_json(run_dir / R.MANIFEST, manifest)
    shutil.rmtree(run_dir / CHECKPOINT_DIR, ignore_errors=True)
    print_summary(run_dir, manifest, summary, stab, int(acfg.top_k))
    if blimp_lines:
        print("\n".join(blimp_lines), flush=True)
    return run_dir


def print_summary(run_dir: Path, manifest: dict, summary: pd.DataFrame, stab: pd.DataFrame, top_k: int) -> None:
    c = manifest["counts"]
    lines = [f"\npairs: {c['kept']} kept, {c['rejected']} rejected, {c['unreadable_lines']} unreadable lines"
             + (f", {c['failed_in_forward']} failed" if c["failed_in_forward"] else "")]
    if c["rejected_by_reason"]:
        lines.append("  rejected: " + ", ".join(f"{k}={v}" for k, v in sorted(c["rejected_by_reason"].items())))
    lines.append("error detection (share of pairs with log P(a) > log P(b)):")
    for r in summary.itertuples():
        acc = f"{r.accuracy:6.1%}" if r.type == "grammar" and pd.notna(r.accuracy) else "   n/a"
        lines.append(f"  {r.category:<24} {r.type:<9} n={r.n_pairs:<5} accuracy={acc}  mean margin={r.mean_margin:+.3f}")
    if not stab.empty:
        pos = manifest["positions"][0]
        d = stab[stab["position"] == pos]
        if "q_value" in d:
            alpha = manifest["config"]["analysis"].get("alpha", 0.05)
            sig = d[(d["q_value"] < alpha) & (d["t_stat"] < 0) & ~d["massive"]]
            lines.append(f"stable beyond the control baseline at '{pos}' (q < {alpha}, not massive): "
                         f"{len(sig)} of {d['q_value'].notna().sum()} components")
            top = sig.nsmallest(min(top_k, 10), "rank_calibrated")
            for r in top.itertuples():
                lines.append(f"  {r.hook}[{r.layer}].{r.component:<6} edit/control={r.ratio:.3f}  "
                             f"normalized={r.normalized:.4f}  q={r.q_value:.2g}")
        else:
            top = d.nsmallest(min(top_k, 10), "normalized")
            lines.append(f"most stable components at '{pos}' (normalized |a-b| = mean |a-b| / spread; no control baseline):")
            for r in top.itertuples():
                lines.append(f"  {r.hook}[{r.layer}].{r.component:<6} normalized={r.normalized:.4f}  mean|a-b|={r.mean_abs_diff:.4g}")
    lines.append(f"run dir: {run_dir}")
    print("\n".join(lines), flush=True)
