"""The Lava processes of a lowered medqk graph: what each one is, its ports and its Vars.

How they compute is in ``lava_models`` (Lava's own split: a process says what it is, a process
model how it computes). Every array travels as int32 NCHW with batch 1; the values are the 24-bit
graded-spike payloads of Loihi 2 (spikes 0..D, or fixed-point real values). Each process fires
once, at its ``fire_step`` (see ``lava_plan`` for the timing rule).

Lava finds process models by executing every module in this folder as a top-level module (outside
``sys.modules``), so the modules here must stay free of side effects and importable that way:
absolute imports, and no dataclasses under ``from __future__ import annotations``.
"""
from __future__ import annotations

import time

import numpy as np

from medqk.deploy.lava_runtime import require_lava

require_lava()  # before Lava's own imports: they fail after a tqdm bar unless this runs first

from lava.magma.core.process.ports.ports import InPort, OutPort  # noqa: E402
from lava.magma.core.process.process import AbstractProcess  # noqa: E402
from lava.magma.core.process.variable import Var  # noqa: E402

from medqk.convert.fixed_point import STATE_BITS, saturated_count
from medqk.deploy.lava_plan import COUNTERS, MAX_INPUTS, MAX_OUTPUTS, LayerPlan
from medqk.errors import MedqkError

#: Shape of the ports a fused layer leaves unconnected.
UNUSED = (1,)


def port_shape(shape) -> tuple[int, ...]:
    """Port shape of a value of shape (C, H, W): NCHW with batch 1."""
    return (1, *map(int, shape))


def in_port(i: int) -> str:
    return f"in_{i}"


def out_port(i: int) -> str:
    return f"out_{i}"


class HostSource(AbstractProcess):
    """The graph's input: an int array given by the host, held in ``data`` and sent once at step 1."""

    def __init__(self, data: np.ndarray, name: str = "input"):
        data = np.asarray(data)
        if data.dtype.kind not in "iu" or data.ndim != 4 or data.shape[0] != 1:
            raise MedqkError(f"Lava input {name!r}: expected an integer array [1, C, H, W], got {data.dtype} {data.shape}")
        if saturated_count(data, STATE_BITS):
            raise MedqkError(f"Lava input {name!r}: values outside the {STATE_BITS}-bit payload range")
        super().__init__(name=name, fire_step=1)
        self.data = Var(shape=data.shape, init=data.astype(np.int32))
        self.s_out = OutPort(shape=data.shape)


class FusedLayer(AbstractProcess):
    """A fused layer: receives the values of ``plan.inputs`` on ``in_0..``, evaluates ``plan.nodes``
    and sends ``plan.outputs`` on ``out_0..``, once, at ``fire_step``.

    Vars: ``counters`` [nodes, len(COUNTERS)] activity per plan node (``lava_plan.COUNTERS``);
    ``busy_ns`` [1] the wall time its fire step took in the model (receive, compute, send).
    """

    def __init__(self, plan: LayerPlan, fire_step: int):
        super().__init__(name=plan.name, plan=plan, fire_step=int(fire_step))
        shapes = plan.shapes()
        for i in range(MAX_INPUTS):
            shape = port_shape(plan.inputs[i][1]) if i < len(plan.inputs) else UNUSED
            setattr(self, in_port(i), InPort(shape=shape))
        for i in range(MAX_OUTPUTS):
            shape = port_shape(shapes[plan.outputs[i]]) if i < len(plan.outputs) else UNUSED
            setattr(self, out_port(i), OutPort(shape=shape))
        self.counters = Var(shape=(len(plan.nodes), len(COUNTERS)), init=np.zeros((len(plan.nodes), len(COUNTERS)), np.int64))
        self.busy_ns = Var(shape=(1,), init=np.zeros(1, np.int64))

    @property
    def plan(self) -> LayerPlan:
        return self.proc_params["plan"]

    def input_port(self, value: str) -> InPort:
        return getattr(self, in_port([name for name, _ in self.plan.inputs].index(value)))

    def output_port(self, value: str) -> OutPort:
        return getattr(self, out_port(self.plan.outputs.index(value)))


class OutputSink(AbstractProcess):
    """Receives one value at ``fire_step`` and hands it to the host.

    It passes the array to the host through an external pipe (one message) rather than a Var: Lava
    reads a Var back one float64 element per message (about 35,000 values a second here).
    """

    def __init__(self, shape, fire_step: int, name: str = "output"):
        super().__init__(name=name, fire_step=int(fire_step))
        self.a_in = InPort(shape=port_shape(shape))
        self.to_host = OutPort(shape=port_shape(shape))
        self.to_host.flag_external_pipe(buffer_size=1)

    def read(self, timeout_s: float = 10.0) -> np.ndarray:
        """The received value as int64 [1, C, H, W]; call once, after the run, before stopping it."""
        pipe = self.to_host.external_pipe_csp_recv_port
        # The sink sent before the run returned; the pipe's listener thread may not have seen it yet.
        deadline = time.monotonic() + timeout_s
        while not pipe.probe():
            if time.monotonic() > deadline:
                raise MedqkError(f"Lava sink {self.name!r} received nothing: did the run reach its fire step "
                                 f"{self.proc_params['fire_step']}?")
            time.sleep(0.001)
        return pipe.recv().astype(np.int64)
