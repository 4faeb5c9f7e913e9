"""What every data set builder returns: train/test datasets plus what a trainer needs to know."""

from __future__ import annotations

from dataclasses import dataclass

from torch.utils.data import Dataset


@dataclass(frozen=True)
class Data:
    """Datasets of ``(x, y)`` pairs: ``x`` float32 of ``shape``, ``y`` an int64 scalar (0 if unlabelled).

    ``flip`` asks the trainer for random horizontal flips; the datasets themselves are un-augmented.
    """

    train: Dataset
    test: Dataset | None
    shape: tuple[int, ...]
    num_classes: int | None
    flip: bool
