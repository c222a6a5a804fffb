"""NISF: values and straight-through gradients around every rounding boundary and outside [0, D]."""
import pytest
import torch

from medqk import NISF


def nisf_with_grad(values, levels=4):
    x = torch.tensor(values, dtype=torch.float32, requires_grad=True)
    y = NISF(levels)(x)
    y.sum().backward()
    return y.detach(), x.grad


def test_values_around_each_rounding_boundary():
    inputs = [-5.0, -0.01, 0.0, 0.49, 0.5, 0.51, 1.49, 1.5, 1.51, 2.5, 2.51, 3.49, 3.5, 3.99, 4.0, 4.01, 100.0]
    # torch.round is half-to-even: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, 3.5 -> 4.
    spikes = [0, 0, 0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 4, 4, 4, 4]
    values, _ = nisf_with_grad(inputs)
    assert values.tolist() == [s / 4 for s in spikes]
    assert NISF(4).spikes(torch.tensor(inputs)).tolist() == spikes


def test_gradient_passes_inside_zero_to_d_and_stops_outside():
    inputs = [-3.0, -0.01, 0.0, 0.5, 2.0, 3.99, 4.0, 4.01, 9.0]
    _, grad = nisf_with_grad(inputs)
    assert grad.tolist() == [0, 0, 1, 1, 1, 1, 1, 0, 0]


def test_gradient_is_the_incoming_gradient_unchanged():
    x = torch.tensor([0.2, 1.7, 5.0], requires_grad=True)
    NISF(4)(x).backward(torch.tensor([3.0, -2.0, 7.0]))
    assert x.grad.tolist() == [3.0, -2.0, 0.0]


def test_other_levels_scale_and_clamp_at_d():
    values, grad = nisf_with_grad([-1.0, 0.6, 1.4, 2.0, 2.6], levels=2)
    assert values.tolist() == [0.0, 0.5, 0.5, 1.0, 1.0]
    assert grad.tolist() == [0, 1, 1, 1, 0]


def test_outputs_are_the_d_plus_one_levels_only():
    out = NISF(4)(torch.linspace(-2, 6, 1001))
    assert sorted(set(out.tolist())) == [0.0, 0.25, 0.5, 0.75, 1.0]


@pytest.mark.parametrize("levels", [0, -1, 2.5])
def test_levels_must_be_a_positive_integer(levels):
    with pytest.raises(ValueError, match="positive integer"):
        NISF(levels)
