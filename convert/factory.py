"""The user's own network: ``FILE.py:FUNCTION`` builds it, an optional checkpoint fills its weights.

``medqk convert --model FILE.py:FUNCTION [--weights CKPT]`` imports FILE (which may call
``medqk.convert.register_neuron`` for its neuron classes), calls ``FUNCTION()`` and loads the
weights with ``torch.load(weights_only=True)``. The model directory records both files with their
sha256 (``source_record``), so that the torch backend of ``medqk run`` and ``medqk compare`` can
rebuild the same module later (``rebuild``), and refuses when either file changed.
"""
from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

from medqk.errors import InputError


def parse_spec(spec: str) -> tuple[Path, str]:
    """(file, function) of ``FILE.py:FUNCTION``."""
    file, _, function = str(spec).rpartition(":")
    if not file or not function.isidentifier() or not file.endswith(".py"):
        raise InputError(f"--model {spec}: give FILE.py:FUNCTION, e.g. --model my_net.py:build")
    path = Path(file)
    if not path.is_file():
        raise InputError(f"--model {spec}: {path} does not exist")
    return path, function


def import_file(path: Path):
    """The Python module of ``path`` (imported once per file content per process)."""
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    name = f"medqk_user_{Path(path).stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look their module up here
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[name]
        raise InputError(f"--model {path}: importing it failed ({type(error).__name__}: {error})") from None
    return module


def build_module(path: Path, function: str):
    """``FUNCTION()`` of the file, checked to be a torch nn.Module, in eval mode."""
    from torch import nn

    factory = getattr(import_file(path), function, None)
    if not callable(factory):
        raise InputError(f"--model {path}:{function}: {path} defines no function {function}")
    try:
        module = factory()
    except Exception as error:
        raise InputError(f"--model {path}:{function}: {function}() failed ({type(error).__name__}: {error})") from None
    if not isinstance(module, nn.Module):
        raise InputError(f"--model {path}:{function}: {function}() returned a {type(module).__name__}, not a torch nn.Module")
    return module.eval()


def load_weights(module, path: Path) -> None:
    """Load a state_dict (or a dict holding one under "state_dict" or "model") with weights_only."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError(f"--weights {path}: no such file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise InputError(f"--weights {path}: not a torch file of tensors ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''})") from None
    if isinstance(payload, dict):
        payload = payload.get("state_dict", payload.get("model", payload))
    if not isinstance(payload, dict):
        raise InputError(f"--weights {path}: holds a {type(payload).__name__}, not a state_dict")
    missing, unexpected = [], []
    try:
        result = module.load_state_dict(payload, strict=False)
        missing, unexpected = result.missing_keys, result.unexpected_keys
    except RuntimeError as error:  # shapes that do not fit
        raise InputError(f"--weights {path}: does not fit the module ({str(error).splitlines()[-1].strip()})") from None
    if missing or unexpected:
        raise InputError(f"--weights {path}: does not fit the module: {len(missing)} missing keys "
                         f"{missing[:3]}, {len(unexpected)} unexpected keys {unexpected[:3]}")


def _sha256(path: Path) -> str:
    from medqk.checkpoint import file_sha256

    return file_sha256(path)


def load(spec: str, weights: Path | None):
    """(module, record) for ``--model spec [--weights weights]``."""
    path, function = parse_spec(spec)
    module = build_module(path, function)
    if weights is not None:
        load_weights(module, weights)
    record = {"file": str(path.resolve()), "function": function, "sha256": _sha256(path),
              "weights": None if weights is None else {"path": str(Path(weights).resolve()), "sha256": _sha256(Path(weights))}}
    return module, record


def rebuild(record: dict):
    """The module a model directory was converted from, when its files are unchanged."""
    files = [(Path(record["file"]), record["sha256"])]
    if record.get("weights"):
        files.append((Path(record["weights"]["path"]), record["weights"]["sha256"]))
    for path, sha in files:
        if not path.is_file() or _sha256(path) != sha:
            raise InputError(f"the torch backend needs {path} (sha256 {sha[:12]}...), which the model was converted "
                             "from and which is missing or changed")
    module = build_module(files[0][0], record["function"])
    if record.get("weights"):
        load_weights(module, files[1][0])
    return module
