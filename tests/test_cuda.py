"""The same math on a CUDA device (skipped where none is visible)."""

from __future__ import annotations

import pytest
import torch

import genflow
from genflow.nets import MLP, UNet
from genflow.processes import DDPM, VPSDE, FlowMatching
from genflow.samplers import SAMPLERS, make
from conftest import PROCESS_FACTORIES

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]
CUDA = torch.device("cuda")


def mlp() -> MLP:
    torch.manual_seed(0)
    return MLP(dim=3, hidden=64, depth=2).double()


@pytest.mark.parametrize("sampler,options", [("ddim", {}), ("ode", {"method": "rk4"})])
@pytest.mark.parametrize("name", ["ddpm", "vpsde", "flow_matching"])
def test_deterministic_samplers_agree_across_devices(name, sampler, options):
    process, net = PROCESS_FACTORIES[name](), mlp()
    noise = torch.randn(64, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cpu = genflow.sample(net, process, sampler=sampler, steps=20, noise=noise, **options)
    gpu = genflow.sample(net.to(CUDA), process, sampler=sampler, steps=20, noise=noise.to(CUDA), **options)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-9, atol=1e-9)


def fixed_options(sampler: str) -> dict:
    """Options that make ``sampler`` fixed-step (the ode sampler's default method is adaptive)."""
    return {"method": "rk4"} if not make(sampler, 8).fixed_step else {}


def runnable_process(sampler: str):
    """VPSDE, or DDPM for a sampler that needs its discrete steps."""
    try:
        make(sampler, 8, **fixed_options(sampler)).check(VPSDE())
        return VPSDE()
    except ValueError:
        return DDPM()


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_samplers_on_cuda_are_reproducible_and_batch_independent(sampler):
    process = runnable_process(sampler)
    net = mlp().to(CUDA)

    def draw(n):
        return genflow.sample(net, process, sampler=sampler, steps=10, shape=(n, 3), device=CUDA,
                              dtype=torch.float64, generator=torch.Generator().manual_seed(5),
                              **fixed_options(sampler))

    big, small = draw(8), draw(4)
    assert big.device.type == "cuda"
    # the same noise per sample at any batch size (a noise mix-up would differ by O(1)); cuBLAS may
    # pick another float64 kernel, so another summation order, for another batch size
    torch.testing.assert_close(big[:4], small, rtol=0, atol=1e-12)
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


# ------------------------------------------------------------ the GPU fast path (genflow.accel)
FIXED_STEP = [(name, fixed_options(name)) for name in sorted(SAMPLERS)]


def graph_unet(device: torch.device, **kw) -> UNet:
    """The small test UNet with every weight perturbed (outputs depend on the inputs), frozen."""
    from test_nets import randomize, small_unet

    torch.manual_seed(0)
    return randomize(small_unet(**kw)).to(device).requires_grad_(False)


