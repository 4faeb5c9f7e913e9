"""The 1,797 handwritten 8x8 digits that scikit-learn ships (no download), scaled to [-1, 1]."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from genflow.utils import check_choice

TEST_SIZE = 360  # a fixed 20% split: a permutation with seed 0, the last 360 are the test set
SPLITS = ("train", "test", "all")


def digits(split: str = "train", image_size: int = 8) -> TensorDataset:
    """(images [N, 1, S, S] in [-1, 1], float32; labels [N], int64) for ``split``.

    The pixel values are 17 grey levels (0..16) mapped linearly onto [-1, 1]; ``image_size`` other
    than 8 resizes bilinearly (e.g. 16 or 32 for UNets with more levels).
    """
    from sklearn.datasets import load_digits

    check_choice(split, SPLITS, "split")
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1; got {image_size}")
    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    if image_size != 8:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    if split != "all":
        order = order[:-TEST_SIZE] if split == "train" else order[-TEST_SIZE:]
    return TensorDataset(images[order], labels[order])
