"""A converted model on disk: a directory with readable, versioned JSON and numpy tensors.

    model.json           format version, medqk version, source checkpoint (path, sha256),
                         model configuration, preprocessing, image size, calibration summary
    graph-float.json     the prepared float graph (nodes, ops, attributes, tensor infos)
    graph-int.json       its quantized integer twin
    tensors.npz          every op array, keyed "float/<node>/<field>" and "int/<node>/<field>"

Loading needs numpy and networkx only (no torch). Writing goes to a temporary sibling directory
that is renamed into place when complete, so a failure never leaves a half-written model and never
touches the directory it would replace. Only a directory holding medqk's model.json is ever
replaced (with force), never the current folder or one above it, nor one holding an input; a lock
file beside it serialises medqk processes writing the same directory, and a rename that fails if a
directory was filled meanwhile guards against everyone else.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from medqk.convert import elementwise, io, neurons, synapses  # noqa: F401  (each registers its op types)
from medqk.convert.graph import Graph, Node, TensorInfo
from medqk.convert.op import OP_TYPES
from medqk.errors import InputError
from medqk.outputs import check_writable_folder, umask

FORMAT = "medqk-converted-model"
FORMAT_VERSION = 1
GRAPH_FILES = {"float": "graph-float.json", "int": "graph-int.json"}


@dataclasses.dataclass
class ConvertedModel:
    float_graph: Graph
    int_graph: Graph
    #: the contents of model.json (see module docstring)
    meta: dict

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.float_graph.input.op.shape[1:])

    @property
    def levels(self) -> int:
        return int(self.meta.get("model_config", {}).get("levels", 4))


def graph_to_json(graph: Graph, prefix: str, arrays: dict[str, np.ndarray]) -> dict:
    nodes = []
    for node in graph.nodes():
        op_arrays = node.op.arrays()
        for field, value in op_arrays.items():
            arrays[f"{prefix}/{node.name}/{field}"] = value
        nodes.append({
            "name": node.name, "op": node.op.type, "inputs": node.inputs, "source": node.source,
            "depth": node.depth, "tensor": node.tensor.to_dict() if node.tensor else None,
            "attrs": node.op.attrs(), "arrays": sorted(op_arrays),
        })
    return {"format": "medqk-spike-graph", "version": FORMAT_VERSION, "nodes": nodes}


def graph_from_json(doc: dict, prefix: str, arrays) -> Graph:
    if doc.get("format") != "medqk-spike-graph" or doc.get("version") != FORMAT_VERSION:
        raise InputError(f"unsupported graph format {doc.get('format')!r} version {doc.get('version')!r} "
                         f"(this medqk reads version {FORMAT_VERSION}); convert the checkpoint again")
    graph = Graph()
    for entry in doc["nodes"]:
        cls = OP_TYPES.get(entry["op"])
        if cls is None:
            raise InputError(f"node {entry['name']}: unknown op {entry['op']!r}")
        op_arrays = {f: arrays[f"{prefix}/{entry['name']}/{f}"] for f in entry["arrays"]}
        node = Node(entry["name"], cls.from_parts(entry["attrs"], op_arrays), entry["inputs"],
                    TensorInfo.from_dict(entry["tensor"]) if entry["tensor"] else None,
                    entry.get("source", ""), entry.get("depth"))
        graph.add(node)
    return graph


def save_model(model: ConvertedModel, directory: Path, force: bool = False,
               extra_writers: list[Callable[[Path, ConvertedModel], object]] = ()) -> Path:
    """Write ``model`` (and whatever ``extra_writers`` add) to ``directory`` atomically."""
    with writing_model(model, directory, force, extra_writers):
        pass
    return Path(directory)


@contextlib.contextmanager
def writing_model(model: ConvertedModel, directory: Path, force: bool = False,
                  extra_writers: list[Callable[[Path, ConvertedModel], object]] = (),
                  inputs: Iterable[Path] = ()) -> Iterator[Path]:
    """Write ``model`` into a temporary sibling of ``directory`` and yield that folder; when the
    block ends without an error, move it into place (``install_model``), otherwise remove it."""
    directory = Path(directory)
    check_model_destination(directory, force, inputs)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        os.chmod(staged, 0o777 & ~umask())  # mkdtemp's 0700 would ignore the user's umask
        arrays: dict[str, np.ndarray] = {}
        for key, graph in (("float", model.float_graph), ("int", model.int_graph)):
            (staged / GRAPH_FILES[key]).write_text(json.dumps(graph_to_json(graph, key, arrays), indent=1))
        np.savez(staged / "tensors.npz", **arrays)
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **model.meta}
        (staged / "model.json").write_text(json.dumps(meta, indent=2))
        for writer in extra_writers:
            writer(staged, model)
        yield staged
        install_model(staged, directory, force, inputs)
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def check_model_destination(directory: Path, force: bool, inputs: Iterable[Path] = ()) -> None:
    """Refuse a model directory that ``save_model`` must not write: the current folder or one above
    it, a symbolic link, a file, a non-empty folder (with ``force``: one that is not a medqk model
    directory, or holds one of ``inputs``), or a place medqk cannot write."""
    directory = Path(directory)
    resolved, cwd = directory.resolve(), Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents or directory.name in ("", ".."):
        raise InputError(f"{directory} is the current folder or one above it, which medqk never replaces; "
                         "write the model to a new folder (for example -o my-model)")
    if directory.is_symlink():
        raise InputError(f"{directory} is a symbolic link; give the folder itself or a new one")
    if directory.exists() and not directory.is_dir():
        raise InputError(f"{directory} is a file, not a model directory; choose another path "
                         "(--force replaces only a medqk model directory)")
    if directory.is_dir() and any(directory.iterdir()):
        if not force:
            raise InputError(f"{directory} exists and is not empty; choose another folder, or pass --force "
                             "to replace it if it is a medqk model directory")
        if not holds_medqk_model_json(directory):
            raise InputError(f"{directory} is not a medqk model directory (it has no medqk model.json), so --force "
                             "does not replace it; choose another folder, or empty it yourself")
        held = [p for p in inputs if p is not None and resolved in Path(p).resolve().parents]
        if held:
            raise InputError(f"{directory} holds the input {held[0]}, which replacing it would delete; "
                             "move the input out or choose another folder")
    check_writable_folder(str(directory), directory.parent)


def install_model(staged: Path, directory: Path, force: bool, inputs: Iterable[Path] = ()) -> None:
    """Move the complete model folder ``staged`` to ``directory``, checking the destination again
    under the lock (another medqk may have written it meanwhile). The final rename fails if anyone
    filled ``directory`` meanwhile, so nothing that appeared there is deleted without ``force``."""
    with lock_beside(directory):
        check_model_destination(directory, force, inputs)
        try:
            if force and directory.is_dir() and any(directory.iterdir()):  # a model directory, as checked
                old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old.", dir=directory.parent))
                os.rename(directory, old)  # onto the empty folder mkdtemp made
                try:
                    os.rename(staged, directory)
                except OSError:
                    os.rename(old, directory)
                    raise
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(staged, directory)  # replaces an empty folder, fails on anything else
        except OSError as error:
            meanwhile = " (something was written there meanwhile)" if error.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR) else ""
            raise InputError(f"{directory}: could not move the new model into place: {error.strerror}{meanwhile}; "
                             "nothing was replaced; choose another folder") from error


@contextlib.contextmanager
def lock_beside(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file ``.NAME.lock`` beside ``directory``, removed afterwards."""
    lock = directory.parent / f".{directory.name}.lock"
    while True:
        handle = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:  # a previous holder removes the file; a lock on a removed file locks nothing
            if os.path.samestat(os.fstat(handle), os.stat(lock)):
                break
        except FileNotFoundError:
            pass
        os.close(handle)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        os.close(handle)


