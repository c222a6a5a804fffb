"""Lower a quantized IR graph to a graph of Lava library processes: the plan (no Lava imports here).

``lower(graph)`` returns a ``LavaGraph``: every process with its class, shape, weight format,
message bits, delay and the time step at which its output is valid, and how the ports connect.
``deploy.lava_library`` builds and runs it in Lava; ``medqk inspect DIR --lava`` prints it.

What each IR op becomes (``LOWERING``, keyed by op class; anything else is refused by name):

- ``conv2d``: Lava ``Conv`` (8-bit mantissas, the kernel flipped into (W, H, C); its exponent, bias
  and rounding shift belong to the neuron behind it, ``ConvNeuron``). Lava's Conv wraps its
  dendritic sum modulo 2**24; an input that could drive a sum past 2**23 - 1 (any real-valued
  24-bit state; never a spike map) goes through ``DigitPlanes`` first, and every plane sums on its
  own (``kernels.dendritic_plane_bits``, ``lava_layout``). A layer where even 1-bit planes could
  overflow is refused by name.
- ``upsample``: Lava ``Sparse`` whose weights are the bytes of the 2-D interpolation taps (each
  0..255, so Lava keeps them exactly), on the input's digit planes; ``UpsampleNeuron`` recombines
  bytes and planes and rounds.
- ``group_sum``, ``group_broadcast``, ``channel_slice``, ``concat``: Lava ``Sparse`` per-pixel
  channel maps with weights 1 (a concat is one Sparse per operand, summed in the consumer's port).
- ``mul`` (spike x spike): Lava ``ProdNeuron`` (exp 0, vth 0).
- ``add``: dendritic summation of the operands in ``AddNeuron``'s one in port; the neuron saturates
  the sum to 24 bits, as the IR does. An operand the IR rescales first (a multiplier and rounding
  shift) passes a ``RescaleNeuron`` on its way.
- ``nisf``, ``affine``, ``complement``: medqk neuron processes (``lava_neurons``).
- ``maxpool2d``: a Lava ``Sparse`` (weights 0/1) gathers each window into compartments of the
  output neuron, a ``MaxNeuron`` that keeps the largest (Lava has no max).
- the output activation (``sigmoid``, ``softmax``): none; the sink reads the logits.

Timing (``LoihiProtocol``: every process runs every step):

- The source sends the image once, at step 1.
- A synapse process (Conv, Sparse) sends at step t + 1 what it received at step t; a neuron sends
  in the step it receives. So a value is *valid* at a step known before the run: its producers'
  step, plus one per synapse on the way.
- medqk's neurons compute and fire only at their valid step; at every other step their input is
  zero (the image is sent once and nothing else is in flight) and they send zeros, so a step
  without a wave costs nothing but Lava's synchronisation.
- Operands of unequal depth are aligned the way the chip would: the early one goes through a Lava
  ``DelaySparse`` identity (one step plus ``delay``, at most ``MAX_DELAY`` = 63 per synapse, Loihi
  2's 6-bit delays), chained through ``GradedVec`` relay neurons beyond that. Nothing waits in a
  buffer.
- The run takes ``steps`` steps, the output's valid step; the sink keeps what arrives at that step.
"""
import dataclasses
import math

import numpy as np

from medqk.convert import elementwise as ew
from medqk.convert import kernels
from medqk.convert import neurons
from medqk.convert import synapses as syn
from medqk.convert.fixed_point import STATE_BITS, WEIGHT_BITS
from medqk.convert.graph import Graph, Node
from medqk.convert.io import Input
from medqk.convert.op import FLOAT_ONLY, OpRefused, rule
from medqk.errors import MedqkError

#: Loihi 2 synaptic delays are 6-bit: a DelaySparse adds at most this many steps to its one
MAX_DELAY = 63
#: a real-valued state is any 24-bit value: the bound a synapse fed by one is planned for
STATE_PEAK = 1 << (STATE_BITS - 1)
#: upsampling taps travel as bytes: Lava keeps non-negative weights 0..255 exactly
TAP_BYTE_BITS = 8

