"""The paper's U-Net baseline through medqk's trainer: it learns, its checkpoint records the
network, `medqk eval` scores it, and the MedQKFormer-only loaders refuse it by name."""
import json

import pytest
import torch

from medqk.checkpoint import load_checkpoint, load_checkpoint_payload
from medqk.cli import main
from medqk.data import synthetic_validation_set
from medqk.errors import CheckpointError
from medqk.evaluate import evaluate
from medqk.train import TrainOptions, train
from medqk.unet import UNet

#: Margins, not one machine's figures: in the run these were set from, val DSC went from 0.16
#: (untrained) to 0.77 and 0.95 in epochs 2 and 3; the test asks for half that gain.
UNET_DICE_GAIN = 0.4
UNET_DICE_FLOOR = 0.6


def unet_options(out, **changes) -> TrainOptions:
    values = dict(data="synthetic", model="unet", image_size=32, synthetic_count=64, epochs=4, batch_size=8,
                  augment=False, device="cpu", out=out)
    return TrainOptions(**{**values, **changes})


def test_the_unet_really_learns_and_its_checkpoint_says_unet(tmp_path):
    options = unet_options(tmp_path / "run")
    torch.manual_seed(options.seed)
    val_set = synthetic_validation_set(16, 32, options.seed)
    untrained = evaluate(UNet(), val_set).mean["DSC"]
    result = train(options)
    print(f"U-Net val DSC untrained {untrained:.3f}, per epoch {[round(e['val']['DSC'], 3) for e in result.history]}")
    assert result.best["val"]["DSC"] >= max(UNET_DICE_FLOOR, untrained + UNET_DICE_GAIN)
    model, metadata = load_checkpoint_payload(result.best_path, networks=("unet",))
    assert isinstance(model, UNet) and metadata["network"] == "unet"
    assert metadata["config"] == {"in_channels": 3, "out_channels": 1, "width": 64}
    assert evaluate(model, val_set).mean == pytest.approx(result.best["val"])


def test_medqk_eval_scores_a_unet_checkpoint(tmp_path, capsys):
    train(unet_options(tmp_path / "run", epochs=1, synthetic_count=16))
    code = main(["eval", str(tmp_path / "run" / "best.pt"), "--count", "4", "--json", str(tmp_path / "eval.json")])
    assert code == 0
    record = json.loads((tmp_path / "eval.json").read_text())
    assert record["images"] == 4 and 0 <= record["mean"]["DSC"] <= 1


def test_train_command_trains_the_unet(tmp_path):
    code = main(["-q", "train", "--model", "unet", "--image-size", "32", "--synthetic-count", "16", "--epochs", "1",
                 "--device", "cpu", "--out", str(tmp_path / "run")])
    assert code == 0
    metadata = load_checkpoint_payload(tmp_path / "run" / "last.pt", networks=("unet",))[1]
    assert metadata["network"] == "unet" and metadata["training"]["options"]["model"] == "unet"


def test_medqkformer_only_loaders_refuse_a_unet_checkpoint_by_name(tmp_path):
    train(unet_options(tmp_path / "run", epochs=1, synthetic_count=16))
    with pytest.raises(CheckpointError, match="a U-Net checkpoint; this takes MedQKFormer only"):
        load_checkpoint(tmp_path / "run" / "best.pt")


def test_resume_refuses_another_network(tmp_path):
    train(unet_options(tmp_path / "run", epochs=1, synthetic_count=16))
    with pytest.raises(CheckpointError, match="holds a U-Net, not a MedQKFormer; pass --model unet"):
        train(unet_options(tmp_path / "run", model="medqkformer", epochs=2, resume=True))


def test_a_checkpoint_written_before_networks_were_recorded_holds_medqkformer(tmp_path, small_model):
    from medqk.checkpoint import save_checkpoint

    path = save_checkpoint(tmp_path / "small.pt", small_model)
    payload = torch.load(path, weights_only=True)
    assert payload.pop("network") == "medqkformer"
    torch.save(payload, path)
    model, metadata = load_checkpoint_payload(path)
    assert metadata["network"] == "medqkformer" and model.config == small_model.config
