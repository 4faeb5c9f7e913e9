"""Where a run's metrics go: ``metrics.jsonl`` always, TensorBoard events with ``trainer.logger=tensorboard``.

Only rank 0 builds a ``MetricsLog``. A resumed run writes into the same files at the same global
steps; TensorBoard's ``purge_step`` drops the events of steps after the checkpoint it resumes from
(a run killed between two checkpoints), so the curves continue without a fold.
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

import torch

LOGGERS = ("jsonl", "tensorboard")
TENSORBOARD_DIR = "tensorboard"


def peak_memory_mib(device: torch.device) -> float:
    """CUDA's maximum allocated memory on ``device``, or on the CPU the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def require(logger: str) -> None:
    """Fail before any work, in one line, when ``logger`` needs a package that is not installed."""
    if logger == "tensorboard":
        _summary_writer()


def _summary_writer():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ImportError("trainer.logger=tensorboard needs the tensorboard package: "
                          "pip install 'genflow[tensorboard]' (or trainer.logger=jsonl)") from None
    return SummaryWriter


class MetricsLog:
    """JSON lines in ``run_dir/metrics.jsonl``; with ``logger="tensorboard"`` also every number of a
    training record as the scalar ``train/KEY`` at its step, and sample grids as images."""

    def __init__(self, run_dir: Path, logger: str = "jsonl", start_step: int = 0) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.writer = None
        if logger == "tensorboard":
            purge = start_step + 1 if start_step else None  # events after the checkpoint go
            self.writer = _summary_writer()(log_dir=str(Path(run_dir) / TENSORBOARD_DIR), purge_step=purge)

    def log(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None and "event" not in record and not record.get("skipped"):
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(f"train/{key}", value, record["step"])

    def image(self, tag: str, png: Path, step: int) -> None:
        """A PNG written by the trainer (a sample grid), as a TensorBoard image."""
        if self.writer is None:
            return
        import numpy as np
        from PIL import Image

        with Image.open(png) as image:
            pixels = np.asarray(image.convert("RGB"))
        self.writer.add_image(tag, pixels, step, dataformats="HWC")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
