"""Loihi 2 resources of the Lava library graph (``lava_graph.lower``), counted process by process.

``library_resources(lowered)`` takes the processes that ``medqk inspect --lava`` lists and counts
what they would ask of a Loihi 2 chip under a stated placement (Intel's mapper is not public):

- every neuron process (medqk's neurons, Lava's ``ProdNeuron`` and ``GradedVec``) gets cores of its
  own, ``neurons_per_core`` neurons each, in Lava's flattened (W, H, C) order;
- a synapse process is stored in the cores of the neurons it feeds (a neuro core holds the synapses
  of its neurons): a ``Conv`` kernel whole in each of those cores (weight sharing), a ``Sparse`` or
  ``DelaySparse`` matrix's nonzero weights split between them by row;
- a core's input axons are the distinct presynaptic neurons whose spikes it receives, through a
  synapse or a direct port connection (an operand summed straight into a neuron's in port).

A neuron reads one element of its in port per channel, or several where digit planes or tap bytes
are concatenated along C (plane-major, ``lava_layout``): channel c reads every input channel c' with
c' = c modulo the smaller channel count. Every figure is defined, with its source and whether it is
confirmed, in ``DEFINITIONS``; the report repeats them beside the numbers (``definitions``).
"""
import dataclasses
import itertools
import math

import numpy as np

from medqk.deploy.lava_graph import SYNAPSES, LavaGraph, ProcessSpec
from medqk.deploy.lava_layout import lava_conv_weight
from medqk.deploy.lava_library import sparse_weights
from medqk.deploy.loihi2 import CORE_MEMORY_BYTES, FAN_IN_PER_CORE, LAVA, NEURONS_PER_CORE, Figure, Violation
from medqk.errors import MedqkError

#: placement rule that a core holds its neurons' synapses: stated for Loihi (Davies et al., IEEE Micro
#: 2018) and in public descriptions of Loihi 2's neuro cores; not a per-core figure from Intel
PLACEMENT = "placement: a neuro core holds the synapses of its neurons (Loihi 1 paper; Loihi 2 descriptions)"


@dataclasses.dataclass(frozen=True)
class Definition:
    what: str
    source: str
    #: True only where public Loihi 2 documentation or Lava's source gives the figure
    confirmed: bool


DEFINITIONS = {
    "neurons": Definition("neurons of a neuron process: one per element of its (W, H, C) shape",
                          "graph: the process's shape, as Lava sizes a neuron process", True),
    "relay_neurons": Definition("neurons of the GradedVec relays that carry a synapse's output to another synapse",
                                "graph: lava_graph.neuron_output", True),
    "cores": Definition("neuro cores: ceil(neurons / neurons_per_core) for each neuron process",
                        f"neurons per core: {NEURONS_PER_CORE.source}", False),
    "weights": Definition("weights a synapse process holds: a Conv's kernel as Lava stores it (digit planes and "
                          "merged groups included), a Sparse's or DelaySparse's nonzero weights",
                          "graph: lava_layout.lava_conv_weight, lava_library.sparse_weights (an upsampling's from "
                          "its tap bytes, as that matrix is built)", True),
    "weight_bits": Definition("bits per weight: 8-bit mantissas for Conv, 8 for tap bytes, 1 for 0/1 channel maps "
                              "and delay identities", "graph: the process's weight_bits", True),
    "synaptic_memory_bytes": Definition(
        "bytes of weights: weights x weight_bits / 8 in every core that holds them (a Conv's kernel once per core "
        "of the neurons it feeds)", f"graph weights; {PLACEMENT}; a kernel copy per core: assumed", False),
    "delay_slots": Definition("accumulators a DelaySparse adds to hold delayed input: its outputs x its delay",
                              f"{LAVA}: DelaySparse's a_buff is (outputs, max_delay + 1), one column being every "
                              "synapse's one-step buffer; how Loihi 2 stores delayed input is not published", True),
    "max_delay": Definition("longest delay of a DelaySparse; the lowering keeps each within lava_graph.MAX_DELAY = 63",
                            "graph; the bound (6-bit delays) is an estimate, not published for Loihi 2", False),
    "input_axons": Definition("input axons of a core: distinct presynaptic neurons whose spikes reach its neurons",
                              f"graph connectivity (Conv receptive fields and groups, Sparse nonzeros, direct ports); "
                              f"{PLACEMENT}", False),
}


