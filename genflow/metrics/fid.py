"""The FID protocol: how images reach the Inception network, step by step, as the published
pipelines do it, and ``score`` (the Fréchet distance of images to reference statistics).

1. Samples (floats in [-1, 1]) become 8-bit by ``to_uint8(x, rounding)`` (genflow.utils): ``edm``
   (NVlabs/edm generate.py, round to nearest; the default) or ``adm`` (guided-diffusion
   image_sample.py, truncation). 8-bit files (PNG folders, ADM's ``arr_0``) are taken as they are.
   Reference images of a data split go through ``to_uint8(x, "edm")``: the dataset's images are
   already 8-bit levels k / 127.5 - 1, which nearest rounding returns exactly (truncation would
   lower 63 of the 256 float32 levels by one); ADM's reference batches hold those uint8 values.
2. The 8-bit values k become the network's input by ``scaling``:
   * ``tf`` (default): (k - 128) / 128, the TensorFlow graph inception-2015-12-05 (its Sub 128 and
     Mul 1/128 ops) that TTUR's FID, ADM's evaluations/evaluator.py (uint8 batches fed to the graph)
     and EDM's fid.py (uint8 images into the TorchScript port inception-2015-12-05.pkl) use;
   * ``pytorch-fid``: 2 (k / 255) - 1, pytorch-fid's ``ToTensor`` (k / 255) then InceptionV3's
     ``normalize_input`` (``x = 2 * x - 1``). The two differ by k / 32640 (at most 0.0078, at k = 255).
3. ``InceptionFeatures.prepare`` resizes to 299x299 bilinearly (``align_corners=False``, as
   pytorch-fid and EDM's port), which commutes with step 2's affine map. TF1's ResizeBilinear in
   ADM's evaluator samples the pixels differently; that difference is not checked here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from genflow.utils import ROUNDINGS, check_choice, to_uint8

SCALINGS = {
    "tf": lambda k: (k - 128.0) / 128.0,
    "pytorch-fid": lambda k: 2.0 * (k / 255.0) - 1.0,
}


def levels(k: Tensor) -> Tensor:
    """8-bit values as the floats in [-1, 1] they stand for, k / 127.5 - 1 (to_uint8's levels)."""
    return k.to(torch.float32) / 127.5 - 1.0


def as_float(images: Tensor) -> Tensor:
    """uint8 images as their levels; floats as they are (for feature spaces that take [-1, 1])."""
    return levels(images) if images.dtype == torch.uint8 else images


@dataclass(frozen=True)
class Protocol:
    """``rounding`` of the samples to 8 bits and ``scaling`` of 8-bit values to the network input."""

    rounding: str = "edm"
    scaling: str = "tf"

    def __post_init__(self) -> None:
        check_choice(self.rounding, ROUNDINGS, "rounding")
        check_choice(self.scaling, tuple(SCALINGS), "scaling")

    def quantize(self, images: Tensor, reference: bool = False) -> Tensor:
        """uint8 as it is; floats by to_uint8 (the samples' rounding, nearest for reference images)."""
        if images.dtype == torch.uint8:
            return images
        return to_uint8(images, "edm" if reference else self.rounding)

    def network_input(self, images: Tensor, reference: bool = False) -> Tensor:
        """Steps 1 and 2: float32 images in about [-1, 1] for ``InceptionFeatures`` (step 3)."""
        return SCALINGS[self.scaling](self.quantize(images, reference).to(torch.float32))

    def record(self) -> dict:
        return {"rounding": self.rounding, "reference_rounding": "edm", "scaling": self.scaling}


def score(images: Tensor, mu: Tensor, sigma: Tensor, extract) -> float:
    """FD between the features ``extract(images)`` (e.g. an Inception space of ``Protocol``) and
    N(mu, sigma): what ``genflow-eval fd`` reports, for freshly generated samples."""
    from genflow.metrics.frechet import frechet_distance_to_statistics

    return frechet_distance_to_statistics(extract(images), mu, sigma)
