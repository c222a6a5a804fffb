"""medqk's neuron processes for the Lava library graph (``lava_graph``): ports and Vars only.

Lava has no process for these: NISF's rounding to integer spikes 0..D, a convolution's bias and
rounding shift after Lava's ``Conv`` (which applies neither), the recombination of digit planes,
per-channel affines and the 24-bit saturation of sums. Each is a graded neuron whose parameters are
Vars, as a Loihi 2 neuron program would hold them; their fixed-point models are in
``lava_neuron_models``. Every one computes and fires at its ``valid_step`` only and sends zeros
otherwise (see ``lava_graph``). Shapes are Lava's (W, H, C).

Lava finds process models by executing every module of this folder as a top-level module, so this
module stays free of side effects beyond importing Lava: absolute imports, no dataclasses.
"""
from __future__ import annotations

import time

import numpy as np

from medqk.deploy.lava_runtime import require_lava

require_lava()  # before Lava's own imports: they fail after a tqdm bar unless this runs first

from lava.magma.core.process.ports.ports import InPort, OutPort  # noqa: E402
from lava.magma.core.process.process import AbstractProcess  # noqa: E402
from lava.magma.core.process.variable import Var  # noqa: E402

from medqk.errors import MedqkError  # noqa: E402

#: a neuron's ``sent`` Var: graded spikes sent (nonzero payloads) and the sum of their magnitudes
SENT = ("spikes", "payload_sum")
#: a row of a neuron's ``synaptic`` Var, one per synapse process reading it: the synaptic events its
#: spikes cause there (nonzero payloads x fan-out) and their accumulates (payload magnitude x fan-out)
SYNAPTIC = ("events", "acs")


def _var(value) -> Var:
    value = np.atleast_1d(np.asarray(value, np.int64))
    return Var(shape=value.shape, init=value)


def _counters(process: AbstractProcess, shape, fan_out) -> None:
    """The activity Vars of a process that counts what it sends: ``sent`` (``SENT``); ``fan_out``
    (k, W, H, C): the connections of each output element in each of the k synapse processes that
    read it; ``synaptic`` (k, ``SYNAPTIC``): what its spikes caused there (a Loihi core counts
    synaptic ops where the synapses are; Lava's own synapse models count nothing, so the sender
    does)."""
    process.sent = _var(np.zeros(len(SENT)))
    fan_out = np.zeros((0, *shape), np.int64) if fan_out is None else np.asarray(fan_out, np.int64)
    process.fan_out = Var(shape=fan_out.shape, init=fan_out)
    process.synaptic = Var(shape=(len(fan_out), len(SYNAPTIC)), init=np.zeros((len(fan_out), len(SYNAPTIC)), np.int64))


class GatedNeuron(AbstractProcess):
    """A graded neuron with one in port (its dendritic sum) that fires at ``valid_step`` only.

    Vars: ``valid_step``; the activity counters (``_counters``); plus each subclass's parameters,
    given as keyword arguments (integers or per-channel arrays)."""

    def __init__(self, in_shape, shape, valid_step: int, name: str, fan_out=None, **params):
        super().__init__(name=name, process_name=name)
        self.a_in = InPort(shape=tuple(in_shape))
        self.s_out = OutPort(shape=tuple(shape))
        self.valid_step = _var(valid_step)
        _counters(self, shape, fan_out)
        for key, value in params.items():
            setattr(self, key, _var(value))


class SpikeProbe(AbstractProcess):
    """Counts what a process that keeps no counters sends (Lava's own neurons, ``ProdNeuron`` and
    ``GradedVec``, and the image source), reading the same out port as its consumers: the activity
    counters of ``_counters``. A measuring instrument of the CPU run, like Lava's monitors: not part
    of the graph a chip would run."""

    def __init__(self, shape, name: str, fan_out=None):
        super().__init__(name=name, process_name=name)
        self.a_in = InPort(shape=tuple(shape))
        _counters(self, shape, fan_out)


class NISFNeuron(GatedNeuron):
    """NISF: ``s = clip(round_half_even(x * multiplier / 2**shift), 0, levels)`` (or, binary,
    ``s = x >= threshold`` where ``binary`` is 1)."""


class DigitPlanes(GatedNeuron):
    """Splits a 24-bit state into ``kernels.digit_planes`` of ``bits`` (for magnitudes up to ``peak``),
    concatenated along C, so that a Conv or Sparse behind it sums each plane within 24 bits."""


class ConvNeuron(GatedNeuron):
    """The neuron side of a ``Conv``: recombines the ``planes`` dendritic sums (``bits`` apart), adds
    ``bias`` (per channel) and shifts by ``shift`` rounding half up, saturating to 24 bits."""


class UpsampleNeuron(GatedNeuron):
    """The neuron side of an upsampling ``Sparse``: recombines tap bytes and input planes and
    shifts by ``shift`` rounding half up."""


class AffineNeuron(GatedNeuron):
    """``saturate((x * multiplier[c] + offset[c]) / 2**shift)`` rounding half up."""


class RescaleNeuron(GatedNeuron):
    """``(x * multiplier) / 2**shift`` rounding half up (a left shift where ``shift`` < 0): an add's
    operand brought to the sum's format; not saturated, so a result beyond 24 bits is refused."""


class AddNeuron(GatedNeuron):
    """The dendritic sum of its operands, saturated to 24 bits."""


class ComplementNeuron(GatedNeuron):
    """``one - x`` (SDQK's inactivated spikes D - s)."""


class MaxNeuron(GatedNeuron):
    """The largest of its ``taps`` compartments per channel (a pooling window gathered by a Sparse);
    Lava's neurons sum their inputs and none keeps a maximum."""


class ImageSource(AbstractProcess):
    """The graph's input, held in ``data`` (W, H, C) and sent once, at step 1; zeros afterwards."""

    def __init__(self, data: np.ndarray, name: str = "input"):
        super().__init__(name=name)
        data = np.asarray(data)
        self.data = Var(shape=data.shape, init=data.astype(np.int32))
        self.s_out = OutPort(shape=data.shape)


class LogitSink(AbstractProcess):
    """Receives at every step and hands the value of ``valid_step`` to the host through an external
    pipe (one message; reading a Var back moves one float64 per message)."""

    def __init__(self, shape, valid_step: int, name: str = "output"):
        super().__init__(name=name)
        self.a_in = InPort(shape=tuple(shape))
        self.valid_step = _var(valid_step)
        self.to_host = OutPort(shape=tuple(shape))
        self.to_host.flag_external_pipe(buffer_size=1)

    def read(self, timeout_s: float = 10.0) -> np.ndarray:
        """The (W, H, C) value of the valid step, int64; call once, after the run, before stopping it."""
        pipe = self.to_host.external_pipe_csp_recv_port
        deadline = time.monotonic() + timeout_s
        while not pipe.probe():  # sent before the run returned; the pipe's listener may lag
            if time.monotonic() > deadline:
                raise MedqkError(f"Lava sink {self.name!r} received nothing: did the run reach step "
                                 f"{int(self.valid_step.init[0])}?")
            time.sleep(0.001)
        return pipe.recv().astype(np.int64)
