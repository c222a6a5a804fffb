"""The base of every spike-graph IR op: a small dataclass, its arrays and its JSON attributes.

An op is what a node computes; the node (``convert.graph.Node``) says where its inputs come from.
Each op family has its own file (``synapses``, ``neurons``, ``elementwise``, ``io``); its
semantics are written once there (docstrings and ``out_shape``) and computed by one small
function per op in each interpreter (``interpret_float``, ``interpret_int``).

Fields holding numpy arrays are the op's tensors (saved in ``tensors.npz``); all other fields are
JSON attributes. Fields named in ``QUANTIZED`` are set by ``convert.quantize`` and are ``None``
in a float graph.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

#: op type name -> class, filled by subclassing Op.
OP_TYPES: dict[str, type["Op"]] = {}


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
