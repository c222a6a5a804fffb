"""The training loss, and the nine metrics of the paper from each image's confusion matrix at 0.5.

Per image: mIoU (the IoU of the target class, averaged over images as the paper does), DSC (F1),
accuracy, sensitivity, specificity, precision, recall, F-beta (beta^2 = 0.3) and the E-measure
(enhanced alignment, Fan et al. 2018). A ratio whose denominator is zero (say, precision when
nothing is predicted) is 1 when prediction and ground truth agree entirely and 0 otherwise.
"""
from __future__ import annotations

import torch

METRIC_NAMES = ("mIoU", "DSC", "accuracy", "sensitivity", "specificity", "precision", "recall", "F-beta", "E-measure")
BETA_SQUARED = 0.3
THRESHOLD = 0.5


def confusion(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per image [N, 4] counts (TP, FP, FN, TN) of probabilities and (soft) labels at 0.5."""
    predicted = (prediction >= THRESHOLD).flatten(1)
    actual = (target >= THRESHOLD).flatten(1)
    return torch.stack(
        [(predicted & actual).sum(1), (predicted & ~actual).sum(1), (~predicted & actual).sum(1), (~predicted & ~actual).sum(1)],
        dim=1,
    ).double()


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor, errors: torch.Tensor) -> torch.Tensor:
    empty_value = (errors == 0).double()
    safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    return torch.where(denominator > 0, numerator / safe, empty_value)


def image_metrics(prediction: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each metric per image: a dict name -> float64 tensor [N]."""
    tp, fp, fn, tn = confusion(prediction, target).unbind(1)
    errors = fp + fn
    precision = _ratio(tp, tp + fp, errors)
    recall = _ratio(tp, tp + fn, errors)
    return {
        "mIoU": _ratio(tp, tp + fp + fn, errors),
        "DSC": _ratio(2 * tp, 2 * tp + fp + fn, errors),
        "accuracy": (tp + tn) / (tp + fp + fn + tn),
        "sensitivity": recall,
        "specificity": _ratio(tn, tn + fp, errors),
        "precision": precision,
        "recall": recall,
        "F-beta": _ratio((1 + BETA_SQUARED) * precision * recall, BETA_SQUARED * precision + recall, errors),
        "E-measure": e_measure(prediction, target),
    }


def e_measure(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Enhanced-alignment measure per image of the binarised prediction against the mask."""
    predicted = (prediction >= THRESHOLD).flatten(1).double()
    actual = (target >= THRESHOLD).flatten(1).double()
    foreground = actual.mean(1, keepdim=True)
    # The alignment term is undefined for a mask that is all background or all target:
    # then the score is simply the fraction of pixels predicted like the mask.
    agreement = 1 - (predicted - actual).abs()
    centred_prediction = predicted - predicted.mean(1, keepdim=True)
    centred_actual = actual - foreground
    alignment = 2 * centred_prediction * centred_actual / (centred_prediction ** 2 + centred_actual ** 2 + 1e-12)
    enhanced = (alignment + 1) ** 2 / 4
    uniform_mask = (foreground == 0) | (foreground == 1)
    return torch.where(uniform_mask, agreement, enhanced).mean(1)


def mean_metrics(per_image: dict[str, torch.Tensor]) -> dict[str, float]:
    return {name: float(values.mean()) for name, values in per_image.items()}


def image_losses(probabilities: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """Training loss per image [N]: binary cross-entropy plus soft-Dice loss, both on the
    network's probabilities. (The release applied a sigmoid to outputs that already end in one,
    a double sigmoid that squeezes every prediction into [0.5, 0.73]; this is the intended loss.)"""
    flat_p, flat_t = probabilities.flatten(1), target.flatten(1)
    bce = torch.nn.functional.binary_cross_entropy(flat_p, flat_t, reduction="none").mean(1)
    dice = (2 * (flat_p * flat_t).sum(1) + smooth) / (flat_p.sum(1) + flat_t.sum(1) + smooth)
    return bce + (1 - dice)


def segmentation_loss(probabilities: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The training objective: the batch mean of ``image_losses``."""
    return image_losses(probabilities, target).mean()
