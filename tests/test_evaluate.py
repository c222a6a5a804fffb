"""Evaluation: metrics of a model on a dataset, the `medqk eval` table and JSON, mask and overlay PNGs."""
import json

import numpy as np
import torch
from PIL import Image

from medqk.checkpoint import save_checkpoint
from medqk.cli import main
from medqk.data import Preprocessing, SyntheticDataset, load_split
from medqk.defaults import default_checkpoint_path
from medqk.evaluate import evaluate, evaluation_dataset, outline, overlay
from medqk.metrics import METRIC_NAMES

from test_data import build_pairs


class OracleModel(torch.nn.Module):
    """Answers with a fixed map per call, to check the bookkeeping of evaluate()."""

    def __init__(self, answers):
        super().__init__()
        self.answers = list(answers)

    def forward(self, x):
        return self.answers.pop(0)


def test_per_image_metrics_follow_the_dataset_order():
    dataset = SyntheticDataset(3, 32, seed=5)
    masks = torch.stack([dataset[i][1] for i in range(3)])
    answers = [torch.cat([masks[:2], 1 - masks[2:3]])]  # right, right, inverted
    result = evaluate(OracleModel(answers), dataset, batch_size=3)
    assert result.names == dataset.names
    assert result.per_image["DSC"].tolist() == [1.0, 1.0, 0.0]
    assert result.mean["DSC"] == 2 / 3
    assert result.to_json()["per_image"][2]["name"] == dataset.names[2]


def test_masks_and_overlays_are_written(tmp_path):
    dataset = SyntheticDataset(2, 32, seed=5)
    masks = torch.stack([dataset[i][1] for i in range(2)])
    evaluate(OracleModel([masks]), dataset, batch_size=2, masks_dir=tmp_path)
    written = np.array(Image.open(tmp_path / f"{dataset.names[1]}_mask.png"))
    assert np.array_equal(written, masks[1, 0].numpy().astype(np.uint8) * 255)
    shown = np.array(Image.open(tmp_path / f"{dataset.names[0]}_overlay.png"))
    assert shown.shape == (32, 32, 3)


def test_overlay_tints_the_prediction_and_outlines_the_truth():
    image = np.zeros((3, 8, 8), np.float32)
    truth = np.zeros((8, 8), bool)
    truth[2:6, 2:6] = True
    predicted = np.zeros((8, 8), bool)
    predicted[0, 0] = True
    rgb = overlay(image, truth, predicted, "BGR")
    assert rgb[0, 0, 0] > 100 and rgb[0, 0, 1] < 30  # red tint
    assert tuple(rgb[2, 2]) == (25, 255, 25) and tuple(rgb[3, 3]) == (0, 0, 0)  # outline, not inside
    assert outline(truth).sum() == 12


def test_overlay_turns_bgr_inputs_back_to_rgb():
    image = np.zeros((3, 4, 4), np.float32)
    image[2] = 1.0  # R in BGR order
    rgb = overlay(image, np.zeros((4, 4), bool), np.zeros((4, 4), bool), "BGR")
    assert tuple(rgb[1, 1]) == (255, 0, 0)


def test_eval_command_on_a_folder_writes_table_json_and_pngs(tmp_path, small_model, capsys):
    checkpoint = save_checkpoint(tmp_path / "small.pt", small_model, Preprocessing((32, 32)))
    build_pairs(tmp_path / "data/img", tmp_path / "data/labelcol", ["a", "b", "c"])
    code = main(["eval", str(checkpoint), "--data", str(tmp_path / "data"), "--split", "all",
                 "--json", str(tmp_path / "eval.json"), "--masks-dir", str(tmp_path / "masks")])
    assert code == 0
    table = capsys.readouterr().out
    assert all(name in table for name in METRIC_NAMES) and "mean" in table
    record = json.loads((tmp_path / "eval.json").read_text())
    assert record["images"] == 3 and [row["name"] for row in record["per_image"]] == ["a", "b", "c"]
    assert set(record["mean"]) == set(METRIC_NAMES)
    assert sorted(p.name for p in (tmp_path / "masks").iterdir())[:2] == ["a_mask.png", "a_overlay.png"]


def test_eval_of_the_embedded_default_on_synthetic_data(tmp_path, capsys):
    code = main(["eval", "--count", "8", "--json", str(tmp_path / "default.json")])
    assert code == 0
    record = json.loads((tmp_path / "default.json").read_text())
    assert record["checkpoint"] == str(default_checkpoint_path())
    assert record["images"] == 8
    assert record["mean"]["DSC"] >= 0.8  # the default really segments


def test_eval_reports_a_bad_checkpoint_as_a_user_error(tmp_path, capsys):
    (tmp_path / "bad.pt").write_text("nope")
    assert main(["eval", str(tmp_path / "bad.pt")]) == 2
    assert "not a torch file" in capsys.readouterr().err


def test_evaluation_dataset_of_a_folder_is_all_of_it_or_the_held_out_part(tmp_path):
    build_pairs(tmp_path / "img", tmp_path / "labelcol", [f"n{i}" for i in range(10)])
    prep = Preprocessing((48, 64))
    everything, share = evaluation_dataset(str(tmp_path), prep)
    assert sorted(everything.names) == [f"n{i}" for i in range(10)] and share == f"all 10 images of {tmp_path}"
    assert everything[0][0].shape == (3, 48, 64)
    held_out, share = evaluation_dataset(str(tmp_path), prep, split="val", val_fraction=0.2, seed=41)
    assert held_out.names == [p.name for p in load_split(tmp_path, val_fraction=0.2, seed=41).val]
    assert "2 of its 10 images" in share


def test_synthetic_evaluation_uses_the_validation_stream_not_the_training_one():
    prep = Preprocessing((32, 32))
    dataset, _ = evaluation_dataset("synthetic", prep, seed=41, synthetic_count=4)
    assert len(dataset) == 4
    assert not np.array_equal(dataset[0][0].numpy(), SyntheticDataset(1, 32, seed=41)[0][0].numpy())
