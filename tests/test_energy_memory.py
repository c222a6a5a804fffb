"""The memory-traffic model (`--energy-model lemaire`): by hand on small layers, and against
SpikingJelly 2.0's own Lemaire estimator where the two conventions coincide."""
import numpy as np
import pytest
import torch
from torch import nn

from medqk.convert.passes import prepare
from medqk.convert.trace import trace
from medqk.energy import activity as act
from medqk.energy.counting import count_layers
from medqk.energy.memory import Lemaire
from medqk.energy.models import get_model
from medqk.energy.report import neuron_populations
from medqk.nisf import NISF

LEMAIRE = Lemaire()


def test_price_per_byte_follows_the_buffer_size():
    # 0 / 8 KiB / 32 KiB / 1 MiB -> 0 / 2.5 / 5 / 25 pJ per byte, linear in between, flat beyond
    assert [LEMAIRE.pj_per_byte(b) for b in (0, 4096, 8192, 20480, 32768, 1 << 20, 4 << 20)] == \
        pytest.approx([0, 1.25, 2.5, 3.75, 5, 25, 25])


class SpikeNet(nn.Module):
    """1x1 conv (real input) -> NISF(D) -> 3x3 pad-1 conv 2 -> 3 (spike input)."""

    def __init__(self, levels: int):
        super().__init__()
        self.stem = nn.Conv2d(1, 2, 1, bias=False)
        self.stem.weight.data = torch.tensor([[[[1.0]]], [[[0.5]]]])
        self.nisf = NISF(levels)
        self.conv = nn.Conv2d(2, 3, 3, padding=1)

    def forward(self, x):
        return self.conv(self.nisf(self.stem(x)))


def test_one_spike_fed_and_one_dense_layer_by_hand():
    graph = prepare(trace(SpikeNet(4), (1, 4, 4)))
    image = np.zeros((1, 4, 4), dtype=np.float32)
    image[0, 0, 0], image[0, 1, 1] = 4, 2  # spikes: channel 0 {4 at a corner, 2 inside}, channel 1 {2, 1}
    activity = act.from_images(graph, [("x", image)], 1)
    stem, conv = count_layers(graph, activity.per_image_synapses())
    assert (conv.spikes_in, conv.events, conv.acs) == (4, 3 * (4 + 9) * 2, 3 * (4 * 4 + 2 * 9 + 2 * 4 + 1 * 9))
    s = LEMAIRE.layer(conv)
    w = 4  # bytes per word
    # weights (54 + 3 biases = 228 B buffer, 0.0696 pJ/B): one read per connection of each spike, one bias per output
    assert s["memory"]["weights"]["bytes"] == w * (conv.events + 48)
    assert s["memory"]["weights"]["pj"] == pytest.approx(w * (conv.events + 48) * 2.5 * 228 / 8192)
    # 4 spikes read from the 4000 B FIFO; each connection reads and writes a potential (192 B output map)
    assert s["memory"]["inputs"]["pj"] == pytest.approx(w * 4 * 2.5 * 4000 / 8192)
    assert s["memory"]["state"]["pj"] == pytest.approx(2 * w * conv.events * 2.5 * 192 / 8192)
    assert s["addressing_pj"] == pytest.approx(conv.events * 0.1 + 2 * 4 * 3.2) and s["bias_pj"] == pytest.approx(48 * 0.1)
    d = LEMAIRE.layer(stem)  # dense: a read per tap (16 x 2) of input (64 B) and weight (8 B), a write per output
    assert d["memory"]["inputs"]["pj"] == pytest.approx(w * 32 * 2.5 * 64 / 8192)
    assert d["memory"]["weights"]["pj"] == pytest.approx(w * 32 * 2.5 * 8 / 8192)
    assert d["memory"]["outputs"]["pj"] == pytest.approx(w * 32 * 2.5 * 128 / 8192)
    assert d["addressing_pj"] == pytest.approx((16 + 32 + 2) * 0.1) and d["bias_pj"] == 0
    model = get_model("lemaire")
    e = model.layer_energy(conv)
    assert e["compute_pj"] == pytest.approx(0.1 * conv.acs + s["addressing_pj"] + s["bias_pj"])
    assert e["energy_pj"] == pytest.approx(e["compute_pj"] + s["memory_pj"])
    # the twin reads every weight for every tap: the same layer all-real costs more memory than spikes do
    twin_conv = count_layers(graph, all_real=True)[1]
    assert model.layer_energy(twin_conv)["memory_pj"] > e["memory_pj"]


