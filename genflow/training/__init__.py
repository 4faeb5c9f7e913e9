"""Training: the trainer, EMA, atomic checkpoints and the distributed helpers (one process works too)."""

from genflow.training.checkpoint import CheckpointError
from genflow.training.config import ConfigError, TrainerConfig, compose
from genflow.training.ema import EMA
from genflow.training.trainer import Trainer, TrainingError

__all__ = ["EMA", "CheckpointError", "ConfigError", "Trainer", "TrainerConfig", "TrainingError", "compose"]
