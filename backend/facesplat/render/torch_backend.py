"""Plain-PyTorch tile rasterizer: the readable reference, and the route on Apple MPS.

Autograd gives the backward. Tiles are composited in batches: every pixel of a tile meets every
Gaussian of that tile, and transmittance is a cumulative product along the depth-sorted list.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .projection import ALPHA_MAX, ALPHA_MIN, T_MIN, TILE_SIZE

MAX_BATCH_ELEMENTS = 1 << 22
"""Pixel x Gaussian pairs evaluated at once; bounds memory (each pair keeps ~10 floats for autograd)."""


def composite(
    means2d: Tensor,  # [N, 2]
    conics: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    features: Tensor,  # [N, D]
    tile_offsets: Tensor,  # [n_tiles + 1] int64
    gauss_ids: Tensor,  # [M] int64, front to back within each tile
    width: int,
    height: int,
    backgrounds: Tensor | None = None,  # [D]
) -> tuple[Tensor, Tensor]:  # render [H, W, D], alpha [H, W, 1]
    """Front-to-back alpha compositing of binned Gaussians."""
    device, dtype = means2d.device, means2d.dtype
    tiles_x = math.ceil(width / TILE_SIZE)
    counts = tile_offsets[1:] - tile_offsets[:-1]  # [n_tiles]
    # Tiles sorted by length, so that a batch pads each list to a similar length.
    tiles = torch.nonzero(counts).squeeze(1)
    tiles = tiles[torch.argsort(counts[tiles])]

    local = torch.arange(TILE_SIZE * TILE_SIZE, device=device)
    local_xy = torch.stack([local % TILE_SIZE, local // TILE_SIZE], -1)  # [P, 2] pixel offsets in a tile

    # Empty slices of every input keep cat() valid and, when nothing is drawn, give zero gradients
    # rather than None (DefaultStrategy reads means2d.grad).
    pixel_ids = [torch.zeros(0, dtype=torch.long, device=device)]
    colour_parts = [features[:0]]
    alpha_parts = [opacities[:0] + means2d[:0].sum(-1) + conics[:0].sum(-1)]
    sorted_counts = counts[tiles].tolist()
    start = 0
    while start < len(tiles):
        # Grow the batch while its padded size stays in budget (lists only get longer).
        stop = start + 1
        while stop < len(tiles) and (stop + 1 - start) * local.numel() * sorted_counts[stop] <= MAX_BATCH_ELEMENTS:
            stop += 1
        batch = tiles[start:stop]  # [B]
        length = sorted_counts[stop - 1]
        start = stop
        slot = torch.arange(length, device=device)  # [G]
        in_list = slot < counts[batch, None]  # [B, G]
        entry = torch.where(in_list, tile_offsets[batch, None] + slot, 0)
        g = torch.where(in_list, gauss_ids[entry], 0)  # [B, G] Gaussian of each slot

        origin = torch.stack([batch % tiles_x, batch // tiles_x], -1) * TILE_SIZE  # [B, 2]
        pix = origin[:, None, :] + local_xy  # [B, P, 2] integer pixel coordinates
        delta = means2d[g][:, None, :, :] - (pix[:, :, None, :].to(dtype) + 0.5)  # [B, P, G, 2]
        a, b, c = conics[g].unbind(-1)  # [B, G] each
        dx, dy = delta.unbind(-1)  # [B, P, G] each
        sigma = 0.5 * (a[:, None] * dx * dx + c[:, None] * dy * dy) + b[:, None] * dx * dy
        alpha = torch.clamp_max(opacities[g][:, None] * torch.exp(-sigma), ALPHA_MAX)  # [B, P, G]
        alpha = torch.where(in_list[:, None] & (sigma >= 0) & (alpha >= ALPHA_MIN), alpha, 0.0)

        # A pixel stops at the first Gaussian that would leave T <= T_MIN, that one excluded.
        # T only decreases, so the Gaussians kept form a prefix of the list.
        T_after = torch.cumprod(1.0 - alpha, dim=-1)  # [B, P, G]
        alpha = torch.where(T_after > T_MIN, alpha, 0.0)
        T_before = torch.cat([torch.ones_like(T_after[..., :1]), T_after[..., :-1]], -1)
        weights = alpha * T_before  # [B, P, G]

        inside = (pix[..., 0] < width) & (pix[..., 1] < height)  # [B, P]
        pixel_ids.append((pix[..., 1] * width + pix[..., 0])[inside])
        colour_parts.append((weights @ features[g])[inside])  # [B, P, D] -> [Q, D]
        alpha_parts.append(weights.sum(-1)[inside])  # [Q]

    n_pix, D = height * width, features.shape[1]
    ids = torch.cat(pixel_ids)
    render = features.new_zeros(n_pix, D).index_copy(0, ids, torch.cat(colour_parts))
    alpha = features.new_zeros(n_pix).index_copy(0, ids, torch.cat(alpha_parts))
    if backgrounds is not None:
        render = render + (1.0 - alpha)[:, None] * backgrounds
    return render.reshape(height, width, D), alpha.reshape(height, width, 1)
