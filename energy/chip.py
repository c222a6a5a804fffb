"""The chip's view of a Lava run (``--activity``): what a Loihi-style chip sends, delivers and updates,
next to the idealised count, priced with the Loihi figures medqk carries.

The idealised count is the analyzer's: spikes are the nonzero NISF outputs, synaptic events those
spikes' connections, one update per NISF neuron; real-valued maps cost MACs, not traffic. On the
chip every synaptic layer is a population of neurons (one per output element, the neuron ops after
the synapse running on them) whose compartments all update, and a real-valued
map travels as dense graded spikes: each of its values is one spike, delivered over every
connection. The activity file gives the spikes and events the Lava run counted; the rest follows
from the graph.
"""
from __future__ import annotations

import dataclasses

from medqk.energy.activity import Activity
from medqk.energy.counting import SPIKE, LayerCount
from medqk.energy.models import DAVIES


@dataclasses.dataclass(frozen=True)
class Price:
    pj: float
    what: str
    #: "Loihi 1 figure": published for first-generation Loihi (``DAVIES``); "estimate": carried over
    kind: str


SYNAPTIC_OP = Price(23.6, "per synaptic op (minimum)", "Loihi 1 figure")
NEURON_ACTIVE = Price(81.0, "per neuron update, firing", "Loihi 1 figure")
NEURON_INACTIVE = Price(52.0, "per neuron update, silent", "Loihi 1 figure")
SPIKE_IN_TILE = Price(1.7, "per spike sent within a tile (tile hops, 3-4 pJ each, not counted: a lower bound)",
                      "Loihi 1 figure")

ESTIMATES = [
    "a graded spike (Loihi 2) costs one synaptic op per connection whatever its payload: Loihi 1 sent binary "
    "spikes, and no per-op figure is published for Loihi 2",
    "a NISF neuron, and every compartment of a synaptic layer's neurons, costs one Loihi 1 neuron update per image",
    "a real-valued map travels as dense graded spikes (one spike per value, one synaptic op per connection); its "
    "compartments are priced as firing",
    "spikes are priced as sent within a tile: routing between tiles and chips is not counted",
]


def per_step_view(per_step: list[dict], images: int) -> dict:
    """A Lava run's own counts (its activity file's ``per_step``) per image, priced: every
    neuron update of every step (firing ones: the spikes sent), every synaptic op, every spike."""
    total = {key: sum(step[key] for step in per_step) / images for key in ("spikes", "synaptic_events", "neuron_updates")}
    rows = [("neuron updates, firing", total["spikes"], NEURON_ACTIVE),
            ("neuron updates, silent", total["neuron_updates"] - total["spikes"], NEURON_INACTIVE),
            ("synaptic ops", total["synaptic_events"], SYNAPTIC_OP), ("spikes sent", total["spikes"], SPIKE_IN_TILE)]
    out = [{"quantity": q, "count": n, "price_pj": p.pj, "price": f"{p.what} ({p.kind})", "energy_pj": n * p.pj}
           for q, n, p in rows]
    return {"steps": len(per_step), "rows": out, "energy_pj": sum(r["energy_pj"] for r in out), "source": DAVIES,
            "note": "firing updates are counted as the spikes sent, the image's values included (an over-count by at "
                    "most the input's size); the CPU run computes a neuron at its valid step only, the chip updates "
                    "every neuron at every step"}


def chip_view(activity: Activity, layers: list[LayerCount]) -> dict:
    """Idealised and chip counts per image, each priced, for the layers of the analysed graph."""
    per_image = 1 / activity.images
    spikes = sum(p.nonzero for p in activity.populations.values()) * per_image
    payload = sum(p.spike_sum for p in activity.populations.values()) * per_image
    neurons = sum(p.neurons for p in activity.populations.values())
    real = [layer for layer in layers if layer.input_kind != SPIKE]
    real_values = sum(layer.inputs for layer in real)
    events = sum(layer.events for layer in layers)
    compartments = sum(layer.outputs for layer in layers)
    rows = [
        ("spikes sent", spikes, spikes + real_values, SPIKE_IN_TILE,
         "chip: + one graded spike per value of each real-valued map a synaptic layer reads"),
        ("spike payload (units of spike value)", payload, payload, None,
         "carried in the graded spike's payload: no extra op (estimate)"),
        ("synaptic events", events, events + sum(layer.taps for layer in real), SYNAPTIC_OP,
         "chip: + every connection of the real-valued maps (their MACs)"),
        ("neuron updates, firing", spikes, spikes + max(0, compartments - neurons), NEURON_ACTIVE,
         "idealised: NISF neurons with s > 0; chip: + every compartment of the other synaptic layers"),
        ("neuron updates, silent", neurons - spikes, neurons - spikes, NEURON_INACTIVE, "NISF neurons with s = 0"),
    ]
    out = [{"quantity": q, "idealised": ideal, "chip": chip, "price_pj": None if p is None else p.pj,
            "price": None if p is None else f"{p.what} ({p.kind})",
            "idealised_pj": 0.0 if p is None else ideal * p.pj, "chip_pj": 0.0 if p is None else chip * p.pj,
            "note": note} for q, ideal, chip, p, note in rows]
    return {"rows": out, "idealised_pj": sum(r["idealised_pj"] for r in out), "chip_pj": sum(r["chip_pj"] for r in out),
            "source": DAVIES, "estimates": ESTIMATES}
