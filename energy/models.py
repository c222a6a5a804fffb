"""Energy models: a price per operation, with the published source of every figure.

A synaptic layer's compute costs ``macs x e_mac_pj + spikes x e_spike_op_pj``, where ``spikes`` is the
count the model prices spike-fed layers by: ACs (unit spikes: an integer s is s accumulates per
connection) or events (graded spikes: one synaptic op per nonzero s per connection). ANN baselines
cost ``macs x e_mac_pj``. Neuron updates are priced only where a figure exists (Loihi, Lemaire).
The compute-only models leave memory out (``memory_pj`` = 0), which favours sparse networks
(Lemaire et al. 2022; Dampfhoffer et al. 2022); ``lemaire`` adds addressing and memory traffic
(``energy.memory``) to every network alike.
"""
from __future__ import annotations

import dataclasses

from medqk.energy.counting import LayerCount
from medqk.energy.memory import LEMAIRE, Lemaire
from medqk.errors import InputError

HOROWITZ = "M. Horowitz, \"Computing's energy problem (and what we can do about it)\", ISSCC 2014, 45 nm table"
DAVIES = ("M. Davies et al., \"Loihi: a neuromorphic manycore processor with on-chip learning\", IEEE Micro 38(1), "
          "2018, Table 2 (pre-silicon figures at 0.75 V; 23.6 pJ is the minimum per synaptic op)")


@dataclasses.dataclass(frozen=True)
class EnergyModel:
    name: str
    title: str
    #: pJ per multiply-accumulate (real-valued input)
    e_mac_pj: float
    #: pJ per unit of ``spike_count`` on spike-fed layers
    e_spike_op_pj: float
    #: "acs" or "events": which spike count this hardware pays for
    spike_count: str
    source: str
    notes: str = ""
    #: pJ per NISF neuron update, firing (s > 0) and silent; None where unpublished
    e_neuron_active_pj: float | None = None
    e_neuron_inactive_pj: float | None = None
    #: memory traffic and addressing (None: a compute-only model)
    memory: Lemaire | None = None

    def ops_pj(self, macs: float, acs: float, events: float) -> float:
        return macs * self.e_mac_pj + (acs if self.spike_count == "acs" else events) * self.e_spike_op_pj

    def layer_energy(self, layer: LayerCount) -> dict:
        """``compute_pj`` (ops, plus addressing and bias additions where priced), ``memory_pj`` and
        their sum ``energy_pj`` of one synaptic layer per image; the memory model's breakdown too."""
        ops = self.ops_pj(layer.macs, layer.acs, layer.events)
        if self.memory is None:
            return {"compute_pj": ops, "memory_pj": 0.0, "energy_pj": ops}
        traffic = self.memory.layer(layer)
        compute = ops + traffic["addressing_pj"] + traffic["bias_pj"]
        return {"compute_pj": compute, "memory_pj": traffic["memory_pj"], "energy_pj": compute + traffic["memory_pj"],
                "ops_pj": ops, "addressing_pj": traffic["addressing_pj"], "bias_pj": traffic["bias_pj"],
                "memory": traffic["memory"]}

    def neuron_energy(self, populations: list[tuple[float, float]]) -> dict | None:
        """``compute_pj`` and ``memory_pj`` per image of NISF populations given as (neurons, nonzero
        spikes per image); None where the model prices no neuron."""
        if self.memory is not None:
            parts = [self.memory.neurons(n, z) for n, z in populations]
            return {k: sum(p[k] for p in parts) for k in ("compute_pj", "memory_pj")}
        if self.e_neuron_active_pj is None:
            return None
        active = sum(z for _, z in populations)
        inactive = sum(n for n, _ in populations) - active
        return {"compute_pj": active * self.e_neuron_active_pj + inactive * self.e_neuron_inactive_pj, "memory_pj": 0.0}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


MODELS = {m.name: m for m in (
    EnergyModel(
        "float45", "45 nm CMOS, 32-bit float (the field's default)", e_mac_pj=4.6, e_spike_op_pj=0.9, spike_count="acs",
        source=HOROWITZ, notes="MAC = fp32 mult 3.7 + fp32 add 0.9 pJ; AC = fp32 add 0.9 pJ per unit spike"),
    EnergyModel(
        "int45", "45 nm CMOS, integer (8-bit weights, 32-bit accumulators)", e_mac_pj=0.3, e_spike_op_pj=0.1,
        spike_count="acs", source=HOROWITZ,
        notes="MAC = 8-bit mult 0.2 + 32-bit add 0.1 pJ; AC = 32-bit add 0.1 pJ per unit spike (8-bit add: 0.03 pJ)"),
    EnergyModel(
        "loihi", "Loihi, per synaptic op (graded spikes)", e_mac_pj=23.6, e_spike_op_pj=23.6, spike_count="events",
        source=DAVIES, e_neuron_active_pj=81.0, e_neuron_inactive_pj=52.0,
        notes="one synaptic op = one (graded) spike over one connection: spike-fed layers pay per event; "
              "real-valued maps are sent as dense graded spikes, one op per connection (MACs). The figures are "
              "first-generation Loihi's; none are published per op for Loihi 2. Neuron updates: NISF neurons "
              "only, 81 pJ firing / 52 pJ silent. Spike routing (1.7 pJ in-tile, 3-4 pJ per hop) not included"),
    EnergyModel(
        "lemaire", "Lemaire et al. 2022: 45 nm integer ops, addressing and SRAM traffic", e_mac_pj=3.2,
        e_spike_op_pj=0.1, spike_count="acs", source=LEMAIRE, memory=Lemaire(),
        notes="MAC = 32-bit int mult 3.1 + add 0.1 pJ, AC = add 0.1 pJ per unit spike; plus addressing adds and "
              "32-bit accesses to weights, membrane potentials, inputs and outputs priced by buffer size "
              "(2.5 / 5 / 25 pJ per byte at 8 KiB / 32 KiB / 1 MiB); NISF neurons: potential read and write, "
              "spike writes. Departures from SpikingJelly's implementation: exact taps, graded spikes (s adds, "
              "one weight read), upsampling and transposed convolutions as dense layers, element-wise ops unpriced"),
)}

DEFAULT = "float45"


def get_model(name: str) -> EnergyModel:
    if name not in MODELS:
        raise InputError(f"unknown energy model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name]
