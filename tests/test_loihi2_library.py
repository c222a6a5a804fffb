"""The Loihi 2 figures of the Lava library graph on a network counted by hand: its resources
(``deploy.loihi2_library``) and the per-step activity of a run (``deploy.lava_library``).

The network: an image x of 4 channels on 6x6 -> NISF s0 -> channels 0..1 -> 3x3 convolution 2 -> 4
channels, padding 1 -> NISF s1 -> residual add s0 + s1. Lowered, it is (valid step in brackets):

    x ImageSource [1] -> s0 NISFNeuron [1] -> slice/map Sparse [2] -> relay GradedVec [2]
      -> conv/conv Conv [3] -> conv ConvNeuron [3] -> s1 NISFNeuron [3] -> res AddNeuron [3]
    s0 -> res/delay DelaySparse, delay 1 [3] -> res

(a synapse's output that feeds another synapse passes a relay neuron; s0, valid at step 1, reaches
the add at step 3 through one synapse step plus a delay of 1.) Every neuron process holds 6 x 6 x 4
= 144 neurons, except the relay: 6 x 6 x 2 = 72. The tests place 64 neurons per core, so that
layers span several cores; Lava's (W, H, C) order puts channels fastest, then H (y), then W (x):
a core of 64 neurons of 4 channels holds 16 pixels, x-major.
"""
from __future__ import annotations

import numpy as np
import pytest

from medqk.convert.elementwise import Add, ChannelSlice
from medqk.convert.graph import SPIKE, Graph, Node, TensorInfo
from medqk.convert.io import Input
from medqk.convert.neurons import NISF
from medqk.convert.synapses import Conv2d
from medqk.deploy.lava_graph import lower
from medqk.deploy.loihi2_library import library_resources
from medqk.errors import MedqkError

NEURONS_PER_CORE = 64


def _nisf() -> NISF:
    return NISF(levels=4, integer_output=True, multiplier=1, shift=0)  # s = clip(x, 0, 4)


def hand_network(size: int = 6) -> Graph:
    """The module docstring's network on a ``size`` x ``size`` image. Its convolution copies input
    channel 0 to output channel 0 and 1 to 1 (center taps of 1; every other weight 0)."""
    weight = np.zeros((4, 2, 3, 3), np.int64)
    weight[0, 0, 1, 1] = weight[1, 1, 1, 1] = 1
    conv = Conv2d(weight=weight.astype(np.float32), padding=(1, 1), weight_mantissa=weight, weight_exponent=0,
                  bias_acc=np.zeros(4, np.int64), shift=0)

    def spikes(channels):
        return TensorInfo((channels, size, size), kind=SPIKE, levels=4)

    graph = Graph()
    graph.add(Node("x", Input(shape=(4, size, size)), [], TensorInfo((4, size, size), frac_bits=0)))
    graph.add(Node("s0", _nisf(), ["x"], spikes(4)))
    graph.add(Node("slice", ChannelSlice(start=0, stop=2), ["s0"], spikes(2)))
    graph.add(Node("conv", conv, ["slice"], TensorInfo((4, size, size), frac_bits=0)))
    graph.add(Node("s1", _nisf(), ["conv"], spikes(4)))
    graph.add(Node("res", Add(multipliers=(1, 1), shifts=(0, 0)), ["s0", "s1"], TensorInfo((4, size, size), frac_bits=0)))
    return graph


@pytest.fixture(scope="module")
def report():
    return library_resources(lower(hand_network()), NEURONS_PER_CORE)


def _row(rows: list, cls: str) -> dict:
    return next(row for row in rows if row["class"].endswith(cls))


def test_neurons_cores_and_relays(report):
    totals = report["totals"]
    assert totals["neurons"] == 4 * 144 + 72  # s0, conv neuron, s1, add; and the relay
    assert totals["relay_neurons"] == 72
    # ceil(144 / 64) = 3 cores for each 144-neuron process, ceil(72 / 64) = 2 for the relay
    assert [row["cores"] for row in report["neuron_processes"]] == [3, 2, 3, 3, 3]
    assert totals["cores"] == 4 * 3 + 2


