"""Image data sets: the embedded digits, MNIST and CIFAR-10 via torchvision, and any image folder.

Images come out as float32 in [-1, 1] (``ToTensor`` then ``Normalize(0.5, 0.5)``, i.e. ``2x - 1``),
labels as int64 scalar tensors.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import datasets, transforms
from torchvision.datasets.folder import IMG_EXTENSIONS

from genflow.data.base import Data
from genflow.data.digits import digits
from genflow.utils import check_choice, one_line

CHANNEL_MODES = {1: "L", 3: "RGB"}


def _label(y: int) -> torch.Tensor:
    """An int64 scalar label (a module-level function, so DataLoader workers can pickle it)."""
    return torch.tensor(y, dtype=torch.int64)


def _to_unit_range(*steps) -> transforms.Compose:
    """``steps`` on a PIL image, then to a float tensor in [-1, 1]."""
    return transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(0.5, 0.5)])


def _digits_data(image_size: int = 8, flip: bool = False) -> Data:
    """scikit-learn's 8x8 digits (1437 train / 360 test), 10 classes, no download."""
    return Data(
        train=digits("train", image_size),
        test=digits("test", image_size),
        shape=(1, image_size, image_size),
        num_classes=10,
        flip=flip,
    )


def _torchvision_split(cls: type, root: str, train: bool, download: bool, transform) -> Dataset:
    """``cls(root, train, ...)``; torchvision's 'Dataset not found' becomes one clear FileNotFoundError."""
    try:
        return cls(root, train=train, transform=transform, target_transform=_label, download=download)
    except RuntimeError as err:
        if "not found" not in str(err):
            raise
        raise FileNotFoundError(
            f"{cls.__name__} files not found (or corrupted) under {root!r}; "
            f"pass data.download=true or place the files there"
        ) from None


def _torchvision_data(cls: type, root: str, download: bool, transform, shape: tuple, flip: bool) -> Data:
    """Official train and test splits of a 10-class torchvision data set."""
    train = _torchvision_split(cls, root, True, download, transform)
    test = _torchvision_split(cls, root, False, download, transform)
    return Data(train=train, test=test, shape=shape, num_classes=10, flip=flip)


def _mnist_data(root: str = "data/mnist", image_size: int = 28, download: bool = False, flip: bool = False) -> Data:
    """MNIST (60k/10k, 1x28x28), resized to ``image_size`` when it is not 28."""
    resize = [] if image_size == 28 else [transforms.Resize(image_size)]
    transform = _to_unit_range(*resize)
    return _torchvision_data(datasets.MNIST, root, download, transform, (1, image_size, image_size), flip)


def _cifar10_data(root: str = "data/cifar10", download: bool = False, flip: bool = True) -> Data:
    """CIFAR-10 (50k/10k, 3x32x32)."""
    return _torchvision_data(datasets.CIFAR10, root, download, _to_unit_range(), (3, 32, 32), flip)


class UnreadableImage(RuntimeError):
    """An image file that cannot be decoded; the message names the file."""


def load_image(path: str | Path) -> Image.Image:
    """The decoded image at ``path``; a file that is not an image, or a truncated or corrupt one,
    raises ``UnreadableImage`` naming it."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise UnreadableImage(f"cannot read image {path}: {one_line(err, 200)}; remove or replace the file") from None


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMG_EXTENSIONS


class ImageFiles(Dataset):
    """The image files directly inside one folder, sorted by name, each labelled 0."""

    def __init__(self, root: Path, transform) -> None:
        self.files = sorted(p for p in root.iterdir() if _is_image(p))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(load_image(self.files[index])), _label(0)


def _class_dirs(root: Path) -> list[Path]:
    return [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]


def _image_folder(root: Path, transform) -> tuple[Dataset, int | None]:
    """(dataset, num_classes): ImageFolder if ``root`` has class subfolders, else its loose images."""
    if not _class_dirs(root):
        return ImageFiles(root, transform), None
    try:
        dataset = datasets.ImageFolder(str(root), transform=transform, target_transform=_label, loader=load_image)
    except FileNotFoundError:  # class folders without a single image
        return ImageFiles(root, transform), None
    return dataset, len(dataset.classes)


def _folder_data(root: str, image_size: int = 64, channels: int = 3, flip: bool = True) -> Data:
    """Any folder of images (optionally in class subfolders), resized and centre-cropped; no test set."""
    check_choice(channels, tuple(CHANNEL_MODES), "channels")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"image folder {str(path)!r} does not exist")
    convert = functools.partial(Image.Image.convert, mode=CHANNEL_MODES[channels])
    transform = _to_unit_range(convert, transforms.Resize(image_size), transforms.CenterCrop(image_size))
    train, num_classes = _image_folder(path, transform)
    if len(train) == 0:
        raise ValueError(f"no images ({', '.join(IMG_EXTENSIONS)}) found in {str(path)!r} or its class folders")
    return Data(train=train, test=None, shape=(channels, image_size, image_size), num_classes=num_classes, flip=flip)
