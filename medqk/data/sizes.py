"""Input sizes a network can take: positive multiples of 16 whose work fits in memory.

The memory a run needs is estimated before it starts, from the model's widths and the image size:
the bytes of every tensor one image's float32 forward pass creates, counted by running the forward
on torch's "meta" device (shapes only, nothing allocated) at the smallest size, 16x16, and scaled
by the pixel count: every activation is a map at 1/2^k of the input's height and width, and the
few that are not make the scaled count 2% high at most. What a command keeps of those tensors was
measured on this project's machine (2 cores, no GPU):

- converting records every node of the float interpreter (float64) and of the integer interpreter
  (int32) for one image at once: about 3 times the forward's tensors (peak 1.23 GB at 256x256 for
  the default model, whose forward creates 0.28 GB);
- training keeps about three quarters of them per image of a batch for the backward pass (peak
  1.98 GB for batch 8 at 256x256, same model).

The estimate is refused only when it exceeds what the kernel reports as available (MemAvailable),
so normal sizes run on a machine with room for them.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from medqk.errors import InputError
from medqk.model import SIZE_MULTIPLE, MedQKFormer, check_input_shape

#: copies of the forward's tensors a conversion holds (see the module docstring)
CONVERSION_COPIES = 3.0
#: share of the forward's tensors per image that training keeps for the backward pass
TRAINING_SHARE = 0.75
MEMINFO = Path("/proc/meminfo")
GIB = 2 ** 30


def check_image_size(size: Sequence[int]) -> tuple[int, int]:
    """(H, W) if both are positive multiples of the network's 16; else an InputError naming sizes that work."""
    height, width = (int(n) for n in size)
    if height < 1 or width < 1:
        raise InputError(f"image size {height}x{width}: height and width must be positive multiples of 16 "
                         "(e.g. --image-size 256 256)")
    check_input_shape((1, 1, height, width), 1)
    return height, width


def forward_bytes(config, size: tuple[int, int]) -> int:
    """Bytes of all tensors one image's float32 forward pass creates at ``size`` (see the module docstring)."""
    return int(_forward_bytes_per_pixel(config) * size[0] * size[1])


class _CountOutputs(TorchDispatchMode):
    """Counts the elements of every tensor the ops run under it create."""

    elements = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.elements += sum(t.numel() for t in tree_leaves(out) if isinstance(t, torch.Tensor))
        return out


@functools.lru_cache(maxsize=None)
def _forward_bytes_per_pixel(config) -> float:
    counter = _CountOutputs()
    with torch.device("meta"):
        model = MedQKFormer(config).eval()
        image = torch.empty(1, config.in_channels, SIZE_MULTIPLE, SIZE_MULTIPLE)
        with torch.no_grad(), counter:
            model(image)
    return counter.elements * 4 / SIZE_MULTIPLE ** 2


def available_memory() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (None where the kernel does not report it)."""
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_fits(needed: int, what: str, advice: str) -> None:
    """Refuse a run whose estimated memory exceeds what is available."""
    available = available_memory()
    if available is not None and needed > available:
        raise InputError(f"{what} needs about {needed / GIB:.1f} GiB of memory (estimated from the model's widths and "
                         f"the image size) but {available / GIB:.1f} GiB is available; {advice}")


def check_conversion_size(config, size: Sequence[int]) -> tuple[int, int]:
    """(H, W) if the network takes that size and converting at it fits in memory."""
    height, width = check_image_size(size)
    needed = int(CONVERSION_COPIES * forward_bytes(config, (height, width)))
    check_fits(needed, f"converting at {height}x{width}", "choose a smaller --image-size")
    return height, width


def check_training_size(config, size: Sequence[int], images_at_once: int) -> tuple[int, int]:
    """(H, W) if the network takes that size and training ``images_at_once`` images (batch size x
    processes on this machine) fits in memory."""
    height, width = check_image_size(size)
    needed = int(TRAINING_SHARE * images_at_once * forward_bytes(config, (height, width)))
    check_fits(needed, f"training at {height}x{width} with {images_at_once} image(s) at once",
               "choose a smaller --image-size or --batch-size")
    return height, width
