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


# -- the user's networks: layouts, new ops, refusals --------------------------------------------------

class TokenLinear(nn.Module):
    """Linear over channels on a channels-last view, split, concatenated, pooled and upsampled."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 6)
        self.pool = nn.AvgPool2d(2)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, x):
        y = self.fc(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)      # [N, 6, H, W]
        a, b = torch.split(y, [2, 4], dim=1)
        tokens = torch.cat([b.flatten(2), a.flatten(2)], dim=1)       # [N, 6, H*W]
        return self.up(self.pool(tokens.reshape(y.shape)))[:, 1:5]


def test_layout_ops_linear_split_avgpool_and_nearest_upsampling_trace_exactly():
    model = TokenLinear().double().eval()
    graph = trace(model, (4, 8, 8))
    from medqk.convert.passes import infer_tensors

    infer_tensors(graph)
    ops = Counter(n.op.type for n in graph.nodes())
    assert ops == Counter({"input": 1, "conv2d": 2, "channel_slice": 3, "concat": 1, "upsample": 1})
    pool = next(n.op for n in graph.nodes() if n.op.type == "conv2d" and n.op.groups == 6)
    assert np.all(pool.weight == 0.25) and pool.stride == (2, 2)
    x = np.random.default_rng(3).random((2, 4, 8, 8))
    np.testing.assert_allclose(interpret_float.run(graph, x), model(torch.from_numpy(x)).detach().numpy(), atol=1e-12)


class Refused(nn.Module):
    def __init__(self, forward):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(8, 8)
        self._forward = forward

    def forward(self, x):
        return self._forward(self, x)


@pytest.mark.parametrize("forward, message", [
    (lambda m, x: m.fc(x), r"Linear along W of a tensor viewed as \[N, C, H, W\] \(only along the channels\)"),
    (lambda m, x: torch.cat([x, x], dim=2), r"torch.cat along H .*only along the channels"),
    (lambda m, x: x[:, :, :4], r"slicing along H .*only along the channels"),
    (lambda m, x: m.conv(x.permute(0, 1, 3, 2)), r"module Conv2d on a tensor viewed as \[N, C, W, H\]"),
    (lambda m, x: x.flatten(2).transpose(1, 2).reshape(x.shape), r"reshape to \[1, 4, 8, 8\], which splits an axis"),
    (lambda m, x: x.flatten(2).transpose(1, 2), r"the network's output on a tensor viewed as \[N, H\*W, C\]"),
    (lambda m, x: torch.clamp(x, 0, 1), r"function clamp at the top level"),
])
def test_what_the_ir_cannot_represent_is_refused_by_name(forward, message):
    with pytest.raises(TraceError, match=message):
        trace(Refused(forward), (4, 8, 8))
