import numpy as np
import torch

from interp.stats import Moments, Sums, reduce_groups


def folded(x: torch.Tensor, shift=None, group=None, n_groups: int = 1, chunk: int | None = None) -> Sums:
    """``x`` [N, *R] (NaN = no value) folded into a one-layer state [1, G, *R], ``chunk`` rows at a time."""
    R = tuple(x.shape[1:])
    shift = torch.zeros((1, 1, *R), dtype=torch.float64) if shift is None else torch.as_tensor(shift).expand(1, 1, *R)
    st = Sums.zeros((1, n_groups, *R), shift.clone())
    group = torch.zeros(len(x), dtype=torch.long) if group is None else group
    step = chunk or len(x)
    for i in range(0, len(x), step):
        st.add_grouped_(0, x[i:i + step, None], group[i:i + step], n_groups)
    return st


def test_streamed_moments_equal_numpy_mean_and_sample_variance():
    x = torch.randn(500, 7, dtype=torch.float64) * 3 + 10
    m = folded(x, shift=9.0, chunk=37)
    np.testing.assert_allclose(m.mean[0, 0].numpy(), x.numpy().mean(0), rtol=1e-12)
    np.testing.assert_allclose(m.var[0, 0].numpy(), x.numpy().var(0, ddof=1), rtol=1e-10)
    assert torch.all(m.n == 500)


def test_merged_halves_equal_one_pass_with_missing_values():
    x = torch.randn(300, 4, 5, dtype=torch.float64)
    keep = torch.rand(300, 4) > 0.3
    x = torch.where(keep[:, :, None], x, float("nan"))  # whole rows of values missing
    one = folded(x)
    a, b = folded(x[:123], shift=0.5), folded(x[123:], shift=-0.25)  # about other shifts
    both = a.merge(b)
    for f in ("n", "mean", "m2"):
        torch.testing.assert_close(getattr(both, f), getattr(one, f), rtol=1e-12, atol=1e-12)
    # the moments of the values present equal those of the selected rows
    sel = x[:, 1][keep[:, 1]]
    np.testing.assert_allclose(one.mean[0, 0, 1].numpy(), sel.numpy().mean(0), rtol=1e-12)
    np.testing.assert_allclose(one.var[0, 0, 1].numpy(), sel.numpy().var(0, ddof=1), rtol=1e-10)


def test_merge_is_exact_for_a_nearly_constant_massive_component():
    # a "massive" dimension: huge mean, tiny spread; naive sums of squares would lose it in float32
    x = (5000.0 + 1e-3 * torch.randn(1000, 1, dtype=torch.float64)).float()
    total = folded(x[:64], shift=float(x[:64].double().mean()))
    for chunk in x[64:].split(64):  # each chunk summarised about its own mean, then merged
        total = total.merge(folded(chunk, shift=float(chunk.double().mean())))
    np.testing.assert_allclose(total.std[0, 0].numpy(), x.double().numpy().std(0, ddof=1), rtol=1e-3)


def test_group_moments_equal_per_group_moments_and_reduce_to_the_whole():
    x = torch.randn(200, 3, dtype=torch.float64)
    g = torch.randint(0, 4, (200,))
    gm = folded(x, group=g, n_groups=4)
    for k in range(4):
        sel = x[g == k].numpy()
        np.testing.assert_allclose(gm.mean[0, k].numpy(), sel.mean(0), rtol=1e-12)
        np.testing.assert_allclose((gm.m2[0, k] / (gm.n[0, k] - 1)).numpy(), sel.var(0, ddof=1), rtol=1e-10)
    whole = reduce_groups(Moments(gm.n[0], gm.mean[0], gm.m2[0]))
    np.testing.assert_allclose(whole.var.numpy(), x.numpy().var(0, ddof=1), rtol=1e-10)


def test_empty_state_merges_as_identity_and_has_nan_variance():
    m = Sums.zeros((1, 1, 3), torch.zeros(1, 1, 3, dtype=torch.float64))
    assert torch.isnan(m.var).all()
    b = folded(torch.randn(10, 3, dtype=torch.float64))
    merged = m.merge(b)
    torch.testing.assert_close(merged.mean, b.mean)
    torch.testing.assert_close(merged.m2, b.m2)


def test_sums_fold_grouped_values_with_missing_ones_into_per_group_moments():
    B, S, R, G = 60, 2, 5, 3
    x = torch.randn(B, S, R, dtype=torch.float64) * 2 + 7  # float64 values: float64 sums
    x[torch.rand(B, S, R) < 0.2] = float("nan")  # no value there
    g = torch.randint(0, G, (B,))
    st = Sums.zeros((4, G, R), torch.zeros(4, 1, R, dtype=torch.float64))
    st.shift[1:3] = 7.0
    st.add_grouped_(1, x[:25], g[:25], G)  # two batches into layers 1..2
    st.add_grouped_(1, x[25:], g[25:], G)
    assert torch.all(st.n[0] == 0) and torch.all(st.n[3] == 0)
    for s in range(S):
        for k in range(G):
            for r in range(R):
                v = x[g == k, s, r].double().numpy()
                v = v[np.isfinite(v)]
                assert st.n[1 + s, k, r] == len(v)
                np.testing.assert_allclose(float(st.mean[1 + s, k, r]), v.mean(), rtol=1e-10)
                np.testing.assert_allclose(float(st.var[1 + s, k, r]), v.var(ddof=1), rtol=1e-8)