def _sj_and_medqk_nets():
    """The same 1x1 convolutions twice: with SpikingJelly IF neurons (threshold 0.5) and with
    NISF(D=1), which fire on the same inputs (x >= 0.5, ties aside)."""
    from spikingjelly.activation_based.neuron import IFNode

    torch.manual_seed(0)
    convs = [nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)]
    sj = nn.Sequential(convs[0], IFNode(v_threshold=0.5), convs[1], IFNode(v_threshold=0.5))
    ours = nn.Sequential(convs[0], NISF(1), convs[1], NISF(1))
    return sj.eval(), ours.eval()


def test_lemaire_agrees_with_spikingjelly_where_the_conventions_coincide():
    """1x1 convolutions (no padding, so exact taps = SpikingJelly's k^2 taps) and binary spikes: ops +
    addressing agree exactly; memory differs only by the one departure medqk states: the real-fed
    first layer writes its output map (SpikingJelly leaves it to the neurons' potential writes)."""
    pytest.importorskip("spikingjelly", reason="medqk[peers] is not installed")
    from spikingjelly.activation_based.op_counter import estimate_lemaire_energy

    sj, ours = _sj_and_medqk_nets()
    x = torch.rand(1, 3, 6, 5) * 2 - 0.5
    theirs = estimate_lemaire_energy(sj, x)
    graph = prepare(trace(ours, (3, 6, 5)))
    activity = act.from_images(graph, [("x", x[0].numpy())], 1)
    model = get_model("lemaire")
    layers = [model.layer_energy(layer) for layer in count_layers(graph, activity.per_image_synapses())]
    neurons = model.neuron_energy(neuron_populations(activity))
    assert activity.synapses and next(iter(activity.synapses.values()))[1] > 0  # spikes do flow
    compute = sum(l["compute_pj"] for l in layers) + neurons["compute_pj"]
    assert compute == pytest.approx(theirs.breakdown_pj["ops_pj"] + theirs.breakdown_pj["addressing_pj"], rel=1e-12)
    first_output = 8 * 6 * 5 * 4  # bytes
    memory = sum(l["memory_pj"] for l in layers) + neurons["memory_pj"]
    departure = first_output * LEMAIRE.pj_per_byte(first_output)
    assert memory == pytest.approx(theirs.breakdown_pj["memory_pj"] + departure, rel=1e-12)


def test_exact_taps_against_spikingjelly_on_a_padded_dense_network():
    """All-real 3x3 pad-1 convolutions: SpikingJelly counts every tap (padding included); the
    difference is exactly the padded taps' MAC, input read and weight read."""
    pytest.importorskip("spikingjelly", reason="medqk[peers] is not installed")
    from spikingjelly.activation_based.op_counter import estimate_lemaire_energy

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1, bias=False)).eval()
    theirs = estimate_lemaire_energy(net, torch.rand(1, 3, 7, 6))
    model = get_model("lemaire")
    layers = count_layers(prepare(trace(net, (3, 7, 6))), all_real=True)
    ours = sum(model.layer_energy(layer)["energy_pj"] for layer in layers)
    padded = 0.0
    for layer in layers:
        extra = layer.thop_macs - layer.taps
        assert extra == layer.outputs // (7 * 6) * layer.inputs // (7 * 6) * (9 * 7 * 6 - (3 * 7 - 2) * (3 * 6 - 2))
        padded += extra * (3.2 + 4 * LEMAIRE.pj_per_byte(4 * layer.inputs)
                           + 4 * LEMAIRE.pj_per_byte(4 * (layer.weights + layer.biases)))
    assert ours + padded == pytest.approx(theirs.total_pj, rel=1e-12)
