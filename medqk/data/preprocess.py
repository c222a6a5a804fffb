"""The paper's preprocessing, recorded in every medqk checkpoint so that convert, deploy and
energy feed the network exactly what it was trained on.

The release reads images with OpenCV, so RGB files reach the network in BGR order; pixels scale
by 1/255 to [0, 1]; images and masks resize with (bi)linear interpolation; masks scale by 1/255
too (soft labels at resized edges) and metrics binarise at 0.5. medqk reads files with Pillow
and reorders the channels to match.

Files deeper than 8 bits are brought to the 8-bit range first (``PIXEL_DEPTH_RULE``), never
clipped: Pillow's own conversion of a 16-bit image to 8 bits saturates at 255, which turns most of
a 16-bit picture white.

Stable API for other packages: ``Preprocessing``, ``load_image``, ``load_mask`` and
``load_network_input(path, prep, in_channels) -> float32 [C, H, W]``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medqk.errors import DataError, InputError
from medqk.model import SIZE_MULTIPLE, check_input_shape

CHANNEL_ORDERS = ("BGR", "RGB", "GRAY")

#: How pixel values of every bit depth become the 0..255 range the recorded scale applies to
#: (quoted in the --help of every command that reads images).
PIXEL_DEPTH_RULE = ("16-bit images are scaled by 255/65535 to the 8-bit range (16-bit colour is read at 8 bits), "
                    "floating-point images must hold values in [0, 1]")
EIGHT_BIT_FULL_SCALE = 255.0
#: Pillow modes of single-channel images deeper than 8 bits, and the value of full scale in each.
#: Pillow opens some 16-bit files as 32-bit integers ("I"), so those are taken as 16-bit data.
DEEP_FULL_SCALE = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0, "I": 65535.0, "F": 1.0}


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


@dataclass(frozen=True)
class Pixels:
    """An image file's pixels resized to the size asked for, in the file's own units."""

    values: np.ndarray          #: float32 [H, W] (mode "L") or [H, W, 3] (mode "RGB")
    full_scale: float           #: the value of full scale in those units (255 for an 8-bit file)
    file_size: tuple[int, int]  #: (H, W) as stored in the file


def read_pixels(path: str | Path, mode: str, size: tuple[int, int]) -> Pixels:
    """The pixels of an image file as ``mode`` ("L" or "RGB") at ``size``; the one place image
    files are decoded. 8-bit files go through Pillow's own conversion and resize; deeper
    single-channel files are resized as floats and keep their values (see ``PIXEL_DEPTH_RULE``)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as image:
            file_size = (image.height, image.width)
            if image.mode not in DEEP_FULL_SCALE:
                values = np.asarray(_resized(image.convert(mode), size), dtype=np.float32)
                return Pixels(values, EIGHT_BIT_FULL_SCALE, file_size)
            full_scale = DEEP_FULL_SCALE[image.mode]
            plane = _deep_plane(path, image, full_scale)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise InputError(f"{path}: not a readable image ({error}); give a PNG, JPEG, TIFF or BMP file") from None
    values = np.asarray(_resized(Image.fromarray(plane), size), dtype=np.float32)
    if mode == "RGB":  # a grey picture in three channels, as Pillow converts an 8-bit one
        values = np.repeat(values[:, :, None], 3, axis=2)
    return Pixels(values, full_scale, file_size)


def _deep_plane(path: Path, image, full_scale: float) -> np.ndarray:
    """float32 [H, W] of a 16-bit, 32-bit integer or floating-point image; values outside 0..full
    scale are refused rather than clipped (their meaning is unknown)."""
    values = np.asarray(image).astype(np.float64)
    if image.mode == "F" and not np.isfinite(values).all():
        raise InputError(f"{path}: the floating-point image holds {int((~np.isfinite(values)).sum())} NaN or infinite values")
    low, high = float(values.min()), float(values.max())
    if low < 0 or high > full_scale:
        if image.mode == "F":
            raise InputError(f"{path}: a floating-point image with values {low:g}..{high:g}; medqk takes floating-point "
                             "pixels as fractions of full scale in [0, 1]: rescale it to [0, 1] or save it as an 8- or 16-bit image")
        raise InputError(f"{path}: a 32-bit integer image with values {low:g}..{high:g}; medqk reads integer images as "
                         "16-bit data (0..65535): save it as an 8- or 16-bit image")
    return values.astype(np.float32)


def _resized(image, size: tuple[int, int]):
    from PIL import Image

    height, width = size
    return image if image.size == (width, height) else image.resize((width, height), Image.BILINEAR)


def image_array(pixels: Pixels, prep: Preprocessing) -> np.ndarray:
    """Decoded pixels as the network sees them: float32 [C, H, W] in the recorded channel order."""
    values = pixels.values
    if pixels.full_scale != EIGHT_BIT_FULL_SCALE:
        # in float64, so that a 16-bit value v * 257 comes out as exactly the 8-bit value v
        values = (values.astype(np.float64) * (EIGHT_BIT_FULL_SCALE / pixels.full_scale)).astype(np.float32)
    if prep.channel_order == "GRAY":
        values = values[:, :, None]
    elif prep.channel_order == "BGR":
        values = values[:, :, ::-1]
    return np.ascontiguousarray(values.transpose(2, 0, 1) * np.float32(prep.scale))


def mask_array(pixels: Pixels) -> np.ndarray:
    """Decoded mask pixels as float32 [1, H, W] in [0, 1]: masks scale from their file's full scale
    after a linear resize (soft labels, as the release); masks stored as 0/1 are taken as they are,
    whatever the bit depth."""
    values = pixels.values
    return (values / (pixels.full_scale if values.max() > 1 else 1.0))[None]


def image_mode(prep: Preprocessing) -> str:
    return "L" if prep.channel_order == "GRAY" else "RGB"


def load_image(path: str | Path, prep: Preprocessing) -> np.ndarray:
    """An image file as the network sees it: float32 [C, H, W] in the recorded channel order."""
    return image_array(read_pixels(path, image_mode(prep), prep.size), prep)


def load_mask(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """A mask file as float32 [1, H, W] in [0, 1] (see ``mask_array``)."""
    return mask_array(read_pixels(path, "L", size))


def load_pair(image_path: Path, mask_paths: tuple[Path, ...], prep: Preprocessing) -> tuple[np.ndarray, np.ndarray]:
    """An image and its mask as the network and the metrics see them: [C, H, W] and [1, H, W].

    Several masks of one image (BUSI) are merged: a pixel is target if any mask says so. A mask
    whose size differs from its image's is refused: resizing it would silently shift its outline."""
    pixels = read_pixels(image_path, image_mode(prep), prep.size)
    masks = []
    for path in mask_paths:
        mask = read_pixels(path, "L", prep.size)
        if mask.file_size != pixels.file_size:
            raise DataError(f"{path}: the mask is {mask.file_size[0]}x{mask.file_size[1]} but its image {image_path} is "
                            f"{pixels.file_size[0]}x{pixels.file_size[1]}; give each image a mask of its own size")
        masks.append(mask_array(mask))
    return image_array(pixels, prep), np.maximum.reduce(masks)


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
