"""Data layer: readers (one module per format), preprocessing, splits and the dataset directory."""

from .build import PrepareConfig, prepare, prepare_raw
from .dataset import DatasetDir, SequenceData, load_dataset
from .download import download_movielens, movielens_small_path
from .readers import READERS, ReaderOptions
from .split import EvalSet, LeaveOneOut, leave_one_out

__all__ = [
    "READERS",
    "DatasetDir",
    "EvalSet",
    "LeaveOneOut",
    "PrepareConfig",
    "ReaderOptions",
    "SequenceData",
    "download_movielens",
    "leave_one_out",
    "load_dataset",
    "movielens_small_path",
    "prepare",
    "prepare_raw",
]
