"""MedQKFormer's quantized IR lowered to Lava: bit-exact with the integer interpreter, activity as the
energy analyzer counts it, one fused layer per synapse, the step count of the timing rule."""
import multiprocessing
from types import SimpleNamespace

import networkx as nx
import numpy as np
import pytest
import torch

from medqk import MedQKFormer
from medqk.convert import interpret_int
from medqk.convert.neurons import ReLU
from medqk.convert.graph import Graph, Node, TensorInfo
from medqk.convert.io import Input, quantize_input
from medqk.convert.pipeline import float_graph_of, int_probabilities
from medqk.convert.quantize import quantize
from medqk.energy.counting import unit_count
from medqk.errors import MedqkError
from support import MONUSEG_VAL, monuseg_crops, random_images, randomize_batchnorm

pytest.importorskip("lava.magma.core.run_configs", reason="Lava is not installed (bash install.sh)")

from medqk.deploy.lava_lowering import partition, run_image, run_lava  # noqa: E402
from medqk.deploy.lava_plan import MAX_INPUTS, MAX_OUTPUTS  # noqa: E402

SIZE = 64


def input_images() -> np.ndarray:
    """Two 64x64 inputs: MoNuSeg crops where ../shared holds them, else random images."""
    return monuseg_crops(SIZE, 2) if (MONUSEG_VAL / "img").is_dir() else random_images(2, SIZE)


@pytest.fixture(scope="module")
def published():
    """MedQKFormer at its published widths (32..256), quantized at 64x64; each image run by the
    integer interpreter (recording every tensor) and by Lava."""
    torch.manual_seed(0)
    model = randomize_batchnorm(MedQKFormer())
    images = input_images()
    graph, _ = quantize(float_graph_of(model, (SIZE, SIZE)), images)
    runs = []
    for image in images:
        x = quantize_input(image[None], graph.input.tensor.frac_bits)
        expected, values, _ = interpret_int.run(graph, x, record=True)
        runs.append((expected, values, run_image(graph, x)))
    return graph, runs


def test_bit_exact_with_the_integer_interpreter(published):
    _, runs = published
    for expected, _, lava in runs:
        assert lava.logits.shape == (1, 1, SIZE, SIZE)
        assert np.array_equal(lava.logits, expected)


def test_lava_masks_match_torch_on_real_images_with_a_trained_checkpoint(monuseg_trained):
    """The Lava issue's accuracy target: the published-width MoNuSeg checkpoint on the 6 validation
    images at 256x256, run in Lava, against torch (measured Dice 0.9937, pixel agreement 0.9952),
    and bit-exact with the integer interpreter on each image."""
    from medqk.convert.neurons import logits_to_probabilities
    from medqk.convert.pipeline import mask_agreement

    m = monuseg_trained
    x_int = quantize_input(m.images, m.qgraph.input.tensor.frac_bits)
    plans = partition(m.qgraph)
    logits = np.concatenate([run_image(m.qgraph, x_int[i:i + 1], plans).logits for i in range(len(x_int))])
    assert np.array_equal(logits, interpret_int.run(m.qgraph, x_int))
    agreement = mask_agreement(logits_to_probabilities(logits, m.qgraph.output.op.in_scale), m.torch_probabilities)
    assert agreement["dice"] >= 0.99 and agreement["pixel_agreement"] >= 0.995


def test_activity_is_what_the_energy_analyzer_counts(published):
    graph, runs = published
    for _, values, lava in runs:
        for node in graph.nodes():
            if node.op.type == "nisf":
                s = values[node.name]
                assert lava.activity[node.name] == {"nonzero": np.count_nonzero(s), "spike_sum": s.sum()}, node.name
            elif node.op.synaptic:
                x = values[node.inputs[0]]
                assert lava.activity[node.name] == {"acs": unit_count(node.op, x), "events": unit_count(node.op, x != 0)}


def test_one_fused_layer_per_synapse(published):
    graph, runs = published
    plans = partition(graph)
    placed = [n.name for plan in plans for n in plan.nodes]
    assert sorted(placed) == sorted(n.name for n in graph.nodes() if n.op.type != "input")
    assert [plan.nodes[0].op.synaptic for plan in plans] == [True] * len(plans)
    assert len(plans) == sum(n.op.synaptic for n in graph.nodes())
    assert all(len(p.inputs) <= MAX_INPUTS and len(p.outputs) <= MAX_OUTPUTS for p in plans)
    assert runs[0][2].layers == len(plans)


def test_steps_are_the_depth_of_the_layer_graph_plus_one(published):
    graph, runs = published
    plans = partition(graph)
    producer = {graph.input.name: "source", **{o: p.name for p in plans for o in p.outputs}}
    dag = nx.DiGraph([(producer[v], p.name) for p in plans for v, _ in p.inputs])
    dag.add_edge(producer[graph.output.name], "sink")
    assert runs[0][2].steps == nx.dag_longest_path_length(dag) + 1


def test_no_lava_process_survives_the_runs(published):
    assert not multiprocessing.active_children()


def test_lava_backend_gives_the_integer_interpreters_probabilities(published):
    graph, runs = published
    images = input_images()[:1]
    handle = SimpleNamespace(converted=SimpleNamespace(int_graph=graph))
    result = run_lava(handle, images)
    assert np.array_equal(result.probabilities, int_probabilities(graph, images))
    assert result.info["steps"] == runs[0][2].steps and result.info["images"] == 1
    assert result.info["activity"] == runs[0][2].activity  # the same image as the fixture's first


def tiny_graph(op, tensor_kind="real") -> Graph:
    graph = Graph()
    graph.add(Node("x", Input(shape=(2, 4, 4)), [], TensorInfo((2, 4, 4))))
    graph.add(Node("y", op, ["x"], TensorInfo((2, 2, 2), kind=tensor_kind)))
    return graph


def test_an_op_without_a_process_model_is_named():
    with pytest.raises(MedqkError, match=r"no process model for op 'relu' \(node y\)"):
        partition(tiny_graph(ReLU()))  # the ANN baselines' activation: float graphs only


def test_a_float_graph_is_refused(published):
    graph, _ = published
    with pytest.raises(MedqkError, match="not quantized"):
        partition(float_graph_of(MedQKFormer(widths=(8, 16, 32, 64)), (32, 32)))
    with pytest.raises(MedqkError, match="one image at a time"):
        run_image(graph, np.zeros((2, 3, SIZE, SIZE), np.int64))
