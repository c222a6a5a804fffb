"""Data: preprocessing, network inputs, every layout on a tree built here, pairing errors, the
synthetic generator and augmentation."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medqk.data import (
    Augmentation, PairDataset, Preprocessing, SyntheticDataset, load_image, load_mask, load_network_input,
    load_split, synthetic_sample,
)
from medqk.data.augment import rotate
from medqk.errors import DataError, InputError

# -- files -----------------------------------------------------------------------------------


def write_image(path: Path, size=(40, 48), colour=(200, 30, 10)) -> Path:
    """An RGB image of one colour (size is H, W)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.zeros(size + (3,), np.uint8) + np.array(colour, np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def write_mask(path: Path, size=(40, 48)) -> Path:
    """A 0/255 mask whose left half is target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.zeros(size, np.uint8)
    pixels[:, : size[1] // 2] = 255
    Image.fromarray(pixels).save(path)
    return path


def build_pairs(images: Path, masks: Path, names, image_suffix=".png", mask_suffix=".png", mask_tail=""):
    for name in names:
        write_image(images / f"{name}{image_suffix}")
        write_mask(masks / f"{name}{mask_tail}{mask_suffix}")


# -- preprocessing ---------------------------------------------------------------------------


def test_images_become_bgr_scaled_resized_float32(tmp_path):
    path = write_image(tmp_path / "red.png", colour=(255, 0, 51))
    x = load_image(path, Preprocessing(size=(32, 16)))
    assert x.dtype == np.float32 and x.shape == (3, 32, 16)
    assert np.allclose(x[:, 5, 5], [0.2, 0.0, 1.0])  # B, G, R


def test_rgb_and_gray_channel_orders(tmp_path):
    path = write_image(tmp_path / "c.png", colour=(255, 0, 0))
    assert np.allclose(load_image(path, Preprocessing((16, 16), "RGB"))[:, 0, 0], [1, 0, 0])
    gray = load_image(path, Preprocessing((16, 16), "GRAY"))
    assert gray.shape == (1, 16, 16) and 0.2 < gray[0, 0, 0] < 0.4  # luminance of pure red


def test_masks_scale_to_soft_labels_and_resize_linearly(tmp_path):
    mask = load_mask(write_mask(tmp_path / "m.png", size=(8, 8)), (16, 16))
    assert mask.shape == (1, 16, 16) and mask.dtype == np.float32
    assert mask[0, 0, 0] == 1.0 and mask[0, 0, -1] == 0.0
    assert 0 < mask[0, 0, 7] < 1 or 0 < mask[0, 0, 8] < 1  # a soft label at the resized edge


def test_masks_stored_as_zero_one_are_kept(tmp_path):
    Image.fromarray(np.eye(16, dtype=np.uint8)).save(tmp_path / "01.png")
    assert np.array_equal(load_mask(tmp_path / "01.png", (16, 16))[0], np.eye(16))


def test_preprocessing_round_trips_through_a_dict():
    prep = Preprocessing(size=(64, 32), channel_order="RGB")
    assert Preprocessing.from_dict(prep.to_dict()) == prep


def test_unknown_channel_order_is_refused():
    with pytest.raises(ValueError, match="channel_order"):
        Preprocessing(channel_order="BRG")


# -- network inputs --------------------------------------------------------------------------


def test_network_input_from_an_image_file(tmp_path):
    x = load_network_input(write_image(tmp_path / "a.png"), Preprocessing((32, 32)), 3)
    assert x.shape == (3, 32, 32) and x.dtype == np.float32


def test_network_input_from_npy_is_used_as_it_is(tmp_path):
    array = np.random.default_rng(0).random((3, 32, 48), dtype=np.float32)
    np.save(tmp_path / "x.npy", array)
    assert np.array_equal(load_network_input(tmp_path / "x.npy", Preprocessing((256, 256)), 3), array)


def test_unreadable_image_file(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG but not really")
    with pytest.raises(InputError, match="broken.png: not a readable image"):
        load_network_input(tmp_path / "broken.png", Preprocessing(), 3)


def test_missing_input_file(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_network_input(tmp_path / "gone.png", Preprocessing(), 3)


def test_unreadable_npy(tmp_path):
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(InputError, match="not a readable .npy"):
        load_network_input(tmp_path / "bad.npy", Preprocessing(), 3)


def test_wrong_channel_count(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((1, 32, 32), np.float32))
    with pytest.raises(InputError, match="takes 3 input channel\\(s\\), this input has 1"):
        load_network_input(tmp_path / "x.npy", Preprocessing(), 3)


def test_size_not_a_multiple_of_16_names_valid_sizes(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((3, 30, 64), np.float32))
    with pytest.raises(InputError, match="multiples of 16.*height 30: use 16 or 32"):
        load_network_input(tmp_path / "x.npy", Preprocessing(), 3)


def test_nan_in_the_input(tmp_path):
    array = np.zeros((3, 32, 32), np.float32)
    array[1, 2, 3] = np.nan
    np.save(tmp_path / "x.npy", array)
    with pytest.raises(InputError, match="1 NaN or infinite"):
        load_network_input(tmp_path / "x.npy", Preprocessing(), 3)


@pytest.mark.parametrize("array, problem", [(np.zeros((1, 3, 32, 32), np.float32), "shape"),
                                             (np.zeros((3, 32, 32), np.uint8), "float32")])
def test_npy_of_wrong_rank_or_type(tmp_path, array, problem):
    np.save(tmp_path / "x.npy", array)
    with pytest.raises(InputError, match=problem):
        load_network_input(tmp_path / "x.npy", Preprocessing(), 3)


# -- layouts ---------------------------------------------------------------------------------


def test_imglabel_with_train_and_val(tmp_path):
    build_pairs(tmp_path / "train/img", tmp_path / "train/labelcol", ["a", "b", "c"])
    build_pairs(tmp_path / "val/img", tmp_path / "val/labelcol", ["d"])
    split = load_split(tmp_path)
    assert split.layout == "imglabel"
    assert [p.name for p in split.train] == ["a", "b", "c"] and [p.name for p in split.val] == ["d"]


def test_imglabel_flat_is_split_by_the_fraction_and_seed(tmp_path):
    build_pairs(tmp_path / "img", tmp_path / "labelcol", [f"n{i}" for i in range(10)])
    split = load_split(tmp_path, "imglabel", val_fraction=0.3, seed=5)
    assert (len(split.train), len(split.val)) == (7, 3)
    assert {p.name for p in split.train} | {p.name for p in split.val} == {f"n{i}" for i in range(10)}
    again = load_split(tmp_path, "imglabel", val_fraction=0.3, seed=5)
    assert [p.name for p in again.val] == [p.name for p in split.val]


def test_isic2018(tmp_path):
    base = tmp_path / "ISIC2018"
    build_pairs(base / "ISIC2018_Task1-2_Training_Input/ISIC2018_Task1-2_Training_Input",
                base / "ISIC2018_Task1_Training_GroundTruth/ISIC2018_Task1_Training_GroundTruth",
                ["ISIC_0000000", "ISIC_0000001", "ISIC_0000003"], ".jpg", ".png", "_segmentation")
    split = load_split(tmp_path)  # the release's data/ folder
    assert split.layout == "isic2018" and len(split.train) + len(split.val) == 3
    assert split.val[0].masks[0].name.endswith("_segmentation.png")
    assert load_split(base, "isic2018").root == base  # or the dataset folder itself


def test_kvasir(tmp_path):
    base = tmp_path / "Kvasir/kvasir-seg/Kvasir-SEG"
    build_pairs(base / "images", base / "masks", ["cju0", "cju1"], ".jpg", ".jpg")
    split = load_split(tmp_path, "kvasir")
    assert (len(split.train), len(split.val)) == (1, 1)


def test_busi_masks_beside_images_and_extra_masks_merged(tmp_path):
    folder = tmp_path / "BUSI/Dataset_BUSI/Dataset_BUSI_with_GT"
    build_pairs(folder / "benign", folder / "benign", ["benign (1)", "benign (2)"], mask_tail="_mask")
    build_pairs(folder / "malignant", folder / "malignant", ["malignant (1)"], mask_tail="_mask")
    extra = np.zeros((40, 48), np.uint8)
    extra[:, -4:] = 255  # a second lesion on the right
    Image.fromarray(extra).save(folder / "benign" / "benign (1)_mask_1.png")
    split = load_split(tmp_path, "auto", val_fraction=0.3)
    pairs = {p.name: p for p in split.train + split.val}
    assert split.layout == "busi" and sorted(pairs) == ["benign (1)", "benign (2)", "malignant (1)"]
    assert len(pairs["benign (1)"].masks) == 2
    merged = PairDataset([pairs["benign (1)"]], Preprocessing((40, 48)))[0][1]
    assert merged[0, :, 0].min() == 1 and merged[0, :, -1].min() == 1 and merged[0, :, 30].max() == 0


def test_covid19(tmp_path):
    base = tmp_path / "COVID_19/COVID-19_Lung_Infection_train/COVID-19_Lung_Infection_train"
    build_pairs(base / "images", base / "masks", ["1", "2", "3", "4", "5"], ".jpg", ".png")
    split = load_split(tmp_path)
    assert split.layout == "covid19" and (len(split.train), len(split.val)) == (4, 1)


def test_monuseg_kaggle_keeps_its_training_and_test_split(tmp_path):
    base = tmp_path / "Monu_Seg/archive"
    build_pairs(base / "kmms_training/kmms_training/images", base / "kmms_training/kmms_training/masks", ["t1", "t2"], ".tif")
    build_pairs(base / "kmms_test/kmms_test/images", base / "kmms_test/kmms_test/masks", ["v1"], ".png")
    split = load_split(tmp_path)
    assert split.layout == "monuseg-kaggle"
    assert [p.name for p in split.train] == ["t1", "t2"] and [p.name for p in split.val] == ["v1"]
    image, mask = PairDataset(split.train, Preprocessing((32, 32)))[0]
    assert image.shape == (3, 32, 32) and mask.shape == (1, 32, 32)


def test_pairing_mismatch_names_the_files_and_counts(tmp_path):
    build_pairs(tmp_path / "img", tmp_path / "labelcol", ["a", "b"])
    write_image(tmp_path / "img" / "orphan.png")
    write_mask(tmp_path / "labelcol" / "stray.png")
    with pytest.raises(DataError, match=r"\(3\).*\(3\).*1 image\(s\) without a mask: orphan.png; 1 mask\(s\) without an image: stray.png"):
        load_split(tmp_path)


def test_mask_folder_missing(tmp_path):
    write_image(tmp_path / "img" / "a.png")
    with pytest.raises(DataError, match="no mask folder"):
        load_split(tmp_path)


def test_empty_image_folder(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "labelcol").mkdir()
    with pytest.raises(DataError, match="no images found"):
        load_split(tmp_path)


def test_unknown_folder_lists_the_layouts(tmp_path):
    write_image(tmp_path / "pictures" / "a.png")
    with pytest.raises(DataError, match="(?s)no known dataset layout.*isic2018.*monuseg-kaggle"):
        load_split(tmp_path)


def test_named_layout_that_does_not_match(tmp_path):
    build_pairs(tmp_path / "img", tmp_path / "labelcol", ["a", "b"])
    with pytest.raises(DataError, match="not a 'kvasir' dataset"):
        load_split(tmp_path, "kvasir")


def test_missing_data_folder(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        load_split(tmp_path / "absent")


def test_single_pair_cannot_be_split(tmp_path):
    build_pairs(tmp_path / "img", tmp_path / "labelcol", ["only"])
    with pytest.raises(DataError, match="1 training and 0 validation"):
        load_split(tmp_path)


def test_monuseg_sample_of_shared(shared_data):
    split = load_split(shared_data, "imglabel")
    assert (len(split.train), len(split.val)) == (24, 6)
    image, mask = PairDataset(split.val[:1], Preprocessing())[0]
    assert image.shape == (3, 256, 256) and 0 <= float(image.min()) and float(image.max()) <= 1
    assert 0.05 < float((mask >= 0.5).float().mean()) < 0.6  # nuclei cover part of the tissue


# -- synthetic data --------------------------------------------------------------------------


def test_synthetic_samples_are_seeded_and_independent_of_order():
    first = synthetic_sample(3, 64, seed=41)
    assert np.array_equal(first.image, synthetic_sample(3, 64, seed=41).image)
    assert not np.array_equal(first.image, synthetic_sample(3, 64, seed=42).image)
    assert not np.array_equal(first.image, synthetic_sample(4, 64, seed=41).image)


@pytest.mark.parametrize("size", [(48, 80), 128])
def test_synthetic_samples_at_any_size(size):
    sample = synthetic_sample(0, size, seed=1)
    height, width = (size, size) if isinstance(size, int) else size
    assert sample.image.shape == (3, height, width) and sample.mask.shape == (1, height, width)
    assert sample.image.dtype == np.float32 and 0 <= sample.image.min() and sample.image.max() <= 1
    assert set(np.unique(sample.mask)) == {0.0, 1.0}


def test_distractors_look_like_targets_but_are_background():
    looked_alike = 0
    for index in range(20):
        sample = synthetic_sample(index, 96, seed=0)
        target, distractor = sample.mask[0] == 1, sample.distractors
        assert not (target & distractor).any()
        background = ~target & ~distractor
        if distractor.sum() < 10:
            continue
        colour = lambda region: sample.image[:, region].mean(axis=1)  # noqa: E731
        # A distractor's colour is far closer to the targets' than to the background's.
        assert np.abs(colour(distractor) - colour(target)).sum() < 0.5 * np.abs(colour(background) - colour(target)).sum()
        looked_alike += 1
    assert looked_alike >= 15


def test_synthetic_dataset_items_are_tensors_of_the_generator():
    dataset = SyntheticDataset(4, 32, seed=9)
    image, mask = dataset[2]
    assert np.array_equal(image.numpy(), synthetic_sample(2, 32, seed=9).image)
    assert mask.shape == (1, 32, 32)


# -- augmentation ----------------------------------------------------------------------------


def labelled_pair(size=64):
    """An image whose red channel is exactly its mask, to see that both move together."""
    rng = np.random.default_rng(0)
    mask = np.zeros((1, size, size), np.float32)
    mask[0, 10:30, 5:45] = 1
    noise = 0.05 + rng.random((size, size), dtype=np.float32) * 0.1   # never 0 but in a dropout hole
    image = np.stack([mask[0], noise, np.zeros((size, size), np.float32)])
    return image, mask


def test_flips_and_rotations_move_image_and_mask_together():
    image, mask = labelled_pair()
    moved = 0
    for seed in range(30):
        augmented, augmented_mask = Augmentation(probability=1.0)(image, mask, np.random.default_rng(seed))
        kept = augmented[1] > 0
        assert 0 < (~kept).sum() and np.allclose(augmented[0][kept], augmented_mask[0][kept], atol=1e-5)
        moved += not np.allclose(augmented_mask, mask)
    assert moved == 30


def test_dropout_blanks_square_holes_in_the_image_only():
    image, mask = np.ones((3, 256, 256), np.float32), np.ones((1, 256, 256), np.float32)
    augmentation = Augmentation(probability=0.0)
    dropped = augmentation.drop_holes(image, np.random.default_rng(0))
    blank = dropped[0] == 0
    assert 32 * 32 <= blank.sum() <= 10 * 32 * 32
    assert (dropped[:, blank] == 0).all() and np.array_equal(image, np.ones_like(image))
    assert np.array_equal(augmentation(image, mask, np.random.default_rng(0))[1], mask)


def test_probability_zero_is_the_identity():
    image, mask = labelled_pair()
    augmented, augmented_mask = Augmentation(probability=0.0)(image, mask, np.random.default_rng(0))
    assert np.array_equal(augmented, image) and np.array_equal(augmented_mask, mask)


def test_rotation_by_90_degrees_on_a_non_square_image_keeps_pixels():
    array = np.zeros((1, 32, 64), np.float32)
    array[0, 16, 32:] = 1  # a ray from the centre to the right edge
    turned = rotate(array, 90.0)
    assert turned.shape == (1, 32, 64)
    column = turned[0, :, 31:33].max(axis=1)
    # Positive angles turn counter-clockwise on screen (as OpenCV's): the ray now points up.
    assert column[:16].min() > 0.5 and column[17:].max() < 0.5


def test_augmentation_of_a_dataset_is_seeded_by_epoch():
    dataset = SyntheticDataset(2, 32, seed=3, augmentation=Augmentation(probability=0.9))
    dataset.set_epoch(1)
    first = dataset[0][0]
    assert np.array_equal(first.numpy(), dataset[0][0].numpy())
    dataset.set_epoch(2)
    assert not np.array_equal(first.numpy(), dataset[0][0].numpy())
