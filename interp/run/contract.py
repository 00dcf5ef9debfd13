"""The run directory's contract in code: every file a run dir can hold, what it holds, and for each
table its columns. README.md's table "The run directory (output contract)" is rendered from here
(``python -m interp.run.contract --write``), and ``tests/test_run_dir_contract.py`` checks a real
run's files and columns against it, so neither the README nor a reader can drift from the writers.

Lists that exist elsewhere in code are read from there, not copied: the stability table's
statistics (``interp.stats.registry``), the per-pair values (``interp.stats.values.COLUMNS``),
``rejected.jsonl``'s fields (``interp.result.REJECTED_COLUMNS``), the causal tables
(``interp.causal.ablation``, ``interp.causal.patching``, ``interp.causal.checks``).

A column that only some runs have names its condition (``Column.when``):

    controls   the run has control edits (``analysis.controls.n`` > 0)
    heads      a hook point with per-head units (``z``): ``head``, ``head_dim``

    python -m interp.run.contract            # print README's table
    python -m interp.run.contract --write    # rewrite it in README.md (between the markers)
    python -m interp.run.contract --check    # exit 1 if README.md's table differs
"""

from __future__ import annotations

import argparse
import fnmatch
import sys
from dataclasses import dataclass
from pathlib import Path

from .. import rundir as R
from .checkpoint import CHECKPOINT_DIR

CONDITIONS = {
    "controls": "with controls (`analysis.controls.n` > 0)",
    "heads": "with per-head hook points (`z`)",
}


@dataclass(frozen=True)
class Column:
    """A column of a run-dir table. ``note``: a short gloss shown in README; ``when``: a key of
    ``CONDITIONS`` (empty: every run); ``doc``: its definition, where code has one."""

    name: str
    note: str = ""
    when: str = ""
    doc: str = ""


@dataclass(frozen=True)
class RunFile:
    """A file or folder (``name`` ends with ``/``) of a run dir, relative to it.

    ``content``: what it holds (markdown, README's wording); ``columns``: a table's columns in file
    order (None: not a table); ``prefixes``: families of extra columns by prefix (``meta_``);
    ``after``: text after the column list; ``always``: every complete run writes it; ``pattern``:
    the glob that file names of this entry match (default ``name``); ``keys``: a JSON file's
    top-level keys (name, gloss); ``summary``: README's text in place of ``content`` and the
    column list."""

    name: str
    content: str
    columns: tuple[Column, ...] | None = None
    prefixes: tuple[tuple[str, str], ...] = ()
    after: str = ""
    always: bool = False
    pattern: str | None = None
    keys: tuple[tuple[str, str], ...] = ()
    summary: str = ""  # README's text instead of content and columns (a table that repeats another's)

    @property
    def is_dir(self) -> bool:
        return self.name.endswith("/")

    def matches(self, rel: str) -> bool:
        """Whether ``rel`` (a path relative to the run dir, ``/``-separated) is this file or lies in this folder."""
        pat = self.pattern or self.name
        if not self.is_dir:
            return fnmatch.fnmatchcase(rel, pat)
        depth = pat.count("/")  # the folder's own path: as many parts of ``rel`` as ``pat`` has
        parts = rel.split("/")
        return len(parts) > depth and fnmatch.fnmatchcase("/".join(parts[:depth]) + "/", pat)


def _cols(names, when: str = "", notes: dict[str, str] | None = None) -> tuple[Column, ...]:
    notes = notes or {}
    return tuple(Column(n, notes.get(n, ""), when) for n in names)


# ------------------------------------------------------------------ tables whose columns live elsewhere


def stability_columns() -> tuple[Column, ...]:
    """``stability.parquet``: the keys, then ``interp.stats.registry``'s columns in the order
    ``DiffStats.table`` writes them (per site, cluster-robust, the head keys, whole-table, rule)."""
    from ..stats import registry as reg

    def scope(s: str) -> tuple[Column, ...]:
        return tuple(Column(c.name, "", "controls" if c.needs_controls else "", c.doc)
                     for c in reg.COLUMNS if c.scope == s)

    keys = _cols(["hook", "hook_name", "layer", "component", "position"],
                 notes={"hook": "`z_head`: the per-head norm of `z`", "position": "edit | last | after"})
    heads = (Column("head", "", "heads", "the attention head of a per-head component"),
             Column("head_dim", "", "heads", "the component's index within its head (`z` only)"))
    return keys + scope("site") + scope("clustered") + heads + scope("table") + scope("rule")


