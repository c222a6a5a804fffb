"""Data for MedQKFormer: preprocessing (recorded in checkpoints), dataset layouts, a seeded
synthetic generator, the recipe's augmentation and torch Datasets."""
from medqk.data.augment import Augmentation
from medqk.data.datasets import PairDataset, SegmentationDataset, SyntheticDataset, synthetic_validation_set
from medqk.data.layouts import LAYOUT_CHOICES, LAYOUTS, Pair, Split, load_split
from medqk.data.preprocess import PIXEL_DEPTH_RULE, Preprocessing, load_image, load_mask, load_network_input, load_pair
from medqk.data.synthetic import SyntheticSample, synthetic_batch, synthetic_sample

__all__ = [
    "Augmentation", "PairDataset", "SegmentationDataset", "SyntheticDataset", "synthetic_validation_set",
    "LAYOUT_CHOICES", "LAYOUTS", "Pair", "Split", "load_split",
    "PIXEL_DEPTH_RULE", "Preprocessing", "load_image", "load_mask", "load_network_input", "load_pair",
    "SyntheticSample", "synthetic_batch", "synthetic_sample",
]
