"""The analysis pipeline: validated pairs -> batches -> one forward pass per batch with hooks ->
running statistics and pair rows -> a ``Result``.

``execute(cfg, lm, pair_set, checkpoint)`` does the work and returns a ``Result`` in memory; it never
holds more than one batch of activations (two with ``analysis.overlap`` on a GPU). With a
``Checkpoint`` it saves progress every ``checkpoint_every`` batches and resumes from the last one.
Writing the run directory is ``Result.save``; ``interp.run.run`` and ``interp.analyze`` wrap this.
"""

from __future__ import annotations

import logging
import os
import sys
import time

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from ..backends import describe_forward
from ..backends import select as analysis_model
from ..config import ConfigError
from .. import controls as C
from ..engine import Batch, batch_token_budget, make_batches, pair_logprobs
from ..hooks import resolve
from ..kernels import use_fused
from ..model import LoadedModel
from ..pairs import PairSet, Problem, validate_pairs
from ..result import Result
from ..stats import DiffStats
from ..stats import values as pair_values
from ..rules import correct
from .assemble import assemble, contrast_sides
from .checkpoint import Checkpoint, RunConfigMismatch, combine_forward
from .inspect import capture_inspection
from .state import plan_by_category, state_groups

log = logging.getLogger(__name__)


class NoPairsError(ValueError):
    """No pair passed validation; ``rejected_rows`` says why each was refused."""

    def __init__(self, message: str, rejected_rows: list[dict]):
        super().__init__(message)
        self.rejected_rows = rejected_rows


def _pair_rows(batch: Batch, lp: torch.Tensor, kept, extra: dict[int, dict] | None = None) -> list[dict]:
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
            "correct": correct(margin, p.type),
        })
        if extra:
            rows[-1].update(extra.get(i, {}))
        rows[-1].update({f"meta_{k}": v for k, v in p.meta.items()})
    return rows


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
                 pipelined: bool | None = None, model=None, extra: dict[int, dict] | None = None):
        self.lm, self.stats, self.kept, self.failed = lm, stats, kept, failed
        self.extra = extra or {}  # per kept index: the control columns of its pairs.parquet row
        self.model = lm.bridge if model is None else model  # the bridge or an interp.backends.hf.PlainModel
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
            # a and b only (control rows only feed the hooks); analysis.fused: the Triton log-softmax or PyTorch's
            lp = pair_logprobs(self.model, batch, hooks, fused=self.stats.fused)
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
        return _pair_rows(batch, lp, self.kept, self.extra)

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


def shard_indices(n: int, shard) -> list[int]:
    """Kept-pair indices of one shard: every ``count``-th pair from ``index`` (deterministic)."""
    index, count = (int(shard.index), int(shard.count)) if shard else (0, 1)
    if not (count >= 1 and 0 <= index < count):
        raise ConfigError(f"shard.index={index} shard.count={count}: need 0 <= index < count")
    return list(range(index, n, count))


class CountError(RuntimeError):
    """The finished batches do not add up to the pairs of the run (never expected: a run that would
    count a pair twice or lose one stops instead of saying complete)."""


def check_counts(rows: list[dict], failed: list[dict], n_mine: int, n_kept: int, n_rejected: int, n_loaded: int,
                 sharded: bool) -> None:
    """kept + failed = the pairs this process analysed, each once; unsharded, kept + rejected =
    loaded (lines that gave no pair are counted apart)."""
    index = [r["pair_index"] for r in rows] + [f["pair_index"] for f in failed]
    problems = []
    if len(set(index)) != len(index):
        problems.append(f"{len(index) - len(set(index))} pairs counted twice")
    if len(index) != n_mine:
        problems.append(f"{len(rows)} kept + {len(failed)} failed != {n_mine} pairs analysed")
    if not sharded and n_kept + n_rejected != n_loaded:
        problems.append(f"{n_kept} kept + {n_rejected} rejected != {n_loaded} loaded")
    if problems:
        raise CountError("the run's counts do not add up (" + "; ".join(problems) + "); not saved as complete")


def chunk_layers(value, device) -> int:
    """Layers of a hook point reduced together: ``auto`` = 16 on a GPU (fewer, larger launches and
    fewer small operations per batch: 1.05x the analysis of 8 on the realistic workload, for about
    1 GB more of per-pair values at the 8B shape; benchmarks/README.md), 1 on the CPU (stacking
    layers there only copies memory; per-layer ops are large enough)."""
    if value == "auto":
        return 16 if torch.device(device).type == "cuda" else 1
    return int(value)


