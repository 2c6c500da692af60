"""How much memory a frame needs, how much there is, and the tile size that makes it fit
(``TilePlanner``, which the Deblurrer asks before each pass).

A network's activations grow with the pixels it sees, so a large frame (a 20000×20000 scan, a
panorama) is run in tiles chosen here, on the CPU as on a GPU, before anything is allocated;
a frame whose buffers alone cannot fit is refused with one line. The estimate is an upper
bound: every intermediate tensor of one forward pass counted as if all were alive at once.
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import torch
from torch import nn

from .errors import ConfigError, InputError

# Bytes per pixel and image that a frame run whole holds outside the network: the float32
# input tensor, the output, the copy that turns it back into 8 bits and the 8-bit arrays.
FRAME_BYTES_PER_PIXEL = 3 * 4 + 3 * 4 + 4 + 2 * 3
# What a frame tiled as a float tensor holds for its whole size: the input and output tensors.
TENSOR_BYTES_PER_PIXEL = 3 * 4 + 3 * 4
# Per pixel of width and row of a tile: the float32 band of tiles being blended (tiling.py),
# its copy when it moves down a row of tiles, and the float copy of its finished rows that the
# conversion to 8 or 16 bits makes.
BAND_BYTES_PER_PIXEL = 3 * 3 * 4
# Per tile pixel, beside the network's activations: the tile read, padded and batched, its
# window and weighted result (float32 RGB copies that tiling.py makes of each tile).
TILE_BYTES_PER_PIXEL = 4 * 3 * 4
HEADROOM = 0.8  # of what is available: the allocator, the interpreter and others need some
MIN_TILE = 128
UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_size(text: str) -> int:
    """'512M', '2G', '1.5G', '800000' → bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)i?B?\s*", str(text), re.IGNORECASE)
    if not match:
        raise ConfigError(f"memory sizes look like 512M or 2G, got {text!r}")
    return int(float(match.group(1)) * UNITS[match.group(2).upper()])


def gigabytes(n: float) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**29 else f"{n / 2**20:.0f} MB"


