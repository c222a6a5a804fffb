"""`medqk compare`: backends scored against the ground truth and against the first backend."""
import json

import numpy as np
import pytest

from medqk.cli import main
from medqk.deploy.backends import ModelHandle
from medqk.deploy.compare import compare_backends, score_table
from medqk.metrics import METRIC_NAMES


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "model"
    assert main(["-q", "convert", "-o", str(out), "--calibration-count", "1"]) == 0
    return out


def test_scores_follow_the_masks(model_dir):
    from medqk.data import synthetic_batch

    images, masks = synthetic_batch(5, 64, seed=3)
    scores = {s.backend: s for s in compare_backends(ModelHandle(model_dir), images, masks, ["ir", "ir-int", "onnx-int"], batch_size=2)}
    assert scores["ir"].dice_vs_reference == scores["ir"].pixels_vs_reference == 1.0
    assert scores["ir-int"].metrics == scores["onnx-int"].metrics  # bit-exact backends score alike
    assert scores["onnx-int"].dice_vs_reference == scores["ir-int"].dice_vs_reference < 1.0
    assert 0.5 < scores["ir"].metrics["DSC"] <= 1 and set(scores["ir"].metrics) == set(METRIC_NAMES)
    # scored against its own masks as the ground truth, a backend is perfect
    from medqk.deploy.backends import BACKENDS

    own = (BACKENDS["ir"](ModelHandle(model_dir), images).probabilities > 0.5).astype(np.float32)
    perfect = compare_backends(ModelHandle(model_dir), images, own, ["ir"])[0]
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
