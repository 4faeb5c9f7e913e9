"""The GPU fast path on the CPU: compile with its eager fallback, channels-last, precision names,
optimizer flags, persistent loader workers, genflow-sample's switches and the benchmark's smoke run.
The same switches on a GPU are checked in tests/test_cuda.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

import genflow
from genflow import accel, nets
from genflow.cli.sample import main as sample_main
from genflow.nets import MLP, UNet
from genflow.processes import DDPM
from genflow.samplers import SAMPLERS, CUDAGraphModel, check_graphable, make
from genflow.training import checkpoint
from genflow.training.config import compose
from genflow.training.trainer import Trainer
from test_nets import randomize
from test_training import ROOT, fit, losses, tiny

STEPS = ("trainer.steps=3", "trainer.ckpt_every=3")
# The digits UNet at 8 channels (test_training's image run): images for channels-last.
IMAGES = ["model.channels=8", "model.norm_groups=8", "trainer.num_samples=4", "sampler.steps=2"]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles from scratch (dynamo caches per code object and backend) and counts its
    own captured graphs (reset() keeps dynamo's counters)."""
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def failing_backend(gm, example_inputs):
    raise RuntimeError("no C++ compiler found")


def image_fit(run_dir: Path, *extra: str) -> Trainer:
    overrides = [o for o in tiny(run_dir) if not o.startswith(("data", "model", "process"))]
    trainer = Trainer(compose([*overrides, *IMAGES, *STEPS, *extra]))
    trainer.fit()
    return trainer


def ckpt_model(run_dir: Path) -> dict:
    return checkpoint.load(run_dir / "checkpoints" / "last.pt")["model"]


def tiny_unet(**kw) -> UNet:
    torch.manual_seed(0)
    return randomize(UNet(image_size=8, in_channels=1, channels=8, channel_mult=(1, 2), num_res_blocks=1,
                          attention_resolutions=(4,), norm_groups=8, **kw)).eval()


# ------------------------------------------------------------------ compile
def test_a_failed_compile_falls_back_to_eager_in_one_line(tmp_path, monkeypatch, capsys):
    eager = fit(tmp_path / "eager", *STEPS)
    monkeypatch.setitem(accel.COMPILE_OPTIONS, "backend", failing_backend)
    capsys.readouterr()
    compiled = fit(tmp_path / "compiled", *STEPS, "trainer.compile=true")
    said = [line for line in capsys.readouterr().err.splitlines() if "torch.compile" in line]
    assert said == ["genflow: torch.compile is not available here (RuntimeError: no C++ compiler found); running eager"]
    assert compiled.model.eager_reason == "RuntimeError: no C++ compiler found"
    assert losses(tmp_path / "compiled") == losses(tmp_path / "eager")  # the same eager steps
    for key, value in ckpt_model(tmp_path / "eager").items():
        torch.testing.assert_close(ckpt_model(tmp_path / "compiled")[key], value, rtol=0, atol=0)
    assert compiled.net.state_dict().keys() == eager.net.state_dict().keys()


def test_compiled_training_runs_the_captured_graphs_and_keeps_checkpoint_keys(tmp_path, monkeypatch):
    graphs = []

    def recording(gm, example_inputs):  # dynamo's captured graph, run as traced (no kernel fusion)
        graphs.append(gm)
        return gm.forward

    monkeypatch.setitem(accel.COMPILE_OPTIONS, "backend", recording)
    compiled = fit(tmp_path / "compiled", *STEPS, "trainer.compile=true")
    assert graphs and compiled.model.eager_reason is None
    fit(tmp_path / "eager", *STEPS)
    got, want = losses(tmp_path / "compiled"), losses(tmp_path / "eager")
    assert [s for s, _ in got] == [s for s, _ in want]
    assert all(abs(a - b) <= 1e-6 * abs(b) for (_, a), (_, b) in zip(got, want)), (got, want)
    keys = ckpt_model(tmp_path / "compiled").keys()
    assert keys == ckpt_model(tmp_path / "eager").keys() and not any("_orig_mod" in k for k in keys)


def test_compile_unavailable_at_construction_runs_eager(monkeypatch, capsys):
    def unsupported(*args, **kwargs):
        raise RuntimeError("Windows not yet supported for torch.compile")

    monkeypatch.setattr(torch, "compile", unsupported)
    net = tiny_unet()
    model = accel.Compiled(net)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3.0, 700.0])
    torch.testing.assert_close(model(x, t), net(x, t), rtol=0, atol=0)
    assert capsys.readouterr().err.count("running eager") == 1
    assert list(model.module.state_dict()) == list(net.state_dict())


