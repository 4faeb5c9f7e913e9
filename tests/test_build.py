"""build(cfg) for every kind, every shipped config, and one clear ValueError for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from plugin_package import write_plugin

from genflow import nets, processes
from genflow.processes import DDPM, VESDE, VPSDE, FlowMatching, SubVPSDE

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted((CONFIGS / "process").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_process_config_builds_and_round_trips(path):
    cfg = OmegaConf.load(path)
    process = processes.build(cfg)
    assert isinstance(process, processes.PROCESSES[cfg.name])
    again = processes.build(OmegaConf.to_container(cfg))  # a plain dict, as stored in a checkpoint
    assert repr(again) == repr(process)


PROCESS_CONFIGS = sorted((CONFIGS / "process").glob("*.yaml"))


@pytest.mark.parametrize("path", sorted((CONFIGS / "model").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_model_config_builds_as_shipped_with_the_time_scale_of_each_process(path):
    cfg = OmegaConf.load(path)
    assert cfg.time_scale is None  # set from the process
    for process in map(processes.build, map(OmegaConf.load, PROCESS_CONFIGS)):
        want = 1.0 if process.discrete else 1000.0 / process.t_max  # DDPM's steps 0..T-1; t in [0, 1]
        assert nets.with_time_scale(cfg, process)["time_scale"] == want
    net = nets.build(cfg, process=processes.build(OmegaConf.load(CONFIGS / "process" / "vpsde.yaml")))
    assert isinstance(net, nets.NETS[cfg.name]) and net.time_embed.time_scale == 1000.0


def test_a_null_time_scale_without_a_process_says_what_to_set():
    cfg = OmegaConf.load(CONFIGS / "model" / "mlp.yaml")
    with pytest.raises(ValueError, match=r"^net 'mlp' has time_scale: null, which the process sets .* pass process= "
                                         "or set time_scale$"):
        nets.build(cfg)
    assert nets.build({"name": "mlp"}).time_embed.time_scale == 1.0  # left out: the class's default
    assert nets.build({"name": "mlp", "time_scale": 5.0}, process=DDPM()).time_embed.time_scale == 5.0


def test_build_passes_keyword_arguments():
    ddpm = processes.build({"name": "ddpm", "timesteps": 10, "beta_schedule": "cosine"})
    assert ddpm.timesteps == 10 and ddpm.beta_schedule == "cosine"
    mlp = nets.build({"name": "mlp", "dim": 3, "hidden": 8, "depth": 1})
    assert mlp.dim == 3 and len(mlp.blocks) == 1


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: processes.build({"name": "ddim"}), r"unknown process 'ddim'; valid names: cnf, ddpm, flow_matching, subvpsde, vesde, vpsde"),
        (lambda: processes.build({"timesteps": 3}), "needs a 'name' key"),
        (lambda: processes.build({"name": "vpsde", "beta_mn": 0.1}), r"unknown key\(s\) beta_mn for process 'vpsde'; allowed: beta_min"),
        (lambda: processes.build(["ddpm"]), "expected a mapping"),
        (lambda: nets.build({"name": "resnet"}), "unknown net 'resnet'; valid names: mlp, unet \\(built in\\); from packages "
         "\\(entry point group 'genflow.nets'\\): none$"),
        (lambda: nets.build({"width": 3}), "net config needs a 'name' key; valid names: mlp, unet"),
        (lambda: nets.build({"name": "unet", "chanels": 64}), r"unknown key\(s\) chanels for net 'unet'"),
        (lambda: DDPM(timesteps=-5), "timesteps must be an integer >= 1; got -5"),
        (lambda: DDPM(timesteps=0), "timesteps must be an integer >= 1"),
        (lambda: DDPM(timesteps=2.5), "timesteps must be an integer >= 1"),
        (lambda: DDPM(beta_end=1.5), r"beta_end must lie in \(0, 1\); got 1.5"),
        (lambda: DDPM(beta_start=0.0), r"beta_start must lie in \(0, 1\)"),
        (lambda: DDPM(betas=[0.1, 1.0]), r"every beta must lie in \(0, 1\)"),
        (lambda: DDPM(betas=[0.1, 0.2], timesteps=3), "disagrees"),
        (lambda: DDPM(beta_schedule="sigmoid"), "beta_schedule must be one of linear, cosine; got 'sigmoid'"),
        (lambda: DDPM(prediction="noise"), "prediction for DDPM must be one of eps, x0, v, score, velocity; got 'noise'"),
        (lambda: FlowMatching(prediction="eps"), "prediction for FlowMatching must be one of velocity; got 'eps'"),
        (lambda: FlowMatching(coupling="sinkhorn"), "coupling must be one of independent, ot"),
        (lambda: FlowMatching(sigma_min=1.0), r"sigma_min must lie in \[0, 1\)"),
        (lambda: VPSDE(eps=0.0), r"eps must lie in \(0, 1\)"),
        (lambda: VPSDE(beta_min=5.0, beta_max=1.0), "need 0 <= beta_min < beta_max"),
        (lambda: SubVPSDE(weighting="elbo"), "weighting must be one of sigma2, likelihood"),
        (lambda: VPSDE(importance_sampling=True), "importance_sampling needs weighting='likelihood'"),
        (lambda: VESDE(sigma_min=10.0, sigma_max=1.0), "need 0 < sigma_min < sigma_max"),
        (lambda: nets.MLP(dim=0), "need dim >= 1"),
        (lambda: nets.UNet(num_classes=0), "num_classes must be >= 1"),
        (lambda: nets.UNet(norm_groups=0), "norm_groups=0 must divide"),
        (lambda: DDPM(betas=[[0.1, 0.2], [0.1, 0.2]]), "betas must be a flat list"),
        (lambda: DDPM(betas=[0.1], beta_schedule="sigmoid"), "beta_schedule must be one of"),
        (lambda: processes.build({"name": ["ddpm"]}), "unknown process"),
        (lambda: VPSDE(beta_max=float("inf")), "need 0 <= beta_min < beta_max"),
        (lambda: VPSDE(weighting="likelihood", importance_sampling="no"), "importance_sampling must be true or false"),
        (lambda: nets.MLP(time_embedding="learned"), "time_embedding must be one of sinusoidal, fourier"),
    ],
)
def test_bad_input_is_one_clear_value_error(call, match):
    with pytest.raises(ValueError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


def test_nets_from_an_installed_package(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(write_plugin(tmp_path, "gfplug_build", {
        "tiny": "gfplug_build.nets:Wrapped", "unet": "gfplug_build.nets:Wrapped",
        "gone": "gfplug_build.missing:Net", "empty": "gfplug_build.nets:Broken"})))
    net = nets.build({"name": "tiny", "width": 8, "time_scale": None}, process=VPSDE())
    assert type(net).__name__ == "Wrapped" and net.time_scale == 1000.0 and net.backbone.body[0].out_features == 8
    x, t = torch.randn(3, 2), torch.rand(3)
    assert torch.equal(net(x, t), net.backbone.body(torch.cat([x, (t * 1000.0 / 1000.0)[:, None]], 1)))
    unet = {"name": "unet", "image_size": 8, "channels": 32, "channel_mult": [1], "attention_resolutions": []}
    assert isinstance(nets.build(unet), nets.UNet)  # a built-in name always means the built-in net
    assert sorted(nets.plugins()) == ["empty", "gone", "tiny"]
    cases = [({"name": "gone"}, "net 'gone': entry point 'gfplug_build.missing:Net' (group 'genflow.nets') failed to "
                                "load: ModuleNotFoundError: No module named 'gfplug_build.missing'"),
             ({"name": "empty", "width": 3}, "net 'empty' cannot be built: TypeError: Broken.__init__() got an "
                                            "unexpected keyword argument 'width'"),
             ({"name": "tiny", "features": "two"}, "net 'tiny' cannot be built: TypeError: "),
             ({"name": "resnet"}, "unknown net 'resnet'; valid names: mlp, unet (built in); from packages (entry point "
                                  "group 'genflow.nets'): empty, gone, tiny")]
    for cfg, message in cases:
        with pytest.raises(ValueError) as info:
            nets.build(cfg)
        assert str(info.value).startswith(message) and "\n" not in str(info.value), info.value


def test_two_packages_declaring_one_net_name_are_refused(tmp_path, monkeypatch):
    for package in ("gfplug_one", "gfplug_two"):
        monkeypatch.syspath_prepend(str(write_plugin(tmp_path / package, package, {"tiny": f"{package}.nets:Wrapped"})))
    with pytest.raises(ValueError, match=r"net 'tiny' is declared by 2 entry points of group 'genflow.nets' "
                                         r"\(gfplug_(one|two).nets:Wrapped, gfplug_(one|two).nets:Wrapped\); uninstall"):
        nets.build({"name": "tiny"})
