"""A built-in feature space for the digits data: a small CNN classifier trained deterministically
on the digits training split and cached, so Fréchet distance and precision/recall work offline."""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genflow.utils import cache_dir, write_atomically

EPOCHS, SEED, VERSION = 40, 0, 1


class DigitsNet(nn.Module):
    """8x8 -> conv 32 -> conv 64 -> 128-d features -> 10 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 32, 3, padding=1), nn.Conv2d(32, 64, 3, padding=1)
        self.fc, self.head = nn.Linear(64 * 4 * 4, 128), nn.Linear(128, 10)

    def features(self, x: Tensor) -> Tensor:
        if x.shape[-2:] != (8, 8):
            x = F.interpolate(x, size=(8, 8), mode="bilinear", align_corners=False)
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.fc(x.flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def cache_path() -> Path:
    return cache_dir() / f"digits_classifier_v{VERSION}.pt"


def train_classifier() -> tuple[DigitsNet, float]:
    """Adam, batch 64, EPOCHS epochs, seed SEED, on CPU in float32: the same weights every time."""
    from genflow.data import digits

    torch.manual_seed(SEED)
    x, y = digits("train").tensors
    net = DigitsNet()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(SEED)
    for _ in range(EPOCHS):
        for idx in torch.randperm(len(x), generator=g).split(64):
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    xt, yt = digits("test").tensors
    with torch.no_grad():
        accuracy = (net(xt).argmax(1) == yt).double().mean().item()
    return net.eval(), accuracy


def digits_classifier() -> tuple[DigitsNet, float]:
    """The cached classifier and its test accuracy (trained on first use, ~10 s on a CPU; read
    from the cache file once per process)."""
    return _classifier_at(cache_path())


@functools.lru_cache(maxsize=None)
def _classifier_at(path: Path) -> tuple[DigitsNet, float]:
    net = DigitsNet()
    if path.is_file():
        state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(state["model"])
        return net.eval(), float(state["accuracy"])
    net, accuracy = train_classifier()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda f: torch.save({"model": net.state_dict(), "accuracy": accuracy}, f))
    return net, accuracy


def digits_identity() -> str:
    """What the digits features depend on: the net's VERSION and the bytes of its cached weights."""
    from genflow.utils import sha256_of

    digits_classifier()  # trained and cached on first use
    return f"digits classifier v{VERSION} sha256:{sha256_of(cache_path())}"


@torch.no_grad()
def digits_features(images: Tensor, batch_size: int = 1024) -> Tensor:
    """128-d features of images in [-1, 1], shaped [n, 1, H, W]."""
    net, _ = digits_classifier()
    return torch.cat([net.features(part.float().cpu()) for part in images.split(batch_size)])
