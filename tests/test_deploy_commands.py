"""`medqk run` with the in-process backends (ONNX and Lava have their own tests)."""
import json

import numpy as np
import pytest
from PIL import Image

from medqk.cli import main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "model"
    assert main(["-q", "convert", "-o", str(out), "--calibration-count", "1"]) == 0
    return out


@pytest.mark.parametrize("backend", ["torch", "ir", "ir-int"])
def test_run_writes_mask_probabilities_and_json(model_dir, tmp_path, backend):
    out, probs, record = tmp_path / "mask.png", tmp_path / "p.npy", tmp_path / "r.json"
    assert main(["-q", "run", str(model_dir), "--backend", backend, "--out", str(out),
                 "--save-probs", str(probs), "--json", str(record)]) == 0
    p = np.load(probs)
    assert p.dtype == np.float32 and p.shape == (64, 64) and 0 <= p.min() <= p.max() <= 1
    mask = np.asarray(Image.open(out))
    assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}
    assert np.array_equal(mask > 0, p > 0.5)
    assert json.loads(record.read_text())["backend"] == backend


def test_run_takes_a_network_input_array(model_dir, tmp_path):
    from medqk.defaults import default_image

    x = default_image(64).image
    np.save(tmp_path / "x.npy", x)
    assert main(["-q", "run", str(model_dir), "--image", str(tmp_path / "x.npy"), "--backend", "ir",
                 "--save-probs", str(tmp_path / "a.npy")]) == 0
    assert main(["-q", "run", str(model_dir), "--backend", "ir", "--save-probs", str(tmp_path / "b.npy")]) == 0
    assert np.array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))  # the default is that image


def test_run_on_a_checkpoint_converts_in_memory(tmp_path):
    assert main(["-q", "run", "--backend", "ir-int", "--save-probs", str(tmp_path / "p.npy")]) == 0
    assert np.load(tmp_path / "p.npy").shape == (64, 64)


@pytest.mark.parametrize("shape,message", [((3, 48, 48), "converted for 64x64"), ((1, 64, 64), "input channel"),
                                           ((3, 60, 64), "multiples of 16")])
def test_run_refuses_inputs_of_the_wrong_shape(model_dir, tmp_path, capsys, shape, message):
    np.save(tmp_path / "x.npy", np.zeros(shape, dtype=np.float32))
    assert main(["run", str(model_dir), "--image", str(tmp_path / "x.npy")]) == 2
    assert message in capsys.readouterr().err


def test_run_refuses_an_unreadable_image(model_dir, tmp_path, capsys):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    assert main(["run", str(model_dir), "--image", str(tmp_path / "broken.png")]) == 2
    assert "broken.png" in capsys.readouterr().err


def test_lava_run_is_bit_exact_and_its_activity_feeds_the_energy_report(model_dir, tmp_path, capsys):
    lava, ref, activity = tmp_path / "lava.npy", tmp_path / "int.npy", tmp_path / "activity.json"
    assert main(["run", str(model_dir), "--backend", "lava", "--save-probs", str(lava), "--activity", str(activity)]) == 0
    out = capsys.readouterr().out
    assert "Lava's library processes" in out and "time steps" in out and "% firing" in out
    assert main(["-q", "run", str(model_dir), "--backend", "ir-int", "--save-probs", str(ref)]) == 0
    assert np.array_equal(np.load(lava), np.load(ref))
    from_lava, from_interpreter = tmp_path / "a.json", tmp_path / "b.json"
    assert main(["-q", "energy", "report", str(model_dir), "--activity", str(activity), "--json", str(from_lava)]) == 0
    assert main(["-q", "energy", "report", str(model_dir), "--json", str(from_interpreter)]) == 0
    a, b = json.loads(from_lava.read_text()), json.loads(from_interpreter.read_text())
    assert a["totals"] == b["totals"] and a["firing"] == b["firing"]


def test_activity_needs_the_lava_backend(model_dir, tmp_path, capsys):
    assert main(["run", str(model_dir), "--backend", "ir", "--activity", str(tmp_path / "a.json")]) == 2
    assert "--backend lava" in capsys.readouterr().err


def test_convert_writes_the_loihi2_report(model_dir):
    doc = json.loads((model_dir / "loihi2.json").read_text())
    s = doc["summary"]
    assert s["layers"] == 57 and s["cores"] >= 1 and s["chips"] >= 1
    assert {f["what"] for f in doc["figures"]} and all("source" in f for f in doc["figures"])
    library = doc["lava_library_resources"]  # the library graph's figures, process by process (loihi2_library)
    assert library["totals"]["neurons"] == sum(p["neurons"] for p in library["neuron_processes"]) > 0
    assert library["totals"]["delay_synapses"] == doc["lava_library_graph"]["delay_synapses"] > 0
