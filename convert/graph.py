"""The spike-graph IR: nodes (an op and its ordered inputs) on a networkx multigraph.

Every node produces one tensor, described by ``TensorInfo``: its shape (C, H, W; batch is free),
its kind (``spike``: an integer NISF spike map 0..D; ``real``: a real value, fixed-point once
quantized) and its scale (``real value = stored value * scale``). ``str(graph)`` prints a table
in the spirit of torch.fx.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator

import networkx as nx

from medqk.convert.op import Op

SPIKE = "spike"
REAL = "real"


@dataclasses.dataclass
class TensorInfo:
    shape: tuple[int, ...]
    kind: str = REAL
    scale: float = 1.0
    #: D of the NISF population (spike maps only)
    levels: int | None = None
    #: fixed-point fractional bits (quantized real tensors: scale == 2**-frac_bits)
    frac_bits: int | None = None
    #: an exact integer combination of spikes (products, sums, complements): never rounded
    exact: bool = False

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["shape"] = list(self.shape)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TensorInfo":
        return cls(**{**d, "shape": tuple(d["shape"])})


@dataclasses.dataclass(eq=False)
class Node:
    name: str
    op: Op
    inputs: list[str]
    tensor: TensorInfo | None = None
    #: where the node came from (module path) -- for messages and reports
    source: str = ""
    #: longest path from the input (set by passes.schedule)
    depth: int | None = None


class Graph:
    """A DAG of ``Node``. Edge (u, v, key=i) means: u's tensor is v's i-th input."""

    def __init__(self):
        self._g = nx.MultiDiGraph()

    # -- building -------------------------------------------------------------------------
    def add(self, node: Node) -> Node:
        if node.name in self._g:
            raise ValueError(f"duplicate node name {node.name!r}")
        for src in node.inputs:
            if src not in self._g:
                raise ValueError(f"node {node.name!r}: input {src!r} is not in the graph")
        self._g.add_node(node.name, node=node)
        for slot, src in enumerate(node.inputs):
            self._g.add_edge(src, node.name, key=slot)
        return node

    def remove(self, name: str) -> None:
        if any(True for _ in self._g.successors(name)):
            raise ValueError(f"cannot remove {name!r}: it still has consumers {self.consumers(name)}")
        self._g.remove_node(name)

    def set_inputs(self, name: str, inputs: list[str]) -> None:
        node = self[name]
        for src in set(node.inputs):
            self._g.remove_edges_from([(src, name, k) for k in list(self._g[src][name])])
        node.inputs = list(inputs)
        for slot, src in enumerate(node.inputs):
            self._g.add_edge(src, name, key=slot)

    def replace_uses(self, old: str, new: str) -> None:
        """Make every consumer of ``old`` read ``new`` instead."""
        for consumer in self.consumers(old):
            self.set_inputs(consumer, [new if s == old else s for s in self[consumer].inputs])

    # -- queries --------------------------------------------------------------------------
    def __getitem__(self, name: str) -> Node:
        return self._g.nodes[name]["node"]

    def __contains__(self, name: str) -> bool:
        return name in self._g

    def __len__(self) -> int:
        return self._g.number_of_nodes()

    def consumers(self, name: str) -> list[str]:
        return sorted(set(self._g.successors(name)))

    def nodes(self) -> list[Node]:
        """All nodes in a deterministic topological order."""
        return [self[n] for n in nx.lexicographical_topological_sort(self._g, key=self._order_key)]

    def _order_key(self, name: str):
        depth = self[name].depth
        return (depth if depth is not None else 0, name)

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes())

    @property
    def input(self) -> Node:
        inputs = [n for n in self.nodes() if n.op.type == "input"]
        if len(inputs) != 1:
            raise ValueError(f"the graph has {len(inputs)} input nodes; expected 1")
        return inputs[0]

    @property
    def output(self) -> Node:
        sinks = [self[n] for n in self._g if self._g.out_degree(n) == 0]
        if len(sinks) != 1:
            raise ValueError(f"the graph has {len(sinks)} output nodes ({[s.name for s in sinks]}); expected 1")
        return sinks[0]

    def nx_graph(self) -> nx.MultiDiGraph:
        """The underlying networkx graph (read only)."""
        return self._g

    def __str__(self) -> str:
        rows = [("name", "op", "inputs", "shape", "kind", "scale", "params")]
        for n in self.nodes():
            t = n.tensor
            rows.append((
                n.name, n.op.type, ", ".join(n.inputs),
                "x".join(map(str, t.shape)) if t else "?",
                t.kind if t else "?",
                (f"2^-{t.frac_bits}" if t.frac_bits is not None else f"{t.scale:.4g}") if t else "?",
                n.op.describe(),
            ))
        widths = [min(48, max(len(r[i]) for r in rows)) for i in range(len(rows[0]) - 1)]
        return "\n".join("  ".join(c[:48].ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows)
