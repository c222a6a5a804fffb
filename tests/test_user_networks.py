"""The user's own spiking networks: the three examples converted end to end (float IR vs torch, the
integer backends bit for bit, energy counted), neuron registration and its probe, the command line."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from medqk.convert import factory, interpret_int, interpret_torch, register_neuron
from medqk.convert.io import quantize_input
from medqk.convert.neuron_registry import TraceError
from medqk.convert.pipeline import convert_module, predicted_labels, torch_probabilities
from medqk.convert import interpret_float
from medqk.convert.neurons import output_activation
from medqk.convert.trace import trace
from medqk.errors import InputError
from medqk.nisf import NISF
from support import fit_batchnorm, random_images

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MEDQK = [sys.executable, "-m", "medqk.cli"]
SHAPE = (3, 32, 32)


def _lava_logits(qgraph, x_int: np.ndarray) -> np.ndarray:
    """Lava's integer output, image by image."""
    from medqk.deploy.lava_library import run_image

    return np.concatenate([run_image(qgraph, x_int[i:i + 1]).logits for i in range(len(x_int))])


@pytest.mark.parametrize("example", ["spikeyolo_segmenter", "if_unet", "softmax_net"])
def test_example_network_converts_and_every_backend_agrees(example, tmp_path):
    from medqk.deploy.onnx_runtime import int_logits, open_session
    from medqk.energy import activity as act
    from medqk.energy.commands import analyze
    from medqk.energy.models import get_model

    module, _ = factory.load(f"{EXAMPLES / example}.py:build", None)
    fit_batchnorm(module, random_images(8, SHAPE[1], seed=3))
    converted = convert_module(module, SHAPE, random_images(4, SHAPE[1], seed=1), tmp_path / "model")
    fgraph, qgraph = converted.float_graph, converted.int_graph
    images = random_images(3, SHAPE[1], seed=2)

    activation = output_activation(qgraph)
    torch_labels = predicted_labels(torch_probabilities(module, images), activation)
    float_labels = predicted_labels(interpret_float.run(fgraph, images), activation)
    assert np.mean(torch_labels == float_labels) >= 0.999

    x_int = quantize_input(images, qgraph.input.tensor.frac_bits)
    ir_int = interpret_int.run(qgraph, x_int)
    with torch.no_grad():  # the differentiable twin that integer-aware fine-tuning trains through
        in_torch = interpret_torch.run(qgraph, interpret_torch.graph_parameters(qgraph), torch.as_tensor(x_int, dtype=torch.float64))
    assert np.array_equal(in_torch.numpy(), ir_int)
    onnx_int = int_logits(open_session(tmp_path / "model" / "model-int.onnx", "model-int.onnx"), images)
    assert np.array_equal(ir_int, onnx_int)

    activity = act.from_images(qgraph, [(str(i), image) for i, image in enumerate(images)], len(images))
    report = analyze(converted, activity, get_model("float45"), [], example)
    spike_fed = [layer for layer in report["layers"] if layer["input_kind"] == "spike"]
    assert spike_fed and sum(layer["acs"] for layer in spike_fed) > 0
    assert report["model"]["params"] == sum(p.numel() for p in module.parameters())
    assert all(0 < f["fraction_nonzero"] < 1 for f in report["firing"].values())

    assert np.array_equal(ir_int, _lava_logits(qgraph, x_int))


# -- registration --------------------------------------------------------------------------------

class HalfUp(nn.Module):
    """Rounds half up, not half to even: differs from the declaration only at exact halves."""

    def forward(self, x):
        return torch.floor(torch.clamp(x, 0, 4) + 0.5)


class Saturating(nn.Module):
    def forward(self, x):
        return torch.round(torch.clamp(x, 0, 3))


class StrictIF(nn.Module):
    def forward(self, x):
        return (x > 1.0).float()


@pytest.mark.parametrize("cls, declaration, message", [
    (HalfUp, dict(output="integer", levels=4), r"at x = 0\.49999997\d* its forward gives 1\.0, the declaration 0\.0"),
    (Saturating, dict(output="integer", levels=4), r"at x = 3\.5 its forward gives 3\.0, the declaration 4\.0"),
    (StrictIF, dict(output="binary", threshold=1.0), r"at x = 1\.0 its forward gives 0\.0, the declaration 1\.0"),
    (Saturating, dict(output="normalized", levels=3), r"at x = 0\.50000005\d* its forward gives 1\.0, the declaration 0\.333"),
])
def test_a_neuron_that_does_not_compute_its_declaration_is_refused_with_the_first_differing_value(cls, declaration, message):
    register_neuron(cls, **declaration)
    net = nn.Sequential(nn.Conv2d(3, 4, 1), cls())
    with pytest.raises(TraceError, match=rf"^1 \({cls.__name__}\) does not compute what it is declared to .*({message})"):
        trace(net, (3, 4, 4))


def test_a_correct_declaration_traces_to_an_integer_spike_fire_op():
    register_neuron(Saturating, output="integer", levels=3)
    graph = trace(nn.Sequential(nn.Conv2d(3, 4, 1), Saturating()), (3, 4, 4))
    op = graph["1"].op
    assert op.type == "nisf" and op.levels == 3 and not op.normalized and op.threshold is None