def test_a_model_error_under_compile_stays_an_error_and_compile_stays_on(monkeypatch):
    monkeypatch.setitem(accel.COMPILE_OPTIONS, "backend", lambda gm, inputs: gm.forward)
    model = accel.Compiled(tiny_unet())
    with pytest.raises(ValueError, match=r"UNet expects images \[B, 1, H, W\]"):
        model(torch.randn(2, 3, 8, 8), torch.zeros(2))
    assert model.eager_reason is None


def test_a_cnf_trains_eagerly_under_compile_with_one_line(tmp_path, monkeypatch, capsys):
    # AOTAutograd (inductor's front end) refuses double backward, which the CNF's divergence needs
    monkeypatch.setitem(accel.COMPILE_OPTIONS, "backend", "aot_eager")
    trainer = fit(tmp_path, "process=cnf", "process.steps=2", "trainer.steps=2", "trainer.ckpt_every=2",
                  "trainer.compile=true")
    assert trainer.step == 2 and trainer.skipped == 0 and trainer.model is trainer.net
    said = [line for line in capsys.readouterr().err.splitlines() if "torch.compile" in line]
    assert len(said) == 1 and "differentiates the net twice" in said[0] and said[0].endswith("running eager")


def can_build_cpu_kernels() -> bool:
    """What inductor needs on the CPU: a C++ compiler (``$CXX``, else g++) and Python's headers."""
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    return shutil.which(os.environ.get("CXX", "g++")) is not None and headers.exists()


NEEDS_CXX = pytest.mark.skipif(not can_build_cpu_kernels(),
                               reason="inductor on the CPU needs a C++ compiler (g++) and Python's headers")


@NEEDS_CXX
def test_inductor_compiles_training_on_cpu_and_matches_eager(tmp_path, capsys):
    """The real compiler, not a stand-in backend: inductor generates and builds C++ kernels for the
    forward and backward graphs (about 15 s on 2 cores, cold cache), and the steps match eager ones."""
    eager = fit(tmp_path / "eager", *STEPS)
    compiled = fit(tmp_path / "compiled", *STEPS, "trainer.compile=true")
    assert "running eager" not in capsys.readouterr().err
    assert compiled.model.eager_reason is None and counters["stats"]["unique_graphs"] >= 1
    got, want = losses(tmp_path / "compiled"), losses(tmp_path / "eager")
    assert [s for s, _ in got] == [s for s, _ in want]
    assert all(abs(a - b) <= 1e-4 * abs(b) for (_, a), (_, b) in zip(got, want)), (got, want)
    assert ckpt_model(tmp_path / "compiled").keys() == eager.net.state_dict().keys()


def test_a_class_conditional_net_compiles_into_one_graph():
    """The class embedding's label check reads a value back to the host: a graph break under
    torch.compile and an error inside a CUDA-graph capture. It is skipped while tracing, so the
    conditional net compiles whole (fullgraph=True refuses any break); eager calls still check."""
    net = tiny_unet(num_classes=3)
    compiled = torch.compile(net, backend="eager", fullgraph=True)
    x, t, y = torch.randn(4, 1, 8, 8), torch.tensor([1.0, 300.0, 600.0, 999.0]), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, t, y=y), net(x, t, y=y), rtol=0, atol=0)
        with pytest.raises(ValueError, match=r"class labels must lie in 0..3 \(3 = null class\)"):
            net(x, t, y=torch.tensor([0, 1, 2, 4]))


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_every_sampler_calls_a_compiled_net_with_one_input_layout(sampler):
    """One captured graph per sampling run: every call passes a contiguous time vector of the
    samples' dtype (the ODE's expanded scalar time once made a second graph)."""
    graphs = []
    model = accel.Compiled(MLP(dim=2, hidden=16, depth=1).eval(),
                           backend=lambda gm, inputs: graphs.append(gm) or gm.forward)
    options = {"method": "rk4"} if sampler == "ode" else {}
    genflow.sample(model, DDPM(timesteps=100), sampler=sampler, steps=4, shape=(8, 2), **options)
    assert len(graphs) == 1


# ------------------------------------------------------------ channels-last
def test_channels_last_trains_images_like_the_default_layout(tmp_path):
    plain = image_fit(tmp_path / "plain")
    fast = image_fit(tmp_path / "fast", "trainer.channels_last=true")
    conv = next(p for p in fast.net.parameters() if p.ndim == 4 and p.shape[1] > 1 and p.shape[2] > 1)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    got, want = losses(tmp_path / "fast"), losses(tmp_path / "plain")
    assert all(abs(a - b) <= 1e-5 * abs(b) for (_, a), (_, b) in zip(got, want)), (got, want)
    # (Weights are not compared: Adam's first steps move a weight by ~lr * sign(gradient), and the
    # zero-initialised layers' gradients are rounding-sized, so their signs differ by layout.)
    state = checkpoint.load(tmp_path / "fast" / "checkpoints" / "last.pt")
    nets.build(state["config"]["model"]).load_state_dict(state["model"])  # strict: same keys and shapes
    assert ckpt_model(tmp_path / "fast").keys() == plain.net.state_dict().keys()
    assert (tmp_path / "fast" / "samples" / "step_0000003.png").exists()


