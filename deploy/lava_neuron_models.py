"""Fixed-point models (tag ``fixed_pt``) of medqk's neuron processes (``lava_neurons``).

Each computes its neuron's formula with the rounding rules of ``medqk.convert.fixed_point`` on
int64, at its valid step only; at every other step its input must be zero (the schedule aligns
every operand to that step) and it sends zeros (``lava_messages.silence``; what it computes it
sends ``frozen``, and it reads through ``FastInPort``, so a silent step costs neither copies nor reads). A nonzero input at another step, or an output
beyond its 24-bit payload, stops the run naming the process, the step and the value. The same
models serve both model sets (reference and fast): they already do no work outside their step.
"""
import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from medqk.convert.fixed_point import STATE_BITS, saturate, saturated_count, shift_round, shift_round_half_even
from medqk.deploy.lava_graph import TAP_BYTE_BITS
from medqk.deploy.lava_layout import combine_planes, split_planes
from medqk.deploy.lava_messages import FastInPort, frozen, is_silent, silence
from medqk.deploy.lava_neurons import (AddNeuron, AffineNeuron, ComplementNeuron, ConvNeuron, DigitPlanes, ImageSource,
                                       LogitSink, MaxNeuron, NISFNeuron, RescaleNeuron, SpikeProbe, UpsampleNeuron)
from medqk.errors import MedqkError

_INT = LavaPyType(np.ndarray, np.int64)


class _CountingModel(PyLoihiProcessModel):
    """A model that counts what its process sends (``lava_neurons._counters``)."""

    a_in: PyInPort = LavaPyType(FastInPort, np.int32, precision=24)
    sent: np.ndarray = _INT
    fan_out: np.ndarray = _INT
    synaptic: np.ndarray = _INT

    def count(self, value: np.ndarray) -> None:
        """Add one send of ``value``: its graded spikes and their magnitudes, and per synapse that
        reads it the events (nonzero payloads x fan-out) and accumulates (magnitude x fan-out)."""
        magnitude = np.abs(value.astype(np.int64))
        self.sent[:] += (np.count_nonzero(magnitude), int(magnitude.sum()))
        for row, fan_out in enumerate(self.fan_out):
            self.synaptic[row] += (int(fan_out[magnitude != 0].sum()), int((fan_out * magnitude).sum()))


