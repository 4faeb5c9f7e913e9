"""Inception-v3 features for FID from a weights file: the two kinds of file, the FID network's
TensorFlow pool branches and input scaling (known answers on tiny inputs), 2048-d pool features,
refusals, and FD through genflow-eval.

Real weights cannot be downloaded here, so every file is a random state dict of the right keys
and shapes (He-initialized convolutions, so the features are of order one); whether the real FID
weights reproduce published FIDs is not tested.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from genflow.metrics.inception import (
    TFInceptionA,
    TFInceptionE,
    TFInceptionEMaxPool,
    WeightsError,
    build_inception,
    identify,
    inception_features,
)

KINDS = ("torchvision", "fid")


def random_state(kind: str, seed: int = 0) -> dict:
    """A state dict of ``kind`` with He-normal convolutions (BatchNorm stays the identity)."""
    g = torch.Generator().manual_seed(seed)
    state = build_inception(kind).state_dict()
    for name, value in state.items():
        if name.endswith("conv.weight") or name.endswith("fc.weight"):
            fan_in = value[0].numel()
            value.copy_(torch.randn(value.shape, generator=g) * (2 / fan_in) ** 0.5)
    return state


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inception")
    paths = {}
    for kind in KINDS:
        paths[kind] = folder / f"{kind}.pth"
        torch.save(random_state(kind), paths[kind])
    return paths


def images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_the_loader_tells_the_two_kinds_apart(weights):
    tv, fid = inception_features(weights["torchvision"]), inception_features(weights["fid"])
    assert (tv.kind, fid.kind) == KINDS
    assert "AuxLogits.fc.weight" in torch.load(weights["torchvision"], weights_only=True)  # as torchvision ships it
    assert tv.net.transform_input and not fid.net.transform_input
    assert type(tv.net.Mixed_5b).__name__ == "InceptionA" and type(tv.net.Mixed_7c).__name__ == "InceptionE"
    assert isinstance(fid.net.Mixed_5b, TFInceptionA) and isinstance(fid.net.Mixed_7b, TFInceptionE)
    assert isinstance(fid.net.Mixed_7c, TFInceptionEMaxPool)
    file = torch.load(weights["fid"], weights_only=True)
    torch.testing.assert_close(fid.net.Mixed_7c.branch_pool.conv.weight, file["Mixed_7c.branch_pool.conv.weight"],
                               rtol=0, atol=0)
    assert fid.sha256 == hashlib.sha256(weights["fid"].read_bytes()).hexdigest()


def pool_input(block, x: torch.Tensor) -> torch.Tensor:
    """What ``block``'s pool branch convolves: the pooled input (caught by a hook)."""
    seen = []
    handle = block.branch_pool.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    with torch.no_grad():
        block(x)
    handle.remove()
    return seen[-1]


def test_fid_pool_branches_leave_padding_out_and_the_last_block_max_pools(weights):
    tv, fid = inception_features(weights["torchvision"]).net, inception_features(weights["fid"]).net
    constant = torch.full((1, 192, 4, 4), 0.5)
    torch.testing.assert_close(pool_input(fid.Mixed_5b, constant), constant)  # padding left out of the mean
    border = pool_input(tv.Mixed_5b, constant)[0, 0]  # torchvision counts the padded zeros
    assert (border[0, 0].item(), border[0, 1].item(), border[1, 1].item()) == pytest.approx((0.5 * 4 / 9, 0.5 * 6 / 9,
                                                                                              0.5))
    torch.testing.assert_close(pool_input(fid.Mixed_6b, torch.full((1, 768, 3, 3), 2.0)), torch.full((1, 768, 3, 3),
                                                                                                      2.0))
    spike = torch.zeros(1, 2048, 4, 4)
    spike[0, 0, 1, 1] = 5.0
    expected = torch.zeros(4, 4)
    expected[:3, :3] = 5.0  # a 3x3 max pool spreads the spike unchanged
    torch.testing.assert_close(pool_input(fid.Mixed_7c, spike)[0, 0], expected)
    torch.testing.assert_close(pool_input(tv.Mixed_7c, spike)[0, 0], expected / 9)
    corner = torch.zeros(1, 1280, 3, 3)
    corner[0, 0, 0, 0] = 6.0
    pooled = pool_input(fid.Mixed_7b, corner)[0, 0]  # the average over the 4 or 6 pixels inside the image
    torch.testing.assert_close(pooled[:2, :2], torch.tensor([[6 / 4, 6 / 6], [6 / 6, 6 / 9]]))


def test_both_kinds_feed_the_first_convolution_the_image_in_minus_one_to_one(weights):
    """The FID network takes the resized image as it is; torchvision's takes it ImageNet-normalized
    and its transform_input maps that back to [-1, 1]: the same tensor reaches Conv2d_1a."""
    gray = torch.full((2, 1, 8, 8), 0.3)
    tv, fid = inception_features(weights["torchvision"]), inception_features(weights["fid"])
    torch.testing.assert_close(fid.prepare(gray), torch.full((2, 3, 299, 299), 0.3))
    normalized = tv.prepare(gray)
    for c, (mean, std) in enumerate(zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))):
        torch.testing.assert_close(normalized[:, c], torch.full((2, 299, 299), (0.65 - mean) / std))
    torch.testing.assert_close(tv.net._transform_input(normalized), torch.full((2, 3, 299, 299), 0.3))
    x = images(1)
    torch.testing.assert_close(fid.prepare(x)[:, 1:2], F.interpolate(x, size=(299, 299), mode="bilinear"))


