import numpy as np
import torch

from interp.analysis import reduce_groups
from interp.stats import Moments, Sums
from interp.stats import grouped_moments as group_moments


def test_streamed_moments_equal_numpy_mean_and_sample_variance():
    x = torch.randn(500, 7, dtype=torch.float64) * 3 + 10
    m = Moments.zeros((7,))
    for chunk in x.split(37):
        m.update(chunk)
    np.testing.assert_allclose(m.mean.numpy(), x.numpy().mean(0), rtol=1e-12)
    np.testing.assert_allclose(m.var.numpy(), x.numpy().var(0, ddof=1), rtol=1e-10)
    assert torch.all(m.n == 500)


def test_merged_halves_equal_one_pass_with_weights():
    x = torch.randn(300, 4, 5, dtype=torch.float64)
    w = (torch.rand(300, 4) > 0.3).double()
    one = Moments.of_batch(x, w)
    a, b = Moments.of_batch(x[:123], w[:123]), Moments.of_batch(x[123:], w[123:])
    both = a.merge(b)
    for t1, t2 in zip((one.n, one.mean, one.m2), (both.n, both.mean, both.m2)):
        torch.testing.assert_close(t1, t2, rtol=1e-12, atol=1e-12)
    # weighted moments equal the moments of the selected rows
    sel = x[:, 1][w[:, 1] > 0]
    np.testing.assert_allclose(one.mean[1].numpy(), sel.numpy().mean(0), rtol=1e-12)
    np.testing.assert_allclose(one.var[1].numpy(), sel.numpy().var(0, ddof=1), rtol=1e-10)


def test_merge_is_exact_for_a_nearly_constant_massive_component():
    # a "massive" dimension: huge mean, tiny spread; naive sum of squares would lose it in float32
    x = 5000.0 + 1e-3 * torch.randn(1000, 1, dtype=torch.float64)
    m = Moments.zeros((1,))
    for chunk in x.split(64):
        m.update(chunk.float())
    np.testing.assert_allclose(m.std.numpy(), x.float().double().numpy().std(0, ddof=1), rtol=1e-3)


def test_group_moments_equal_per_group_moments_and_reduce_to_the_whole():
    x = torch.randn(200, 3, dtype=torch.float64)
    g = torch.randint(0, 4, (200,))
    w = torch.ones(200)
    gm = group_moments(x, w, g, 4)
    for k in range(4):
        sel = x[g == k].numpy()
        np.testing.assert_allclose(gm.mean[k].numpy(), sel.mean(0), rtol=1e-12)
        np.testing.assert_allclose((gm.m2[k] / (gm.n[k] - 1)).numpy(), sel.var(0, ddof=1), rtol=1e-10)
    whole = reduce_groups(gm)
    np.testing.assert_allclose(whole.var.numpy(), x.numpy().var(0, ddof=1), rtol=1e-10)


def test_empty_state_merges_as_identity_and_has_nan_variance():
    m = Moments.zeros((3,))
    assert torch.isnan(m.var).all()
    x = torch.randn(10, 3, dtype=torch.float64)
    b = Moments.of_batch(x)
    merged = m.merge(b)
    torch.testing.assert_close(merged.mean, b.mean)
    torch.testing.assert_close(merged.m2, b.m2)


def grouped_state(L, G, R, shift):
    return Sums.zeros((L, G, R), shift)


def test_sums_fold_grouped_values_with_missing_ones_into_per_group_moments():
    B, S, R, G = 60, 2, 5, 3
    x = torch.randn(B, S, R, dtype=torch.float64) * 2 + 7  # float64 values: float64 sums
    x[torch.rand(B, S, R) < 0.2] = float("nan")  # no value there
    g = torch.randint(0, G, (B,))
    st = grouped_state(4, G, R, torch.zeros(4, 1, R, dtype=torch.float64))
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


def test_sums_merge_and_moments_round_trip_exactly():
    x = torch.randn(400, 6, dtype=torch.float64) * 3 + 50
    a, b = Moments.of_batch(x[:150]), Moments.of_batch(x[150:])
    sa = Sums.zeros((6,), torch.full((6,), 40.0, dtype=torch.float64)).merge(a)  # about a poor shift
    both = sa.merge(Sums.zeros((6,), b.mean).merge(b))
    one = Moments.of_batch(x)
    for f in ("n", "mean", "m2"):
        torch.testing.assert_close(getattr(both, f), getattr(one, f), rtol=1e-11, atol=1e-9)
    back = Sums.from_state_dict(both.state_dict("s/"), "s/")
    torch.testing.assert_close(back.m2, one.m2, rtol=1e-11, atol=1e-9)
    # folding moments into a slice in place: the same as merging
    st = Sums.zeros((2, 6), torch.zeros(2, 6, dtype=torch.float64))
    st.add_moments_(1, Moments(a.n[None], a.mean[None], a.m2[None]))
    st.add_moments_(1, Moments(b.n[None], b.mean[None], b.m2[None]))
    torch.testing.assert_close(st.m2[1], one.m2, rtol=1e-11, atol=1e-9)
    assert torch.all(st.n[0] == 0)


def test_sums_keep_the_spread_of_a_massive_component():
    x = 5000.0 + 1e-3 * torch.randn(1000, 1, 1)
    st = grouped_state(1, 1, 1, torch.full((1, 1, 1), 5000.0, dtype=torch.float64))
    for chunk in x.split(64):
        st.add_grouped_(0, chunk, torch.zeros(len(chunk), dtype=torch.long), 1)
    np.testing.assert_allclose(float(st.std[0, 0, 0]), x.double().numpy().std(ddof=1), rtol=1e-3)