def test_synaptic_memory(report):
    synapses = report["synapse_processes"]
    conv = _row(synapses, ".Conv")
    # the kernel: 4 x 3 x 3 x 2 = 72 weights of 8 bits = 72 bytes, whole in each of the conv neuron's 3 cores
    assert (conv["weights"], conv["weight_bits"], conv["cores"], conv["synaptic_memory_bytes"]) == (72, 8, 3, 216)
    # the channel slice: one 1-bit weight per kept neuron, 6 x 6 x 2 = 72 bits = 9 bytes, split over the relay's 2 cores
    channel_map = _row(synapses, ".Sparse")
    assert (channel_map["weights"], channel_map["cores"], channel_map["synaptic_memory_bytes"]) == (72, 2, 9)
    # the delay identity: 144 1-bit weights = 18 bytes over the add's 3 cores (64, 64, 16 bits: 8, 8, 2 bytes)
    delay = _row(synapses, ".DelaySparse")
    assert (delay["weights"], delay["cores"], delay["synaptic_memory_bytes"]) == (144, 3, 18)
    assert _row(report["neuron_processes"], "AddNeuron")["synaptic_memory_bytes"] == [8, 8, 2]
    assert report["totals"]["synaptic_memory_bytes"] == 216 + 9 + 18


def test_delays(report):
    delay = _row(report["synapse_processes"], ".DelaySparse")
    # s0 is valid at step 1, the add at step 3: one step through the synapse plus a delay of 1,
    # 1 extra slot for each of the 144 neurons fed
    assert (delay["delay"], delay["delay_slots"]) == (1, 144)
    assert (report["totals"]["delay_synapses"], report["totals"]["max_delay"], report["totals"]["delay_slots"]) == (1, 1, 144)


def test_input_axons_per_core(report):
    axons = {row["name"]: row["input_axons"] for row in report["neuron_processes"]}
    # one-to-one inputs: a core receives one axon per neuron it holds (64, 64, 16 of 144)
    assert axons["s0"] == axons["s1"] == [64, 64, 16]
    # the relay's 72 neurons read channels 0..1 of s0 one-to-one through the slice: 64, 8
    assert axons[next(name for name in axons if "relay" in name)] == [64, 8]
    # The conv neuron's cores hold pixels 0..15, 16..31, 32..35 (pixel = 6 x + y) of the 6 x 6 map,
    # each reading the 3 x 3 window around it of both relay channels:
    # core 0: x = 0, 1 (all y) and x = 2 (y 0..3): input columns 0..2 whole (18 pixels) and
    #         column 3 at y 0..4 (5) = 23 pixels x 2 channels = 46
    # core 1: (2, 4), (2, 5), x = 3, 4 (all y), (5, 0), (5, 1): column 1 at y 3..5 (3) and
    #         columns 2..5 whole (24) = 27 pixels x 2 = 54
    # core 2: (5, 2..5): columns 4..5 at y 1..5 = 10 pixels x 2 = 20
    assert axons["conv"] == [46, 54, 20]
    # the add: its neurons' s1 inputs (one-to-one) and their s0 inputs through the delay, two axons each
    assert axons["res"] == [128, 128, 32]
    assert report["totals"]["max_input_axons_per_core"] == 128


def test_every_figure_has_a_source_and_a_confidence(report):
    assert report["neurons_per_core"] == {"value": 64, "source": "chosen by the caller", "confirmed": False}
    definitions = report["definitions"]
    assert all(d["source"] and isinstance(d["confirmed"], bool) for d in definitions.values())
    assert definitions["neurons"]["confirmed"] and not definitions["cores"]["confirmed"]
    assert not definitions["input_axons"]["confirmed"] and not definitions["synaptic_memory_bytes"]["confirmed"]
    assert report["violations"] == []


def test_cores_beyond_the_fan_in_estimate_are_named_by_process_and_core():
    # 40 x 40 x 4 = 6,400 neurons fit one core of the default 8,192: s0 and s1 then receive 6,400
    # axons, the add 6,400 from s1 and 6,400 from s0 (through the delay), all beyond the estimated
    # 4,096; the relay (3,200) and the conv neuron (40 x 40 pixels x 2 channels = 3,200) stay within
    report = library_resources(lower(hand_network(size=40)))
    assert report["neurons_per_core"]["value"] == 8192 and report["neurons_per_core"]["confirmed"] is False
    broken = {v["layer"]: (v["value"], v["bound"], v["confirmed"]) for v in report["violations"]}
    assert broken == {"s0, 1 of 1 cores (worst: core 0)": (6400, 4096, False),
                      "s1, 1 of 1 cores (worst: core 0)": (6400, 4096, False),
                      "res, 1 of 1 cores (worst: core 0)": (12_800, 4096, False)}


def test_a_bad_core_size_is_refused():
    with pytest.raises(MedqkError, match="neurons per core must be at least 1, got 0"):
        library_resources(lower(hand_network()), 0)


def _hand_image() -> np.ndarray:
    """Three nonzero values, each a spike of s0 (s = clip(x, 0, 4)): channel 0 at the corner
    (y 0, x 0) = 3, channel 1 inside (y 2, x 3) = 1, channel 3 (not in the slice) at (5, 5) = 2."""
    x = np.zeros((1, 4, 6, 6), np.int64)
    x[0, 0, 0, 0], x[0, 1, 2, 3], x[0, 3, 5, 5] = 3, 1, 2
    return x


