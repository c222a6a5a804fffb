"""The integer interpreter: exact integer semantics per op, int32 storage, determinism."""
import numpy as np
import pytest

from numpy.lib.stride_tricks import sliding_window_view

from medqk.convert import interpret_int, kernels
from medqk.convert.elementwise import Add
from medqk.convert.fixed_point import shift_round, shift_round_half_even
from medqk.convert.io import quantize_input
from medqk.convert.neurons import NISF
from medqk.convert.pipeline import float_graph_of
from medqk.convert.quantize import quantize
from medqk.convert.synapses import Conv2d
from support import random_images, small_model

rng = np.random.default_rng(0)


@pytest.fixture(scope="module")
def qgraph():
    graph, _ = quantize(float_graph_of(small_model(), (32, 32)), random_images(2, 32, seed=1))
    return graph


def _python_conv(x, w, padding):
    """Reference: convolution accumulated in python integers (no rounding anywhere)."""
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding))).astype(object)
    o, c, kh, kw = w.shape
    out = np.zeros((x.shape[0], o, xp.shape[2] - kh + 1, xp.shape[3] - kw + 1), dtype=object)
    for k in range(o):
        for i in range(c):
            for a in range(kh):
                for b in range(kw):
                    out[:, k] += int(w[k, i, a, b]) * xp[:, i, a:a + out.shape[2], b:b + out.shape[3]]
    return out


def _conv(weight_mantissa, bias_acc, shift):
    op = Conv2d(weight=weight_mantissa.astype(float), padding=1)
    op.weight_mantissa, op.bias_acc, op.shift = weight_mantissa, bias_acc, shift
    return op


@pytest.mark.parametrize("peak", [4, 1 << 23])  # spikes (int32 accumulator) and 24-bit states (digit planes)
def test_conv2d_is_exact_integer_arithmetic(peak):
    w = rng.choice([-127, 127], (5, 4, 3, 3))  # the worst case: every weight at full scale
    bias = rng.integers(-(1 << 20), 1 << 20, 5)
    x = rng.integers(-peak, peak + 1, (2, 4, 6, 6)).astype(np.int32)
    got, saturated = interpret_int.evaluate(_conv(w, bias, 7), x)
    acc = _python_conv(x, w, 1) + bias[None, :, None, None].astype(object)
    expected = np.clip(((acc + 64) // 128).astype(np.int64), -(1 << 23), (1 << 23) - 1)
    assert got.dtype == np.int32 and np.array_equal(got, expected)
    assert saturated == int(np.count_nonzero((acc + 64) // 128 != expected))


def test_a_synapse_without_input_spikes_gives_its_bias():
    op = _conv(rng.integers(-127, 128, (3, 2, 3, 3)), np.array([5, -6, 700]), 2)
    got, _ = interpret_int.evaluate(op, np.zeros((1, 2, 4, 4), np.int32))
    assert got.shape == (1, 3, 4, 4) and got[0, :, 0, 0].tolist() == [1, -1, 175]


def test_nisf_rounds_ties_to_even_and_clips():
    op = NISF(levels=4, integer_output=True, multiplier=1, shift=2)
    x = np.arange(-8, 24, dtype=np.int32)  # x / 4 from -2 to 5.75, every tie included
    got, _ = interpret_int.evaluate(op, x)
    assert got.tolist() == np.clip(np.round(x / 4), 0, 4).astype(int).tolist()


def test_add_rescales_each_input_and_saturates():
    op = Add(coefficients=(1.0, 0.5, 3.0), multipliers=(1, 1, 3), shifts=(0, 1, 0))
    a = np.array([1 << 22, -5, 3], np.int32)
    got, saturated = interpret_int.evaluate(op, a, np.array([1 << 22, 3, -3], np.int32), np.array([1 << 21, 1, 1], np.int32))
    assert got.tolist() == [(1 << 23) - 1, -5 + 2 + 3, 3 - 1 + 3] and saturated == 1
    plain = Add(coefficients=(1.0, 1.0), multipliers=(1, 1), shifts=(0, 0))  # int32 all the way, still saturated
    top = np.array([(1 << 23) - 1, -(1 << 23)], np.int32)
    got, saturated = interpret_int.evaluate(plain, top, top)
    assert got.tolist() == top.tolist() and saturated == 2


def test_shift_rounding_in_any_integer_width_and_in_place():
    v = rng.integers(-(1 << 23), 1 << 23, 10_000)
    for k in (1, 5, 16):
        expected = np.floor(v / 2**k + 0.5).astype(np.int64)
        assert np.array_equal(shift_round(v.astype(np.int32), k), expected)
        assert np.array_equal(shift_round_half_even(v.astype(np.int32), k), np.round(v / 2**k).astype(np.int64))
        buffer = v.copy()
        assert shift_round(buffer, k, offset=3, in_place=True) is buffer
        assert np.array_equal(buffer, np.floor((v + 3) / 2**k + 0.5).astype(np.int64))


def test_interpreter_is_deterministic_and_integer_only(qgraph):
    x = quantize_input(random_images(2, 32, seed=3), qgraph.input.tensor.frac_bits)
    out1, values, _ = interpret_int.run(qgraph, x, record=True)
    out2 = interpret_int.run(qgraph, x.copy())
    assert np.array_equal(out1, out2) and out1.dtype == np.int64
    assert all(v.dtype == np.int32 for v in values.values()), "a non-int32 array travelled between integer ops"
    with pytest.raises(TypeError, match="integer input"):
        interpret_int.run(qgraph, x.astype(np.float64))


def test_input_beyond_24_bits_is_refused(qgraph):
    x = np.full((1, 3, 32, 32), 1 << 24, dtype=np.int64)
    with pytest.raises(ValueError, match="24-bit state range"):
        interpret_int.run(qgraph, x)


def _integer_only_exact_int(kernel, x, w, *args, weight_sum):
    """``kernels.exact_int`` in int64 numpy arithmetic alone (slow, and no float anywhere)."""
    x, w = np.asarray(x, np.int64), np.asarray(w, np.int64)
    if kernel is kernels.separable:
        (uw,) = args
        return np.matmul(np.matmul(w, x), np.asarray(uw, np.int64).T)
    (sh, sw), (ph, pw), groups = args
    n, _, _, _ = x.shape
    o, cg, kh, kw = w.shape
    windows = sliding_window_view(np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))), (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
    ho, wo = windows.shape[2:4]
    windows = windows.reshape(n, groups, cg, ho, wo, kh, kw)
    out = np.einsum("ngchwkl,gockl->ngohw", windows, w.reshape(groups, o // groups, cg, kh, kw))
    return out.reshape(n, o, ho, wo)


def test_float_kernels_change_no_bit_against_integer_only_arithmetic(qgraph, monkeypatch):
    """The interpreter's float32 / float64 kernels are an exact shortcut: with every linear kernel
    replaced by int64 arithmetic (no floating point on the data path at all) every tensor of the
    run is the same."""
    x = quantize_input(random_images(2, 32, seed=11), qgraph.input.tensor.frac_bits)
    _, fast, _ = interpret_int.run(qgraph, x, record=True)
    monkeypatch.setattr(kernels, "exact_int", _integer_only_exact_int)
    _, integer_only, _ = interpret_int.run(qgraph, x, record=True)
    assert fast.keys() == integer_only.keys()
    assert all(np.array_equal(fast[name], integer_only[name]) for name in fast)
