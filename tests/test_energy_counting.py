"""Counting MACs, ACs and synaptic events: by hand on a tiny network, and against an independent
count over the torch model's own NISF outputs on real images."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medqk.convert.passes import prepare
from medqk.convert.trace import trace
from medqk.energy import activity as act
from medqk.energy.counting import count_layers, fan_out, other_ops, unit_count
from medqk.nisf import NISF
from support import monuseg_crops, needs_monuseg, small_model


class Tiny(nn.Module):
    """identity 1x1 conv (real input) -> NISF -> 3x3 stride-2 pad-1 conv, 1 -> 2 channels (spike
    input) -> bilinear x2 upsampling (real input)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 1, 1, bias=False)
        self.stem.weight.data.fill_(1.0)
        self.nisf = NISF(4)
        self.conv = nn.Conv2d(1, 2, 3, stride=2, padding=1)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)

    def forward(self, x):
        return self.up(self.conv(self.nisf(self.stem(x))))


# The spike map s the NISF emits (the stem passes the image through; NISF(s) = s for s in 0..4).
SPIKES = np.array([[4, 0, 0, 1],
                   [0, 2, 0, 0],
                   [0, 0, 3, 0],
                   [1, 0, 0, 0]], dtype=np.float32)


def tiny_counts():
    graph = prepare(trace(Tiny(), (1, 4, 4)))
    activity = act.from_images(graph, [("s", SPIKES[None])], 1)
    return {layer.name: layer for layer in count_layers(graph, activity.per_image_synapses())}, activity, graph


def test_hand_computed_tiny_network():
    layers, activity, _ = tiny_counts()
    # stem: real input, 16 outputs x 1 input channel x 1x1 kernel (no padding: both rules agree).
    assert (layers["stem"].input_kind, layers["stem"].macs, layers["stem"].acs) == ("real", 16, 0)
    assert layers["stem"].thop_macs == 16
    # conv: 3x3, stride 2, padding 1 on 4x4 -> 2x2 outputs. Output row o reads input rows 2o-1..2o+1,
    # so input rows 0..3 reach 1, 2, 1, 1 output rows (row 1 is read by both; row -1 is padding);
    # the same along columns. Fan-out of (i, j) per output channel = fh[i] * fw[j]:
    #   1 2 1 1
    #   2 4 2 2
    #   1 2 1 1
    #   1 2 1 1
    # ACs = 2 channels x (4*1 + 1*1 + 2*4 + 3*1 + 1*1) = 2 x 17 = 34 (s x fan-out at the 5 spikes)
    # events = 2 channels x (1 + 1 + 4 + 1 + 1) = 16 (each nonzero spike once per connection)
    conv = layers["conv"]
    assert (conv.input_kind, conv.macs, conv.acs, conv.events) == ("spike", 0, 34, 16)
    # its connections, exact taps: the fan-outs above summed (25) x 2 output channels; thop's rule
    # counts every tap of the 2x2 outputs, padding included: 4 x 9 x 2
    assert (conv.taps, conv.thop_macs, conv.spikes_in) == (2 * 25, 2 * 36, 5)
    # up: real input [2, 2, 2] -> [2, 4, 4]; separable, 2 taps per output along H ([2, 4, 2] = 16
    # outputs), then 2 taps per output along W ([2, 4, 4] = 32 outputs): 2*16 + 2*32 = 96
    assert (layers["up"].input_kind, layers["up"].macs) == ("real", 96)
    firing = activity.firing()["nisf"]
    assert firing["mean_spike"] == pytest.approx(11 / 16) and firing["fraction_nonzero"] == pytest.approx(5 / 16)


def test_both_tap_rules_by_hand_on_a_3x3_padding_1_convolution():
    """3x3 pad-1 conv, 2 -> 3 channels, on a real 4x4 input. Exact taps per output: 4 at the
    corners, 6 on the edges, 9 inside: 4*4 + 8*6 + 4*9 = 100 per channel pair; thop: 16 x 9 = 144.
    With stride 2 (2x2 outputs): 4 + 6 + 6 + 9 = 25 against 4 x 9 = 36."""
    for stride, exact, thop in ((1, 100, 144), (2, 25, 36)):
        graph = prepare(trace(nn.Sequential(nn.Conv2d(2, 3, 3, stride=stride, padding=1)), (2, 4, 4)))
        [layer] = count_layers(graph, all_real=True)
        assert (layer.macs, layer.taps, layer.thop_macs) == (6 * exact, 6 * exact, 6 * thop)


