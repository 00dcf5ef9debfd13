"""Attribution patching (AtP) for every hooked component, on the metric ``post_edit_margin``.

A one-token edit makes sentences ``a`` (correct) and ``b`` (wrong) that share every token but the
edited one. No intervention at or after the edit can move the edited token's own log-probability
(it depends on the prefix only), so the metric here is what can move:

    post_edit_margin = sum_{t = edit+1 .. last} log p_a(token_t) - log p_b(token_t)

(the tokens after the edit are the same in both sentences; position ``t - 1`` predicts token ``t``).

AtP (Nanda 2023; Kramar et al. 2024) estimates the effect of patching component ``c`` from ``a``'s
run (the source) into ``b``'s run (the base) at a set of positions by the first-order term

    atp(c) = sum_{positions} (act_a[c] - act_b[c]) * dM / dact_b[c],

with ``M`` = ``b``'s post-edit log-probability sum. Positive = patching raises ``b``'s post-edit
log-probabilities (moves ``b``'s run towards ``a``'s when ``a`` scores higher); the change of
``post_edit_margin`` is ``-atp``. Every hooked site is estimated from one forward pass over the
``a`` and ``b`` rows of a batch and one backward pass (``torch.autograd.grad`` over the captured
activations; rows are independent, so the ``a`` rows receive zero gradient and are only read).

Position modes: ``edit`` (the edit position), ``after`` (summed over edit+1..last), ``all``
(edit..last), ``last`` (the last real token). Positions before the edit carry the same activations
in both runs, so their AtP and their real patching effect are zero.

Components follow the statistics tables: dimensions (``resid_pre``, ``resid_post``, ``attn_out``,
``mlp_out``), head x head-dimension (``z``, component = head * d_head + dim) plus one unit per head
(``z_head``, the head's dimensions patched together) and neurons (``mlp_post``). ``resid_mid``
cannot be replaced in the plain tree and is refused.

``validate`` measures the real patching effect for a sample of components and reports its
correlation with AtP.
"""

from __future__ import annotations

import logging
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ..engine import Batch, Unembedding, make_batches
from ..hooks import HOOK_POINTS, HookSite, head_summary, resolve

log = logging.getLogger(__name__)

MODES = ("edit", "after", "all", "last")
SiteKey = tuple[str, int, str]  # (hook, layer, position mode)


# ---------------------------------------------------------------- the metric

def one_token(batch: Batch) -> None:
    if batch.b_index is not None or not torch.equal(batch.edit_end, batch.edit):
        raise ValueError("post_edit_margin and AtP need one-token edits (a and b of the same length)")


def after_slots(edit: Int[Tensor, "R"], last: Int[Tensor, "R"], n: int) -> Bool[Tensor, "R n"]:
    """Of ``n`` positions, those whose prediction is a token after the edit: edit .. last - 1."""
    t = torch.arange(n, device=edit.device)[None, :]
    return (t >= edit[:, None]) & (t < last[:, None])


def post_edit_logprobs(logits: Float[Tensor, "R T vocab"], tokens: Int[Tensor, "R T"],
                       edit: Int[Tensor, "R"], last: Int[Tensor, "R"]) -> Float[Tensor, "R"]:
    """Per row: sum of log p(token_t) for t = edit+1..last (predicted from positions edit..last-1), float64."""
    slots = after_slots(edit, last, tokens.shape[1] - 1)
    lg = logits[:, :-1].float()
    lp = lg.gather(-1, tokens[:, 1:, None])[..., 0] - lg.logsumexp(-1)
    return (lp.double() * slots).sum(-1)


def post_edit_margin(logits: Float[Tensor, "VB T vocab"], batch: Batch) -> Float[Tensor, "B"]:
    """post_edit_margin of each pair of ``batch`` from the logits of its rows (a rows, then b rows)."""
    one_token(batch)
    B = batch.size
    lp = post_edit_logprobs(logits[:2 * B], batch.tokens[:2 * B], batch.edit.repeat(2), batch.last.repeat(2))
    return lp[:B] - lp[B:]


def mode_mask(batch: Batch, mode: str) -> Bool[Tensor, "B T"]:
    """The positions (in a's = b's coordinates) of a position mode."""
    t = batch.positions()
    e, last = batch.edit[:, None], batch.last[:, None]
    masks = {"edit": t == e, "after": (t > e) & (t <= last), "all": (t >= e) & (t <= last), "last": t == last}
    if mode not in masks:
        raise ValueError(f"position mode {mode!r} is not one of {MODES}")
    return masks[mode]


def _model(lm):
    model = lm.plain if getattr(lm, "plain", None) is not None else lm.bridge
    if getattr(model, "compiled", False):
        model.uncompile()  # hooks inside the compiled attention / MLP would not run
    return model


