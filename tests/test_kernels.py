import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medqk.convert import kernels
from medqk.convert.synapses import interp_matrix, interp_matrix_int

rng = np.random.default_rng(0)


@pytest.mark.parametrize("groups,stride,padding,k", [(1, 1, 1, 3), (4, 1, 1, 3), (8, 1, 1, 3), (1, 2, 0, 2), (1, 1, 0, 1)])
def test_conv2d_matches_torch(groups, stride, padding, k):
    x = rng.standard_normal((2, 8, 9, 10))
    w = rng.standard_normal((8, 8 // groups, k, k))
    ref = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), stride=stride, padding=padding, groups=groups).numpy()
    got = kernels.conv2d(x, w, (stride, stride), (padding, padding), groups)
    np.testing.assert_allclose(got, ref, atol=1e-10)


def test_conv_transpose2d_matches_torch():
    x = rng.standard_normal((1, 4, 5, 6))
    w = rng.standard_normal((4, 3, 2, 2))
    ref = F.conv_transpose2d(torch.from_numpy(x), torch.from_numpy(w), stride=2).numpy()
    np.testing.assert_allclose(kernels.conv_transpose2d(x, w, (2, 2), (0, 0)), ref, atol=1e-10)


def test_bilinear_align_corners_matches_torch():
    x = rng.standard_normal((1, 2, 5, 7))
    ref = F.interpolate(torch.from_numpy(x), scale_factor=2, mode="bilinear", align_corners=True).numpy()
    got = kernels.separable(x, interp_matrix(5, 10), interp_matrix(7, 14))
    np.testing.assert_allclose(got, ref, atol=1e-12)


def test_integer_interpolation_rows_sum_to_one():
    m = interp_matrix_int(16, 32, 12)
    assert (m.sum(axis=1) == 4096).all() and (m >= 0).all()


@pytest.mark.parametrize("peak", [4, 1 << 23])  # spikes (the float32 path) and 24-bit states (float64)
def test_exact_int_equals_pure_integer_convolution(peak):
    x = rng.integers(-peak, peak + 1, (1, 6, 7, 7))
    w = rng.integers(-127, 128, (4, 3, 3, 3))
    got = kernels.exact_int(kernels.conv2d, x, w, (1, 1), (1, 1), 2, bound_terms=27)
    assert got.dtype == np.int64
    assert np.array_equal(got, _integer_conv(x, w, padding=1, groups=2))


def _integer_conv(x, w, padding, groups):
    """Reference: a grouped convolution accumulated in python integers (no rounding possible)."""
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding))).astype(object)
    o, cg, kh, kw = w.shape
    og = o // groups
    out = np.zeros((x.shape[0], o, xp.shape[2] - kh + 1, xp.shape[3] - kw + 1), dtype=object)
    for k in range(o):
        g = k // og
        for c in range(cg):
            for a in range(kh):
                for b in range(kw):
                    out[:, k] += int(w[k, c, a, b]) * xp[:, g * cg + c, a:a + out.shape[2], b:b + out.shape[3]]
    return out.astype(np.int64)


def test_exact_int_refuses_sums_beyond_float64_precision():
    x = np.full((1, 1, 3, 3), 1 << 40, dtype=np.int64)
    w = np.full((1, 1, 3, 3), 1 << 12, dtype=np.int64)
    with pytest.raises(OverflowError, match="2\\^53"):
        kernels.exact_int(kernels.conv2d, x, w, (1, 1), (1, 1), 1, bound_terms=9)
