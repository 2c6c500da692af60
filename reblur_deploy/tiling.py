"""Overlapping tiles blended with a smooth window, to bound memory on large frames.

The frame is cut into ``tile``×``tile`` tiles that overlap by ``overlap`` pixels; each output
tile is weighted by a window that ignores the outer quarter of the overlap and ramps smoothly
(sin²) across its middle half, and the weighted tiles are summed and normalised. Tiles run a
row at a time, and rows of output are handed on once final: a large frame is never copied whole
into float (``tiled_rows``). Where a quarter
of the overlap covers the network's receptive field, the blend reproduces the untiled output;
below that, the smooth ramp still hides the seams.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

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


def _windows(length: int, size: int, overlap: int, starts: list[int]) -> list[torch.Tensor]:
    """The 1-D windows of the tiles at ``starts``, normalised to sum to 1 at every pixel. The
    2-D window is their product, so its sum over all tiles is too: no whole-frame weights."""
    ramps = [_ramp(size, overlap, s == starts[0], s == starts[-1]) for s in starts]
    total = torch.zeros(length, dtype=torch.float64)
    for start, ramp in zip(starts, ramps, strict=True):
        total[start : start + size] += ramp
    return [ramp / total[s : s + size] for s, ramp in zip(starts, ramps, strict=True)]


def _check(tile: int, overlap: int, divisor: int) -> int:
    tile = tile // divisor * divisor
    if tile < divisor or tile <= 0:
        raise ConfigError(f"tile size must be at least the network's size divisor {divisor}")
    if not 0 <= overlap < tile:
        raise ConfigError(f"tile overlap must be in [0, tile size), got {overlap} for {tile}")
    return tile


def tiled_rows(
    fn: Callable[[torch.Tensor], torch.Tensor],
    read: Callable[[int, int, int, int], torch.Tensor],
    height: int,
    width: int,
    tile: int,
    overlap: int,
    divisor: int = 1,
    tiles_per_call: int = 4,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Apply ``fn`` (N×3×h×w → N×3×h×w, h and w multiples of ``divisor``) to a frame tile by
    tile; yield (top, 1×3×rows×width) output rows as soon as no later tile touches them.

    ``read(y0, y1, x0, x1)`` returns that part of the frame as a 1×3×h×w tensor, so the frame
    itself need not be a float tensor: only one band of tile rows is (bounded memory).
    """
    tile = _check(tile, overlap, divisor)
    # Tiles cover the frame padded to ``divisor``; each tile is padded as the frame would be.
    padded_h, padded_w = -(-height // divisor) * divisor, -(-width // divisor) * divisor
    th, tw = min(tile, padded_h), min(tile, padded_w)
    rows, cols = _starts(padded_h, th, th - overlap), _starts(padded_w, tw, tw - overlap)
    wxs = _windows(padded_w, tw, overlap, cols)

    def tile_at(y: int, x: int) -> torch.Tensor:
        part = read(y, min(y + th, height), x, min(x + tw, width))
        return pad_to_multiple(part, divisor)[0]

    band, top = None, 0
    for y, wy in zip(rows, _windows(padded_h, th, overlap, rows), strict=True):
        if band is not None:  # the rows above y are final; the band moves down to y
            yield top, band[..., : y - top, :width]
            rest = band[..., y - top :, :]
            band = torch.cat([rest, torch.zeros_like(band[..., : y - top, :])], 2)
        top = y
        for i in range(0, len(cols), tiles_per_call):
            xs = cols[i : i + tiles_per_call]
            results = fn(torch.cat([tile_at(y, x) for x in xs]))
            if band is None:
                band = results.new_zeros(1, results.shape[1], th, padded_w)
            for x, wx, result in zip(xs, wxs[i : i + tiles_per_call], results, strict=True):
                window = (wy[:, None] * wx[None, :]).to(result.dtype).to(result.device)
                band[0, :, :, x : x + tw] += result * window
    yield top, band[..., : height - top, :width]


def run_tiled(
    fn: Callable[[torch.Tensor], torch.Tensor],
    batch: torch.Tensor,
    tile: int,
    overlap: int,
    divisor: int = 1,
    tiles_per_call: int = 4,
) -> torch.Tensor:
    """``tiled_rows`` over every image of an N×3×H×W ``batch`` (any H×W: tiles are padded to
    ``divisor`` and cropped back)."""
    out = torch.empty_like(batch)
    height, width = batch.shape[-2:]
    for n in range(batch.shape[0]):

        def read(y0: int, y1: int, x0: int, x1: int, n: int = n) -> torch.Tensor:
            return batch[n : n + 1, :, y0:y1, x0:x1]

        parts = tiled_rows(fn, read, height, width, tile, overlap, divisor, tiles_per_call)
        for top, rows in parts:
            out[n, :, top : top + rows.shape[-2]] = rows[0]
    return out
