"""Training of MedQKFormer or the paper's U-Net baseline, on one process or data-parallel across
many (torchrun).

The paper's recipe (``recipe="paper"``): Adam (lr 1e-3), batch 8, BCE + Dice on the probabilities,
ReduceLROnPlateau(min, patience 30) on the validation loss, early stopping on validation mIoU, the
best-mIoU checkpoint kept, seed 41, BatchNorm running statistics with momentum 0.1. The default
``recipe="medqk"`` departs in two settings (``RECIPES``): BatchNorm statistics averaged over each
epoch's own batches, and a cosine learning-rate schedule. ``bn_statistics="population"`` (recomputed
after every epoch over the whole training images) scores higher on MoNuSeg but costs an extra
forward pass of them per epoch (1.32x at 256x256), over the speed bound the default keeps.
A run folder gets ``best.pt`` (best validation mIoU), ``last.pt`` (with the optimiser state that
``--resume`` continues from), ``train.log``, ``curves.png`` and ``metrics.json``.

Launched by ``torchrun`` (RANK and WORLD_SIZE set), each process trains on its share of every
epoch (DistributedSampler; ``batch_size`` is per process) and gradients are averaged by
DistributedDataParallel: gloo on CPUs, NCCL on GPUs. Every process validates the whole
validation set with rank 0's BatchNorm statistics, so all reach the same decisions without
exchanging them; only rank 0 writes files.
"""
from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

import medqk
from medqk import console
from medqk.checkpoint import load_checkpoint_payload, save_checkpoint
from medqk.data import Augmentation, PairDataset, Preprocessing, SyntheticDataset, load_split, synthetic_validation_set
from medqk.errors import CheckpointError, InputError, MedqkError
from medqk.evaluate import evaluate
from medqk.metrics import segmentation_loss
from medqk.model import ModelConfig, check_input_shape
from medqk.networks import MEDQKFORMER, NETWORKS, UNET, build_network, display_name
from medqk.unet import UNetConfig

#: How BatchNorm's running statistics (what evaluation and deployment use) are kept: PyTorch's
#: momentum average, the average of the epoch's training batches, or the average over the whole
#: un-augmented training images recomputed after each epoch's steps.
BN_STATISTICS = ("running", "epoch", "population")
SCHEDULES = ("plateau", "cosine")
#: The settings where the recipes differ; an option given explicitly overrides its recipe's.
#: "paper" is the published recipe exactly; "medqk" (the default) departs from it where measured
#: to help (docs/model-and-training.md, "Why MedQKFormer trails the U-Net on 30 images").
RECIPES = {
    "paper": {"bn_statistics": "running", "schedule": "plateau"},
    "medqk": {"bn_statistics": "epoch", "schedule": "cosine"},
}


@dataclass
class TrainOptions:
    data: str = "synthetic"             #: a dataset folder, or "synthetic"
    model: str = MEDQKFORMER            #: medqkformer or unet (the paper's U-Net baseline)
    layout: str = "auto"
    epochs: int = 200
    batch_size: int = 8                 #: per process
    lr: float = 1e-3
    image_size: int = 256
    widths: tuple[int, ...] = (32, 64, 128, 256)
    levels: int = 4
    channel_order: str = "BGR"
    out: Path = Path("runs/train")
    resume: bool = False
    seed: int = 41
    device: str = "auto"                #: cpu, cuda or auto (CUDA when present)
    val_fraction: float = 0.2
    patience: int = 50                  #: epochs without a better val mIoU before stopping
    lr_patience: int = 30               #: ReduceLROnPlateau's patience (schedule "plateau")
    target_dice: float | None = None    #: stop as soon as val DSC reaches this
    freeze_bn_from: int | None = None   #: from this epoch on, BatchNorm statistics are estimated once and frozen
    synthetic_count: int = 256          #: synthetic training images (validation: a quarter, at least 16)
    augment: bool = True
    crop: int | None = None             #: train on random crops of this side from the resized images
    recipe: str = "medqk"               #: medqk or paper: the values of the settings below left at None
    bn_statistics: str | None = None    #: running (momentum 0.1), epoch (this epoch's batches) or population
    schedule: str | None = None         #: plateau (ReduceLROnPlateau on val loss) or cosine (to 0 over --epochs)
    workers: int = 0

    def setting(self, name: str):
        """An option of the recipe: its explicit value, else the recipe's."""
        value = getattr(self, name)
        return RECIPES[self.recipe][name] if value is None else value

    def record(self) -> dict:
        d = asdict(self)
        d.update(out=str(self.out), widths=list(self.widths), **{name: self.setting(name) for name in RECIPES[self.recipe]})
        return d