def new_stats(cfg: DictConfig, sites, groups: list[str], device, keep_values: dict | None = None,
              n_pairs: int = 0, members: dict[str, list[str]] | None = None) -> DiffStats:
    """The run's ``DiffStats``; ``groups``/``members``: ``interp.run.state.state_groups``."""
    acfg = cfg.analysis
    return DiffStats(sites, groups, list(acfg.positions), device,
                     n_controls=C.control_count(acfg.controls),
                     max_offset=int(acfg.max_offset), detail_pairs=int(acfg.detail_pairs),
                     detail_k=int(acfg.detail_k), chunk=chunk_layers(acfg.chunk_layers, device),
                     fused=use_fused(acfg.fused, device), keep_values=keep_values, value_capacity=n_pairs,
                     members=members)


def plan_groups(acfg, sites, info: dict, categories: list[str], group_types: dict[str, str], sides):
    """The groups the statistics are kept per: ``(names, members, group_of, by_category)``, with
    ``group_of`` the group index of every category and ``by_category`` the manifest's record
    (``interp.run.state``: per category where the per-category tables are written, else blocks)."""
    by_category = plan_by_category(acfg, sites, info, categories)
    names, members = state_groups(categories, group_types, sides,
                                  per_category=by_category["written"] or len(categories) < 2)
    if members is not None:
        by_category["state_groups"] = members
    group_of = {c: i for i, g in enumerate(names) for c in (members[g] if members else [g])}
    return names, members, group_of, by_category


def plan_pair_values(cfg: DictConfig, sites, info: dict, n_pairs: int) -> tuple[dict, dict]:
    """``analysis.pair_values`` for this run: which hook points keep per-pair values at which
    position modes (``interp.stats.values.plan``)."""
    from ..hooks import HOOK_POINTS, head_summary

    layers: dict[str, int] = {}
    for s in sites:
        layers[s.point] = layers.get(s.point, 0) + 1
    points = list(layers)
    for p in list(points):
        if p in HOOK_POINTS and HOOK_POINTS[p].heads:
            layers[head_summary(p)] = layers[p]
            points.append(head_summary(p))
    return pair_values.plan(cfg.analysis, points, layers, info, n_pairs)