@dataclasses.dataclass(frozen=True)
class Inflow:
    """One message summed into a neuron process: from ``source``'s neurons, through ``synapse``
    (None: a direct port connection, one-to-one)."""

    source: ProcessSpec
    synapse: ProcessSpec | None


def _process_name(port: str) -> str:
    return port.rsplit(".", 1)[0]


def inflows(spec: ProcessSpec, specs: dict) -> list[Inflow]:
    """What is summed into ``spec``'s in ports; ``specs``: every process by name."""
    inflow = []
    for sources in spec.inputs.values():
        for port in sources:
            sender = specs[_process_name(port)]
            if sender.kind in SYNAPSES:
                (pre,) = sender.inputs["s_in"]  # a synapse reads one neuron's output (lava_graph.neuron_output)
                inflow.append(Inflow(specs[_process_name(pre)], sender))
            else:
                inflow.append(Inflow(sender, None))
    return inflow


def distinct(indices: np.ndarray) -> np.ndarray:
    """The distinct values of ``indices``, sorted, through a mask over their range: one core's indices
    are dense in a small range, where this is several times faster than ``np.unique``'s sort."""
    if len(indices) == 0:
        return indices
    low = indices.min()
    seen = np.zeros(int(indices.max() - low) + 1, bool)
    seen[indices - low] = True
    return low + np.flatnonzero(seen)


def core_ranges(neurons: int, per_core: int) -> list[range]:
    return [range(start, min(start + per_core, neurons)) for start in range(0, neurons, per_core)]


def in_shape(spec: ProcessSpec) -> tuple:
    return tuple(spec.params.get("in_shape", spec.shape))


