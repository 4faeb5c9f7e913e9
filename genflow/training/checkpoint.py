"""Checkpoints: plain containers of tensors, written atomically, read with weights_only=True.

A run folder's ``checkpoints/`` holds ``step_XXXXXXX.pt`` files (the newest ``keep`` are kept)
and ``last.pt``, which always names a complete checkpoint: each file is written to a temporary
name, flushed to disk and renamed into place, so a crash mid-write never replaces a good one.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch

from genflow.utils import write_atomically

FORMAT = "genflow-checkpoint-1"
REQUIRED = ("format", "step", "config", "model")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message is one line naming the file and the reason."""


def _write(state: dict, path: Path) -> None:
    write_atomically(path, lambda f: torch.save(state, f))


def save(state: dict, folder: str | os.PathLike, *, keep: int = 3) -> Path:
    """Write ``state`` as ``step_<step>.pt`` and ``last.pt`` in ``folder``; prune to ``keep`` step files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {"format": FORMAT, **state}
    path = folder / f"step_{int(state['step']):07d}.pt"
    _write(state, path)
    _write(state, folder / "last.pt")
    if keep > 0:
        for old in sorted(folder.glob("step_*.pt"), key=lambda p: int(p.stem.split("_")[1]))[:-keep]:
            old.unlink(missing_ok=True)
    return path


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a genflow checkpoint safely: ``torch.load(weights_only=True)``, so nothing in the file
    can run code; truncated, foreign or missing files raise ``CheckpointError`` with one line."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"refusing to load {path}: it holds objects that weights_only loading does not "
                              f"allow (a pickled object could run code on load): {first}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"cannot read checkpoint {path} (truncated or not a torch file): {reason}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a genflow checkpoint (no format tag {FORMAT!r})")
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}")
    return state
