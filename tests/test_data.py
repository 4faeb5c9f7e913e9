"""Data sets, 2-D toys and PNG rendering: split sizes, value ranges, per-toy geometry, clear errors."""

from __future__ import annotations

import math
import os
import pickle
import struct

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar
from omegaconf import OmegaConf
from PIL import Image

from genflow.data import DATASETS, TOYS, Data, build, digits, render_density, render_points, toy_sample

N = 20000


def _rows(dataset) -> set[bytes]:
    x, y = dataset.tensors
    return {a.numpy().tobytes() + bytes([int(b)]) for a, b in zip(x, y)}


def _assert_item(data: Data, dataset, index: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = dataset[index]
    assert x.dtype == torch.float32 and tuple(x.shape) == data.shape
    assert y.dtype == torch.int64 and y.ndim == 0
    assert x.min() >= -1 and x.max() <= 1
    return x, y


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


# --- digits ---------------------------------------------------------------------------------------


def test_digits_splits_are_disjoint_and_cover_all():
    data = build({"name": "digits"})
    assert (len(data.train), len(data.test)) == (1437, 360)
    train, test, everything = _rows(data.train), _rows(data.test), _rows(digits("all"))
    assert len(everything) == 1797 and not train & test and train | test == everything
    assert data.shape == (1, 8, 8) and data.num_classes == 10 and data.flip is False
    _assert_item(data, data.train)


def test_digits_has_17_grey_levels_in_unit_range():
    levels = torch.unique(digits("all").tensors[0])
    assert torch.equal(levels, torch.arange(17, dtype=torch.float32) / 8 - 1)


def test_digits_image_size_and_flip_pass_through():
    data = build({"name": "digits", "image_size": 16, "flip": True})
    assert data.shape == (1, 16, 16) and data.flip is True
    _assert_item(data, data.test)


# --- 2-D toys -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(TOYS))
def test_toy_is_reproducible_and_seed_dependent(kind):
    a, b, c = toy_sample(kind, 500, seed=3), toy_sample(kind, 500, seed=3), toy_sample(kind, 500, seed=4)
    assert a.shape == (500, 2) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.allclose(a, c)


@pytest.mark.parametrize("kind", sorted(TOYS))
def test_toy_is_roughly_centred_with_a_scale_of_a_few_units(kind):
    x = toy_sample(kind, N)
    assert x.mean(0).abs().max() < 0.4
    assert ((x.std(0) > 0.8) & (x.std(0) < 3)).all()


def test_toy_generator_controls_the_points():
    points = TOYS["moons"](100, torch.Generator().manual_seed(7))
    assert torch.equal(points, toy_sample("moons", 100, seed=7))


def test_8gaussians_cluster_at_8_centres():
    x = toy_sample("8gaussians", N)
    angles = torch.arange(8) * (math.pi / 4)
    centres = 4 / 1.414 * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    nearest = torch.cdist(x, centres).argmin(dim=1)
    residual = x - centres[nearest]
    assert torch.allclose(residual.std(0), torch.full((2,), 0.5 / 1.414), rtol=0.05)
    assert torch.allclose(torch.bincount(nearest, minlength=8) / N, torch.full((8,), 1 / 8), atol=0.01)


def test_circles_radii_cluster_at_two_values():
    radius = toy_sample("circles", N).norm(dim=1)
    inner, outer = (radius - 1.5).abs() < 0.75, (radius - 3.0).abs() < 0.75
    assert (inner | outer).float().mean() > 0.99
    assert abs(inner.float().mean().item() - 0.5) < 0.02
    assert abs(radius[outer].median().item() - 3.0) < 0.05 and abs(radius[inner].median().item() - 1.5) < 0.1


def test_checkerboard_points_fall_only_in_black_squares():
    x = toy_sample("checkerboard", N)
    assert x.abs().max() <= 4
    cell = torch.floor(x / 2).long()  # 4x4 cells of side 2, indices -2..1
    assert ((cell[:, 0] + cell[:, 1]) % 2 == 0).all()
    counts = torch.bincount((cell[:, 0] + 2) * 4 + (cell[:, 1] + 2), minlength=16)
    black = counts[counts > 0]
    assert len(black) == 8 and (black / N - 1 / 8).abs().max() < 0.01


def test_moons_are_two_half_circles():
    x = toy_sample("moons", N)
    upper_centre, lower_centre = torch.tensor([-1.0, -0.2]), torch.tensor([1.0, 0.8])
    off_upper = ((x - upper_centre).norm(dim=1) - 2).abs()
    off_lower = ((x - lower_centre).norm(dim=1) - 2).abs()
    upper = off_upper < off_lower
    assert torch.minimum(off_upper, off_lower).max() < 1.0
    assert abs(upper.float().mean().item() - 0.5) < 0.02
    assert x[upper, 1].mean() > 0.5 > 0.1 > x[~upper, 1].mean()  # one arc bulges up, the other down


def test_spirals_follow_two_arms():
    """Arm k has polar angle (k + 1) * pi - t at radius t / 3, so 3 r + angle = 0 (mod pi)."""
    x = toy_sample("spirals", N)
    radius, angle = x.norm(dim=1), torch.atan2(x[:, 1], x[:, 0])
    far = 3 * radius > 4
    phase = torch.remainder(3 * radius + angle + math.pi / 2, math.pi) - math.pi / 2
    assert (phase[far].abs() < 0.6).float().mean() > 0.7  # about 0.38 for points spread uniformly
    assert radius.max() < 4


def test_unknown_toy_lists_valid_names():
    with pytest.raises(ValueError) as err:
        toy_sample("swissroll", 10)
    assert all(name in _one_line(err) for name in TOYS)


def test_toy2d_data_uses_another_seed_for_test():
    data = build({"name": "toy2d", "kind": "circles", "size": 300, "test_size": 200, "seed": 5})
    assert (len(data.train), len(data.test)) == (300, 200)
    assert data.shape == (2,) and data.num_classes is None and data.flip is False
    train_x, train_y = data.train.tensors
    assert torch.equal(train_x, toy_sample("circles", 300, seed=5))
    assert torch.equal(data.test.tensors[0], toy_sample("circles", 200, seed=6))
    assert train_y.dtype == torch.int64 and not train_y.any()


# --- build errors ---------------------------------------------------------------------------------


def test_build_rejects_unknown_name_with_valid_names():
    with pytest.raises(ValueError) as err:
        build({"name": "imagenet"})
    assert all(name in _one_line(err) for name in DATASETS)


def test_build_rejects_unknown_key():
    with pytest.raises(ValueError) as err:
        build({"name": "toy2d", "n_points": 5})
    assert "n_points" in _one_line(err) and "size" in str(err.value)


@pytest.mark.parametrize("cfg", [{"name": "folder"}, OmegaConf.create({"name": "folder", "root": "???"})])
def test_folder_without_root_says_so(cfg):
    with pytest.raises(TypeError) as err:
        build(cfg)
    assert "'folder'" in _one_line(err) and "root" in str(err.value)


# --- image folders --------------------------------------------------------------------------------


def _png(path, colour, size=(12, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def test_folder_of_loose_images(tmp_path):
    _png(tmp_path / "a.png", (255, 0, 0))
    _png(tmp_path / "b.PNG", (255, 255, 255), size=(20, 30))
    (tmp_path / "notes.txt").write_text("not an image")
    data = build({"name": "folder", "root": str(tmp_path), "image_size": 8})
    assert len(data.train) == 2 and data.test is None and data.num_classes is None and data.flip is True
    red, label = _assert_item(data, data.train, 0)
    assert label.item() == 0
    assert torch.allclose(red, torch.tensor([1.0, -1.0, -1.0]).view(3, 1, 1).expand(3, 8, 8))
    white, _ = _assert_item(data, data.train, 1)
    assert torch.all(white == 1)


def test_folder_with_class_subfolders_in_grey(tmp_path):
    _png(tmp_path / "cat" / "0.png", (0, 0, 0))
    _png(tmp_path / "cat" / "1.jpg", (0, 0, 0))
    _png(tmp_path / "dog" / "0.png", (255, 255, 255))
    data = build({"name": "folder", "root": str(tmp_path), "image_size": 6, "channels": 1})
    assert len(data.train) == 3 and data.num_classes == 2 and data.shape == (1, 6, 6)
    for index in range(3):
        x, y = _assert_item(data, data.train, index)
        assert torch.all(x == (1.0 if y.item() == 1 else -1.0))  # labels match content: dog (1) is white
    assert sorted(int(data.train[i][1]) for i in range(3)) == [0, 0, 1]


def test_folder_missing_or_empty(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as err:
        build({"name": "folder", "root": str(missing)})
    assert str(missing) in _one_line(err)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError) as err:
        build({"name": "folder", "root": str(tmp_path / "empty")})
    assert str(tmp_path / "empty") in _one_line(err)


def test_folder_rejects_other_channel_counts(tmp_path):
    _png(tmp_path / "a.png", (0, 0, 0))
    with pytest.raises(ValueError, match="channels"):
        build({"name": "folder", "root": str(tmp_path), "channels": 2})


# --- torchvision data sets ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_torchvision_sets_without_files_say_how_to_get_them(tmp_path, name):
    with pytest.raises(FileNotFoundError) as err:
        build({"name": name, "root": str(tmp_path)})
    message = _one_line(err)
    assert str(tmp_path) in message and "data.download=true" in message


def _idx(path, array: np.ndarray) -> None:
    """An MNIST idx file: magic (uint8 type 8, ndim), big-endian dims, raw bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _fake_mnist(root, prefix: str, n: int) -> None:
    images = np.zeros((n, 28, 28), np.uint8)
    images[:, :, 14:] = 255  # left half black, right half white
    _idx(root / "MNIST" / "raw" / f"{prefix}-images-idx3-ubyte", images)
    _idx(root / "MNIST" / "raw" / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)


def test_mnist_from_local_files(tmp_path):
    _fake_mnist(tmp_path, "train", 12)
    _fake_mnist(tmp_path, "t10k", 5)
    data = build({"name": "mnist", "root": str(tmp_path)})
    assert (len(data.train), len(data.test)) == (12, 5) and data.num_classes == 10 and data.flip is False
    x, y = _assert_item(data, data.train, 3)
    assert y.item() == 3 and torch.all(x[..., :14] == -1) and torch.all(x[..., 14:] == 1)
    small = build({"name": "mnist", "root": str(tmp_path), "image_size": 14})
    x, _ = _assert_item(small, small.test, 0)
    assert small.shape == (1, 14, 14) and torch.all(x[..., :6] == -1) and torch.all(x[..., 8:] == 1)


def _pickle(path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj))


def test_cifar10_from_local_files(tmp_path, monkeypatch):
    """A tiny fake ``cifar-10-batches-py``; torchvision's md5 check is replaced by an existence check."""
    exists = lambda path, md5=None: os.path.isfile(path)  # noqa: E731
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", exists)
    folder = tmp_path / "cifar-10-batches-py"
    pixels = np.concatenate([np.full(1024, 255), np.zeros(1024), np.full(1024, 51)]).astype(np.uint8)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        _pickle(folder / name, {"data": np.tile(pixels, (2, 1)), "labels": [7, 2]})
    _pickle(folder / "batches.meta", {"label_names": [f"class{i}" for i in range(10)]})
    data = build({"name": "cifar10", "root": str(tmp_path)})
    assert (len(data.train), len(data.test)) == (10, 2) and data.shape == (3, 32, 32) and data.flip is True
    x, y = _assert_item(data, data.test, 1)
    assert y.item() == 2
    expected = torch.tensor([1.0, -1.0, 51 / 255 * 2 - 1]).view(3, 1, 1).expand(3, 32, 32)
    assert torch.allclose(x, expected, atol=1e-6)


# --- rendering ------------------------------------------------------------------------------------


def test_render_points_draws_dark_mass_on_white(tmp_path):
    points = torch.tensor([[2.0, 2.0]] * 5 + [[-3.0, -1.0]])
    path = render_points(points, tmp_path / "sub" / "p.png", bins=9, extent=4.5)
    pixels = np.asarray(Image.open(path).convert("L"))
    assert pixels.shape == (9, 9)
    assert pixels[2, 6] == 0  # (2, 2) is column 6, row 2 from the top; the fullest bin is black
    assert 0 < pixels[5, 1] < 255  # the single point at (-3, -1) is grey
    assert (pixels == 255).sum() == 79


def test_render_density_peaks_at_the_mode(tmp_path):
    def log_p(x):
        return -((x - torch.tensor([1.0, 0.0])) ** 2).sum(-1)

    path = render_density(log_p, tmp_path / "a" / "b" / "d.png", bins=45, extent=4.5, batch_size=100)
    pixels = np.asarray(Image.open(path).convert("L"))
    assert pixels.shape == (45, 45)
    row, col = np.unravel_index(pixels.argmin(), pixels.shape)
    assert (row, col) == (22, 27) and pixels[row, col] == 0 and pixels[0, 0] == 255
    assert np.array_equal(pixels, pixels[::-1])  # symmetric about y = 0
