"""From a checkpoint to a converted model: trace, prepare, calibrate, quantize, check agreement."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from medqk import console
from medqk.convert import passes
from medqk.convert.neurons import output_activation, output_scale, output_values
from medqk.convert.quantize import NodeQuantReport, quantize, run_quantized
from medqk.convert.serialize import ConvertedModel, is_model_dir, load_model
from medqk.convert.trace import trace
from medqk.errors import InputError

#: calibration images used when none are given
DEFAULT_CALIBRATION_COUNT = 4


def float_graph_of(model, image_size: tuple[int, int]):
    """The prepared float IR of a torch MedQKFormer-like module at ``image_size`` (H, W)."""
    return passes.prepare(trace(model, (in_channels_of(model), *image_size)))


def in_channels_of(model) -> int:
    return model.config.in_channels if hasattr(model, "config") else 3


def mask_agreement(probs_a: np.ndarray, probs_b: np.ndarray) -> dict:
    """Pixel agreement and Dice of the two 0.5-thresholded masks."""
    return label_agreement(probs_a > 0.5, probs_b > 0.5)


def label_agreement(labels_a: np.ndarray, labels_b: np.ndarray) -> dict:
    """Pixel agreement of two label maps, and Dice of their foregrounds (label != 0)."""
    a, b = labels_a != 0, labels_b != 0
    inter, total = np.count_nonzero(a & b), np.count_nonzero(a) + np.count_nonzero(b)
    return {"pixel_agreement": float(np.mean(labels_a == labels_b)), "dice": 1.0 if total == 0 else 2 * inter / total}


def predicted_labels(outputs: np.ndarray, activation: str) -> np.ndarray:
    """Per-pixel class labels int64 [N, H, W] of network outputs [N, K, H, W] (or [N, H, W], one
    channel) whose ``activation`` is "sigmoid", "softmax" or "none" (``neurons.output_activation``):
    one channel is foreground (1) where its probability exceeds 0.5, or its logit 0; K channels give
    the most likely class, so that for K = 2 class 1 is the foreground."""
    if outputs.ndim == 3:
        outputs = outputs[:, None]
    if outputs.shape[1] > 1:
        return np.argmax(outputs, axis=1)
    return (outputs[:, 0] > (0.5 if activation == "sigmoid" else 0.0)).astype(np.int64)


def torch_probabilities(model, images: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))).numpy()


def int_probabilities(qgraph, images: np.ndarray) -> np.ndarray:
    """The integer graph's float32 output on float images: probabilities where it ends in a sigmoid
    or softmax, its real-valued logits otherwise (``neurons.output_values``)."""
    return output_values(output_activation(qgraph), run_quantized(qgraph, images), output_scale(qgraph))


def architecture_figures(module, input_shape: tuple[int, int, int]) -> dict:
    """The traced module's trainable parameters and thop's count of it (BatchNorms unfolded), for
    the energy report's comparison with published figures."""
    from medqk.energy.counting import thop_counts
    from medqk.model import count_parameters

    return {"parameters": count_parameters(module), "thop_macs": sum(thop_counts(trace(module, input_shape)).values())}


def convert_graphs(module, input_shape: tuple[int, int, int], calibration_images: np.ndarray,
                   meta: dict, sensitivity: bool = False,
                   formats: dict[str, int] | None = None) -> tuple[ConvertedModel, list[NodeQuantReport], dict]:
    """Convert a torch module for inputs ``input_shape`` (C, H, W); returns the model, the per-node
    quantization report and the integer graph's agreement with the torch network on the
    calibration images (mask pixels, or class labels for K outputs). ``sensitivity`` adds the
    module's own sensitivity and the attribution of the disagreement (``sensitivity.py``) to the
    model's meta. ``formats``: the state formats an integer-aware fine-tuning recorded; the torch
    network is then the fine-tuned one, its integer graph's forward pass (``finetune.network_for``),
    and the plain float module's agreement is reported beside it (``float_module``)."""
    with console.progress(None, desc="convert: trace and fold", total=3 + sensitivity, unit="stage") as bar:
        fgraph = passes.prepare(trace(module, tuple(input_shape)))
        bar.update()
        bar.set_description("convert: calibrate and quantize")
        qgraph, report = quantize(fgraph, calibration_images, formats)
        bar.update()
        bar.set_description("convert: compare with torch")
        activation = output_activation(qgraph)
        int_labels = predicted_labels(int_probabilities(qgraph, calibration_images), activation)
        float_outputs = torch_probabilities(module, calibration_images)
        float_module = label_agreement(int_labels, predicted_labels(float_outputs, activation))
        agreement = float_module
        if formats is not None:
            from medqk.convert.finetune import network_for

            fine_tuned = network_for(module, {"training": {"integer_formats": formats}}, tuple(input_shape))
            agreement = {**label_agreement(int_labels, predicted_labels(torch_probabilities(fine_tuned, calibration_images), activation)),
                         "integer_aware": True, "float_module": float_module}
        bar.update()
        if sensitivity:
            from medqk.convert.sensitivity import sensitivity_report

            bar.set_description("convert: sensitivity")
            meta = {**meta, "sensitivity": sensitivity_report(module, fgraph, qgraph, calibration_images,
                                                              float_outputs, float_module)}
            bar.update()
    meta = {**meta, "image_size": list(input_shape[1:]), "output": {"activation": activation, "classes": int(qgraph.output.tensor.shape[0])},
            "architecture": architecture_figures(module, tuple(input_shape)), "calibration": {
                "images": int(len(calibration_images)), **agreement,
                "saturated_values": int(sum(r.saturated for r in report)),
            }}
    return ConvertedModel(fgraph, qgraph, meta), report, agreement