def pair_values_columns() -> tuple[Column, ...]:
    from ..stats.values import COLUMNS

    return _cols(COLUMNS, notes={
        "pair_index": "joins `pairs.parquet`'s `pair_index` column; not a row number: failed pairs leave gaps",
        "abs_diff": "`|a-b|`", "control_diff": "mean over the controls of `|a-c_k|`"})


def rejected_columns() -> tuple[Column, ...]:
    from ..result import REJECTED_COLUMNS

    return _cols(REJECTED_COLUMNS)


# ------------------------------------------------------------------ the run dir

PAIRS_COLUMNS = (
    *_cols(["pair_index", "pair_id", "category", "type", "a", "b", "source", "line", "n_tokens", "n_tokens_b",
            "edit_pos", "edit_end_a", "edit_end_b", "token_a", "token_b", "token_id_a", "token_id_b", "logprob_a",
            "logprob_b", "margin", "correct"],
           notes={"n_tokens": "tokens of `a`, BOS not counted", "n_tokens_b": "of `b`",
                  "edit_pos": "0-based in sentence tokens; model position `edit_pos + 1`",
                  "edit_end_b": "`edit_end_a`/`edit_end_b`: the last edited token, inclusive; `edit_pos` "
                                "for a one-token edit"}),
    # the null (interp.controls)
    *_cols(["alt", "control_ids", "control_tokens", "dist_ab", "dist_ac", "dist_ac_mean", "logfreq_a",
            "logfreq_b", "logfreq_c_mean"],
           notes={"alt": "the pair's grammatical alternative, if any",
                  "control_tokens": "`control_ids`/`control_tokens`: the control edits",
                  "dist_ab": "cosine distance of the input embeddings of token_a and token_b",
                  "dist_ac_mean": "`dist_ac`/`dist_ac_mean`: of token_a and each control",
                  "logfreq_c_mean": "the log-frequency proxy"}),
)

CONTRAST_COLUMNS = _cols(
    ["hook", "layer", "component", "position", "group_a", "group_b", "quantity", "n_a", "n_b", "mean_a", "mean_b",
     "effect", "t_stat", "p_value", "n_clusters", "se_cluster", "t_cluster", "p_cluster", "q_value", "q_cluster"],
    notes={"quantity": "`delta` with controls, else `abs`", "effect": "(mean_a - mean_b) / spread"})

DIVERGENCE_COLUMNS = _cols(["hook", "layer", "category", "offset", "n_pairs", "normalized", "normalized_median"],
                           notes={"category": "`all`, and each category where `stability_by_category.parquet` is written",
                                  "offset": "tokens after the edit"})

DIRECTIONS_COLUMNS = _cols(
    ["hook", "layer", "position", "n_components", "n_stable", "n_distinct", "n_pcs", "pairs_used", "mean_diff_norm",
     "spread_norm", "mean_diff_relative", "mean_diff_snr"],
    notes={"layer": "-1: pooled over layers"})

PAIR_PROFILE_COLUMNS = _cols(["pair_id", "hook", "layer", "position", "offset", "diff_norm", "a_norm"],
                             notes={"position": "token position, BOS = 0", "offset": "from the edit"})

PAIR_COMPONENTS_COLUMNS = _cols(
    ["pair_id", "hook", "layer", "kind", "order", "component", "abs_diff", "normalized"],
    notes={"kind": "`most_changed`/`most_stable`"})

MANIFEST_KEYS = (
    ("schema_version", "the layout's version, `interp.rundir.SCHEMA_VERSION`"), ("status", "`complete`"),
    ("created", ""), ("run_dir", ""), ("config", "resolved"), ("config_hash", ""),
    ("model", "name, shape, parameters, device, dtype, BOS"), ("forward", "backend, attention kernel, compiled"),
    ("versions", ""), ("hooks", ""), ("positions", ""), ("groups", ""), ("group_types", ""),
    ("shard", "index and count"), ("merged_from", "the shard dirs of a merged run"),
    ("counts", "loaded, kept, rejected by reason, unreadable lines, failed pairs, batches, resumed"),
    ("controls", "pool, controls per pair `k`, the draw's facts: candidates, median distances"),
    ("inference", "rule, stable_ratio, alpha, ci, cluster"), ("pair_values", "what was kept"),
    ("by_category", "whether `stability_by_category.parquet` was written, its rows, and why not"),
    ("state", "whether `stats.safetensors` was written, and why"), ("notes", ""), ("excluded", "BOS, padding, shared prefix"), ("accuracy", "per category"), ("figures", ""),
    ("timings", ""),
)
# keys of MANIFEST_KEYS that runs written before them lack (readers use .get)
MANIFEST_LATER = ("by_category", "state")