def _run(model, tokens: Tensor, mask: Tensor, edit: Tensor, last: Tensor,
         fwd_hooks: Sequence = ()) -> Float[Tensor, "R"]:
    """One forward pass with hooks; each row's post-edit log-prob sum (float32, differentiable when
    grad is enabled). Only the predictions edit..last-1 are unembedded."""
    R, T = tokens.shape
    flat = after_slots(edit, last, T).flatten().nonzero()[:, 0]
    kept: dict[str, Tensor] = {}

    def keep_final(x, hook=None):
        kept["h"] = x.flatten(0, 1).index_select(0, flat)

    with model.hooks(fwd_hooks=list(fwd_hooks) + [("ln_final.hook_out", keep_final)]):
        model(tokens, attention_mask=mask.long(), return_type=None, logits_to_keep=1)
    lg = Unembedding(model.original_model)(kept["h"]).float()
    target = tokens.flatten().index_select(0, flat + 1)
    lp = lg.gather(-1, target[:, None])[:, 0] - lg.logsumexp(-1)
    return torch.zeros(R, dtype=lp.dtype, device=lp.device).index_add(0, flat // T, lp)


def _sites(sites, n_layers: int) -> list[HookSite]:
    out = []
    for s in sites:
        s = s if isinstance(s, HookSite) else resolve([s[0]], n_layers, [int(s[1])])[0]
        if not HOOK_POINTS[s.point].settable:
            raise ValueError(f"{s.point} cannot be patched in the plain module tree")
        out.append(s)
    return out


# ---------------------------------------------------------------- attribution

def attribution(lm, batch: Batch, sites: Iterable, modes: Sequence[str] = ("edit", "after"),
                model=None) -> dict[SiteKey, Float[Tensor, "B C"]]:
    """AtP of every component of every site for each pair of ``batch`` (a = source, b = base).

    ``sites``: ``HookSite``s (``interp.hooks.resolve``) or (point, layer) pairs. Returns
    ``{(hook, layer, mode): [B, C]}`` (float32, on the model's device), with ``z_head`` entries (one
    unit per head) beside every ``z`` site. One forward and one backward pass.
    """
    one_token(batch)
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ValueError(f"position modes {bad} not in {MODES}")
    model = model or _model(lm)
    sites = _sites(sites, lm.info["n_layers"])
    B = batch.size
    rows = slice(0, 2 * B)
    store: dict[str, Tensor] = {}

    def make(name):
        def hook(act, hook=None):
            if not act.requires_grad:  # weights frozen: the activation becomes a leaf to differentiate
                act = act.detach().requires_grad_(True)
            store[name] = act
            return act  # returned, so the tensor the rest of the pass uses is the one captured
        return hook

    with torch.enable_grad():
        lp = _run(model, batch.tokens[rows], batch.mask[rows], batch.edit.repeat(2), batch.last.repeat(2),
                  [(s.name, make(s.name)) for s in sites])
        names = [s.name for s in sites]
        grads = torch.autograd.grad(lp[B:].sum(), [store[n] for n in names], allow_unused=True)
    masks = {m: mode_mask(batch, m).to(torch.float32) for m in modes}
    out: dict[SiteKey, Tensor] = {}
    for s, g in zip(sites, grads):
        act = store[s.name].detach()
        g = torch.zeros_like(act) if g is None else g
        prod = ((act[:B] - act[B:2 * B]).float() * g[B:2 * B].float())  # [B, T, ...]
        for m, w in masks.items():
            per = torch.einsum("bt...,bt->b...", prod, w)
            if HOOK_POINTS[s.point].heads:
                out[(head_summary(s.point), s.layer, m)] = per.sum(-1)
                per = per.flatten(-2)
            out[(s.point, s.layer, m)] = per
    return out


def _tokenized(kept_pairs) -> list:
    return [p[1] if isinstance(p, tuple) else p for p in kept_pairs]


def batches_of(lm, kept_pairs, batch_size: int) -> tuple[list[Batch], int]:
    """Batches of the one-token pairs of ``kept_pairs`` ((Pair, TokenizedPair) or TokenizedPair) and
    how many span pairs were left out. ``batch.index`` indexes the one-token pairs."""
    tps = _tokenized(kept_pairs)
    ones = [tp for tp in tps if tp.one_token]
    device = getattr(lm, "device", "cpu")
    return make_batches(ones, [0] * len(ones), lm.bos_token_id, lm.pad_token_id, batch_size, device), len(tps) - len(ones)


def atp_table(lm, kept_pairs, hook_points: Sequence[str], batch_size: int = 8,
              modes: Sequence[str] = ("edit", "after"), layers: Sequence[int] | None = None) -> pd.DataFrame:
    """One row per hook x layer x component x position mode: ``atp_mean`` (over pairs), ``atp_se``,
    ``atp_lo``/``atp_hi`` (95% t interval over pairs), ``atp_abs_mean``, ``n_pairs``, ``rank`` (by
    |atp_mean|, per position mode over the table) and ``rank_in_hook`` (per hook point and mode).
    ``attrs``: ``n_pairs``, ``skipped_span_pairs``, ``metric``."""
    from scipy import stats as st

    model = _model(lm)
    sites = resolve(list(hook_points), lm.info["n_layers"], None if layers is None else list(layers),
                    lm.hook_points)
    batches, skipped = batches_of(lm, kept_pairs, batch_size)
    acc: dict[SiteKey, list[Tensor]] = {}
    n = 0
    for batch in batches:
        for key, v in attribution(lm, batch, sites, modes, model=model).items():
            v = v.double()
            add = [v.sum(0), (v * v).sum(0), v.abs().sum(0)]
            if key in acc:
                for a, x in zip(acc[key], add):
                    a += x
            else:
                acc[key] = add
        n += batch.size
    frames = []
    for (hook, layer, mode), (s1, s2, sa) in acc.items():
        s1, s2, sa = (x.cpu().numpy() for x in (s1, s2, sa))
        mean = s1 / n
        var = np.maximum(s2 - n * mean ** 2, 0) / (n - 1) if n > 1 else np.full_like(mean, np.nan)
        se = np.sqrt(var / n)
        half = st.t.ppf(0.975, n - 1) * se if n > 1 else np.full_like(mean, np.nan)
        C = len(mean)
        df = pd.DataFrame({"hook": hook, "layer": layer, "component": np.arange(C), "position": mode,
                           "atp_mean": mean, "atp_se": se, "atp_lo": mean - half, "atp_hi": mean + half,
                           "atp_abs_mean": sa / n, "n_pairs": n})
        if hook in HOOK_POINTS and HOOK_POINTS[hook].heads:
            d_head = lm.info["d_head"]
            df["head"], df["head_dim"] = df["component"] // d_head, df["component"] % d_head
        elif hook not in HOOK_POINTS:
            df["head"] = df["component"]
        frames.append(df)
    out = pd.concat(frames, ignore_index=True)
    for col in ("head", "head_dim"):
        out[col] = (out[col] if col in out else pd.Series(pd.NA, index=out.index)).astype("Int64")
    bad = ~np.isfinite(out["atp_mean"].to_numpy())
    out.loc[bad, ["atp_mean", "atp_se", "atp_lo", "atp_hi", "atp_abs_mean"]] = np.nan
    mag = out["atp_mean"].abs()
    # ranks among the finite scores; a non-finite one has none (<NA>)
    out["rank"] = mag.groupby(out["position"]).rank(ascending=False, method="first").astype("Int64")
    out["rank_in_hook"] = mag.groupby([out["hook"], out["position"]]).rank(ascending=False, method="first").astype("Int64")
    if not bad.any():
        out["rank"], out["rank_in_hook"] = out["rank"].astype(np.int64), out["rank_in_hook"].astype(np.int64)
    else:
        log.warning("AtP: %d of %d component scores are not finite (the backward pass overflowed %s: the "
                    "gradients grow too fast through the layers); they are NaN and unranked",
                    int(bad.sum()), len(out), str(lm.dtype).replace("torch.", ""))
    out.attrs.update(n_pairs=n, skipped_span_pairs=skipped, metric="post_edit_margin", non_finite=int(bad.sum()),
                     sign="atp = estimated change of b's post-edit log-prob sum when patched from a")
    return out


# ---------------------------------------------------------------- real patching

def _point(hook: str) -> str:
    """The hook point a table's hook lives in (``z_head`` -> ``z``)."""
    if hook in HOOK_POINTS:
        return hook
    found = [p for p in HOOK_POINTS if head_summary(p) == hook]
    if not found:
        raise ValueError(f"unknown hook {hook!r}")
    return found[0]


def _indices(hook: str, component, d_head: int) -> tuple[str, Tensor | slice]:
    """The hook point a component lives in and its indices on the flattened last dimension(s)."""
    if component is None:
        return _point(hook), slice(None)
    comps = torch.as_tensor(component).reshape(-1)
    if hook not in HOOK_POINTS:  # a per-head unit: every dimension of those heads
        point = _point(hook)
        comps = (comps[:, None] * d_head + torch.arange(d_head)[None, :]).reshape(-1)
        return point, comps
    return hook, comps


def capture(lm, batch: Batch, names: Iterable[str], model=None) -> dict[str, Tensor]:
    """The a rows' activations at hook names (no gradient)."""
    model = model or _model(lm)
    B, store = batch.size, {}

    def make(name):
        def hook(act, hook=None):
            store[name] = act.detach().clone()
        return hook

    with torch.no_grad():
        _run(model, batch.tokens[:B], batch.mask[:B], batch.edit, batch.last, [(n, make(n)) for n in set(names)])
    return store


def base_logprobs(lm, batch: Batch, model=None) -> Float[Tensor, "B"]:
    """b's post-edit log-prob sum, unpatched."""
    model = model or _model(lm)
    B = batch.size
    with torch.no_grad():
        return _run(model, batch.tokens[B:2 * B], batch.mask[B:2 * B], batch.edit, batch.last).double()


def patch_effect(lm, batch: Batch, hook: str, layer: int, component=None, positions: str | Tensor = "after",
                 eps: float = 1.0, source: dict | None = None, base: Tensor | None = None,
                 model=None) -> Float[Tensor, "B"]:
    """Real patching: ``b``'s run with component(s) of one site set to ``act_b + eps * (act_a - act_b)``
    at ``positions`` (a mode name or a [B, T] mask); returns the change of b's post-edit log-prob
    sum per pair (float64). ``component``: an int, a list, or None (the whole site)."""
    one_token(batch)
    model = model or _model(lm)
    point, idx = _indices(hook, component, lm.info["d_head"])
    name = HOOK_POINTS[point].name(layer)
    source = source if source is not None and name in source else capture(lm, batch, [name], model)
    base = base_logprobs(lm, batch, model) if base is None else base
    pos = mode_mask(batch, positions) if isinstance(positions, str) else positions.to(batch.tokens.device)
    B = batch.size

    def hook_fn(act, hook=None):
        new = act.clone()
        v, s = new.flatten(2), source[name].to(act).flatten(2)  # v: a view of new
        cur = v[..., idx]
        upd = cur + eps * (s[..., idx] - cur)
        v[..., idx] = torch.where(pos[:, :, None], upd, cur)
        return new

    with torch.no_grad():
        patched = _run(model, batch.tokens[B:2 * B], batch.mask[B:2 * B], batch.edit, batch.last,
                       [(name, hook_fn)]).double()
    return patched - base


def validate(lm, kept_pairs, table: pd.DataFrame, n: int = 20, seed: int = 0, batch_size: int = 8) -> dict:
    """Real patching (a into b, at the row's position mode) for a sample of the table's rows: the
    ``n // 2`` top by |atp_mean| and the rest drawn at random (``seed``). Returns ``pearson`` and
    ``spearman`` correlations of the pair-mean real effect with ``atp_mean``, ``n_components``,
    ``n_pairs`` and ``components`` (hook, layer, component, position, atp_mean, patch_mean,
    patch_se, chosen)."""
    from scipy import stats as st

    table = table[table["atp_mean"].notna()]  # non-finite scores (an overflowed backward) are not validated
    top = table.loc[table["atp_mean"].abs().sort_values(ascending=False, kind="stable").index[:n // 2]]
    rest = table.drop(top.index)
    rng = np.random.default_rng(seed)
    pick = rest.iloc[np.sort(rng.choice(len(rest), size=min(n - len(top), len(rest)), replace=False))]
    chosen = pd.concat([top.assign(chosen="top"), pick.assign(chosen="random")])
    model = _model(lm)
    batches, _ = batches_of(lm, kept_pairs, batch_size)
    names = {HOOK_POINTS[_point(r.hook)].name(int(r.layer)) for r in chosen.itertuples()}
    effects = np.zeros((len(chosen), 0))
    for batch in batches:
        source, base = capture(lm, batch, names, model), base_logprobs(lm, batch, model)
        per = [patch_effect(lm, batch, r.hook, int(r.layer), int(r.component), r.position, source=source,
                            base=base, model=model).cpu().numpy() for r in chosen.itertuples()]
        effects = np.concatenate([effects, np.stack(per)], axis=1)
    chosen = chosen[["hook", "layer", "component", "position", "atp_mean", "chosen"]].reset_index(drop=True)
    chosen["patch_mean"] = effects.mean(1)
    chosen["patch_se"] = effects.std(1, ddof=1) / np.sqrt(effects.shape[1]) if effects.shape[1] > 1 else np.nan
    ok = len(chosen) > 2 and chosen["patch_mean"].std() > 0 and chosen["atp_mean"].std() > 0
    return {"pearson": float(st.pearsonr(chosen["atp_mean"], chosen["patch_mean"])[0]) if ok else float("nan"),
            "spearman": float(st.spearmanr(chosen["atp_mean"], chosen["patch_mean"])[0]) if ok else float("nan"),
            "n_components": len(chosen), "n_pairs": int(effects.shape[1]), "components": chosen}