def model_writers() -> list:
    """The writers of every backend's files in a model directory (ONNX models, the Loihi 2 report)."""
    import medqk.deploy.commands  # noqa: F401  (registers the Loihi 2 writer)
    from medqk.convert.commands import OUTPUT_WRITERS

    return list(OUTPUT_WRITERS)


def convert_module(module, input_shape: tuple[int, int, int], calibration_images: np.ndarray, out_dir: Path,
                   force: bool = False) -> ConvertedModel:
    """Convert any supported torch module (``medqk convert --model`` and the Python API) and write its
    model directory ``out_dir``, which every command then reads: ``calibration_images`` are float
    network inputs [N, C, H, W] with ``input_shape`` == (C, H, W)."""
    from medqk.convert.serialize import save_model

    images = np.asarray(calibration_images, dtype=np.float32)
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(input_shape):
        raise InputError(f"calibration images must be [N, {', '.join(map(str, input_shape))}], got {list(images.shape)}")
    meta = {"medqk_version": __import__("medqk").__version__,
            "preprocessing": preprocessing_for(tuple(input_shape)).to_dict()}
    converted, report, _ = convert_graphs(module, tuple(input_shape), images, meta)
    converted.meta["quantization"] = [vars(r) for r in report]
    save_model(converted, Path(out_dir), force=force, extra_writers=model_writers())
    return converted


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
                       calibrate_dir: Path | None = None, calibration_count: int = DEFAULT_CALIBRATION_COUNT,
                       sensitivity: bool = False):
    """Load a checkpoint (default: the embedded default model) and convert it (``sensitivity``:
    as ``convert_graphs``)."""
    from medqk.checkpoint import load_checkpoint_payload
    from medqk.data.preprocess import Preprocessing
    from medqk.defaults import default_checkpoint_path

    path = Path(path) if path is not None else default_checkpoint_path()
    model, info = load_checkpoint_payload(path)
    prep = Preprocessing.from_dict(info["preprocessing"]) if info.get("preprocessing") else Preprocessing()
    if image_size is not None:
        prep = dataclasses.replace(prep, size=tuple(image_size))
    from medqk.data.sizes import check_conversion_size

    check_conversion_size(model.config, prep.size)
    images = load_calibration_images(calibrate_dir, prep, calibration_count, model.config.in_channels)
    meta = {
        "medqk_version": __import__("medqk").__version__,
        "source_checkpoint": {"path": str(Path(path).resolve()), "sha256": info["sha256"]},
        "model_config": model.config.to_dict(),
        "preprocessing": prep.to_dict(),
    }
    formats = (info.get("training") or {}).get("integer_formats")
    return (*convert_graphs(model, (model.config.in_channels, *prep.size), images, meta, sensitivity, formats), model)


def preprocessing_for(input_shape: tuple[int, int, int]):
    """How image files become inputs of a user's network: resized to its H x W, BGR for 3 channels
    (as MedQKFormer's), grey for one, scaled by 1/255."""
    from medqk.data.preprocess import Preprocessing

    channels, height, width = input_shape
    if channels not in (1, 3):
        raise InputError(f"--input-shape {channels} {height} {width}: image files give 1 or 3 channels; a network "
                         "with another number of input channels takes .npy inputs (convert it with convert_module)")
    return Preprocessing(size=(height, width), channel_order="BGR" if channels == 3 else "GRAY")


def convert_user_network(spec: str, weights: Path | None, input_shape: tuple[int, int, int],
                         calibrate_dir: Path | None = None, calibration_count: int = DEFAULT_CALIBRATION_COUNT,
                         sensitivity: bool = False):
    """``medqk convert --model FILE.py:FUNCTION``: build the user's module, load its weights, convert it."""
    from medqk.convert import factory

    if min(input_shape) < 1:
        raise InputError(f"--input-shape {' '.join(map(str, input_shape))}: every size must be positive")
    module, record = factory.load(spec, weights)
    prep = preprocessing_for(tuple(input_shape))
    if calibrate_dir is None and input_shape[0] != 3:  # the built-in synthetic images are colour
        images = np.random.default_rng(0).random((calibration_count, *input_shape)).astype(np.float32)
    else:
        images = load_calibration_images(calibrate_dir, prep, calibration_count, input_shape[0])
    meta = {"medqk_version": __import__("medqk").__version__, "source_module": record, "preprocessing": prep.to_dict()}
    return convert_graphs(module, tuple(input_shape), images, meta, sensitivity)


def open_model(path: Path | None, image_size: tuple[int, int] | None = None) -> ConvertedModel:
    """A converted model from a directory, or converted in memory from a checkpoint."""
    if path is not None and is_model_dir(Path(path)):
        return load_model(Path(path))
    if path is not None and Path(path).is_dir():
        raise InputError(f"{path} is a directory but not a converted model (no model.json); "
                         f"run `medqk convert CHECKPOINT -o {path}` first")
    converted, _, _, _ = convert_checkpoint(path, image_size)
    return converted