def run_files() -> tuple[RunFile, ...]:
    """Every entry of a run dir, in README's order."""
    return (
        RunFile(R.MANIFEST, "written last", keys=MANIFEST_KEYS, always=True),
        RunFile(R.PAIRS, "one row per kept pair:", PAIRS_COLUMNS, always=True,
                prefixes=(("meta_", "the pair's other fields, e.g. BLiMP's `field`, `linguistics_term`, `pairID`"),)),
        RunFile(R.STABILITY, "one row per hook x layer x component x position:", stability_columns(), always=True,
                after="each column's definition: `interp/stats/registry.py`, and \"What is measured\" above"),
        RunFile(R.STABILITY_BY_CATEGORY, "the same per category", stability_columns() + _cols(["category"]),
                summary="the same per category (column `category` after the others), when a run has several and "
                        "`analysis.by_category` allows it (`auto`: up to `analysis.by_category_max_rows` rows; the "
                        "manifest's `by_category` says why not)"),
        RunFile(R.CONTRAST, "Welch test per component between the two groups of `analysis.contrast`, when both "
                "have pairs:", CONTRAST_COLUMNS),
        RunFile(R.DIRECTIONS, "per hook x layer x position, the distinct directions of the stable set and the mean "
                "a-b:", DIRECTIONS_COLUMNS, always=True),
        RunFile(R.PAIR_VALUES, "the per-pair values of the clustered statistics (`analysis.pair_values`):",
                pair_values_columns(),
                after="float32 as the statistics used them; one row group per hook, layer and position: "
                      "`pd.read_parquet(path, filters=[(\"hook\", \"==\", \"resid_post\"), (\"layer\", \"==\", 3)])`"),
        RunFile(R.DIVERGENCE, "normalized |a-b| per hook x layer x category x token offset from the edit:",
                DIVERGENCE_COLUMNS, always=True),
        RunFile(R.PAIR_PROFILE, "per pair of the first `analysis.detail_pairs`, ||a-b|| and ||a|| per hook x layer "
                "x position:", PAIR_PROFILE_COLUMNS),
        RunFile(R.PAIR_COMPONENTS, "per pair of the same, the `analysis.detail_k` most changed and most stable "
                "components per hook x layer:", PAIR_COMPONENTS_COLUMNS),
        RunFile("blimp_paradigms.parquet", "with `pairs=blimp` (\"BLiMP and other pair sources\" above): per "
                "paradigm, loaded, kept one-token edits, rejections by reason (`rejected_<reason>`), accuracy, the "
                "published accuracies"),
        RunFile("blimp_phenomena.parquet", "with `pairs=blimp`: the same per phenomenon, and an `overall` row"),
        RunFile(R.REJECTED, "one object per unused pair or line:", rejected_columns(), always=True,
                after="failed pairs add their own fields"),
        RunFile(R.STATS, "the mergeable running statistics, the input of `interp.merge`, written where "
                "`analysis.save_state` asks for them (`auto`: when the run is a shard, `shard.count` > 1): `absmax/` "
                "and `abshist/` per hook point (max |activation| per component and a histogram of log10 "
                "|activation| per layer); `diff/`, `spread/`, `profile/` per hook name (float64 power sums `n`, "
                "`s1`, `s2` about a fixed `shift`: mean = shift + s1/n, M2 = s2 - s1²/n; counts that are the same "
                "for every component stored with that axis of size 1)"),
        RunFile(R.ACTIVATIONS, "raw activations of the first `analysis.n_saved_pairs` kept pairs at the selected "
                "hooks, one tensor per hook name shaped `[N, 2, pos, ...]` (sentence a then b, BOS included, "
                "right-padded; float32, or the run's dtype where it is 16-bit, e.g. bfloat16 on a GPU), `tokens` "
                "and `mask` `[N, 2, pos]`; metadata `pair_ids`"),
        RunFile(R.PATTERNS, "attention patterns of the same pairs, every layer, `[N, 2, head, query, key]` "
                "(float16)"),
        RunFile(R.FIGURES + "/", "plotly HTML (offline: `plotly.min.js` beside them) and PNG: heatmaps layer x "
                "component (and layer x head, layer x neuron block), ranking with the control baseline and "
                "q-values, scatter edit vs control with massive dimensions marked, divergence profile, margins; "
                "`figures/viewer/`: `python -m interp.view export`"),
        RunFile(CAUSAL + "/", "written by `python -m interp.patch` (\"Causal checks\" above): "
                + ", ".join(f"`{f.name[len(CAUSAL) + 1:]}`" for f in causal_files() if f.name != f"{CAUSAL}/"
                            f"{R.MANIFEST}") + f", its own `{R.MANIFEST}`"),
        RunFile("compare_<RUN_B>/", "written by `python -m interp.compare RUN RUN_B` without `--out` "
                "(`compare_<n>runs/` for `RUN RUN_B RUN_C ...`)",
                pattern="compare_*/"),
        RunFile("tracking.json", "with `tracking=mlflow|wandb|tensorboard`: per backend, the experiment tracker's "
                "run that holds this run (`interp.tracking`; `python -m interp.patch` adds to the same one)"),
        RunFile(f"{CHECKPOINT_DIR}/", "while a run is unfinished: its finished batches (a run started again with "
                "the same config resumes from them); removed when the run completes"),
        RunFile(".hydra/", "`python -m interp.run`: Hydra's record of the composed config and the overrides"),
        RunFile("run.log", "`python -m interp.run`: the log"),
    )


