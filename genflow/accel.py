"""The GPU fast path, shared by the trainer, genflow-sample and the benchmarks: autocast precision,
TF32, channels-last memory format, torch.compile with an eager fallback, fused AdamW.

Every switch is a no-op where it does not apply (fp32, vectors for channels-last, CPU for TF32 and
fused AdamW), so one code path serves CPU tests and GPU runs.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from genflow.utils import error_line

PRECISIONS = ("fp32", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

# Keyword arguments for torch.compile (the default backend is inductor); tests swap the backend.
COMPILE_OPTIONS: dict[str, Any] = {}


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    return precision


def autocast(device_type: str, precision: str, cache: bool = True):
    """``torch.autocast`` to bf16 / fp16, or nothing for fp32. ``cache=False`` for CUDA-graph
    capture (the weight-cast cache would free memory the graph still points at)."""
    if check_precision(precision) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=DTYPES[precision], cache_enabled=cache)


def set_tf32(enabled: bool) -> None:
    """TF32 for float32 matmuls and convolutions (Ampere and newer; other GPUs ignore it)."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def channels_last(x: Tensor) -> Tensor:
    """A 4-D tensor in channels-last memory format; other tensors as they are."""
    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x


def adamw_options(params: Iterable[Tensor]) -> dict[str, bool | None]:
    """``fused`` / ``foreach`` for AdamW: fused where every parameter is a floating CUDA tensor and
    this torch has it, else foreach on CUDA; torch's defaults (None) elsewhere."""
    params = list(params)
    if not params or not all(p.is_cuda for p in params):
        return {"fused": None, "foreach": None}
    fused = "fused" in inspect.signature(torch.optim.AdamW).parameters and all(p.is_floating_point() for p in params)
    return {"fused": True, "foreach": None} if fused else {"fused": None, "foreach": True}


def compile_errors() -> tuple[type[BaseException], ...]:
    """What a failed compilation raises (dynamo wraps backend and inductor errors); a user error in
    the model's own code is not among them and stays an error."""
    from torch._dynamo.exc import TorchDynamoException

    errors: list[type[BaseException]] = [TorchDynamoException]
    with contextlib.suppress(ImportError):
        from torch._inductor import exc

        errors += [getattr(exc, n) for n in ("CppCompileError", "InvalidCxxCompiler") if hasattr(exc, n)]
    return tuple(errors)


class Compiled(nn.Module):
    """``module`` run through ``torch.compile``, or eagerly where it cannot be compiled: one line on
    stderr says why, and the run goes on.

    The bare module is the only child, so ``compiled.module.state_dict()`` keeps the module's own
    keys (never ``_orig_mod.``): save ``compiled.module``, as the trainer does. Failures surface at
    the first call (compilation is lazy) and are caught in the forward; a failure while compiling
    the backward graph would surface in ``backward()`` and is not caught.
    """

    def __init__(self, module: nn.Module, **options: Any) -> None:
        super().__init__()
        self.module = module
        self.eager_reason: str | None = None
        compiled = None
        try:
            compiled = torch.compile(module, **{**COMPILE_OPTIONS, **options})
        except Exception as err:  # noqa: BLE001 (unsupported platform or Python: no model code has run)
            self._fall_back(err)
        # Not a child module: its state_dict would repeat every weight under _orig_mod.
        object.__setattr__(self, "_compiled", compiled)

    def _fall_back(self, err: BaseException) -> None:
        err = getattr(err, "inner_exception", None) or err  # dynamo's BackendCompilerFailed wraps the cause
        reason = error_line(err, 200)
        self.eager_reason = reason
        print(f"genflow: torch.compile is not available here ({reason}); running eager", file=sys.stderr,
              flush=True)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self._compiled is not None:
            try:
                return self._compiled(*args, **kwargs)
            except compile_errors() as err:
                self._fall_back(err)
                object.__setattr__(self, "_compiled", None)
        return self.module(*args, **kwargs)


class FastModel:
    """``model(x, t, **cond)`` for sampling: the network under autocast (``precision``), its input
    in channels-last format (images, ``channels_last``), its output back in ``x``'s dtype, so the
    sampler's own arithmetic stays in full precision."""

    def __init__(self, model: Callable[..., Tensor], precision: str = "fp32", channels_last: bool = False) -> None:
        self.model, self.precision, self.channels_last = model, check_precision(precision), channels_last

    def __call__(self, x: Tensor, t: Tensor, **cond: Tensor) -> Tensor:
        inp = channels_last(x) if self.channels_last else x
        with autocast(x.device.type, self.precision, cache=False):  # one network call: nothing to cache
            out = self.model(inp, t, **cond)
        return out.to(x.dtype)


def fast_model(net: nn.Module, *, precision: str = "fp32", channels_last_format: bool = False,
               compile: bool = False) -> Callable[..., Tensor]:
    """``net`` (already on its device, in eval mode) with the sampling switches applied."""
    check_precision(precision)
    if channels_last_format:
        net.to(memory_format=torch.channels_last)  # 4-D weights only; a vector net is unchanged
    model: Callable[..., Tensor] = Compiled(net) if compile else net
    if precision == "fp32" and not channels_last_format:
        return model
    return FastModel(model, precision, channels_last_format)
