"""Loihi 2 resource model: the cores, chips and memory a lowered network needs, and the limits it breaks.

It works on per-layer numbers (``LayerDemand``: neurons, stored synaptic weights, weight bits,
fan-in, payload bits), so it serves any lowering. The figures below say where each comes from and
whether a primary source confirms it; a report built on them repeats that distinction.

Model (documented assumptions, not Intel's mapper):

- Each layer gets its own cores; a core holds up to ``NEURONS_PER_CORE`` neurons and
  ``CORE_MEMORY_BYTES`` of memory, shared between the layer's synaptic weights and neuron state.
- A layer's weights are spread over its neurons: each neuron costs ``synapses / neurons`` weights of
  ``weight_bits`` plus ``NEURON_STATE_BITS`` of state. (Pass the weights the layer must store: the
  connections of a dense layer, or the shared kernels of a convolution times the cores that hold
  them, by the lowering's convention.)
- Chips: enough for the cores (``CORES_PER_CHIP``), the neurons (``NEURONS_PER_CHIP``) and the
  synapses (``SYNAPSES_PER_CHIP``), whichever needs most.
"""
import dataclasses
import math
from typing import Iterable

#: Intel Labs, "Taking Neuromorphic Computing to the Next Level with Loihi 2", technology brief (2021).
BRIEF = "Intel Loihi 2 technology brief (2021)"
#: lava-nc 0.10 fixed-point process models (lava/proc/{dense,conv,lif}/models.py)
LAVA = "lava-nc 0.10 fixed-point process models"
#: M. Davies et al., "Loihi: A Neuromorphic Manycore Processor with On-Chip Learning", IEEE Micro 38(1), 2018.
LOIHI1 = "Davies et al., IEEE Micro 2018 (Loihi 1)"


@dataclasses.dataclass(frozen=True)
class Figure:
    value: int
    what: str
    source: str
    #: True: stated by the source; False: an estimate derived or carried over (see ``source``)
    confirmed: bool

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


CORES_PER_CHIP = Figure(128, "neuro cores per chip (plus 6 embedded x86 cores)", BRIEF, True)
NEURONS_PER_CHIP = Figure(1_048_576, "neurons per chip ('up to 1 million')", BRIEF, True)
SYNAPSES_PER_CHIP = Figure(120_000_000, "synapses per chip ('up to 120 million')", BRIEF, True)
CORE_MEMORY_BYTES = Figure(192 * 1024, "memory per neuro core, shared by synapses and neuron state (192 KB)", BRIEF, True)
NEURONS_PER_CORE = Figure(8192, "neurons per core", "estimate: 1,048,576 neurons / 128 cores (no primary source)", False)
WEIGHT_BITS = Figure(8, "weight mantissa bits (signed, shared exponent per layer)", LAVA, True)
PAYLOAD_BITS = Figure(24, "graded-spike payload bits in Lava's fixed-point models (hardware: up to 32)", f"{LAVA}; {BRIEF}", True)
NEURON_STATE_BITS = Figure(48, "state bits per neuron (two 24-bit variables, as Lava's fixed-point LIF u and v)",
                           f"estimate from {LAVA}", False)
FAN_IN_PER_CORE = Figure(4096, "input axons per core", f"estimate: not published for Loihi 2; {LOIHI1}", False)

FIGURES = (CORES_PER_CHIP, NEURONS_PER_CHIP, SYNAPSES_PER_CHIP, CORE_MEMORY_BYTES, NEURONS_PER_CORE,
           WEIGHT_BITS, PAYLOAD_BITS, NEURON_STATE_BITS, FAN_IN_PER_CORE)


@dataclasses.dataclass(frozen=True)
class LayerDemand:
    """What one layer asks of the chip."""

    name: str
    neurons: int
    #: synaptic weights the layer stores
    synapses: int
    weight_bits: int
    #: inputs per neuron
    fan_in: int
    payload_bits: int = PAYLOAD_BITS.value


@dataclasses.dataclass(frozen=True)
class Violation:
    layer: str
    limit: Figure
    value: int

    def __str__(self) -> str:
        kind = "limit" if self.limit.confirmed else "estimated limit"
        return f"{self.layer}: {self.limit.what} {self.value} > {kind} {self.limit.value} ({self.limit.source})"

    def to_dict(self) -> dict:
        return {"layer": self.layer, "limit": self.limit.what, "value": self.value, "bound": self.limit.value,
                "confirmed": self.limit.confirmed, "text": str(self)}


@dataclasses.dataclass(frozen=True)
class LayerResources:
    name: str
    neurons: int
    synapses: int
    memory_bytes: int
    neurons_per_core: int
    cores: int


@dataclasses.dataclass(frozen=True)
class ResourceReport:
    layers: tuple[LayerResources, ...]
    violations: tuple[Violation, ...]
    neurons: int
    synapses: int
    memory_bytes: int
    cores: int
    chips: int

    def to_dict(self) -> dict:
        """JSON-ready: totals, per-layer figures, violations and the figures used (with their sources)."""
        return {
            "totals": {k: getattr(self, k) for k in ("neurons", "synapses", "memory_bytes", "cores", "chips")},
            "layers": [dataclasses.asdict(layer) for layer in self.layers],
            "violations": [v.to_dict() for v in self.violations],
            "figures": [f.to_dict() for f in FIGURES],
        }


def _bytes(bits: int) -> float:
    return bits / 8


def layer_resources(demand: LayerDemand) -> tuple[LayerResources, list[Violation]]:
    """Cores and memory of one layer, and the limits it breaks."""
    violations = [Violation(demand.name, limit, value) for limit, value in (
        (WEIGHT_BITS, demand.weight_bits), (PAYLOAD_BITS, demand.payload_bits), (FAN_IN_PER_CORE, demand.fan_in),
    ) if value > limit.value]
    weight_bytes = demand.synapses * _bytes(demand.weight_bits)
    memory = math.ceil(weight_bytes + demand.neurons * _bytes(NEURON_STATE_BITS.value))
    per_neuron = weight_bytes / max(demand.neurons, 1) + _bytes(NEURON_STATE_BITS.value)
    per_core = min(NEURONS_PER_CORE.value, int(CORE_MEMORY_BYTES.value // per_neuron))
    if per_core == 0:  # one neuron's weights and state do not fit in a core
        violations.append(Violation(demand.name, CORE_MEMORY_BYTES, math.ceil(per_neuron)))
        cores = math.ceil(memory / CORE_MEMORY_BYTES.value)  # a lower bound; the layer does not map as is
    else:
        cores = math.ceil(demand.neurons / per_core)
    return LayerResources(demand.name, demand.neurons, demand.synapses, memory, per_core, max(cores, 1)), violations


def resource_report(demands: Iterable[LayerDemand]) -> ResourceReport:
    layers, violations = [], []
    for demand in demands:
        layer, broken = layer_resources(demand)
        layers.append(layer)
        violations.extend(broken)
    neurons = sum(layer.neurons for layer in layers)
    synapses = sum(layer.synapses for layer in layers)
    cores = sum(layer.cores for layer in layers)
    chips = max(1, *(math.ceil(need / limit.value) for need, limit in (
        (cores, CORES_PER_CHIP), (neurons, NEURONS_PER_CHIP), (synapses, SYNAPSES_PER_CHIP))))
    return ResourceReport(tuple(layers), tuple(violations), neurons, synapses,
                          sum(layer.memory_bytes for layer in layers), cores, chips)