def test_channels_last_leaves_vector_data_alone(tmp_path):
    plain = fit(tmp_path / "plain", *STEPS)
    fast = fit(tmp_path / "fast", *STEPS, "trainer.channels_last=true")
    assert not fast.channels_last
    assert losses(tmp_path / "fast") == losses(tmp_path / "plain")
    assert all(torch.equal(a, b) for a, b in zip(fast.net.parameters(), plain.net.parameters()))


def test_fast_model_channels_last_and_bf16_against_the_plain_net():
    net = tiny_unet()
    x, t = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([1.0, 400.0, 999.0])
    with torch.no_grad():
        want = net(x, t)
        last = accel.fast_model(tiny_unet(), channels_last_format=True)(x, t)
        low = accel.fast_model(tiny_unet(), precision="bf16")(x, t)
    torch.testing.assert_close(last, want, rtol=1e-5, atol=1e-5)
    assert low.dtype == torch.float32  # back in the sampler's dtype
    rel = ((low - want).norm() / want.norm()).item()
    assert 0 < rel < 0.05, rel  # bf16 rounding: not exact, not far


# ---------------------------------------------------- config and optimizer
def test_precision_is_named_fp32_and_off_is_an_alias(tmp_path):
    assert compose(tiny(tmp_path))["trainer"]["precision"] == "fp32"
    assert compose(tiny(tmp_path, "trainer.precision=off"))["trainer"]["precision"] == "fp32"
    with pytest.raises(ValueError, match="trainer.precision must be one of fp32, bf16, fp16; got 'fp8'"):
        compose(tiny(tmp_path, "trainer.precision=fp8"))


def test_cpu_runs_keep_torch_defaults_for_adamw_and_tf32(tmp_path):
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = not before
    try:
        trainer = Trainer(compose(tiny(tmp_path, "trainer.tf32=true")))
        assert torch.backends.cuda.matmul.allow_tf32 == (not before)  # untouched off CUDA
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    assert accel.adamw_options(trainer.net.parameters()) == {"fused": None, "foreach": None}
    assert all(g["fused"] is None and g["foreach"] is None for g in trainer.opt.param_groups)


def test_resume_takes_the_optimizer_flags_of_this_device(tmp_path):
    fit(tmp_path, "trainer.steps=2", "trainer.ckpt_every=2")
    state = checkpoint.load(tmp_path / "checkpoints" / "last.pt")
    for group in state["optimizer"]["param_groups"]:
        group["fused"] = True  # as a fused CUDA run writes it
    state.pop("format")
    checkpoint.save(state, tmp_path / "checkpoints")
    resumed = fit(tmp_path, "trainer.steps=4", "trainer.ckpt_every=2")
    assert resumed.step == 4 and all(g["fused"] is None for g in resumed.opt.param_groups)


def test_persistent_loader_workers_take_the_same_examples_across_epochs(tmp_path):
    # 64 examples at batch 32: two steps per epoch, so five steps cross two epoch boundaries
    steps = ("trainer.steps=5", "trainer.ckpt_every=5", "data.size=64")
    fit(tmp_path / "main", *steps)
    workers = fit(tmp_path / "workers", *steps, "trainer.num_workers=1")
    assert losses(tmp_path / "workers") == losses(tmp_path / "main")
    assert workers.tc.num_workers == 1


# ------------------------------------------------------------ genflow-sample
@pytest.fixture(scope="module")
def toy_ckpt(tmp_path_factory) -> str:
    run = tmp_path_factory.mktemp("toy")
    fit(run, "trainer.steps=2", "trainer.ckpt_every=2")
    return str(run / "checkpoints" / "last.pt")


def draw(ckpt: str, out: Path, *flags: str) -> np.ndarray:
    argv = ["--ckpt", ckpt, "--sampler", "ddim", "--steps", "5", "--num", "6", "--no-progress", "--out", str(out)]
    assert sample_main([*argv, *flags]) == 0
    return np.load(out / "samples.npz")["samples"]


