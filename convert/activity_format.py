"""The activity file: spikes measured on a run of an integer graph (written by the Lava backend,
read by the energy analyzer), and the graph fingerprint that ties a file to its model::

    {"format": "medqk-activity", "version": 1,
     "model_sha256": "<graph_sha256 of the integer graph that ran>",
     "images": 3,
     "populations": {"<NISF node>": {"neurons": 2097152, "spike_sum": 81234, "nonzero": 40211}, ...},
     "synapses": {"<synaptic node>": {"acs": 5123456, "events": 2534112}, ...}}

Counts are summed over the images (``neurons`` per image). ``acs`` = sum over delivered spikes of
payload x fan-out, ``events`` = delivered spikes x fan-out (synaptic ops of graded spikes).
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


def activity_document(graph: Graph, images: int, populations: dict[str, dict], synapses: dict[str, dict]) -> dict:
    """The file's content: ``populations`` {NISF node: {spike_sum, nonzero}}, ``synapses`` {node: {acs, events}}."""
    return {
        "format": FORMAT, "version": VERSION, "model_sha256": graph_sha256(graph), "images": int(images),
        "populations": {name: {"neurons": math.prod(graph[name].tensor.shape), "spike_sum": int(p["spike_sum"]),
                               "nonzero": int(p["nonzero"])} for name, p in populations.items()},
        "synapses": {name: {"acs": int(s["acs"]), "events": int(s["events"])} for name, s in synapses.items()},
    }
