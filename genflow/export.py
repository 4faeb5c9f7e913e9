"""A checkpoint's weights as a safetensors file (no pickle at all), with its config as metadata.

    save_export(checkpoint.load("RUN/checkpoints/last.pt"), "model.safetensors")   # the EMA weights
    state = load_model_file("model.safetensors")     # a checkpoint-like dict: config, step, data_shape, weights

``load_model_file`` reads a ``.safetensors`` file through safetensors (never ``torch.load``) and anything
else as a checkpoint (``torch.load(weights_only=True)``), so genflow-sample and genflow-eval take either.
A file with missing or extra tensors, wrong shapes, or metadata that is not a genflow net's config is
refused with one line (``CheckpointError``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from genflow.training.checkpoint import CheckpointError, load
from genflow.utils import one_line, write_atomically

FORMAT = "genflow-safetensors-1"
SUFFIX = ".safetensors"
WEIGHTS = ("ema", "raw")


def save_export(state: dict, path: str | Path, ema: bool = True) -> int:
    """Write ``state``'s EMA (or raw) weights to ``path`` atomically, the config, step and data shape as
    metadata; the number of tensors written."""
    from safetensors.torch import save

    weights = state["ema"]["model"] if ema else state["model"]
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in weights.items()}  # safetensors: no shared storage
    metadata = {"format": FORMAT, "config": json.dumps(state["config"]), "step": str(int(state["step"])),
                "data_shape": json.dumps(list(state.get("data_shape", []))), "weights": WEIGHTS[0 if ema else 1]}
    blob = save(tensors, metadata=metadata)
    write_atomically(path, lambda f: f.write(blob))
    return len(tensors)


def _read(path: Path) -> tuple[dict, dict]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return dict(f.metadata() or {}), {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # noqa: BLE001 (SafetensorError, OSError: the file is the problem)
        raise CheckpointError(f"cannot read {path} (truncated or not a safetensors file): {one_line(err, 200)}") \
            from None


def _metadata(path: Path, meta: dict) -> tuple[dict, int, list[int], str]:
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a genflow export (no format tag {FORMAT!r} in its metadata)")
    try:
        config, step, shape = json.loads(meta["config"]), int(meta["step"]), json.loads(meta["data_shape"])
        weights = meta["weights"]
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"{path}: its metadata cannot be read ({type(err).__name__}: {one_line(err, 120)})") \
            from None
    if not isinstance(config, dict) or not all(isinstance(config.get(k), dict) for k in ("model", "process")) \
            or weights not in WEIGHTS:
        raise CheckpointError(f"{path}: its metadata is not a genflow config (model and process mappings, "
                              f"weights ema or raw)")
    return config, step, shape, weights


def _check_tensors(path: Path, config: dict, tensors: dict) -> None:
    """The file's tensors are exactly the net's, each of its shape."""
    from genflow import nets

    try:
        expected = nets.build(config["model"]).state_dict()
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: its config cannot be rebuilt: {one_line(err)}") from None
    missing, extra = sorted(expected.keys() - tensors.keys()), sorted(tensors.keys() - expected.keys())
    shapes = [k for k in expected if k in tensors and tensors[k].shape != expected[k].shape]
    for found, what in ((missing, "lacks"), (extra, "has extra"), (shapes, "has wrongly shaped")):
        if found:
            first = found[0]
            detail = (f" ({tuple(tensors[first].shape)}, the net's {tuple(expected[first].shape)})"
                      if found is shapes else "")
            raise CheckpointError(f"{path} {what} tensor(s) for its net: {len(found)}, e.g. {first}{detail}")


def load_export(path: str | Path) -> dict:
    """A genflow safetensors file as a checkpoint-like dict (``config``, ``step``, ``data_shape`` and
    the weights under ``ema.model`` or ``model``; ``exported``: which)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"exported model not found: {path}")
    meta, tensors = _read(path)
    config, step, shape, weights = _metadata(path, meta)
    _check_tensors(path, config, tensors)
    held = {"ema": {"model": tensors}} if weights == "ema" else {"model": tensors}
    return {"format": FORMAT, "step": step, "config": config, "data_shape": shape, "exported": weights, **held}


def load_model_file(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """A ``.safetensors`` export (read without pickle) or a genflow checkpoint (weights-only)."""
    return load_export(path) if Path(path).suffix == SUFFIX else load(path, map_location)


def check_weights(state: dict, path: str | Path, ema: bool) -> None:
    """An export holds one set of weights: refuse (``ValueError``, one line) asking for the other."""
    held = state.get("exported")
    if held is not None and held != WEIGHTS[0 if ema else 1]:
        hint = "drop --no-ema" if held == "ema" else "add --no-ema"
        raise ValueError(f"{path} holds only the {'EMA' if held == 'ema' else 'raw'} weights; {hint}")
