"""Small tensor helpers shared by every part of genflow."""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import torch
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


def error_line(err: BaseException, limit: int = 400) -> str:
    """``Type: message`` as one line (``one_line``), for errors whose type is news to the reader."""
    return f"{type(err).__name__}: {one_line(err, limit)}"


def strict_json(value):
    """``value`` as strict JSON holds it: tuples as lists, non-finite floats as strings ("inf", "-inf",
    "nan"), which strict JSON readers accept."""
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return str(value) if isinstance(value, float) and not math.isfinite(value) else value


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


def one_line(err: BaseException, limit: int = 400) -> str:
    """An exception's message as one line: its lines joined, a DataLoader worker's wrapper
    ("Caught X in DataLoader worker process 0. Original Traceback ...") reduced to the original
    error's own line, at most ``limit`` characters; the type's name when there is no message."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    if lines and lines[0].startswith("Caught ") and "DataLoader worker" in lines[0]:
        lines = [lines[-1].split(": ", 1)[-1]]
    text = " ".join(lines) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


TEMP_MARK = ".tmp-"  # write_atomically's temporary files: .NAME.tmp-PID beside NAME


def write_atomically(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """``write(file)`` into a temporary file beside ``path``, flushed to disk and renamed into
    place: a crash mid-write never leaves a partial file under ``path``, nor the temporary one
    (but a kill -9 leaves the temporary file: ``remove_stale_temps`` takes it away later)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Remove ``write_atomically``'s temporary files in ``folder`` whose writer (the pid in their
    name, on this machine) is no longer alive, e.g. after a kill -9 mid-write; the removed files."""
    stale = []
    for tmp in Path(folder).glob(f".*{TEMP_MARK}*"):
        pid = tmp.name.rpartition(TEMP_MARK)[2]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)
            stale.append(tmp)
    return stale


class OutputError(OSError):
    """An output folder that cannot be written; the message is one line naming it and why."""


def check_writable_folder(path: str | Path, what: str) -> Path:
    """Refuse, before any work, an output folder that is a file, lies under a file or cannot be
    written (read-only file system, permissions), by writing and removing a probe file in it or,
    while it does not exist, in its nearest existing parent. Creates nothing."""
    path = Path(path)
    base = next(p for p in (path, *path.parents) if p.exists() or p == Path(p.anchor or "."))
    if not base.is_dir():
        where = "is a file" if base == path else f"lies under the file {base}"
        raise OutputError(f"{what} {path} {where}; give a folder")
    probe = base / f".genflow-probe{TEMP_MARK}{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise OutputError(f"{what} {path} cannot be written ({base}: {err.strerror or one_line(err)})") from None
    return path


class UnreadableFile(ValueError):
    """A file ``load_weights_only`` cannot read; the message says why in a few words (no advice to
    load it unsafely). ``unsafe``: it holds pickled objects, as opposed to being damaged or foreign."""

    def __init__(self, reason: str, unsafe: bool = False) -> None:
        super().__init__(reason)
        self.unsafe = unsafe

    def refusal(self, path: Path, what: str) -> str:
        """``refusing to load PATH: ...`` or ``cannot read WHAT PATH (truncated or not a torch file): ...``."""
        if self.unsafe:
            return f"refusing to load {path}: {self}"
        return f"cannot read {what}{path} (truncated or not a torch file): {self}"


def _is_torch_file(path: Path) -> bool:
    """torch.save writes a zip archive ("PK"; maybe truncated) or, in the legacy format, a pickle
    (protocol opcode 0x80)."""
    with open(path, "rb") as f:
        head = f.read(2)
    return head == b"PK" or head[:1] == b"\x80"


def load_weights_only(path: str | Path, map_location: str | torch.device = "cpu"):
    """``torch.load(path, weights_only=True)``: nothing in the file can run code. What cannot be
    read raises ``UnreadableFile``: not a torch file, a truncated one, or one holding pickled
    objects (named), never with torch's suggestion to load it with ``weights_only=False``."""
    path = Path(path)
    if not _is_torch_file(path):
        raise UnreadableFile("it is neither a zip archive nor a pickle")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if found:
            raise UnreadableFile(f"it holds a pickled object ({found.group(1)}) that weights-only loading refuses "
                                 "(a pickled object could run code on load)", unsafe=True) from None
        raise UnreadableFile(f"its pickle is damaged ({_unpickler_reason(err)})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise UnreadableFile(one_line(err, 200)) from None


def _unpickler_reason(err: Exception) -> str:
    found = re.search(r"WeightsUnpickler error:\s*(.+)", str(err))
    return found.group(1).strip() if found else type(err).__name__


ROUNDINGS = ("edm", "adm")


def to_uint8(images: Tensor, rounding: str = "edm") -> Tensor:
    """Images in [-1, 1] as 8-bit values, the way the published samplers write their PNGs.

    * ``edm``: NVlabs/edm generate.py, ``(images * 127.5 + 128).clip(0, 255).to(torch.uint8)``; the
      cast truncates, so k = floor(x * 127.5 + 128): rounding to the nearest of the 256 levels
      x_k = k / 127.5 - 1 (each bin 1/127.5 wide; -1 -> 0, 1 -> 255).
    * ``adm``: openai/guided-diffusion scripts/image_sample.py, ``((sample + 1) * 127.5).clamp(0, 255)
      .to(th.uint8)``: k = floor((x + 1) * 127.5), truncation (x_k -> k - 1 whenever x_k lies a rounding
      error below its level, as 63 of the 256 float32 levels of ToTensor + Normalize(0.5, 0.5) do;
      only x = 1 exactly gives 255).

    Both clip out-of-range values to 0 and 255. The arithmetic runs in the images' own dtype, as in
    that code (float32 samples: float32). NaN or inf is refused (``ValueError`` naming the count).
    """
    check_choice(rounding, ROUNDINGS, "rounding")
    if not images.is_floating_point():
        raise ValueError(f"to_uint8 takes floating-point images in [-1, 1]; got {images.dtype}")
    bad = int((~torch.isfinite(images)).sum())
    if bad:
        raise ValueError(f"{bad} of {images.numel()} image values are NaN or inf; they have no 8-bit value")
    scaled = images * 127.5 + 128 if rounding == "edm" else (images + 1) * 127.5
    return scaled.clip(0, 255).to(torch.uint8)