LAVA, MEDQK = "lava", "medqk"
CLASSES = {
    "Conv": ("lava.proc.conv.process.Conv", LAVA), "Sparse": ("lava.proc.sparse.process.Sparse", LAVA),
    "DelaySparse": ("lava.proc.sparse.process.DelaySparse", LAVA),
    "ProdNeuron": ("lava.proc.prodneuron.process.ProdNeuron", LAVA),
    "GradedVec": ("lava.proc.graded.process.GradedVec", LAVA),
    **{name: (f"medqk.deploy.lava_neurons.{name}", MEDQK) for name in (
        "ImageSource", "DigitPlanes", "ConvNeuron", "UpsampleNeuron", "NISFNeuron", "AffineNeuron", "RescaleNeuron", "AddNeuron",
        "ComplementNeuron", "MaxNeuron", "LogitSink")},
}
SYNAPSES = ("Conv", "Sparse", "DelaySparse")
#: the host's ends of the graph: neither a neuron nor a synapse (on a chip, the host interface)
HOST = ("ImageSource", "LogitSink")


@dataclasses.dataclass
class ProcessSpec:
    """One process of the lowered graph.

    ``inputs`` maps each in port to the out ports ("process.port") whose messages it sums;
    ``params`` holds what the builder passes on (arrays included); ``shape`` is the output's
    (W, H, C) (a synapse's flat vector for Sparse)."""

    name: str
    kind: str
    shape: tuple
    valid_step: int
    inputs: dict
    params: dict
    node: str | None = None
    delay: int = 0
    weight_bits: int | None = None
    weight_exp: int | None = None
    message_bits: int | None = None

    @property
    def cls(self) -> str:
        return CLASSES[self.kind][0]

    @property
    def library(self) -> str:
        return CLASSES[self.kind][1]

    @property
    def is_neuron(self) -> bool:
        return self.kind not in (*SYNAPSES, *HOST)

    @property
    def size(self) -> int:
        """Elements of the output: a neuron process's neurons, a synapse's dendritic sums."""
        return math.prod(self.shape)

    def row(self) -> dict:
        """The JSON row of ``medqk inspect --lava``."""
        return {"name": self.name, "class": self.cls, "library": self.library, "shape": list(self.shape),
                "weight_bits": self.weight_bits, "weight_exp": self.weight_exp, "message_bits": self.message_bits,
                "delay": self.delay, "valid_step": self.valid_step, "node": self.node,
                "inputs": {port: list(srcs) for port, srcs in self.inputs.items()}}


@dataclasses.dataclass
class Value:
    """An IR value in the lowered graph: the out ports whose point-wise sum it is, the step at which
    they carry it, its (W, H, C) shape and its magnitude bound."""

    ports: tuple
    step: int
    shape: tuple
    peak: int


@dataclasses.dataclass
class LavaGraph:
    processes: list
    output: str
    steps: int

    def __getitem__(self, name: str) -> ProcessSpec:
        return next(p for p in self.processes if p.name == name)


def whc(shape) -> tuple:
    c, h, w = shape
    return (int(w), int(h), int(c))


