"""A time-conditioned residual MLP for vector data (2-D toys, low-dimensional densities)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from genflow.nets.embeddings import ClassEmbedding, TimeEmbedding, time_and_class


class ResidualMLPBlock(nn.Module):
    """LayerNorm -> SiLU -> Linear, plus the time embedding, -> SiLU -> Linear, residual."""

    def __init__(self, hidden: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.emb = nn.Linear(emb_dim, hidden)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        z = self.fc1(F.silu(self.norm(h))) + self.emb(F.silu(emb))
        return h + self.fc2(self.dropout(F.silu(z)))


class MLP(nn.Module):
    """``model(x, t, y=None)`` for examples of ``dim`` values (any shape whose size is ``dim``).

    Args:
        dim: values per example.
        hidden: width of the residual stream.
        depth: number of residual blocks.
        time_embedding, time_scale: as for the UNet (``"fourier"`` suits t in [0, 1]).
        num_classes: enables a class embedding with a null class.
        dropout: dropout inside the blocks.
    """

    def __init__(
        self,
        dim: int = 2,
        hidden: int = 256,
        depth: int = 4,
        time_embedding: str = "sinusoidal",
        time_scale: float = 1.0,
        num_classes: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if dim < 1 or hidden < 2 or depth < 0:
            raise ValueError(f"need dim >= 1, hidden >= 2, depth >= 0; got {dim}, {hidden}, {depth}")
        self.dim = dim
        emb_dim = hidden
        self.time_embed = TimeEmbedding(hidden + hidden % 2, emb_dim, time_embedding, time_scale)
        self.class_embed = ClassEmbedding(num_classes, emb_dim) if num_classes is not None else None
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(ResidualMLPBlock(hidden, emb_dim, dropout) for _ in range(depth))
        self.norm_out = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        if x.ndim < 2 or x[0].numel() != self.dim:
            raise ValueError(f"MLP expects [B, ...] with {self.dim} values per example; got shape {tuple(x.shape)}")
        emb = time_and_class(self.time_embed, self.class_embed, t, y, x.shape[0])
        h = self.inp(x.reshape(x.shape[0], self.dim))
        for block in self.blocks:
            h = block(h, emb)
        return self.out(F.silu(self.norm_out(h))).reshape(x.shape)
