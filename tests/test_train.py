"""Training: it really learns, the recipes and their departures do what they say, it writes its run
folder, resumes, and runs data-parallel on two CPU processes."""
import json
import os
import subprocess
import sys
import time

import pytest
import torch

from support import SMALL_WIDTHS
from medqk import MedQKFormer
from medqk.checkpoint import load_checkpoint, load_checkpoint_payload
from medqk.cli import main
from medqk.data import SyntheticDataset, synthetic_validation_set
from medqk.evaluate import evaluate
from medqk.errors import CheckpointError, InputError, MedqkError
from medqk.train import RandomCrops, TrainOptions, train

#: The learning test's margins. Training paths differ between CPUs (instruction sets, BLAS
#: kernels, thread counts), and this training's path is chaotic, so the test asks for a gain over
#: the untrained network and a floor, both far below what a run reaches: in the run they were set
#: from, val DSC went from 0.16 (untrained) to 0.48, 0.68, 0.27, 0.81, 0.63 over the 5 epochs with
#: the epoch-average statistics of the default recipe (0.30, 0.56, 0.51, 0.62, 0.61 with population
#: statistics; the best epoch counts; a CI-like machine once stopped at 0.73 where the old test
#: wanted 0.8).
LEARNS_DICE_GAIN = 0.25
LEARNS_DICE_FLOOR = 0.5
LEARNS_EPOCHS = 5


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


def learning_options(out) -> TrainOptions:
    """The default recipe on 128 synthetic 64x64 images, widths 8-16-32-64, for LEARNS_EPOCHS."""
    return TrainOptions(data="synthetic", image_size=64, widths=SMALL_WIDTHS, synthetic_count=128, epochs=LEARNS_EPOCHS,
                        augment=False, device="cpu", out=out)


def test_training_really_learns_on_synthetic_data(tmp_path, one_thread):
    options = learning_options(tmp_path / "run")
    val_set = synthetic_validation_set(32, 64, options.seed)
    torch.manual_seed(options.seed)  # the trainer's initialisation
    untrained = evaluate(MedQKFormer(widths=SMALL_WIDTHS), val_set).mean["DSC"]
    started = time.perf_counter()
    result = train(options)
    seconds = time.perf_counter() - started
    curve = [round(entry["val"]["DSC"], 3) for entry in result.history]
    print(f"val DSC untrained {untrained:.3f}, per epoch {curve}, {seconds:.0f} s")
    assert result.best["val"]["DSC"] >= max(LEARNS_DICE_FLOOR, untrained + LEARNS_DICE_GAIN)
    # The best checkpoint scores what training said it scored (eval mode, BN statistics and all).
    model, metadata = load_checkpoint_payload(result.best_path)
    assert metadata["training"]["val_images"] == len(val_set)
    assert evaluate(model, val_set).mean == pytest.approx(result.best["val"])


def test_frozen_batchnorm_statistics_stop_changing(tmp_path):
    train(tiny_options(tmp_path / "run", epochs=3, freeze_bn_from=2))
    model = load_checkpoint(tmp_path / "run" / "last.pt")
    # Estimated once over the 2 training batches at epoch 2 (SpikeConv's shared BN sees each
    # batch twice), then untouched by epochs 2 and 3.
    tracked = {int(m.num_batches_tracked) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert tracked == {2, 4}


def batchnorm_counts(model) -> set[int]:
    return {int(m.num_batches_tracked) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)}


@pytest.mark.parametrize("statistics, tracked", [("epoch", {2, 4}), ("running", {6, 12})])
def test_batchnorm_statistics_are_the_last_epochs_or_all_of_them(tmp_path, statistics, tracked):
    # 3 epochs of 2 batches; SpikeConv's shared BN sees each batch twice. "epoch" starts its
    # average afresh every epoch, "running" (PyTorch's momentum average) never does.
    train(tiny_options(tmp_path / "run", epochs=3, bn_statistics=statistics))
    assert batchnorm_counts(load_checkpoint(tmp_path / "run" / "last.pt")) == tracked


def test_the_recipes_differ_exactly_in_their_named_departures():
    medqk, paper = TrainOptions(), TrainOptions(recipe="paper")
    assert medqk.recipe == "medqk"
    assert (medqk.setting("bn_statistics"), medqk.setting("schedule")) == ("epoch", "cosine")
    assert (paper.setting("bn_statistics"), paper.setting("schedule")) == ("running", "plateau")
    assert TrainOptions(recipe="paper", schedule="cosine").setting("schedule") == "cosine"  # a flag overrides
    shared = {k: v for k, v in medqk.record().items() if k not in ("recipe", "bn_statistics", "schedule")}
    assert shared == {k: v for k, v in paper.record().items() if k not in ("recipe", "bn_statistics", "schedule")}


