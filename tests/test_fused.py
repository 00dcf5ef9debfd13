"""The fused statistics kernel (``interp.kernels.statistics``) against the PyTorch path it replaces.

On the CPU the kernel runs through Triton's interpreter (conftest sets ``TRITON_INTERPRET=1``);
tests/test_gpu.py repeats the comparison with the compiled kernel on a CUDA device. Batches are
built by hand so that every corner is present: edits at the first and at the last token (no
``after`` tokens), padding, several groups, controls, a "massive" component with a huge mean and
a tiny spread, and span-aligned pairs whose sentences differ in length.
"""

import numpy as np
import pytest
import torch

from interp import kernels
from interp.engine import Batch
from interp.hooks import resolve
from interp.stats import DiffStats

pytestmark = pytest.mark.skipif(not kernels.available("cpu") and not torch.cuda.is_available(),
                                reason="needs Triton (interpreter on the CPU, or CUDA)")


def _kernels():
    from interp.kernels import statistics  # imports Triton: only where the tests run

    return statistics


def make_batch(B: int, T: int, K: int, span: bool, device, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    last = torch.randint(2, T, (B,), generator=g)
    last[0] = T - 1  # one full-length row
    edit = torch.stack([torch.randint(1, int(x) + 1, (1,), generator=g)[0] for x in last])
    edit[1] = last[1]  # an edit at the last token: no "after" tokens
    edit[2] = 1  # an edit at the first sentence token
    V = 2 + K
    mask = torch.zeros(V * B, T, dtype=torch.bool)
    edit_end, b_index = None, None
    last_b = last.clone()
    if span:  # b's edit span is one token longer or shorter than a's (rows permitting)
        edit_end = torch.minimum(edit + (torch.arange(B) % 2), last)
        shift = torch.where(torch.arange(B) % 3 == 0, -1, 1)
        last_b = (last + shift).clamp(1, T - 1)
        shift = last_b - last
        end_b = (edit_end + shift).clamp(min=edit)
        t = torch.arange(T)[None, :]
        b_index = torch.where(t > edit_end[:, None], t + shift[:, None], torch.minimum(t, end_b[:, None])).clamp(0, T - 1)
    for v in range(V):
        lv = last_b if v == 1 else last
        mask[v * B:(v + 1) * B] = torch.arange(T)[None, :] <= lv[:, None]
    tokens = torch.zeros(V * B, T, dtype=torch.long)
    group = torch.arange(B) % 3
    to = lambda x: None if x is None else x.to(device)  # noqa: E731
    return Batch(torch.arange(B), tokens.to(device), mask.to(device), edit.to(device), last.to(device),
                 group.to(device), V, to(edit_end), to(b_index))


def activations(batch: Batch, C: int, shape_tail=None, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """Random activations with the structure a model gives: identical rows before the edit."""
    g = torch.Generator().manual_seed(seed)
    B, V, T = batch.size, batch.n_variants, batch.seq_len
    x = torch.randn(V * B, T, C, generator=g)
    x[:, :, 3] = 1000.0 + 1e-3 * x[:, :, 3]  # massive: huge mean, tiny spread
    edit = batch.edit.cpu()
    for v in range(1, V):
        for i in range(B):
            x[v * B + i, :edit[i]] = x[i, :edit[i]]  # the shared prefix
    x = x * batch.mask.cpu()[..., None]
    if shape_tail is not None:
        x = x.reshape(V * B, T, *shape_tail)
    return x.to(dtype).to(batch.tokens.device)


def consume(stats: DiffStats, batch: Batch, acts: dict[str, torch.Tensor]) -> DiffStats:
    for name, fn in stats.hooks(batch):
        fn(acts[name])
    stats.consume()
    return stats


def run_both(batches, sites, C, device, dtype=torch.float32, chunk=2, **kw) -> tuple[DiffStats, DiffStats]:
    ref = DiffStats(sites, ["g0", "g1", "g2"], device=device, fused=False, chunk=2, **kw)
    new = DiffStats(sites, ["g0", "g1", "g2"], device=device, fused=True, chunk=chunk, **kw)
    for j, b in enumerate(batches):
        acts = {s.name: activations(b, C, seed=10 * j + i, dtype=dtype) for i, s in enumerate(sites)}
        ref = consume(ref, b, acts)
        new = consume(new, b, acts)
    return ref, new


def assert_same_state(ref: DiffStats, new: DiffStats, rtol=1e-5, atol=1e-4):
    """Equal moments. M2 = s2 - s1^2/n cancels where the values sit far from the shift (the per-pair
    ratio |a-b| / |a-c| is heavy-tailed: a control edit that barely moves a component gives a huge
    ratio), so M2 may differ by float64 rounding of s2, which the tolerance allows for."""
    for kind in ("diff", "spread", "profile"):
        mine, theirs = getattr(ref, kind), getattr(new, kind)
        assert mine.keys() == theirs.keys(), kind
        for point in mine:
            for f in ("n", "mean"):
                torch.testing.assert_close(getattr(theirs[point], f), getattr(mine[point], f), rtol=rtol, atol=atol,
                                           msg=lambda m: f"{kind}/{point}/{f}: {m}")
            a, b = theirs[point].m2, mine[point].m2
            s2 = torch.maximum(theirs[point].s2.abs(), mine[point].s2.abs())
            bad = (a - b).abs() > atol + rtol * b.abs() + 1e-12 * s2
            assert not bad.any(), f"{kind}/{point}/m2: {int(bad.sum())} elements differ, e.g. {a[bad][:3]} vs {b[bad][:3]}"


def assert_same_histogram(new: torch.Tensor, ref: torch.Tensor):
    """Equal counts of log10 |activation| per bin. On CUDA exactly (the kernel takes CUDA's log10f, as
    ``torch.log10`` there); under the CPU interpreter, whose logarithm may round a value on a bin
    edge the other way than the CPU's ``torch.log10``, the same totals with at most two values moved
    across any edge."""
    if new.device.type == "cuda":
        assert torch.equal(new, ref)
        return
    assert torch.equal(new.sum(-1), ref.sum(-1))
    assert float((new.cumsum(-1) - ref.cumsum(-1)).abs().max()) <= 2


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("K", [0, 2])
@pytest.mark.parametrize("span", [False, True])
def test_fused_kernel_gives_the_pytorch_path_statistics(K, span):
    dev = device()
    sites = resolve(["resid_post", "mlp_out"], 3)
    batches = [make_batch(7, 9, K, span, dev, seed=1), make_batch(5, 6, K, span, dev, seed=2)]
    ref, new = run_both(batches, sites, 40, dev, n_controls=K, max_offset=4)
    assert_same_state(ref, new)
    # the edits placed at the last token have no "after" value: fewer pairs there than at the edit
    n = ref.diff["resid_post"].n
    assert (n[..., 1, 2, :] < n[..., 1, 0, :]).any()  # abs channel: after vs edit
    # the massive component's spread survives the shift: std ~ 1e-3, not swamped by the 1e3 mean
    sp = new.spread["resid_post"]
    assert 5e-4 < float(sp.std[0, 3]) < 2e-3


@pytest.mark.parametrize("span", [False, True])
def test_fused_kernel_keeps_the_same_per_pair_values_and_magnitudes(span):
    """The clustered statistics' inputs (per-pair |a-b| and control mean) and the massive flag's
    (max |activation| with BOS, log-magnitude histogram) are the same on both paths."""
    dev = device()
    sites = resolve(["resid_post", "mlp_out"], 3)
    batches = [make_batch(7, 9, 2, span, dev, seed=1), make_batch(5, 6, 2, span, dev, seed=2)]
    batches[1].index = torch.arange(7, 12)  # run-wide pair indices: the second batch's pairs come after
    keep = {"resid_post": ["edit", "last", "after"], "mlp_out": ["edit"]}
    ref, new = run_both(batches, sites, 40, dev, n_controls=2, max_offset=4, keep_values=keep)
    for point in keep:
        (ir, vr), (inn, vn) = ref.pair_values(point), new.pair_values(point)
        np.testing.assert_array_equal(ir, inn)
        assert vr.shape == (12, 3, 2, len(keep[point]), 40)
        np.testing.assert_allclose(vn, vr, rtol=1e-5, atol=1e-5)
        assert torch.equal(new.absmax[point], ref.absmax[point])  # a maximum: no rounding to differ in
        assert_same_histogram(new.abshist[point], ref.abshist[point])
    assert np.isnan(ref.pair_values("resid_post")[1][..., 2, :]).any()  # edits at the last token: no "after"


def test_a_chunk_of_more_layers_than_one_launch_takes_gives_the_same_statistics():
    """A GPU run reduces 16 layers a chunk (``analysis.chunk_layers=auto``); the kernels take at most
    eight sites a launch, so a chunk of 11 layers is two launches of the pair kernel and of the
    histogram, writing into one chunk's buffers at their offsets."""
    dev = device()
    sites = resolve(["resid_post"], 11)
    batches = [make_batch(9, 7, 1, False, dev, seed=6)]
    batches[0].index = torch.arange(0, 72, 8)  # every pair is one the median takes
    ref, new = run_both(batches, sites, 24, dev, chunk=16, n_controls=1, max_offset=3)
    assert_same_state(ref, new)
    assert torch.equal(new.absmax["resid_post"], ref.absmax["resid_post"])
    assert_same_histogram(new.abshist["resid_post"], ref.abshist["resid_post"])
    assert float(new.abshist["resid_post"][10].sum()) > 0  # the second launch's layers were counted


def test_fused_statistics_resumed_from_a_saved_state_equal_one_pass():
    """A checkpoint's state (counts saved compact, broadcast back on load) taken up by the kernels
    in place: the second batch folded into the loaded state gives the one-pass state bit for bit."""
    dev = device()
    sites = resolve(["resid_post"], 3)
    batches = [make_batch(7, 9, 2, False, dev, seed=1), make_batch(5, 6, 2, False, dev, seed=2)]
    acts = [{s.name: activations(b, 40, seed=10 * j + i) for i, s in enumerate(sites)} for j, b in enumerate(batches)]
    new = lambda: DiffStats(sites, ["g0", "g1", "g2"], device=dev, fused=True, chunk=2, n_controls=2,  # noqa: E731
                            max_offset=4)
    one = new()
    for b, a in zip(batches, acts):
        consume(one, b, a)
    first = consume(new(), batches[0], acts[0])
    resumed = new()
    resumed.load_state_dict({k: v.clone() for k, v in first.state_dict().items()})
    consume(resumed, batches[1], acts[1])
    for k, v in one.state_dict().items():
        assert torch.equal(torch.nan_to_num(resumed.state_dict()[k], nan=-1.0), torch.nan_to_num(v, nan=-1.0)), k


def test_fused_kernel_keeps_the_configured_position_modes_and_tables():
    dev = device()
    sites = resolve(["resid_post"], 2)
    batches = [make_batch(6, 8, 3, False, dev, seed=3)]
    ref, new = run_both(batches, sites, 24, dev, n_controls=3, positions=["last", "edit"])
    assert_same_state(ref, new)
    a, b = ref.table(), new.table()
    assert list(a.columns) == list(b.columns) and len(a) == len(b)
    cols = ["mean_abs_diff", "normalized", "ratio", "ratio_pair_mean", "p_value", "q_value"]
    torch.testing.assert_close(torch.tensor(b[cols].to_numpy()), torch.tensor(a[cols].to_numpy()),
                               rtol=1e-4, atol=1e-6, equal_nan=True)


def test_fused_kernel_reads_bf16_activations_and_stages_the_same_details():
    dev = device()
    sites = resolve(["attn_out"], 2)
    batches = [make_batch(6, 7, 1, True, dev, seed=4)]
    ref, new = run_both(batches, sites, 32, dev, dtype=torch.bfloat16, n_controls=1, detail_pairs=4)
    assert_same_state(ref, new, rtol=1e-4, atol=1e-4)
    assert len(ref.details) == len(new.details) == 1
    for key, val in ref.details[0].items():
        if isinstance(val, torch.Tensor):
            torch.testing.assert_close(new.details[0][key], val, rtol=1e-4, atol=1e-4, msg=lambda m: f"{key}: {m}")


def test_per_head_scores_stay_on_the_pytorch_path_and_agree():
    dev = device()
    sites = resolve(["z"], 2)
    b = make_batch(5, 6, 0, False, dev, seed=5)
    ref = DiffStats(sites, ["g0", "g1", "g2"], device=dev, fused=False)
    new = DiffStats(sites, ["g0", "g1", "g2"], device=dev, fused=True)
    acts = {s.name: activations(b, 32, shape_tail=(4, 8), seed=i) for i, s in enumerate(sites)}
    ref, new = consume(ref, b, acts), consume(new, b, acts)
    assert_same_state(ref, new)
    assert "z_head" in new.diff and "z" in new.diff


def test_use_fused_settings():
    assert kernels.use_fused("false", "cuda") is False
    assert kernels.use_fused("auto", "cpu") is False  # the interpreter is for tests, never chosen by auto
    if kernels.available("cpu"):  # under the interpreter
        assert kernels.use_fused("true", "cpu") is True
    else:
        with pytest.raises(RuntimeError, match="analysis.fused=true needs Triton"):
            kernels.use_fused("true", "cpu")


def test_group_sums_kernel_equals_the_pytorch_fold():
    from interp.stats import Sums

    dev = device()
    B, S, R, G, L = 23, 2, 37, 4, 3
    g = torch.Generator().manual_seed(7)
    x = torch.randn(B, S, R, generator=g) * 3 + 100
    x[torch.rand(B, S, R, generator=g) < 0.25] = float("nan")
    group = torch.tensor([0, 3, 3, 1] * 5 + [3, 0, 0])  # group 2 absent
    b = make_batch(B, 5, 0, False, dev)
    b.group, b.host_group = group.to(dev), group
    shift = torch.zeros(L, 1, R, dtype=torch.float64, device=dev)
    shift[1:] = 100.0
    ref, new = Sums.zeros((L, G, R), shift.clone()), Sums.zeros((L, G, R), shift.clone())
    for part in (slice(0, 9), slice(9, B)):
        x_, bb = x[part].to(dev), b.rows(part.start, part.stop)
        ref.add_grouped_(1, x_, bb.group, G)
        _kernels().group_sums_(new, 1, x_, _kernels().segments(bb, G), block=16)
    for f in ("n", "s1", "s2"):
        torch.testing.assert_close(getattr(new, f), getattr(ref, f), rtol=1e-12, atol=1e-9)
    assert torch.all(new.n[:, 2] == 0) and torch.all(new.n[0] == 0)


def test_group_sums_kernel_folds_a_profile_of_fewer_offsets_into_the_leading_ones():
    """A batch of short sentences reaches fewer offsets than the state keeps: its values [B, S, O', C]
    go to the state's first O' offsets, as ``add_grouped_`` puts them; the rest stay untouched. A
    shape that is no leading block is refused."""
    from interp.stats import Sums

    dev = device()
    B, S, O, Os, C, G, L = 11, 2, 6, 4, 5, 3, 2
    g = torch.Generator().manual_seed(5)
    x = (torch.randn(B, S, Os, C, generator=g) + 7).to(dev)
    x[:, :, 3] = float("nan")  # an offset past some pairs' last token
    b = make_batch(B, 5, 0, False, dev)
    shift = torch.full((L, 1, O, C), 7.0, dtype=torch.float64, device=dev)
    ref, new = Sums.zeros((L, G, O, C), shift.clone()), Sums.zeros((L, G, O, C), shift.clone())
    ref.add_grouped_(0, x, b.group, G)
    _kernels().group_sums_(new, 0, x, _kernels().segments(b, G), block=8)
    for f in ("n", "s1", "s2"):
        torch.testing.assert_close(getattr(new, f), getattr(ref, f), rtol=1e-12, atol=1e-9)
    assert float(new.n[:, :, :3].sum()) == B * S * 3 * C and float(new.n[:, :, 3:].sum()) == 0
    with pytest.raises(ValueError, match="no leading block"):
        _kernels().group_sums_(new, 0, x[..., :3], _kernels().segments(b, G))


@pytest.mark.parametrize("span", [False, True])
def test_per_pair_values_of_the_kernel_equal_the_pytorch_ones(span):
    dev = device()
    K, C = 2, 40
    sites = resolve(["resid_post"], 3)
    b = make_batch(7, 9, K, span, dev, seed=1)
    stats = DiffStats(sites, ["g0", "g1", "g2"], device=dev, n_controls=K, max_offset=4)
    acts = [activations(b, C, seed=i) for i in range(3)]
    v_ref, p_ref, _ = stats._values("resid_post", 0, torch.stack(acts), b)
    sp_ref = stats.spread["resid_post"]  # the PyTorch path folded this batch's spread into the state
    ref = sp_ref.shift.float()
    v_new, p_new, spread, amax = _kernels().pair_values(acts, b, K, 4, ref)
    for name, x, y in (("vals", v_new, v_ref), ("prof", p_new, p_ref)):
        assert torch.equal(torch.isnan(x), torch.isnan(y)), name
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-6, equal_nan=True, msg=lambda m: f"{name}: {m}")
    # each pair's largest |x| over the real tokens of a and of b (its own positions, BOS included): exactly
    B = b.size
    live = b.mask[:, :, None]
    by_hand = torch.stack([torch.maximum(torch.where(live[:B], x[:B].abs(), 0).amax(1),
                                         torch.where(live[B:2 * B], x[B:2 * B].abs(), 0).amax(1)) for x in acts])
    assert torch.equal(amax, by_hand.float())
    if span:  # b is longer than a in some pairs: its last tokens count too
        assert bool((b.mask[B:2 * B].sum(1) != b.mask[:B].sum(1)).any())
    n = _kernels().distinct_tokens(b, _kernels().b_last(b))
    assert n.dtype == torch.float64 and n.ndim == 0
    mean = ref.double() + spread[:, :, 0].double().sum(1) / n
    torch.testing.assert_close(mean, sp_ref.mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(torch.full_like(sp_ref.n, float(n)), sp_ref.n)


def test_spread_fold_equals_add_sums_and_the_running_maximum():
    """``fold_spread_`` against what it replaces: the pairs' sums in float64, ``Sums.add_sums_``
    about the shift as float32 (a shift that float32 cannot hold, so the re-expression matters),
    and ``torch.maximum`` of the running maximum with each pair's (NaN kept), into a slice of layers."""
    from interp.stats import Sums

    dev = device()
    g = torch.Generator().manual_seed(3)
    L, S, B, C, lo = 5, 2, 11, 37, 2
    shift = (torch.randn(L, C, generator=g, dtype=torch.float64) * 1e3 + 1 / 3).to(dev)
    spread = (torch.randn(S, B, 2, C, generator=g) * 50).to(dev)
    spread[:, :, 1] = spread[:, :, 1].abs()
    amax = torch.rand(S, B, C, generator=g).to(dev) * 10
    amax[1, 4, 7] = float("nan")
    count = torch.tensor(97.0, dtype=torch.float64, device=dev)
    held = torch.rand(L, C, generator=g).to(dev) * 9
    ref, new = (Sums.zeros((L, C), shift.clone()) for _ in range(2))
    for st in (ref, new):  # a state with something in it already
        st.add_sums_(0, torch.tensor(3.0, dtype=torch.float64, device=dev), shift[:, :1].expand(L, C) * 0 + 1.5,
                     torch.full((L, C), 4.0, device=dev, dtype=torch.float64), center=shift)
    center = shift[lo:lo + S].float()
    s1, s2 = spread.double().sum(1).unbind(1)
    ref.add_sums_(lo, count, s1, s2, center=center)
    want = held.clone()
    want[lo:lo + S] = torch.maximum(held[lo:lo + S], amax.amax(1))
    got = held.clone()
    _kernels().fold_spread_(new, lo, spread, count, got, amax)
    for f in ("n", "s1", "s2"):
        torch.testing.assert_close(getattr(new, f), getattr(ref, f), rtol=1e-12, atol=1e-9, msg=lambda m: f"{f}: {m}")
    assert torch.equal(new.n, ref.n)
    assert torch.equal(torch.isnan(got), torch.isnan(want)) and bool(torch.isnan(got[lo + 1, 7]))
    torch.testing.assert_close(got, want, equal_nan=True, rtol=0, atol=0)
    torch.testing.assert_close(new.mean, ref.mean, rtol=1e-12, atol=1e-9)  # the derived moments follow
    with pytest.raises(ValueError, match="contiguous"):
        _kernels().fold_spread_(new, lo, spread, count, held.t().contiguous().t()[:, :C], amax)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_histogram_kernel_counts_the_bins_of_torch_histc(dtype):
    """``abs_histogram_`` against the PyTorch path's operations (clamp, log10, clamp, ``histc``) on the
    chosen rows' real tokens: values at bin centres (no rounding can move them), zero, NaN and
    infinity, values past the top of the range, padding, and a site past the kernel's eight per launch."""
    from interp.stats.diff import HIST_BINS, HIST_HI, HIST_LO

    dev = device()
    g = torch.Generator().manual_seed(7)
    R, T, C, S = 6, 5, 300, 9
    width = (HIST_HI - HIST_LO) / HIST_BINS
    centre = 10 ** (HIST_LO + (torch.randint(0, HIST_BINS, (S, R, T, C), generator=g).double() + 0.5) * width)
    x = (centre * torch.where(torch.rand(S, R, T, C, generator=g) < 0.5, -1.0, 1.0)).float()
    x[:, :, :, 0] = 0.0  # below the floor: clamped to it
    x[:, :, :, 1] = float("nan")  # not counted
    x[:, :, :, 2] = float("inf")  # clamped below the top
    x[:, :, :, 3] = 3e9  # past the top: clamped below it
    x[:, :, :, 4] = -5e-13  # under the floor
    if dtype == torch.bfloat16:  # bf16's own values (the kernel reads bf16; the reference its float32 image)
        x = x.to(dtype)
    mask = torch.ones(2 * R, T, dtype=torch.bool)
    mask[1, 3:] = False  # padding of a chosen row
    mask[4, 2:] = False
    rows = torch.tensor([0, 1, 4, 7, 9, 11])
    acts = [torch.zeros(2 * R, T, C, dtype=x.dtype) for _ in range(S)]
    for s in range(S):
        acts[s][rows] = x[s]
    live = mask[rows][:, :, None]
    ref = torch.zeros(S, HIST_BINS, dtype=torch.float64)
    for s in range(S):
        v = acts[s][rows].float().abs()
        lg = torch.where(live, v.clamp(min=10 ** HIST_LO).log10().clamp(max=HIST_HI - 1e-3), HIST_LO - 1.0)
        ref[s] = torch.histc(lg, HIST_BINS, HIST_LO, HIST_HI).double()
    got = torch.zeros(S, HIST_BINS, dtype=torch.float64, device=dev)
    _kernels().abs_histogram_(got, [a.to(dev) for a in acts], rows.to(dev), mask.to(dev), HIST_LO, HIST_HI,
                              10 ** HIST_LO, HIST_HI - 1e-3)
    assert torch.equal(got.cpu(), ref)
    assert int(ref.sum()) == S * (int(live.sum()) * C - int(live.sum()))  # every real token, NaN left out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA's log10f and torch.histc on CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_histogram_kernel_equals_torch_histc_on_cuda_bit_for_bit(dtype):
    """Random magnitudes over the histogram's whole range (and past it), many on or near bin edges:
    the kernel's counts are ``torch.histc``'s exactly, through the PyTorch path's own operations."""
    from interp.stats.diff import HIST_BINS, HIST_HI, HIST_LO

    g = torch.Generator().manual_seed(11)
    R, T, C, S = 16, 12, 1000, 3
    lg = torch.rand(S, 2 * R, T, C, generator=g, dtype=torch.float64) * 24 - 14
    lg[..., :200] = torch.round(lg[..., :200] * 100) / 100  # on the edges of the 0.01-decade bins
    x = (10 ** lg * torch.where(torch.rand(lg.shape, generator=g) < 0.5, -1.0, 1.0)).to(dtype).cuda()
    mask = torch.rand(2 * R, T, generator=g) < 0.9
    rows = torch.arange(0, 2 * R, 3).cuda()
    live = mask.cuda().index_select(0, rows)[:, :, None]
    ref = torch.stack([torch.histc(torch.where(live, x[s].index_select(0, rows).float().abs().clamp(min=10 ** HIST_LO)
                                               .log10().clamp(max=HIST_HI - 1e-3), HIST_LO - 1.0),
                                   HIST_BINS, HIST_LO, HIST_HI) for s in range(S)]).double()
    got = torch.zeros(S, HIST_BINS, dtype=torch.float64, device="cuda")
    _kernels().abs_histogram_(got, list(x), rows, mask.cuda(), HIST_LO, HIST_HI, 10 ** HIST_LO, HIST_HI - 1e-3)
    assert torch.equal(got, ref)


def _logprobs():
    from interp.kernels import logprobs  # imports Triton: only where the tests run

    return logprobs


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_target_logprob_kernel_equals_the_log_softmax_at_the_targets(dtype):
    """One pass over the logits (``kernels.logprobs``) against ``log_softmax`` of their float32 image:
    a vocabulary that is no multiple of the block, rows of huge and of tiny logits, a row whose
    largest logit is the target, a row with NaN (NaN out, as in PyTorch), a strided view."""
    dev = device()
    g = torch.Generator().manual_seed(3)
    S, V = 7, 1000
    lg = torch.randn(S, V, generator=g) * 4
    lg[1] += 1e4  # huge logits: the running maximum keeps the exponentials finite
    lg[2] *= 1e-3
    target = torch.randint(0, V, (S,), generator=g)
    lg[3, target[3]] = 50.0  # the target is the maximum
    lg[4, 17] = float("nan")
    lg = lg.to(dtype)
    ref = torch.log_softmax(lg.float(), -1).gather(-1, target[:, None])[:, 0]
    got = _logprobs().target_logprobs(lg.to(dev), target.to(dev), block=128).cpu()
    assert got.dtype == torch.float32 and torch.isnan(got[4]) and not torch.isnan(got[[0, 1, 2, 3, 5, 6]]).any()
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5, equal_nan=True)
    wide = torch.zeros(S, 2 * V, dtype=dtype)
    wide[:, ::2] = lg  # rows whose elements are not adjacent: copied first
    torch.testing.assert_close(_logprobs().target_logprobs(wide[:, ::2].to(dev), target.to(dev), block=256).cpu(),
                               ref, rtol=1e-5, atol=1e-5, equal_nan=True)
    with pytest.raises(ValueError, match=r"logits \[S, V\]"):
        _logprobs().target_logprobs(lg.to(dev), target[:3].to(dev))


def test_slot_logprobs_through_the_kernel_equal_the_pytorch_path(tiny_lm):
    """``engine.slot_logprobs`` with ``fused=True`` (one pass over each chunk's logits) gives the
    PyTorch path's log-probabilities up to float32 rounding, chunked or not."""
    from interp.engine import slot_logprobs

    if torch.cuda.is_available():  # the compiled kernel takes CUDA tensors only
        pytest.skip("the tiny model is on the CPU: on CUDA the kernel is compared above, and whole runs "
                    "against the CPU in tests/test_gpu.py")

    g = torch.Generator().manual_seed(5)
    d = tiny_lm.info["d_model"]
    h = torch.randn(23, d, generator=g)
    target = torch.randint(0, tiny_lm.tokenizer.vocab_size, (23,), generator=g)
    ref = slot_logprobs(tiny_lm.plain, h, target, fused=False)
    for chunk in (None, 5):
        got = slot_logprobs(tiny_lm.plain, h, target, chunk=chunk, fused=True)
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-5)