def execute(cfg: DictConfig, lm: LoadedModel, pair_set: PairSet, checkpoint: Checkpoint | None = None,
            timings: dict[str, float] | None = None, t0: float | None = None) -> Result:
    """Analyse the pairs of ``pair_set`` with the model ``lm`` as ``cfg`` says; return the Result.

    With ``shard.count > 1`` only every ``count``-th kept pair from ``shard.index`` is analysed (a
    complete Result of its own; ``python -m interp.merge`` combines shards). ``checkpoint``: save
    progress there every ``checkpoint_every`` batches and resume from what it holds."""
    t0 = time.time() if t0 is None else t0
    timings = {} if timings is None else timings
    torch.manual_seed(int(cfg.seed))

    t = time.time()
    kept, rejected = validate_pairs(pair_set.pairs, lm.tokenizer, max_tokens=int(cfg.max_tokens),
                                    alignment=str(cfg.pairs.alignment),
                                    max_edit_tokens=int(cfg.pairs.max_edit_tokens))
    problems: list[Problem] = list(pair_set.problems)
    if cfg.analysis.controls.pool == "grammatical" and int(cfg.analysis.controls.n):
        kept, no_alt = C.split_missing_alt(kept, lm.tokenizer)  # reported in rejected.parquet, counted in the summary
        rejected = rejected + no_alt
    timings["pairs_s"] = timings.get("pairs_s", 0.0) + time.time() - t
    rejected_rows = [dict(vars(p)) for p in problems + rejected]
    if not kept:
        raise NoPairsError(f"no pair passed validation ({len(rejected)} rejected, {len(problems)} unreadable "
                           "lines)", rejected_rows)

    # groups, types and controls are fixed from the whole pair set, so shards agree on them
    groups = sorted({p.category for p, _ in kept})
    group_types = {p.category: p.type for p, _ in kept}
    sites = resolve(list(cfg.hooks.points), lm.info["n_layers"], cfg.hooks.get("layers"), lm.hook_points)
    acfg = cfg.analysis
    # settings that need the kept pairs, refused before the batch loop rather than after it
    sides = contrast_sides(acfg.contrast, group_types, groups)
    unknown = sorted(set(cfg.hooks.get("pattern_pairs") or []) - {p.pair_id for p, _ in kept})
    if unknown:
        raise ConfigError(f"hooks.pattern_pairs: no kept pair with id {unknown[:5]}")
    mine = shard_indices(len(kept), cfg.get("shard"))
    t = time.time()
    controls = C.build_controls(cfg, lm.tokenizer, C.input_embedding(lm), kept, mine)
    timings["controls_s"] = time.time() - t
    # planned for the whole run, so every shard keeps the same hook points and position modes
    keep, kept_facts = plan_pair_values(cfg, sites, lm.info, len(kept))
    # per-category tables, and with them the groups the statistics are kept per (interp.run.state)
    names, members, group_of, by_category = plan_groups(acfg, sites, lm.info, groups, group_types, sides)
    stats = new_stats(cfg, sites, names, lm.device, keep_values=keep, n_pairs=len(mine), members=members)
    batches = make_batches([kept[i][1] for i in mine], [group_of[kept[i][0].category] for i in mine],
                           lm.bos_token_id, lm.pad_token_id, int(cfg.batch_size), lm.device,
                           controls.ids if controls.k else None,
                           batch_token_budget(cfg.get("batch_tokens"), int(cfg.batch_size), 2 + controls.k))
    for b in batches:  # batch positions -> run-wide kept indices
        b.index = torch.tensor([mine[j] for j in b.index.tolist()])

    resumed = checkpoint.load() if checkpoint else None
    start, pair_rows, failed, details, earlier = 0, [], [], [], []
    if resumed:  # earlier: how the model ran in the parts before (a resumed run may run differently)
        start, pair_rows, failed, state, details, earlier = resumed
        stats.load_state_dict(state)
        stats.load_pair_value_state(checkpoint.load_pair_values())
        log.info("resuming %s at batch %d of %d", checkpoint.dir.parent, start, len(batches))
    every = int(cfg.checkpoint_every) if checkpoint else 0
    crash_after = int(os.environ.get("INTERP_CRASH_AFTER_BATCH", "0"))  # tests: simulate a kill

    t = time.time()
    from tqdm.auto import tqdm

    pair_ids = [p.pair_id for p, _ in kept]
    bar = tqdm(total=len(mine), initial=sum(b.size for b in batches[:start]), unit="pair",
               disable=not cfg.progress, desc="pairs", file=sys.stderr)
    model, forward_facts = analysis_model(lm, acfg, [s.name for s in sites], n_pairs=len(mine))
    log.info("forward pass: %s", describe_forward(forward_facts))
    pipe = BatchPipeline(lm, stats, kept, failed, overlap=bool(acfg.overlap), model=model,
                         extra=dict(zip(mine, controls.rows)))
    for bi in range(start, len(batches)):
        pair_rows += pipe.submit(batches[bi])
        bar.update(batches[bi].size)
        if every and (bi + 1) % every == 0 and bi + 1 < len(batches):
            pair_rows += pipe.flush()
            wait_for_statistics(lm.device)
            details.append(stats.detail_tables(pair_ids))
            stats.details = []
            checkpoint.save(bi + 1, pair_rows, failed, stats.state_dict(), details, earlier + [forward_facts],
                            stats.pair_value_state())
        if crash_after and bi + 1 == crash_after:
            os._exit(17)
    pair_rows += pipe.flush()
    stats.drop_buffers()  # the CPU activation buffers: not needed for the results
    bar.close()
    if model is lm.plain and lm.plain.compile_error:  # compilation was given up during the run
        forward_facts.update(compiled=False, compile_error=lm.plain.compile_error)
    forward_facts = combine_forward(earlier + [forward_facts])
    timings["forward_s"] = time.time() - t
    check_counts(pair_rows, failed, len(mine), len(kept), len(rejected), len(pair_set.pairs),
                 sharded=bool(cfg.get("shard")) and int(cfg.shard.count) > 1)
    if not pair_rows:  # every pair failed: a bug or a bad setting, not bad pairs
        raise RuntimeError(f"every pair failed in the forward pass; first error: {failed[0]['detail']}")
    wait_for_statistics(lm.device)
    details.append(stats.detail_tables(pair_ids))

    t = time.time()
    shard = cfg.get("shard")
    is_first = not shard or int(shard.index) == 0
    inspection = capture_inspection(lm, kept, sites, int(acfg.n_saved_pairs) if is_first else 0,
                                    list(cfg.hooks.get("pattern_pairs") or []) if is_first else None,
                                    chunk=int(cfg.batch_size))
    timings["inspect_s"] = time.time() - t
    facts = {
        "model": lm.info, "forward": forward_facts, "group_types": group_types, "pairs_loaded": len(pair_set.pairs),
        "unreadable_lines": len(problems), "rejected": len(rejected), "batches": len(batches),
        "duplicates": getattr(pair_set, "duplicates", 0),
        "resumed_from_batch": start, "inspect": {"n_saved_pairs": inspection.n_pairs},
        "shard": OmegaConf.to_container(shard) if shard else None,
        "controls": controls.facts, "pair_values": kept_facts, "by_category": by_category,
    }
    return assemble(cfg, stats, pd.DataFrame(pair_rows), rejected_rows, failed, [d[0] for d in details],
                    [d[1] for d in details], facts, timings, t0, inspection.files())
