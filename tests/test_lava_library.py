"""The Lava library graph (``deploy.lava_graph`` lowered, ``deploy.lava_library`` run): its plan
(timing, delays, refusals), ``medqk inspect --lava``, and runs with both model sets, bit for bit
equal to the integer interpreter (reference == fast == ir-int), also as ``medqk run --backend
lava`` with its activity file read by ``medqk energy report``.

Runs use a part of a real converted MedQKFormer (the ancestors of one node: every op of an SDQK
block, digit planes, delays, relays, a rescaled add) and a hand-built upsampling graph, small
enough that Lava starts its ~50 processes within a minute on a loaded 2-core machine.
"""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import networkx as nx
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import support  # noqa: E402

from medqk.convert import interpret_int  # noqa: E402
from medqk.convert.elementwise import MaxPool2d, Mul  # noqa: E402
from medqk.convert.graph import Graph, Node, TensorInfo  # noqa: E402
from medqk.convert.io import Input, quantize_input  # noqa: E402
from medqk.convert.synapses import Upsample  # noqa: E402
from medqk.deploy.lava_graph import MAX_DELAY, SYNAPSES, lower  # noqa: E402
from medqk.errors import MedqkError  # noqa: E402

SIZE = 16
#: the subgraph that ends here holds every op of an SDQK block and a rescaled add
SUBGRAPH_END = "encoder_stages.0.SDQK.msc.add_4"


@pytest.fixture(scope="module")
def small_graph():
    """The small MedQKFormer (widths 8) quantized at 16x16 on a random image, and that image."""
    from medqk.convert.pipeline import float_graph_of
    from medqk.convert.quantize import quantize

    image = np.random.default_rng(0).random((1, 3, SIZE, SIZE), np.float32)
    graph, _ = quantize(float_graph_of(support.small_model(widths=(8, 8, 8, 8)), (SIZE, SIZE)), image)
    return graph, quantize_input(image, graph.input.tensor.frac_bits)


def subgraph(graph: Graph, end: str) -> Graph:
    """``end`` and its ancestors, as a graph whose output is ``end``."""
    keep = nx.ancestors(graph.nx_graph(), end) | {end}
    part = Graph()
    for node in graph.nodes():
        if node.name in keep:
            part.add(copy.copy(node))
    return part


def test_every_operand_arrives_at_its_consumers_valid_step(small_graph):
    """The whole network: a neuron's inputs are valid at its own step, a synapse's one step (plus its
    delay) before; delays stay within Loihi 2's 6 bits; the run length is the output's step."""
    graph, _ = small_graph
    lowered = lower(graph)
    step = {p.name: p.valid_step for p in lowered.processes}
    kinds = {p.kind for p in lowered.processes}
    assert {"Conv", "Sparse", "DelaySparse", "ProdNeuron", "NISFNeuron", "DigitPlanes", "UpsampleNeuron"} <= kinds
    for spec in lowered.processes:
        lag = 1 + spec.delay if spec.kind in SYNAPSES else 0
        for sources in spec.inputs.values():
            assert {step[s.rsplit(".", 1)[0]] for s in sources} == {spec.valid_step - lag}, spec.name
        assert 0 <= spec.delay <= MAX_DELAY
    assert lowered.steps == lowered[lowered.output].valid_step == max(step.values())
    assert any(p.delay for p in lowered.processes)


def _tiny(op, shape=(2, 4, 4), inputs: int = 1) -> Graph:
    graph = Graph()
    graph.add(Node("x", Input(shape=shape), [], TensorInfo(shape, frac_bits=16)))
    graph.add(Node("y", op, ["x"] * inputs, TensorInfo(tuple(op.out_shape([shape] * inputs)), frac_bits=16)))
    return graph


def test_an_op_without_a_lava_process_is_refused_by_name():
    from medqk.convert.neurons import ReLU

    with pytest.raises(MedqkError, match=r"node y: relu has no Lava library lowering: float graphs only"):
        lower(_tiny(ReLU()))


