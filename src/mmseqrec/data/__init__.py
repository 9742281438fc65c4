"""Data layer: readers (one module per format), preprocessing, splits and the dataset directory."""

from .dataset import DatasetDir, SequenceData, load_dataset
from .split import EvalSet, LeaveOneOut, leave_one_out

__all__ = ["DatasetDir", "SequenceData", "load_dataset", "EvalSet", "LeaveOneOut", "leave_one_out"]
