from collections import Counter

import numpy as np
import pytest
import torch
from torch import nn

from medqk.convert import interpret_float
from medqk.convert.trace import TraceError, trace
from support import small_model


def test_medqkformer_traces_to_typed_ops():
    graph = trace(small_model(), (3, 32, 32))
    ops = Counter(n.op.type for n in graph.nodes())
    # per encoder stage: patch conv, 2x2 SpikeConvs (6 convs), q/k convs, pool conv
    # per decoder stage: one SpikeConv (2 convs) + nConv; plus the head
    assert ops["conv2d"] == 4 * (1 + 6 + 2 + 1) + 4 * 3 + 1
    assert ops["nisf"] == 4 * (2 + 2 + 2 + 2 + 2) + 4 * 2  # patch msc, q/k, wa/wi, msc, fpn; decoder sc
    assert ops["group_sum"] == 8 and ops["group_broadcast"] == 8 and ops["mul"] == 16
    assert ops["complement"] == 8 and ops["concat"] == 4 and ops["upsample"] == 4 and ops["sigmoid"] == 1
    assert graph.output.op.type == "sigmoid"
    assert "encoder_stages.0.patch.msc.bn@1" in graph  # the shared BN's second use keeps its module path


def test_traced_graph_reproduces_module_before_any_pass():
    model = small_model().double()  # float64 on both sides: no rounding-boundary flips
    graph = trace(model, (3, 32, 32))
    from medqk.convert.passes import infer_tensors

    infer_tensors(graph)
    x = np.random.default_rng(1).random((2, 3, 32, 32))
    ref = model(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(interpret_float.run(graph, x), ref, atol=1e-12)


class UNetLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.inc = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ConvTranspose2d(4, 4, 2, stride=2)
        self.out = nn.Conv2d(8, 1, 1)

    def forward(self, x):
        a = self.inc(x)
        b = self.up(self.pool(a))
        return torch.sigmoid(self.out(torch.cat([a, b], dim=1)))


def test_plain_conv_networks_trace_and_run():
    model = UNetLike().eval()
    graph = trace(model, (3, 16, 16))
    from medqk.convert.passes import infer_tensors

    infer_tensors(graph)
    assert {n.op.type for n in graph.nodes()} >= {"conv2d", "batchnorm", "relu", "maxpool2d", "conv_transpose2d", "concat", "sigmoid"}
    x = np.random.default_rng(2).random((1, 3, 16, 16))
    np.testing.assert_allclose(interpret_float.run(graph, x), model(torch.from_numpy(x).float()).detach().numpy(), atol=1e-5)


class WithGelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.act = nn.GELU()

    def forward(self, x):
        return self.act(self.conv(x))


def test_unsupported_module_is_named_with_its_path():
    with pytest.raises(TraceError, match=r"module GELU at act.*supported: modules: Conv2d"):
        trace(WithGelu(), (3, 8, 8))


class WithConstantScale(nn.Module):
    def forward(self, x):
        return x * 2.0


def test_unsupported_function_is_named():
    with pytest.raises(TraceError, match="function mul with a constant operand"):
        trace(WithConstantScale(), (3, 8, 8))