@dataclass
class TrainResult:
    best_path: Path
    last_path: Path
    best: dict                          #: the history entry of the best epoch
    history: list[dict] = field(default_factory=list)
    stopped: str = ""


@dataclass(frozen=True)
class Process:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized()


def train(options: TrainOptions) -> TrainResult:
    if options.model not in NETWORKS:
        raise InputError(f"unknown model '{options.model}'; choose {' or '.join(NETWORKS)}")
    if options.recipe not in RECIPES:
        raise InputError(f"unknown recipe '{options.recipe}'; choose {' or '.join(RECIPES)}")
    for name, choices in (("bn_statistics", BN_STATISTICS), ("schedule", SCHEDULES)):
        if options.setting(name) not in choices:
            raise InputError(f"unknown {name} '{options.setting(name)}'; choose {' or '.join(choices)}")
    with process_group(options.device) as process:
        if not process.is_main:
            console.verbosity = 0
        return Trainer(options, process).fit()


def resolve_device(choice: str, local_rank: int = 0) -> torch.device:
    if choice not in ("auto", "cpu", "cuda"):
        raise MedqkError(f"unknown device '{choice}'; choose cpu, cuda or auto")
    if choice == "cuda" and not torch.cuda.is_available():
        raise MedqkError("--device cuda: no CUDA device is available here; use --device cpu")
    if choice == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