def holds_medqk_model_json(directory: Path) -> bool:
    """Whether ``directory`` has a model.json written by medqk (not just any file of that name)."""
    try:
        meta = json.loads((Path(directory) / "model.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT


def is_model_dir(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / "model.json").is_file()


def load_model(directory: Path) -> ConvertedModel:
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"{directory} is not a directory")
    missing = [f for f in ("model.json", *GRAPH_FILES.values(), "tensors.npz") if not (directory / f).is_file()]
    if missing:
        raise InputError(f"{directory} is not a converted medqk model: missing {', '.join(missing)} "
                         f"(create one with `medqk convert CHECKPOINT -o {directory}`)")
    meta = _read_json(directory / "model.json")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        found = (meta.get("format"), meta.get("format_version")) if isinstance(meta, dict) else (None, None)
        raise InputError(f"{directory / 'model.json'}: format {found[0]!r} version {found[1]!r} is not one this "
                         f"medqk reads ({FORMAT} {FORMAT_VERSION}); convert the checkpoint again")
    wrong = [key for key in ("model_config", "preprocessing", "source_checkpoint", "calibration")
             if key in meta and not isinstance(meta[key], dict)]
    if wrong:
        raise InputError(f"{directory / 'model.json'}: {wrong[0]!r} is not a JSON object; the file is damaged, "
                         "convert the checkpoint again")
    tensors = directory / "tensors.npz"
    try:
        with np.load(tensors, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise InputError(f"{tensors}: damaged or truncated ({error}); convert the checkpoint again") from error
    graphs = {}
    for key, name in GRAPH_FILES.items():
        doc = _read_json(directory / name)
        try:
            graphs[key] = graph_from_json(doc, key, arrays)
            _ = graphs[key].input, graphs[key].output  # each raises ValueError unless there is exactly one
        except InputError as error:
            raise InputError(f"{directory / name}: {error}") from error
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as error:
            raise InputError(f"{directory / name}: not a graph this medqk can read, or it does not match "
                             f"tensors.npz ({type(error).__name__}: {error}); convert the checkpoint again") from error
    meta = {k: v for k, v in meta.items() if k not in ("format", "format_version")}
    return ConvertedModel(graphs["float"], graphs["int"], meta)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: damaged JSON ({error}); convert the checkpoint again") from error
