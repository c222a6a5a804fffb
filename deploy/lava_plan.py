"""What a fused Lava layer computes and when it runs: layer plans and the timing rule (no Lava here).

A *fused layer* is one Lava process that evaluates a small sub-DAG of the quantized IR (its
synapses and the neuron and element-wise ops that follow them). Lava charges a fixed cost per
process per time step, so fewer, larger processes are faster than one process per IR op; see
the README (section "Running the integer graph in Lava").

Timing (static input, one step per hop, single-shot messages):

- The host's input is held by a source process, which sends it once, at step 1.
- A process fires at ``fire_steps`` = one step after the latest of its producers has fired. At its
  fire step it receives each input once (Lava's channels have kept the message since the producer
  sent it), computes once, and sends each output once. Before and after, it does nothing and sends
  nothing: no zeros travel, and a step in which a process does not fire costs only Lava's
  synchronisation.
- Branches of different depth therefore need no delay lines: a residual input that was ready early
  simply waits in its channel until the consumer's fire step.
- The graph needs as many steps as the sink's fire step: the depth of the process DAG plus one.
  The schedule is computed before anything runs; a consumer never waits for a producer of a later
  step, so the run cannot deadlock.

A consumer fires one step after its producers (not in the same step) as on Loihi, where a spike
sent in one time step is delivered in the next.
"""
import dataclasses
import graphlib
from typing import Hashable, Iterable, Mapping

from medqk.convert.graph import Node
from medqk.errors import MedqkError

#: IR op types the Lava process models compute (``input`` is the source process, not an op).
LAVA_OPS = frozenset({
    "conv2d", "upsample", "nisf", "add", "mul", "affine", "complement",
    "group_sum", "group_broadcast", "concat", "sigmoid", "softmax", "maxpool2d", "channel_slice",
})
#: Ports of one fused-layer process. Lava pairs every port of a process with a port declared on its
#: process model class, so the model declares a fixed number of each; unused ones stay unconnected.
MAX_INPUTS = 8
MAX_OUTPUTS = 8
#: One row per plan node in a fused layer's ``counters`` Var, these columns:
#: NISF populations: ``nonzero`` graded spikes sent and ``spike_sum`` (sum of their values);
#: synaptic nodes: ``acs`` (sum of delivered payloads x fan-out) and ``events`` (nonzero inputs x
#: fan-out, the synaptic operations of graded spikes). Other nodes keep zeros.
COUNTERS = ("nonzero", "spike_sum", "acs", "events")

Shape = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class LayerPlan:
    """One fused layer: values arriving on its in ports, the IR nodes it evaluates, values it sends.

    ``inputs`` pairs each in port (in order) with the value it carries and that value's shape
    (C, H, W); ``nodes`` are quantized IR nodes in topological order whose inputs are plan inputs or
    earlier nodes; ``outputs`` names the node values sent on the out ports, in order.
    """

    name: str
    inputs: tuple[tuple[str, Shape], ...]
    nodes: tuple[Node, ...]
    outputs: tuple[str, ...]

    def __post_init__(self):
        if not self.nodes:
            raise MedqkError(f"layer {self.name}: a fused layer needs at least one op")
        if not 1 <= len(self.inputs) <= MAX_INPUTS or not 1 <= len(self.outputs) <= MAX_OUTPUTS:
            raise MedqkError(f"layer {self.name}: {len(self.inputs)} inputs and {len(self.outputs)} outputs; "
                             f"a fused layer has 1..{MAX_INPUTS} inputs and 1..{MAX_OUTPUTS} outputs")
        for node in self.nodes:
            if node.op.type not in LAVA_OPS:
                raise MedqkError(f"the Lava backend has no process model for op {node.op.type!r} (node {node.name})")
            if not node.op.is_quantized:
                raise MedqkError(f"node {node.name} ({node.op.type}) is not quantized; the Lava backend runs "
                                 "integer graphs (convert the model first)")
        self.shapes()  # checks wiring and shapes

    def shapes(self) -> dict[str, Shape]:
        """Shape (C, H, W) of every value the layer receives or computes."""
        shapes = {name: tuple(shape) for name, shape in self.inputs}
        for node in self.nodes:
            missing = [i for i in node.inputs if i not in shapes]
            if missing:
                raise MedqkError(f"layer {self.name}: node {node.name} reads {missing}, which the layer neither "
                                 "receives nor computes before it")
            try:
                shapes[node.name] = tuple(node.op.out_shape([shapes[i] for i in node.inputs]))
            except ValueError as error:
                raise MedqkError(f"layer {self.name}: node {node.name}: {error}") from None
        unknown = [o for o in self.outputs if o not in shapes]
        if unknown:
            raise MedqkError(f"layer {self.name}: outputs {unknown} are not computed by the layer")
        return shapes


def fire_steps(producers: Mapping[Hashable, Iterable[Hashable]]) -> dict[Hashable, int]:
    """The time step at which each process fires, from ``{process: its producers}``.

    A process without producers (a source) fires at step 1; any other at one step after its latest
    producer. The number of steps a run needs is the largest value.
    """
    graph = {key: set(values) for key, values in producers.items()}
    unknown = {p for ps in graph.values() for p in ps} - graph.keys()
    if unknown:
        raise MedqkError(f"processes {sorted(map(str, unknown))} are used as producers but not defined")
    steps: dict[Hashable, int] = {}
    try:
        for key in graphlib.TopologicalSorter(graph).static_order():
            steps[key] = 1 + max((steps[p] for p in graph[key]), default=0)
    except graphlib.CycleError as error:
        raise MedqkError(f"the process graph has a cycle through {error.args[1]}") from None
    return steps
