"""Neurons: integer spike-fire (NISF, MultiSpike, binary IF), ReLU, and the output activations.

Integer spike-fire, float:  s = clip(round_half_even(in_scale * x), 0, D)      (NISF, MultiSpike)
                            s = [in_scale * x >= threshold]                     (binary, D = 1)
Integer spike-fire, int:    s = clip(shift_round_half_even(x * multiplier, shift), 0, D)
                            s = [x >= threshold_int]
``s`` is the stored spike 0..D. The network sees ``s * spike_scale``: s/D for a NISF (``normalized``),
s itself for a MultiSpike-style neuron that outputs integers. Before ``passes.fold_nisf_normalization``
the op outputs that value; afterwards it outputs s and its tensor's scale is ``spike_scale``, which
every consumer folds in.

The output activations (``sigmoid``; ``softmax`` over the channels) are computed on the host in
integer graphs: the op passes its integer input (the logits, scale ``in_scale``) through and
``output_values`` turns it into probabilities, once, for every integer backend alike. A graph that
ends in neither outputs its last tensor's real values (logits).
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from medqk.convert.op import Op


@dataclasses.dataclass(eq=False)
class NISF(Op):
    """Integer spike-fire neuron with ``levels`` = D (see the module docstring)."""

    type: ClassVar[str] = "nisf"
    QUANTIZED: ClassVar[tuple[str, ...]] = ("multiplier", "shift")

    levels: int = 4
    in_scale: float = 1.0
    #: True once spikes travel as integers 0..D (``passes.fold_nisf_normalization``)
    integer_output: bool = False
    #: the network sees s/D (True, NISF) or the integer s (False, MultiSpike)
    normalized: bool = True
    #: binary neurons: fire 1 where in_scale * x >= threshold (levels 1); None: rounding neurons
    threshold: float | None = None
    multiplier: int | None = None
    shift: int | None = None
    #: binary neurons, quantized: fire where the integer input >= threshold_int
    threshold_int: int | None = None

    @property
    def spike_scale(self) -> float:
        """The network's value of one stored spike unit."""
        return 1.0 / self.levels if self.normalized else 1.0

    @property
    def is_quantized(self) -> bool:
        return self.threshold_int is not None if self.threshold is not None else super().is_quantized


@dataclasses.dataclass(eq=False)
class ReLU(Op):
    """max(x, 0) (ANN baselines)."""

    type: ClassVar[str] = "relu"


@dataclasses.dataclass(eq=False)
class Sigmoid(Op):
    """The network's output nonlinearity: probabilities = sigmoid(in_scale * x), per pixel."""

    type: ClassVar[str] = "sigmoid"

    in_scale: float = 1.0


@dataclasses.dataclass(eq=False)
class Softmax(Op):
    """The network's output nonlinearity: probabilities = softmax over the K channels of in_scale * x."""

    type: ClassVar[str] = "softmax"

    in_scale: float = 1.0


#: output op class -> what turns its integer logits into probabilities (host side)
OUTPUT_ACTIVATIONS = {Sigmoid: "sigmoid", Softmax: "softmax"}


def logits_to_probabilities(logits: np.ndarray, scale: float) -> np.ndarray:
    """float32 probabilities from integer logits (``real = logits * scale``)."""
    return (1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64) * scale))).astype(np.float32)


def softmax(values: np.ndarray, axis: int = 1) -> np.ndarray:
    shifted = values - values.max(axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=axis, keepdims=True)


def output_values(activation: str, stored: np.ndarray, scale: float) -> np.ndarray:
    """float32 network output from a graph's integer output: probabilities where the graph ends in
    ``activation`` "sigmoid" or "softmax", else the real values (logits) ``stored * scale``."""
    if activation == "sigmoid":
        return logits_to_probabilities(stored, scale)
    real = np.asarray(stored, dtype=np.float64) * scale
    return (softmax(real) if activation == "softmax" else real).astype(np.float32)


def output_activation(graph) -> str:
    """"sigmoid", "softmax" or "none": how ``graph``'s output becomes the network's output."""
    return OUTPUT_ACTIVATIONS.get(type(graph.output.op), "none")


def output_scale(graph) -> float:
    """The real value of one unit of the graph's stored output (its logits for an output activation)."""
    out = graph.output
    return float(out.op.in_scale) if type(out.op) in OUTPUT_ACTIVATIONS else float(out.tensor.scale)