@pytest.mark.parametrize("models", ["fast", "reference"])
def test_per_step_activity_counts_every_neuron_update_and_every_synaptic_event(models):
    """A Loihi core updates all its neurons every step, and a synapse fed by one of Lava's own
    neurons (here the relay in front of the convolution) has its events counted too."""
    pytest.importorskip("lava.magma.core.run_configs", reason="Lava is not installed (bash install.sh)")
    from medqk.convert import interpret_int
    from medqk.deploy.lava_library import process_activity, run_image, step_activity

    graph, x = hand_network(), _hand_image()
    lowered = lower(graph)
    run = run_image(graph, x, models, lowered)
    assert np.array_equal(run.logits, interpret_int.run(graph, x))
    processes = process_activity(lowered, [run])
    steps = step_activity(lowered, processes, images=1)
    # 648 neurons (module docstring) update at each of the 3 steps
    assert [s["neuron_updates"] for s in steps] == [648, 648, 648]
    # step 1: s0's 2 spikes in channels 0..1 reach the slice (1 connection each), its 3 spikes the
    # delay (1 each); step 2: the relay's corner spike reaches 2 x 2 pixels x 4 channels = 16
    # connections of the 3 x 3 convolution, its inside spike 3 x 3 x 4 = 36
    assert [s["synaptic_events"] for s in steps] == [2 + 3, 16 + 36, 0]
    conv = next(p for p in processes.values() if p["class"].endswith(".Conv"))
    assert (conv["synaptic_events"], conv["acs"]) == (52, 3 * 16 + 1 * 36)
    # spikes sent: step 1 the image's 3 values and s0's 3 spikes (3 + 1 + 2 each); step 2 the relay's
    # 2 (3 + 1); step 3 the conv neuron's and s1's 2 each (channels 0, 1 copied: 3 + 1) and the add's
    # 3 (3 + 3, 1 + 1, 2)
    assert [s["spikes"] for s in steps] == [3 + 3, 2, 2 + 2 + 3]
    assert [s["payload_sum"] for s in steps] == [6 + 6, 4, 4 + 4 + 10]
    relay = next(p for p in processes.values() if p["class"].endswith("GradedVec"))
    assert (relay["spikes"], relay["payload_sum"], relay["neuron_updates"]) == (2, 4, 72 * 3)


def test_the_energy_report_prices_the_per_step_counts():
    from medqk.energy.chip import per_step_view

    # the hand run above: spikes 6, 2, 7; synaptic events 5, 52, 0; 648 neuron updates a step
    steps = [{"step": t, "spikes": s, "synaptic_events": e, "neuron_updates": 648}
             for t, s, e in ((1, 6, 5), (2, 2, 52), (3, 7, 0))]
    view = per_step_view(steps, images=1)
    # Loihi (Davies et al. 2018, Table 2): 81 pJ a firing update, 52 a silent one, 23.6 a synaptic op, 1.7 a spike
    assert view["energy_pj"] == pytest.approx(15 * 81.0 + (3 * 648 - 15) * 52.0 + 57 * 23.6 + 15 * 1.7)
    assert view["steps"] == 3 and per_step_view(steps, images=3)["energy_pj"] == pytest.approx(view["energy_pj"] / 3)


def test_upsampling_connectivity_without_its_matrix_equals_the_matrix():
    """``upsample_presynaptic`` reads the tap bytes directly; on digit planes of a 24-bit input it
    must give what the Sparse's weight matrix (``lava_library.sparse_weights``) gives, for a whole
    layer and for rows that split pixels and planes."""
    from medqk.convert.synapses import Upsample
    from medqk.deploy.lava_library import sparse_weights
    from medqk.deploy.loihi2_library import distinct, upsample_presynaptic

    graph = Graph()
    graph.add(Node("x", Input(shape=(3, 5, 4)), [], TensorInfo((3, 5, 4), frac_bits=16)))
    op = Upsample(factor=2, frac_bits=12)
    graph.add(Node("up", op, ["x"], TensorInfo(tuple(op.out_shape([(3, 5, 4)])), frac_bits=16)))
    taps = next(p for p in lower(graph).processes if "taps" in p.params)
    assert taps.params["planes"] > 1 and len(taps.params["taps"]) > 1
    matrix = sparse_weights(taps)
    for rows in (np.arange(matrix.shape[0]), np.arange(7, matrix.shape[0], 5)):
        presynaptic, weights = upsample_presynaptic(taps, rows)
        assert np.array_equal(presynaptic, distinct(matrix[rows].indices)) and weights == matrix[rows].nnz
