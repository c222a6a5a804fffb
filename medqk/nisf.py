"""NISF: the Normalized Integer Spike-Fire neuron of MedQKFormer.

Forward: ``s = round(clamp(x, 0, D))`` is the integer spike (0..D) a chip sends; the network sees
``s / D``. Backward: straight-through inside [0, D], zero outside. ``torch.round`` rounds half to
even; every backend of medqk reproduces exactly that tie rule.
"""
from __future__ import annotations

import torch
from torch import nn


class _NISFFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, levels: int) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.levels = levels
        return torch.round(torch.clamp(x, 0, levels)) / levels

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (x,) = ctx.saved_tensors
        inside = (x >= 0) & (x <= ctx.levels)
        return grad_output * inside.to(grad_output.dtype), None


class NISF(nn.Module):
    """Normalized Integer Spike-Fire neuron with ``levels`` = D (4 in the paper).

    No parameters and no state across images (one time step per image).
    """

    def __init__(self, levels: int = 4):
        super().__init__()
        if int(levels) != levels or levels < 1:
            raise ValueError(f"NISF levels must be a positive integer, got {levels!r}")
        self.levels = int(levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _NISFFunction.apply(x, self.levels)

    def spikes(self, x: torch.Tensor) -> torch.Tensor:
        """The integer spike counts 0..D (what a neuromorphic chip sends)."""
        return torch.round(torch.clamp(x, 0, self.levels))

    def extra_repr(self) -> str:
        return f"levels={self.levels}"
