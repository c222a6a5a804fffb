"""Network activity: how many spikes each NISF population emits and what they cost downstream.

Two sources, one result (``Activity``):

- images run through the IR interpreter (the integer interpreter for a quantized graph, the default;
  the float interpreter's spike maps are the same integers up to quantization);
- a Lava run's activity file (``--activity F``; format in ``medqk.convert.activity_format``).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Iterable

import numpy as np

from medqk import console
from medqk.convert.activity_format import FORMAT, VERSION, activity_document, graph_sha256
from medqk.convert.graph import SPIKE, Graph
from medqk.energy.counting import exact_macs, input_kind, synaptic_nodes, unit_count
from medqk.errors import InputError

@dataclasses.dataclass
class Population:
    """One NISF population's spikes, summed over ``Activity.images`` images."""

    neurons: int
    spike_sum: int = 0
    nonzero: int = 0


@dataclasses.dataclass
class Activity:
    images: int
    populations: dict[str, Population]
    #: spike-fed synaptic node -> [ACs, events] summed over the images
    synapses: dict[str, list[int]]
    #: where the activity came from, for the report
    source: str
    #: spike-fed synaptic node -> nonzero input spikes summed over the images
    spikes_in: dict[str, int] = dataclasses.field(default_factory=dict)
    #: per image: {"image", "acs", "events"} totals (interpreter runs only)
    per_image: list[dict] = dataclasses.field(default_factory=list)
    #: a Lava run's counts per time step (``STEP_COUNTS``), summed over the images
    per_step: list[dict] = dataclasses.field(default_factory=list)

    def per_image_synapses(self) -> dict[str, tuple[float, float, float]]:
        """(ACs, events, nonzero input spikes) per image, the form ``counting.count_layers`` takes."""
        return {k: (a / self.images, e / self.images, self.spikes_in[k] / self.images)
                for k, (a, e) in self.synapses.items()}

    def firing(self) -> dict[str, dict]:
        """Per population: mean spike value and fraction of neurons with s > 0 (per neuron and image)."""
        out = {}
        for name, p in self.populations.items():
            total = p.neurons * self.images
            out[name] = {"neurons": p.neurons, "mean_spike": p.spike_sum / total, "fraction_nonzero": p.nonzero / total}
        return out

    def active_inactive(self) -> tuple[float, float]:
        """NISF neuron updates per image that fire (s > 0) and that stay silent."""
        active = sum(p.nonzero for p in self.populations.values()) / self.images
        return active, sum(p.neurons for p in self.populations.values()) - active


def spike_fed_layers(graph: Graph) -> list:
    return [n for n in synaptic_nodes(graph) if input_kind(graph, n) == SPIKE]


def empty_activity(graph: Graph, source: str) -> Activity:
    pops = {n.name: Population(int(np.prod(n.tensor.shape))) for n in graph.nodes() if n.op.type == "nisf"}
    layers = spike_fed_layers(graph)
    return Activity(0, pops, {n.name: [0, 0] for n in layers}, source, {n.name: 0 for n in layers})


def add_image(activity: Activity, graph: Graph, values: dict[str, np.ndarray], label: str) -> None:
    """Accumulate one image's recorded stored values (spikes are the integers 0..D)."""
    for name, pop in activity.populations.items():
        s = values[name]
        pop.spike_sum += int(np.rint(s).astype(np.int64).sum())
        pop.nonzero += int(np.count_nonzero(s))
    acs = events = 0
    for node in spike_fed_layers(graph):
        s = np.rint(values[node.inputs[0]]).astype(np.int64)
        a, e = unit_count(node.op, s), unit_count(node.op, s != 0)
        activity.synapses[node.name][0] += a
        activity.synapses[node.name][1] += e
        activity.spikes_in[node.name] += int(np.count_nonzero(s))
        acs, events = acs + a, events + e
    activity.images += 1
    activity.per_image.append({"image": label, "acs": acs, "events": events})


def record_values(graph: Graph, image: np.ndarray) -> dict[str, np.ndarray]:
    """Every node's stored values for one image [C, H, W], by the integer interpreter when the graph
    is quantized, else by the float interpreter."""
    x = np.asarray(image, dtype=np.float32)[None]
    if graph.input.tensor.frac_bits is not None:
        from medqk.convert.quantize import run_quantized

        return run_quantized(graph, x, record=True)[1]
    from medqk.convert import interpret_float

    return interpret_float.run(graph, x, record=True)[1]


def from_images(graph: Graph, images: Iterable[tuple[str, np.ndarray]], count: int) -> Activity:
    """Activity of ``count`` images, given lazily as (label, [C, H, W] float32), with a progress bar."""
    interpreter = "integer" if graph.input.tensor.frac_bits is not None else "float"
    activity = empty_activity(graph, f"{interpreter} interpreter")
    for label, image in console.progress(images, desc="energy", total=count, unit="image"):
        add_image(activity, graph, record_values(graph, image), label)
    if activity.images == 0:
        raise InputError("no images to measure activity on")
    activity.source = f"{interpreter} interpreter, {activity.images} image{'s' * (activity.images != 1)}"
    return activity


