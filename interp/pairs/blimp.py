"""BLiMP paradigms as minimal pairs, and the per-paradigm / per-phenomenon report of a run.

``pairs=blimp`` reads a folder of BLiMP paradigm files ``<UID>.jsonl`` (``pairs.path``; by default
``../shared/data/blimp`` beside the repository). ``pairs.paradigms=[UID, ...]`` selects paradigms
(null = every file in the folder). Each pair gets ``category = UID``, ``type = grammar`` (the good
sentence is ``a``), ``pair_id = <UID>-<pairID>``, and keeps BLiMP's other scalar fields (``field``,
``linguistics_term``, ``pairID``, ...) in ``Pair.meta``. ``pairs.limit=N`` keeps N pairs per paradigm.

Lines the reader cannot use (the BLiMP release has a few pairs whose two sentences are the same
text) stay ``Problem``s, now tagged with their paradigm and pair id so the report can count them.

``blimp_report`` turns a run's kept pairs and rejected rows into two tables, per paradigm and per
phenomenon (``linguistics_term``), with our error-detection accuracy (share of kept pairs with
log P(good) > log P(bad), BLiMP's whole-sentence method) next to the published accuracies of
``models_summary.jsonl``. Our accuracy is over the one-token-edit subset the tokenizer accepts,
not all 1,000 pairs of a paradigm, so the comparison is indicative only.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from ..config import ConfigError
from . import PairSet
from .files import read_pair_file

SUMMARY_FILE = "models_summary.jsonl"
PARADIGMS_TABLE = "blimp_paradigms"  # written as <name>.parquet in the run dir
PHENOMENA_TABLE = "blimp_phenomena"
PUBLISHED_MODELS = ("gpt2", "lstm", "txl", "ngram")
HUMAN_OVERALL = 0.886  # Warstadt et al. (2020), human agreement over all of BLiMP (README.md of the data)
ACCURACY_SCOPE = ("accuracy is over the kept one-token-edit pairs only (n_kept of n_total); the published "
                  "model accuracies are over all 1,000 pairs of each paradigm, so the comparison is indicative only")
PUBLISHED_SOURCES = {
    "models_summary": "the phenomenon's (or overall) row of models_summary.jsonl: a mean over all BLiMP "
                      "paradigms of that phenomenon, including paradigms not in this run",
    "mean_of_paradigms": "no such row in models_summary.jsonl: the mean over the phenomenon's paradigm rows there",
    "missing": "no published numbers (models_summary.jsonl not found or has no row)",
}


def default_blimp_dir() -> Path:
    """``../shared/data/blimp`` relative to the repository root."""
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "blimp"


def blimp_dir(pcfg=None) -> Path:
    """The folder of paradigm files: ``pairs.path`` if set, else the default; an error if absent."""
    given = pcfg.get("path") if pcfg is not None else None
    folder = Path(given) if given else default_blimp_dir()
    if not folder.is_dir():
        how = ("pairs.path points there" if given else "it is the default (../shared/data/blimp beside the "
               "repository)")
        raise FileNotFoundError(
            f"BLiMP folder not found: {folder} ({how}); set pairs.path=DIR to a folder of BLiMP "
            "paradigm files <UID>.jsonl")
    return folder


def available_paradigms(folder: str | Path) -> list[str]:
    """Paradigm UIDs of a folder: the stems of its ``*.jsonl`` files but ``models_summary.jsonl``."""
    return sorted(p.stem for p in Path(folder).glob("*.jsonl") if p.name != SUMMARY_FILE)


def select_paradigms(folder: Path, paradigms) -> list[str]:
    known = available_paradigms(folder)
    if not known:
        raise FileNotFoundError(f"BLiMP folder {folder} holds no paradigm files <UID>.jsonl; "
                                "set pairs.path=DIR to a folder that does")
    if not paradigms:
        return known
    wanted = [str(p) for p in paradigms]
    unknown = [p for p in wanted if p not in known]
    if unknown:
        raise ConfigError(f"pairs.paradigms: unknown BLiMP paradigm(s) {unknown}; available in {folder}: "
                         + ", ".join(known))
    return list(dict.fromkeys(wanted))  # order kept, duplicates dropped


def _pair_id_of_line(path: Path, line: int | None) -> str | None:
    if line is None:
        return None
    try:
        rec = json.loads(path.read_bytes().splitlines()[line - 1].decode("utf-8"))
        return str(rec["pairID"]) if isinstance(rec, dict) and "pairID" in rec else None
    except (IndexError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def read_blimp(pcfg) -> PairSet:
    """The pairs of the selected paradigms (before ``select``: types, categories, limit)."""
    folder = blimp_dir(pcfg)
    strict = bool(pcfg.get("strict", False))
    ps = PairSet([])
    for uid in select_paradigms(folder, pcfg.get("paradigms")):
        path = folder / f"{uid}.jsonl"
        pairs, problems = read_pair_file(path, strict=strict, default_category=uid)
        for p in pairs:
            p.category, p.type = uid, "grammar"
            if "pairID" in p.meta:
                p.pair_id = f"{uid}-{p.meta['pairID']}"
        for pr in problems:
            pr.category = uid
            pid = _pair_id_of_line(path, pr.line)
            pr.pair_id = f"{uid}-{pid}" if pid is not None else f"{uid}-line{pr.line}"
        ps.pairs += pairs
        ps.problems += problems
    return ps


# ---------------------------------------------------------------------------------------- report

def read_models_summary(path: str | Path | None) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """``models_summary.jsonl`` -> (per paradigm, per phenomenon, overall).

    Paradigm rows have a UID; phenomenon rows have ``UID == "overall"`` and the phenomenon in
    ``linguistics_term``; the overall row has ``overall`` in both.
    """
    cols = ["linguistics_term", *PUBLISHED_MODELS]
    empty = (pd.DataFrame(columns=["UID", *cols]), pd.DataFrame(columns=cols), {})
    if path is None or not Path(path).is_file():
        return empty
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    df = pd.DataFrame(rows)
    for m in PUBLISHED_MODELS:
        if m not in df:
            df[m] = float("nan")
    is_agg = df["UID"].astype(str) == "overall"
    paradigms = df.loc[~is_agg, ["UID", *cols]].reset_index(drop=True)
    agg = df.loc[is_agg, cols]
    overall_rows = agg[agg["linguistics_term"] == "overall"]
    overall = {m: float(overall_rows[m].iloc[0]) for m in PUBLISHED_MODELS} if len(overall_rows) else {}
    phenomena = agg[agg["linguistics_term"] != "overall"].reset_index(drop=True)
    return paradigms, phenomena, overall


def paradigm_info(folder: str | Path | None, uids) -> dict[str, dict]:
    """UID -> {field, linguistics_term} from the first line of each paradigm file (if readable)."""
    out = {}
    for uid in uids:
        path = Path(folder) / f"{uid}.jsonl" if folder is not None else None
        if path is None or not path.is_file():
            continue
        with path.open("rb") as fh:
            try:
                rec = json.loads(fh.readline().decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue
        if isinstance(rec, dict):
            out[uid] = {k: rec.get(k) for k in ("field", "linguistics_term")}
    return out


def _nan(x) -> float:
    return float("nan") if x is None else float(x)


def blimp_report(pairs_df: pd.DataFrame, rejected_rows: list[dict], models_summary_path=None,
                 info: dict[str, dict] | None = None) -> dict[str, pd.DataFrame]:
    """Per-paradigm and per-phenomenon counts and accuracies next to the published ones.

    ``pairs_df``: the run's kept pairs (``category`` = paradigm UID, ``margin`` = log P(good) -
    log P(bad), optional ``meta_field`` / ``meta_linguistics_term``). ``rejected_rows``: dicts with
    ``category`` (or ``source``, a paradigm file) and ``reason``, one per pair or line not used.
    ``info``: UID -> field / linguistics_term, where ``pairs_df`` has no meta columns (default: read
    from the paradigm files beside ``models_summary_path``).

    Returns ``{"blimp_paradigms": ..., "blimp_phenomena": ...}``; the phenomena table ends with an
    ``overall`` row that also holds the human accuracy of the paper.
    """
    pub_par, pub_phen, pub_overall = read_models_summary(models_summary_path)
    kept = pairs_df
    if "type" in kept:
        kept = kept[kept["type"] == "grammar"]
    k = kept.groupby("category").agg(n_kept=("margin", "size"), n_correct=("margin", lambda m: int((m > 0).sum())),
                                     mean_margin=("margin", "mean")) if len(kept) else \
        pd.DataFrame(columns=["n_kept", "n_correct", "mean_margin"])

    rej = pd.DataFrame([{"UID": r.get("category") or Path(str(r.get("source", ""))).stem,
                         "reason": r.get("reason") or "unknown"} for r in rejected_rows],
                       columns=["UID", "reason"])
    reasons = sorted(rej["reason"].unique())
    by_reason = rej.groupby(["UID", "reason"]).size().unstack(fill_value=0) if len(rej) else pd.DataFrame()

    uids = sorted(set(k.index) | set(rej["UID"]))
    info = dict(info or {})
    missing = [u for u in uids if u not in info]
    if missing and models_summary_path is not None:
        info.update(paradigm_info(Path(models_summary_path).parent, missing))
    meta_cols = {c: f"meta_{c}" for c in ("field", "linguistics_term")}
    if all(c in kept for c in meta_cols.values()) and len(kept):
        for uid, g in kept.groupby("category"):
            info[uid] = {c: g[mc].iloc[0] for c, mc in meta_cols.items()}
    pub = pub_par.set_index("UID") if len(pub_par) else pd.DataFrame(columns=pub_par.columns).set_index("UID")

    rows = []
    for uid in uids:
        n_kept = int(k.loc[uid, "n_kept"]) if uid in k.index else 0
        n_correct = int(k.loc[uid, "n_correct"]) if uid in k.index else 0
        rej_counts = {f"rejected_{r}": int(by_reason.loc[uid, r]) if uid in by_reason.index else 0 for r in reasons}
        n_rejected = sum(rej_counts.values())
        term = (info.get(uid) or {}).get("linguistics_term")
        if term is None and uid in pub.index:
            term = pub.loc[uid, "linguistics_term"]
        row = {"UID": uid, "linguistics_term": term, "field": (info.get(uid) or {}).get("field"),
               "n_total": n_kept + n_rejected, "n_kept": n_kept, "n_rejected": n_rejected,
               "share_kept": n_kept / (n_kept + n_rejected) if n_kept + n_rejected else float("nan"),
               **rej_counts, "n_correct": n_correct,
               "accuracy": n_correct / n_kept if n_kept else float("nan"),
               "mean_margin": float(k.loc[uid, "mean_margin"]) if uid in k.index else float("nan")}
        for m in PUBLISHED_MODELS:
            row[m] = float(pub.loc[uid, m]) if uid in pub.index else float("nan")
        row["accuracy_scope"] = "one-token-edit subset"
        rows.append(row)
    par = pd.DataFrame(rows, columns=["UID", "linguistics_term", "field", "n_total", "n_kept", "n_rejected",
                                      "share_kept", *[f"rejected_{r}" for r in reasons], "n_correct", "accuracy",
                                      "mean_margin", *PUBLISHED_MODELS, "accuracy_scope"])
    return {PARADIGMS_TABLE: par, PHENOMENA_TABLE: _phenomena(par, reasons, pub_par, pub_phen, pub_overall)}


def _phenomena(par: pd.DataFrame, reasons, pub_par, pub_phen, pub_overall) -> pd.DataFrame:
    count_cols = ["n_total", "n_kept", "n_rejected", *[f"rejected_{r}" for r in reasons], "n_correct"]

    def agg(g: pd.DataFrame, name: str, field) -> dict:
        row = {"linguistics_term": name, "field": field, "n_paradigms": len(g),
               "paradigms": ",".join(g["UID"]), **{c: int(g[c].sum()) for c in count_cols}}
        row["share_kept"] = row["n_kept"] / row["n_total"] if row["n_total"] else float("nan")
        row["accuracy"] = row["n_correct"] / row["n_kept"] if row["n_kept"] else float("nan")
        row["accuracy_macro"] = float(g["accuracy"].mean()) if g["accuracy"].notna().any() else float("nan")
        row["gpt2_run_paradigms"] = float(g["gpt2"].mean()) if g["gpt2"].notna().any() else float("nan")
        return row

    rows = []
    for term, g in par.groupby("linguistics_term", sort=True, dropna=False):
        fields = sorted({str(f) for f in g["field"].dropna()})
        row = agg(g, term, "/".join(fields) or None)
        hit = pub_phen[pub_phen["linguistics_term"] == term]
        if len(hit):
            row.update({m: _nan(hit[m].iloc[0]) for m in PUBLISHED_MODELS}, published_source="models_summary")
        else:
            sub = pub_par[pub_par["linguistics_term"] == term]
            row.update({m: float(sub[m].mean()) if len(sub) else float("nan") for m in PUBLISHED_MODELS},
                       published_source="mean_of_paradigms" if len(sub) else "missing")
        row["human"] = float("nan")
        rows.append(row)
    overall = agg(par, "overall", None)
    if pub_overall:
        overall.update({m: _nan(pub_overall.get(m)) for m in PUBLISHED_MODELS}, published_source="models_summary")
    else:
        overall.update({m: float(pub_par[m].mean()) if len(pub_par) else float("nan") for m in PUBLISHED_MODELS},
                       published_source="mean_of_paradigms" if len(pub_par) else "missing")
    overall["human"] = HUMAN_OVERALL
    rows.append(overall)
    out = pd.DataFrame(rows, columns=["linguistics_term", "field", "n_paradigms", "paradigms", *count_cols,
                                      "share_kept", "accuracy", "accuracy_macro", *PUBLISHED_MODELS,
                                      "published_source", "gpt2_run_paradigms", "human"])
    out["accuracy_scope"] = "one-token-edit subset"
    return out


def _pct(x) -> str:
    return "   n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:6.1%}"


def format_blimp_summary(tables: dict[str, pd.DataFrame]) -> list[str]:
    """Lines for the printed run summary: accuracy per paradigm and phenomenon next to GPT-2's."""
    par, phen = tables[PARADIGMS_TABLE], tables[PHENOMENA_TABLE]
    lines = ["BLiMP error detection (log P(good) > log P(bad)) over the one-token-edit pairs only; "
             "published GPT-2: all 1,000 pairs (indicative comparison):",
             f"  {'paradigm':<52} {'kept/total':>10}  {'accuracy':>8}  {'GPT-2':>6}"]
    for r in par.itertuples():
        lines.append(f"  {r.UID:<52} {f'{r.n_kept}/{r.n_total}':>10}  {_pct(r.accuracy):>8}  {_pct(r.gpt2):>6}")
    lines.append(f"  {'phenomenon':<52} {'kept/total':>10}  {'accuracy':>8}  {'GPT-2':>6}")
    for r in phen.itertuples():
        extra = f"  human {_pct(r.human).strip()}" if pd.notna(r.human) else ""
        src = "" if r.published_source == "models_summary" else f"  ({r.published_source})"
        lines.append(f"  {str(r.linguistics_term):<52} {f'{r.n_kept}/{r.n_total}':>10}  {_pct(r.accuracy):>8}  "
                     f"{_pct(r.gpt2):>6}{extra}{src}")
    return lines


