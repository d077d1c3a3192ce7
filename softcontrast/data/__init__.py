"""Datasets: sources named by a string, in-memory and streamed splits, crops cut in loader workers,
and the batches of training."""

from softcontrast.data.batches import EpochBatches, TrainingBatches
from softcontrast.data.crops import CropSpec, sample_box
from softcontrast.data.images import FolderImages, ImageSource, decode_image
from softcontrast.data.sources import MAX_RESIDENT_SIDE, load_source
from softcontrast.data.splits import DatasetSplits, DataSourceError, ImageTensorDataset, random_indices
from softcontrast.data.views import EVAL_CROP_FRACTION, CenterCrops, RandomCrops

__all__ = [
    "CenterCrops",
    "CropSpec",
    "DataSourceError",
    "DatasetSplits",
    "EVAL_CROP_FRACTION",
    "EpochBatches",
    "FolderImages",
    "ImageSource",
    "ImageTensorDataset",
    "MAX_RESIDENT_SIDE",
    "RandomCrops",
    "TrainingBatches",
    "decode_image",
    "load_source",
    "random_indices",
    "sample_box",
]
