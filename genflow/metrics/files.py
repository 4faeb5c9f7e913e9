"""Images and reference statistics from files other tools write, read as they are (no pickle).

Samples (``read_samples``): a folder of PNGs (any tool's: EDM's generate.py, genflow-sample
--png-dir, ...; sorted by name, 8-bit gray or RGB), genflow-sample's ``samples.npz`` (``samples``:
floats in [-1, 1]) or ADM/guided-diffusion's ``samples_NxHxWx3.npz`` (``arr_0``: uint8, NHWC).
Reference statistics (``read_reference``): EDM's fid.py ``ref`` files (``mu``, ``sigma``) and
ADM's reference batches (``VIRTUAL_*.npz``: ``arr_0`` uint8 images, usually with ``mu``, ``sigma``
and the spatial ``mu_s``, ``sigma_s``; like ADM's evaluator, ``mu``/``sigma`` are used when present,
else the statistics are computed from ``arr_0``). Anything else is refused in one line.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from genflow.utils import sha256_of

PNG_MODES = {"L": 1, "RGB": 3}  # 8-bit gray and RGB
SAMPLE_LAYOUTS = "genflow's samples.npz ('samples': floats in [-1, 1]) or ADM's ('arr_0': uint8 images NHWC)"


class LayoutError(RuntimeError):
    """A samples or reference file whose contents are not one of the known layouts (one line)."""


@dataclass(frozen=True)
class ImageSource:
    """``count`` images of ``shape`` (C, H, W), read a contiguous range at a time: ``take(range)``
    gives uint8 (8-bit files) or float [-1, 1] images [len(range), C, H, W]. Each rank of a
    distributed run reads only its own range."""

    count: int
    shape: tuple[int, ...]
    take: Callable[[range], Tensor]
    layout: str


def tensor_source(images: Tensor, layout: str = "tensor") -> ImageSource:
    return ImageSource(len(images), tuple(images.shape[1:]), lambda r: images[r.start:r.stop], layout)


def read_samples(path: str | Path) -> ImageSource:
    """The samples in ``path``: a folder of PNGs or a genflow / ADM ``.npz`` (see the module)."""
    path = Path(path)
    if path.is_dir():
        return png_folder(path)
    if not path.is_file():
        raise FileNotFoundError(f"samples not found: {path}")
    arrays = _npz(path, "samples file")
    keys = set(arrays)
    if "samples" in keys and keys <= {"samples", "labels"}:
        x = arrays["samples"]
        if x.dtype.kind != "f" or x.ndim < 2:
            raise LayoutError(f"{path}: 'samples' must be floats [n, ...] in [-1, 1]; got {x.dtype} of shape {x.shape}")
        return tensor_source(torch.from_numpy(x), "genflow npz")
    if "arr_0" in keys and keys <= {"arr_0", "arr_1"}:  # ADM writes class labels as arr_1
        return tensor_source(nhwc_images(arrays["arr_0"], path), "adm npz")
    raise LayoutError(f"{path} holds {sorted(keys)}; expected {SAMPLE_LAYOUTS}")


def nhwc_images(x: np.ndarray, path: Path) -> Tensor:
    """ADM's uint8 NHWC batch as a uint8 NCHW tensor."""
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise LayoutError(f"{path}: 'arr_0' must be uint8 images [n, H, W, 1 or 3]; got {x.dtype} of shape {x.shape}")
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _npz(path: Path, what: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as f:
            if not isinstance(f, np.lib.npyio.NpzFile):
                raise LayoutError(f"{path} is a single .npy array, not an .npz archive; give a {what} .npz")
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        if isinstance(err, LayoutError):
            raise
        raise LayoutError(f"cannot read {what} {path} as .npz: {str(err).splitlines()[0][:200]}") from None


def png_folder(folder: Path) -> ImageSource:
    """The ``*.png`` files directly in ``folder``, sorted by name, as uint8 [C, H, W] each."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".png")
    if not files:
        raise LayoutError(f"no .png files in the samples folder {folder}")
    shape = tuple(read_png(files[0]).shape)

    def take(r: range) -> Tensor:
        images = [read_png(files[i]) for i in r]
        wrong = next((files[i] for i, x in zip(r, images) if tuple(x.shape) != shape), None)
        if wrong is not None:
            raise LayoutError(f"{wrong} has shape {tuple(read_png(wrong).shape)}, {files[0].name} {shape}; "
                              "the folder's PNGs must share one size and mode")
        return torch.stack(images) if images else torch.empty(0, *shape, dtype=torch.uint8)

    return ImageSource(len(files), shape, take, "png folder")


def read_png(path: Path) -> Tensor:
    """One 8-bit gray or RGB PNG as uint8 [C, H, W]; other modes (RGBA, palette, 16-bit) refused."""
    from genflow.data.images import load_image

    image = load_image(path)
    if image.mode not in PNG_MODES:
        raise LayoutError(f"{path} has mode {image.mode}; the samples must be 8-bit gray (L) or RGB PNGs")
    x = torch.from_numpy(np.array(image, dtype=np.uint8))
    return x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1).contiguous()


@dataclass(frozen=True)
class ReferenceFile:
    """What a reference ``.npz`` gives: statistics (``mu``, ``sigma`` float64) or ``images`` to
    compute them from; its ``layout`` ("edm" | "adm statistics" | "adm images") and ``sha256``."""

    mu: Tensor | None
    sigma: Tensor | None
    images: Tensor | None
    layout: str
    sha256: str
    path: Path


ADM_KEYS = {"arr_0", "mu", "sigma", "mu_s", "sigma_s"}


def read_reference(path: str | Path) -> ReferenceFile:
    """EDM's (``mu``, ``sigma``) or ADM's (``arr_0`` with or without ``mu``, ``sigma``, ``mu_s``,
    ``sigma_s``) reference file; any other layout, shape or a non-finite value is refused
    (``LayoutError``, one line). ``check_dims`` compares it with the feature space."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference file not found: {path}")
    arrays = _npz(path, "reference statistics file")
    keys, sha = set(arrays), sha256_of(path)
    if keys == {"mu", "sigma"} or ({"mu", "sigma"} <= keys <= ADM_KEYS):
        mu, sigma = _statistics(arrays["mu"], arrays["sigma"], path)
        layout = "edm" if keys == {"mu", "sigma"} else "adm statistics"
        return ReferenceFile(mu, sigma, None, layout, sha, path)
    if keys <= ADM_KEYS and "arr_0" in keys and not keys & {"mu", "sigma"}:
        return ReferenceFile(None, None, nhwc_images(arrays["arr_0"], path), "adm images", sha, path)
    raise LayoutError(f"{path} holds {sorted(keys)}; expected EDM's reference statistics ('mu', 'sigma') or ADM's "
                      "reference batch ('arr_0' uint8 images NHWC, optionally with 'mu', 'sigma', 'mu_s', 'sigma_s')")


def check_dims(file: ReferenceFile, dims: int) -> None:
    """Refuse statistics of another dimension than the feature space's ``dims``."""
    if file.mu is not None and len(file.mu) != dims:
        raise LayoutError(f"{file.path}: statistics of {len(file.mu)}-d features, but the feature space gives "
                          f"{dims}-d features")


def _statistics(mu: np.ndarray, sigma: np.ndarray, path: Path) -> tuple[Tensor, Tensor]:
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise LayoutError(f"{path}: mu has shape {mu.shape} and sigma {sigma.shape}; they must be (d,) and (d, d)")
    if mu.dtype.kind != "f" or sigma.dtype.kind != "f":
        raise LayoutError(f"{path}: mu and sigma must be floats; got {mu.dtype} and {sigma.dtype}")
    bad = int((~np.isfinite(mu)).sum() + (~np.isfinite(sigma)).sum())
    if bad:
        raise LayoutError(f"{path}: {bad} values of mu and sigma are NaN or inf")
    return torch.from_numpy(mu.astype(np.float64)), torch.from_numpy(sigma.astype(np.float64))
