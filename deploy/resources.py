"""What a converted model asks of Loihi 2, per synaptic layer (``loihi2.json`` of ``medqk convert``).

One layer per synapse of the integer graph (``conv2d``, ``upsample``), a neuro core's view: one
neuron per output element of the synapse (the NISF and element-wise ops after it run on those
neurons, as one neuron program), the weights it stores, 8-bit mantissas, and its fan-in. Convolution kernels
are counted once per layer (weight sharing); the interpolation synapses of an upsampling store
their 2 x 2 taps (bilinear) or 1 tap (nearest) per output neuron. Spike inputs travel as graded payloads of ceil(log2(D + 1))
bits, real-valued inputs as 24-bit payloads.

``loihi2.json`` also holds the Lava library graph (``deploy.lava_graph``): its counts
(``lava_library_graph``) and its resources process by process (``lava_library_resources``, from
``deploy.loihi2_library``).
"""
import json
import math
from pathlib import Path

from medqk.convert import synapses as syn
from medqk.convert.graph import SPIKE, Graph
from medqk.convert.op import FLOAT_ONLY, rule
from medqk.deploy.loihi2 import PAYLOAD_BITS, WEIGHT_BITS, LayerDemand, ResourceReport, resource_report


def _conv_synapses(op, neurons: int) -> tuple[int, int]:
    return int(op.weight.size), int(op.weight[0].size)


def _upsample_synapses(op, neurons: int) -> tuple[int, int]:
    """taps x taps interpolation weights per output (bilinear 2 x 2, nearest 1)."""
    return op.taps**2 * neurons, op.taps**2


#: synaptic op class -> (stored synapses, fan-in) of its layer; what is not here has no Loihi 2 layer
SYNAPSES = {
    syn.Conv2d: _conv_synapses, syn.Upsample: _upsample_synapses,
    syn.ConvTranspose2d: FLOAT_ONLY,
}


def layer_demands(graph: Graph) -> list[LayerDemand]:
    demands = []
    for node in graph.nodes():
        op = node.op
        if not op.synaptic:
            continue
        source = graph[node.inputs[0]].tensor
        neurons = math.prod(node.tensor.shape)
        synapses, fan_in = rule(SYNAPSES, op, "Loihi 2 resource model")(op, neurons)
        payload = math.ceil(math.log2(source.levels + 1)) if source.kind == SPIKE else PAYLOAD_BITS.value
        demands.append(LayerDemand(node.name, neurons, synapses, WEIGHT_BITS.value, fan_in, payload))
    return demands


def loihi2_report(graph: Graph) -> ResourceReport:
    return resource_report(layer_demands(graph))


def report_summary(report: ResourceReport) -> dict:
    return {"layers": len(report.layers), "neurons": report.neurons, "synapses": report.synapses,
            "memory_bytes": report.memory_bytes, "cores": report.cores, "chips": report.chips,
            "violations": len(report.violations)}


def _lowered(graph: Graph):
    """(the Lava library graph of ``graph``, None), or (None, {"refused": the message that names the
    layer}) where the lowering refuses it (an op without a Lava process, a layer whose dendritic sums
    could wrap)."""
    from medqk.deploy.lava_graph import lower
    from medqk.errors import MedqkError

    try:
        return lower(graph), None
    except MedqkError as error:
        return None, {"refused": str(error)}


def _summary_of(lowered) -> dict:
    kinds = [p.kind for p in lowered.processes]
    return {"processes": len(kinds), "lava_processes": sum(p.library == "lava" for p in lowered.processes),
            "steps": lowered.steps, "delay_synapses": kinds.count("DelaySparse"),
            "max_delay": max((p.delay for p in lowered.processes), default=0), "relay_neurons": kinds.count("GradedVec"),
            "digit_plane_layers": kinds.count("DigitPlanes")}


def library_graph_summary(graph: Graph) -> dict:
    """The Lava library graph of ``graph`` (``deploy.lava_graph``) in numbers: processes (Lava's and
    medqk's), steps, delay synapses and their largest delay, relay processes, layers fed digit planes;
    or ``refused`` (``_lowered``)."""
    lowered, refusal = _lowered(graph)
    return refusal or _summary_of(lowered)


def write_loihi2_json(directory: Path, model) -> None:
    """The convert writer: ``loihi2.json`` with the summary, per-layer figures, violations and sources
    of the per-synaptic-layer model; the Lava library graph's counts (``lava_library_graph``) and its Loihi 2
    resources process by process (``lava_library_resources``, ``_library_resources``)."""
    report = loihi2_report(model.int_graph)
    lowered, refusal = _lowered(model.int_graph)
    doc = {"summary": report_summary(report), **report.to_dict(),
           "lava_library_graph": refusal or _summary_of(lowered),
           "lava_library_resources": refusal or _library_resources(lowered)}
    (Path(directory) / "loihi2.json").write_text(json.dumps(doc, indent=2))


def _library_resources(lowered) -> dict:
    """``loihi2_library.library_resources``, or ``refused`` with the message that names the process
    it cannot place: an auxiliary report must not stop a conversion."""
    from medqk.deploy.loihi2_library import library_resources
    from medqk.errors import MedqkError

    try:
        return library_resources(lowered)
    except MedqkError as error:
        return {"refused": str(error)}


def format_summary(report: ResourceReport) -> str:
    s = report_summary(report)
    lines = [f"  Loihi 2    {s['layers']} synaptic layers, {s['neurons']:,} neurons, {s['synapses']:,} synapses, "
             f"{s['memory_bytes'] / 1024:,.0f} KB -> {s['cores']} cores, {s['chips']} chip(s)"]
    lines += [f"             limit: {v}" for v in report.violations[:5]]
    if len(report.violations) > 5:
        lines.append(f"             ... and {len(report.violations) - 5} more (loihi2.json)")
    return "\n".join(lines)
