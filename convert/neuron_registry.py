"""Neuron classes the tracer maps to the IR's integer spike-fire op, declared and checked.

``register_neuron(cls, *, output, levels=None, threshold=None)`` declares what a neuron module
computes from its input x at one time step:

- ``output="integer"``: s = round_half_even(clamp(x, 0, D)), the integer spike 0..D (MultiSpike);
- ``output="normalized"``: s / D (medqk's NISF is declared so);
- ``output="binary"``: 1 where x >= threshold, else 0 (Heaviside / IF neurons).

``levels`` (D) and ``threshold`` are numbers or functions of the module instance (``lambda m: m.D``).

A declaration is never trusted: before tracing, every module whose class (or nearest registered
base class) is declared runs its own ``forward`` on a probe that covers each rounding boundary
(both sides of every k + 0.5 and the exact halves) or the threshold (both sides and on it), and
both saturation ends; the first value that differs from the declaration refuses the module. A
subclass of a declared class that changes ``forward`` (including medqk's own NISF) is checked the
same way: it is not assumed to compute what its base class does.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Callable

import torch
from torch import nn

from medqk.convert import neurons
from medqk.errors import InputError, MedqkError
from medqk.nisf import NISF

OUTPUTS = ("integer", "normalized", "binary")


class TraceError(MedqkError):
    """A module or function the IR cannot represent, or a neuron that does not compute what it declares."""


@dataclasses.dataclass(frozen=True)
class NeuronDeclaration:
    cls: type
    output: str
    levels: int | Callable[[nn.Module], int] | None
    threshold: float | Callable[[nn.Module], float] | None

    def levels_of(self, m: nn.Module) -> int:
        if self.output == "binary":
            return 1
        value = self.levels(m) if callable(self.levels) else self.levels
        if int(value) != value or value < 1:
            raise TraceError(f"{type(m).__name__}: levels must be a positive integer, the declaration gives {value!r}")
        return int(value)

    def threshold_of(self, m: nn.Module) -> float | None:
        if self.output != "binary":
            return None
        return float(self.threshold(m) if callable(self.threshold) else self.threshold)

    def expected(self, m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """What the declaration says the module outputs for ``x`` (float64)."""
        if self.output == "binary":
            return (x >= self.threshold_of(m)).double()
        levels = self.levels_of(m)
        s = torch.round(torch.clamp(x.double(), 0, levels))
        return s / levels if self.output == "normalized" else s

    def op(self, m: nn.Module) -> neurons.NISF:
        """The module's IR op."""
        return neurons.NISF(levels=self.levels_of(m), normalized=self.output == "normalized",
                            threshold=self.threshold_of(m))

    def describe(self, m: nn.Module) -> str:
        if self.output == "binary":
            return f"output='binary', threshold {self.threshold_of(m):g}"
        return f"output='{self.output}', levels {self.levels_of(m)}"


_DECLARATIONS: dict[type, NeuronDeclaration] = {}


def register_neuron(cls: type, *, output: str, levels=None, threshold=None) -> None:
    """Declare how the neuron class ``cls`` maps to the IR (see the module docstring); a later
    declaration of the same class replaces the earlier one."""
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise InputError(f"register_neuron: {cls!r} is not a torch nn.Module class")
    if output not in OUTPUTS:
        raise InputError(f"register_neuron({cls.__name__}): output must be one of {', '.join(OUTPUTS)}, got {output!r}")
    if output == "binary":
        if threshold is None or levels not in (None, 1):
            raise InputError(f"register_neuron({cls.__name__}, output='binary'): give threshold= (spikes are 0/1; "
                             "levels is 1)")
    elif levels is None or threshold is not None:
        raise InputError(f"register_neuron({cls.__name__}, output='{output}'): give levels= (D: an int or a "
                         "function of the module, e.g. lambda m: m.D), and no threshold")
    for name, value in (("levels", levels), ("threshold", threshold)):
        if value is not None and not callable(value) and not isinstance(value, (int, float)):
            raise InputError(f"register_neuron({cls.__name__}): {name} must be a number or a function of the module, "
                             f"got {value!r}")
    _DECLARATIONS[cls] = NeuronDeclaration(cls, output, levels, threshold)


