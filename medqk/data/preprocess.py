"""The paper's preprocessing, recorded in every medqk checkpoint so that convert, deploy and
energy feed the network exactly what it was trained on.

The release reads images with OpenCV, so RGB files reach the network in BGR order; pixels scale
by 1/255 to [0, 1]; images and masks resize with (bi)linear interpolation; masks scale by 1/255
too (soft labels at resized edges) and metrics binarise at 0.5. medqk reads files with Pillow
and reorders the channels to match.

Stable API for other packages: ``Preprocessing``, ``load_image``, ``load_mask`` and
``load_network_input(path, prep, in_channels) -> float32 [C, H, W]``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medqk.errors import InputError
from medqk.model import SIZE_MULTIPLE, check_input_shape

CHANNEL_ORDERS = ("BGR", "RGB", "GRAY")


@dataclass(frozen=True)
class Preprocessing:
    """How a file becomes a network input: resize to ``size`` (H, W), reorder, multiply by ``scale``."""

    size: tuple[int, int] = (256, 256)
    channel_order: str = "BGR"
    scale: float = 1 / 255

    def __post_init__(self):
        object.__setattr__(self, "size", tuple(int(n) for n in self.size))
        if self.channel_order not in CHANNEL_ORDERS:
            raise ValueError(f"channel_order must be one of {CHANNEL_ORDERS}; got {self.channel_order!r}")

    @property
    def channels(self) -> int:
        return 1 if self.channel_order == "GRAY" else 3

    def to_dict(self) -> dict:
        return {"size": list(self.size), "channel_order": self.channel_order, "scale": self.scale}

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        return cls(size=tuple(d["size"]), channel_order=d["channel_order"], scale=float(d["scale"]))


def _open_image(path: Path, mode: str):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert(mode)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise InputError(f"{path}: not a readable image ({error}); give a PNG, JPEG, TIFF or BMP file") from None


def _resized(image, size: tuple[int, int]):
    from PIL import Image

    height, width = size
    return image if image.size == (width, height) else image.resize((width, height), Image.BILINEAR)


def load_image(path: str | Path, prep: Preprocessing) -> np.ndarray:
    """An image file as the network sees it: float32 [C, H, W] in the recorded channel order."""
    mode = "L" if prep.channel_order == "GRAY" else "RGB"
    pixels = np.asarray(_resized(_open_image(Path(path), mode), prep.size), dtype=np.float32)
    if prep.channel_order == "GRAY":
        pixels = pixels[:, :, None]
    elif prep.channel_order == "BGR":
        pixels = pixels[:, :, ::-1]
    return np.ascontiguousarray(pixels.transpose(2, 0, 1) * np.float32(prep.scale))


def load_mask(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """A mask file as float32 [1, H, W] in [0, 1]: 0/255 masks scale by 1/255 after a linear
    resize (soft labels, as the release); masks stored as 0/1 are taken as they are."""
    pixels = np.asarray(_resized(_open_image(Path(path), "L"), size), dtype=np.float32)
    peak = pixels.max()
    return (pixels / (255.0 if peak > 1 else 1.0))[None]


def load_network_input(path: str | Path, prep: Preprocessing, in_channels: int) -> np.ndarray:
    """One network input, float32 [C, H, W], from an image file (preprocessed with ``prep``) or a
    ``.npy`` array that already is the network input (used as it is, no preprocessing)."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        array = _load_npy(path)
    else:
        array = load_image(path, prep)
    _check_network_input(path, array, in_channels)
    return array


def _load_npy(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (ValueError, OSError) as error:
        raise InputError(f"{path}: not a readable .npy array ({error})") from None
    if array.ndim != 3:
        raise InputError(f"{path}: a .npy input must be one network input [C, H, W]; got shape {list(array.shape)}")
    if not np.issubdtype(array.dtype, np.floating):
        raise InputError(f"{path}: a .npy input must be float32 (already scaled to [0, 1]); got {array.dtype}")
    return np.ascontiguousarray(array, dtype=np.float32)


def _check_network_input(path: Path, array: np.ndarray, in_channels: int) -> None:
    if array.shape[0] != in_channels:
        raise InputError(
            f"{path}: the model takes {in_channels} input channel(s), this input has {array.shape[0]} "
            f"(shape {list(array.shape)})"
        )
    if not np.isfinite(array).all():
        raise InputError(f"{path}: the input holds {int((~np.isfinite(array)).sum())} NaN or infinite values")
    try:
        check_input_shape((1,) + array.shape, in_channels)
    except InputError as error:
        raise InputError(f"{path}: {error} (resize the image or choose a preprocessing size that is a multiple of {SIZE_MULTIPLE})") from None