def write_file(path: Path, activity: Activity, graph: Graph) -> Path:
    """Write ``activity`` (recorded on ``graph``, the integer graph) in the activity-file format."""
    doc = activity_document(graph, activity.images, {k: dataclasses.asdict(p) for k, p in activity.populations.items()},
                            {k: {"acs": a, "events": e} for k, (a, e) in activity.synapses.items()})
    Path(path).write_text(json.dumps(doc, indent=1))
    return Path(path)


def _require(doc: dict, key: str, path: Path, what: str):
    if not isinstance(doc, dict):
        raise InputError(f"activity file {path}: {what} is not a JSON object")
    if key not in doc:
        raise InputError(f"activity file {path}: {what} has no {key!r}")
    return doc[key]


#: the counts of a per_step entry that the energy report prices
STEP_COUNTS = ("spikes", "synaptic_events", "neuron_updates")

#: what to do about a count that cannot be right
RERECORD = "; record the file again with `medqk run --backend lava --activity F`"


def _count(doc: dict, key: str, path: Path, what: str, most: int | None = None, why: str = "") -> int:
    """``doc[key]`` as a count: a non-negative integer (an integral JSON number, not a boolean) of at
    most ``most``, which ``why`` explains. Anything else would silently change the reported energy."""
    value = _require(doc, key, path, what)
    integral = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not integral or value < 0:
        raise InputError(f"activity file {path}: {what} has {key} = {json.dumps(value)}, not a count (a non-negative "
                         f"integer){RERECORD}")
    if most is not None and value > most:
        raise InputError(f"activity file {path}: {what} has {key} = {int(value):,}, more than the {most:,} possible "
                         f"({why}){RERECORD}")
    return int(value)


def from_file(path: Path, graph: Graph) -> Activity:
    """Read a Lava activity file for ``graph`` (the integer graph); refuses another model's file."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"activity file {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"activity file {path} is not valid JSON ({error})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise InputError(f"{path} is not a medqk activity file (expected format {FORMAT!r} version {VERSION})")
    mine, theirs = graph_sha256(graph), str(_require(doc, "model_sha256", path, "the file"))
    if theirs != mine:
        raise InputError(f"activity file {path} was recorded on another model (model sha256 {theirs[:12]}..., "
                         f"this model is {mine[:12]}...); pass the model directory the Lava run used")
    images = _count(doc, "images", path, "the file")
    if images < 1:
        raise InputError(f"activity file {path} covers {images} images")
    activity = empty_activity(graph, f"Lava activity file {path.name}, {images} image{'s' * (images != 1)}")
    activity.images = images
    steps = doc.get("per_step", [])
    if not isinstance(steps, list):
        raise InputError(f"activity file {path}: per_step is not a list of steps{RERECORD}")
    activity.per_step = [{key: _count(step, key, path, "a per_step entry") for key in STEP_COUNTS} for step in steps]
    pops, syns = _require(doc, "populations", path, "the file"), _require(doc, "synapses", path, "the file")
    for name, pop in activity.populations.items():
        entry, what = _require(pops, name, path, "populations"), f"population {name}"
        if _count(entry, "neurons", path, what) != pop.neurons:
            raise InputError(f"activity file {path}: population {name} has {entry['neurons']} neurons, the model {pop.neurons}")
        levels, updates = graph[name].op.levels, pop.neurons * images
        pop.nonzero = _count(entry, "nonzero", path, what, updates, f"{pop.neurons:,} neurons x {images} image(s)")
        # every firing neuron sends a spike of 1..D
        pop.spike_sum = _count(entry, "spike_sum", path, what, levels * pop.nonzero,
                               f"D = {levels} x {pop.nonzero:,} nonzero spikes")
        if pop.spike_sum < pop.nonzero:
            raise InputError(f"activity file {path}: {what} has spike_sum {pop.spike_sum:,} below its {pop.nonzero:,} "
                             f"nonzero spikes, each at least 1{RERECORD}")
    for node in spike_fed_layers(graph):
        name, what = node.name, f"synapse {node.name}"
        entry, source = _require(syns, name, path, "synapses"), graph[node.inputs[0]]
        connections = exact_macs(node.op, source.tensor.shape) * images
        events = _count(entry, "events", path, what, connections, f"{connections // images:,} connections x {images} image(s)")
        # a spike of s delivers s accumulates per connection: at least 1, at most the population's D
        levels = source.op.levels if source.op.type == "nisf" else None
        acs = _count(entry, "acs", path, what, None if levels is None else levels * events,
                     f"D = {levels} x {events:,} events")
        if acs < events:
            raise InputError(f"activity file {path}: {what} has {acs:,} ACs, fewer than its {events:,} synaptic events, "
                             f"each at least one{RERECORD}")
        activity.synapses[name] = [acs, events]
    _input_spikes_from_populations(activity, graph)
    return activity


def _input_spikes_from_populations(activity: Activity, graph: Graph) -> None:
    """Nonzero input spikes of each spike-fed layer, which the file does not carry: its input
    population's, or (an input that is not a NISF output) events / mean fan-out."""
    for node in spike_fed_layers(graph):
        source = node.inputs[0]
        if source in activity.populations:
            activity.spikes_in[node.name] = activity.populations[source].nonzero
        else:
            in_shape = graph[source].tensor.shape
            mean_fan_out = exact_macs(node.op, in_shape) / np.prod(in_shape)
            activity.spikes_in[node.name] = round(activity.synapses[node.name][1] / mean_fan_out)