def blimp_tables(pairs_df: pd.DataFrame, rejected_rows: list[dict], pcfg) -> tuple[dict[str, pd.DataFrame], dict]:
    """The run's BLiMP report: ``{"blimp_paradigms": ..., "blimp_phenomena": ...}`` (saved as
    parquet files of those names) and the manifest's ``notes["blimp"]`` entry."""
    folder = Path(pcfg.get("path")) if pcfg.get("path") else default_blimp_dir()
    summary_path = Path(pcfg.get("models_summary") or folder / SUMMARY_FILE)
    uids = set(pairs_df["category"]) | {r.get("category") for r in rejected_rows if r.get("category")}
    tables = blimp_report(pairs_df, rejected_rows, summary_path if summary_path.is_file() else None,
                          info=paradigm_info(folder, sorted(uids)))
    overall = tables[PHENOMENA_TABLE].iloc[-1]
    note = {
        "tables": [f"{name}.parquet" for name in tables],
        "accuracy_scope": ACCURACY_SCOPE,
        "published": str(summary_path) if summary_path.is_file() else "models_summary.jsonl not found",
        "published_source": PUBLISHED_SOURCES,
        "human_overall": f"{HUMAN_OVERALL} (Warstadt et al. 2020, from the data's README.md)",
        "limit": "pairs.limit samples readable pairs only; unreadable lines of a selected paradigm "
                 "(e.g. identical sentences) are counted in full",
        "overall": {"n_total": int(overall["n_total"]), "n_kept": int(overall["n_kept"]),
                    "accuracy": None if pd.isna(overall["accuracy"]) else float(overall["accuracy"]),
                    "gpt2_published": None if pd.isna(overall["gpt2"]) else float(overall["gpt2"])},
    }
    return tables, note