def test_features_are_the_2048_d_pool_deterministic_and_independent_of_the_batch(weights):
    fid = inception_features(weights["fid"])
    x = images(2)
    caught = []
    handle = fid.net.Mixed_7c.register_forward_hook(lambda module, args, out: caught.append(out))
    a = fid(x, batch_size=2)
    handle.remove()
    assert a.shape == (2, 2048) and a.dtype == torch.float32 and 0.01 < a.std().item() < 100
    torch.testing.assert_close(a, caught[0].mean(dim=(2, 3)))  # the global average pool, before dropout and fc
    torch.testing.assert_close(fid(x, batch_size=1), a, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(a[0], a[1])
    # the same convolutions with torchvision's pool branches give other features
    tv = inception_features(weights["torchvision"])
    assert (tv(x[:1]) - a[:1]).abs().max() > 1e-3 * a.abs().max()


def refused(path, message: str) -> str:
    with pytest.raises(WeightsError) as err:
        inception_features(path)
    text = str(err.value)
    assert "\n" not in text and message in text, text
    return text


class WritesAFile:
    def __init__(self, path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_files_that_are_not_inception_weights_are_refused_in_one_line(tmp_path):
    from torchvision.models import resnet18

    resnet = tmp_path / "resnet.pth"
    torch.save(resnet18(weights=None).state_dict(), resnet)
    refused(resnet, "is not Inception-v3 weights of a known kind (fc.weight of shape (1000, 512); torchvision's "
                    "have fc.weight (1000, 2048), the FID network's (1008, 2048))")
    nested = tmp_path / "ckpt.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "step": 3}, nested)
    refused(nested, "is not a state dict (a flat mapping of names to tensors)")
    cut = tmp_path / "cut.pth"
    cut.write_bytes(resnet.read_bytes()[:2000])
    refused(cut, "(truncated or not a torch file)")
    marker, evil = tmp_path / "pwned", tmp_path / "evil.pth"
    torch.save({"fc.weight": torch.zeros(1008, 2048), "x": WritesAFile(marker)}, evil)
    refused(evil, "refusing to load")
    assert not marker.exists()
    refused(tmp_path / "missing.pth", "Inception weights file not found")
    state = build_inception("fid").state_dict()
    del state["Mixed_6b.branch_pool.conv.weight"]
    state["Mixed_5b.branch_pool.bn.weight"] = torch.ones(7)
    state["extra.weight"] = torch.ones(1)
    with pytest.raises(WeightsError, match="looks like fid Inception-v3 weights but lacks Mixed_6b.branch_pool.conv"
                                           ".weight; has unexpected extra.weight; has wrong shapes for Mixed_5b."):
        identify(state, tmp_path / "x.pth")


@pytest.fixture(scope="module")
def digits_ckpt(tmp_path_factory):
    """fd and pr read only the data config of a checkpoint: one that names the digits is enough."""
    from genflow.training import checkpoint

    folder = tmp_path_factory.mktemp("digits")
    checkpoint.save({"step": 0, "config": {"data": {"name": "digits"}}, "model": {}}, folder)
    return folder / "last.pt"


def test_fd_through_genflow_eval_with_inception_weights(weights, digits_ckpt, tmp_path, capsys, monkeypatch):
    """Two test digits against themselves: FD 0; against two others: FD > 0, the data's statistics
    now from the cache; a foreign weights file: exit 1, one line."""
    from genflow.cli.evaluate import main
    from genflow.data import digits

    monkeypatch.setenv("GENFLOW_CACHE", str(tmp_path / "cache"))
    test = digits("test").tensors[0]
    np.savez(tmp_path / "same.npz", samples=test[:2].numpy())
    np.savez(tmp_path / "other.npz", samples=test[2:4].numpy())
    argv = ["fd", "--ckpt", str(digits_ckpt), "--split", "test", "--num", "2", "--inception-weights",
            str(weights["fid"]), "--batch-size", "2"]
    results = []
    for samples in ["same", "other"]:
        assert main([*argv, "--samples", str(tmp_path / f"{samples}.npz")]) == 0
        results.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
    same, other = results
    assert same["value"] == pytest.approx(0.0, abs=1e-6 * other["value"]) and other["value"] > 0.1
    assert (same["reference"], other["reference"]) == ("computed", "cached")
    assert (same["samples"], same["data"]) == (2, 2)
    sha = hashlib.sha256(weights["fid"].read_bytes()).hexdigest()
    assert same["feature_space"] == f"inception-v3 fid sha256:{sha}" and "fid weights" in same["features"]
    assert os.path.dirname(same["reference_cache"]) == str(tmp_path / "cache" / "reference_stats")
    foreign = tmp_path / "foreign.pth"
    torch.save({"fc.weight": torch.zeros(10, 2048)}, foreign)
    for command in ("fd", "pr"):
        assert main([command, "--ckpt", str(digits_ckpt), "--samples", str(tmp_path / "same.npz"),
                     "--inception-weights", str(foreign)]) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith(f"genflow-eval: error: {foreign} is not Inception-v3 weights")