# ------------------------------------------------------------------ the causal dir (python -m interp.patch)

CAUSAL = "causal"


def causal_files() -> tuple[RunFile, ...]:
    """The files of ``RUN/causal/`` (README's "Causal checks" documents them); not in README's run-dir
    table except by name, but checked like the run dir's."""
    from ..causal import ablation as A
    from ..causal import checks as C
    from ..causal import patching as P
    from ..stats.registry import COLUMNS as STAT_COLUMNS

    needs = {c.name: c.needs_controls for c in STAT_COLUMNS}
    pair_metrics = ["baseline_margin", "margin", "margin_change", "baseline_post_edit_margin",
                    "post_edit_margin_change", "baseline_downstream_divergence", "downstream_divergence_change"]
    summary = ["n_seeds", "margin_change_mean", "margin_change_std", "margin_change_min", "margin_change_max",
               "accuracy_change_mean", "accuracy_change_std", "post_edit_margin_change_mean",
               "post_edit_margin_change_std", "downstream_divergence_change_mean", "downstream_divergence_change_std",
               "n_pairs", "n_components"]
    atp = (*_cols(["hook", "layer", "component", "position", "atp_mean", "atp_se", "atp_lo", "atp_hi", "atp_abs_mean",
                   "n_pairs", "head", "head_dim", "rank", "rank_in_hook"]),
           *(Column(c, "", "controls" if needs.get(c) else "") for c in C.ATP_STABILITY_COLUMNS))
    sub = f"{CAUSAL}/"
    return (
        RunFile(sub + C.ABLATION, "per condition x category", _cols(A.ABLATION_COLUMNS)),
        RunFile(sub + C.ABLATION_SUMMARY, "per selection x k x mode x where x category over seeds",
                _cols(["selection", "k", "mode", "where", "category", *summary])),
        RunFile(sub + C.ABLATION_PAIRS, "per condition x pair",
                _cols(["selection", "k", "seed", "mode", "where", "pair_id", "category", *pair_metrics])),
        RunFile(sub + C.ABLATION_VS_RANDOM, "per selection x k x mode x where x category x metric",
                _cols(A.VS_RANDOM_COLUMNS)),
        RunFile(sub + C.SELECTIONS, "the ablated components per selection, k and seed",
                (*_cols(["selection", "k", "seed", "hook", "hook_name", "layer", "component", "rank_value",
                         "normalized", "act_mean", "spread"]), Column("head", "", "heads"), Column("mean_used"))),
        RunFile(sub + C.PATCHING, "activation patching per pair and category", _cols(P.COLUMNS)),
        RunFile(sub + C.ATP, "attribution patching per hook x layer x component x position", atp),
        RunFile(sub + C.ATP_VALIDATION, "the components patched for real",
                _cols(["hook", "layer", "component", "position", "atp_mean", "chosen", "patch_mean", "patch_se"])),
        RunFile(sub + R.FIGURES + "/", "figures of the causal checks"),
        RunFile(sub + R.MANIFEST, "config, counts, method, timings, facts"),
    )


