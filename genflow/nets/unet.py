"""The UNet of Ho et al. 2020 (appendix B), as in their reference code and improved-diffusion.

Residual blocks (GroupNorm, SiLU, 3x3 convs, the time embedding added in between), single-head
self-attention at chosen resolutions, channel multipliers per level, strided-conv downsampling
and nearest-neighbour upsampling to the skip connection's size, so any image size works.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from genflow.nets.embeddings import ClassEmbedding, TimeEmbedding, time_and_class


def zero_init(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters so its residual branch starts as the identity (Ho et al.)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, cout)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over all pixels, with a residual connection."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        q, k, v = rearrange(self.qkv(self.norm(x)), "b (three c) h w -> three b 1 (h w) c", three=3)
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(rearrange(out, "b 1 (h w) c -> b c h w", h=h, w=w))


class Level(nn.Module):
    """Residual blocks of one resolution, each optionally followed by attention."""

    def __init__(self, cins: Sequence[int], cout: int, emb_dim: int, dropout: float, groups: int, attn: bool):
        super().__init__()
        self.blocks = nn.ModuleList(ResBlock(c, cout, emb_dim, dropout, groups) for c in cins)
        self.attns = nn.ModuleList(AttentionBlock(cout, groups) if attn else nn.Identity() for _ in cins)


class UNet(nn.Module):
    """Noise-prediction UNet; ``model(x, t, y=None)`` returns a tensor shaped like ``x``.

    Args:
        image_size: height (= width) the attention resolutions refer to; any size runs.
        in_channels, out_channels: image channels (out defaults to in).
        channels: base width; level i has ``channels * channel_mult[i]``.
        channel_mult: multipliers per level (one fewer downsampling than levels).
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attention_resolutions: resolutions (in pixels) that get self-attention.
        dropout: dropout inside residual blocks.
        num_classes: enables a class embedding with a null class (for guidance).
        time_embedding: ``"sinusoidal"`` (DDPM steps) or ``"fourier"`` (continuous time).
        time_scale: t is multiplied by this before the embedding (e.g. 1000 for t in [0, 1]).
        norm_groups: GroupNorm groups (32 in Ho et al.); must divide every level's width.
    """

    def __init__(
        self,
        image_size: int = 32,
        in_channels: int = 3,
        out_channels: int | None = None,
        channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (16,),
        dropout: float = 0.1,
        num_classes: int | None = None,
        time_embedding: str = "sinusoidal",
        time_scale: float = 1.0,
        norm_groups: int = 32,
    ) -> None:
        super().__init__()
        widths = [channels * m for m in channel_mult]
        if not widths or num_res_blocks < 1 or min(widths) < 1:
            raise ValueError("need at least one level, channels >= 1 and num_res_blocks >= 1")
        if norm_groups < 1 or any(w % norm_groups for w in [channels, *widths]):
            raise ValueError(f"norm_groups={norm_groups} must divide every level width {[channels, *widths]}")
        self.in_channels, self.image_size = in_channels, image_size
        emb_dim = 4 * channels
        self.time_embed = TimeEmbedding(channels, emb_dim, time_embedding, time_scale)
        self.class_embed = ClassEmbedding(num_classes, emb_dim) if num_classes is not None else None
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)
        args = dict(emb_dim=emb_dim, dropout=dropout, groups=norm_groups)

        resolutions = [image_size]
        for _ in widths[1:]:
            resolutions.append((resolutions[-1] + 1) // 2)
        unreachable = sorted(set(attention_resolutions) - set(resolutions))
        if unreachable:
            raise ValueError(f"attention_resolutions {unreachable} not among this UNet's resolutions {resolutions}")
        skips, cur = [channels], channels
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        for i, w in enumerate(widths):
            attn = resolutions[i] in attention_resolutions
            self.down.append(Level([cur] + [w] * (num_res_blocks - 1), w, attn=attn, **args))
            cur = w
            skips += [w] * num_res_blocks
            last = i == len(widths) - 1
            self.downsample.append(nn.Identity() if last else nn.Conv2d(w, w, 3, stride=2, padding=1))
            if not last:
                skips.append(w)
        self.mid = nn.ModuleList([ResBlock(cur, cur, **args), AttentionBlock(cur, norm_groups), ResBlock(cur, cur, **args)])
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i, w in reversed(list(enumerate(widths))):
            cins = []
            for _ in range(num_res_blocks + 1):
                cins.append(cur + skips.pop())
                cur = w
            self.up.append(Level(cins, w, attn=resolutions[i] in attention_resolutions, **args))
            self.upsample.append(nn.Conv2d(w, w, 3, padding=1) if i else nn.Identity())
        self.norm_out = nn.GroupNorm(norm_groups, cur)
        self.conv_out = zero_init(nn.Conv2d(cur, out_channels or in_channels, 3, padding=1))

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"UNet expects images [B, {self.in_channels}, H, W]; got shape {tuple(x.shape)}")
        emb = time_and_class(self.time_embed, self.class_embed, t, y, x.shape[0])
        h = self.conv_in(x)
        hs = [h]
        for level, down in zip(self.down, self.downsample):
            for block, attn in zip(level.blocks, level.attns):
                h = attn(block(h, emb))
                hs.append(h)
            if not isinstance(down, nn.Identity):
                h = down(h)
                hs.append(h)
        first, attn, second = self.mid  # ResBlock -> attention -> ResBlock (Ho et al.)
        h = second(attn(first(h, emb)), emb)
        for level, up in zip(self.up, self.upsample):
            for block, attn in zip(level.blocks, level.attns):
                h = attn(block(torch.cat([h, hs.pop()], dim=1), emb))
            if not isinstance(up, nn.Identity):
                h = up(F.interpolate(h, size=hs[-1].shape[-2:], mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))
