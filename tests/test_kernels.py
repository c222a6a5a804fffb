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


@pytest.mark.parametrize("peak", [4, 1 << 10, 1 << 23])  # spikes (float32), 11 bits (two planes), 24 bits (three)
def test_exact_int_equals_pure_integer_convolution(peak):
    x = rng.integers(-peak, peak + 1, (2, 6, 7, 7))
    w = rng.integers(-127, 128, (4, 3, 3, 3))
    weight_sum = kernels.largest_weight_sum(w)
    assert weight_sum == max(int(np.abs(w[o]).sum()) for o in range(4))
    got = kernels.exact_int(kernels.conv2d, x, w, (1, 1), (1, 1), 2, weight_sum=weight_sum)
    assert got.dtype == (np.int32 if peak * weight_sum <= 2**24 else np.int64)
    assert np.array_equal(got, _integer_conv(x, w, padding=1, groups=2))


def test_digit_planes_recompose_every_24_bit_value():
    x = np.concatenate([rng.integers(-(1 << 23), 1 << 23, 1000), [-(1 << 23), (1 << 23) - 1, -1, 0]])
    for bits in (4, 9, 13):
        planes = kernels.digit_planes(x, bits, 1 << 23)
        assert (np.abs(planes) < 1 << bits).all() and planes.dtype == np.float32
        assert np.array_equal(sum(p.astype(np.int64) << (bits * i) for i, p in enumerate(planes)), x)


def test_plane_bits_keep_float32_partial_sums_exact():
    assert kernels.float32_plane_bits(4, 127 * 2304) is None  # spikes: one plane
    bits = kernels.float32_plane_bits(2**23, 127 * 2304)
    assert ((1 << bits) - 1) * 127 * 2304 <= 2**24 < ((1 << (bits + 1)) - 1) * 127 * 2304
    assert kernels.float32_plane_bits(2**23, 2**24 + 1) == 0  # not even one-bit planes: float64 instead


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


def test_exact_int_refuses_sums_beyond_exact_integers():
    x = np.full((1, 1, 3, 3), 1 << 30, dtype=np.int64)
    w = np.ones((1, 1, 3, 3), dtype=np.int64)
    with pytest.raises(OverflowError, match="2\\^53"):  # too wide for planes, too large for float64
        kernels.exact_int(kernels.conv2d, x, w, (1, 1), (1, 1), 1, weight_sum=1 << 24)
    with pytest.raises(OverflowError, match="int64"):
        kernels.exact_int(kernels.conv2d, x << 30, w, (1, 1), (1, 1), 1, weight_sum=1 << 10)
