"""A throwaway package that declares nets under the ``genflow.nets`` entry point group: a folder
with the package and its ``*.dist-info`` (METADATA, entry_points.txt), put on sys.path or
PYTHONPATH as pip would install it."""

from __future__ import annotations

from pathlib import Path

# A diffusers-style backbone (``forward(sample, timestep)`` returns an output whose ``.sample`` is
# the prediction, like diffusers' UNet2DModel) and the genflow wrapper around it.
NETS = '''
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class DenoiserOutput:
    sample: torch.Tensor


class TinyDenoiser(nn.Module):
    def __init__(self, features: int, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(features + 1, width), nn.SiLU(), nn.Linear(width, features))

    def forward(self, sample, timestep):
        h = torch.cat([sample, timestep[:, None].to(sample.dtype)], dim=1)
        return DenoiserOutput(sample=self.body(h))


class Wrapped(nn.Module):
    """genflow's ``model(x, t)`` over the backbone's ``(sample, timestep).sample``."""

    def __init__(self, features: int = 2, width: int = 16, time_scale: float = 1.0) -> None:
        super().__init__()
        self.backbone, self.time_scale = TinyDenoiser(features, width), time_scale

    def forward(self, x, t, y=None):
        return self.backbone(x, t * self.time_scale / 1000.0).sample


class Pooled(Wrapped):
    """A net that does not return the shape of its input."""

    def forward(self, x, t, y=None):
        return super().forward(x, t).mean(dim=1)


class Broken(nn.Module):
    pass
'''

MODEL_YAML = """# the plugin's own model config, found through hydra.searchpath=[pkg://{package}.configs]
name: {net}
features: 2
width: 16
time_scale: null
"""


def write_plugin(root: Path, package: str, entry_points: dict[str, str]) -> Path:
    """``root`` holding ``package`` (nets.py with ``Wrapped``, configs/model/<first net>.yaml) and its
    dist-info declaring ``entry_points`` (name -> "module:attr") in group genflow.nets."""
    pkg = root / package
    (pkg / "configs" / "model").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(NETS)
    (pkg / "configs" / "__init__.py").write_text("")
    first = next(iter(entry_points))
    (pkg / "configs" / "model" / f"{first}.yaml").write_text(MODEL_YAML.format(package=package, net=first))
    info = root / f"{package}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
    lines = "".join(f"{name} = {value}\n" for name, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[genflow.nets]\n{lines}")
    return root
