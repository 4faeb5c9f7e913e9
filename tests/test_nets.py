"""Backbones: the CIFAR-10 UNet's size, shapes, independence of batch elements, conditioning."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from genflow import nets

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def randomize(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Perturb every weight (the zero-initialized output layers included) so outputs depend on inputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return net.eval()


def small_unet(**kw) -> nets.UNet:
    args = dict(image_size=8, in_channels=1, channels=16, channel_mult=(1, 2), num_res_blocks=1,
                attention_resolutions=(4,), dropout=0.0, norm_groups=8)
    return nets.UNet(**{**args, **kw})


def test_cifar10_config_matches_ho_et_al_parameter_count():
    net = nets.build({**OmegaConf.load(CONFIGS / "model" / "unet_cifar10.yaml"), "time_scale": 1.0})
    count = sum(p.numel() for p in net.parameters())
    assert abs(count - 35.7e6) / 35.7e6 < 0.02, count  # the bound
    assert count == 35_746_307  # exactly Ho et al.'s CIFAR-10 model (their reference code)


@pytest.mark.parametrize(
    "size,channels,mult,attn",
    [(8, 1, (1, 2), (4,)), (28, 1, (1, 2, 2), (7,)), (32, 3, (1, 2, 2, 2), (16,)), (7, 2, (1, 2, 2), (4,)), (20, 4, (1,), ())],
)
def test_unet_output_shape(size, channels, mult, attn):
    net = small_unet(image_size=size, in_channels=channels, channel_mult=mult, attention_resolutions=attn).eval()
    x = torch.randn(2, channels, size, size)
    assert net(x, torch.tensor([3.0, 17.0])).shape == x.shape


def test_unet_non_square_images():
    net = small_unet(channel_mult=(1, 2, 2)).eval()
    x = torch.randn(2, 1, 12, 20)
    assert net(x, torch.rand(2)).shape == x.shape


def test_attention_is_placed_at_the_asked_resolutions():
    net = small_unet(image_size=16, channel_mult=(1, 2, 2), attention_resolutions=(8,))
    attn = nets.unet.AttentionBlock
    assert [any(isinstance(a, attn) for a in level.attns) for level in net.down] == [False, True, False]
    assert [any(isinstance(a, attn) for a in level.attns) for level in net.up] == [False, True, False]
    assert [type(m).__name__ for m in net.mid] == ["ResBlock", "AttentionBlock", "ResBlock"]
    with pytest.raises(ValueError, match=r"attention_resolutions \[15\] not among this UNet's resolutions \[16, 8, 4\]"):
        small_unet(image_size=16, channel_mult=(1, 2, 2), attention_resolutions=(15,))


@pytest.mark.parametrize("make", [lambda: small_unet(), lambda: nets.MLP(dim=4, hidden=32, depth=2)])
def test_no_cross_talk_between_batch_elements(make):
    net = randomize(make())
    shape = (5, 1, 8, 8) if isinstance(net, nets.UNet) else (5, 4)
    gen = torch.Generator().manual_seed(1)
    x, t = torch.randn(shape, generator=gen), torch.rand(5, generator=gen) * 100
    out = net(x, t)
    x2 = x.clone()
    x2[1:] = torch.randn(x2[1:].shape, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(net(x2, t)[0], out[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(net(x[:1], t[:1])[0], out[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make", [lambda: small_unet(num_classes=3), lambda: nets.MLP(dim=2, hidden=32, num_classes=3)])
def test_class_conditioning_changes_the_output(make):
    net = randomize(make())
    x = torch.randn(4, 1, 8, 8) if isinstance(net, nets.UNet) else torch.randn(4, 2)
    t = torch.full((4,), 10.0)
    with torch.no_grad():
        a, b, null = net(x, t, y=torch.zeros(4, dtype=torch.long)), net(x, t, y=torch.ones(4, dtype=torch.long)), net(x, t)
    assert (a - b).abs().max() > 1e-3
    assert (a - null).abs().max() > 1e-3
    with pytest.raises(ValueError, match="class labels must lie"):
        net(x, t, y=torch.full((4,), 7))


def test_time_changes_the_output_for_both_embeddings():
    for kind, times in (("sinusoidal", (1.0, 500.0)), ("fourier", (0.1, 0.9))):
        net = randomize(nets.MLP(dim=2, hidden=32, time_embedding=kind))
        x = torch.randn(3, 2)
        with torch.no_grad():
            assert (net(x, torch.full((3,), times[0])) - net(x, torch.full((3,), times[1]))).abs().max() > 1e-3


def test_mlp_accepts_any_shape_of_the_right_size():
    net = nets.MLP(dim=4, hidden=16)
    assert net(torch.randn(3, 1, 2, 2), torch.rand(3)).shape == (3, 1, 2, 2)
    with pytest.raises(ValueError, match="4 values per example"):
        net(torch.randn(3, 5), torch.rand(3))


def test_unet_refuses_wrong_input():
    net = small_unet()
    with pytest.raises(ValueError, match=r"expects images \[B, 1, H, W\]"):
        net(torch.randn(2, 3, 8, 8), torch.rand(2))
    with pytest.raises(ValueError, match="t must be a 1-D tensor of length 2"):
        net(torch.randn(2, 1, 8, 8), torch.rand(3))
    with pytest.raises(ValueError, match="without num_classes"):
        net(torch.randn(2, 1, 8, 8), torch.rand(2), y=torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="norm_groups"):
        small_unet(channels=12)


def test_unet_trains_one_step():
    """Gradients reach the time embedding once the zero-initialized layers have moved (3 steps)."""
    net = small_unet()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x, t = torch.randn(4, 1, 8, 8), torch.rand(4) * 100
    for _ in range(3):  # conv_out, then the blocks' zeroed conv2, then everything
        opt.zero_grad()
        ((net(x, t) - x) ** 2).mean().backward()
        opt.step()
    assert net.time_embed.mlp[0].weight.grad.abs().sum() > 0
