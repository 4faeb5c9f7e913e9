"""Checkpoints: plain containers of tensors, written atomically, read with weights_only=True.

A run folder's ``checkpoints/`` holds ``step_XXXXXXX.pt`` files (the newest ``keep`` are kept)
and ``last.pt``, which always names a complete checkpoint: each file is written to a temporary
name, flushed to disk and renamed into place, so a crash mid-write never replaces a good one.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from genflow.utils import UnreadableFile, load_weights_only, one_line, write_atomically

FORMAT = "genflow-checkpoint-1"
REQUIRED = ("format", "step", "config", "model")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message is one line naming the file and the reason."""


def _write(state: dict, path: Path) -> None:
    try:
        write_atomically(path, lambda f: torch.save(state, f))
    except OSError as err:  # a full disk (ENOSPC), a folder gone read-only: the previous files stay
        raise CheckpointError(f"cannot write checkpoint {path}: {err.strerror or one_line(err)}; "
                              "the previous checkpoints are intact") from None


def non_finite(tensors: dict) -> list[str]:
    """The names of the floating-point tensors in a (nested) state dict holding NaN or inf."""
    bad = []
    for name, value in tensors.items():
        if isinstance(value, dict):
            bad += [f"{name}.{inner}" for inner in non_finite(value)]
        elif isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
            bad.append(name)
    return bad


def save(state: dict, folder: str | os.PathLike, *, keep: int = 3) -> Path:
    """Write ``state`` as ``step_<step>.pt`` and ``last.pt`` in ``folder``; prune to ``keep`` step files.

    Weights (``model``, ``ema``) with NaN or inf are never written: ``CheckpointError``, and the
    last good checkpoint stays ``last.pt``."""
    folder = Path(folder)
    bad = non_finite({k: state[k] for k in ("model", "ema") if k in state})
    if bad:
        raise CheckpointError(f"not saving step {state['step']}: its weights are not finite (NaN or inf in "
                              f"{len(bad)} tensor(s), e.g. {bad[0]}); the last good checkpoint stays "
                              f"{folder / 'last.pt'}")
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
        state = load_weights_only(path, map_location)
    except UnreadableFile as err:
        raise CheckpointError(err.refusal(path, "checkpoint ")) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a genflow checkpoint (no format tag {FORMAT!r})")
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}")
    return state


def step_files(folder: str | os.PathLike) -> list[Path]:
    """The ``step_*.pt`` files in ``folder``, newest (highest step) first."""
    files = [p for p in Path(folder).glob("step_*.pt") if p.stem.split("_")[1].isdigit()]
    return sorted(files, key=lambda p: int(p.stem.split("_")[1]), reverse=True)


def newest(folder: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[Path, dict, str] | None:
    """The newest loadable checkpoint in ``folder``: (path, state, why it was chosen), None if none.

    ``last.pt`` unless it is damaged or a step file is newer (a run killed between writing the
    step file and ``last.pt``); damaged step files are passed over for older ones. A folder whose
    checkpoints are all damaged raises ``CheckpointError`` rather than start the run afresh."""
    folder, skipped = Path(folder), []
    last, state = folder / "last.pt", None
    if last.exists():
        try:
            state = load(last, map_location)
        except CheckpointError as err:
            skipped.append(f"{last.name} is unusable ({one_line(err, 160)})")
    floor = -1 if state is None else int(state["step"])
    for path in step_files(folder):
        if int(path.stem.split("_")[1]) <= floor:
            break
        try:
            newer = load(path, map_location)
        except CheckpointError as err:
            skipped.append(f"{path.name} is unusable ({one_line(err, 160)})")
            continue
        if state is not None:
            skipped.append(f"{last.name} is older (step {floor})")
        return path, newer, "; ".join(skipped)
    if state is None and skipped:
        raise CheckpointError(f"no usable checkpoint in {folder}: {'; '.join(skipped)}")
    return None if state is None else (last, state, "; ".join(skipped))
