"""Classifier-free guidance (Ho & Salimans 2022): the checks and the unconditional cond.

The guided output itself is formed in ``CountingModel.denoise`` (samplers/common.py), so every
sampler, the adaptive ODE included, is guided without knowing it.
"""

from __future__ import annotations

import math

import torch


def unconditional(model, cond: dict, uncond: dict | None) -> dict:
    """The unconditional counterpart of ``cond``: ``uncond`` if given (the same keys and shapes),
    else ``cond`` with every label ``y`` set to the net's null class, index ``num_classes`` of its
    class embedding (genflow.nets.embeddings.ClassEmbedding), found through the wrappers around the
    net (DDP's and Compiled's ``module``, FastModel's and CUDAGraphModel's ``model``)."""
    if uncond is None:
        embed = class_embedding(model)
        if embed is None or "y" not in cond:
            raise ValueError("guidance needs class labels (cond={'y': labels}) and a net with a class embedding "
                             "(num_classes), or the unconditional cond passed as uncond=")
        return null_condition(cond, embed.num_classes)
    if set(uncond) != set(cond) or any(uncond[k].shape != cond[k].shape for k in cond):
        raise ValueError(f"uncond must have the keys and shapes of cond ({', '.join(cond) or 'none'}); "
                         f"got {', '.join(uncond) or 'none'}")
    return uncond


def class_embedding(model, depth: int = 8):
    """The class embedding of the net inside ``model`` and its wrappers, or None."""
    for _ in range(depth):
        embed = getattr(model, "class_embed", None)
        inner = next((v for v in (getattr(model, "module", None), getattr(model, "model", None)) if v is not None),
                     None)
        if embed is not None or inner is None:
            return embed
        model = inner
    return None


def null_condition(cond: dict, classes: int) -> dict:
    """``cond`` with every label ``y`` set to the null class, index ``classes``."""
    return {**cond, "y": torch.full_like(cond["y"], classes)}


def check_guidance(guidance: float, what: str = "guidance") -> None:
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance) \
            or guidance < 0:
        raise ValueError(f"{what} must be a finite number >= 0 (w of Ho & Salimans 2022; 0 is the conditional "
                         f"model); got {guidance!r}")
