"""Processes: every one a Gaussian path x_t = alpha(t) x0 + sigma(t) eps (see base.py)."""

from __future__ import annotations

from typing import Any

from genflow import registry
from genflow.processes.cnf import CNF
from genflow.processes.base import PREDICTIONS, Denoised, GaussianPath, PathCoefficients
from genflow.processes.ddpm import DDPM
from genflow.processes.flow import FlowMatching, ot_pairing
from genflow.processes.sde import VESDE, VPSDE, ScoreSDE, SubVPSDE

PROCESSES: dict[str, type[GaussianPath]] = {
    "ddpm": DDPM,
    "vpsde": VPSDE,
    "subvpsde": SubVPSDE,
    "vesde": VESDE,
    "flow_matching": FlowMatching,
    "cnf": CNF,
}


def build(cfg: Any) -> GaussianPath:
    """Build a process from ``{"name": <one of PROCESSES>, **kwargs}``."""
    return registry.build(PROCESSES, cfg, "process")


__all__ = [
    "CNF",
    "DDPM",
    "PREDICTIONS",
    "PROCESSES",
    "VESDE",
    "VPSDE",
    "Denoised",
    "FlowMatching",
    "GaussianPath",
    "PathCoefficients",
    "ScoreSDE",
    "SubVPSDE",
    "build",
    "ot_pairing",
]
