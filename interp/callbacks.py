"""Hydra callbacks of ``python -m interp.run`` (``conf/config.yaml``'s ``hydra.callbacks``).

``SweepSummary`` writes ``sweep_summary.json`` and ``.csv`` into a multirun's sweep dir at its end:
one row per job dir with its status, overrides, headline numbers and tracker runs. ``Tracking``
logs each job to the experiment tracker of ``tracking=`` at the job's end (``interp.tracking``):
a single run and every job of a sweep alike, in the job's own process (whatever the launcher)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from . import rundir as R
from .rules import grammar_accuracy


def summarize_sweep(sweep_dir: str | Path) -> pd.DataFrame:
    rows = []
    for job in sorted(p for p in Path(sweep_dir).iterdir() if p.is_dir() and not p.name.startswith(".")):
        row: dict[str, Any] = {"job": job.name, "run_dir": str(job)}
        overrides = job / ".hydra" / "overrides.yaml"
        if overrides.exists():
            row["overrides"] = " ".join(l[2:].strip() for l in overrides.read_text().splitlines() if l.startswith("- "))
        try:
            m = R.read_manifest(job)
        except R.SchemaVersionError as err:  # written by a newer version of the code
            row["status"], row["error"] = "newer", str(err)
            rows.append(row)
            continue
        except (OSError, ValueError):
            row["status"] = "incomplete"
            rows.append(row)
            continue
        c = m["counts"]
        row.update({
            "status": m.get("status"), "model": m["model"]["name"], "hooks": ",".join(m["config"]["hooks"]["points"]),
            "kept": c["kept"], "rejected": c["rejected"], "failed": c["failed_in_forward"],
            "grammar_accuracy": grammar_accuracy(m.get("accuracy", [])),
            "seconds": m["timings"].get("total_s"),
        })
        from .tracking import read_record

        tracked = {b: e.get("run_id") for b, e in read_record(job).items() if isinstance(e, dict)}
        if tracked:
            row["tracking"] = " ".join(f"{b}:{rid}" for b, rid in sorted(tracked.items()))
        rows.append(row)
    return pd.DataFrame(rows)


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.exists():
            return
        df = summarize_sweep(sweep_dir)
        R.write_json(sweep_dir / "sweep_summary.json", df.to_dict("records"))
        with R.atomic_path(sweep_dir / "sweep_summary.csv") as tmp:
            df.to_csv(tmp, index=False)
        print(f"sweep summary: {sweep_dir / 'sweep_summary.csv'} ({len(df)} jobs, "
              f"{int((df.get('status') == 'complete').sum()) if 'status' in df else 0} complete)", flush=True)


class Tracking(Callback):
    """``tracking=mlflow|wandb|tensorboard``: at the end of each job, its run dir logged to the tracker
    (a job that raised: logged as failed). A tracker error is a warning on stderr, never a failed run."""

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        backend = OmegaConf.select(config, "tracking.backend", default="none")
        if backend in (None, "none"):
            return
        from .tracking import track_job

        track_job(config, job_return)