def _cgroup_room() -> int | None:
    """What the process's cgroup (v2: a container's memory limit) still allows, if limited."""
    try:
        group = Path("/proc/self/cgroup").read_text().strip().split("::", 1)[1]
        folder = Path("/sys/fs/cgroup") / group.lstrip("/")
        limit = (folder / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int((folder / "memory.current").read_text())
    except (OSError, IndexError, ValueError):
        return None


def available_bytes(device: torch.device) -> int | None:
    """Memory free for new tensors on ``device`` (None when the system cannot say)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    try:
        info = Path("/proc/meminfo").read_text()
        free = int(re.search(r"MemAvailable:\s+(\d+) kB", info).group(1)) * 1024
    except (OSError, AttributeError):
        return None
    room = _cgroup_room()
    return free if room is None else min(free, room)


def activation_bytes_per_pixel(module: nn.Module, divisor: int = 1) -> float:
    """Bytes of every intermediate tensor of one forward pass, per input pixel (float32).

    Measured once on a small probe input with forward hooks on the leaf modules (plus the
    input and output); the sum bounds the peak, since not all are alive at once.
    """
    side = max(64, divisor * 4)
    total = 0

    def count(_module, _inputs, output):
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel()

    leaves = [m for m in module.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    param = next(module.parameters())
    try:
        with torch.inference_mode():
            module(torch.zeros(1, 3, side, side, device=param.device, dtype=param.dtype))
    finally:
        for hook in hooks:
            hook.remove()
    return 4.0 * (total + 2 * 3 * side * side) / (side * side)


def plan_tile(
    shape: tuple[int, ...],
    per_pixel: float,
    budget: int | None,
    tiles_per_call: int,
    divisor: int,
    overlap: int,
    held: float = TENSOR_BYTES_PER_PIXEL,
) -> int | None:
    """The tile size that fits an N×3×H×W batch in ``budget`` bytes (None: no tiling needed),
    where tiling holds ``held`` bytes per pixel of the whole frame (e.g. its output).

    Raises ``InputError`` when even the frame buffers, or the smallest useful tile, do not fit.
    """
    if budget is None:
        return None
    n, _, h, w = shape
    if (FRAME_BYTES_PER_PIXEL + per_pixel) * n * h * w <= budget:
        return None
    room = budget - held * n * h * w
    smallest = max(MIN_TILE, 2 * overlap + divisor)
    # calls tiles of side s need a·s² for the network and b·s for their band: solve for s.
    a, b = (per_pixel + TILE_BYTES_PER_PIXEL) * tiles_per_call, BAND_BYTES_PER_PIXEL * w
    side = int((math.sqrt(b * b + 4 * a * max(room, 0)) - b) / (2 * a)) // divisor * divisor
    if side < smallest:
        need = held * n * h * w + a * smallest**2 + b * smallest
        raise InputError(
            f"a {w}×{h} image needs about {gigabytes(need)} of memory even in tiles, and "
            f"{gigabytes(budget)} are available; downscale or crop it, or raise --max-memory"
        )
    return min(side, max(h, w))


class TilePlanner:
    """The tile size of each pass over a batch, planned against a memory budget.

    ``tile``: a fixed tile size (None: whole frames, tiled only when they would not fit);
    ``overlap``: the pixels neighbouring tiles share (default 64, at most a quarter of a small
    tile); ``max_memory``: the budget in bytes or as a size such as ``"2G"`` (default: what
    ``device`` has free, less ``HEADROOM``). ``module``'s activation bytes per pixel are measured
    on first need; ``batch_size`` tiles are run at once.
    """

    def __init__(
        self,
        module: nn.Module,
        device: torch.device,
        divisor: int = 1,
        tile: int | None = None,
        overlap: int | None = None,
        max_memory: int | str | None = None,
        batch_size: int = 4,
    ):
        if tile is not None and tile < divisor:
            raise ConfigError(f"tile must be at least {divisor}, got {tile}")
        if overlap is None:  # 64 px, but at most a quarter of a small tile
            overlap = 64 if tile is None else min(64, tile // 4)
        if not 0 <= overlap < (tile or overlap + 1):
            raise ConfigError(f"tile overlap must be in [0, tile), got {overlap}")
        self.module, self.device = module, device
        self.divisor, self.batch_size = divisor, batch_size
        self.tile, self.overlap = tile, overlap
        self.max_memory = parse_size(max_memory) if isinstance(max_memory, str) else max_memory
        self._per_pixel: float | None = None
        self._last: int | None = None  # the tile size last chosen for lack of memory

    def frame_tile(
        self, shape: tuple[int, ...], held: float = TENSOR_BYTES_PER_PIXEL, pending: int = 0
    ) -> int | None:
        """The tile size of a gradient-free pass over an N×3×H×W batch: ``tile`` when set, else
        one that fits the budget (None: the batch fits whole). ``held`` as in ``plan_tile``;
        ``pending``: bytes about to be taken outside the budget (a frame not yet decoded)."""
        return self.tile or self._fitting(shape, 1, self.batch_size, "deblurring it in",
                                          held, pending)  # fmt: skip

    def crop_size(self, shape: tuple[int, ...], crops: int) -> int | None:
        """The crop size of TTA steps on ``crops`` crops of an N×3×H×W batch at once when
        whole-frame steps would not fit (None: they fit). A step's backward pass keeps about
        twice the activations of a forward pass."""
        return self._fitting(shape, 2, crops, "adapting on")

    def budget(self, pending: int = 0) -> int | None:
        """Bytes a pass may use: ``max_memory``, else what the device has free (less
        ``pending``) less headroom. What this process holds already is not free, and is not
        counted twice: the budget is for what a pass adds."""
        if self.max_memory is not None:
            return self.max_memory
        free = available_bytes(self.device)
        return None if free is None else int(max(free - pending, 0) * HEADROOM)

    def _fitting(self, shape, factor: int, calls: int, what: str, held=TENSOR_BYTES_PER_PIXEL,
                 pending: int = 0) -> int | None:  # fmt: skip
        """``plan_tile`` for ``calls`` tiles at once of ``factor`` times the module's
        activations; warns, once per change, when the batch has to be cut."""
        budget = self.budget(pending)
        if self._per_pixel is None:
            self._per_pixel = activation_bytes_per_pixel(self.module, self.divisor)
        tile = plan_tile(tuple(shape), factor * self._per_pixel, budget, calls,
                         self.divisor, self.overlap, held)  # fmt: skip
        if tile is not None and tile != self._last:
            h, w = shape[-2:]
            warnings.warn(
                f"a {w}×{h} frame does not fit in {gigabytes(budget)} of memory in one piece: "
                f"{what} {tile} px tiles (set --tile to choose)",
                RuntimeWarning,
                stacklevel=3,  # the Deblurrer's pass that asked
            )
        self._last = tile
        return tile
