"""Lower a quantized IR graph to medqk's Lava processes and run it, bit-exact with ``interpret_int``.

Partition: one fused layer per synapse (``conv2d``, ``upsample``: the connections whose weights a
Loihi core stores) together with the neuron and element-wise ops that follow it. A non-synaptic node
joins the layer of its latest input (the one created last); its earlier inputs arrive on in ports.
Layers are created in topological order and every edge runs from an earlier layer to a later one
(or stays inside one), so the layer graph is acyclic. The graph's input is a host source; its
output (the integer logits) goes to a sink.

One image per run: Lava's batch is 1. The run takes ``depth of the layer graph + 1`` steps (see
``lava_plan``). ``run_lava`` is the ``lava`` backend of ``medqk run``.
"""
import dataclasses
import time
from typing import Callable

import numpy as np

from medqk.convert.graph import Graph, Node
from medqk.deploy.lava_plan import LayerPlan
from medqk.deploy.lava_runtime import NetworkResult, build_network, run_network
from medqk.errors import MedqkError


def partition(graph: Graph) -> list[LayerPlan]:
    """The graph's nodes as fused layers, in topological order (see the module docstring). Each
    ``LayerPlan`` refuses, by name, an op without a process model or a node that is not quantized."""
    source, output = graph.input.name, graph.output.name
    layer_of: dict[str, int] = {}
    layers: list[list[Node]] = []
    for node in graph.nodes():
        if node.name == source:
            continue
        producers = [layer_of[i] for i in node.inputs if i in layer_of]
        if node.op.synaptic or not producers:
            layers.append([])
            layer_of[node.name] = len(layers) - 1
        else:
            layer_of[node.name] = max(producers)
        layers[layer_of[node.name]].append(node)

    plans = []
    for index, nodes in enumerate(layers):
        inside = {n.name for n in nodes}
        inputs = list(dict.fromkeys(i for n in nodes for i in n.inputs if i not in inside))
        outputs = [n.name for n in nodes
                   if n.name == output or any(layer_of.get(c) != index for c in graph.consumers(n.name))]
        plans.append(LayerPlan(nodes[0].name, tuple((i, tuple(graph[i].tensor.shape)) for i in inputs),
                               tuple(nodes), tuple(outputs)))
    return plans


@dataclasses.dataclass
class LavaRun(NetworkResult):
    """One image through the Lava graph: the runtime's result, the graph's integer logits
    (int64 [1, 1, H, W]) and its number of fused layers."""

    logits: np.ndarray
    layers: int


def run_image(graph: Graph, x_int: np.ndarray, plans: list[LayerPlan] | None = None,
              progress: Callable[[int, int], None] | None = None) -> LavaRun:
    """Run one integer image [1, C, H, W] (``io.quantize_input``) through ``graph`` in Lava."""
    x_int = np.asarray(x_int)
    if x_int.ndim != 4 or x_int.shape[0] != 1:
        raise MedqkError(f"the Lava backend runs one image at a time: expected [1, C, H, W], got {x_int.shape}")
    expected = tuple(graph.input.tensor.shape)
    if tuple(x_int.shape[1:]) != expected:
        raise MedqkError(f"the graph takes input {expected}, got {tuple(x_int.shape[1:])}")
    plans = plans if plans is not None else partition(graph)
    start = time.perf_counter()
    network = build_network({graph.input.name: x_int}, plans, [graph.output.name])
    wired_s = time.perf_counter() - start
    result = run_network(network, progress=progress, chunk_steps=max(1, network.steps // 20))
    fields = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
    return LavaRun(**{**fields, "build_s": wired_s + result.build_s}, logits=result.outputs[graph.output.name],
                   layers=len(plans))



def _summed(runs: list[LavaRun]) -> dict[str, dict[str, int]]:
    total: dict[str, dict[str, int]] = {}
    for run in runs:
        for node, counts in run.activity.items():
            into = total.setdefault(node, dict.fromkeys(counts, 0))
            for key, value in counts.items():
                into[key] += value
    return total


def step_bar(desc: str):
    """A progress bar over a run's steps, and the ``progress(done, total)`` callback that drives it."""
    from medqk import console

    bar = console.progress(range(0), desc=desc, unit="step")  # the total is known once the graph is built

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)
    return bar, update


def run_images(backend: str, x_int: np.ndarray, run_one) -> tuple[list, np.ndarray, dict]:
    """``run_one(image [1, C, H, W], progress)`` for each image under a step bar: the runs, their
    logits concatenated, and the build, run and read seconds summed over the images."""
    runs = []
    for i in range(len(x_int)):
        bar, update = step_bar(f"{backend} image {i + 1}/{len(x_int)}")
        try:
            runs.append(run_one(x_int[i:i + 1], update))
        finally:
            bar.close()  # also on an error or interrupt: its message then starts a clean line
    logits = np.concatenate([run.logits for run in runs])
    seconds = {part: sum(getattr(r, f"{part}_s") for r in runs) for part in ("build", "run", "read")}
    return runs, logits, seconds


def run_lava(handle, images: np.ndarray):
    """Backend ``lava``: ``(backends.ModelHandle, float32 images [N, C, H, W]) -> backends.RunResult``,
    one Lava run per image; ``info`` holds steps, timings and the activity summed over the images."""
    from medqk.convert.io import quantize_input
    from medqk.convert.neurons import output_activation, output_scale, output_values
    from medqk.deploy.backends import RunResult

    graph = handle.converted.int_graph
    plans = partition(graph)
    x_int = quantize_input(images, graph.input.tensor.frac_bits)
    runs, logits, seconds = run_images("lava", x_int, lambda x, update: run_image(graph, x, plans, progress=update))
    return RunResult(output_values(output_activation(graph), logits, output_scale(graph)), sum(seconds.values()), {
        "fused_layers": len(plans), "steps": runs[0].steps, "images": len(runs),
        **{f"{part}_seconds": value for part, value in seconds.items()}, "activity": _summed(runs),
    })


def describe(info: dict) -> str:
    """The summary line of a ``lava`` run."""
    return (f"lava: {info['fused_layers']} fused-layer processes, {info['steps']} time steps; build {info['build_seconds']:.2f} s, "
            f"run {info['run_seconds']:.2f} s, read {info['read_seconds']:.2f} s")


#: merged into ``deploy.backends.BACKENDS``
BACKENDS = {"lava": run_lava}
