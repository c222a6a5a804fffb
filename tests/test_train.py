"""Training: it really learns, writes its run folder, resumes, and runs data-parallel on two CPU processes."""
import dataclasses
import json
import os
import subprocess
import sys
import time

import pytest
import torch

from support import SMALL_WIDTHS
from medqk.checkpoint import load_checkpoint, load_checkpoint_payload
from medqk.cli import main
from medqk.data import synthetic_validation_set
from medqk.defaults import default_training_options
from medqk.evaluate import evaluate
from medqk.errors import CheckpointError, MedqkError
from medqk.train import TrainOptions, train

LEARNS_TARGET_DICE = 0.8


def tiny_options(out, **changes) -> TrainOptions:
    """A run of seconds: 16 synthetic 32x32 images, small widths."""
    values = dict(data="synthetic", image_size=32, widths=SMALL_WIDTHS, epochs=1, synthetic_count=16,
                  batch_size=8, device="cpu", out=out)
    return TrainOptions(**{**values, **changes})


@pytest.fixture
def one_thread():
    """The default model's training runs on one thread (its path does not depend on the core count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_training_really_learns_on_synthetic_data(tmp_path, one_thread):
    # The embedded default's training (64x64 synthetic images, widths 8-16-32-64, the paper's
    # recipe), stopped at validation DSC 0.8.
    options = dataclasses.replace(default_training_options(tmp_path / "run"), target_dice=LEARNS_TARGET_DICE, epochs=20)
    started = time.perf_counter()
    result = train(options)
    seconds = time.perf_counter() - started
    print(f"val DSC {result.best['val']['DSC']:.3f} after {len(result.history)} epochs, {seconds:.0f} s")
    assert result.best["val"]["DSC"] >= LEARNS_TARGET_DICE
    # The best checkpoint scores what training said it scored (eval mode, BN statistics and all).
    model, metadata = load_checkpoint_payload(result.best_path)
    reloaded = evaluate(model, synthetic_validation_set(metadata["training"]["val_images"], 64, options.seed))
    assert reloaded.mean == pytest.approx(result.best["val"])


def test_frozen_batchnorm_statistics_stop_changing(tmp_path):
    train(tiny_options(tmp_path / "run", epochs=3, freeze_bn_from=2))
    model = load_checkpoint(tmp_path / "run" / "last.pt")
    # Estimated once over the 2 training batches at epoch 2 (SpikeConv's shared BN sees each
    # batch twice), then untouched by epochs 2 and 3.
    tracked = {int(m.num_batches_tracked) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert tracked == {2, 4}


def test_a_run_folder_has_checkpoints_log_curves_and_metrics(tmp_path):
    result = train(tiny_options(tmp_path / "run", epochs=2))
    out = tmp_path / "run"
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "curves.png", "last.pt", "metrics.json", "train.log"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert [entry["epoch"] for entry in metrics["history"]] == [1, 2]
    assert metrics["best"]["epoch"] == result.best["epoch"]
    assert "epoch 2: train loss" in (out / "train.log").read_text()
    best, metadata = load_checkpoint_payload(result.best_path)
    assert metadata["preprocessing"]["size"] == [32, 32] and metadata["training"]["epoch"] == result.best["epoch"]
    assert metadata["resume"] is None  # only last.pt carries the optimiser state
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_resume_continues_after_the_last_epoch(tmp_path):
    out = tmp_path / "run"
    first = train(tiny_options(out, epochs=1))
    resumed = train(tiny_options(out, epochs=3, resume=True))
    assert [entry["epoch"] for entry in resumed.history] == [1, 2, 3]
    assert resumed.history[0] == first.history[0]
    log = (out / "train.log").read_text()
    assert log.count(" epoch 1: train loss") == 1 and " epoch 3: train loss" in log
    assert load_checkpoint_payload(out / "last.pt")[1]["resume"]["epoch"] == 3


def test_an_existing_run_is_not_overwritten_without_resume(tmp_path):
    train(tiny_options(tmp_path / "run"))
    with pytest.raises(MedqkError, match="already holds a training run.*--resume"):
        train(tiny_options(tmp_path / "run"))


def test_resume_without_a_previous_run(tmp_path):
    with pytest.raises(CheckpointError, match="no .*last.pt to continue from"):
        train(tiny_options(tmp_path / "run", resume=True))


def test_train_command_on_a_folder(tmp_path, capsys):
    from test_data import build_pairs

    build_pairs(tmp_path / "data/train/img", tmp_path / "data/train/labelcol", ["a", "b", "c"])
    build_pairs(tmp_path / "data/val/img", tmp_path / "data/val/labelcol", ["d"])
    code = main(["train", "--data", str(tmp_path / "data"), "--image-size", "32", "--widths", *map(str, SMALL_WIDTHS),
                 "--epochs", "1", "--out", str(tmp_path / "run"), "--device", "cpu"])
    assert code == 0
    metadata = load_checkpoint_payload(tmp_path / "run" / "best.pt")[1]
    assert metadata["training"]["layout"] == "imglabel" and metadata["training"]["train_images"] == 3


def test_train_command_refuses_a_size_that_is_not_a_multiple_of_16(tmp_path, capsys):
    assert main(["train", "--image-size", "50", "--epochs", "1", "--out", str(tmp_path / "run")]) == 2
    assert "multiples of 16" in capsys.readouterr().err


def test_train_command_refuses_widths_that_do_not_split_into_heads(tmp_path, capsys):
    assert main(["train", "--widths", "8", "16", "32", "60", "--epochs", "1", "--out", str(tmp_path / "run")]) == 2
    assert "--widths 8 16 32 60: each width must be a multiple of 8" in capsys.readouterr().err


def test_two_process_data_parallel_training_on_cpu(tmp_path):
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "medqk.cli", "-q", "train", "--data", "synthetic", "--image-size", "32",
               "--widths", *map(str, SMALL_WIDTHS), "--synthetic-count", "16", "--epochs", "1", "--batch-size", "4",
               "--device", "cpu", "--out", str(out)]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    model, metadata = load_checkpoint_payload(out / "best.pt")
    assert metadata["training"]["world_size"] == 2
    assert metadata["training"]["train_images"] == 16
    with torch.no_grad():
        assert model(torch.rand(1, 3, 32, 32)).shape == (1, 1, 32, 32)
    assert load_checkpoint(out / "last.pt").config.widths == SMALL_WIDTHS