def test_inspect_lava_lists_every_process(small_graph, tmp_path, capsys):
    from medqk.cli import main
    from medqk.convert.serialize import ConvertedModel, save_model

    graph, _ = small_graph
    part = subgraph(graph, SUBGRAPH_END)
    save_model(ConvertedModel(part, part, {"image_size": [SIZE, SIZE]}), tmp_path / "m")
    out = tmp_path / "processes.json"
    assert main(["inspect", str(tmp_path / "m"), "--lava", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["name"] for r in rows] == [p.name for p in lower(part).processes]
    conv = next(r for r in rows if r["class"] == "lava.proc.conv.process.Conv")
    assert conv["library"] == "lava" and conv["weight_bits"] == 8 and conv["weight_exp"] == 0 and len(conv["shape"]) == 3
    nisf = next(r for r in rows if r["class"].endswith("NISFNeuron"))
    assert nisf["library"] == "medqk" and nisf["message_bits"] == 4  # spikes 0..4 and a sign bit
    assert {"name", "class", "library", "shape", "weight_bits", "weight_exp", "message_bits", "delay"} <= set(rows[0])
    assert "lava.proc.sparse.process.DelaySparse" in capsys.readouterr().out


def _run(graph: Graph, x: np.ndarray, models: str) -> np.ndarray:
    from medqk.deploy.lava_library import run_image

    pytest.importorskip("lava.magma.core.run_configs", reason="Lava is not installed (bash install.sh)")
    return run_image(graph, x, models).logits


@pytest.mark.parametrize("models", ["reference", "fast"])
def test_sdqk_block_equals_the_interpreter(small_graph, models):
    """Lava's own fixed-point models (reference) and medqk's (fast) both give the interpreter's
    integers, so reference == fast == ir-int."""
    graph, x = small_graph
    part = subgraph(graph, SUBGRAPH_END)
    assert {"RescaleNeuron", "ProdNeuron", "ComplementNeuron", "DelaySparse"} <= {p.kind for p in lower(part).processes}
    assert np.array_equal(_run(part, x, models), interpret_int.run(part, x))


@pytest.mark.parametrize("models", ["reference", "fast"])
def test_upsampling_of_24_bit_states_equals_the_interpreter(models):
    """Bilinear upsampling as a Sparse of tap bytes on digit planes, the largest states included."""
    graph = _tiny(Upsample(factor=2, frac_bits=12))
    x = np.random.default_rng(1).integers(-(2**23), 2**23, (1, 2, 4, 4))
    x[0, 0, 0] = [2**23 - 1, -(2**23), 2**23 - 1, -(2**23)]
    assert np.array_equal(_run(graph, x, models), interpret_int.run(graph, x))


@pytest.mark.parametrize("models", ["reference", "fast"])
@pytest.mark.parametrize("peak", [4, 2**23 - 1])
def test_max_pooling_equals_the_interpreter(models, peak):
    """Max pooling: a 0/1 Sparse gathers each window into compartments, a MaxNeuron keeps the
    largest; on spikes and on full-range 24-bit states (negative ones included)."""
    graph = _tiny(MaxPool2d(kernel=2, stride=2), shape=(3, 6, 4))
    low = -peak if peak > 4 else 0
    x = np.random.default_rng(2).integers(low, peak + 1, (1, 3, 6, 4))
    assert {"Sparse", "MaxNeuron"} <= {p.kind for p in lower(graph).processes}
    assert np.array_equal(_run(graph, x, models), interpret_int.run(graph, x))


def test_a_value_beyond_the_payload_is_refused_by_layer_and_value():
    """An add whose operand the IR shifts left by 12 before summing (and saturating): that operand
    cannot travel as a 24-bit graded spike, so the run stops naming the process and the value."""
    from medqk.convert.elementwise import Add

    add = Add(coefficients=(1.0, 1.0))
    add.multipliers, add.shifts = (1, 1), (-12, 0)
    graph = Graph()
    graph.add(Node("x", Input(shape=(1, 2, 2)), [], TensorInfo((1, 2, 2), frac_bits=16)))
    graph.add(Node("y", add, ["x", "x"], TensorInfo((1, 2, 2), frac_bits=16)))
    x = np.full((1, 1, 2, 2), 2**20)
    with pytest.raises(MedqkError, match=r"y/rescale0: value 4294967296 exceeds the 24-bit"):
        _run(graph, x, "fast")


def test_conversion_records_the_library_graph_or_the_layer_it_refuses(small_graph):
    from medqk.deploy.resources import library_graph_summary

    graph, _ = small_graph
    summary = library_graph_summary(graph)
    lowered = lower(graph)
    assert summary["processes"] == len(lowered.processes) and summary["steps"] == lowered.steps
    assert 0 < summary["lava_processes"] < summary["processes"] and summary["max_delay"] <= MAX_DELAY
    refused = library_graph_summary(_tiny(Mul(), inputs=2))["refused"]
    assert refused == "layer y: only products of spike maps are lowered (ProdNeuron's 24-bit state)"


@pytest.fixture(scope="module")
def sdqk_dir(small_graph, tmp_path_factory):
    """The SDQK subgraph as a converted model directory, for `medqk run` and `medqk energy report`."""
    from medqk.convert.serialize import ConvertedModel, save_model

    part = subgraph(small_graph[0], SUBGRAPH_END)
    return save_model(ConvertedModel(part, part, {"image_size": [SIZE, SIZE]}), tmp_path_factory.mktemp("lava") / "sdqk")


@pytest.mark.parametrize("models", ["reference", "fast"])
def test_run_backend_lava_library_equals_ir_int_and_its_activity_feeds_the_energy_report(small_graph, sdqk_dir, tmp_path,
                                                                                         capsys, models):
    """`medqk run --backend lava` gives ir-int's mask and output bit for bit with either model
    set; its activity file (NISF spikes from the neurons' counters, synaptic events counted by the
    neurons that feed each synapse) prices the same as the interpreter's count of the same image."""
    from medqk.cli import main
    from PIL import Image

    pytest.importorskip("lava.magma.core.run_configs", reason="Lava is not installed (bash install.sh)")
    activity = tmp_path / "activity.json"
    assert main(["run", str(sdqk_dir), "--backend", "lava", "--lava-models", models, "--activity", str(activity),
                 "--save-probs", str(tmp_path / "lava.npy"), "--out", str(tmp_path / "lava.png")]) == 0
    out = capsys.readouterr().out
    assert f"lava ({models} models)" in out and "time steps" in out and "build" in out and "% firing" in out
    assert main(["-q", "run", str(sdqk_dir), "--backend", "ir-int",
                 "--save-probs", str(tmp_path / "int.npy"), "--out", str(tmp_path / "int.png")]) == 0
    assert np.array_equal(np.load(tmp_path / "lava.npy"), np.load(tmp_path / "int.npy"))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "lava.png")), np.asarray(Image.open(tmp_path / "int.png")))

    doc = json.loads(activity.read_text())
    processes, per_step = doc["processes"], doc["per_step"]
    assert [s["step"] for s in per_step] == list(range(1, lower(subgraph(small_graph[0], SUBGRAPH_END)).steps + 1))
    for key in ("spikes", "payload_sum", "synaptic_events", "neuron_updates"):
        assert sum(s[key] for s in per_step) == sum(p[key] or 0 for p in processes.values()) > 0, key
    for name, population in doc["populations"].items():
        nisf = next(p for p in processes.values() if p["node"] == name and p["class"].endswith("NISFNeuron"))
        assert (population["nonzero"], population["spike_sum"]) == (nisf["spikes"], nisf["payload_sum"])
    from_lava, from_interpreter = tmp_path / "a.json", tmp_path / "b.json"
    assert main(["-q", "energy", "report", str(sdqk_dir), "--activity", str(activity), "--json", str(from_lava)]) == 0
    assert main(["-q", "energy", "report", str(sdqk_dir), "--json", str(from_interpreter)]) == 0
    a, b = json.loads(from_lava.read_text()), json.loads(from_interpreter.read_text())
    assert a["totals"] == b["totals"] and a["firing"] == b["firing"]
    # the run's own counts per step are priced in a section of their own (the interpreter has none)
    priced = {row["quantity"]: row["count"] for row in a["chip_per_step"]["rows"]}
    assert priced["synaptic ops"] == sum(s["synaptic_events"] for s in per_step) and "chip_per_step" not in b


def test_lava_models_needs_the_library_backend(sdqk_dir, capsys):
    from medqk.cli import main

    assert main(["run", str(sdqk_dir), "--backend", "ir-int", "--lava-models", "fast"]) == 2
    assert "--backend lava" in capsys.readouterr().err


def test_a_trained_checkpoint_at_256x256_equals_the_interpreter(monuseg_trained):
    """The published-width MoNuSeg checkpoint's whole Lava graph (about 400 processes, fast models)
    on a validation image at its 256x256 input: bit for bit the integer interpreter's logits."""
    m = monuseg_trained
    x = quantize_input(m.images[:1], m.qgraph.input.tensor.frac_bits)
    assert np.array_equal(_run(m.qgraph, x, "fast"), interpret_int.run(m.qgraph, x))
