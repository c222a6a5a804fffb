"""Checkpoints of MedQKFormer (and of the U-Net baseline): the reference's bare state_dict and medqk's own format.

A medqk checkpoint is a dict saved with ``torch.save``::

    {"format": "medqk-checkpoint", "format_version": 1, "network": "medqkformer" | "unet",
     "config": the network's config.to_dict(), "preprocessing": Preprocessing.to_dict(),
     "training": {...}, "state_dict": {...}, ["resume": {...}]}

``network`` names the network (``medqk.networks``); a file without it (written before the U-Net
could be trained) holds MedQKFormer. Convert, run and the energy report take MedQKFormer only,
so loading refuses other networks unless the caller names them in ``networks``.

A bare state_dict (what the reference training script saves) carries no configuration: widths,
input and output channels are read from tensor shapes; NISF levels are taken as 4 and the
preprocessing as the paper's (256x256, BGR, 1/255). Loading is weights-only (no code from the
file runs) and every way a file can be wrong gets its own CheckpointError.

Stable API for other packages: ``load_checkpoint``, ``load_checkpoint_payload``,
``save_checkpoint``, ``file_sha256``.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import re
import tempfile
from pathlib import Path

import torch

from medqk.data.layouts import name_list
from medqk.data.preprocess import Preprocessing
from medqk.errors import CheckpointError
from medqk.model import MedQKFormer, ModelConfig
from medqk.networks import MEDQKFORMER, NETWORKS, build_network, display_name, network_name

FORMAT = "medqk-checkpoint"
FORMAT_VERSION = 1

#: Functions (model, metadata, input_shape) -> the network a checkpoint stands for, or None. The
#: conversion package registers one for integer-aware fine-tuned checkpoints (which run through
#: their integer graph); ``medqk`` itself knows nothing of integer graphs.
NETWORK_RESOLVERS: list = []


def checkpoint_network(model: torch.nn.Module, metadata: dict, input_shape: tuple[int, int, int]) -> torch.nn.Module:
    """The network a loaded checkpoint stands for: ``model``, unless a registered resolver says otherwise."""
    for resolve in NETWORK_RESOLVERS:
        network = resolve(model, metadata, input_shape)
        if network is not None:
            return network
    return model
ZIP_MAGIC = b"PK\x03\x04"      # torch.save's format since torch 1.6
PICKLE_MAGIC = b"\x80"          # the legacy format: a bare pickle stream


def save_checkpoint(path: str | Path, model: torch.nn.Module, preprocessing: Preprocessing | None = None,
                    training: dict | None = None, resume: dict | None = None) -> Path:
    """Write a medqk checkpoint atomically: a crash leaves the old file (or none), never half a file.

    ``training`` holds plain values (numbers, strings, lists, dicts) describing how the weights
    were made; ``resume`` the optimiser and scheduler state a later run continues from.
    """
    path = Path(path)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "network": network_name(model),
        "config": model.config.to_dict(),
        "preprocessing": (preprocessing or Preprocessing()).to_dict(),
        "training": training or {},
        "state_dict": model.state_dict(),
    }
    if resume is not None:
        payload["resume"] = resume
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes it private; give it a normal file's mode
        os.replace(temporary, path)  # atomic within one file system
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load_checkpoint(path: str | Path) -> MedQKFormer:
    """The MedQKFormer of a checkpoint (either format), in eval mode on the CPU."""
    return load_checkpoint_payload(path)[0]


def load_checkpoint_payload(path: str | Path, networks: tuple[str, ...] = (MEDQKFORMER,)) -> tuple[torch.nn.Module, dict]:
    """The model (eval mode) and the checkpoint's metadata: ``format`` ("medqk" or
    "bare-state-dict"), ``format_version`` (None for bare), ``network``, ``config``,
    ``preprocessing``, ``training``, ``resume`` (None unless saved), ``sha256`` of the file and
    ``path``. A checkpoint of a network not in ``networks`` is refused."""
    path = Path(path)
    payload = read_payload(path)
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        state_dict, metadata = _medqk_contents(path, payload)
    else:
        state_dict = _bare_state_dict(path, payload)
        metadata = {
            "format": "bare-state-dict",
            "format_version": None,
            "network": MEDQKFORMER,
            "config": infer_config(path, state_dict).to_dict(),
            "preprocessing": Preprocessing().to_dict(),
            "training": {},
            "resume": None,
        }
    network = metadata["network"]
    if network not in networks:
        raise CheckpointError(f"{path}: a {display_name(network)} checkpoint; this takes "
                              f"{' or '.join(display_name(n) for n in networks)} only")
    model = _build_model(path, network, metadata["config"], state_dict)
    metadata.update(sha256=file_sha256(path), path=str(path))
    return model, metadata


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_payload(path: Path):
    """``torch.load`` with weights only, its failures turned into errors a user can act on."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    with open(path, "rb") as file:
        head = file.read(4)
    if not head:
        raise CheckpointError(f"{path}: the file is empty")
    if not (head.startswith(ZIP_MAGIC) or head.startswith(PICKLE_MAGIC)):
        raise CheckpointError(f"{path}: not a torch file (a checkpoint is written by torch.save)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Weights only load failed" in str(error):
            found = re.search(r"GLOBAL (\S+)", str(error))
            raise CheckpointError(
                f"{path}: the file holds pickled Python objects{f' ({found[1]})' if found else ''}, for example "
                f"a whole model saved with torch.save(model); medqk loads weights only and never runs code "
                f"from a file: save model.state_dict() instead"
            ) from None
        raise CheckpointError(f"{path}: truncated or damaged torch file ({error})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        size = path.stat().st_size
        raise CheckpointError(
            f"{path}: truncated or damaged torch file ({size} bytes; {str(error).split('.')[0]}); "
            f"copy or save it again"
        ) from None


def _medqk_contents(path: Path, payload: dict) -> tuple[dict, dict]:
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: medqk checkpoint format version {version!r}; this medqk reads versions up to "
            f"{FORMAT_VERSION} (update medqk)"
        )
    missing = [key for key in ("config", "preprocessing", "state_dict") if key not in payload]
    if missing:
        raise CheckpointError(f"{path}: medqk checkpoint without {', '.join(missing)}")
    network = payload.get("network", MEDQKFORMER)
    if network not in NETWORKS:
        raise CheckpointError(f"{path}: unknown network {network!r}; this medqk knows {', '.join(NETWORKS)} (update medqk)")
    metadata = {
        "format": "medqk",
        "format_version": version,
        "network": network,
        "config": payload["config"],
        "preprocessing": payload["preprocessing"],
        "training": payload.get("training", {}),
        "resume": payload.get("resume"),
    }
    return payload["state_dict"], metadata


def _bare_state_dict(path: Path, payload) -> dict:
    """A state_dict as saved by the reference script (also inside {"state_dict": ...} or
    {"model": ...}, and with DataParallel's "module." prefix)."""
    if isinstance(payload, dict):
        for wrapper in ("state_dict", "model"):
            if isinstance(payload.get(wrapper), dict):
                payload = payload[wrapper]
                break
    if not isinstance(payload, dict) or not payload or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise CheckpointError(
            f"{path}: neither a medqk checkpoint nor a state_dict (a dict of tensors); found {_describe(payload)}"
        )
    if all(key.startswith("module.") for key in payload):
        payload = {key[len("module."):]: value for key, value in payload.items()}
    return payload


def _describe(payload) -> str:
    if isinstance(payload, dict):
        return f"a dict with keys {name_list(sorted(map(str, payload)))}"
    return f"a {type(payload).__name__}"


def infer_config(path: Path, state_dict: dict) -> ModelConfig:
    """Widths, input and output channels of a reference-layout state_dict, from its shapes."""
    stem_keys = [f"encoder_stages.{i}.patch.patch_cnn.0.conv.weight" for i in range(4)]
    head_key = "head1.0.weight"
    absent = [key for key in stem_keys + [head_key] if key not in state_dict]
    if absent:
        raise CheckpointError(
            f"{path}: not a MedQKFormer state_dict: missing {name_list(absent)} (needed to read the "
            f"configuration); it has {len(state_dict)} entries such as {name_list(sorted(state_dict))}"
        )
    widths = tuple(state_dict[key].shape[0] for key in stem_keys)
    try:
        return ModelConfig(
            widths=widths,
            in_channels=state_dict[stem_keys[0]].shape[1],
            out_channels=state_dict[head_key].shape[0],
        )
    except ValueError as error:
        raise CheckpointError(f"{path}: the tensor shapes give an impossible configuration: {error}") from None


def _build_model(path: Path, network: str, config: dict, state_dict: dict) -> torch.nn.Module:
    try:
        model = build_network(network, config)
    except (TypeError, ValueError, AttributeError) as error:
        raise CheckpointError(f"{path}: the recorded model configuration {config!r} is invalid: {error}") from None
    _check_keys(path, display_name(network), model.state_dict(), state_dict)
    _check_finite(path, state_dict)
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def _check_keys(path: Path, network: str, expected: dict, found: dict) -> None:
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    if missing or unexpected:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing key(s): {name_list(missing)}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected key(s): {name_list(unexpected)}")
        raise CheckpointError(f"{path}: does not fit {network}: {'; '.join(problems)}")
    wrong = [(key, tuple(expected[key].shape), tuple(found[key].shape))
             for key in expected if expected[key].shape != found[key].shape]
    if wrong:
        key, want, have = wrong[0]
        raise CheckpointError(
            f"{path}: {len(wrong)} tensor(s) with the wrong shape for the configuration; first: {key} "
            f"expected {list(want)}, found {list(have)}"
        )


def _check_finite(path: Path, state_dict: dict) -> None:
    bad = [key for key, tensor in state_dict.items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if bad:
        count = int((~torch.isfinite(state_dict[bad[0]])).sum())
        raise CheckpointError(
            f"{path}: non-finite weights (NaN or inf) in {len(bad)} tensor(s): {name_list(bad)} "
            f"({count} values in the first); the training that wrote it diverged"
        )
