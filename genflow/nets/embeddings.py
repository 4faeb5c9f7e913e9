"""Time and class embeddings shared by the backbones."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from genflow.utils import check_choice

TIME_EMBEDDINGS = ("sinusoidal", "fourier")


class SinusoidalEmbedding(nn.Module):
    """Transformer position encoding of t (Vaswani et al. 2017), as Ho et al. embed the step."""

    def __init__(self, dim: int, max_period: float = 10000.0) -> None:
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"sinusoidal embedding dim must be even and >= 2; got {dim}")
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / max(half - 1, 1))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        args = t.float()[:, None] * self.freqs[None]
        return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class GaussianFourierEmbedding(nn.Module):
    """Random Fourier features of t with fixed Gaussian frequencies (Tancik et al. 2020; Song et al. 2021)."""

    def __init__(self, dim: int, scale: float = 16.0, seed: int = 0) -> None:
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"fourier embedding dim must be even and >= 2; got {dim}")
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("freqs", torch.randn(dim // 2, generator=gen) * scale)

    def forward(self, t: Tensor) -> Tensor:
        args = 2 * math.pi * t.float()[:, None] * self.freqs[None]
        return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class TimeEmbedding(nn.Module):
    """t -> features -> Linear -> SiLU -> Linear (Ho et al. 2020, appendix B).

    ``time_scale`` multiplies t first, so a continuous t in [0, 1] can use the same sinusoid
    frequencies as DDPM's steps 0..999 (score_sde feeds 999 t to its DDPM++ nets).
    """

    def __init__(self, base_dim: int, out_dim: int, kind: str = "sinusoidal", time_scale: float = 1.0,
                 fourier_scale: float = 16.0) -> None:
        super().__init__()
        check_choice(kind, TIME_EMBEDDINGS, "time_embedding")
        self.time_scale = float(time_scale)
        self.features = SinusoidalEmbedding(base_dim) if kind == "sinusoidal" else GaussianFourierEmbedding(
            base_dim, fourier_scale
        )
        self.mlp = nn.Sequential(nn.Linear(base_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(self.features(t * self.time_scale))


class ClassEmbedding(nn.Module):
    """Learned class vectors plus one null class (index ``num_classes``) for unconditional use."""

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1; got {num_classes}")
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)

    def forward(self, y: Tensor | None, batch: int, device: torch.device) -> Tensor:
        if y is None:
            y = torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        y = y.long()
        if y.shape != (batch,):
            raise ValueError(f"class labels must have shape ({batch},); got {tuple(y.shape)}")
        if not _tracing() and bool(((y < 0) | (y > self.num_classes)).any()):
            raise ValueError(f"class labels must lie in 0..{self.num_classes} ({self.num_classes} = null class)")
        return self.table(y)


def _tracing() -> bool:
    """Whether this call is being recorded (torch.compile, a CUDA-graph capture): the label check
    reads a value back to the host, which breaks a compiled graph and is not allowed while a CUDA
    graph captures. Eager calls, the warm-up before a capture included, still check the labels; a
    compiled or replayed call with a bad label fails in the embedding lookup instead (on CUDA, a
    device-side assert)."""
    return torch.compiler.is_compiling() or (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())


def time_and_class(time_embed: TimeEmbedding, class_embed: ClassEmbedding | None, t: Tensor, y: Tensor | None,
                   batch: int) -> Tensor:
    """The conditioning vector both backbones add to every block: embed(t) (+ embed(y))."""
    if t.ndim == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"t must be a 1-D tensor of length {batch}; got shape {tuple(t.shape)}")
    emb = time_embed(t)
    if class_embed is not None:
        emb = emb + class_embed(y, batch, t.device)
    elif y is not None:
        raise ValueError("class labels given to a network built without num_classes")
    return emb
