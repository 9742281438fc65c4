"""The one trainer for all sequence models, batching, checkpoints and run directories."""

from .config import DataConfig, EvalConfig, ExperimentConfig, TrainConfig, load_experiment
from .run import LoadedRun, build_model, load_run, load_tensors, resolve_device
from .trainer import Trainer, evaluate_model, make_score_fn, train

__all__ = [
           "DataConfig",
           "EvalConfig",
           "ExperimentConfig",
           "LoadedRun",
           "TrainConfig",
           "Trainer",
           "build_model",
           "evaluate_model",
           "load_experiment",
           "load_run",
           "load_tensors",
           "make_score_fn",
           "resolve_device",
           "train",
]