class _Lowering:
    def __init__(self, graph: Graph):
        self.graph = graph
        self.processes: list[ProcessSpec] = []
        self.values: dict[str, Value] = {}
        #: (ports, step) -> a value delayed there, and (ports, bits) -> its digit planes: shared by consumers
        self.delayed: dict[tuple, Value] = {}
        self.planes: dict[tuple, tuple] = {}
        self.relays: dict[tuple, Value] = {}

    def add(self, spec: ProcessSpec) -> ProcessSpec:
        self.processes.append(spec)
        return spec

    # -- wiring helpers ------------------------------------------------------------------
    def aligned(self, value: Value, step: int, consumer: str) -> Value:
        """``value`` delayed to ``step`` by DelaySparse identities (and GradedVec relays between them)."""
        key = (value.ports, step)
        if key in self.delayed:
            return self.delayed[key]
        while value.step < step:
            source = self.neuron_output(value, consumer)
            delay = min(step - source.step - 1, MAX_DELAY)
            n = math.prod(source.shape)
            spec = self.add(ProcessSpec(f"{consumer}/delay{len(self.processes)}", "DelaySparse", (n,), source.step + 1 + delay,
                                        {"s_in": source.ports}, {"flatten_input": True}, delay=delay,
                                        weight_bits=1, weight_exp=0, message_bits=STATE_BITS))
            value = Value((f"{spec.name}.a_out",), spec.valid_step, source.shape, source.peak)
        self.delayed[key] = value
        return value

    def neuron_output(self, value: Value, consumer: str) -> Value:
        """``value`` as one neuron's out port (a synapse reads neuron outputs): a GradedVec relay
        where it is a synapse's output or a sum of several."""
        if len(value.ports) == 1 and self[value.ports[0]].kind not in SYNAPSES:
            return value
        if value.ports in self.relays:
            return self.relays[value.ports]
        spec = self.add(ProcessSpec(f"{consumer}/relay{len(self.processes)}", "GradedVec", value.shape, value.step,
                                    {"a_in": value.ports}, {"vth": 0}, message_bits=_message_bits(value.peak)))
        self.relays[value.ports] = Value((f"{spec.name}.s_out",), value.step, value.shape, value.peak)
        return self.relays[value.ports]

    def __getitem__(self, port: str) -> ProcessSpec:
        name = port.rsplit(".", 1)[0]
        return next(p for p in reversed(self.processes) if p.name == name)

    def inputs_at(self, node: Node, step: int | None = None) -> tuple[list[Value], int]:
        values = [self.values[i] for i in node.inputs]
        step = max(v.step for v in values) if step is None else step
        return [self.aligned(v, step, node.name) for v in values], step

    def neuron(self, node: Node, kind: str, in_ports: dict, step: int, peak: int, params: dict, in_shape=None) -> None:
        shape = whc(node.tensor.shape)
        spec = self.add(ProcessSpec(node.name, kind, shape, step, in_ports, {"in_shape": in_shape or shape, **params},
                                    node=node.name, message_bits=_message_bits(peak)))
        self.values[node.name] = Value((f"{spec.name}.s_out",), step, shape, peak)

    def synapse(self, node: Node, source: Value, name: str, kind: str, params: dict, weight_bits: int,
                message_bits: int, flat: bool) -> Value:
        shape = (int(params["n_out"]),) if flat else params["out_shape"]
        spec = self.add(ProcessSpec(name, kind, shape, source.step + 1, {"s_in": source.ports}, params, node=node.name,
                                    weight_bits=weight_bits, weight_exp=0, message_bits=message_bits))
        return Value((f"{spec.name}.a_out",), spec.valid_step, shape, 0)


def _message_bits(peak: int) -> int:
    """Bits of a graded payload of magnitude <= peak (sign included where values can be negative)."""
    return min(STATE_BITS, max(1, int(peak).bit_length() + 1))


def _planes(low: _Lowering, node: Node, source: Value, weight_sum: int) -> tuple[Value, int | None, int]:
    """The synapse input as digit planes where its sums could pass 2**23 - 1: (value, bits, count)."""
    try:
        bits = kernels.dendritic_plane_bits(source.peak, weight_sum)
    except OverflowError as error:
        raise MedqkError(f"layer {node.name}: {error}; Lava's Conv would wrap its dendritic sums") from None
    source = low.neuron_output(source, node.name)
    if bits is None:
        return source, None, 1
    if (source.ports, bits) in low.planes:
        return low.planes[source.ports, bits]
    count = kernels.plane_count(bits, source.peak)
    w, h, c = source.shape
    spec = low.add(ProcessSpec(f"{node.name}/planes", "DigitPlanes", (w, h, c * count), source.step, {"a_in": source.ports},
                               {"in_shape": source.shape, "bits": bits, "peak": source.peak}, node=node.name,
                               message_bits=bits + 1))
    low.planes[source.ports, bits] = Value((f"{spec.name}.s_out",), source.step, spec.shape, (1 << bits) - 1), bits, count
    return low.planes[source.ports, bits]


