"""The same math on a CUDA device (skipped where none is visible)."""

from __future__ import annotations

import pytest
import torch

import genflow
from genflow.nets import MLP, UNet
from genflow.processes import DDPM, VPSDE, FlowMatching
from conftest import PROCESS_FACTORIES

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]
CUDA = torch.device("cuda")


def mlp() -> MLP:
    torch.manual_seed(0)
    return MLP(dim=3, hidden=64, depth=2).double()


@pytest.mark.parametrize("sampler,options", [("ddim", {}), ("ode", {"method": "rk4"})])
@pytest.mark.parametrize("name", ["ddpm_linear", "vpsde", "flow"])
def test_deterministic_samplers_agree_across_devices(name, sampler, options):
    process, net = PROCESS_FACTORIES[name](), mlp()
    noise = torch.randn(64, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cpu = genflow.sample(net, process, sampler=sampler, steps=20, noise=noise, **options)
    gpu = genflow.sample(net.to(CUDA), process, sampler=sampler, steps=20, noise=noise.to(CUDA), **options)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("sampler", ["ddpm", "euler_maruyama", "pc"])
def test_stochastic_samplers_on_cuda_are_reproducible_and_batch_independent(sampler):
    process = DDPM() if sampler == "ddpm" else VPSDE()
    net = mlp().to(CUDA)

    def draw(n):
        return genflow.sample(net, process, sampler=sampler, steps=10, shape=(n, 3), device=CUDA,
                              dtype=torch.float64, generator=torch.Generator().manual_seed(5))

    big, small = draw(8), draw(4)
    assert big.device.type == "cuda"
    torch.testing.assert_close(big[:4], small, rtol=0, atol=0)
    torch.testing.assert_close(draw(8), big, rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(PROCESS_FACTORIES))
def test_losses_backpropagate_on_cuda(name):
    process = PROCESS_FACTORIES[name]()
    net = MLP(dim=3, hidden=32, depth=2).to(CUDA)
    x0 = torch.randn(16, 3, device=CUDA)
    loss = process.loss(net, x0, generator=torch.Generator(CUDA).manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in net.parameters())


def test_likelihood_weighted_importance_sampled_loss_on_cuda():
    process = VPSDE(weighting="likelihood", importance_sampling=True)
    net = MLP(dim=3, hidden=32, depth=2).to(CUDA)
    loss = process.loss(net, torch.randn(16, 3, device=CUDA), generator=torch.Generator(CUDA).manual_seed(0))
    assert torch.isfinite(loss)


def test_unet_bf16_autocast_is_close_to_float32():
    torch.manual_seed(0)
    net = UNet(image_size=16, in_channels=3, channels=32, channel_mult=(1, 2), num_res_blocks=1,
               attention_resolutions=(8,)).to(CUDA)
    with torch.no_grad():  # the output layers start at zero (Ho et al.); give them weights to compare
        for p in net.parameters():
            if not p.any():
                p.normal_(0, 0.05)
    x, t = torch.randn(8, 3, 16, 16, device=CUDA), torch.rand(8, device=CUDA) * 999
    with torch.no_grad():
        ref = net(x, t)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            low = net(x, t)
    assert low.dtype == torch.bfloat16 or low.dtype == torch.float32
    rel = (low.float() - ref).norm() / ref.norm()
    assert rel < 0.05, rel


def test_flow_matching_ot_coupling_on_cuda():
    process = FlowMatching(coupling="ot")
    x0 = torch.randn(32, 2, device=CUDA)
    noise = torch.randn(32, 2, device=CUDA)
    paired = process.couple(x0, noise)
    assert paired.device.type == "cuda"
    # the pairing is a permutation of the noise that does not increase the transport cost
    assert torch.allclose(paired.sort(0).values, noise.sort(0).values)
    assert ((paired - x0).square().sum() <= (noise - x0).square().sum() + 1e-4)