class _GatedModel(_CountingModel):
    """Receives every step; computes ``fire(x)`` and sends it at ``valid_step``, zeros otherwise."""

    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)
    valid_step: np.ndarray = _INT

    def run_spk(self) -> None:
        x = self.a_in.recv()
        y, error = silence(self.s_out.shape), None
        if self.time_step != self.valid_step[0]:
            if not is_silent(x):
                error = (f"input at step {self.time_step}, valid only at step {int(self.valid_step[0])} "
                         "(misaligned schedule)")
        else:
            value = self.fire(x.astype(np.int64))
            if saturated_count(value, STATE_BITS):
                error = f"value {int(np.abs(value).max())} exceeds the {STATE_BITS}-bit graded-spike payload"
            else:
                y = frozen(value.astype(np.int32))
                self.count(value)
        # send before raising: a consumer waiting on this step's message would otherwise hang the run
        self.s_out.send(y)
        if error:
            raise MedqkError(f"process {self.proc_params['process_name']}: {error}")

    def fire(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def _model(proc):
    """Register a model class as ``proc``'s fixed-point model."""
    def register(cls):
        return implements(proc=proc, protocol=LoihiProtocol)(requires(CPU)(tag("fixed_pt")(cls)))
    return register


@_model(NISFNeuron)
class NISFNeuronModel(_GatedModel):
    multiplier: np.ndarray = _INT
    shift: np.ndarray = _INT
    levels: np.ndarray = _INT
    threshold: np.ndarray = _INT
    binary: np.ndarray = _INT

    def fire(self, x):
        if self.binary[0]:
            return (x >= self.threshold[0]).astype(np.int64)
        return np.clip(shift_round_half_even(x * self.multiplier[0], int(self.shift[0])), 0, self.levels[0])


@_model(DigitPlanes)
class DigitPlanesModel(_GatedModel):
    bits: np.ndarray = _INT
    peak: np.ndarray = _INT

    def fire(self, x):
        return split_planes(x, int(self.bits[0]), int(self.peak[0])).astype(np.int64)


@_model(ConvNeuron)
class ConvNeuronModel(_GatedModel):
    bias: np.ndarray = _INT
    shift: np.ndarray = _INT
    bits: np.ndarray = _INT
    planes: np.ndarray = _INT

    def fire(self, x):
        bits = int(self.bits[0]) if self.planes[0] > 1 else None
        acc = combine_planes(x, bits, int(self.planes[0]))
        return saturate(shift_round(acc, int(self.shift[0]), offset=self.bias))


@_model(UpsampleNeuron)
class UpsampleNeuronModel(_GatedModel):
    shift: np.ndarray = _INT
    bits: np.ndarray = _INT
    planes: np.ndarray = _INT
    tap_bytes: np.ndarray = _INT

    def fire(self, x):
        w, h, _ = x.shape
        planes, tap_bytes = int(self.planes[0]), int(self.tap_bytes[0])
        parts = x.reshape(w, h, tap_bytes, planes, -1)
        total = np.zeros((w, h, parts.shape[-1]), np.int64)
        for k in range(tap_bytes):
            for p in range(planes):
                total += parts[:, :, k, p] << (TAP_BYTE_BITS * k + int(self.bits[0]) * p)
        return shift_round(total, int(self.shift[0]))


@_model(AffineNeuron)
class AffineNeuronModel(_GatedModel):
    multiplier: np.ndarray = _INT
    offset: np.ndarray = _INT
    shift: np.ndarray = _INT

    def fire(self, x):
        return saturate(shift_round(x * self.multiplier, int(self.shift[0]), offset=self.offset))


@_model(RescaleNeuron)
class RescaleNeuronModel(_GatedModel):
    multiplier: np.ndarray = _INT
    shift: np.ndarray = _INT

    def fire(self, x):
        return shift_round(x * self.multiplier[0], int(self.shift[0]))


@_model(AddNeuron)
class AddNeuronModel(_GatedModel):
    def fire(self, x):
        return saturate(x)


@_model(ComplementNeuron)
class ComplementNeuronModel(_GatedModel):
    one: np.ndarray = _INT

    def fire(self, x):
        return self.one[0] - x


@_model(MaxNeuron)
class MaxNeuronModel(_GatedModel):
    taps: np.ndarray = _INT

    def fire(self, x):
        w, h, _ = x.shape
        return x.reshape(w, h, int(self.taps[0]), -1).max(axis=2)


@_model(SpikeProbe)
class SpikeProbeModel(_CountingModel):
    def run_spk(self) -> None:
        x = self.a_in.recv()
        if not is_silent(x):
            self.count(x)


@_model(ImageSource)
class ImageSourceModel(PyLoihiProcessModel):
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)
    data: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)

    def run_spk(self) -> None:
        self.s_out.send(self.data if self.time_step == 1 else silence(self.data.shape))


@_model(LogitSink)
class LogitSinkModel(PyLoihiProcessModel):
    a_in: PyInPort = LavaPyType(FastInPort, np.int32, precision=24)
    to_host: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)
    valid_step: np.ndarray = _INT

    def run_spk(self) -> None:
        x = self.a_in.recv()
        if self.time_step == self.valid_step[0]:
            self.to_host.send(x)


#: medqk process class -> its model (both model sets)
NEURON_MODELS = {NISFNeuron: NISFNeuronModel, DigitPlanes: DigitPlanesModel, ConvNeuron: ConvNeuronModel,
                 UpsampleNeuron: UpsampleNeuronModel, AffineNeuron: AffineNeuronModel, RescaleNeuron: RescaleNeuronModel,
                 AddNeuron: AddNeuronModel, MaxNeuron: MaxNeuronModel,
                 ComplementNeuron: ComplementNeuronModel, ImageSource: ImageSourceModel, LogitSink: LogitSinkModel,
                 SpikeProbe: SpikeProbeModel}
