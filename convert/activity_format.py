"""The activity file: spikes measured on a run of an integer graph (written by the Lava backend,
read by the energy analyzer), and the graph fingerprint that ties a file to its model::

    {"format": "medqk-activity", "version": 1,
     "model_sha256": "<graph_sha256 of the integer graph that ran>",
     "images": 3,
     "populations": {"<NISF node>": {"neurons": 2097152, "spike_sum": 81234, "nonzero": 40211}, ...},
     "synapses": {"<synaptic node>": {"acs": 5123456, "events": 2534112}, ...},
     # optional, written by the lava backend:
     "per_step": [{"step": 1, "spikes": 0, "payload_sum": 0, "synaptic_events": 0, "neuron_updates": 0}, ...],
     "processes": {"<Lava process>": {"class": "lava.proc.conv.process.Conv", "node": "<IR node>",
                                      "valid_step": 3, "spikes": null, "payload_sum": null,
                                      "synaptic_events": 81920, "acs": 163840, "neuron_updates": 0}, ...}}

Counts are summed over the images (``neurons`` per image). ``acs`` = sum over delivered spikes of
payload x fan-out, ``events`` = delivered spikes x fan-out (synaptic ops of graded spikes).
``populations`` and ``synapses`` are what the energy report prices; ``per_step`` and ``processes``
break the library graph's run down by time step and by process (null: a count that process does
not keep; Lava's own process models count nothing, so a synapse's events are counted by the medqk
neuron that feeds it). Readers ignore keys they do not know.
"""
from __future__ import annotations

import hashlib
import json
import math

import numpy as np

from medqk.convert.graph import Graph

FORMAT = "medqk-activity"
VERSION = 1


def graph_sha256(graph: Graph) -> str:
    """A fingerprint of a graph's structure and every array (the model an activity file belongs to)."""
    from medqk.convert.serialize import graph_to_json

    arrays: dict[str, np.ndarray] = {}
    digest = hashlib.sha256(json.dumps(graph_to_json(graph, "g", arrays), sort_keys=True).encode())
    for key in sorted(arrays):
        digest.update(key.encode())
        digest.update(np.ascontiguousarray(arrays[key]).tobytes())
    return digest.hexdigest()


def activity_document(graph: Graph, images: int, populations: dict[str, dict], synapses: dict[str, dict],
                      per_step: list[dict] | None = None, processes: dict[str, dict] | None = None) -> dict:
    """The file's content: ``populations`` {NISF node: {spike_sum, nonzero}}, ``synapses`` {node: {acs, events}},
    and where given the optional ``per_step`` and ``processes`` sections."""
    optional = {"per_step": per_step, "processes": processes}
    return {
        "format": FORMAT, "version": VERSION, "model_sha256": graph_sha256(graph), "images": int(images),
        "populations": {name: {"neurons": math.prod(graph[name].tensor.shape), "spike_sum": int(p["spike_sum"]),
                               "nonzero": int(p["nonzero"])} for name, p in populations.items()},
        "synapses": {name: {"acs": int(s["acs"]), "events": int(s["events"])} for name, s in synapses.items()},
        **{key: value for key, value in optional.items() if value is not None},
    }
