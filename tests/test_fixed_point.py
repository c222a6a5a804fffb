import numpy as np
import pytest

from medqk.convert.fixed_point import quantize_mantissa, saturate, saturated_count, shift_round, shift_round_half_even


def test_shift_round_rounds_half_up_for_both_signs():
    v = np.array([-6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6])
    # v / 4 = -1.5 -1.25 -1 -0.75 -0.5 -0.25 0 0.25 0.5 0.75 1 1.25 1.5
    assert shift_round(v, 2).tolist() == [-1, -1, -1, -1, 0, 0, 0, 0, 1, 1, 1, 1, 2]


def test_shift_round_non_positive_shift_multiplies():
    assert shift_round(np.array([-3, 5]), -3).tolist() == [-24, 40]
    assert shift_round(np.array([7]), 0).tolist() == [7]


def test_shift_round_half_even_matches_numpy_round():
    v = np.arange(-64, 65)
    assert np.array_equal(shift_round_half_even(v, 3), np.round(v / 8).astype(np.int64))
    assert np.array_equal(shift_round_half_even(v, 1), np.round(v / 2).astype(np.int64))


def test_saturate_to_24_bits():
    v = np.array([-(1 << 23) - 1, -(1 << 23), 0, (1 << 23) - 1, 1 << 23])
    assert saturate(v).tolist() == [-(1 << 23), -(1 << 23), 0, (1 << 23) - 1, (1 << 23) - 1]
    assert saturated_count(v) == 2


@pytest.mark.parametrize("peak", [1e-3, 0.37, 1.0, 127.0, 300.5])
def test_quantize_mantissa_uses_8_bits_and_bounds_error(peak):
    values = np.linspace(-peak, peak, 101)
    m, e = quantize_mantissa(values)
    assert np.abs(m).max() <= 127 and np.abs(m).max() >= 64  # the range is used, not wasted
    assert np.max(np.abs(m * 2.0**e - values)) <= 2.0**e / 2 + 1e-12


def test_quantize_mantissa_of_zeros():
    m, e = quantize_mantissa(np.zeros(5))
    assert not m.any() and e == 0