@pytest.fixture
def no_tf32():
    """Full fp32 matmuls and convolutions at the test's start (cuDNN's TF32 is on by default and may
    pick other algorithms, so other roundings, for other batch sizes); whatever the test sets (a
    Trainer sets trainer.tf32), the settings from before are restored after."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("sampler,options", FIXED_STEP)
def test_cuda_graph_samples_equal_eager_samples(sampler, options, precision, no_tf32):
    from genflow.accel import FastModel
    from genflow.samplers import CUDAGraphModel
    process = DDPM() if sampler in ("ddim", "ddpm") else runnable_process(sampler)
    net = graph_unet(CUDA)
    model = FastModel(net, precision)

    def draw(m, n):
        return genflow.sample(m, process, sampler=sampler, steps=8, shape=(n, 1, 8, 8), device=CUDA,
                              generator=torch.Generator().manual_seed(3), **options)

    eager = draw(model, 8)
    graphed_model = CUDAGraphModel(model)
    graphed = draw(graphed_model, 8)
    tol = 1e-5 if precision == "fp32" else 2e-2  # the same kernels replayed; bf16: its rounding
    torch.testing.assert_close(graphed, eager, rtol=tol, atol=tol)
    small = draw(graphed_model, 4)  # a second capture; a sample does not depend on its batch
    assert len(graphed_model.graphs) == 2 and len(graphed_model.streams) == 1  # one capture stream, one pool
    torch.testing.assert_close(small, graphed[:4], rtol=tol, atol=2 * tol)


def test_cuda_graph_of_a_guided_class_conditional_net_equals_eager(no_tf32):
    """Labels are inputs of the recorded call (copied in at each replay), and the guided batch is
    the doubled one; the class embedding's label check must stay out of the capture."""
    from genflow.samplers import CUDAGraphModel

    net = graph_unet(CUDA, num_classes=3)
    process = DDPM()

    def draw(m, labels):
        return genflow.sample(m, process, sampler="ddim", steps=8, shape=(4, 1, 8, 8), device=CUDA,
                              generator=torch.Generator().manual_seed(3), cond={"y": labels}, guidance=2.0)

    first, second = torch.tensor([0, 1, 2, 0], device=CUDA), torch.tensor([2, 2, 1, 0], device=CUDA)
    graphed = CUDAGraphModel(net)
    for labels in (first, second):  # the second batch replays the graph recorded with the first labels
        torch.testing.assert_close(draw(graphed, labels), draw(net, labels), rtol=1e-5, atol=1e-5)
    assert len(graphed.graphs) == 1


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_cuda_graph_on_a_device_that_is_not_current(no_tf32):
    from genflow.samplers import CUDAGraphModel
    other = torch.device("cuda", 1)
    net = graph_unet(other)
    assert torch.cuda.current_device() == 0
    draws = [genflow.sample(m, DDPM(), sampler="ddim", steps=8, shape=(4, 1, 8, 8), device=other,
                            generator=torch.Generator().manual_seed(3)) for m in (net, CUDAGraphModel(net))]
    torch.testing.assert_close(draws[1], draws[0], rtol=1e-5, atol=1e-5)


def cuda_tiny(run_dir, *extra):
    from test_training import tiny

    return [o for o in tiny(run_dir) if o != "trainer.device=cpu"] + ["trainer.device=cuda", *extra]


def test_trainer_fast_path_on_cuda_compiles_fuses_and_keeps_checkpoint_keys(tmp_path, no_tf32):
    from genflow.training import checkpoint
    from genflow.training.config import compose
    from genflow.training.trainer import Trainer

    trainer = Trainer(compose(cuda_tiny(tmp_path, "trainer.steps=3", "trainer.ckpt_every=3",
                                        "trainer.precision=bf16", "trainer.compile=true")))
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert all(group["fused"] for group in trainer.opt.param_groups)
    trainer.fit()
    assert trainer.model.eager_reason is None, trainer.model.eager_reason  # inductor compiled it
    assert trainer.skipped == 0
    state = checkpoint.load(tmp_path / "checkpoints" / "last.pt")
    genflow.nets.build(state["config"]["model"]).load_state_dict(state["model"])  # strict: the bare keys
    Trainer(compose(cuda_tiny(tmp_path / "off", "trainer.tf32=false")))
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32


def test_trainer_channels_last_bf16_images_on_cuda(tmp_path):
    from genflow.training.config import compose
    from genflow.training.trainer import Trainer

    overrides = [o for o in cuda_tiny(tmp_path) if not o.startswith(("data", "model", "process"))]
    trainer = Trainer(compose([*overrides, "model.channels=8", "model.norm_groups=8", "trainer.steps=3",
                               "trainer.ckpt_every=3", "trainer.num_samples=4", "sampler.steps=2",
                               "trainer.precision=bf16", "trainer.channels_last=true", "trainer.num_workers=1"]))
    trainer.fit()
    assert trainer.channels_last and trainer.skipped == 0
    assert (tmp_path / "samples" / "step_0000003.png").exists()


def test_sample_cli_cuda_graph_bf16_matches_eager(tmp_path):
    import numpy as np

    from genflow.cli.sample import main as sample_main
    from test_training import fit

    fit(tmp_path / "run", "trainer.steps=2", "trainer.ckpt_every=2")
    common = ["--ckpt", str(tmp_path / "run" / "checkpoints" / "last.pt"), "--device", "cuda", "--sampler", "ddim",
              "--steps", "10", "--num", "6", "--batch-size", "4", "--no-progress", "--precision", "bf16"]
    assert sample_main([*common, "--out", str(tmp_path / "eager")]) == 0
    assert sample_main([*common, "--out", str(tmp_path / "graph"), "--cuda-graph"]) == 0
    eager, graph = (np.load(tmp_path / d / "samples.npz")["samples"] for d in ("eager", "graph"))
    np.testing.assert_allclose(graph, eager, rtol=2e-2, atol=2e-2)