class ShiftedNISF(NISF):
    def forward(self, x):
        return super().forward(x - 0.25)


class RenamedNISF(NISF):
    pass


def test_a_nisf_subclass_is_checked_never_assumed():
    with pytest.raises(TraceError, match=r"ShiftedNISF\) does not compute .*subclass of NISF whose forward differs.*register_neuron"):
        trace(nn.Sequential(nn.Conv2d(3, 4, 1), ShiftedNISF(4)), (3, 4, 4))
    assert trace(nn.Sequential(nn.Conv2d(3, 4, 1), RenamedNISF(4)), (3, 4, 4))["1"].op.levels == 4


@pytest.mark.parametrize("kwargs, message", [
    (dict(output="spikes", levels=4), "output must be one of integer, normalized, binary"),
    (dict(output="integer"), "give levels="),
    (dict(output="binary"), "give threshold="),
    (dict(output="integer", levels="four"), "levels must be a number or a function"),
])
def test_bad_registrations_are_one_line_input_errors(kwargs, message):
    with pytest.raises(InputError, match=message):
        register_neuron(HalfUp, **kwargs)


class MultiSpikeUnregistered(nn.Module):
    def forward(self, x):
        return torch.round(torch.clamp(x, 0, 4))


def test_an_unregistered_neuron_is_refused_with_a_pointer_to_register_neuron():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), MultiSpikeUnregistered())
    with pytest.raises(TraceError, match=r"function clamp at 1 .*supported: .*register_neuron\(MultiSpikeUnregistered"):
        trace(net, (3, 4, 4))


# -- the command line ------------------------------------------------------------------------------

def _medqk(*args):
    return subprocess.run([*MEDQK, *map(str, args)], capture_output=True, text=True)


def test_convert_model_from_a_factory_file_then_run_inspect_and_energy(tmp_path, capsys):
    from medqk.cli import main

    out = tmp_path / "model"
    done = _medqk("convert", "--model", f"{EXAMPLES / 'softmax_net.py'}:build", "--input-shape", 3, 16, 16,
                  "-o", out, "--calibration-count", 2)
    assert done.returncode == 0, done.stderr
    assert {"model.onnx", "model-int.onnx", "loihi2.json"} <= {p.name for p in out.iterdir()}
    meta = json.loads((out / "model.json").read_text())
    assert meta["output"] == {"activation": "softmax", "classes": 2} and meta["source_module"]["function"] == "build"

    # every other command reads the directory unchanged (in this process: fewer interpreter start-ups)
    probs, image = tmp_path / "p.npy", _npy_input(tmp_path)
    for backend in ("torch", "onnx-int"):  # torch: the module rebuilt from the factory file
        assert main(["run", str(out), "--backend", backend, "--save-probs", str(probs), "--image", str(image)]) == 0
        saved = np.load(probs)
        assert saved.dtype == np.float32 and saved.shape == (2, 16, 16)
        np.testing.assert_allclose(saved.sum(axis=0), 1.0, rtol=1e-5)  # softmax probabilities over the classes
    assert main(["inspect", str(out)]) == 0 and "channel_slice" in capsys.readouterr().out
    assert main(["energy", "report", str(out), "--image", str(image), "--json", str(tmp_path / "energy.json")]) == 0
    report = json.loads((tmp_path / "energy.json").read_text())
    assert report["model"]["params"] == meta["architecture"]["parameters"] == sum(
        p.numel() for p in factory.load(f"{EXAMPLES / 'softmax_net.py'}:build", None)[0].parameters())


def _npy_input(tmp_path: Path) -> Path:
    path = tmp_path / "x.npy"
    np.save(path, random_images(1, 16, seed=5)[0])
    return path


@pytest.mark.parametrize("body, message", [
    ("raise RuntimeError('broken')", "importing it failed (RuntimeError: broken)"),
    ("def build():\n    return 3", "build() returned a int, not a torch nn.Module"),
    ("x = 1", "defines no function build"),
])
def test_a_bad_factory_gives_one_line(tmp_path, body, message):
    factory_file = tmp_path / "net.py"
    factory_file.write_text(body + "\n")
    done = _medqk("convert", "--model", f"{factory_file}:build", "-o", tmp_path / "m")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]


def test_weights_load_with_weights_only_and_must_fit(tmp_path):
    spec = f"{EXAMPLES / 'if_unet.py'}:build"
    trained, _ = factory.load(spec, None)
    with torch.no_grad():
        trained.head.bias.fill_(0.75)
    torch.save(trained.state_dict(), tmp_path / "w.pt")
    module, record = factory.load(spec, tmp_path / "w.pt")
    assert float(module.head.bias.detach()) == 0.75 and record["weights"]["sha256"]
    torch.save({"head.bias": torch.zeros(1)}, tmp_path / "partial.pt")
    with pytest.raises(InputError, match=r"does not fit the module: \d+ missing keys"):
        factory.load(spec, tmp_path / "partial.pt")
    torch.save({"model": nn.Linear(2, 2)}, tmp_path / "pickled.pt")  # a pickled module: refused by weights_only
    with pytest.raises(InputError, match="not a torch file of tensors"):
        factory.load(spec, tmp_path / "pickled.pt")