def test_exact_taps_equal_an_all_ones_convolution_of_an_all_ones_input():
    for stride, padding, kernel, groups in ((1, 1, 3, 1), (2, 1, 3, 2), (3, 2, 5, 4), (2, 0, 2, 1)):
        conv = nn.Conv2d(8, 4, kernel, stride=stride, padding=padding, groups=groups)
        graph = prepare(trace(nn.Sequential(conv), (8, 11, 9)))
        [layer] = count_layers(graph, all_real=True)
        ones = torch.ones(4, 8 // groups, kernel, kernel, dtype=torch.float64)
        taps = F.conv2d(torch.ones(1, 8, 11, 9, dtype=torch.float64), ones, stride=stride, padding=padding, groups=groups)
        assert layer.macs == taps.sum().item()


def test_unit_count_equals_an_all_ones_convolution_with_borders_and_strides():
    rng = np.random.default_rng(0)
    for stride, padding, kernel, groups in ((1, 1, 3, 1), (2, 1, 3, 2), (2, 0, 2, 1), (3, 2, 5, 4), (1, 0, 1, 1)):
        s = rng.integers(0, 5, size=(2, 8, 11, 9)) * (rng.random((2, 8, 11, 9)) < 0.4)
        conv = nn.Conv2d(8, 4, kernel, stride=stride, padding=padding, groups=groups)
        graph = prepare(trace(nn.Sequential(conv), (8, 11, 9)))
        op = graph[graph.output.name].op
        ones = torch.ones(4, 8 // groups, kernel, kernel, dtype=torch.float64)
        run = lambda v: F.conv2d(torch.from_numpy(v).double(), ones, stride=stride, padding=padding, groups=groups).sum().item()
        assert unit_count(op, s) == run(s)
        assert unit_count(op, (s != 0).astype(np.int64)) == run((s != 0).astype(np.int64))


def test_transposed_convolution_fan_out_reaches_every_output_once_per_tap():
    graph = prepare(trace(nn.Sequential(nn.ConvTranspose2d(3, 5, 2, stride=2)), (3, 4, 6)))
    op = graph[graph.output.name].op
    per_channel, fh, fw = fan_out(op, (3, 4, 6))
    assert per_channel == 5 and fh.tolist() == [2] * 4 and fw.tolist() == [2] * 6
    assert unit_count(op, np.ones((1, 3, 4, 6), dtype=np.int64)) == op.dense_macs((3, 4, 6)) == 3 * 4 * 6 * 5 * 4


def test_other_ops_of_the_tiny_network():
    _, _, graph = tiny_counts()
    # 16 NISF neurons; the conv's bias adds once per output (2 x 2 x 2); no other arithmetic
    assert other_ops(graph) == {"bias_additions": 8, "neuron_updates": 16}


@needs_monuseg
def test_snn_counts_equal_an_independent_count_over_torch_nisf_outputs():
    """Forward hooks on the torch model (float64) give each layer's input; a layer fed by a NISF
    module's output counts ACs/events by an all-ones convolution on s = D x output, the others MACs
    from their output shape. The analyzer's per-layer figures (float interpreter) must agree exactly."""
    model = small_model().double()
    images = monuseg_crops(64, 2)
    spikes_out, inputs = [], {}  # tensors kept alive, so identity is meaningful
    hooks = [m.register_forward_hook(lambda m, i, o: spikes_out.append(o)) for m in model.modules() if isinstance(m, NISF)]
    hooks += [m.register_forward_hook(lambda m, i, o, name=name: inputs.setdefault(name, []).append((i[0], o)))
              for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Upsample))]
    with torch.no_grad():
        for image in images:
            model(torch.from_numpy(image[None]).double())
    expected = {}
    for name, calls in inputs.items():
        m = model.get_submodule(name)
        macs = acs = events = 0
        for x, y in calls:
            if isinstance(m, nn.Upsample):  # along H: [C, 2H, W] outputs x 2 taps; along W: [C, 2H, 2W] x 2
                macs += 2 * y.shape[1] * y.shape[2] * x.shape[3] + 2 * y[0].numel()
            elif any(x is o for o in spikes_out):
                s = torch.round(x * 4)
                ones = torch.ones_like(m.weight)
                count = lambda v: F.conv2d(v, ones, None, m.stride, m.padding, 1, m.groups).sum().item()
                acs, events = acs + count(s), events + count((s > 0).double())
            else:  # exact taps: an all-ones convolution of an all-ones map
                ones = torch.ones_like(m.weight)
                macs += F.conv2d(torch.ones_like(x), ones, None, m.stride, m.padding, 1, m.groups).sum().item()
        expected[name] = (macs / len(images), acs / len(images), events / len(images))
    for h in hooks:
        h.remove()

    graph = prepare(trace(model.float(), (3, 64, 64)))
    activity = act.from_images(graph, [(str(i), x) for i, x in enumerate(images)], len(images))
    got = {l.name: (l.macs, l.acs, l.events) for l in count_layers(graph, activity.per_image_synapses())}
    assert got.keys() == expected.keys()
    assert sum(e[1] for e in expected.values()) > 0  # the images do make spikes
    for name in expected:
        assert got[name] == pytest.approx(expected[name], rel=0, abs=0), name


def test_chip_view_of_the_tiny_network_by_hand(tmp_path):
    """Through an activity file (as a Lava run writes it): 5 spikes (payload 11) of 16 NISF neurons;
    the real maps (stem input 16 values, upsampling input 8) travel as 24 graded spikes over their
    16 + 96 connections; compartments: 16 + 8 + 32, of which 16 are NISF neurons."""
    from medqk.energy.chip import chip_view

    _, activity, graph = tiny_counts()
    back = act.from_file(act.write_file(tmp_path / "a.json", activity, graph), graph)
    rows = {r["quantity"]: r for r in chip_view(back, count_layers(graph, back.per_image_synapses()))["rows"]}
    assert (rows["spikes sent"]["idealised"], rows["spikes sent"]["chip"]) == (5, 5 + 24)
    assert rows["spike payload (units of spike value)"]["chip"] == 11
    assert (rows["synaptic events"]["idealised"], rows["synaptic events"]["chip"]) == (16, 16 + 16 + 96)
    assert (rows["neuron updates, firing"]["idealised"], rows["neuron updates, firing"]["chip"]) == (5, 5 + 56 - 16)
    assert rows["neuron updates, silent"]["chip"] == 11
    assert rows["synaptic events"]["chip_pj"] == pytest.approx(23.6 * 128)
    assert "Loihi 1 figure" in rows["synaptic events"]["price"]
