import numpy as np
import pytest
import torch

from medqk.convert import interpret_float, passes
from medqk.convert.elementwise import Add
from medqk.convert.graph import Graph, Node
from medqk.convert.io import Input
from medqk.convert.neurons import NISF, Sigmoid
from medqk.convert.trace import trace
from support import small_model


def _prepared(model, size=32):
    return passes.prepare(trace(model, (3, size, size)))


def test_prepare_keeps_the_function_of_the_network():
    model = small_model().double()
    x = np.random.default_rng(0).random((2, 3, 32, 32))
    np.testing.assert_allclose(interpret_float.run(_prepared(model), x), model(torch.from_numpy(x)).detach().numpy(), atol=1e-12)


def test_batchnorm_folds_into_convs_or_becomes_affine():
    graph = _prepared(small_model())
    types = [n.op.type for n in graph.nodes()]
    assert "batchnorm" not in types
    # SpikeConv's shared BN follows a sum: 2 uses x (2 per encoder patch + 2 x 2 in SDQK) and 2 per decoder
    assert types.count("affine") == 4 * (2 + 4 + 1) + 4 * 2
    assert graph["encoder_stages.0.patch.msc.bn"].op.type == "affine"
    assert "encoder_stages.0.patch.patch_cnn.0.norm" not in graph


def test_nisf_folding_makes_spikes_integers_and_consumers_absorb_1_over_d():
    graph = _prepared(small_model())
    lif = graph["encoder_stages.0.patch.msc.lif1"]
    assert lif.tensor.kind == "spike" and lif.tensor.scale == 0.25 and lif.tensor.exact
    x = np.random.default_rng(0).random((1, 3, 32, 32))
    _, values = interpret_float.run(graph, x, record=True)
    spikes = values[lif.name]
    assert set(np.unique(spikes)) <= {0.0, 1.0, 2.0, 3.0, 4.0}
    # products of spike maps are exact integers at scale 1/D^2
    product = next(n for n in graph.nodes() if n.op.type == "mul")
    assert product.tensor.scale == 1 / 16 and product.tensor.exact
    assert np.array_equal(values[product.name], np.round(values[product.name]))
    # the complement of a spike map is D - s
    complement = next(n for n in graph.nodes() if n.op.type == "complement")
    assert complement.op.one == 4.0 and complement.tensor.kind == "spike"


def test_schedule_gives_longest_path_depths():
    graph = _prepared(small_model())
    for node in graph.nodes():
        assert node.depth == max((graph[i].depth + 1 for i in node.inputs), default=0)
    assert graph.input.depth == 0


def _tiny_graph():
    g = Graph()
    g.add(Node("x", Input(shape=(1, 4, 4)), []))
    g.add(Node("a", NISF(levels=4), ["x"]))
    g.add(Node("dead", NISF(levels=4), ["x"]))
    g.add(Node("y", Sigmoid(), ["a"]))
    return g


def test_dead_nodes_are_removed():
    g = _tiny_graph()
    g.add(Node("dead2", Add(), ["dead", "a"]))  # now two sinks: the sigmoid is kept as output
    assert passes.remove_dead_nodes(g) == 2
    assert "dead" not in g and "dead2" not in g and g.output.name == "y"


def test_validate_names_the_broken_node():
    g = _tiny_graph()
    passes.remove_dead_nodes(g)
    passes.infer_tensors(g)
    g["a"].tensor.shape = (2, 4, 4)
    with pytest.raises(passes.GraphError, match="node a: stored shape"):
        passes.validate(g)


def test_validate_rejects_float_only_ops_in_integer_graphs():
    g = _tiny_graph()
    passes.remove_dead_nodes(g)
    passes.infer_tensors(g)
    with pytest.raises(passes.GraphError, match="not quantized"):
        passes.validate(g, quantized=True)


def test_graph_prints_a_readable_table():
    text = str(_prepared(small_model(), 16))
    assert text.splitlines()[0].split()[:6] == ["name", "op", "inputs", "shape", "kind", "scale"]
    assert "encoder_stages.0.SDQK.q_lif" in text and "spike" in text
