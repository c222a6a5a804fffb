"""The base of every spike-graph IR op: a small dataclass, its arrays and its JSON attributes.

An op is what a node computes; the node (``convert.graph.Node``) says where its inputs come from.
Each op family has its own file (``synapses``, ``neurons``, ``elementwise``, ``io``); its
semantics are written once there (docstrings and ``out_shape``) and computed by one small
function per op in each interpreter (``interpret_float``, ``interpret_int``).

Fields holding numpy arrays are the op's tensors (saved in ``tensors.npz``); all other fields are
JSON attributes. Fields named in ``QUANTIZED`` are set by ``convert.quantize`` and are ``None``
in a float graph.

Every concern that depends on the op (each interpreter, the typing pass, quantization, each ONNX
model, the energy counter, the resource model) keeps one table keyed by the op's *class*, whose
value is the rule or a ``Refused`` saying why the op has no such form. ``rule`` looks an op up and
refuses by name; ``tests/test_op_registry.py`` checks that every table decides every op type.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

#: op type name -> class, filled by subclassing Op.
OP_TYPES: dict[str, type["Op"]] = {}


class OpRefused(ValueError):
    """An op that a backend or analysis has decided not to support (named, with the reason)."""


@dataclasses.dataclass(frozen=True)
class Refused:
    """A table entry: this concern has no form of the op, and why."""

    reason: str


#: the entry of every integer-side concern for ops that quantization removes or refuses (BatchNorm is
#: folded, ReLU and transposed convolutions belong to ANN baselines): one reason, said once
FLOAT_ONLY = Refused("float graphs only (ANN baselines, or before BatchNorm folding): it has no integer form")


def rule(table: dict, op: "Op", concern: str):
    """The entry of ``table`` for ``op``'s class; ``OpRefused`` naming the op and the concern when the
    table refuses it or has not decided it."""
    entry = table.get(type(op))
    if isinstance(entry, Refused):
        raise OpRefused(f"{op.type} has no {concern}: {entry.reason}")
    if entry is None:
        raise OpRefused(f"{op.type} ({type(op).__name__}) is not known to the {concern}")
    return entry


@dataclasses.dataclass(eq=False)
class Op:
    type: ClassVar[str] = ""
    #: number of inputs (None: any number >= 1)
    arity: ClassVar[int | None] = 1
    #: a synapse: weighted connections whose cost is counted per connection
    synaptic: ClassVar[bool] = False
    #: fields that quantization fills in
    QUANTIZED: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.type:
            OP_TYPES[cls.type] = cls

    def out_shape(self, in_shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
        """Output shape (C, H, W) from the input shapes (batch excluded). Default: the first input's."""
        return tuple(in_shapes[0])

    # -- serialization helpers -------------------------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if isinstance(getattr(self, f.name), np.ndarray)}

    def attrs(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, np.ndarray) or value is None:
                continue
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @property
    def is_quantized(self) -> bool:
        return all(getattr(self, name) is not None for name in self.QUANTIZED)

    def describe(self) -> str:
        """Short human-readable parameters for tables."""
        parts = []
        for key, value in self.attrs().items():
            if isinstance(value, float):
                value = f"{value:.4g}"
            parts.append(f"{key}={value}")
        for key, value in self.arrays().items():
            parts.append(f"{key}{list(value.shape)}")
        return " ".join(parts)

    @classmethod
    def from_parts(cls, attrs: dict, arrays: dict[str, np.ndarray]) -> "Op":
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name in arrays:
                kwargs[f.name] = arrays[f.name]
            elif f.name in attrs:
                value = attrs[f.name]
                kwargs[f.name] = tuple(value) if isinstance(value, list) else value
        return cls(**kwargs)
