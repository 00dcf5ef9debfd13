import numpy as np
import torch

from interp.analysis import group_moments, reduce_groups
from interp.stats import Moments


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
