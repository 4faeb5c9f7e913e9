"""Inception-v3 pool features (2048-d) for FID, from a weights file the user supplies (nothing is
downloaded). Two kinds of file are told apart by their keys and shapes:

* ``torchvision``: torchvision's ImageNet weights (inception_v3_google-*.pth, fc with 1000 classes,
  AuxLogits included). They expect ImageNet-normalized input, which ``transform_input`` maps back
  to the [-1, 1] range the ported Google weights were trained on.
* ``fid``: the TensorFlow FID network ported to PyTorch (pt_inception-2015-12-05-*.pth as used by
  pytorch-fid; fc with 1008 outputs, no AuxLogits). Its input is the image resized to 299x299 and
  scaled to [-1, 1], without ImageNet normalization, and its blocks differ from torchvision's in
  the pool branch: TensorFlow's average pooling leaves the zero padding out of the average
  (``count_include_pad=False``), and the last block (Mixed_7c) max-pools instead
  (Heusel et al. 2017, the reference implementation of FID).

Both kinds take the image bilinearly resized to 299x299 (no crop); a grayscale image is repeated
to 3 channels. Features are the global average pool before dropout and fc.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import inception as tv

from genflow.utils import UnreadableFile, load_weights_only, sha256_of

SIZE, DIMS = 299, 2048
CLASSES = {"torchvision": 1000, "fid": 1008}  # rows of fc.weight in each kind of file
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class WeightsError(RuntimeError):
    """A weights file that is not Inception-v3 weights of a known kind; one line naming the file and why."""


class _TensorFlowPool:
    """The pool branch as in the TensorFlow FID graph: average pooling without the padded zeros
    (``count_include_pad=False``), or max pooling. torchvision's branches are reused; only the
    pool branch is recomputed (its 1x1 conv runs twice, a few percent of the block's work)."""

    pool = "avg"

    def _forward(self, x: Tensor) -> list[Tensor]:
        outputs = super()._forward(x)  # type: ignore[misc]
        if self.pool == "max":
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            pooled = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
        outputs[-1] = self.branch_pool(pooled)  # type: ignore[attr-defined]
        return outputs


class TFInceptionA(_TensorFlowPool, tv.InceptionA):
    pass


class TFInceptionC(_TensorFlowPool, tv.InceptionC):
    pass


class TFInceptionE(_TensorFlowPool, tv.InceptionE):
    pass


class TFInceptionEMaxPool(_TensorFlowPool, tv.InceptionE):
    pool = "max"


def build_inception(kind: str) -> tv.Inception3:
    """An untrained Inception-v3 of ``kind`` ("torchvision" or "fid") with torchvision's layer names."""
    if kind not in CLASSES:
        raise ValueError(f"kind must be one of {', '.join(CLASSES)}; got {kind!r}")
    if kind == "torchvision":  # as torchvision builds it for its own weights
        return tv.inception_v3(weights=None, aux_logits=True, transform_input=True, init_weights=False)
    blocks = [tv.BasicConv2d, TFInceptionA, tv.InceptionB, TFInceptionC, tv.InceptionD, TFInceptionE,
              tv.InceptionAux]
    net = tv.inception_v3(weights=None, aux_logits=False, transform_input=False, init_weights=False,
                          num_classes=CLASSES["fid"], inception_blocks=blocks)
    net.Mixed_7c = TFInceptionEMaxPool(2048)
    return net


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """``torch.load(weights_only=True)`` of a flat name -> tensor mapping, or one-line WeightsError."""
    if not path.is_file():
        raise WeightsError(f"Inception weights file not found: {path}")
    try:
        state = load_weights_only(path)
    except UnreadableFile as err:
        raise WeightsError(err.refusal(path, "")) from None
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsError(f"{path} is not a state dict (a flat mapping of names to tensors); give torchvision's "
                           "inception_v3_google-*.pth or pytorch-fid's pt_inception-2015-12-05-*.pth")
    return dict(state)


def identify(state: Mapping[str, Tensor], path: Path) -> tuple[str, tv.Inception3]:
    """The kind ("torchvision" or "fid", by the shape of fc.weight) and its untrained network, after
    every key and shape of ``state`` is checked against that network."""
    fc = state.get("fc.weight")
    kinds = {rows: kind for kind, rows in CLASSES.items()}
    if fc is None or fc.ndim != 2 or fc.shape[1] != DIMS or fc.shape[0] not in kinds:
        found = "no fc.weight" if fc is None else f"fc.weight of shape {tuple(fc.shape)}"
        raise WeightsError(f"{path} is not Inception-v3 weights of a known kind ({found}; torchvision's have "
                           f"fc.weight ({CLASSES['torchvision']}, {DIMS}), the FID network's "
                           f"({CLASSES['fid']}, {DIMS}))")
    kind = kinds[fc.shape[0]]
    net = build_inception(kind)
    expected = {k: v.shape for k, v in net.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and state[k].shape != expected[k]]
    if missing or unexpected or wrong:
        parts = [f"{label} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}" for label, keys in
                 [("lacks", missing), ("has unexpected", unexpected), ("has wrong shapes for", wrong)] if keys]
        raise WeightsError(f"{path} looks like {kind} Inception-v3 weights but {'; '.join(parts)}")
    return kind, net


@dataclass(frozen=True)
class InceptionFeatures:
    """The 2048-d pool features of an Inception-v3 loaded from ``path``: ``self(images)``."""

    net: tv.Inception3
    kind: str
    sha256: str
    device: torch.device

    @property
    def identity(self) -> str:
        return f"inception-v3 {self.kind} sha256:{self.sha256}"

    def prepare(self, images: Tensor) -> Tensor:
        """Images in [-1, 1], [n, 1 or 3, H, W] -> the network's input, [n, 3, 299, 299]."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"Inception features need images [n, 1 or 3, H, W]; got shape {tuple(images.shape)}")
        x = images.to(self.device, torch.float32).expand(-1, 3, -1, -1)
        if x.shape[-2:] != (SIZE, SIZE):
            x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
        if self.kind == "torchvision":  # ImageNet normalization of (x + 1) / 2; transform_input undoes it
            mean, std = (torch.tensor(v, device=self.device).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
            x = ((x + 1) / 2 - mean) / std
        return x

    @torch.no_grad()
    def __call__(self, images: Tensor, batch_size: int = 50) -> Tensor:
        """Features [n, 2048] (float32, on the CPU), computed ``batch_size`` images at a time."""
        return torch.cat([self.net(self.prepare(part)).cpu() for part in images.split(batch_size)])


def inception_features(path: str | os.PathLike, device: str | torch.device = "cpu") -> InceptionFeatures:
    """Load Inception-v3 weights of either kind from ``path`` (read once per process and device)."""
    path = Path(path).resolve()
    return _load(path, path.stat().st_mtime_ns if path.is_file() else None, torch.device(device))


@functools.lru_cache(maxsize=4)
def _load(path: Path, mtime: int | None, device: torch.device) -> InceptionFeatures:
    state = read_state_dict(path)
    kind, net = identify(state, path)
    net.load_state_dict(state)
    # the pool features: drop fc (dropout before it is the identity in eval mode) and the aux head
    net.aux_logits, net.AuxLogits, net.fc = False, None, nn.Identity()
    return InceptionFeatures(net.eval().to(device), kind, sha256_of(path), device)