def test_sample_cli_precision_and_compile_switches(toy_ckpt, tmp_path, monkeypatch):
    plain = draw(toy_ckpt, tmp_path / "plain")
    low = draw(toy_ckpt, tmp_path / "bf16", "--precision", "bf16")
    spread = np.abs(low - plain).max() / np.abs(plain).max()
    assert 0 < spread < 0.05, spread  # the network in bf16, the sampler in fp32
    graphs = []
    monkeypatch.setitem(accel.COMPILE_OPTIONS, "backend", lambda gm, inputs: graphs.append(gm) or gm.forward)
    compiled = draw(toy_ckpt, tmp_path / "compiled", "--compile", "--channels-last", "--batch-size", "4")
    assert len(graphs) == 1  # the 2 last samples drawn in a batch of 4 and cut: one shape, one compilation
    np.testing.assert_allclose(compiled, plain, rtol=1e-6, atol=1e-6)
    info = json.loads((tmp_path / "compiled" / "info.json").read_text())
    flags = (info["precision"], info["compile"], info["channels_last"], info["cuda_graph"])
    assert flags == ("fp32", True, True, False)
    # an adaptive solver's steps depend on the whole batch: its last batch is not padded
    graphs.clear()
    torch._dynamo.reset()  # no graph of the ddim runs' batch of 4 to reuse
    ode = ("--sampler", "ode", "--steps", "1", "--batch-size", "4")
    np.testing.assert_allclose(draw(toy_ckpt, tmp_path / "ode_compiled", *ode, "--compile"),
                               draw(toy_ckpt, tmp_path / "ode", *ode), rtol=1e-6, atol=1e-6)
    assert len(graphs) == 2  # batches of 4 and 2


@NEEDS_CXX
def test_sample_cli_inductor_compile_on_cpu_equals_eager(toy_ckpt, tmp_path, capsys):
    plain = draw(toy_ckpt, tmp_path / "plain")
    compiled = draw(toy_ckpt, tmp_path / "compiled", "--compile")
    assert "running eager" not in capsys.readouterr().err and counters["stats"]["unique_graphs"] >= 1
    np.testing.assert_allclose(compiled, plain, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("flags,message", [
    (["--cuda-graph"], "CUDA graphs need a CUDA device; got 'cpu'"),
    (["--cuda-graph", "--sampler", "ode"], "method='dopri5', rtol=1e-05, atol=1e-05, denoise=True) is adaptive"),
    (["--precision", "fp8"], "argument --precision: invalid choice: 'fp8'"),
])
def test_sample_cli_refuses_bad_fast_path_flags(toy_ckpt, tmp_path, capsys, flags, message):
    assert sample_main(["--ckpt", toy_ckpt, "--out", str(tmp_path), "--no-progress", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err, err


CASES = [*((name, {}) for name in sorted(SAMPLERS)), ("ode", {"method": "rk4"})]


@pytest.mark.parametrize("sampler,options", CASES, ids=[f"{n}-{'-'.join(o.values()) or 'default'}" for n, o in CASES])
def test_cuda_graphs_take_fixed_step_samplers_only(sampler, options):
    algo = make(sampler, 4, **options)
    if algo.fixed_step:  # the sampler passes; the device is what is refused here
        with pytest.raises(ValueError, match="need a CUDA device"):
            check_graphable(algo, "cpu")
    else:
        with pytest.raises(ValueError, match="CUDA graphs take fixed-step samplers; ODE.*'dopri5'.* is adaptive"):
            check_graphable(algo, "cuda")
    assert algo.fixed_step == (sampler != "ode" or options.get("method") == "rk4")


def test_cuda_graph_model_refuses_cpu_tensors():
    with pytest.raises(ValueError, match="CUDA graphs need CUDA tensors"):
        CUDAGraphModel(tiny_unet())(torch.randn(1, 1, 8, 8), torch.zeros(1))


# -------------------------------------------------------------- benchmark
BENCH_ROWS = ([("train", c) for c in ("fp32 eager", "bf16", "bf16 + channels_last", "bf16 + compile")]
              + [("sample DDIM-2", c) for c in ("fp32 eager", "bf16", "bf16 + compile", "bf16 + CUDA graph")]
              + [("sample DDIM-2 small batch", c) for c in ("fp32 eager", "fp32 + CUDA graph", "bf16",
                                                          "bf16 + CUDA graph")])


def test_bench_gpu_smoke_prints_every_row():
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_gpu.py"), "--smoke"], cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in run.stdout.splitlines()
            if line.startswith("| ") and "---" not in line]
    assert rows[0] == ["part", "configuration", "batch", "images / s", "x fp32 eager", "peak memory (GiB)"]
    assert [(part, config) for part, config, *_ in rows[1:]] == BENCH_ROWS
    speeds = {}
    for part, config, batch, speed, ratio, _ in rows[1:]:
        if "compile" in config or "CUDA graph" in config:
            assert (speed, ratio) == ("n/a (cpu)", "-")
            continue
        speeds[part, config] = float(speed.replace(",", ""))
        assert float(ratio) == pytest.approx(speeds[part, config] / speeds[part, "fp32 eager"], abs=0.006)
    assert len(speeds) == 7
