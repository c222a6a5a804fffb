"""Neurons: NISF (integer graded spikes), ReLU and the output sigmoid.

NISF, float:  s = round_half_even(clamp(in_scale * x, 0, D))        (s is the stored spike 0..D)
NISF, int:    s = clip(shift_round_half_even(x * multiplier, shift), 0, D)
with ``in_scale = multiplier * 2**-shift`` exactly for power-of-two scales. The output tensor's
scale is 1/D: a consumer that needs the network's value s/D folds the 1/D in.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from medqk.convert.op import Op


@dataclasses.dataclass(eq=False)
class NISF(Op):
    """Normalized Integer Spike-Fire neuron with ``levels`` = D."""

    type: ClassVar[str] = "nisf"
    QUANTIZED: ClassVar[tuple[str, ...]] = ("multiplier", "shift")

    levels: int = 4
    in_scale: float = 1.0
    #: True once spikes travel as integers 0..D (``passes.fold_nisf_normalization``)
    integer_output: bool = False
    multiplier: int | None = None
    shift: int | None = None


@dataclasses.dataclass(eq=False)
class ReLU(Op):
    """max(x, 0) (ANN baselines)."""

    type: ClassVar[str] = "relu"


@dataclasses.dataclass(eq=False)
class Sigmoid(Op):
    """The network's output nonlinearity: probabilities = sigmoid(in_scale * x).

    In an integer graph the op passes its integer input (the logits, scale ``in_scale``) through;
    ``logits_to_probabilities`` turns them into probabilities on the host, once, for every
    integer backend alike.
    """

    type: ClassVar[str] = "sigmoid"

    in_scale: float = 1.0


def logits_to_probabilities(logits: np.ndarray, scale: float) -> np.ndarray:
    """float32 probabilities from integer logits (``real = logits * scale``)."""
    return (1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64) * scale))).astype(np.float32)
