"""The backends `medqk run` can execute a model on, behind one signature.

A backend is a function ``(handle: ModelHandle, images: float32 [N, C, H, W]) -> RunResult``.
``torch`` runs the checkpoint's module, ``ir`` the float interpreter, ``ir-int`` the integer
interpreter; the ONNX and Lava modules register theirs in ``BACKENDS`` (``lava``: the graph of
Lava's library processes, which also takes ``models="fast"|"reference"``).
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

import numpy as np

from medqk.convert import interpret_float
from medqk.convert.pipeline import int_probabilities, open_model, torch_probabilities
from medqk.convert.serialize import ConvertedModel, is_model_dir
from medqk.errors import InputError


@dataclasses.dataclass
class RunResult:
    probabilities: np.ndarray  # float32 [N, 1, H, W]
    seconds: float
    info: dict = dataclasses.field(default_factory=dict)


class ModelHandle:
    """MODEL as the user named it (a checkpoint or a converted directory), opened lazily."""

    def __init__(self, path: Path | None, image_size: tuple[int, int] | None = None):
        self.path = Path(path) if path is not None else None
        self.image_size = image_size
        self._converted: ConvertedModel | None = None
        self._torch = None

    @property
    def directory(self) -> Path | None:
        return self.path if self.path is not None and is_model_dir(self.path) else None

    @property
    def converted(self) -> ConvertedModel:
        if self._converted is None:
            self._converted = open_model(self.path, self.image_size)
        return self._converted

    @property
    def torch_model(self):
        if self._torch is None:
            from medqk.checkpoint import file_sha256
            from medqk.defaults import default_checkpoint_path

            checkpoint = self.path if self.path is not None else default_checkpoint_path()
            if self.directory is not None and "source_module" in self.converted.meta:  # medqk convert --model
                from medqk.convert.factory import rebuild

                self._torch = rebuild(self.converted.meta["source_module"])
                return self._torch
            if self.directory is not None:
                source = self.converted.meta["source_checkpoint"]
                checkpoint = Path(source["path"])
                if not checkpoint.is_file() or file_sha256(checkpoint) != source["sha256"]:
                    raise InputError(f"the torch backend needs the checkpoint {self.path} was converted from "
                                     f"({checkpoint}, sha256 {source['sha256'][:12]}...), which is missing or changed; "
                                     "pass the checkpoint itself as MODEL")
            from medqk.checkpoint import load_checkpoint_payload
            from medqk.convert.finetune import network_for

            model, metadata = load_checkpoint_payload(checkpoint)
            self._torch = network_for(model, metadata, (model.config.in_channels, *self.converted.image_size))
        return self._torch

    def preprocessing(self):
        from medqk.data.preprocess import Preprocessing

        return Preprocessing.from_dict(self.converted.meta["preprocessing"])


def _timed(fn: Callable[[], np.ndarray], **info) -> RunResult:
    start = time.perf_counter()
    probabilities = fn()
    return RunResult(np.asarray(probabilities, dtype=np.float32), time.perf_counter() - start, info)


def run_torch(handle: ModelHandle, images: np.ndarray) -> RunResult:
    model = handle.torch_model
    return _timed(lambda: torch_probabilities(model, images))


def run_ir(handle: ModelHandle, images: np.ndarray) -> RunResult:
    graph = handle.converted.float_graph
    return _timed(lambda: interpret_float.run(graph, images))


def run_ir_int(handle: ModelHandle, images: np.ndarray) -> RunResult:
    graph = handle.converted.int_graph
    return _timed(lambda: int_probabilities(graph, images))


BACKENDS: dict[str, Callable[[ModelHandle, np.ndarray], RunResult]] = {
    "torch": run_torch,
    "ir": run_ir,
    "ir-int": run_ir_int,
}

from medqk.deploy.lava_library import BACKENDS as _LAVA_BACKENDS  # noqa: E402  (lava)
from medqk.deploy.onnx_runtime import BACKENDS as _ONNX_BACKENDS  # noqa: E402  (onnx, onnx-int)

BACKENDS.update(_ONNX_BACKENDS)
BACKENDS.update(_LAVA_BACKENDS)
