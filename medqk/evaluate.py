"""Evaluation: the nine metrics per image and averaged, as a table and JSON, and optionally
the predicted masks and overlays as PNG files."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader

from medqk import console
from medqk.data import PairDataset, Preprocessing, SegmentationDataset, load_split, synthetic_validation_set
from medqk.metrics import METRIC_NAMES, image_losses, image_metrics, mean_metrics
from medqk.outputs import write_files


@dataclass
class Evaluation:
    names: list[str]
    per_image: dict[str, torch.Tensor]   #: metric name -> float64 [N]
    losses: torch.Tensor                 #: training loss per image [N]

    @property
    def mean(self) -> dict[str, float]:
        return mean_metrics(self.per_image)

    @property
    def loss(self) -> float:
        return float(self.losses.mean())

    def to_json(self) -> dict:
        rows = [{"name": name, **{m: float(self.per_image[m][i]) for m in METRIC_NAMES}} for i, name in enumerate(self.names)]
        return {"images": len(self.names), "mean": self.mean, "loss": self.loss, "per_image": rows}

    def table(self) -> str:
        width = max([len("image"), len("mean")] + [len(n) for n in self.names])

        def row(label: str, cells: list[str]) -> str:
            return f"{label:<{width}}  " + "  ".join(f"{cell:>11}" for cell in cells)

        header = row("image", list(METRIC_NAMES))
        rule = "-" * len(header)
        images = [row(name, [f"{float(self.per_image[m][i]):.4f}" for m in METRIC_NAMES]) for i, name in enumerate(self.names)]
        mean = row("mean", [f"{self.mean[m]:.4f}" for m in METRIC_NAMES])
        return "\n".join([header, rule, *images, rule, mean])


def predict_batches(model: torch.nn.Module, dataset: SegmentationDataset, device: torch.device | str = "cpu",
                    batch_size: int = 8, desc: str = "predict") -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(images, masks, probabilities) per batch, in dataset order, on the CPU."""
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    with torch.no_grad():
        for images, masks in console.progress(loader, desc=desc, total=len(loader), unit="batch"):
            yield images, masks, model(images.to(device)).float().cpu()


def evaluate(model: torch.nn.Module, dataset: SegmentationDataset, device: torch.device | str = "cpu",
             batch_size: int = 8, masks_dir: Path | None = None, channel_order: str = "BGR") -> Evaluation:
    """Metrics of ``model`` on every image of ``dataset``; with ``masks_dir``, also writes
    ``NAME_mask.png`` (prediction, 0/255) and ``NAME_overlay.png`` (prediction tinted red,
    ground-truth outline green) for each image."""
    batches, losses = [], []
    names = iter(dataset.names)
    for images, masks, probabilities in predict_batches(model, dataset, device, batch_size, desc="evaluate"):
        batches.append(image_metrics(probabilities, masks))
        losses.append(image_losses(probabilities, masks))
        if masks_dir is not None:
            for image, mask, probability in zip(images, masks, probabilities):
                write_prediction_pngs(Path(masks_dir), next(names), image.numpy(), mask.numpy(), probability.numpy(), channel_order)
    per_image = {name: torch.cat([batch[name] for batch in batches]) for name in METRIC_NAMES}
    return Evaluation(list(dataset.names), per_image, torch.cat(losses))


def evaluation_dataset(data: str, prep: Preprocessing, layout: str = "auto", split: str = "all",
                       val_fraction: float = 0.2, seed: int = 41,
                       synthetic_count: int = 16) -> tuple[SegmentationDataset, str]:
    """The images to evaluate and which share of ``data`` they are, for the user to read: a dataset
    folder's every image (``split="all"``, as the paper's test script scores a test folder) or its
    validation part (the one training held out with the same fraction and seed); for
    ``synthetic``, the synthetic validation stream."""
    if data == "synthetic":
        dataset = synthetic_validation_set(synthetic_count, prep.size, seed)
        return dataset, f"{len(dataset)} synthetic validation images (stream {seed + 1})"
    pairs = load_split(data, layout, val_fraction, seed)
    every = sorted(pairs.train + pairs.val, key=lambda pair: pair.name)
    if split == "all":
        return PairDataset(every, prep), f"all {len(every)} images of {data}"
    return PairDataset(pairs.val, prep), (f"the validation share of {data}: {len(pairs.val)} of its {len(every)} images "
                                          "(--split all scores every image)")


def write_prediction_pngs(folder: Path, name: str, image: np.ndarray, mask: np.ndarray, probability: np.ndarray,
                          channel_order: str) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    predicted = probability[0] >= 0.5
    Image.fromarray((predicted * 255).astype(np.uint8)).save(folder / f"{name}_mask.png")
    Image.fromarray(overlay(image, mask[0] >= 0.5, predicted, channel_order)).save(folder / f"{name}_overlay.png")


def overlay(image: np.ndarray, truth: np.ndarray, predicted: np.ndarray, channel_order: str) -> np.ndarray:
    """uint8 RGB [H, W, 3]: the input, prediction tinted red, ground-truth outline in green."""
    rgb = to_rgb(image, channel_order)
    rgb[predicted] = 0.55 * rgb[predicted] + 0.45 * np.array([1.0, 0.1, 0.1])
    rgb[outline(truth)] = (0.1, 1.0, 0.1)
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def to_rgb(image: np.ndarray, channel_order: str) -> np.ndarray:
    """A network input [C, H, W] back to a displayable float RGB [H, W, 3]."""
    if channel_order == "GRAY":
        return np.repeat(image[0][:, :, None], 3, axis=2).astype(np.float64)
    channels = image[::-1] if channel_order == "BGR" else image
    return channels.transpose(1, 2, 0).astype(np.float64)


def outline(region: np.ndarray) -> np.ndarray:
    """Pixels of ``region`` with a 4-neighbour outside it."""
    padded = np.pad(region, 1, mode="edge")
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return region & ~interior


def write_json(path: Path, record: dict) -> None:
    write_files({path: lambda p: p.write_text(json.dumps(record, indent=2) + "\n")})