def test_sums_merge_state_dict_and_recentred_sums_are_exact():
    x = torch.randn(400, 6, dtype=torch.float64) * 3 + 50
    one = folded(x)
    both = folded(x[:150], shift=40.0).merge(folded(x[150:], shift=55.0))  # about poor, differing shifts
    for f in ("n", "mean", "m2"):
        torch.testing.assert_close(getattr(both, f), getattr(one, f), rtol=1e-11, atol=1e-9)
    back = Sums.from_state_dict(both.state_dict("s/"), "s/")
    torch.testing.assert_close(back.m2, one.m2, rtol=1e-11, atol=1e-9)
    # sums taken about another centre, folded into a slice in place: the same as one pass
    st = Sums.zeros((2, 6), torch.zeros(2, 6, dtype=torch.float64))
    for part, centre in ((x[:150], 48.0), (x[150:], 52.5)):
        y = part - centre
        st.add_sums_(1, torch.tensor(float(len(part)), dtype=torch.float64), y.sum(0)[None], (y * y).sum(0)[None],
                     center=torch.full((1, 6), centre, dtype=torch.float64))
    torch.testing.assert_close(st.m2[1], one.m2[0, 0], rtol=1e-11, atol=1e-9)
    torch.testing.assert_close(st.mean[1], one.mean[0, 0], rtol=1e-12, atol=1e-12)
    assert torch.all(st.n[0] == 0)


def test_sums_keep_the_spread_of_a_massive_component():
    x = 5000.0 + 1e-3 * torch.randn(1000, 1, 1)
    st = Sums.zeros((1, 1, 1), torch.full((1, 1, 1), 5000.0, dtype=torch.float64))
    for chunk in x.split(64):
        st.add_grouped_(0, chunk, torch.zeros(len(chunk), dtype=torch.long), 1)
    np.testing.assert_allclose(float(st.std[0, 0, 0]), x.double().numpy().std(ddof=1), rtol=1e-3)


# ---------------------------------------------------------------- the registry of statistics

def _table(K: int, **kw):
    from interp.hooks import resolve
    from interp.stats import DiffStats
    from tests.test_fused import activations, consume, make_batch

    sites = resolve(["resid_post", "z"], 2)
    b = make_batch(7, 9, K, False, "cpu", seed=1)
    stats = DiffStats(sites, ["g0", "g1", "g2"], n_controls=K, max_offset=3, **kw)
    acts = {s.name: activations(b, 32, shape_tail=(4, 8) if s.point == "z" else None, seed=i)
            for i, s in enumerate(sites)}
    return consume(stats, b, acts), b, acts


def test_the_stability_table_has_the_registry_columns_in_order():
    from interp.stats import registry as reg

    for K in (0, 2):
        stats, _, _ = _table(K)
        df = stats.table()
        want = (["hook", "hook_name", "layer", "component", "position"] + [c.name for c in reg.columns(K, "site")]
                + [c.name for c in reg.columns(K, "clustered")] + ["head", "head_dim"]
                + [c.name for c in reg.columns(K, "table")] + [c.name for c in reg.columns(K, "rule")])
        assert list(df.columns) == want
        assert stats.channels == reg.channel_names(K) and reg.channel_names(0) == reg.channel_names(K)[:2]
        offered = [c for c in reg.value_columns() if c in df.columns]
        assert offered[0] == "normalized" and ("p_value" in offered) == bool(K)
    assert set(reg.value_columns()) <= set(df.columns)  # a run with controls has every value column
    assert set(df["hook"]) == {"resid_post", "z", "z_head"}


def test_a_statistic_added_to_the_registry_reaches_the_table(monkeypatch):
    """One channel and one column: DiffStats accumulates the new per-pair value and the table shows it."""
    from interp.stats import registry as reg

    sq = reg.Channel("sq", "(a - b)^2", lambda v: v.diff * v.diff)
    monkeypatch.setattr(reg, "CHANNELS", reg.CHANNELS[:2] + (sq,) + reg.CHANNELS[2:])
    monkeypatch.setattr(reg, "COLUMNS", reg.COLUMNS + (reg.Column("mean_sq_diff", "mean (a - b)^2",
                                                                   lambda m: m.mean("sq")),))
    stats, b, acts = _table(2)
    df = stats.table()
    rows = df[(df.hook == "resid_post") & (df.layer == 1) & (df.position == "edit")]
    x = acts["blocks.1.hook_resid_post"].double()
    B, ar = b.size, torch.arange(b.size)
    d = x[ar, b.edit] - x[B + ar, b.edit]  # [B, C]: a - b at the edit
    np.testing.assert_allclose(rows["mean_sq_diff"].to_numpy(), (d * d).mean(0).numpy(), rtol=1e-5)
    np.testing.assert_allclose(rows["mean_abs_diff"].to_numpy(), d.abs().mean(0).numpy(), rtol=1e-5)
