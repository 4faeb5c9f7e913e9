"""Exponential moving average of a model's weights (Polyak averaging), updated with foreach ops."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """``shadow = decay_t * shadow + (1 - decay_t) * params`` after every optimizer step.

    With ``warmup`` the decay ramps as min(decay, (1 + n) / (10 + n)) (n = updates so far), so
    early averages are not dominated by the random initialisation. Buffers are copied.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1); got {decay}")
        self.decay, self.warmup, self.updates = decay, warmup, 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = self.current_decay()
        shadow = [p for p in self.model.parameters() if p.dtype.is_floating_point]
        live = [p.detach() for p in model.parameters() if p.dtype.is_floating_point]
        torch._foreach_lerp_(shadow, live, 1.0 - decay)
        for b_shadow, b_live in zip(self.model.buffers(), model.buffers()):
            b_shadow.copy_(b_live)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])
