"""A learned time grid as a small JSON file: what ``learn_schedule`` (samplers/learn.py) writes and
``schedule="learned"`` / ``schedule_file=PATH`` (``genflow-sample --schedule-file PATH``) reads.

A grid is only right for the process, sampler and step count it was learned for: the file records
the process's noise schedule (its log-SNR at a few times), the sampler's name and settings and the
steps, and a sampler refuses, in one line, a file made for anything else. It cannot check the
model: a grid learned for one network runs on another, only less well.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from genflow.processes.base import GaussianPath
from genflow.utils import strict_json, write_atomically

FORMAT, VERSION = "genflow-schedule", 1
#: Options that describe a grid: a learned file replaces them all, so they are not matched.
GRID_OPTIONS = ("schedule", "rho", "sigma_min", "sigma_max", "sigmas", "times", "schedule_file")
#: Where a process's log-SNR is recorded: fractions of its time range (the ends can be infinite).
FINGERPRINT_AT = (0.02, 0.1, 0.25, 0.5, 0.75, 0.9, 0.98)


def fingerprint(process: GaussianPath) -> dict[str, Any]:
    """What identifies a process's noise schedule: its type, time range and log-SNR at a few times."""
    t_min, t_max = float(process.t_min), float(process.t_max)
    at = torch.tensor([t_min + f * (t_max - t_min) for f in FINGERPRINT_AT], dtype=torch.float64)
    return {"repr": repr(process), "t_min": t_min, "t_max": t_max,
            "log_snr": [round(v, 10) for v in process.log_snr(at).tolist()]}


def _number(value: Any) -> Any:
    """The inverse of ``strict_json`` for one setting: "inf", "-inf" and "nan" back to floats."""
    return float(value) if value in ("inf", "-inf", "nan") else value


def _same_process(a: dict, b: dict) -> bool:
    return (a["t_min"] == b["t_min"] and a["t_max"] == b["t_max"] and len(a["log_snr"]) == len(b["log_snr"])
            and all(math.isclose(x, y, rel_tol=1e-7, abs_tol=1e-7) for x, y in zip(a["log_snr"], b["log_snr"])))


@dataclass(frozen=True)
class LearnedSchedule:
    """A time grid learned for one process, sampler and step count (``learn_schedule``).

    ``sigmas`` are the grid's levels s = sigma/alpha after t_max (the sampler's ``sigmas=``
    option: ``genflow.samplers.make(sampler, steps, sigmas=learned.sigmas, **settings)`` runs
    it), ``times`` the same grid as process times with t_max first. ``objective`` holds which
    distance to the teacher's samples was minimized (``kind``: ``mse``, or ``trimmed``, over the
    95 % of draws nearest them; older files have no ``kind``: ``mse``) and its value on the
    training draws at the start (``start``: the best fixed schedule), after learning, and for each
    fixed schedule; ``teacher`` the sampler, steps and options that made the targets.
    """

    process: dict
    sampler: str
    settings: dict
    steps: int
    nfe: int
    sigmas: list[float]
    times: list[float]
    objective: dict
    teacher: dict
    draws: int
    seed: int
    iterations: int

    def options(self) -> dict[str, Any]:
        """The sampler options that run this grid: its settings and the levels."""
        return {**self.settings, "sigmas": list(self.sigmas)}

    def save(self, path: str | Path) -> Path:
        """Write the schedule as JSON, atomically (a crash never leaves half a file)."""
        text = json.dumps(strict_json({"format": FORMAT, "version": VERSION, **dataclasses.asdict(self)}), indent=2,
                          allow_nan=False) + "\n"
        write_atomically(path, lambda f: f.write(text.encode()))
        return Path(path)

    def check_fits(self, process: GaussianPath, sampler: str, settings: dict, where: str = "the schedule") -> None:
        """Refuse, in one line, a process, sampler, step count or setting other than the file's."""
        if not _same_process(self.process, fingerprint(process)):
            raise ValueError(f"{where} was learned for {self.process['repr']} with another noise schedule; "
                             f"it cannot run on {process!r}")
        if sampler != self.sampler:
            raise ValueError(f"{where} was learned for sampler {self.sampler!r}, not {sampler!r}")
        if settings.get("steps") != self.steps:
            raise ValueError(f"{where} was learned for {self.steps} steps ({self.nfe} NFE); pass steps="
                             f"{self.steps}, not {settings.get('steps')}")
        for key, value in self.settings.items():
            if key in settings and key not in GRID_OPTIONS and strict_json(settings[key]) != strict_json(value):
                raise ValueError(f"{where} was learned with {key}={value!r}; this sampler has "
                                 f"{key}={settings[key]!r}")


def load_schedule(path: str | Path) -> LearnedSchedule:
    """Read a schedule file, refusing a missing, malformed or foreign one in one line."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"schedule file {path} does not exist (write one with genflow-learn-schedule)")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"schedule file {path} is not JSON: {err}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"schedule file {path} is not a genflow schedule (no \"format\": \"{FORMAT}\")")
    if data.get("version") != VERSION:
        raise ValueError(f"schedule file {path} has format version {data.get('version')!r}; this genflow "
                         f"reads version {VERSION}")
    fields = [f.name for f in dataclasses.fields(LearnedSchedule)]
    missing = [k for k in fields if k not in data]
    if missing:
        raise ValueError(f"schedule file {path} lacks {', '.join(missing)}")
    levels, settings = data["sigmas"], data["settings"]
    if not (isinstance(levels, list) and levels and all(isinstance(v, (int, float)) and v > 0 for v in levels)
            and isinstance(data["steps"], int) and isinstance(settings, dict)):
        raise ValueError(f"schedule file {path} is malformed: sigmas must be a list of numbers > 0, steps an "
                         f"integer, settings a mapping")
    return LearnedSchedule(**{**{k: data[k] for k in fields}, "settings": {k: _number(v) for k, v in settings.items()}})
