"""Small tensor helpers shared by every part of genflow."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from torch import Tensor


def append_dims(t: Tensor, ndim: int) -> Tensor:
    """Append trailing singleton dims so a per-example ``t`` broadcasts against an ``ndim`` tensor."""
    missing = ndim - t.ndim
    if missing < 0:
        raise ValueError(f"cannot broadcast a {t.ndim}-D tensor to {ndim} dims")
    return t.reshape(*t.shape, *([1] * missing))


def sum_except_batch(x: Tensor) -> Tensor:
    """Sum over every dim but the first (per-example totals for vectors, images, videos)."""
    return x.reshape(x.shape[0], -1).sum(dim=1)


def mean_except_batch(x: Tensor) -> Tensor:
    """Mean over every dim but the first."""
    return x.reshape(x.shape[0], -1).mean(dim=1)


def check_choice(value: object, allowed: tuple, what: str) -> None:
    """Raise one clear ``ValueError`` when ``value`` is not among ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{what} must be one of {', '.join(map(str, allowed))}; got {value!r}")


def error_line(err: BaseException) -> str:
    """``Type: first line of the message``: any exception as one line."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def sha256_of(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_dir() -> Path:
    """Where genflow keeps what it computes once (feature nets, reference statistics):
    ``$GENFLOW_CACHE``, else ``~/.cache/genflow``."""
    return Path(os.environ.get("GENFLOW_CACHE", Path.home() / ".cache" / "genflow"))


def write_atomically(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """``write(file)`` into a temporary file beside ``path``, flushed to disk and renamed into
    place: a crash mid-write never leaves a partial file under ``path``, nor the temporary one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
