"""A converted model on disk: a directory with readable, versioned JSON and numpy tensors.

    model.json           format version, medqk version, source checkpoint (path, sha256),
                         model configuration, preprocessing, image size, calibration summary
    graph-float.json     the prepared float graph (nodes, ops, attributes, tensor infos)
    graph-int.json       its quantized integer twin
    tensors.npz          every op array, keyed "float/<node>/<field>" and "int/<node>/<field>"

Loading needs numpy and networkx only (no torch). Writing goes to a temporary sibling directory
that is renamed into place when complete, so a failure never leaves a half-written model.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from medqk.convert import elementwise, io, neurons, synapses  # noqa: F401  (each registers its op types)
from medqk.convert.graph import Graph, Node, TensorInfo
from medqk.convert.op import OP_TYPES
from medqk.errors import InputError

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
    directory = Path(directory)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())) and not force:
        raise InputError(f"output directory {directory} exists and is not empty; choose another or pass --force")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        arrays: dict[str, np.ndarray] = {}
        for key, graph in (("float", model.float_graph), ("int", model.int_graph)):
            (tmp / GRAPH_FILES[key]).write_text(json.dumps(graph_to_json(graph, key, arrays), indent=1))
        np.savez(tmp / "tensors.npz", **arrays)
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **model.meta}
        (tmp / "model.json").write_text(json.dumps(meta, indent=2))
        for writer in extra_writers:
            writer(tmp, model)
        if directory.exists():
            shutil.rmtree(directory)
        tmp.rename(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


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
    try:
        meta = json.loads((directory / "model.json").read_text())
        docs = {k: json.loads((directory / f).read_text()) for k, f in GRAPH_FILES.items()}
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{directory}: a JSON file is damaged ({error}); convert the checkpoint again") from error
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{directory}/model.json: format {meta.get('format')!r} version "
                         f"{meta.get('format_version')!r} is not one this medqk reads ({FORMAT} {FORMAT_VERSION})")
    with np.load(directory / "tensors.npz", allow_pickle=False) as arrays:
        float_graph = graph_from_json(docs["float"], "float", arrays)
        int_graph = graph_from_json(docs["int"], "int", arrays)
    meta = {k: v for k, v in meta.items() if k not in ("format", "format_version")}
    return ConvertedModel(float_graph, int_graph, meta)
