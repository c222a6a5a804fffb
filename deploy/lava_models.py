"""Fixed-point process models (tag ``fixed_pt``) of the processes in ``lava_processes``.

Integer semantics are those of ``medqk.convert.fixed_point`` (the single source of the rounding
rules) and of the quantized IR ops (``medqk.convert.synapses``, ``neurons``, ``elementwise``):

    conv2d      saturate(shift_round(conv(x, weight_mantissa) + bias_acc, shift), 24)
    upsample    shift_round(Uh @ x @ Uw.T, 2 * frac_bits)   per channel; Uh, Uw fixed integer synapses
    nisf        clip(shift_round_half_even(x * multiplier, shift), 0, levels)
    add         saturate(sum_i shift_round(x_i * multipliers[i], shifts[i]), 24)
    mul         a * b
    affine      saturate(shift_round(x * multiplier[c] + offset_int[c], shift), 24)
    complement  one - x
    group_sum, group_broadcast, concat: channel sums, repeats and concatenation
    sigmoid     the integer logits pass through (probabilities are computed on the host)

Synapses run through torch on floats, which is exact here: every operand is an integer and every
partial sum is bounded by ``max|x| * max_o sum|w_o|``; below 2**24 float32 holds all of them
exactly, below 2**53 float64 does, whatever the summation order. Each process does its work once,
at its fire step, and nothing at the other steps.
"""
import dataclasses
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from medqk.convert.fixed_point import STATE_BITS, saturate, saturated_count, shift_round, shift_round_half_even
from medqk.convert.graph import Node
from medqk.convert.synapses import fan_out as synaptic_fan_out
from medqk.convert.synapses import interp_matrix_int
from medqk.deploy.lava_plan import COUNTERS, MAX_INPUTS, MAX_OUTPUTS, LayerPlan
from medqk.deploy.lava_processes import FusedLayer, HostSource, OutputSink, in_port, out_port
from medqk.errors import MedqkError

#: every integer of smaller magnitude is exact in float32 / float64
_FLOAT32_EXACT = 2**24
_FLOAT64_EXACT = 2**53

Kernel = Callable[..., np.ndarray]


# -- synapses ---------------------------------------------------------------------------------

def _exact_float(peak: int, where: str) -> torch.dtype:
    """The cheapest float type in which every partial sum up to ``peak`` is an exact integer."""
    if peak < _FLOAT32_EXACT:
        return torch.float32
    if peak < _FLOAT64_EXACT:
        return torch.float64
    raise MedqkError(f"{where}: partial sums up to {peak} exceed 2^53; no exact float kernel")


def _peak(x: np.ndarray) -> int:
    return int(np.max(np.abs(x), initial=0))


def _conv2d(node: Node, in_shapes) -> Kernel:
    op = node.op
    weight = torch.from_numpy(np.asarray(op.weight_mantissa, dtype=np.int64))
    l1 = int(weight.abs().flatten(1).sum(1).max())  # largest sum |w| over one output's receptive field
    weights = {dtype: weight.to(dtype) for dtype in (torch.float32, torch.float64)}
    bias = np.asarray(op.bias_acc, dtype=np.int64)[None, :, None, None]

    def run(x):
        peak = _peak(x)
        if peak == 0:  # no event arrived: only the bias
            acc = np.zeros((1, op.out_channels, *op.out_shape([x.shape[1:]])[1:]), np.int64)
        else:
            dtype = _exact_float(peak * l1, node.name)
            acc = F.conv2d(torch.from_numpy(x).to(dtype), weights[dtype], stride=op.stride,
                           padding=op.padding, groups=op.groups).to(torch.int64).numpy()
        return saturate(shift_round(acc + bias, op.shift))
    return run


def _upsample(node: Node, in_shapes) -> Kernel:
    op = node.op
    _, h, w = in_shapes[0]
    uh = interp_matrix_int(h, h * op.factor, op.frac_bits)
    uw = interp_matrix_int(w, w * op.factor, op.frac_bits)
    l1 = int(np.abs(uh).sum(1).max()) * int(np.abs(uw).sum(1).max())
    mats = {dtype: (torch.from_numpy(uh).to(dtype), torch.from_numpy(uw.T.copy()).to(dtype))
            for dtype in (torch.float32, torch.float64)}

    def run(x):
        dtype = _exact_float(_peak(x) * l1, node.name)
        left, right = mats[dtype]
        z = torch.matmul(torch.matmul(left, torch.from_numpy(x).to(dtype)), right)
        return shift_round(z.to(torch.int64).numpy(), 2 * op.frac_bits)
    return run


# -- neurons and element-wise ops ---------------------------------------------------------------

def _nisf(node, in_shapes) -> Kernel:
    op = node.op
    return lambda x: np.clip(shift_round_half_even(x * op.multiplier, op.shift), 0, op.levels)


def _add(node, in_shapes) -> Kernel:
    op = node.op
    return lambda *xs: saturate(sum(shift_round(x * m, k) for x, m, k in zip(xs, op.multipliers, op.shifts)))


def _mul(node, in_shapes) -> Kernel:
    return lambda a, b: a * b


def _affine(node, in_shapes) -> Kernel:
    op = node.op
    m = np.asarray(op.multiplier, dtype=np.int64)[None, :, None, None]
    b = np.asarray(op.offset_int, dtype=np.int64)[None, :, None, None]
    return lambda x: saturate(shift_round(x * m + b, op.shift))


def _complement(node, in_shapes) -> Kernel:
    one = node.op.one
    if one != int(one):
        raise MedqkError(f"node {node.name}: complement of {one} is not an integer op")
    return lambda x: int(one) - x


def _group_sum(node, in_shapes) -> Kernel:
    groups = node.op.groups
    return lambda x: x.reshape(x.shape[0], groups, -1, *x.shape[2:]).sum(axis=2)


