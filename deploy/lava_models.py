"""Fixed-point process models (tag ``fixed_pt``) of the processes in ``lava_processes``.

A fused layer computes its IR nodes with ``medqk.convert.interpret_int.evaluate``: the integer
semantics of every op (and its 24-bit saturation) are written once, in the interpreter, and the
Lava run is bit-exact with it by construction of the arithmetic; what the Lava backend adds is
the process graph, the ports and spike payloads between layers, the timing (each process does
its work once, at its fire step, and nothing at the other steps) and the activity counters.
A synapse that receives no spike does no multiply-accumulate work (``interpret_int.conv2d``).
"""
import dataclasses
import time

import numpy as np
import torch
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from medqk.convert import interpret_int
from medqk.convert.fixed_point import STATE_BITS, saturated_count
from medqk.convert.graph import Node
from medqk.convert.synapses import fan_out as synaptic_fan_out
from medqk.deploy.lava_plan import COUNTERS, MAX_INPUTS, MAX_OUTPUTS, LayerPlan
from medqk.deploy.lava_processes import FusedLayer, HostSource, OutputSink, in_port, out_port
from medqk.errors import MedqkError


@dataclasses.dataclass
class _Step:
    """One plan node, ready to run: its fan-out (synapses) and which values it may free afterwards."""

    node: Node
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
    """The plan's nodes with their fan-out counters; values are freed after last use."""
    shapes = plan.shapes()
    last_use = {name: i for i, node in enumerate(plan.nodes) for name in node.inputs}
    keep = set(plan.outputs)
    steps = []
    for i, node in enumerate(plan.nodes):
        in_shapes = [shapes[name] for name in node.inputs]
        release = tuple(n for n in dict.fromkeys(node.inputs) if last_use[n] == i and n not in keep)
        fan_out = synaptic_fan_out(node.op, in_shapes[0]) if node.op.synaptic else None
        steps.append(_Step(node, fan_out, release))
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
        values = {name: getattr(self, in_port(i)).recv().astype(np.int32, copy=False) for i, (name, _) in enumerate(plan.inputs)}
        for row, step in enumerate(self._steps):
            args = [values[name] for name in step.node.inputs]
            y, _ = interpret_int.evaluate(step.node.op, *args)
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