def compartments(spec: ProcessSpec, neurons: range) -> np.ndarray:
    """Flat indices of ``spec``'s in port that ``neurons`` (flat, (W, H, C) order) read (see the module
    docstring: channel c reads input channels c' = c modulo the smaller channel count)."""
    shape_in = in_shape(spec)
    c_in, c_out = shape_in[-1], spec.shape[-1]
    common = min(c_in, c_out)
    if max(c_in, c_out) % common or math.prod(shape_in[:-1]) != math.prod(spec.shape[:-1]):
        raise MedqkError(f"process {spec.name}: its in port {shape_in} and its neurons {spec.shape} are not "
                         "pixel-aligned with a whole number of channels per neuron")
    if c_in == c_out:
        return np.arange(neurons.start, neurons.stop)
    pixel, channel = np.divmod(np.arange(neurons.start, neurons.stop), c_out)
    channels = (channel % common)[:, None] + common * np.arange(c_in // common)
    return distinct((pixel[:, None] * c_in + channels).ravel())


def conv_presynaptic(conv: ProcessSpec, rows: np.ndarray) -> np.ndarray:
    """Flat (W, H, C) indices of the input neurons a ``Conv``'s output ``rows`` read: every tap of
    the receptive field inside the input, every input channel of the row's group (digit planes are
    groups of their own). Works on (pixel, group) cells, C being the fastest axis of both layouts."""
    p = conv.params
    w_in, h_in, c_in = p["in_shape"]
    _, h_out, c_out = p["out_shape"]
    groups = p["groups"] * p["planes"]
    (kh, kw), (sh, sw), (ph, pw) = p["weight"].shape[2:], p["stride"], p["padding"]
    pixel, channel = np.divmod(rows, c_out)
    pixel, group = np.divmod(distinct(pixel * groups + channel // (c_out // groups)), groups)
    x, y = np.divmod(pixel, h_out)
    reached = []
    for j, i in itertools.product(range(kw), range(kh)):
        xi, yi = x * sw - pw + j, y * sh - ph + i
        inside = (xi >= 0) & (xi < w_in) & (yi >= 0) & (yi < h_in)
        reached.append(((xi * h_in + yi) * groups + group)[inside])
    width = c_in // groups
    return (distinct(np.concatenate(reached))[:, None] * width + np.arange(width)).ravel()


def upsample_presynaptic(upsample: ProcessSpec, rows: np.ndarray) -> tuple[np.ndarray, int]:
    """Flat indices of the input neurons an upsampling ``Sparse``'s output ``rows`` read, and the
    weights those rows hold, from its tap bytes without building its matrix (at 256 x 256 that
    matrix holds tens of millions of weights): row (pixel, byte k, plane-channel j) of
    ``lava_library.tap_weights`` reads input (pixel_in, j) wherever byte matrix k has a nonzero
    at (pixel, pixel_in)."""
    taps, width = upsample.params["taps"], upsample.params["planes"] * upsample.params["channels"]
    cell, j = np.divmod(rows, width)
    pixel, byte = np.divmod(cell, len(taps))
    reached, weights = [], 0
    for k, matrix in enumerate(taps):
        picked, lanes = pixel[byte == k], j[byte == k]
        starts, counts = matrix.indptr[picked], np.diff(matrix.indptr)[picked]
        # the nonzeros of each picked row: matrix.indices[start .. start + count - 1]
        positions = np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
        reached.append(matrix.indices[positions] * width + np.repeat(lanes, counts))
        weights += int(counts.sum())
    return distinct(np.concatenate(reached)), weights


class _Placement:
    """The placement of one lowered graph: each synapse's weights built once, and what the cores
    placed so far store and break."""

    def __init__(self, lowered: LavaGraph, neurons_per_core: int):
        self.specs = {spec.name: spec for spec in lowered.processes}
        self.per_core = neurons_per_core
        self._weights: dict[str, object] = {}
        synapses = [spec.name for spec in lowered.processes if spec.kind in SYNAPSES]
        #: per synapse process: the weight bits stored over all cores, and the cores storing them
        self.stored_bits = dict.fromkeys(synapses, 0)
        self.storing_cores = dict.fromkeys(synapses, 0)
        self.violations: list[Violation] = []

    def weights(self, synapse: ProcessSpec):
        """A Conv's Lava kernel or a channel map's or delay's CSR matrix."""
        if synapse.name not in self._weights:
            p = synapse.params
            self._weights[synapse.name] = (lava_conv_weight(p["weight"], p["planes"], p["groups"])
                                           if synapse.kind == "Conv" else sparse_weights(synapse))
        return self._weights[synapse.name]

    def weight_count(self, synapse: ProcessSpec) -> int:
        """The weights a synapse process holds: a Conv's whole kernel (zeros included: it is stored as
        is), a sparse matrix's nonzeros."""
        if "taps" in synapse.params:
            return sum(t.nnz for t in synapse.params["taps"]) * synapse.params["planes"] * synapse.params["channels"]
        weights = self.weights(synapse)
        return int(weights.size) if synapse.kind == "Conv" else int(weights.nnz)

    def reach(self, inflow: Inflow, rows: np.ndarray) -> tuple[np.ndarray, int]:
        """The presynaptic neurons that reach ``rows`` of a core's in port through ``inflow``, and
        the weights that core stores for it."""
        if inflow.synapse is None:
            return rows, 0
        if "taps" in inflow.synapse.params:
            return upsample_presynaptic(inflow.synapse, rows)
        weights = self.weights(inflow.synapse)
        if inflow.synapse.kind == "Conv":
            return conv_presynaptic(inflow.synapse, rows), weights.size  # the whole kernel in every core
        contiguous = rows[-1] - rows[0] + 1 == len(rows)  # slicing a range of rows is much faster
        part = weights[rows[0]:rows[-1] + 1] if contiguous else weights[rows]
        return distinct(part.indices), part.nnz

    def inflows(self, spec: ProcessSpec) -> list[Inflow]:
        """``inflows``, checked: a direct port connection is one-to-one."""
        inflow = inflows(spec, self.specs)
        for direct in (i for i in inflow if i.synapse is None and i.source.size != math.prod(in_shape(spec))):
            raise MedqkError(f"process {spec.name}: its input from {direct.source.name} has {direct.source.size} "
                             f"elements, its in port {math.prod(in_shape(spec))}")
        return inflow

    def core(self, spec: ProcessSpec, feeds: list[Inflow], neurons: range) -> tuple[int, dict[str, int]]:
        """Input axons of the core holding ``neurons`` of ``spec`` (fed by ``feeds``), and the weight
        bits it stores per synapse process."""
        rows = compartments(spec, neurons)
        reached: dict[str, list] = {}
        bits: dict[str, int] = {}
        for inflow in feeds:
            presynaptic, weights = self.reach(inflow, rows)
            reached.setdefault(inflow.source.name, []).append(presynaptic)
            if weights:  # a synapse with no weight in these rows is not stored in this core
                bits[inflow.synapse.name] = bits.get(inflow.synapse.name, 0) + weights * inflow.synapse.weight_bits
        # a presynaptic neuron reaching the core by two paths still needs one axon
        axons = sum(len(parts[0]) if len(parts) == 1 else len(distinct(np.concatenate(parts))) for parts in reached.values())
        return axons, bits

    def neuron_process(self, spec: ProcessSpec) -> dict:
        """The row of one neuron process, its cores placed: per core its input axons and synaptic
        memory; the synapses it stores and the limits it breaks are recorded."""
        feeds, axons, memory = self.inflows(spec), [], []
        for neurons in core_ranges(spec.size, self.per_core):
            core_axons, bits = self.core(spec, feeds, neurons)
            for name, stored in bits.items():
                self.stored_bits[name] += stored
                self.storing_cores[name] += 1
            axons.append(core_axons)
            memory.append(_bytes(sum(bits.values())))
        self.violations += [v for limit, per_core in ((FAN_IN_PER_CORE, axons), (CORE_MEMORY_BYTES, memory))
                            if (v := _worst_core(spec.name, limit, per_core))]
        return {"name": spec.name, "class": spec.cls, "library": spec.library, "neurons": spec.size,
                "cores": len(axons), "input_axons": axons, "synaptic_memory_bytes": memory}

    def synapse_process(self, spec: ProcessSpec) -> dict:
        """The row of one synapse process (after the neuron processes it feeds are placed)."""
        return {"name": spec.name, "class": spec.cls, "weights": self.weight_count(spec), "weight_bits": spec.weight_bits,
                "cores": self.storing_cores[spec.name], "synaptic_memory_bytes": _bytes(self.stored_bits[spec.name]),
                "delay": spec.delay, "delay_slots": spec.size * spec.delay if spec.kind == "DelaySparse" else 0}


def _worst_core(process: str, limit: Figure, per_core: list[int]) -> Violation | None:
    """One violation per process and limit (a layer at 256 x 256 spans hundreds of cores): how many
    of its cores break ``limit`` and the worst of them."""
    over = [index for index, value in enumerate(per_core) if value > limit.value]
    if not over:
        return None
    worst = max(over, key=per_core.__getitem__)
    return Violation(f"{process}, {len(over)} of {len(per_core)} cores (worst: core {worst})", limit, per_core[worst])


def _bytes(bits: int) -> int:
    return math.ceil(bits / 8)


def library_resources(lowered: LavaGraph, neurons_per_core: int = NEURONS_PER_CORE.value) -> dict:
    """The Loihi 2 resources of ``lowered`` (see the module docstring), JSON-ready: per neuron
    process its neurons, cores and per core the input axons and synaptic memory; per synapse process
    its weights, bits, cores and memory, delay and delay slots; totals; the limits broken (by
    process and core); the definitions and sources of every figure."""
    if neurons_per_core < 1:
        raise MedqkError(f"neurons per core must be at least 1, got {neurons_per_core}")
    placement = _Placement(lowered, neurons_per_core)
    neuron_rows = [placement.neuron_process(spec) for spec in lowered.processes if spec.is_neuron]
    synapse_rows = [placement.synapse_process(spec) for spec in lowered.processes if spec.kind in SYNAPSES]
    return {
        "neurons_per_core": {"value": neurons_per_core, "source": NEURONS_PER_CORE.source
                             if neurons_per_core == NEURONS_PER_CORE.value else "chosen by the caller", "confirmed": False},
        "totals": _totals(lowered, neuron_rows, synapse_rows, sum(placement.stored_bits.values())),
        "neuron_processes": neuron_rows,
        "synapse_processes": synapse_rows,
        "violations": [v.to_dict() for v in placement.violations],
        "definitions": {key: dataclasses.asdict(d) for key, d in DEFINITIONS.items()},
    }


def _totals(lowered: LavaGraph, neuron_rows: list, synapse_rows: list, stored_bits: int) -> dict:
    delays = [row for row in synapse_rows if row["class"].endswith("DelaySparse")]
    return {
        "neurons": sum(row["neurons"] for row in neuron_rows),
        "relay_neurons": sum(spec.size for spec in lowered.processes if spec.kind == "GradedVec"),
        "cores": sum(row["cores"] for row in neuron_rows),
        "synaptic_memory_bytes": _bytes(stored_bits),
        "delay_synapses": len(delays),
        "delay_slots": sum(row["delay_slots"] for row in delays),
        "max_delay": max((row["delay"] for row in delays), default=0),
        "max_input_axons_per_core": max((max(row["input_axons"]) for row in neuron_rows), default=0),
    }
