"""`medqk compare`: backends scored against the ground truth and against the first backend."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medqk.cli import main
from medqk.deploy.backends import ModelHandle
from medqk.deploy.compare import compare_backends, score_table
from medqk.metrics import METRIC_NAMES
from support import fit_batchnorm


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "model"
    assert main(["-q", "convert", "-o", str(out), "--calibration-count", "1"]) == 0
    return out


def test_scores_follow_the_masks(model_dir):
    from medqk.data import synthetic_batch

    images, masks = synthetic_batch(5, 64, seed=3)
    scored, foreground = compare_backends(ModelHandle(model_dir), images, masks, ["ir", "ir-int", "onnx-int"], batch_size=2)
    scores = {s.backend: s for s in scored}
    assert foreground == "foreground = label 1"
    assert scores["ir"].dice_vs_reference == scores["ir"].pixels_vs_reference == 1.0
    assert scores["ir-int"].metrics == scores["onnx-int"].metrics  # bit-exact backends score alike
    assert scores["onnx-int"].dice_vs_reference == scores["ir-int"].dice_vs_reference < 1.0
    assert 0.5 < scores["ir"].metrics["DSC"] <= 1 and set(scores["ir"].metrics) == set(METRIC_NAMES)
    # scored against its own masks as the ground truth, a backend is perfect
    from medqk.deploy.backends import BACKENDS

    own = (BACKENDS["ir"](ModelHandle(model_dir), images).probabilities > 0.5).astype(np.float32)
    perfect = compare_backends(ModelHandle(model_dir), images, own, ["ir"])[0][0]
    assert all(value == pytest.approx(1.0) for value in perfect.metrics.values())
    table = score_table(list(scores.values()), "ir")
    assert "Dice vs ir" in table and table.count("\n") == 4


def test_compare_command_writes_every_metric_as_json(model_dir, tmp_path):
    out = tmp_path / "scores.json"
    assert main(["-q", "compare", str(model_dir), "--count", "3", "--backends", "torch", "ir-int", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["reference"] == "torch" and len(record["images"]) == 3
    assert [b["backend"] for b in record["backends"]] == ["torch", "ir-int"]
    assert set(record["backends"][1]["metrics"]) == set(METRIC_NAMES)


def test_bad_input_is_named(model_dir, tmp_path, capsys):
    assert main(["compare", str(model_dir), "--backends", "ir", "ir"]) == 2
    assert "lists a backend twice" in capsys.readouterr().err
    assert main(["compare", str(model_dir), "--data", str(tmp_path / "absent")]) == 2
    assert "no such dataset folder" in capsys.readouterr().err


# -- the user's own networks: logits and a two-class softmax ---------------------------------------

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _write_images(folder: Path, count: int, size: int) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)
    paths = [folder / f"case{i}.png" for i in range(count)]
    for path in paths:
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return paths


@pytest.mark.parametrize("example, activation", [("spikeyolo_segmenter", "none"), ("softmax_net", "softmax")])
def test_compare_scores_logits_at_zero_and_softmax_by_the_most_likely_class(example, activation, tmp_path):
    """Ground truth = torch's own labels, so torch must score 1.0: with logits thresholded at 0.5
    instead of 0 (a tenth of the pixels or more lie in (0, 0.5]) or the softmax's channel 0 scored
    as the foreground, it would not."""
    from PIL import Image

    from medqk.convert import factory
    from medqk.convert.pipeline import predicted_labels, preprocessing_for, torch_probabilities
    from medqk.data.preprocess import load_image

    spec, data = f"{EXAMPLES / example}.py:build", tmp_path / "data"
    paths = _write_images(data / "img", 4, 32)
    images = np.stack([load_image(path, preprocessing_for((3, 32, 32))) for path in paths])
    module = fit_batchnorm(factory.load(spec, None)[0], images)
    if activation == "none":  # centre the logits at 0.25, so many lie between the two thresholds
        head = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        with torch.no_grad():
            head.bias -= float(np.median(torch_probabilities(module, images))) - 0.25
        logits = torch_probabilities(module, images)
        assert np.mean((logits > 0) & (logits <= 0.5)) > 0.1
    torch.save(module.state_dict(), tmp_path / "weights.pt")
    model = tmp_path / "model"
    assert main(["-q", "convert", "--model", spec, "--weights", str(tmp_path / "weights.pt"), "--input-shape", "3", "32", "32",
                 "-o", str(model), "--calibrate", str(data / "img"), "--no-sensitivity"]) == 0

    outputs = torch_probabilities(module, images)  # the truth written out, not by the function under test
    truth = (outputs[:, 0] > 0 if activation == "none" else outputs[:, 1] > outputs[:, 0]).astype(np.int64)
    assert 0.05 < truth.mean() < 0.95
    (data / "labelcol").mkdir()
    for path, labels in zip(paths, truth):
        Image.fromarray((labels * 255).astype(np.uint8)).save(data / "labelcol" / path.name)

    out = tmp_path / "scores.json"
    assert main(["-q", "compare", str(model), "--data", str(data), "--backends", "ir-int", "onnx-int", "torch",
                 "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    scores = {b["backend"]: b for b in record["backends"]}
    assert record["foreground"] == "foreground = label 1"
    assert scores["onnx-int"]["pixels_vs_reference"] == scores["onnx-int"]["dice_vs_reference"] == 1.0
    assert scores["onnx-int"]["metrics"] == scores["ir-int"]["metrics"]
    assert scores["torch"]["metrics"]["DSC"] == scores["torch"]["metrics"]["mIoU"] == 1.0

    # `run --out` writes the same labels, foreground 255
    mask_png = tmp_path / "mask.png"
    assert main(["-q", "run", str(model), "--backend", "ir-int", "--image", str(paths[0]), "--out", str(mask_png)]) == 0
    from medqk.deploy.backends import BACKENDS

    ir_int = predicted_labels(BACKENDS["ir-int"](ModelHandle(model), images[:1]).probabilities, activation)[0]
    assert np.array_equal(np.asarray(Image.open(mask_png)), (ir_int * 255).astype(np.uint8))


def test_k_class_masks_round_trip_and_score_the_mean_over_the_classes_present(tmp_path):
    from medqk.data.preprocess import load_mask
    from medqk.deploy.commands import save_mask_png
    from medqk.deploy.compare import foreground_description, foreground_metrics, scored_classes, truth_labels

    labels = np.random.default_rng(0).integers(0, 4, (1, 8, 8))
    save_mask_png(labels[0], 4, tmp_path / "mask.png")
    assert np.array_equal(truth_labels(load_mask(tmp_path / "mask.png", (8, 8))[None], 4), labels)

    truth = np.where(labels == 2, 0, labels)  # classes 0, 1, 3
    predicted = np.where(truth == 3, 2, truth)  # class 1 right, every class-3 pixel called 2
    foreground = scored_classes(truth, 4)
    assert foreground == [1, 3] and "(1, 3)" in foreground_description(foreground, 4)
    assert foreground_metrics(predicted, truth, foreground)["DSC"] == pytest.approx(0.5)
