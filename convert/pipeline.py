"""From a checkpoint to a converted model: trace, prepare, calibrate, quantize, check agreement."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from medqk import console
from medqk.convert import passes
from medqk.convert.neurons import logits_to_probabilities
from medqk.convert.quantize import NodeQuantReport, quantize, run_quantized
from medqk.convert.serialize import ConvertedModel, is_model_dir, load_model
from medqk.convert.trace import trace
from medqk.errors import InputError

#: calibration images used when none are given
DEFAULT_CALIBRATION_COUNT = 4


def float_graph_of(model, image_size: tuple[int, int]):
    """The prepared float IR of a torch MedQKFormer-like module at ``image_size`` (H, W)."""
    in_channels = model.config.in_channels if hasattr(model, "config") else 3
    return passes.prepare(trace(model, (in_channels, *image_size)))


def mask_agreement(probs_a: np.ndarray, probs_b: np.ndarray) -> dict:
    """Pixel agreement and Dice of the two 0.5-thresholded masks."""
    a, b = probs_a > 0.5, probs_b > 0.5
    inter, total = np.count_nonzero(a & b), np.count_nonzero(a) + np.count_nonzero(b)
    return {"pixel_agreement": float(np.mean(a == b)), "dice": 1.0 if total == 0 else 2 * inter / total}


def torch_probabilities(model, images: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))).numpy()


def int_probabilities(qgraph, images: np.ndarray) -> np.ndarray:
    return logits_to_probabilities(run_quantized(qgraph, images), qgraph.output.op.in_scale)


def convert_module(model, image_size: tuple[int, int], calibration_images: np.ndarray,
                   meta: dict) -> tuple[ConvertedModel, list[NodeQuantReport], dict]:
    """Convert a torch module; returns the model, per-node quantization report and the integer
    graph's agreement with the torch model on the calibration images."""
    with console.progress(None, desc="convert: trace and fold", total=3, unit="stage") as bar:
        fgraph = float_graph_of(model, image_size)
        bar.update()
        bar.set_description("convert: calibrate and quantize")
        qgraph, report = quantize(fgraph, calibration_images)
        bar.update()
        bar.set_description("convert: compare with torch")
        agreement = mask_agreement(int_probabilities(qgraph, calibration_images), torch_probabilities(model, calibration_images))
        bar.update()
    meta = {**meta, "image_size": list(image_size), "calibration": {
        "images": int(len(calibration_images)), **agreement,
        "saturated_values": int(sum(r.saturated for r in report)),
    }}
    return ConvertedModel(fgraph, qgraph, meta), report, agreement


def load_calibration_images(directory: Path | None, prep, count: int, in_channels: int) -> np.ndarray:
    """Up to ``count`` preprocessed images from ``directory`` (any image files, sorted by name),
    or the built-in synthetic calibration images when ``directory`` is None."""
    if directory is None:
        from medqk.defaults import default_calibration_images

        return default_calibration_images(count, tuple(prep.size))
    from medqk.data.layouts import IMAGE_SUFFIXES
    from medqk.data.preprocess import load_network_input

    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"calibration folder {directory} does not exist")
    files = sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"calibration folder {directory} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return np.stack([load_network_input(p, prep, in_channels) for p in files[:count]])


def convert_checkpoint(path: Path | None, image_size: tuple[int, int] | None = None,
                       calibrate_dir: Path | None = None, calibration_count: int = DEFAULT_CALIBRATION_COUNT):
    """Load a checkpoint (default: the embedded default model) and convert it."""
    from medqk.checkpoint import load_checkpoint_payload
    from medqk.data.preprocess import Preprocessing
    from medqk.defaults import default_checkpoint_path

    path = Path(path) if path is not None else default_checkpoint_path()
    model, info = load_checkpoint_payload(path)
    prep = Preprocessing.from_dict(info["preprocessing"]) if info.get("preprocessing") else Preprocessing()
    if image_size is not None:
        prep = dataclasses.replace(prep, size=tuple(image_size))
    from medqk.model import check_input_shape

    check_input_shape((1, model.config.in_channels, *prep.size), model.config.in_channels)
    images = load_calibration_images(calibrate_dir, prep, calibration_count, model.config.in_channels)
    meta = {
        "medqk_version": __import__("medqk").__version__,
        "source_checkpoint": {"path": str(Path(path).resolve()), "sha256": info["sha256"]},
        "model_config": model.config.to_dict(),
        "preprocessing": prep.to_dict(),
    }
    return (*convert_module(model, tuple(prep.size), images, meta), model)


def open_model(path: Path | None, image_size: tuple[int, int] | None = None) -> ConvertedModel:
    """A converted model from a directory, or converted in memory from a checkpoint."""
    if path is not None and is_model_dir(Path(path)):
        return load_model(Path(path))
    if path is not None and Path(path).is_dir():
        raise InputError(f"{path} is a directory but not a converted model (no model.json); "
                         f"run `medqk convert CHECKPOINT -o {path}` first")
    converted, _, _, _ = convert_checkpoint(path, image_size)
    return converted