def entries() -> tuple[RunFile, ...]:
    """Every entry of the contract: the run dir's and ``causal/``'s (the more specific first)."""
    return causal_files() + run_files()


def entry(rel: str) -> RunFile | None:
    """The entry a path relative to the run dir belongs to (a file, or inside a registered folder)."""
    for e in entries():
        if e.matches(rel):
            return e
    return None


def table_columns(name: str, **conditions: bool) -> list[str]:
    """The columns, in file order, of the table ``name`` (relative to the run dir) in a run where
    ``conditions`` (keys of ``CONDITIONS``) hold; prefixed families (``meta_*``) not included."""
    e = next((e for e in entries() if e.name == name), None)
    if e is None or e.columns is None:
        raise KeyError(f"{name} is not a table of the run-dir contract")
    unknown = set(conditions) - set(CONDITIONS)
    if unknown:
        raise KeyError(f"unknown conditions {sorted(unknown)}; known: {', '.join(CONDITIONS)}")
    return [c.name for c in e.columns if not c.when or conditions.get(c.when, False)]


# ------------------------------------------------------------------ README


README = Path(__file__).resolve().parents[2] / "README.md"
BEGIN = "<!-- run-dir table: generated by `python -m interp.run.contract --write` from interp/run/contract.py -->"
END = "<!-- end of the generated run-dir table -->"


def _code(name: str, note: str = "") -> str:
    return f"`{name}`" + (f" ({note})" if note else "")


def _describe(e: RunFile) -> str:
    text = e.content
    if e.keys:
        text = ", ".join(_code(k, n) for k, n in e.keys) + (f"; {text}" if text else "")
    if e.summary:
        text = e.summary
    elif e.columns is not None:
        groups: dict[str, list[Column]] = {}
        for c in e.columns:
            groups.setdefault(c.when, []).append(c)
        parts = [", ".join(_code(c.name, c.note) for c in groups.pop("", []))]
        parts += [f"{CONDITIONS[w]} also " + ", ".join(_code(c.name, c.note) for c in cs) for w, cs in groups.items()]
        parts += [f"`{p}*` columns: {doc}" for p, doc in e.prefixes]
        text += " " + "; ".join(parts)
    if e.after:
        text += f"; {e.after}"
    return text.replace("|", "\\|")


def readme_table() -> str:
    """README's table of the run dir, as markdown (between its markers)."""
    rows = ["| file | content |", "| --- | --- |"]
    rows += [f"| `{e.name}` | {_describe(e)} |" for e in run_files()]
    return "\n".join(rows)


def readme_block() -> str:
    return f"{BEGIN}\n{readme_table()}\n{END}"


def readme_section(text: str) -> str:
    """The generated block as it stands in README's ``text`` (markers included)."""
    try:
        start = text.index(BEGIN)
        end = text.index(END, start) + len(END)
    except ValueError:
        raise ValueError(f"README.md lacks the markers of the run-dir table ({BEGIN} ... {END})") from None
    return text[start:end]


def write_readme(path: Path = README) -> bool:
    """Rewrite the generated table in README ``path``; True if it changed."""
    text = path.read_text()
    new = text.replace(readme_section(text), readme_block())
    if new != text:
        path.write_text(new)
    return new != text


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m interp.run.contract",
        description="Print README's run-dir table from the contract in interp/run/contract.py.")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the table in README.md between its markers")
    mode.add_argument("--check", action="store_true", help="exit 1 if README.md's table differs")
    ap.add_argument("--readme", type=Path, default=README, help="the README [the repository's README.md]")
    a = ap.parse_args(argv)
    if a.write:
        print(f"{a.readme}: " + ("table rewritten" if write_readme(a.readme) else "up to date"))
    elif a.check:
        if readme_section(a.readme.read_text()) != readme_block():
            print(f"{a.readme}: the run-dir table differs from interp/run/contract.py; "
                  "run python -m interp.run.contract --write", file=sys.stderr)
            raise SystemExit(1)
    else:
        print(readme_table())


if __name__ == "__main__":
    main()