# -- one function per op -------------------------------------------------------------------

def _input(low: _Lowering, node: Node) -> None:
    shape = whc(node.tensor.shape)
    spec = low.add(ProcessSpec(node.name, "ImageSource", shape, 1, {}, {}, node=node.name, message_bits=STATE_BITS))
    low.values[node.name] = Value((f"{spec.name}.s_out",), 1, shape, STATE_PEAK)


def _conv2d(low: _Lowering, node: Node) -> None:
    op = node.op
    (source,), _ = low.inputs_at(node)
    planes, bits, count = _planes(low, node, source, kernels.largest_weight_sum(op.weight_mantissa))
    out = whc(node.tensor.shape)
    acc = low.synapse(node, planes, f"{node.name}/conv", "Conv",
                      {"weight": op.weight_mantissa, "planes": count, "stride": op.stride, "padding": op.padding,
                       "groups": op.groups, "in_shape": planes.shape, "out_shape": (*out[:2], out[2] * count)},
                      WEIGHT_BITS, _message_bits(planes.peak), flat=False)
    low.neuron(node, "ConvNeuron", {"a_in": acc.ports}, acc.step, STATE_PEAK,
               {"bias": op.bias_acc, "shift": op.shift, "bits": bits or 0, "planes": count}, in_shape=acc.shape)


def upsample_taps(op, w: int, h: int) -> list:
    """The 2-D interpolation taps of ``op`` on a (w, h) map as byte matrices [B_0, B_1, ...]
    (scipy CSR, (W' H', W H) over flattened (W, H) pixels) with ``taps == sum_k B_k * 256**k``."""
    import scipy.sparse

    taps = scipy.sparse.kron(scipy.sparse.csr_matrix(op.matrix_int(w)), scipy.sparse.csr_matrix(op.matrix_int(h))).tocsr()
    count = max(1, math.ceil(int(taps.max()).bit_length() / TAP_BYTE_BITS))
    parts = []
    for k in range(count):
        part = taps.copy()
        part.data = (part.data >> (TAP_BYTE_BITS * k)) & ((1 << TAP_BYTE_BITS) - 1)
        part.eliminate_zeros()
        parts.append(part.astype(np.int64))
    return parts


def _upsample(low: _Lowering, node: Node) -> None:
    op = node.op
    (source,), _ = low.inputs_at(node)
    w, h, c = source.shape
    taps = upsample_taps(op, w, h)
    weight_sum = max(int(np.asarray(part.sum(axis=1)).max(initial=0)) for part in taps)
    planes, bits, count = _planes(low, node, source, weight_sum)
    out = whc(node.tensor.shape)
    acc = low.synapse(node, planes, f"{node.name}/taps", "Sparse",
                      {"taps": taps, "channels": c, "planes": count, "n_out": math.prod(out) * count * len(taps),
                       "flatten_input": True},
                      TAP_BYTE_BITS, _message_bits(planes.peak), flat=True)
    low.neuron(node, "UpsampleNeuron", {"a_in": acc.ports}, acc.step, STATE_PEAK,
               {"shift": 2 * op.frac_bits, "bits": bits or 0, "planes": count, "tap_bytes": len(taps)},
               in_shape=(*out[:2], len(taps) * count * out[2]))