def _group_broadcast(node, in_shapes) -> Kernel:
    return lambda x: np.repeat(x, node.op.repeats, axis=1)


def _concat(node, in_shapes) -> Kernel:
    return lambda *xs: np.concatenate(xs, axis=1)


def _sigmoid(node, in_shapes) -> Kernel:
    return lambda x: x


#: IR op type -> builder of its kernel (given the node and its input shapes)
KERNELS = {
    "conv2d": _conv2d, "upsample": _upsample, "nisf": _nisf, "add": _add, "mul": _mul, "affine": _affine,
    "complement": _complement, "group_sum": _group_sum, "group_broadcast": _group_broadcast,
    "concat": _concat, "sigmoid": _sigmoid,
}


@dataclasses.dataclass
class _Step:
    """One plan node, ready to run: its kernel, and which values it may free afterwards."""

    node: Node
    kernel: Kernel
    fan_out: tuple[int, np.ndarray, np.ndarray] | None
    release: tuple[str, ...]

    def counters(self, args: list[np.ndarray], y: np.ndarray) -> list[int]:
        """This node's row of ``COUNTERS``: spikes of a NISF population, deliveries of a synapse."""
        found = {}
        if self.node.op.type == "nisf":
            found = {"nonzero": np.count_nonzero(y), "spike_sum": int(y.sum())}
        elif self.fan_out is not None:  # payloads and events, each times its fan-out
            per_channel, fh, fw = self.fan_out
            x = args[0]
            found = {"acs": per_channel * (fh @ x.sum(axis=(0, 1)) @ fw),
                     "events": per_channel * (fh @ (x != 0).sum(axis=(0, 1)) @ fw)}
        return [int(found.get(name, 0)) for name in COUNTERS]


def prepare(plan: LayerPlan) -> list[_Step]:
    """The plan's nodes as kernels with their weights converted once; values are freed after last use."""
    shapes = plan.shapes()
    last_use = {name: i for i, node in enumerate(plan.nodes) for name in node.inputs}
    keep = set(plan.outputs)
    steps = []
    for i, node in enumerate(plan.nodes):
        in_shapes = [shapes[name] for name in node.inputs]
        release = tuple(n for n in dict.fromkeys(node.inputs) if last_use[n] == i and n not in keep)
        fan_out = synaptic_fan_out(node.op, in_shapes[0]) if node.op.synaptic else None
        steps.append(_Step(node, KERNELS[node.op.type](node, in_shapes), fan_out, release))
    return steps


def _payload(y: np.ndarray, layer: str, value: str) -> np.ndarray:
    """``y`` as the int32 graded-spike payload it travels as; refuses values beyond 24 bits."""
    if saturated_count(y, STATE_BITS):
        raise MedqkError(f"layer {layer}: value {value} exceeds the {STATE_BITS}-bit graded-spike payload "
                         f"(range {int(y.min())}..{int(y.max())})")
    return y.astype(np.int32)


# -- process models ---------------------------------------------------------------------------

class _FiresOnce(PyLoihiProcessModel):
    """Does its work once, in the spike phase of its fire step; nothing at the other steps."""

    def run_spk(self) -> None:
        if self.time_step == self.proc_params["fire_step"]:
            self.fire()

    def fire(self) -> None:
        raise NotImplementedError


@implements(proc=HostSource, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyHostSourceModel(_FiresOnce):
    data: np.ndarray = LavaPyType(np.ndarray, np.int32)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32)

    def fire(self) -> None:
        self.s_out.send(self.data)


def _with_ports(cls):
    """Declare the fused layer's fixed sets of in and out ports on its model class."""
    for i in range(MAX_INPUTS):
        setattr(cls, in_port(i), LavaPyType(PyInPort.VEC_DENSE, np.int32))
    for i in range(MAX_OUTPUTS):
        setattr(cls, out_port(i), LavaPyType(PyOutPort.VEC_DENSE, np.int32))
    return cls


@implements(proc=FusedLayer, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
@_with_ports
class PyFusedLayerModel(_FiresOnce):
    counters: np.ndarray = LavaPyType(np.ndarray, np.int64)
    busy_ns: np.ndarray = LavaPyType(np.ndarray, np.int64)

    def __init__(self, proc_params):
        super().__init__(proc_params)
        # Lava forks this process from the host. GNU OpenMP is not fork-safe: once the host has used
        # torch's thread pool, a forked child hangs in its first multi-threaded op (seen here). One
        # thread per process is safe; layers that fire in the same step still use all cores.
        torch.set_num_threads(1)
        self._plan: LayerPlan = proc_params["plan"]
        self._steps = prepare(self._plan)

    def fire(self) -> None:
        start = time.perf_counter_ns()
        plan = self._plan
        values = {name: getattr(self, in_port(i)).recv().astype(np.int64) for i, (name, _) in enumerate(plan.inputs)}
        for row, step in enumerate(self._steps):
            args = [values[name] for name in step.node.inputs]
            y = step.kernel(*args)
            self.counters[row] = step.counters(args, y)
            values[step.node.name] = y
            for name in step.release:
                del values[name]
        for i, name in enumerate(plan.outputs):
            getattr(self, out_port(i)).send(_payload(values[name], plan.name, name))
        self.busy_ns[0] = time.perf_counter_ns() - start


@implements(proc=OutputSink, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyOutputSinkModel(_FiresOnce):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32)
    to_host: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32)

    def fire(self) -> None:
        self.to_host.send(self.a_in.recv())


#: process class -> its fixed_pt model (lets the runtime skip Lava's search through this folder)
MODELS = {HostSource: PyHostSourceModel, FusedLayer: PyFusedLayerModel, OutputSink: PyOutputSinkModel}
