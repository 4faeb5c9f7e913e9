"""The per-step network call of a fixed-step sampler captured once in a CUDA graph and replayed.

A sampler calls ``model(x, t)`` with the same shapes at every step, so the call can be recorded
once (``torch.cuda.graph``) and replayed with new inputs copied into the recorded (static) input
tensors: one launch per step instead of one per kernel, which pays where the kernels are small
(small batches). The replay runs the recorded kernels, so samples equal the eager ones.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor



def check_graphable(sampler, device: torch.device | str) -> None:
    """Refuse, in one line, a CUDA graph for a sampler (a built ``Sampler``) whose network calls are
    not fixed in advance (``fixed_step``; the ode sampler with an adaptive method), or off a CUDA device."""
    if not sampler.fixed_step:
        raise ValueError(f"CUDA graphs take fixed-step samplers; {sampler!r} is adaptive (its step control "
                         "syncs with the host every step)")
    if torch.device(device).type != "cuda":
        raise ValueError(f"CUDA graphs need a CUDA device; got {str(device)!r}")


def _signature(x: Tensor, t: Tensor, cond: dict[str, Tensor]) -> tuple:
    return tuple((k, v.shape, v.dtype, v.device) for k, v in (("x", x), ("t", t), *sorted(cond.items())))


class _Captured:
    """One recorded call: static inputs, the graph, and the output it writes."""

    def __init__(self, model: Callable[..., Tensor], x: Tensor, t: Tensor, cond: dict[str, Tensor], pool,
                 side: torch.cuda.Stream, warmup: int) -> None:
        self.inputs = {"x": x.clone(), "t": t.clone(), **{k: v.clone() for k, v in cond.items()}}
        static_cond = {k: v for k, v in self.inputs.items() if k not in ("x", "t")}

        def call() -> Tensor:
            return model(self.inputs["x"], self.inputs["t"], **static_cond)

        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):  # warm-up off the capture (cuDNN/cuBLAS choices, compilation)
            for _ in range(warmup):
                call()
        torch.cuda.current_stream(x.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        # Captured on the side stream, which lives on x's device: torch.cuda.graph's own default
        # stream is made on the device current at its first use, and a capture there would record
        # nothing of a call on another GPU (e.g. --device cuda:1 with cuda:0 current). Every capture
        # into the shared pool uses the same stream, as torch needs for the pool's memory to be shared.
        with torch.cuda.graph(self.graph, pool=pool, stream=side):
            self.output = call()

    def __call__(self, x: Tensor, t: Tensor, cond: dict[str, Tensor]) -> Tensor:
        for name, value in (("x", x), ("t", t), *cond.items()):
            self.inputs[name].copy_(value)
        self.graph.replay()
        return self.output.clone()  # the next replay overwrites the static output


class CUDAGraphModel:
    """``model(x, t, **cond)`` recorded in a CUDA graph at its first call with each input signature
    (shapes, dtypes) and replayed afterwards. The graphs share one memory pool: each replay's output
    is cloned at once and the static inputs live outside the pool, so no graph holds memory that
    another's replay may overwrite, in any replay order.

    ``model`` must be a pure function of its inputs on the GPU (an eval-mode net: no dropout, no
    host synchronisation). Call it under ``torch.no_grad()``, as the samplers do.
    """

    def __init__(self, model: Callable[..., Tensor], warmup: int = 2) -> None:
        self.model, self.warmup = model, warmup
        self.graphs: dict[tuple, _Captured] = {}
        self.pool = None
        self.streams: dict[torch.device, torch.cuda.Stream] = {}  # one capture stream per device

    def __call__(self, x: Tensor, t: Tensor, **cond: Tensor) -> Tensor:
        if not x.is_cuda:
            raise ValueError(f"CUDA graphs need CUDA tensors; got x on {x.device}")
        key = _signature(x, t, cond)
        with torch.cuda.device(x.device):  # capture, copies and replay on x's GPU, whichever is current
            if key not in self.graphs:
                if self.pool is None:
                    self.pool = torch.cuda.graph_pool_handle()
                if x.device not in self.streams:
                    self.streams[x.device] = torch.cuda.Stream(device=x.device)
                with torch.no_grad():
                    self.graphs[key] = _Captured(self.model, x, t, cond, self.pool, self.streams[x.device],
                                                 self.warmup)
            return self.graphs[key](x, t, cond)
