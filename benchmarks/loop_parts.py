"""What each part of the analysis adds to the decoder, timed as whole loops over the same batches.

    python -m benchmarks.loop_parts model=llama3_8b_shape device=cuda n_pairs=2048 batch_size=128 repeats=3

``benchmarks.throughput`` times the analysis loop against the decoder alone (``bare_decoder``);
``benchmarks.phases`` splits a batch into phases, synchronising between them (so no overlap shows).
This one times, as uninterrupted loops over all batches (no synchronisation between batches, as a
run goes), each a step more of the analysis on the model a run would use:

- ``decoder``: the decoder alone, no hooks, no unembedding (``throughput.DecoderOnly``; the plain
  Hugging Face tree only: with the bridge it says so and stops);
- ``hooks_noop``: the same with a hook at every hook site of the analysis that does nothing;
- ``hooks_keep``: hooks that keep a reference to every activation until the batch is done (what
  the analysis's hooks do);
- ``logprobs``: the pass with the analysis's own hooks and the a and b log-probabilities
  (``engine.pair_logprobs``: the scored predictions' unembedding and log-softmax), no statistics;
- ``analysis``: the whole batch loop of a run (``BatchPipeline``: the statistics on a side stream
  while the next batch's forward pass runs);
- ``analysis_high_priority`` (CUDA): the same, with everything but the statistics on a
  high-priority stream, so that the GPU's block scheduler runs the forward pass's blocks first and
  the statistics' in what is left.

Each variant runs ``repeats`` times interleaved with the others, after one untimed warm-up round
(with a compiled tree: one batch of every length first); the best time of each is kept. Every
analysis loop starts from fresh statistics, made before its clock starts, with the CUDA allocator's
cache kept (``benchmarks.throughput``'s analysis loop starts with it emptied). One JSON line: seconds,
and each variant's time over ``decoder``'s.
"""

from __future__ import annotations

import contextlib
import json

import hydra
import torch
from omegaconf import DictConfig

from benchmarks.throughput import DecoderOnly, pipeline, prepare, timed, warm_batches
from interp.engine import pair_logprobs
from interp.run import get_model


def variants(cfg, lm, kept, groups, batches, n_controls) -> dict:
    """The loops to time, by name: (setup, loop), ``loop(setup())`` timed (setup None: ``loop(None)``)."""
    stats, pipe, facts = pipeline(cfg, lm, kept, groups, n_controls)
    model = pipe.model
    if facts["backend"] != "hf":
        raise SystemExit(f"benchmarks.loop_parts times the plain Hugging Face tree; this run uses {facts['backend']}")
    decoder = DecoderOnly(model)
    names = [s.name for s in stats.sites]
    kept_acts: list = []

    def pass_without_logits(b):
        decoder(b.tokens, attention_mask=b.mask.long())

    def hooked(fn):
        def loop(_):
            with torch.inference_mode():
                for b in batches:
                    kept_acts.clear()
                    with model.hooks([(n, fn) for n in names]):
                        pass_without_logits(b)
            kept_acts.clear()
        loop.kept = kept_acts  # what the keeping hooks hold (read by the tests)
        return None, loop

    def decoder_loop(_):
        with torch.inference_mode():
            for b in batches:
                pass_without_logits(b)

    def logprobs_loop(_):
        with torch.inference_mode():
            for b in batches:
                hooks, captured = stats.capture(b)
                pair_logprobs(model, b, hooks, fused=stats.fused)
                stats.release(captured)

    def analysis(stream=None):
        def setup():  # fresh statistics for every timed loop, made before its clock starts; the
            # allocator keeps its cached blocks, as for the other loops (not so in the tenth session's numbers)
            return pipeline(cfg, lm, kept, groups, n_controls, empty_cache=False)[1]

        def loop(p):
            with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                for b in batches:
                    p.submit(b)
                p.flush()
        return setup, loop

    out = {"decoder": (None, decoder_loop), "hooks_noop": hooked(lambda act, hook=None: None),
           "hooks_keep": hooked(lambda act, hook=None: kept_acts.append(act)),
           "logprobs": (None, logprobs_loop), "analysis": analysis()}
    if lm.device.type == "cuda":  # a priority past the device's range is taken as its highest
        out["analysis_high_priority"] = analysis(torch.cuda.Stream(lm.device, priority=-100))
    return out, facts


def measure(cfg: DictConfig) -> dict:
    lm = get_model(cfg)
    kept, groups, batches, n_controls = prepare(cfg, lm, int(cfg.n_pairs))
    loops, facts = variants(cfg, lm, kept, groups, batches, n_controls)
    warm = warm_batches(batches, len(batches), facts["compiled"])
    for setup, loop in variants(cfg, lm, kept, groups, warm, n_controls)[0].values():
        loop(setup() if setup else None)  # compiles every length, fills the allocator's pools
    times: dict[str, list[float]] = {k: [] for k in loops}
    for _ in range(int(cfg.repeats)):
        for name, (setup, loop) in loops.items():
            arg = setup() if setup else None
            times[name].append(timed(lambda: loop(arg), lm.device))
    best = {k: min(v) for k, v in times.items()}
    return {"model": lm.info["name"], "device": str(lm.device),
            "gpu": torch.cuda.get_device_name(lm.device) if lm.device.type == "cuda" else None,
            "pairs": len(kept), "batches": len(batches), "batch_size_pairs": int(cfg.batch_size),
            "analysis_forward": facts, "repeats": int(cfg.repeats),
            "seconds": {k: round(v, 4) for k, v in best.items()},
            "vs_decoder": {k: round(v / best["decoder"], 4) for k, v in best.items()},
            "all_seconds": {k: [round(x, 4) for x in v] for k, v in times.items()}}


@hydra.main(config_path="../conf", config_name="benchmark", version_base="1.3")
def main(cfg: DictConfig) -> None:
    print(json.dumps(measure(cfg)), flush=True)


if __name__ == "__main__":
    main()