@contextmanager
def process_group(device_choice: str) -> Iterator[Process]:
    """One process, or this process's place in a torchrun job (joined and left here)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        yield Process(0, 1, resolve_device(device_choice))
        return
    device = resolve_device(device_choice, int(os.environ.get("LOCAL_RANK", 0)))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield Process(dist.get_rank(), dist.get_world_size(), device)
    finally:
        dist.destroy_process_group()


class Trainer:
    def __init__(self, options: TrainOptions, process: Process):
        self.options = options
        self.process = process
        self.out = Path(options.out)
        self.last_path, self.best_path = self.out / "last.pt", self.out / "best.pt"
        resumed = self._resumed_state()
        torch.manual_seed(options.seed)
        if resumed:
            self.model, metadata = resumed
            self.prep = Preprocessing.from_dict(metadata["preprocessing"])
        else:
            self.prep = Preprocessing((options.image_size,) * 2, options.channel_order)
            check_input_shape((1, self.prep.channels) + self.prep.size, self.prep.channels)
            self.model = build_network(options.model, self._config().to_dict())
        self._check_crop()
        self.model.to(process.device)
        self.train_set, population_set, self.val_set, self.data_record = self._datasets()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=options.lr)
        if options.setting("schedule") == "cosine":
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=options.epochs)
        else:
            self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(self.optimizer, mode="min", patience=options.lr_patience)
        self.history: list[dict] = []
        if resumed:
            self._restore(resumed[1]["resume"])
        self.network = self._parallel(self.model)
        self.sampler = DistributedSampler(self.train_set, num_replicas=process.world_size, rank=process.rank,
                                          shuffle=True, seed=options.seed)
        self.loader = DataLoader(self.train_set, batch_size=options.batch_size, sampler=self.sampler,
                                 num_workers=options.workers)
        # Population statistics: every process passes all the training images (no sampler).
        self.population_loader = DataLoader(population_set, batch_size=options.batch_size, num_workers=options.workers)

    # -- set-up -------------------------------------------------------------------------------

    def _check_crop(self) -> None:
        crop = self.options.crop
        if crop is None:
            return
        check_input_shape((1, self.prep.channels, crop, crop), self.prep.channels)
        if crop > min(self.prep.size):
            raise InputError(f"--crop {crop} is larger than the images ({self.prep.size[0]}x{self.prep.size[1]})")

    def _resumed_state(self):
        if not self.options.resume:
            if self.last_path.exists():
                raise MedqkError(f"{self.out} already holds a training run; continue it with --resume or choose another --out")
            return None
        if not self.last_path.exists():
            raise CheckpointError(f"--resume: no {self.last_path} to continue from (train without --resume first)")
        model, metadata = load_checkpoint_payload(self.last_path, tuple(NETWORKS))
        if metadata["network"] != self.options.model:
            raise CheckpointError(f"--resume: {self.last_path} holds a {display_name(metadata['network'])}, "
                                  f"not a {display_name(self.options.model)}; pass --model {metadata['network']}")
        if not metadata.get("resume"):
            raise CheckpointError(f"--resume: {self.last_path} has no optimiser state to continue from")
        console.info(f"resuming {self.last_path} after epoch {metadata['resume']['epoch']}; configuration and preprocessing from it")
        return model, metadata

    def _config(self) -> ModelConfig | UNetConfig:
        if self.options.model == UNET:
            return UNetConfig(in_channels=self.prep.channels)
        try:
            return ModelConfig(widths=self.options.widths, in_channels=self.prep.channels, levels=self.options.levels)
        except ValueError as error:
            raise InputError(f"--widths {' '.join(map(str, self.options.widths))}: {error}") from None

    def _datasets(self):
        """The training set (augmented, cropped), the same images as validation sees them (whole,
        un-augmented: what BatchNorm's population statistics are taken over), and the validation set."""
        options = self.options
        augmentation = Augmentation() if options.augment else None
        if options.data == "synthetic":
            val_count = max(16, options.synthetic_count // 4)
            train_set = SyntheticDataset(options.synthetic_count, self.prep.size, options.seed, augmentation)
            population_set = SyntheticDataset(options.synthetic_count, self.prep.size, options.seed)
            val_set = synthetic_validation_set(val_count, self.prep.size, options.seed)
            record = {"data": "synthetic", "train_images": len(train_set), "val_images": val_count}
        else:
            split = load_split(options.data, options.layout, options.val_fraction, options.seed)
            record = {"data": str(Path(options.data).resolve()), "layout": split.layout,
                      "train_images": len(split.train), "val_images": len(split.val)}
            train_set = PairDataset(split.train, self.prep, augmentation, options.seed)
            population_set, val_set = PairDataset(split.train, self.prep), PairDataset(split.val, self.prep)
        if options.crop is not None:
            train_set = RandomCrops(train_set, options.crop, options.seed)
        return train_set, population_set, val_set, record

    def _restore(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.history = list(state["history"])

    def _parallel(self, model: torch.nn.Module) -> torch.nn.Module:
        if not self.process.distributed:
            return model
        device_ids = [self.process.device.index] if self.process.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    # -- the loop -----------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        log = RunLog(self.out / "train.log", self.process.is_main)
        log.write(f"medqk {medqk.__version__} train: {json.dumps(self.options.record())}")
        log.write(f"data: {json.dumps(self.data_record)}; {self.process.world_size} process(es) on {self.process.device}")
        stopped = f"ran {self.options.epochs} epochs"
        for epoch in range(len(self.history) + 1, self.options.epochs + 1):
            started = time.perf_counter()
            train_loss = self._train_epoch(epoch)
            if self.options.setting("bn_statistics") == "population" and not self._batchnorm_frozen(epoch):
                # After the steps, so that validation and the checkpoint use the statistics of these weights.
                self._estimate_batchnorm_statistics()
            self._share_batchnorm_statistics()
            validation = evaluate(self.model, self.val_set, self.process.device, self.options.batch_size)
            entry = {"epoch": epoch, "train_loss": train_loss, "val_loss": validation.loss,
                     "val": validation.mean, "lr": self.optimizer.param_groups[0]["lr"],
                     "seconds": time.perf_counter() - started}
            if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                self.scheduler.step(validation.loss)
            else:
                self.scheduler.step()
            self.history.append(entry)
            reason = self._stop_reason(entry)
            if self.process.is_main:
                self._save(entry, reason)
                log.write(f"epoch {epoch}: train loss {train_loss:.4f}, val loss {validation.loss:.4f}, "
                          f"val mIoU {entry['val']['mIoU']:.4f}, DSC {entry['val']['DSC']:.4f}, "
                          f"lr {entry['lr']:.2e}, {entry['seconds']:.1f} s")
            if reason:
                stopped = reason
                break
        log.write(f"stopped: {stopped}; best epoch {self.best['epoch']}: val mIoU {self.best['val']['mIoU']:.4f}, "
                  f"DSC {self.best['val']['DSC']:.4f} -> {self.best_path}")
        return TrainResult(self.best_path, self.last_path, self.best, self.history, stopped)

    @property
    def best(self) -> dict:
        return max(self.history, key=lambda entry: (entry["val"]["mIoU"], -entry["epoch"]))

    def _train_epoch(self, epoch: int) -> float:
        self.network.train()
        self.sampler.set_epoch(epoch)
        self.train_set.set_epoch(epoch)
        if self._batchnorm_frozen(epoch):
            if epoch == self.options.freeze_bn_from:
                self._estimate_batchnorm_statistics()
                console.info("BatchNorm statistics estimated over the training images and frozen from now on")
            for norm in batchnorms(self.model):
                norm.eval()
        elif self.options.setting("bn_statistics") == "epoch":
            # Statistics of this epoch's batches only (a plain average): with a few steps per
            # epoch, momentum 0.1 would evaluate today's weights with several epochs' stale statistics.
            for norm in batchnorms(self.model):
                norm.reset_running_stats()
                norm.momentum = None
        device = self.process.device
        loss_sum, count = 0.0, 0
        batches = console.progress(self.loader, desc=f"epoch {epoch}/{self.options.epochs}", total=len(self.loader), unit="batch")
        for images, masks in batches:
            images, masks = images.to(device), masks.to(device)
            loss = segmentation_loss(self.network(images), masks)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            loss_sum += loss.item() * len(images)
            count += len(images)
        if not self.process.distributed:
            return loss_sum / count
        totals = torch.tensor([loss_sum, count], dtype=torch.float64, device=device)
        dist.all_reduce(totals)
        return float(totals[0] / totals[1])

    def _batchnorm_frozen(self, epoch: int) -> bool:
        return self.options.freeze_bn_from is not None and epoch >= self.options.freeze_bn_from

    def _estimate_batchnorm_statistics(self) -> None:
        """Population statistics of the current weights: the plain (cumulative) average over one
        pass of the training images as validation sees them (whole, un-augmented), not a running
        average that lags behind the weights. Train mode, so that each batch is normalised as in
        training; every batch counts alike (as in torch.optim.swa_utils.update_bn), which is the
        exact average over the images when the batches are of one size."""
        norms = batchnorms(self.model)
        momenta = [norm.momentum for norm in norms]
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # cumulative average
        self.model.train()
        with torch.no_grad():
            loader = self.population_loader
            for images, _ in console.progress(loader, desc="BatchNorm statistics", total=len(loader), unit="batch"):
                self.model(images.to(self.process.device))
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        self._share_batchnorm_statistics()

    def _share_batchnorm_statistics(self) -> None:
        """Each process updated its BatchNorm running statistics on its own images; validate
        everywhere with rank 0's, so that all processes see the same scores."""
        if self.process.distributed:
            for buffer in self.model.buffers():
                dist.broadcast(buffer, src=0)

    def _stop_reason(self, entry: dict) -> str:
        target = self.options.target_dice
        if target is not None and entry["val"]["DSC"] >= target:
            return f"val DSC {entry['val']['DSC']:.4f} reached the target {target}"
        if entry["epoch"] - self.best["epoch"] >= self.options.patience:
            return f"early stop: no better val mIoU for {self.options.patience} epochs"
        return ""

    # -- output -------------------------------------------------------------------------------

    def _save(self, entry: dict, stopped: str) -> None:
        training = {
            "epoch": entry["epoch"], "val": entry["val"], "best_epoch": self.best["epoch"],
            "stopped": stopped, "options": self.options.record(), **self.data_record,
            "world_size": self.process.world_size, "medqk_version": medqk.__version__, "torch_version": str(torch.__version__),
        }
        if self.best is entry:
            save_checkpoint(self.best_path, self.model, self.prep, training)
        resume = {"epoch": entry["epoch"], "optimizer": self.optimizer.state_dict(),
                  "scheduler": self.scheduler.state_dict(), "history": self.history}
        save_checkpoint(self.last_path, self.model, self.prep, training, resume)
        write_curves(self.history, self.out / "curves.png")
        (self.out / "metrics.json").write_text(json.dumps(
            {"best": self.best, "stopped": stopped, "data": self.data_record, "history": self.history}, indent=2) + "\n")


class RandomCrops(Dataset):
    """A random ``size`` x ``size`` window of each (augmented) training sample, drawn anew each epoch
    from a generator seeded by (seed, epoch, index) like the augmentation."""

    def __init__(self, dataset, size: int, seed: int):
        self.dataset = dataset
        self.size = size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, mask = self.dataset[index]
        rng = np.random.default_rng([self.seed, self.epoch, index, 1])
        top = int(rng.integers(0, image.shape[1] - self.size + 1))
        left = int(rng.integers(0, image.shape[2] - self.size + 1))
        window = (slice(None), slice(top, top + self.size), slice(left, left + self.size))
        return image[window], mask[window]


def batchnorms(model: torch.nn.Module) -> list[torch.nn.BatchNorm2d]:
    return [module for module in model.modules() if isinstance(module, torch.nn.BatchNorm2d)]


class RunLog:
    """Lines to the console and appended to the run's train.log (rank 0 only)."""

    def __init__(self, path: Path, enabled: bool):
        self.path = path
        self.enabled = enabled

    def write(self, line: str) -> None:
        if not self.enabled:
            return
        console.info(line)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as file:
            file.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")


def write_curves(history: list[dict], path: Path) -> None:
    """Training and validation loss, and validation mIoU and DSC, per epoch."""
    from matplotlib.figure import Figure

    epochs = [entry["epoch"] for entry in history]
    figure = Figure(figsize=(10, 4), layout="constrained")
    loss_axes, score_axes = figure.subplots(1, 2)
    loss_axes.plot(epochs, [e["train_loss"] for e in history], label="train")
    loss_axes.plot(epochs, [e["val_loss"] for e in history], label="validation")
    loss_axes.set(xlabel="epoch", ylabel="BCE + Dice loss", title="loss")
    score_axes.plot(epochs, [e["val"]["mIoU"] for e in history], label="val mIoU")
    score_axes.plot(epochs, [e["val"]["DSC"] for e in history], label="val DSC", linestyle="--")
    score_axes.set(xlabel="epoch", ylim=(0, 1), title="validation")
    for axes in (loss_axes, score_axes):
        axes.legend()
        axes.grid(alpha=0.3)
    figure.savefig(path, dpi=100)
