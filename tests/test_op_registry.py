"""Every IR op type is decided by every concern: handled, or refused by name. An op added without a
decision for one of them fails here, and nothing falls back to a guess."""
import dataclasses
from typing import ClassVar

import numpy as np
import pytest

from medqk.convert import elementwise as ew
from medqk.convert import interpret_float, interpret_int, interpret_torch, neurons, passes, quantize, synapses, to_onnx
from medqk.convert.graph import Graph, Node, TensorInfo
from medqk.convert.io import Input
from medqk.convert.op import OP_TYPES, Op, OpRefused, Refused, rule
from medqk.deploy import lava_graph, resources
from medqk.energy import counting

#: concern -> its table keyed by op class
TABLES = {
    "float semantics": interpret_float.OPS,
    "integer semantics": interpret_int.OPS,
    "integer semantics in torch": interpret_torch.OPS,
    "typing rule": passes.TYPING,
    "scale folding": passes.ABSORB_SCALES,
    "integer form": quantize.QUANTIZERS,
    "lowering to the float ONNX model": to_onnx.FLOAT_OPS,
    "lowering to the integer ONNX model": to_onnx.INT_OPS,
    "energy count": counting.OTHER_OPS,
    "Lava library-process lowering": lava_graph.LOWERING,
}

#: one instance of every op type (a new op type needs one here too)
EXAMPLES = {
    Input: lambda: Input(shape=(2, 4, 4)),
    synapses.Conv2d: lambda: synapses.Conv2d(np.ones((2, 2, 1, 1))),
    synapses.ConvTranspose2d: lambda: synapses.ConvTranspose2d(np.ones((2, 2, 2, 2)), stride=2),
    synapses.Upsample: lambda: synapses.Upsample(factor=2, mode="nearest"),
    neurons.NISF: lambda: neurons.NISF(levels=4),
    neurons.ReLU: neurons.ReLU,
    neurons.Sigmoid: neurons.Sigmoid,
    neurons.Softmax: neurons.Softmax,
    ew.Add: ew.Add,
    ew.Mul: ew.Mul,
    ew.Affine: lambda: ew.Affine(np.ones(2), np.zeros(2)),
    ew.BatchNorm: lambda: ew.BatchNorm(np.zeros(2), np.ones(2), np.ones(2), np.zeros(2)),
    ew.Complement: ew.Complement,
    ew.GroupSum: lambda: ew.GroupSum(groups=2),
    ew.GroupBroadcast: lambda: ew.GroupBroadcast(repeats=2),
    ew.Concat: ew.Concat,
    ew.ChannelSlice: lambda: ew.ChannelSlice(0, 1),
    ew.MaxPool2d: ew.MaxPool2d,
}

OP_CLASSES = sorted(OP_TYPES.values(), key=lambda c: c.type)


@pytest.mark.parametrize("cls", OP_CLASSES, ids=lambda c: c.type)
def test_every_concern_decides_every_op(cls):
    assert cls in EXAMPLES, f"{cls.type}: add an example instance to EXAMPLES"
    undecided = [concern for concern, table in TABLES.items() if cls not in table]
    assert not undecided, f"{cls.type} is not decided by: {', '.join(undecided)}"
    if cls.synaptic:  # synaptic work: the energy counter's and Lava counters' fan-out, the Loihi 2 layer
        assert cls in synapses.FAN_OUT and cls in resources.SYNAPSES


@pytest.mark.parametrize("cls", OP_CLASSES, ids=lambda c: c.type)
def test_refused_entries_refuse_by_name(cls):
    op = EXAMPLES[cls]()
    for concern, table in TABLES.items():
        if isinstance(table[cls], Refused):
            with pytest.raises(OpRefused, match=rf"^{op.type} has no {concern}: "):
                rule(table, op, concern)
        else:
            assert callable(rule(table, op, concern))


@dataclasses.dataclass(eq=False)
class _Undecided(Op):
    type: ClassVar[str] = "undecided_test_op"


@pytest.fixture
def undecided_op():
    try:
        yield _Undecided()
    finally:
        del OP_TYPES[_Undecided.type]


def test_an_undecided_op_is_refused_by_name_everywhere(undecided_op):
    graph = Graph()
    graph.add(Node("x", Input(shape=(1, 4, 4)), [], TensorInfo((1, 4, 4))))
    graph.add(Node("odd", undecided_op, ["x"], TensorInfo((1, 4, 4))))
    with pytest.raises(passes.GraphError, match="node odd .*undecided_test_op .*not known to the typing rule"):
        passes.infer_tensors(graph)
    with pytest.raises(OpRefused, match="undecided_test_op .*float semantics"):
        interpret_float.run(graph, np.zeros((1, 1, 4, 4)))
    with pytest.raises(OpRefused, match="undecided_test_op .*integer semantics"):
        interpret_int.run(graph, np.zeros((1, 1, 4, 4), np.int64))
    with pytest.raises(ValueError, match="node odd: undecided_test_op .*float ONNX"):
        to_onnx.float_model(graph)
    with pytest.raises(OpRefused, match="undecided_test_op .*energy count"):
        counting.other_ops(graph)


def test_a_synapse_without_a_resource_rule_is_refused_not_guessed():
    graph = Graph()
    graph.add(Node("x", Input(shape=(2, 4, 4)), [], TensorInfo((2, 4, 4))))
    graph.add(Node("up", synapses.ConvTranspose2d(np.ones((2, 2, 2, 2)), stride=2), ["x"], TensorInfo((2, 8, 8))))
    with pytest.raises(OpRefused, match="conv_transpose2d has no Loihi 2 resource model"):
        resources.layer_demands(graph)
