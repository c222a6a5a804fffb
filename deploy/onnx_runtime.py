"""Run the ONNX models of a converted MedQKFormer in onnxruntime (CPU): backends ``onnx`` and ``onnx-int``.

``onnx`` runs ``model.onnx`` (float32 image -> probabilities, any batch and size that is a multiple
of the model's ``size_multiple``); ``onnx-int`` runs ``model-int.onnx`` on the image quantized on the
host exactly as every integer backend does (``io.quantize_input``) and turns its integer logits into
probabilities on the host (``neurons.output_values``), so its output equals the integer
interpreter's. Both come from the model directory written by ``medqk convert``; a checkpoint given
as MODEL is converted and lowered in memory.

Failures are one-line messages: a directory without the ONNX file, an input of the wrong shape or
type (expected vs got), and an onnxruntime that lacks a kernel for an op of the model (which op,
which node, which onnxruntime).
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

import numpy as np

from medqk.convert.io import quantize_input
from medqk.convert.neurons import output_values
from medqk.errors import InputError, MedqkError

# onnx, onnxruntime and the lowering are imported where used: this module is imported whenever the
# `medqk` command starts (it registers the backends), and those imports are slow.


class OnnxRuntimeError(MedqkError):
    """onnxruntime cannot load or run a model (a missing kernel, an invalid graph, a failed run)."""


def cpu_threads() -> int:
    """Cores this process may use (the CPU provider's intra-op thread count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def session_options(threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or cpu_threads()
    options.log_severity_level = 3  # errors only: ORT's warnings would clutter the CLI
    return options


def _explain_load_error(error: Exception, label: str) -> str:
    import onnxruntime as ort

    text = str(error)
    kernel = re.search(r"Could not find an implementation for (\w+)\((\d+)\) node with name '([^']*)'", text)
    if kernel:
        op, version, node = kernel.groups()
        return (f"onnxruntime {ort.__version__} has no CPU kernel for {op} (version {version} of the op, "
                f"with the input types this model gives it) used by node {node!r} of {label}; "
                f"re-export with `medqk convert` or use an onnxruntime that implements it")
    unregistered = re.search(r"No Op registered for (\w+) with domain_version of (\d+)", text)
    if unregistered:
        op, opset = unregistered.groups()
        return f"onnxruntime {ort.__version__} does not know op {op} at opset {opset} ({label})"
    type_error = re.search(r"of operator \((\w+)\) in node \(([^)]*)\)", text)
    if type_error:
        op, node = type_error.groups()
        return f"onnxruntime {ort.__version__} rejects op {op} in node {node!r} of {label}: {text.splitlines()[0]}"
    opset = re.search(r"Opset (\d+) is", text)
    if opset:
        return f"{label} uses opset {opset.group(1)}, newer than onnxruntime {ort.__version__} supports; upgrade onnxruntime"
    return f"onnxruntime {ort.__version__} cannot load {label}: {text.splitlines()[0] if text else type(error).__name__}"


def open_session(model, label: str, threads: int | None = None):
    """An onnxruntime CPU session for ``model`` (a path, serialized bytes or an onnx.ModelProto)."""
    import onnxruntime as ort

    if hasattr(model, "SerializeToString"):
        model = model.SerializeToString()
    elif isinstance(model, Path):
        model = str(model)
    try:
        return ort.InferenceSession(model, session_options(threads), providers=["CPUExecutionProvider"])
    except Exception as error:  # ORT raises its own pybind exception types (NotImplemented, InvalidGraph, Fail...)
        raise OnnxRuntimeError(_explain_load_error(error, label)) from error


def check_input(session, array: np.ndarray, label: str, size_multiple: int = 1) -> None:
    """InputError unless ``array`` fits the session's single input (rank, fixed dims, spatial multiple)."""
    spec = session.get_inputs()[0]
    expected = list(spec.shape)
    shown = "[" + ", ".join(str(d) for d in expected) + "]"
    got = list(array.shape)
    fixed_ok = len(got) == len(expected) and all(not isinstance(e, int) or e == g for e, g in zip(expected, got))
    if not fixed_ok:
        raise InputError(f"{label} expects input {spec.name!r} of shape {shown} ({spec.type}); got {got}")
    bad = [n for n in got[2:] if n % size_multiple or n == 0]
    if bad:
        raise InputError(f"{label} expects input {spec.name!r} of shape {shown} with H and W multiples of "
                         f"{size_multiple}; got {got}")


def run_session(session, array: np.ndarray, label: str, size_multiple: int = 1) -> np.ndarray:
    """The single output of ``session`` on ``array`` (checked first; ORT errors made readable)."""
    check_input(session, array, label, size_multiple)
    spec = session.get_inputs()[0]
    try:
        return session.run(None, {spec.name: array})[0]
    except Exception as error:
        raise OnnxRuntimeError(f"onnxruntime failed to run {label} on input {list(array.shape)} {array.dtype}: "
                               f"{str(error).splitlines()[0]}") from error


def metadata(session) -> dict[str, str]:
    return dict(session.get_modelmeta().custom_metadata_map)


def float_probabilities(session, images: np.ndarray, label: str = "the float ONNX model") -> np.ndarray:
    """float32 probabilities [N, 1, H, W] of the float model on preprocessed images [N, C, H, W]."""
    multiple = int(metadata(session).get("size_multiple", 1))
    return run_session(session, np.ascontiguousarray(images, dtype=np.float32), label, multiple)


def int_logits(session, images: np.ndarray, label: str = "the integer ONNX model") -> np.ndarray:
    """int64 logits [N, 1, H, W] of the integer model: the images quantized as its metadata says."""
    frac_bits = int(metadata(session)["input_frac_bits"])
    return run_session(session, quantize_input(images, frac_bits), label)


def int_probabilities(session, images: np.ndarray, label: str = "the integer ONNX model") -> np.ndarray:
    meta = metadata(session)
    return output_values(meta.get("output_activation", "sigmoid"), int_logits(session, images, label), float(meta["logit_scale"]))


def model_source(handle, integer: bool):
    """(model for ``open_session``, label) for a ``backends.ModelHandle``: ``model.onnx`` or
    ``model-int.onnx`` in MODEL's directory, or the model lowered in memory when MODEL is a checkpoint."""
    from medqk.convert import to_onnx

    file_name = to_onnx.INT_FILE if integer else to_onnx.FLOAT_FILE
    directory = handle.directory
    if directory is None:
        converted = handle.converted
        lowered = (to_onnx.int_model(converted.int_graph, converted.meta) if integer
                   else to_onnx.float_model(converted.float_graph, converted.meta))
        return lowered, f"{file_name} (lowered in memory)"
    path = directory / file_name
    if not path.is_file():
        checkpoint = handle.converted.meta.get("source_checkpoint", {}).get("path", "CHECKPOINT")
        raise InputError(f"{directory} has no {file_name}, which `medqk convert` always writes: the model directory "
                         f"is incomplete; run `medqk convert {checkpoint} -o {directory} --force` to write it again")
    return path, str(path)


def _run(handle, images: np.ndarray, integer: bool):
    from medqk.deploy.backends import RunResult

    model, label = model_source(handle, integer)
    start = time.perf_counter()
    session = open_session(model, label)
    loaded = time.perf_counter()
    probabilities = (int_probabilities if integer else float_probabilities)(session, images, label)
    done = time.perf_counter()
    return RunResult(np.asarray(probabilities, dtype=np.float32), done - loaded, {
        "onnx_model": label, "load_seconds": loaded - start, "threads": cpu_threads(),
        "providers": session.get_providers(),
    })


def run_onnx(handle, images: np.ndarray):
    """Backend ``onnx``: ``(backends.ModelHandle, float32 images) -> backends.RunResult``."""
    return _run(handle, images, integer=False)


def run_onnx_int(handle, images: np.ndarray):
    """Backend ``onnx-int``: the integer model; probabilities from its integer logits."""
    return _run(handle, images, integer=True)


#: merged into ``deploy.backends.BACKENDS``
BACKENDS = {"onnx": run_onnx, "onnx-int": run_onnx_int}
