"""Overlapping tiles blended with a smooth window, to bound memory on large frames.

The frame is cut into ``tile``×``tile`` tiles that overlap by ``overlap`` pixels; each output
tile is weighted by a window that ignores the outer quarter of the overlap and ramps smoothly
(sin²) across its middle half, and the weighted tiles are summed and normalised. Where a quarter
of the overlap covers the network's receptive field, the blend reproduces the untiled output;
below that, the smooth ramp still hides the seams.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .errors import ConfigError
from .padding import pad_to_multiple


def _starts(length: int, tile: int, stride: int) -> list[int]:
    """Offsets covering ``length`` every ``stride`` pixels, the last one flush with the end."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    return [*starts, length - tile]


def _ramp(size: int, overlap: int, first: bool, last: bool) -> torch.Tensor:
    """1-D window of a tile. On a side with a neighbour, the outer quarter of the overlap gets
    weight 0 (the pixels that saw the tile's edge), the middle half a sin² ramp (mirrored in the
    neighbour, so the two sum to 1), and the rest weight 1."""
    weights = torch.ones(size, dtype=torch.float64)
    margin = overlap // 4
    n = overlap - 2 * margin
    ramp = torch.sin(0.5 * math.pi * (torch.arange(n, dtype=torch.float64) + 0.5) / n) ** 2
    rise = torch.cat([torch.zeros(margin, dtype=torch.float64), ramp])
    if not first:
        weights[: rise.numel()] = rise
    if not last:
        end = weights[size - rise.numel() :]
        weights[size - rise.numel() :] = torch.minimum(end, rise.flip(0))
    return weights


def run_tiled(
    fn: Callable[[torch.Tensor], torch.Tensor],
    batch: torch.Tensor,
    tile: int,
    overlap: int,
    divisor: int = 1,
    tiles_per_call: int = 4,
) -> torch.Tensor:
    """Apply ``fn`` (N×3×h×w → N×3×h×w, h and w multiples of ``divisor``) tile by tile.

    ``batch`` may have any H×W; it is padded to ``divisor`` here and cropped back.
    """
    tile = tile // divisor * divisor
    if tile < divisor or tile <= 0:
        raise ConfigError(f"tile size must be at least the network's size divisor {divisor}")
    if not 0 <= overlap < tile:
        raise ConfigError(f"tile overlap must be in [0, tile size), got {overlap} for {tile}")
    padded, h, w = pad_to_multiple(batch, divisor)
    height, width = padded.shape[-2:]
    th, tw = min(tile, height), min(tile, width)
    rows, cols = _starts(height, th, th - overlap), _starts(width, tw, tw - overlap)
    out = torch.zeros_like(padded)
    total = torch.zeros(1, 1, height, width, dtype=padded.dtype, device=padded.device)
    boxes = [(y, x) for y in rows for x in cols]
    for n in range(padded.shape[0]):
        image = padded[n : n + 1]
        for i in range(0, len(boxes), tiles_per_call):
            chunk = boxes[i : i + tiles_per_call]
            results = fn(torch.cat([image[..., y : y + th, x : x + tw] for y, x in chunk]))
            for (y, x), result in zip(chunk, results, strict=True):
                wy = _ramp(th, overlap, y == rows[0], y == rows[-1])
                wx = _ramp(tw, overlap, x == cols[0], x == cols[-1])
                window = (wy[:, None] * wx[None, :]).to(out.dtype).to(out.device)
                out[n, :, y : y + th, x : x + tw] += result * window
                if n == 0:
                    total[..., y : y + th, x : x + tw] += window
    return out.div_(total)[..., :h, :w]
