"""What a converted model asks of Loihi 2, per synaptic layer (``loihi2.json`` of ``medqk convert``).

One layer per synapse of the integer graph (``conv2d``, ``upsample``), as the Lava lowering fuses
them: one neuron per output element of the synapse (the NISF and element-wise ops fused after it
run on those neurons), the weights it stores, 8-bit mantissas, and its fan-in. Convolution kernels
are counted once per layer (weight sharing); the interpolation synapses of an upsampling store
their 2 x 2 taps per output neuron. Spike inputs travel as graded payloads of ceil(log2(D + 1))
bits, real-valued inputs as 24-bit payloads.
"""
import json
import math
from pathlib import Path

from medqk.convert.graph import SPIKE, Graph
from medqk.deploy.loihi2 import PAYLOAD_BITS, WEIGHT_BITS, LayerDemand, ResourceReport, resource_report


def layer_demands(graph: Graph) -> list[LayerDemand]:
    demands = []
    for node in graph.nodes():
        op = node.op
        if not op.synaptic:
            continue
        source = graph[node.inputs[0]].tensor
        neurons = math.prod(node.tensor.shape)
        if op.type == "conv2d":
            synapses, fan_in = int(op.weight.size), int(op.weight[0].size)
        else:  # bilinear upsampling: 2 x 2 taps per output
            synapses, fan_in = 4 * neurons, 4
        payload = math.ceil(math.log2(source.levels + 1)) if source.kind == SPIKE else PAYLOAD_BITS.value
        demands.append(LayerDemand(node.name, neurons, synapses, WEIGHT_BITS.value, fan_in, payload))
    return demands


def loihi2_report(graph: Graph) -> ResourceReport:
    return resource_report(layer_demands(graph))


def report_summary(report: ResourceReport) -> dict:
    return {"layers": len(report.layers), "neurons": report.neurons, "synapses": report.synapses,
            "memory_bytes": report.memory_bytes, "cores": report.cores, "chips": report.chips,
            "violations": len(report.violations)}


def write_loihi2_json(directory: Path, model) -> None:
    """The convert writer: ``loihi2.json`` with the summary, per-layer figures, violations and sources."""
    report = loihi2_report(model.int_graph)
    doc = {"summary": report_summary(report), **report.to_dict()}
    (Path(directory) / "loihi2.json").write_text(json.dumps(doc, indent=2))


def format_summary(report: ResourceReport) -> str:
    s = report_summary(report)
    lines = [f"  Loihi 2    {s['layers']} synaptic layers, {s['neurons']:,} neurons, {s['synapses']:,} synapses, "
             f"{s['memory_bytes'] / 1024:,.0f} KB -> {s['cores']} cores, {s['chips']} chip(s)"]
    lines += [f"             limit: {v}" for v in report.violations[:5]]
    if len(report.violations) > 5:
        lines.append(f"             ... and {len(report.violations) - 5} more (loihi2.json)")
    return "\n".join(lines)