def declaration_of(m: nn.Module) -> NeuronDeclaration | None:
    """The declaration of ``m``'s class or of its nearest declared base class."""
    for cls in type(m).__mro__:
        if cls in _DECLARATIONS:
            return _DECLARATIONS[cls]
    return None


def probe(declaration: NeuronDeclaration, m: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """Inputs that decide whether ``m`` computes the declaration: the exact boundaries (every k + 0.5,
    or the threshold), the neighbouring representable values on both sides, integers, a fine grid
    and both saturation ends."""
    if declaration.output == "binary":
        theta = declaration.threshold_of(m)
        boundaries = torch.tensor([theta], dtype=torch.float64)
        low, high = theta - 3.0, theta + 3.0
    else:
        levels = declaration.levels_of(m)
        boundaries = torch.arange(-1, levels + 1, dtype=torch.float64) + 0.5
        low, high = -2.0, levels + 2.0
    grid = torch.arange(low, high + 0.125, 0.125, dtype=torch.float64)
    ends = torch.tensor([-1e6, -1e3, low - 1, high + 1, 1e3, 1e6], dtype=torch.float64)
    exact = torch.cat([boundaries, grid, ends]).to(dtype)
    edges = torch.cat([torch.nextafter(exact, torch.tensor(float("inf"), dtype=dtype)),
                       torch.nextafter(exact, torch.tensor(float("-inf"), dtype=dtype))])
    return torch.unique(torch.cat([exact, edges]))


def check_neuron(m: nn.Module, path: str, declaration: NeuronDeclaration) -> None:
    """Run ``m``'s own forward on the probe; TraceError with the first value that differs."""
    dtype = next((p.dtype for p in m.parameters()), torch.float32)
    x = probe(declaration, m, dtype)
    where = f"{path} ({type(m).__name__})" if path else type(m).__name__
    state = copy.deepcopy(m.state_dict())  # a stateful neuron must not keep what the probe left
    try:
        with torch.no_grad():
            got = m(x.reshape(1, 1, 1, -1))
    except Exception as error:
        raise TraceError(f"{where}: its forward fails on a probe input of shape [1, 1, 1, {x.numel()}] "
                         f"({type(error).__name__}: {error})") from None
    finally:
        m.load_state_dict(state)
    want = declaration.expected(m, x)
    if not isinstance(got, torch.Tensor) or got.numel() != want.numel():
        raise TraceError(f"{where}: its forward does not return one value per input (declared {declaration.describe(m)})")
    got = got.reshape(-1).double()
    differs = ~torch.isclose(got, want, rtol=1e-6, atol=1e-9)
    if differs.any():
        i = int(torch.nonzero(differs)[0])
        inherited = declaration.cls is not type(m) and type(m).forward is not declaration.cls.forward
        why = (f"it is a subclass of {declaration.cls.__name__} whose forward differs; declare what it computes with "
               f"medqk.convert.register_neuron({type(m).__name__}, output=..., levels=... or threshold=...)"
               if inherited else "fix the declaration (medqk.convert.register_neuron) or the module")
        raise TraceError(f"{where} does not compute what it is declared to ({declaration.describe(m)}): at x = "
                         f"{float(x[i])!r} its forward gives {float(got[i])!r}, the declaration {float(want[i])!r}; {why}")


def check_neurons(module: nn.Module) -> None:
    """Check every declared neuron module inside ``module`` (one probe per module instance)."""
    for path, m in module.named_modules():
        declaration = declaration_of(m)
        if declaration is not None:
            check_neuron(m, path, declaration)


register_neuron(NISF, output="normalized", levels=lambda m: m.levels)
