"""Dataset folder layouts: the five of the paper's table and the common ``{img,labelcol}`` one.

A layout lists parts: (role, image folder, mask folder) relative to the dataset's root, where the
role is ``train``, ``val`` or ``all`` (to be split). The root may be given as the release's
``data/`` folder (the dataset folder, e.g. ``ISIC2018/``, is looked for inside) or as the dataset
folder itself. Images and masks pair by file name (the mask's name reduced to the image's), and
the pairing is verified: every image needs a mask and every mask an image.
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medqk.errors import DataError

#: How many unmatched file names an error message lists.
NAMES_SHOWN = 5


@dataclass(frozen=True)
class Pair:
    """One image and its mask file(s); several masks of one image are merged (BUSI's ``_mask_1``)."""

    name: str
    image: Path
    masks: tuple[Path, ...]


@dataclass(frozen=True)
class Split:
    train: list[Pair]
    val: list[Pair]
    layout: str
    root: Path


@dataclass(frozen=True)
class Layout:
    name: str
    dataset_folder: str                       #: the folder under the release's data/ ("" if none)
    parts: tuple[tuple[str, str, str], ...]   #: (role, image folder, mask folder)
    image_suffixes: tuple[str, ...]
    mask_suffixes: tuple[str, ...]
    mask_name: str = r"(?P<image>.+)"         #: a mask's stem; group "image" is its image's stem

    def root_in(self, root: Path) -> Path | None:
        """Where this layout's parts live under ``root``, or None if none of them is there."""
        for candidate in (root / self.dataset_folder, root) if self.dataset_folder else (root,):
            if any((candidate / images).is_dir() for _, images, _ in self.parts):
                return candidate
        return None

    def expected(self) -> str:
        _, images, masks = self.parts[0]
        prefix = f"[{self.dataset_folder}/]" if self.dataset_folder else ""
        return f"{prefix}{images}/ with {prefix}{masks}/"


def _busi_part(kind: str) -> tuple[str, str, str]:
    folder = f"Dataset_BUSI/Dataset_BUSI_with_GT/{kind}"
    return ("all", folder, folder)


def _kaggle_part(role: str, split: str) -> tuple[str, str, str]:
    folder = f"archive/kmms_{split}/kmms_{split}"
    return (role, f"{folder}/images", f"{folder}/masks")


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

LAYOUTS = {
    layout.name: layout
    for layout in (
        Layout(
            "imglabel", "",
            (("train", "train/img", "train/labelcol"), ("val", "val/img", "val/labelcol"), ("all", "img", "labelcol")),
            IMAGE_SUFFIXES, IMAGE_SUFFIXES,
        ),
        Layout(
            "isic2018", "ISIC2018",
            (("all", "ISIC2018_Task1-2_Training_Input/ISIC2018_Task1-2_Training_Input",
              "ISIC2018_Task1_Training_GroundTruth/ISIC2018_Task1_Training_GroundTruth"),),
            (".jpg",), (".png",), r"(?P<image>.+)_segmentation",
        ),
        Layout(
            "kvasir", "Kvasir",
            (("all", "kvasir-seg/Kvasir-SEG/images", "kvasir-seg/Kvasir-SEG/masks"),),
            (".jpg",), (".jpg",),
        ),
        Layout(
            "busi", "BUSI",
            (_busi_part("benign"), _busi_part("malignant"), _busi_part("normal")),
            (".png",), (".png",), r"(?P<image>.+)_mask(_\d+)?",
        ),
        Layout(
            "covid19", "COVID_19",
            (("all", "COVID-19_Lung_Infection_train/COVID-19_Lung_Infection_train/images",
              "COVID-19_Lung_Infection_train/COVID-19_Lung_Infection_train/masks"),),
            (".jpg",), (".png",),
        ),
        Layout(
            "monuseg-kaggle", "Monu_Seg",
            (_kaggle_part("train", "training"), _kaggle_part("val", "test")),
            (".tif", ".tiff", ".png"), (".png",),
        ),
    )
}
LAYOUT_CHOICES = ("auto",) + tuple(LAYOUTS)


def find_layout(root: Path) -> Layout:
    """The first layout whose folders exist under ``root``."""
    for layout in LAYOUTS.values():
        if layout.root_in(root) is not None:
            return layout
    expected = "\n  ".join(f"{name}: {layout.expected()}" for name, layout in LAYOUTS.items())
    raise DataError(f"{root}: no known dataset layout found; expected one of:\n  {expected}")


def load_split(root: str | Path, layout: str = "auto", val_fraction: float = 0.2, seed: int = 41) -> Split:
    """Training and validation pairs of the dataset under ``root``.

    Parts marked train/val keep their split; ``all`` parts (and a train part without any val
    part) are shuffled with ``seed`` and split, ``val_fraction`` (rounded up) going to val.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder (give a dataset folder or 'synthetic')")
    chosen = find_layout(root) if layout == "auto" else _named_layout(layout)
    base = chosen.root_in(root)
    if base is None:
        raise DataError(f"{root}: not a '{chosen.name}' dataset; expected {chosen.expected()}")
    by_role = defaultdict(list)
    for role, images, masks in chosen.parts:
        if (base / images).is_dir():
            by_role[role] += pair_folder(base / images, base / masks, chosen)
    pool = by_role["all"] + (by_role["train"] if not by_role["val"] else [])
    train_part, val_part = split_pairs(pool, val_fraction, seed)
    train = (by_role["train"] if by_role["val"] else []) + train_part
    val = by_role["val"] + val_part
    if not train or not val:
        raise DataError(f"{root}: {len(train)} training and {len(val)} validation pairs; need at least one of each")
    return Split(train, val, chosen.name, base)


def _named_layout(name: str) -> Layout:
    if name not in LAYOUTS:
        raise DataError(f"unknown layout '{name}'; choose one of {', '.join(LAYOUT_CHOICES)}")
    return LAYOUTS[name]


def split_pairs(pairs: list[Pair], val_fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    if not pairs:
        return [], []
    if not 0 < val_fraction < 1:
        raise DataError(f"the validation fraction must lie between 0 and 1; got {val_fraction}")
    order = np.random.default_rng(seed).permutation(len(pairs))
    val_count = min(len(pairs) - 1, max(1, int(np.ceil(len(pairs) * val_fraction))))
    shuffled = [pairs[i] for i in order]
    return shuffled[val_count:], shuffled[:val_count]


def pair_folder(image_dir: Path, mask_dir: Path, layout: Layout) -> list[Pair]:
    """Pairs of one image folder and its mask folder, sorted by name; a mismatch is an error."""
    if not mask_dir.is_dir():
        raise DataError(f"{image_dir} has no mask folder beside it: expected {mask_dir}")
    mask_name = re.compile(layout.mask_name)
    masks_of = defaultdict(list)
    for path in _files(mask_dir, layout.mask_suffixes):
        match = mask_name.fullmatch(path.stem)
        if match:
            masks_of[match["image"]].append(path)
    mask_files = {path for paths in masks_of.values() for path in paths}
    # In a shared folder (BUSI) the masks sit beside the images: they are not images.
    images = {p.stem: p for p in _files(image_dir, layout.image_suffixes) if p not in mask_files}
    _check_pairing(image_dir, mask_dir, images, masks_of)
    return [Pair(stem, images[stem], tuple(masks_of[stem])) for stem in sorted(images)]


def _files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)


def _check_pairing(image_dir: Path, mask_dir: Path, images: dict, masks_of: dict) -> None:
    if not images:
        raise DataError(f"{image_dir}: no images found")
    lonely_images = sorted(images[stem].name for stem in images.keys() - masks_of.keys())
    lonely_masks = sorted(masks_of[stem][0].name for stem in masks_of.keys() - images.keys())
    if not lonely_images and not lonely_masks:
        return
    problems = []
    if lonely_images:
        problems.append(f"{len(lonely_images)} image(s) without a mask: {name_list(lonely_images)}")
    if lonely_masks:
        problems.append(f"{len(lonely_masks)} mask(s) without an image: {name_list(lonely_masks)}")
    raise DataError(
        f"images in {image_dir} ({len(images)}) and masks in {mask_dir} ({len(masks_of)}) do not pair by "
        f"name: {'; '.join(problems)}"
    )


def name_list(names: list[str]) -> str:
    """The first few names of a list for an error message, with how many more there are."""
    shown = ", ".join(names[:NAMES_SHOWN])
    return shown + (f" and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else "")