def window_taps(op: ew.MaxPool2d, w: int, h: int) -> list:
    """The 0/1 matrices (W' H', W H) over flattened (W, H) pixels, one per offset (i, j) of a pooling
    window: output pixel (x', y') reads input pixel (x' stride + i, y' stride + j)."""
    import scipy.sparse

    def pick(size: int, offset: int):
        rows = np.arange((size - op.kernel) // op.stride + 1)
        return scipy.sparse.csr_matrix((np.ones(len(rows), np.int64), (rows, rows * op.stride + offset)),
                                       shape=(len(rows), size))
    return [scipy.sparse.kron(pick(w, i), pick(h, j)).tocsr() for i in range(op.kernel) for j in range(op.kernel)]


def _maxpool(low: _Lowering, node: Node) -> None:
    """A Sparse gathers every window's inputs (0/1 weights: one term per sum, exact for any payload)
    into their own compartments of the output neuron, which keeps the largest (``MaxNeuron``)."""
    (source,), _ = low.inputs_at(node)
    source = low.neuron_output(source, node.name)
    w, h, c = source.shape
    taps = window_taps(node.op, w, h)
    out = whc(node.tensor.shape)
    acc = low.synapse(node, source, f"{node.name}/window", "Sparse",
                      {"window": taps, "channels": c, "n_out": math.prod(out) * len(taps), "flatten_input": True},
                      1, _message_bits(source.peak), flat=True)
    low.neuron(node, "MaxNeuron", {"a_in": acc.ports}, acc.step, source.peak, {"taps": len(taps)},
               in_shape=(*out[:2], len(taps) * out[2]))


def _channel_map(low: _Lowering, node: Node, source: Value, matrix: np.ndarray, name: str, peak: int) -> Value:
    """A per-pixel channel map (C_out, C_in) of weights 0/1 as a Sparse; returns its output, reshaped."""
    source = low.neuron_output(source, node.name)
    w, h, _ = source.shape
    out = (w, h, matrix.shape[0])
    spec = low.synapse(node, source, name, "Sparse", {"channel_map": matrix, "pixels": w * h, "n_out": math.prod(out),
                                                      "flatten_input": True, "out_shape": out},
                       1, _message_bits(source.peak), flat=True)
    return Value(spec.ports, spec.step, out, peak)


def _routing(low: _Lowering, node: Node) -> None:
    op = node.op
    (source,), _ = low.inputs_at(node)
    c = source.shape[2]
    if isinstance(op, ew.GroupSum):
        size = c // op.groups
        matrix, peak = np.kron(np.eye(op.groups, dtype=np.int64), np.ones((1, size), np.int64)), source.peak * size
    elif isinstance(op, ew.GroupBroadcast):
        matrix, peak = np.kron(np.eye(c, dtype=np.int64), np.ones((op.repeats, 1), np.int64)), source.peak
    else:  # channel_slice
        matrix, peak = np.eye(c, dtype=np.int64)[op.start:op.stop], source.peak
    low.values[node.name] = _channel_map(low, node, source, matrix, f"{node.name}/map", peak)


def _concat(low: _Lowering, node: Node) -> None:
    sources, step = low.inputs_at(node)
    total = sum(s.shape[2] for s in sources)
    ports, offset = [], 0
    for i, source in enumerate(sources):
        c = source.shape[2]
        placement = np.zeros((total, c), np.int64)
        placement[offset:offset + c] = np.eye(c, dtype=np.int64)
        ports += _channel_map(low, node, source, placement, f"{node.name}/part{i}", source.peak).ports
        offset += c
    low.values[node.name] = Value(tuple(ports), step + 1, whc(node.tensor.shape), max(s.peak for s in sources))


def _nisf(low: _Lowering, node: Node) -> None:
    op = node.op
    (source,), step = low.inputs_at(node)
    binary = op.threshold is not None
    params = {"multiplier": 0 if binary else op.multiplier, "shift": 0 if binary else op.shift, "levels": op.levels,
              "threshold": op.threshold_int if binary else 0, "binary": int(binary)}
    low.neuron(node, "NISFNeuron", {"a_in": source.ports}, step, op.levels, params)


def _affine(low: _Lowering, node: Node) -> None:
    op = node.op
    (source,), step = low.inputs_at(node)
    low.neuron(node, "AffineNeuron", {"a_in": source.ports}, step, STATE_PEAK,
               {"multiplier": op.multiplier, "offset": op.offset_int, "shift": op.shift})


def _add(low: _Lowering, node: Node) -> None:
    op = node.op
    sources, step = low.inputs_at(node)
    ports = []
    for i, (source, multiplier, shift) in enumerate(zip(sources, op.multipliers, op.shifts)):
        if (multiplier, shift) != (1, 0):  # a rescaled operand: its own neuron, then the dendritic sum
            spec = low.add(ProcessSpec(f"{node.name}/rescale{i}", "RescaleNeuron", source.shape, step, {"a_in": source.ports},
                                       {"in_shape": source.shape, "multiplier": multiplier, "shift": shift}, node=node.name,
                                       message_bits=STATE_BITS))
            source = Value((f"{spec.name}.s_out",), step, source.shape, STATE_PEAK)
        ports += source.ports
    low.neuron(node, "AddNeuron", {"a_in": tuple(ports)}, step, min(STATE_PEAK, sum(s.peak for s in sources)), {})


def _complement(low: _Lowering, node: Node) -> None:
    (source,), step = low.inputs_at(node)
    one = int(node.op.one)
    low.neuron(node, "ComplementNeuron", {"a_in": source.ports}, step, abs(one) + source.peak, {"one": one})


def _mul(low: _Lowering, node: Node) -> None:
    sources, step = low.inputs_at(node)
    if any(low.graph[i].tensor.kind != "spike" for i in node.inputs):
        raise MedqkError(f"layer {node.name}: only products of spike maps are lowered (ProdNeuron's 24-bit state)")
    peak = sources[0].peak * sources[1].peak
    if peak > STATE_PEAK - 1:
        raise MedqkError(f"layer {node.name}: products up to {peak} exceed ProdNeuron's 24-bit state")
    shape = whc(node.tensor.shape)
    spec = low.add(ProcessSpec(node.name, "ProdNeuron", shape, step, {"a_in1": sources[0].ports, "a_in2": sources[1].ports},
                               {"vth": 0, "exp": 0}, node=node.name, message_bits=_message_bits(peak)))
    low.values[node.name] = Value((f"{spec.name}.s_out",), step, shape, peak)


def _output_activation(low: _Lowering, node: Node) -> None:
    if node.name != low.graph.output.name:
        raise MedqkError(f"layer {node.name}: {node.op.type} is lowered only as the graph's output (the host applies it)")
    (source,), _ = low.inputs_at(node)
    low.values[node.name] = source


#: op class -> its lowering onto Lava processes, or why there is none
LOWERING = {
    Input: _input, syn.Conv2d: _conv2d, syn.Upsample: _upsample, syn.ConvTranspose2d: FLOAT_ONLY,
    neurons.NISF: _nisf, neurons.Sigmoid: _output_activation, neurons.Softmax: _output_activation,
    neurons.ReLU: FLOAT_ONLY, ew.Add: _add, ew.Mul: _mul, ew.Affine: _affine, ew.BatchNorm: FLOAT_ONLY,
    ew.Complement: _complement, ew.GroupSum: _routing, ew.GroupBroadcast: _routing, ew.ChannelSlice: _routing,
    ew.Concat: _concat, ew.MaxPool2d: _maxpool,
}


def lower(graph: Graph) -> LavaGraph:
    """The Lava library graph of a quantized IR graph (see the module docstring). Refuses, by node
    name, an op without a lowering, a node that is not quantized, and a layer whose dendritic sums
    could wrap."""
    low = _Lowering(graph)
    for node in graph.nodes():
        try:
            lowering = rule(LOWERING, node.op, "Lava library lowering")
        except OpRefused as error:
            raise MedqkError(f"node {node.name}: {error}") from None
        if not node.op.is_quantized:
            raise MedqkError(f"node {node.name} ({node.op.type}) is not quantized; the Lava graph runs integer graphs")
        lowering(low, node)
    out = low.neuron_output(low.values[graph.output.name], "output")
    sink = low.add(ProcessSpec("output", "LogitSink", out.shape, out.step, {"a_in": out.ports}, {}, node=graph.output.name))
    return LavaGraph(low.processes, sink.name, sink.valid_step)