def test_train_command_recipe_paper_is_recorded_with_its_settings(tmp_path):
    code = main(["-q", "train", "--recipe", "paper", "--image-size", "32", "--widths", *map(str, SMALL_WIDTHS),
                 "--synthetic-count", "16", "--epochs", "1", "--device", "cpu", "--out", str(tmp_path / "run")])
    assert code == 0
    options = load_checkpoint_payload(tmp_path / "run" / "best.pt")[1]["training"]["options"]
    assert (options["recipe"], options["bn_statistics"], options["schedule"]) == ("paper", "running", "plateau")


def test_cosine_schedule_decays_the_learning_rate_over_the_epochs(tmp_path):
    result = train(tiny_options(tmp_path / "run", epochs=3, schedule="cosine"))
    assert [entry["lr"] for entry in result.history] == pytest.approx([1e-3, 7.5e-4, 2.5e-4])


def test_random_crops_are_windows_of_the_sample_drawn_anew_each_epoch():
    samples = SyntheticDataset(2, 32, seed=3)
    crops = RandomCrops(samples, 16, seed=41)
    image, mask = samples[1]
    windows = []
    for epoch in (1, 2):
        crops.set_epoch(epoch)
        crop_image, crop_mask = crops[1]
        assert crop_image.shape == (3, 16, 16) and crop_mask.shape == (1, 16, 16)
        found = [(top, left) for top in range(17) for left in range(17)
                 if torch.equal(image[:, top:top + 16, left:left + 16], crop_image)]
        assert len(found) == 1
        top, left = found[0]
        assert torch.equal(mask[:, top:top + 16, left:left + 16], crop_mask)  # the mask's same window
        assert torch.equal(crops[1][0], crop_image)  # the same epoch draws the same window
        windows.append(found[0])
    assert windows[0] != windows[1]


def test_crops_train_and_whole_images_validate(tmp_path):
    shapes = []  # the input sizes every MedQKFormer forward sees
    handle = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda module, inputs: shapes.append(tuple(inputs[0].shape[2:])) if isinstance(module, MedQKFormer) else None)
    try:
        result = train(tiny_options(tmp_path / "run", image_size=64, crop=32))
    finally:
        handle.remove()
    assert set(shapes) == {(32, 32), (64, 64)}  # training steps on crops, validation on whole images
    metadata = load_checkpoint_payload(result.best_path)[1]
    assert metadata["preprocessing"]["size"] == [64, 64] and metadata["training"]["options"]["crop"] == 32


@pytest.mark.parametrize("crop, message", [(40, "multiples of 16"), (64, "larger than the images")])
def test_a_crop_that_does_not_fit_is_refused(tmp_path, crop, message):
    with pytest.raises(InputError, match=message):
        train(tiny_options(tmp_path / "run", crop=crop))


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


def test_population_statistics_are_the_average_over_the_whole_unaugmented_training_images(tmp_path):
    # Trained on augmented 32x32 crops of 64x64 images; the statistics must be those of the 16
    # whole, un-augmented training images passed through the final weights (in train mode, in the
    # trainer's 2 batches of 8), measured here independently by hooks on every BatchNorm's input.
    options = tiny_options(tmp_path / "run", image_size=64, crop=32, epochs=2, bn_statistics="population")
    train(options)
    model = load_checkpoint(tmp_path / "run" / "last.pt")
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    saved = [norm.running_mean.clone() for norm in norms]  # before the train-mode pass below moves them
    sums = {norm: 0 for norm in norms}
    counts = {norm: 0 for norm in norms}

    def record(norm, inputs):
        sums[norm] = sums[norm] + inputs[0].double().sum(dim=(0, 2, 3))
        counts[norm] += inputs[0].numel() // inputs[0].shape[1]

    handles = [norm.register_forward_pre_hook(record) for norm in norms]
    plain = SyntheticDataset(options.synthetic_count, 64, seed=options.seed)
    images = torch.stack([plain[i][0] for i in range(len(plain))])
    model.train()
    with torch.no_grad():
        for batch in images.split(options.batch_size):
            model(batch)
    for handle in handles:
        handle.remove()
    for norm, mean in zip(norms, saved):
        assert mean.double() == pytest.approx(sums[norm] / counts[norm], rel=1e-4, abs=1e-5)
