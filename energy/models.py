"""Energy models: a price per operation, with the published source of every figure.

A synaptic layer costs ``macs x e_mac_pj + spikes x e_spike_op_pj``, where ``spikes`` is the count the
model prices spike-fed layers by: ACs (unit spikes: an integer s is s accumulates per connection)
or events (graded spikes: one synaptic op per nonzero s per connection). ANN baselines cost
``macs x e_mac_pj``. Neuron updates are priced only where the hardware publishes a figure (Loihi).
Memory access is not priced by any model here; that favours sparse networks (Lemaire et al. 2022;
Dampfhoffer et al. 2022), and every report says so.
"""
from __future__ import annotations

import dataclasses

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

    def layer_energy(self, macs: float, acs: float, events: float) -> float:
        return macs * self.e_mac_pj + (acs if self.spike_count == "acs" else events) * self.e_spike_op_pj

    def neuron_energy(self, active: float, inactive: float) -> float | None:
        if self.e_neuron_active_pj is None:
            return None
        return active * self.e_neuron_active_pj + inactive * self.e_neuron_inactive_pj

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
)}

DEFAULT = "float45"


def get_model(name: str) -> EnergyModel:
    if name not in MODELS:
        raise InputError(f"unknown energy model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name]
